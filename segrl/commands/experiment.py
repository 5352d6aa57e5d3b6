"""``segrl experiment``: the credit-assignment benchmark, every method, several seeds, one run.

SFT (shared by all seeds unless ``--share_sft false``) -> per seed: preference pairs sampled from the
SFT model, segment / token / bandit reward models (train-rm, fit-norm, eval-rm) -> the methods
(``--methods``; see ``segrl.pipeline.settings.METHODS``): DPO vs ASR-DPO vs token-wise vs step-wise
masks (token rewards from the trained RMs, the implicit reward of the DPO run, or the oracle),
bandit vs token vs segment PPO (optionally ASR-PPO), plain vs ASR rejection sampling. Seeds vary
the pair sampling (prompts and samples), the RM / policy training shuffle and the PPO / RS sampling.

Writes to ``--output_dir``: ``results.json`` (every run and the mean / std over seeds),
``results.md`` (the table), ``curves.png`` (dev learning curves), ``comparison.png`` (bar chart),
``report.html`` (all of it in one file). Every stage is cached: re-running resumes where it stopped.

Examples::

    segrl experiment --config experiments/credit_assignment.yaml
    segrl experiment --config experiments/tiny.yaml --output_dir /tmp/exp
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from segrl.pipeline.options import PipelineOptions

DEFAULT_METHODS = [
    "dpo", "asr_dpo_tokrm", "tokenwise_dpo_tokrm", "stepwise_dpo_tokrm", "asr_dpo_segrm", "asr_dpo_implicit",
    "asr_dpo_oracle", "ppo_bandit", "ppo_token", "ppo_segment", "rs_tokrm", "asr_rs_tokrm",
]


@dataclass
class ExperimentConfig(PipelineOptions):
    """Options of ``segrl experiment`` (flags, or keys of the ``--config`` YAML file)."""

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2],
                             metadata={"help": "Seeds: each re-samples the pairs and re-trains RMs and policies."})
    methods: list[str] = field(default_factory=lambda: list(DEFAULT_METHODS),
                               metadata={"help": "Methods to compare (segrl.pipeline.settings.METHODS)."})
    share_sft: bool = field(default=True, metadata={"help": "One SFT model for all seeds (else one per seed)."})
    title: str = field(default="segrl credit-assignment experiment", metadata={"help": "Report title."})


def parse_config(argv: list[str]) -> ExperimentConfig:
    from trl import TrlParser

    (cfg,) = TrlParser((ExperimentConfig,), prog="segrl experiment").parse_args_and_config(args=argv)
    return cfg


def validate(cfg: ExperimentConfig) -> None:
    from segrl.pipeline.settings import METHODS

    unknown = [m for m in cfg.methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown `methods` {unknown}; choose from {sorted(METHODS)}")
    if not cfg.methods:
        raise ValueError("`methods` is empty")
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"`seeds` must be a non-empty list of distinct ints, got {cfg.seeds}")
    cfg.stage_settings()  # validates every stage's options


def _ordered(methods: list[str]) -> list[str]:
    """Methods in the given order, with those a method needs (the DPO run for the implicit reward) first."""
    from segrl.pipeline.settings import METHODS

    out: list[str] = []

    def add(name):
        for dep in METHODS[name].needs:
            add(dep)
        if name not in out:
            out.append(name)

    for m in methods:
        add(m)
    return out


def write_outputs(cfg: ExperimentConfig, pipeline, results: list[dict], sft_records: list[dict], command: str,
                  *, heatmap_html: str | None = None, intro_html: str = "", final: bool = True,
                  report_extra: dict | None = None) -> dict:
    """results.json, results.md, curves.png, comparison.png and report.html from the finished runs.

    ``report_extra``: more keyword arguments of :func:`segrl.pipeline.report.render_report`."""
    from segrl.pipeline.report import (
        aggregate,
        comparison_png,
        curves_png,
        markdown_table,
        render_report,
    )

    out = Path(cfg.output_dir)
    summary = aggregate(results, sft_records)
    rm_records, pair_stats = [], []
    for seed in cfg.seeds:
        for arm in ("segment", "token", "bandit"):
            rec = _read(pipeline.rm_dir(seed, arm) / "result.json")
            if rec is not None:
                rm_records.append({**rec, "seed": seed})
        meta = _read(pipeline.seed_dir(seed) / "pairs.json")
        if meta is not None:
            pair_stats.append({**meta["stats"], "seed": seed})
    paths = {"json": out / "results.json", "markdown": out / "results.md", "curves": out / "curves.png",
             "comparison": out / "comparison.png", "report": out / "report.html"}
    # Plots and the report only at the end: partial writes (after every run) keep the JSON and the table.
    curves = curves_png(results, sft_records, paths["curves"]) if results and final else None
    comparison = comparison_png(summary, paths["comparison"]) if results and final else None
    done = sorted({(r["seed"], r["method"]) for r in results})
    data = {
        "command": command, "complete": final, "config": cfg.to_dict(), "summary": summary,
        "runs_done": [f"seed{s}/{m}" for s, m in done],
        "sft": sft_records, "reward_models": rm_records, "pairs": pair_stats,
        "runs": [{k: v for k, v in r.items() if k != "train_log"} for r in results],
        "timings_s": pipeline.timings,
        "sft_shared": cfg.share_sft,
    }
    paths["json"].write_text(json.dumps(data, indent=2, default=str) + "\n")
    md = [f"# {cfg.title}\n", f"Command: `{command}`\n",
          ("" if final else "**Partial results: the run has not finished.**\n"),
          (f"Seeds: {cfg.seeds} ({'one shared SFT model' if cfg.share_sft else 'one SFT model per seed'}); held-out "
           f"prompts: {cfg.eval_dev} dev (curves, checkpoint selection), {cfg.eval_test} test (reported). "
           "Mean ± sample std over seeds.\n"), markdown_table(summary)]
    if rm_records:
        md.append("\n| seed | RM | c | pairwise acc (held-out pairs) | credit AUC pooled | credit AUC within response |\n"
                  "|---|---|---|---|---|---|\n")
        f = (lambda v: "–" if v is None else f"{v:.3f}")
        for r in rm_records:
            cr = r.get("credit", {})
            md.append(f"| {r['seed']} | {r['arm']} | {r['threshold']} | {r['eval']['accuracy']:.3f} | "
                      f"{f(cr.get('auc'))} | {f(cr.get('auc_within_response'))} |\n")
    paths["markdown"].write_text("".join(md))
    if not final:
        return {"summary": summary, "paths": paths}
    render_report(paths["report"], title=cfg.title, summary=summary, intro_html=intro_html, curves=curves,
                  comparison=comparison, rm_records=rm_records, pair_stats=pair_stats, heatmap_html=heatmap_html,
                  timings=pipeline.timings, settings=cfg.to_dict(), command=command, **(report_extra or {}))
    return {"summary": summary, "paths": paths}


def _read(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def run(cfg: ExperimentConfig, console=None, command: str | None = None) -> dict:
    """Run every (seed, method) not already cached, then write the outputs. Returns
    ``{"summary", "paths"}``."""
    from rich.console import Console

    from segrl.pipeline.progress import Reporter
    from segrl.pipeline.report import markdown_table

    validate(cfg)
    command = command or "segrl experiment " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    console = console or Console()
    reporter = Reporter(console)
    pipeline = cfg.build(reporter, sft_per_seed=not cfg.share_sft)
    methods = _ordered(cfg.methods)
    t0 = time.perf_counter()
    results, sft_records = [], []
    for seed in cfg.seeds:
        sft = pipeline.sft(seed)
        if not cfg.share_sft or not sft_records:
            sft_records.append(sft)
        for method in methods:
            results.append(pipeline.run_method(seed, method))
            # Partial outputs after every run: a long run that is stopped still leaves its numbers.
            write_outputs(cfg, pipeline, [r for r in results if r["method"] in cfg.methods], sft_records, command,
                          final=False)
    results = [r for r in results if r["method"] in cfg.methods]
    from segrl.pipeline.settings import METHODS

    for seed in cfg.seeds:  # (cached) RM records for the report; adds diagnostics missing from older records
        for arm in sorted({METHODS[m].rm_arm for m in methods if METHODS[m].rm_arm}):
            pipeline.reward_model(seed, arm)
    from segrl.pipeline.report import report_extras

    extra = {**report_extras(pipeline, cfg.seeds, results, Path(cfg.output_dir)),
             "wall_seconds": time.perf_counter() - t0}
    outputs = write_outputs(cfg, pipeline, results, sft_records, command, final=True, report_extra=extra)
    console.rule(f"[bold]done in {time.perf_counter() - t0:.0f}s")
    console.print(markdown_table(outputs["summary"]))
    for name, path in outputs["paths"].items():
        console.print(f"{name}: [bold]{path}[/]")
    return outputs


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl experiment``. Returns 0 on success, 2 on invalid options."""
    from segrl.commands._common import pipeline_command_main

    return pipeline_command_main("segrl experiment", argv, parse_config, validate, run)


if __name__ == "__main__":
    raise SystemExit(main())
