"""``segrl demo``: ASR on the built-in tiny model pair and arithmetic preference data, end to end.

Steps:

1. build (or reuse) a tiny SFT reference model and a DPO-trained policy in ``OUTPUT_DIR/models``
   (:func:`segrl.models.make_tiny_pair`, a few seconds on two CPU cores);
2. score every response token of the built-in preference pairs with the implicit DPO reward
   ``beta * (log pi - log pi_ref)`` (:func:`segrl.rewards.implicit_token_rewards`);
3. segment with the ASR hysteresis rule and build the ASR keep-mask (SPEC §1), chosen rows with
   sequence sign +1 and rejected rows with -1, the baseline resolved over both sides together;
4. print segment statistics, and write ``heatmap.html``, ``heatmap.png`` and
   ``token_rewards.jsonl`` (re-render it with ``segrl viz --token_rewards_file``).

Examples::

    segrl demo --output_dir runs/demo
    segrl demo --delta 0.02 --baseline zero
    segrl demo --config demo.yaml
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

from segrl.models.tiny_data import step_correctness

BASELINE_NAMES = ("batch_mean", "sequence_mean", "zero")


@dataclass
class DemoConfig:
    """Options of ``segrl demo`` (flags, or keys of the ``--config`` YAML file)."""

    output_dir: str = field(
        default="runs/demo",
        metadata={"help": "Where the models (OUTPUT_DIR/models), heat-maps and token_rewards.jsonl are written."},
    )
    beta: float = field(default=0.1, metadata={"help": "beta of the implicit reward beta * (log pi - log pi_ref)."})
    baseline: str = field(
        default="batch_mean",
        metadata={"help": "ASR baseline: batch_mean (over chosen and rejected together), sequence_mean, zero, "
                          "or a number."},
    )
    delta: float = field(default=0.0, metadata={"help": "ASR hysteresis half-width (>= 0)."})
    seed: int = field(default=0, metadata={"help": "Seed of the tiny models (a new seed builds a new pair)."})
    arch: str = field(default="llama", metadata={"help": "Tiny model architecture: llama or qwen2."})
    png_pairs: int = field(
        default=6, metadata={"help": "Preference pairs drawn in heatmap.png (the HTML shows all of them)."}
    )
    rebuild: bool = field(default=False, metadata={"help": "Rebuild the tiny models even if OUTPUT_DIR/models has them."})


def parse_config(argv: list[str]) -> DemoConfig:
    """Parse flags (and ``--config x.yaml``) into a :class:`DemoConfig`."""
    from trl import TrlParser

    (cfg,) = TrlParser((DemoConfig,), prog="segrl demo").parse_args_and_config(args=argv)
    return cfg


def parse_baseline(value: str | float) -> str | float:
    """Baseline names stay strings; anything else must parse as a finite number."""
    if isinstance(value, str) and value in BASELINE_NAMES:
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`baseline` must be one of {BASELINE_NAMES} or a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"`baseline` must be finite, got {value!r}")
    return number


def _validate(cfg: DemoConfig) -> None:
    if not (math.isfinite(cfg.beta) and cfg.beta > 0):
        raise ValueError(f"`beta` must be a positive number, got {cfg.beta}")
    if not (math.isfinite(cfg.delta) and cfg.delta >= 0):
        raise ValueError(f"`delta` must be >= 0, got {cfg.delta}")
    if cfg.arch not in ("llama", "qwen2"):
        raise ValueError(f"`arch` must be llama or qwen2, got {cfg.arch!r}")
    if cfg.png_pairs < 1:
        raise ValueError(f"`png_pairs` must be >= 1, got {cfg.png_pairs}")
    parse_baseline(cfg.baseline)


def _pad_to(x, width: int, value):
    """Right-pad a ``(B, T)`` tensor to ``(B, width)``."""
    import torch

    pad = torch.full((x.shape[0], width - x.shape[1]), value, dtype=x.dtype)
    return torch.cat([x, pad], dim=1)


def segment_stats(mask, kept, segment_ids, fallback) -> dict[str, float]:
    """Summary numbers of one group of rows (tensors of shape ``(B, T)``; ``fallback`` ``(B,)``)."""
    n_tokens = int(mask.sum())
    n_segments = (segment_ids.max(dim=1).values + 1).clamp(min=0)  # K_b; ids are 0..K_b-1
    return {
        "responses": mask.shape[0],
        "tokens": n_tokens,
        "kept": int(kept.sum()),
        "kept_fraction": int(kept.sum()) / max(n_tokens, 1),
        "segments_per_response": float(n_segments.float().mean()),
        "mean_segment_length": int((segment_ids >= 0).sum()) / max(int(n_segments.sum()), 1),
        "fallbacks": int(fallback.sum()),
    }


def _verdict(prompt: str, response: str) -> str:
    """`` · wrong step, wrong answer``-style title suffix: what the arithmetic checker finds."""
    ok = step_correctness(prompt, response)
    found = [text for text, bad in (("wrong step", not all(ok[:-1])), ("wrong answer", not ok[-1])) if bad]
    return " · " + ", ".join(found) if found else ""


def run(cfg: DemoConfig, console=None) -> dict[str, Path]:
    """Run the demo; returns the paths written (``html``, ``png``, ``jsonl``, ``models``)."""
    import torch
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from segrl.models import load_tiny_prefs, make_tiny_pair
    from segrl.ops import asr_mask, hysteresis_states, resolve_baseline, segment_ids_from_states
    from segrl.rewards import implicit_token_rewards
    from segrl.viz import render_html, render_png

    _validate(cfg)
    baseline = parse_baseline(cfg.baseline)
    console = console or Console()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    # 1. Models. make_tiny_pair reuses a pair built with the same arguments.
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True) as progress:
        tasks: dict[str, int] = {}

        def on_step(stage: str, step: int, total: int) -> None:
            if stage not in tasks:
                label = {"sft": "training tiny SFT model", "dpo": "training tiny DPO policy"}.get(stage, stage)
                tasks[stage] = progress.add_task(label, total=total)
            progress.update(tasks[stage], completed=step)

        pair = make_tiny_pair(out / "models", arch=cfg.arch, seed=cfg.seed, overwrite=cfg.rebuild, progress=on_step)
    console.print(f"models: ref [bold]{pair.sft}[/]  policy [bold]{pair.policy}[/]"
                  + ("" if tasks else "  (reused)"))

    # 2. Token rewards.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    prefs = load_tiny_prefs()
    prompts = [p["prompt"] for p in prefs]
    with console.status("scoring response tokens with the implicit DPO reward"):
        tokenizer = AutoTokenizer.from_pretrained(pair.sft)
        policy = AutoModelForCausalLM.from_pretrained(pair.policy)
        ref = AutoModelForCausalLM.from_pretrained(pair.sft)
        r_c, b_c = implicit_token_rewards(policy, ref, tokenizer, prompts, [p["chosen"] for p in prefs], beta=cfg.beta)
        r_r, b_r = implicit_token_rewards(policy, ref, tokenizer, prompts, [p["rejected"] for p in prefs],
                                          beta=cfg.beta)

    # 3. ASR over chosen and rejected as one (2B, T) batch, so "batch_mean" is one shared baseline.
    n = len(prefs)
    width = max(r_c.shape[1], r_r.shape[1])
    rewards = torch.cat([_pad_to(r_c, width, 0.0), _pad_to(r_r, width, 0.0)])
    mask = torch.cat([_pad_to(b_c.mask, width, False), _pad_to(b_r.mask, width, False)])
    seq_sign = torch.cat([torch.ones(n, dtype=torch.long), -torch.ones(n, dtype=torch.long)])
    kept = asr_mask(rewards, mask, seq_sign, baseline=baseline, delta=cfg.delta)
    # A fallback row is one whose own mask would be empty (SPEC §1, empty="full").
    fallback = ~asr_mask(rewards, mask, seq_sign, baseline=baseline, delta=cfg.delta, empty="none").any(dim=1)
    base = resolve_baseline(rewards, mask, baseline)
    states = hysteresis_states(rewards, mask, base, cfg.delta)
    segment_ids = segment_ids_from_states(states, mask)

    # 4. Report.
    seq_c, seq_r = r_c.sum(dim=1), r_r.sum(dim=1)
    table = Table(title=f"ASR segments (baseline={cfg.baseline} → {float(base[0]):+.4f}, delta={cfg.delta:g}, "
                        f"beta={cfg.beta:g})")
    for col in ("side", "resp", "tokens", "kept", "kept %", "segs/resp", "seg len", "fallback"):
        table.add_column(col, justify="left" if col == "side" else "right")
    table.caption = ("σ = +1 for chosen, −1 for rejected; kept = tokens in the ASR mask; "
                     "fallback = rows whose mask would be empty (given their full mask)")
    groups = {"chosen": slice(0, n), "rejected": slice(n, 2 * n), "all": slice(0, 2 * n)}
    stats = {}
    for name, rows in groups.items():
        s = stats[name] = segment_stats(mask[rows], kept[rows], segment_ids[rows], fallback[rows])
        table.add_row(name, str(s["responses"]), str(s["tokens"]), str(s["kept"]), f"{s['kept_fraction']:.1%}",
                      f"{s['segments_per_response']:.2f}", f"{s['mean_segment_length']:.2f}", str(s["fallbacks"]))
    console.print(table)
    console.print(f"sequence-level implicit reward: chosen > rejected on {int((seq_c > seq_r).sum())}/{n} pairs "
                  f"(mean {float(seq_c.mean()):+.3f} vs {float(seq_r.mean()):+.3f})")

    # 5. Heat-map rows, chosen and rejected of a pair next to each other.
    rows = []
    for i, p in enumerate(prefs):
        for side, b, batch, sign in (("chosen", i, b_c, 1), ("rejected", n + i, b_r, -1)):
            n_b = int(mask[b].sum())
            rows.append({
                "title": f"pair {i} · {p['prompt']}{_verdict(p['prompt'], p[side])}",
                "prompt": p["prompt"],
                "response": p[side],
                "side": side,
                "seq_sign": sign,
                "tokens": batch.tokens[i],
                "rewards": rewards[b, :n_b].tolist(),
                "segment_ids": segment_ids[b, :n_b].tolist(),
                "kept": kept[b, :n_b].tolist(),
            })
    paths = {"models": out / "models", "jsonl": out / "token_rewards.jsonl", "html": out / "heatmap.html",
             "png": out / "heatmap.png"}
    with open(paths["jsonl"], "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    with console.status("rendering heat-maps"):
        title = f"segrl demo: implicit DPO token rewards and ASR segments (beta={cfg.beta:g}, delta={cfg.delta:g})"
        render_html(rows, paths["html"], title=title)
        render_png(rows, paths["png"], max_rows=2 * cfg.png_pairs)
    for kind in ("html", "png", "jsonl"):
        console.print(f"wrote {kind}: [bold]{paths[kind]}[/]")
    return paths


def _quiet_transformers() -> None:
    # Per-file "Loading weights" / "Writing model shards" bars drown the command's own output.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl demo``. Returns 0 on success, 2 on invalid options."""
    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    _quiet_transformers()
    try:
        run(cfg)
    except ValueError as err:
        print(f"segrl demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
