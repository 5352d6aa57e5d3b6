"""Write evaluation results as JSON and as a markdown table."""

from __future__ import annotations

import json
import math
from pathlib import Path

__all__ = ["markdown_table", "write_report"]

JSON_NAME, MD_NAME = "eval_results.json", "eval_results.md"


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def markdown_table(results: dict) -> str:
    """A markdown report: a header naming the model, then ``| suite | metric | value |`` rows."""
    lines = [f"# Evaluation of `{results['model']}`", "", f"Created {results.get('created', '')}.", "",
             "| suite | metric | value |", "|---|---|---|"]
    for suite, entry in results["suites"].items():
        for metric, value in entry["metrics"].items():
            lines.append(f"| {suite} | {metric} | {_fmt(value)} |")
    lines.append("")
    for suite, entry in results["suites"].items():
        info = ", ".join(f"{k}={_fmt(v)}" for k, v in entry.get("info", {}).items())
        lines.append(f"- **{suite}** ({entry.get('seconds', 0)} s): {info}")
    return "\n".join(lines) + "\n"


def write_report(results: dict, out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``eval_results.json`` and ``eval_results.md`` into ``out_dir``; return both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / JSON_NAME, out / MD_NAME
    json_path.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md_path.write_text(markdown_table(results), encoding="utf-8")
    return json_path, md_path
