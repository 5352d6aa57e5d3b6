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
    "curves_figure",
    "curves_png",
    "credit_table_html",
    "heldout_heatmap_rows",
    "library_versions",
    "markdown_table",
    "provenance_html",
    "render_report",
    "report_extras",
    "training_pair_rows",
    "y_limits",
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


#: Line style of each family on the one-chart view of every method.
FAMILY_STYLES = {"dpo": "-", "ppo": "--", "rs": ":"}
#: Smallest y range a learning-curve panel shows (accuracies): noise of a few thousandths never fills the axis.
MIN_Y_SPAN = 0.2


def y_limits(values, level: float | None = None, *, min_span: float = MIN_Y_SPAN) -> tuple[float, float]:
    """y-axis range for accuracy curves: every value and the SFT ``level`` inside, at least ``min_span``
    wide, padded 5%, kept within [0, 1] (shifted, not cut, when it would cross a bound)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if level is not None:
        vals.append(float(level))
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    span = max(hi - lo, min_span)
    mid = (lo + hi) / 2
    lo, hi = mid - 0.55 * span, mid + 0.55 * span
    if lo < 0.0:
        lo, hi = 0.0, min(1.0, hi - lo)
    if hi > 1.0:
        lo, hi = max(0.0, lo - (hi - 1.0)), 1.0
    return lo, hi


def _curve_stats(runs: list[dict], metric: str) -> tuple[list[int], list[float], list[float | None]]:
    """Checkpoint steps, the mean over seeds and the sample std (``None`` where fewer than 2 seeds)."""
    steps = sorted({c["step"] for r in runs for c in r["curve"]})
    means, stds = [], []
    for s in steps:
        st = _stats([c[metric] for r in runs for c in r["curve"] if c["step"] == s])
        means.append(st["mean"])
        stds.append(st["std"] if len(st["values"]) > 1 else None)
    return steps, means, stds


def curves_png(results: list[dict], sft_records: list[dict], path: str | Path) -> Path:
    """:func:`curves_figure` saved as a PNG."""
    fig = curves_figure(results, sft_records)
    path = Path(path)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def curves_figure(results: list[dict], sft_records: list[dict]):
    """Dev learning curves: step accuracy and exact match, one column per family (x: that family's
    steps, integers), mean over seeds with a ± std band only where 2+ seeds ran; the SFT level dashed;
    y ranges that contain SFT and are at least :data:`MIN_Y_SPAN` wide. The bottom panel puts every
    method's per-checkpoint dev step accuracy on one chart (x: fraction of the run's steps)."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    families = [f for f in ("dpo", "ppo", "rs") if any(r["family"] == f for r in results)]
    ncol = max(1, len(families))
    fig = plt.figure(figsize=(max(10.0, 5.2 * ncol), 11.0), constrained_layout=True)
    grid = fig.add_gridspec(3, ncol, height_ratios=[1, 1, 1.15])
    sft_dev = {m: sum(r["dev"][m] for r in sft_records) / len(sft_records) for m in ("step_accuracy", "exact_match")}
    by_method: dict[str, list[dict]] = {}
    for r in results:
        by_method.setdefault(r["method"], []).append(r)
    colours = {name: f"C{i % 10}" for i, name in enumerate(by_method)}
    for col, family in enumerate(families):
        methods = {n: runs for n, runs in by_method.items() if runs[0]["family"] == family}
        for row, metric in enumerate(("step_accuracy", "exact_match")):
            ax = fig.add_subplot(grid[row, col])
            shown = []
            for name, runs in methods.items():
                steps, means, stds = _curve_stats(runs, metric)
                ax.plot(steps, means, marker="o", ms=3, color=colours[name], label=runs[0]["label"])
                shown += means
                band = [(s, m, d) for s, m, d in zip(steps, means, stds) if d is not None]
                if band:
                    xs, ms, ds = zip(*band)
                    ax.fill_between(xs, [m - d for m, d in zip(ms, ds)], [m + d for m, d in zip(ms, ds)],
                                    color=colours[name], alpha=0.15)
                    shown += [m - d for m, d in zip(ms, ds)] + [m + d for m, d in zip(ms, ds)]
            ax.axhline(sft_dev[metric], color="gray", ls="--", lw=1, label="SFT")
            ax.set_ylim(*y_limits(shown, sft_dev[metric]))
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_title(FAMILY_TITLES[family] if row == 0 else "", fontsize=10)
            ax.set_ylabel(f"dev {metric.replace('_', ' ')}")
            ax.grid(alpha=0.3)
            if row == 1:
                ax.legend(fontsize=7, loc="best")
    ax = fig.add_subplot(grid[2, :])
    shown = []
    for name, runs in by_method.items():
        steps, means, _ = _curve_stats(runs, "step_accuracy")
        last = max(steps) if steps and max(steps) > 0 else 1
        ax.plot([s / last for s in steps], means, marker="o", ms=3, color=colours[name],
                ls=FAMILY_STYLES.get(runs[0]["family"], "-"), label=runs[0]["label"])
        shown += means
    ax.axhline(sft_dev["step_accuracy"], color="gray", ls="--", lw=1, label="SFT")
    ax.set_ylim(*y_limits(shown, sft_dev["step_accuracy"]))
    ax.set_xlim(-0.02, 1.02)
    ax.set_title("every method on one chart: per-checkpoint dev step accuracy (mean over seeds; "
                 "solid DPO, dashed PPO, dotted RS)", fontsize=10)
    ax.set_xlabel("training progress (fraction of the run's DPO steps / PPO iterations / RS steps)")
    ax.set_ylabel("dev step accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if not by_method:
        ax.text(0.5, 0.5, "no method runs", ha="center", transform=ax.transAxes)
    return fig


def comparison_png(summary: dict, path: str | Path) -> Path:
    """Bar chart: held-out test step accuracy and exact match per method (final, best-on-dev) and the
    dev mean over checkpoints, y from 0 to 1; error bars (std over seeds) only on bars of 2+ seeds."""
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
            stats = [sft if kind == "final" else None] + [summary["methods"][n][f"{kind}_{metric}"] for n in names]
            means = [st["mean"] if st and st["mean"] is not None else float("nan") for st in stats]
            xs = [i + (k - 1) * width for i in range(len(labels))]
            ax.bar(xs, means, width, label=title, color=f"C{k}", alpha=0.85)
            bars = [(x, st["mean"], st["std"]) for x, st in zip(xs, stats)
                    if st and st["mean"] is not None and len(st.get("values", [])) > 1]
            if bars:
                bx, by, be = zip(*bars)
                ax.errorbar(bx, by, yerr=be, fmt="none", ecolor="#222", capsize=2, lw=1)
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
    seq_sign = ops.sequence_sign(scores, scores.mean())
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
            "labels": _oracle_labels(tok, p, r, n),
        })
    return rows


def _oracle_labels(tokenizer, prompt: str, response: str, n: int) -> list[int] | None:
    """The built-in task's oracle label (+1 / -1 / 0) of each of the ``n`` response tokens, or ``None``
    when the oracle's tokenisation does not line up with the RM's."""
    from segrl.tasks import oracle_token_rewards

    values = oracle_token_rewards(tokenizer, prompt, response)
    return [(v > 0) - (v < 0) for v in values] if len(values) == n else None


def training_pair_rows(rm, pairs: list[dict], *, baseline="sequence_mean", delta=0.0, delta_quantile: float = 0.3,
                       n_pairs: int = 2, sample: int = 256) -> tuple[list[dict], float]:
    """Heat-map rows of ``n_pairs`` training pairs with the ASR mask ASR-DPO trains on, chosen then rejected.

    The first ``sample`` pairs are scored by ``rm`` (normalised token rewards over its segments); chosen
    rows get sequence sign +1, rejected -1 (docs/method.md#sequence-sign), and the keep-mask uses
    ``baseline`` and ``delta`` (``"auto"`` resolved over the sample's tokens, as training resolves it over
    the training set's). Conflict pairs (a wrong step in chosen, a correct one in rejected) are shown
    first: they are where a segment mask should differ from the sequence label. Labels: the pairs'
    oracle columns. Returns ``(rows, resolved_delta)``.
    """
    from segrl import ops
    from segrl.tasks import is_conflict_pair

    pairs = list(pairs)[:sample]
    if not pairs:
        raise ValueError("`pairs` is empty")
    n = len(pairs)
    prompts = [r["prompt"] for r in pairs] * 2
    responses = [r["chosen"] for r in pairs] + [r["rejected"] for r in pairs]
    rewards, mask, seg = rm.score_tokens(prompts, responses, return_segment_ids=True, batch_size=64)
    sign = ops.preference_sign(n)
    res = ops.keep_mask(rewards, mask, sign, kind="asr", baseline=baseline, delta=delta, delta_quantile=delta_quantile)
    keep, fallback, resolved = res.keep, res.fallback, res.delta
    order = sorted(range(n), key=lambda i: not is_conflict_pair(pairs[i]["prompt"], pairs[i]["chosen"],
                                                                pairs[i]["rejected"]))[:n_pairs]
    _, response_ids = rm.tokenize(prompts, responses)
    rows = []
    for k, i in enumerate(order):
        for side, b in (("chosen", i), ("rejected", n + i)):
            m = int(mask[b].sum())
            oracle = pairs[i].get(f"{side}_token_rewards")
            labels = [(v > 0) - (v < 0) for v in oracle] if oracle is not None and len(oracle) == m else \
                _oracle_labels(rm.tokenizer, prompts[b], responses[b], m)
            rows.append({
                "title": f"pair {k + 1}: {pairs[i]['prompt']}", "prompt": pairs[i]["prompt"], "side": side,
                "seq_sign": int(sign[b]), "fallback": bool(fallback[b]),
                "tokens": [rm.tokenizer.decode([t]) for t in response_ids[b]][:m],
                "rewards": rewards[b, :m].tolist(), "segment_ids": seg[b, :m].tolist(), "kept": keep[b, :m].tolist(),
                "labels": labels,
            })
    return rows, float(resolved)


def report_extras(pipeline, seeds: list[int], results: list[dict], out_dir: str | Path) -> dict:
    """What the report shows beyond the result records (keyword arguments of :func:`render_report`).

    - ``credit_rows``: the token credit of the implicit reward ``beta * (log pi - log pi_ref)`` of each
      seed's plain DPO run (when its model was kept), on that seed's held-out pairs;
    - ``training_pairs_html``: two training pairs of the first seed with the keep-mask the first
      RM-based ASR-DPO method trains on (its RM, baseline and delta), chosen and rejected side by side
      (also written to ``out_dir/training_pairs.html``); absent without such a method.
    """
    from segrl.pipeline.diagnostics import implicit_credit
    from segrl.pipeline.settings import METHODS
    from segrl.rm import SegmentRewardModel
    from segrl.viz import render_html

    s = pipeline.dpo_settings
    extra: dict = {"credit_rows": []}
    for seed in seeds:
        policy = pipeline.run_dir(seed, "dpo") / "model"
        if (policy / "config.json").is_file():
            credit = implicit_credit(policy, pipeline.sft_dir(seed), pipeline.pairs(seed)[1], beta=s.implicit_beta)
            extra["credit_rows"].append({"seed": seed, "credit": credit,
                                         "source": f"implicit reward of the DPO run (β = {s.implicit_beta:g})"})
    asr = [r for r in results if r["mask"] == "asr" and r.get("rm_arm") and r["family"] == "dpo"]
    if not asr or not (pipeline.rm_dir(seeds[0], asr[0]["rm_arm"]) / "config.json").is_file():
        return extra
    spec, arm = METHODS[asr[0]["method"]], asr[0]["rm_arm"]
    rm = SegmentRewardModel.from_pretrained(pipeline.rm_dir(seeds[0], arm))
    baseline = spec.baseline or s.asr_baseline
    rows, delta = training_pair_rows(rm, pipeline.pairs(seeds[0])[0], baseline=baseline, delta=s.asr_delta,
                                     delta_quantile=getattr(s, "asr_delta_quantile", 0.3))
    intro = (f"<p class='note'>{html.escape(asr[0]['label'])}, seed {seeds[0]}: baseline <code>{baseline}</code>, "
             f"hysteresis half-width δ = {delta:.3g}"
             + (" (auto, resolved over 256 training pairs)" if isinstance(s.asr_delta, str) else "")
             + "; chosen keeps its segments above the baseline, rejected its segments below.</p>")
    path = Path(out_dir) / "training_pairs.html"
    extra["training_pairs_html"] = render_html(
        rows, path, title=f"{arm} RM token rewards and the ASR-DPO training mask on two training pairs",
        columns=2, intro=intro)
    return extra


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
iframe{width:100%;height:720px;border:1px solid #ccc} iframe.pairs{height:560px}
code{background:#f5f5f5;padding:1px 4px}
pre{background:#f7f7f7;padding:8px;overflow:auto;font-size:0.85em} table.kv td{text-align:left}
"""


def _img(path: str | Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _kv_table(rows: list[tuple[str, str]]) -> str:
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows)
    return f"<table class='kv'><tbody>{body}</tbody></table>"


def _f3(v) -> str:
    return "–" if v is None else f"{v:.3f}"


def credit_rows_from_rm_records(rm_records: list[dict]) -> list[dict]:
    """``{"seed", "source", "credit"}`` rows of the credit table, one per RM record carrying credit."""
    return [{"seed": r.get("seed", ""), "source": f"{r['arm']} RM (c = {r['threshold']})", "credit": r["credit"]}
            for r in rm_records if r.get("credit")]


def credit_table_html(rows: list[dict]) -> str:
    """The token-credit table (docs/method.md#token-credit): one row per (seed, token-reward source)."""
    head = ("<tr><th>token-reward source</th><th>seed</th><th>within-response AUC</th><th>… chosen</th>"
            "<th>… rejected</th><th>pooled AUC</th><th>first error at the largest drop</th><th>chance</th>"
            "<th>labelled tokens ✓ / ✗</th></tr>")
    body = ""
    for r in rows:
        c = r["credit"]
        body += (f"<tr><td>{html.escape(str(r['source']))}</td><td>{html.escape(str(r.get('seed', '')))}</td>"
                 f"<td><b>{_f3(c.get('auc_within_response'))}</b></td>"
                 f"<td>{_f3(c.get('auc_within_response_chosen'))}</td>"
                 f"<td>{_f3(c.get('auc_within_response_rejected'))}</td><td>{_f3(c.get('auc'))}</td>"
                 f"<td>{_f3(c.get('first_error_hit_rate'))} ({c.get('first_error_n', 0)} resp.)</td>"
                 f"<td>{_f3(c.get('first_error_chance'))}</td>"
                 f"<td>{c.get('n_correct', '–')} / {c.get('n_wrong', '–')}</td></tr>")
    return f"<table id='credit-table'><thead>{head}</thead><tbody>{body}</tbody></table>"


def library_versions() -> dict[str, str]:
    """Installed versions of segrl and the libraries its results depend on (``"-"`` when missing)."""
    import platform
    from importlib import metadata

    out = {}
    for name in ("segrl", "trl", "transformers", "torch", "accelerate", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "-"
    out["python"] = platform.python_version()
    return out


def provenance_html(command: str, settings: dict, timings: dict[str, float], *,
                    wall_seconds: float | None = None) -> str:
    """Command, seeds, wall time, library versions and the resolved configuration, for the report's end."""
    import datetime

    seeds = settings.get("seeds", settings.get("seed", "–"))
    wall = wall_seconds if wall_seconds is not None else sum(timings.values())
    versions = library_versions()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rows = [("command", command), ("seeds", str(seeds)),
            ("wall time", f"{wall:.0f} s (this invocation; stages found in the cache are reused, not re-timed)"),
            ("versions", ", ".join(f"{k} {v}" for k, v in versions.items())), ("written", stamp)]
    rows += [(f"stage: {k}", f"{v:.0f} s") for k, v in timings.items()]
    return ("<section id='provenance'><h2>Provenance</h2>" + _kv_table(rows)
            + "<details><summary>resolved configuration (every option, defaults included)</summary><pre>"
            + html.escape(json.dumps(settings, indent=2, default=str)) + "</pre></details></section>")


def render_report(path: str | Path, *, title: str, summary: dict, intro_html: str, curves: Path | None,
                  comparison: Path | None, rm_records: list[dict], pair_stats: list[dict], heatmap_html: str | None,
                  timings: dict[str, float], settings: dict, command: str, notes_html: str = "",
                  credit_rows: list[dict] | None = None, training_pairs_html: str | None = None,
                  wall_seconds: float | None = None) -> Path:
    """Write the single-file HTML report (images inline as base64, heat-maps in ``iframe srcdoc``).

    Sections: the results table with the token-credit table next to it (RM records' ``credit`` plus
    ``credit_rows``: ``{"seed", "source", "credit"}``), learning curves, the comparison chart, reward
    models, preference pairs, ``training_pairs_html`` (pairs with their training masks), the held-out
    heat-maps, and a provenance block (command, seeds, wall time, library versions, resolved config).
    """
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
    credit = credit_rows_from_rm_records(rm_records) + list(credit_rows or [])
    if credit:
        parts.append(
            "<section id='credit'><h2>Token credit of the reward sources</h2>" + credit_table_html(credit)
            + "<p class='note'>On the held-out preference pairs, against the oracle's token labels (result digits "
            "of each step: correct / wrong). <b>Within-response AUC</b>: how well <code>r<sub>t</sub></code> minus "
            "its response's mean separates correct from wrong tokens, pooled over responses; 0.5 = the source "
            "only ranks whole responses, 1.0 = perfect localisation. This is what a sequence-mean ASR mask "
            "relies on. <b>Pooled AUC</b> on raw rewards also credits a response-level score. <b>First error at "
            "the largest drop</b>: the share of responses with a wrong step whose most negative "
            "<code>r<sub>t</sub> − r<sub>t−1</sub></code> falls in the tokens of their first wrong step "
            "(<b>chance</b>: a drop placed at random). <code>segrl eval-rm</code> prints the same numbers for "
            "any labelled data.</p></section>")
    if curves is not None:
        parts.append("<h2>Learning curves (dev prompts)</h2>" + _img(curves, "learning curves"))
    if comparison is not None:
        parts.append("<h2>Comparison</h2>" + _img(comparison, "comparison bar chart"))
    if rm_records:
        head = ("<tr><th>seed</th><th>RM</th><th>c</th><th>pairwise acc (held-out pairs)</th><th>segments / resp.</th>"
                "<th>segment length</th><th>time (s)</th></tr>")
        body = ""
        for r in rm_records:
            body += (f"<tr><td>{r.get('seed', '')}</td><td>{r['arm']}</td><td>{r['threshold']}</td>"
                     f"<td>{r['eval']['accuracy']:.3f}</td><td>{r['eval']['segments_per_response']:.2f}</td>"
                     f"<td>{r['eval']['mean_segment_length']:.2f}</td><td>{r['seconds']:.0f}</td></tr>")
        parts.append("<h2>Reward models</h2><table>" + head + body + "</table>"
                     "<p class='note'>Their token credit is in the table above.</p>")
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
    if training_pairs_html:
        parts.append(
            "<h2>What the mask did in training: two training pairs</h2><p class='note'>Chosen (left) and rejected "
            "(right) response of two training pairs, scored by the reward model ASR-DPO takes its token rewards "
            "from, with the keep-mask it trains on: struck-through / faded tokens are left out of the loss. The "
            "✓ / ✗ under a token is the oracle's verdict on that step's result: a mask that assigns credit keeps "
            "the ✓ tokens of the chosen response and the ✗ tokens of the rejected one.</p>"
            f"<iframe class='pairs' srcdoc=\"{html.escape(training_pairs_html, quote=True)}\"></iframe>")
    if heatmap_html:
        parts.append(
            "<h2>Token heat-maps of held-out responses</h2><p class='note'>Each row is a greedy response to a held-out "
            "prompt, scored by the segment RM: colour = normalised token reward (blue above 0, red below), bars = the "
            "RM's entropy segments, struck-through / faded tokens are outside the ASR mask (sequence sign from the RM "
            "score vs the batch mean). Titles give the oracle verdict per part, and the ✓ / ✗ under a token is the "
            "oracle's label of that token (correct / wrong result digit): where the RM's credit lands against the "
            "truth. Hover a token for its numbers.</p>"
            f"<iframe srcdoc=\"{html.escape(heatmap_html, quote=True)}\"></iframe>")
    if notes_html:
        parts.append(notes_html)
    parts.append(provenance_html(command, settings, timings, wall_seconds=wall_seconds))
    parts.append("</body></html>\n")
    path = Path(path)
    path.write_text("".join(parts), encoding="utf-8")
    return path
