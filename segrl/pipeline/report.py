"""Aggregation over seeds, the markdown table, plots and the self-contained HTML report."""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path

__all__ = [
    "aggregate",
    "comparison_png",
    "curves_png",
    "heldout_heatmap_rows",
    "markdown_table",
    "render_report",
]

#: (column key, record path) of the numbers aggregated per method.
SUMMARY_FIELDS = {
    "final_step_accuracy": ("final", "step_accuracy"),
    "final_exact_match": ("final", "exact_match"),
    "best_step_accuracy": ("best", "step_accuracy"),
    "best_exact_match": ("best", "exact_match"),
    "mean_ckpt_step_accuracy": ("mean_over_checkpoints", "step_accuracy"),
    "mean_ckpt_exact_match": ("mean_over_checkpoints", "exact_match"),
    "final_parse_rate": ("final", "parse_rate"),
}


def _stats(values: list[float]) -> dict:
    values = [float(v) for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "values": []}
    mean = sum(values) / len(values)
    # Sample standard deviation over seeds (ddof = 1); 0 for a single seed.
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "values": values}


def aggregate(results: list[dict], sft_records: list[dict]) -> dict:
    """Mean and sample std over seeds of every summary number, per method (plus the SFT starting point).

    ``results``: method result records (``result.json``); ``sft_records``: the SFT eval record(s)
    (one if SFT is shared by all seeds).
    """
    out: dict = {"sft": {}, "methods": {}}
    out["sft"] = {
        "label": "SFT (start point)", "family": "sft", "n_seeds": len(sft_records),
        "final_step_accuracy": _stats([r["test"]["step_accuracy"] for r in sft_records]),
        "final_exact_match": _stats([r["test"]["exact_match"] for r in sft_records]),
        "final_parse_rate": _stats([r["test"]["parse_rate"] for r in sft_records]),
    }
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    for name, runs in by_method.items():
        runs = sorted(runs, key=lambda r: r["seed"])
        entry = {"label": runs[0]["label"], "family": runs[0]["family"], "mask": runs[0]["mask"],
                 "rewards": runs[0]["rewards"], "rm_arm": runs[0]["rm_arm"], "n_seeds": len(runs),
                 "seeds": [r["seed"] for r in runs], "best_steps": [r["best"]["step"] for r in runs]}
        for key, (part, metric) in SUMMARY_FIELDS.items():
            entry[key] = _stats([r[part][metric] for r in runs])
        entry["kept_token_fraction"] = _stats([r.get("kept_token_fraction") for r in runs])
        entry["seconds"] = _stats([r.get("seconds") for r in runs])
        out["methods"][name] = entry
    return out


def _fmt(stat: dict | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    if len(stat.get("values", [])) > 1:
        return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"
    return f"{stat['mean']:.{digits}f}"


TABLE_COLUMNS = (
    ("final_step_accuracy", "final step acc"),
    ("final_exact_match", "final exact"),
    ("best_step_accuracy", "best-ckpt step acc"),
    ("best_exact_match", "best-ckpt exact"),
    ("mean_ckpt_step_accuracy", "mean-ckpt step acc (dev)"),
    ("mean_ckpt_exact_match", "mean-ckpt exact (dev)"),
    ("kept_token_fraction", "kept tokens"),
)


def table_rows(summary: dict) -> list[list[str]]:
    """Header + one row per method (SFT first), cells formatted ``mean ± std``."""
    rows = [["method", "seeds"] + [title for _, title in TABLE_COLUMNS]]
    sft = summary["sft"]
    rows.append(["SFT", str(sft["n_seeds"]), _fmt(sft["final_step_accuracy"]), _fmt(sft["final_exact_match"]),
                 "–", "–", "–", "–", "1.00"])
    for entry in summary["methods"].values():
        rows.append([entry["label"], str(entry["n_seeds"])]
                    + [_fmt(entry[key], 2 if key == "kept_token_fraction" else 3) for key, _ in TABLE_COLUMNS])
    return rows


def markdown_table(summary: dict) -> str:
    rows = table_rows(summary)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(lines) + "\n"


def html_table(summary: dict) -> str:
    rows = table_rows(summary)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------

FAMILY_TITLES = {"dpo": "DPO family (x: DPO steps)", "ppo": "PPO family (x: PPO iterations)",
                 "rs": "rejection sampling (x: fine-tuning steps)"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def curves_png(results: list[dict], sft_records: list[dict], path: str | Path) -> Path:
    """Dev learning curves: step accuracy (top) and exact match (bottom), one column per family;
    mean over seeds with a ± std band; the SFT level dashed."""
    plt = _plt()
    families = [f for f in ("dpo", "ppo", "rs") if any(r["family"] == f for r in results)]
    fig, axes = plt.subplots(2, max(1, len(families)), figsize=(5.2 * max(1, len(families)), 7.0),
                             squeeze=False, constrained_layout=True)
    sft_dev = {m: sum(r["dev"][m] for r in sft_records) / len(sft_records) for m in ("step_accuracy", "exact_match")}
    for col, family in enumerate(families):
        methods: dict[str, list[dict]] = {}
        for r in results:
            if r["family"] == family:
                methods.setdefault(r["method"], []).append(r)
        for row, metric in enumerate(("step_accuracy", "exact_match")):
            ax = axes[row][col]
            for i, (name, runs) in enumerate(methods.items()):
                steps = sorted({c["step"] for r in runs for c in r["curve"]})
                means, stds = [], []
                for s in steps:
                    vals = [c[metric] for r in runs for c in r["curve"] if c["step"] == s]
                    st = _stats(vals)
                    means.append(st["mean"])
                    stds.append(st["std"])
                ax.plot(steps, means, marker="o", ms=3, color=f"C{i}", label=runs[0]["label"])
                if len(runs) > 1:
                    ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)],
                                    color=f"C{i}", alpha=0.15)
            ax.axhline(sft_dev[metric], color="gray", ls="--", lw=1, label="SFT")
            ax.set_title(FAMILY_TITLES[family] if row == 0 else "", fontsize=10)
            ax.set_ylabel(f"dev {metric.replace('_', ' ')}")
            ax.grid(alpha=0.3)
            if row == 1:  # exact match starts near 0: the upper left of the lower panel is free
                ax.legend(fontsize=7, loc="upper left")
    if not families:
        axes[0][0].text(0.5, 0.5, "no method runs", ha="center")
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def comparison_png(summary: dict, path: str | Path) -> Path:
    """Bar chart: held-out test step accuracy and exact match per method (final, best-on-dev) and the
    dev mean over checkpoints; error bars are the std over seeds."""
    plt = _plt()
    names = list(summary["methods"])
    labels = ["SFT"] + [summary["methods"][n]["label"] for n in names]
    fig, axes = plt.subplots(2, 1, figsize=(max(8.0, 0.62 * len(labels) + 3), 9.0), sharex=True,
                             constrained_layout=True)
    kinds = (("final", "final (test)"), ("best", "best-on-dev ckpt (test)"), ("mean_ckpt", "mean over ckpts (dev)"))
    width = 0.27
    for ax, metric in zip(axes, ("step_accuracy", "exact_match")):
        sft = summary["sft"][f"final_{metric}"]
        for k, (kind, title) in enumerate(kinds):
            means, errs = [sft["mean"] if kind == "final" else float("nan")], [sft["std"] if kind == "final" else 0]
            for n in names:
                st = summary["methods"][n][f"{kind}_{metric}"]
                means.append(st["mean"] if st["mean"] is not None else float("nan"))
                errs.append(st["std"] or 0.0)
            xs = [i + (k - 1) * width for i in range(len(labels))]
            ax.bar(xs, means, width, yerr=errs, capsize=2, label=title, color=f"C{k}", alpha=0.85)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.tick_params(axis="x", labelbottom=ax is axes[-1])
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_ylim(0, 1)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Heat-map rows of held-out responses
# --------------------------------------------------------------------------------------------------


def heldout_heatmap_rows(rm, prompts: list[str], responses: dict[str, list[str]], *, baseline="batch_mean",
                         delta: float = 0.0) -> list[dict]:
    """Heat-map rows (``segrl.viz`` format) of held-out responses scored by a segment RM.

    ``responses`` maps a model name to one response per prompt. Every response is scored in one
    batch: normalised token rewards spread over the RM's entropy segments; sequence sign ``+1`` when
    the RM's sequence score is at least the batch mean (as ASR-PPO / ASR-RS set it), else ``-1``;
    the ASR keep-mask with ``baseline`` / ``delta``. Titles carry the oracle verdict of every step.
    """
    import torch

    from segrl import ops
    from segrl.tasks import parse_response, solve

    flat_p, flat_r, names = [], [], []
    for name, resp in responses.items():
        for p, r in zip(prompts, resp):
            flat_p.append(p)
            flat_r.append(r if r.strip() else " ")
            names.append(name)
    rewards, mask, seg = rm.score_tokens(flat_p, flat_r, return_segment_ids=True, batch_size=64)
    prompt_ids, response_ids = rm.tokenize(flat_p, flat_r)
    scores = rm.sequence_scores(prompt_ids, response_ids, batch_size=64)
    seq_sign = torch.where(scores >= scores.mean(), 1, -1)
    kept = ops.keep_mask(rewards, mask, seq_sign, baseline=baseline, delta=delta)
    keep, fallback = kept.keep, kept.fallback
    rows = []
    tok = rm.tokenizer
    for b, (p, r, name) in enumerate(zip(flat_p, flat_r, names)):
        n = int(mask[b].sum())
        marks = "".join("✓" if part.correct else "✗" for part in parse_response(p, r))
        verdict = "correct" if r.strip() == solve(p) else f"parts {marks}"
        rows.append({
            "title": f"{p} → {verdict} · RM {float(scores[b]):+.2f}",
            "prompt": p, "side": name, "seq_sign": int(seq_sign[b]), "fallback": bool(fallback[b]),
            "tokens": [tok.decode([t]) for t in response_ids[b]][:n],
            "rewards": rewards[b, :n].tolist(), "segment_ids": seg[b, :n].tolist(), "kept": keep[b, :n].tolist(),
        })
    return rows


# --------------------------------------------------------------------------------------------------
# HTML report
# --------------------------------------------------------------------------------------------------

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;
line-height:1.45;padding:0 16px}
h1{font-size:1.6em} h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;font-size:0.88em;margin:8px 0}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee} .note{color:#555;font-size:0.9em}
iframe{width:100%;height:720px;border:1px solid #ccc} code{background:#f5f5f5;padding:1px 4px}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:0.85em}
"""


def _img(path: str | Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table><tbody>{body}</tbody></table>"


def render_report(path: str | Path, *, title: str, summary: dict, intro_html: str, curves: Path | None,
                  comparison: Path | None, rm_records: list[dict], pair_stats: list[dict], heatmap_html: str | None,
                  timings: dict[str, float], settings: dict, command: str, notes_html: str = "") -> Path:
    """Write the single-file HTML report (images inline as base64, the heat-map in an ``iframe srcdoc``)."""
    parts = [(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
              f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"), intro_html]
    parts.append("<h2>Held-out evaluation</h2>" + html_table(summary))
    parts.append(
        "<p class='note'>Greedy decoding on held-out prompts (a fixed hash partition of the prompt space, never "
        "trained on). <b>final</b>: the last weights on the <i>test</i> prompts; <b>best-ckpt</b>: the checkpoint "
        "with the highest <i>dev</i> step accuracy, scored on <i>test</i>; <b>mean-ckpt</b>: the average over "
        "the evaluated checkpoints on <i>dev</i>; <b>kept tokens</b>: the fraction of response tokens in the loss "
        "(1 for unmasked methods). Step accuracy = correct <code>a+b=c</code> steps / expected steps; exact = the "
        "whole response right. With several seeds: mean ± sample std.</p>")
    if curves is not None:
        parts.append("<h2>Learning curves (dev prompts)</h2>" + _img(curves, "learning curves"))
    if comparison is not None:
        parts.append("<h2>Comparison</h2>" + _img(comparison, "comparison bar chart"))
    if rm_records:
        head = ("<tr><th>seed</th><th>RM</th><th>c</th><th>pairwise acc (held-out pairs)</th><th>segments / resp.</th>"
                "<th>segment length</th><th>credit AUC (pooled)</th><th>credit AUC (within response)</th>"
                "<th>time (s)</th></tr>")
        body = ""
        for r in rm_records:
            cr = r.get("credit", {})
            f = (lambda v: "–" if v is None else f"{v:.3f}")
            body += (f"<tr><td>{r.get('seed', '')}</td><td>{r['arm']}</td><td>{r['threshold']}</td>"
                     f"<td>{r['eval']['accuracy']:.3f}</td><td>{r['eval']['segments_per_response']:.2f}</td>"
                     f"<td>{r['eval']['mean_segment_length']:.2f}</td><td>{f(cr.get('auc'))}</td>"
                     f"<td>{f(cr.get('auc_within_response'))}</td>"
                     f"<td>{r['seconds']:.0f}</td></tr>")
        parts.append("<h2>Reward models</h2><table>" + head + body + "</table>"
                     "<p class='note'>Credit AUC: how well the RM's normalised token reward separates correct from "
                     "wrong result digits (oracle labels) on the held-out pairs. Pooled, a sequence-level score alone "
                     "already helps (responses with more errors score lower); within response (rewards minus their "
                     "response's mean), 0.5 means no token-level credit: that is what a sequence-mean ASR mask "
                     "relies on.</p>")
        for r in rm_records:
            plot = r.get("normalizer_plot")
            if plot and Path(plot).is_file():
                parts.append(f"<p class='note'>Normaliser fit, seed {r.get('seed', '')}, {r['arm']} RM:</p>"
                             + _img(plot, "normaliser fit"))
                break
    if pair_stats:
        rows = [(f"seed {p.get('seed', '')}",
                 (f"{p['n']} pairs, conflict fraction {p['conflict_fraction']:.2f}, wrong parts chosen "
                  f"{p['chosen_wrong_parts']:.2f} / rejected {p['rejected_wrong_parts']:.2f}"))
                for p in pair_stats]
        parts.append("<h2>Preference pairs</h2>" + _kv_table(rows))
    if heatmap_html:
        parts.append(
            "<h2>Token heat-maps of held-out responses</h2><p class='note'>Each row is a greedy response to a held-out "
            "prompt, scored by the segment RM: colour = normalised token reward (blue above 0, red below), bars = the "
            "RM's entropy segments, struck-through / faded tokens are outside the ASR mask (sequence sign from the RM "
            "score vs the batch mean). Titles give the oracle verdict per part (✓ correct, ✗ wrong). Hover a token "
            "for its numbers.</p>"
            f"<iframe srcdoc=\"{html.escape(heatmap_html, quote=True)}\"></iframe>")
    if notes_html:
        parts.append(notes_html)
    timing_rows = [(k, f"{v:.0f} s") for k, v in timings.items()]
    parts.append("<h2>Run</h2>" + f"<pre>{html.escape(command)}</pre>" + _kv_table(timing_rows)
                 + "<details><summary>settings</summary><pre>" + html.escape(json.dumps(settings, indent=2, default=str))
                 + "</pre></details>")
    parts.append("</body></html>\n")
    path = Path(path)
    path.write_text("".join(parts), encoding="utf-8")
    return path
