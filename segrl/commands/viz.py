"""``segrl viz``: render token rewards, segments and ASR keep-masks as an HTML (and PNG) heat-map.

Two sources of token rewards:

- ``--token_rewards_file rows.jsonl``: one row per line, as taken by :func:`segrl.viz.render_html`
  (``tokens``, ``rewards`` / ``token_rewards``, optional ``segment_ids``, ``kept`` / ``mask``,
  ``title``, ``prompt``, and ``seq_sign`` (+1/-1) or ``side`` (chosen/rejected) for ASR).
- ``--policy P --ref_model R --dataset prefs.jsonl``: the DPO implicit reward
  ``beta * (log pi - log pi_ref)`` of every response token of the first ``--max_samples`` pairs of a
  TRL preference dataset (``prompt`` / ``chosen`` / ``rejected``), chosen rows with sign +1 and
  rejected rows with -1.

With ``--asr true`` (default) rows without ``segment_ids`` / ``kept`` get them from the ASR rule
(docs/method.md#asr-mask) with ``--baseline``, ``--delta``, ``--neutral``, ``--empty``. The ``batch_mean`` baseline
is taken over *all* rows rendered together (the whole file, or all chosen + rejected responses).

Examples::

    segrl viz --token_rewards_file rows.jsonl --output_html map.html --output_png map.png
    segrl viz --policy out/policy --ref_model out/sft --dataset prefs.jsonl --beta 0.1 --delta 0.05
    segrl viz --config viz.yaml
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from segrl.asr_options import ASRArguments, parse_delta
from segrl.ops import parse_baseline as ops_parse_baseline



@dataclass
class VizConfig:
    """Options of ``segrl viz`` (flags, or keys of the ``--config`` YAML file)."""

    token_rewards_file: Optional[str] = field(
        default=None,
        metadata={"help": "JSONL of rows: tokens, rewards (or token_rewards), optional segment_ids, kept (or mask), "
                          "title, prompt, seq_sign / side. Excludes --policy/--ref_model/--dataset."},
    )
    policy: Optional[str] = field(
        default=None, metadata={"help": "Path of the policy model (implicit rewards need --ref_model and --dataset)."}
    )
    ref_model: Optional[str] = field(default=None, metadata={"help": "Path of the reference (SFT) model."})
    tokenizer: Optional[str] = field(default=None, metadata={"help": "Tokenizer path (default: --policy)."})
    dataset: Optional[str] = field(
        default=None, metadata={"help": "JSONL preference data in TRL format: prompt, chosen, rejected."}
    )
    max_samples: int = field(default=6, metadata={"help": "Number of preference pairs from --dataset to render."})
    beta: float = field(default=0.1, metadata={"help": "beta of the implicit reward beta * (log pi - log pi_ref)."})
    batch_size: int = field(default=8, metadata={"help": "Forward-pass micro-batch size for the models."})
    max_length: int = field(default=512, metadata={"help": "Maximum prompt + response length in tokens."})
    asr: bool = field(
        default=True, metadata={"help": "Compute ASR segments and keep-mask for rows that do not carry them."}
    )
    baseline: str = field(
        default=ASRArguments.asr_baseline,
        metadata={"help": "ASR baseline: sequence_mean, batch_mean, zero, position_mean, or a number "
                          "(default: the trainers' default)."},
    )
    delta: str = field(
        default=ASRArguments.asr_delta,
        metadata={"help": "ASR hysteresis half-width: a number >= 0, or 'auto' (the delta_quantile quantile of "
                          "|r - b| over all rows drawn; default: the trainers' default)."},
    )
    delta_quantile: float = field(default=ASRArguments.asr_delta_quantile,
                                  metadata={"help": "Quantile q of delta='auto'."})
    neutral: str = field(default="drop", metadata={"help": "ASR undecided (state 0) tokens: drop or keep."})
    empty: str = field(
        default="full", metadata={"help": "ASR rows whose mask would be empty: full (fall back) or none."}
    )
    center: Optional[float] = field(
        default=None,
        metadata={"help": "Reward drawn white (the colour scale's centre). Default: the ASR baseline when it is one "
                          "number for all rows (batch_mean, zero, a float), so blue/red match above/below it; "
                          "else 0."},
    )
    title: str = field(default="segrl token heat-map", metadata={"help": "Page / figure title."})
    output_html: str = field(default="heatmap.html", metadata={"help": "Where to write the HTML heat-map."})
    output_png: Optional[str] = field(default=None, metadata={"help": "Also write a PNG figure here."})
    max_rows: int = field(default=12, metadata={"help": "Rows drawn in the PNG (the HTML shows all)."})
    dpi: int = field(default=150, metadata={"help": "PNG resolution."})

    def __post_init__(self):
        self.delta = parse_delta(self.delta, "delta")


def parse_config(argv: list[str]) -> VizConfig:
    """Parse flags (and ``--config x.yaml``) into a :class:`VizConfig`."""
    from trl import TrlParser

    from segrl.commands._common import parse_args  # one name per concept: --asr_delta, --model_name_or_path, ...

    (cfg,) = parse_args(TrlParser((VizConfig,), prog="segrl viz"), argv, "segrl viz")
    return cfg


def parse_baseline(value: str | float) -> str | float:
    return ops_parse_baseline(value, "baseline")


# --------------------------------------------------------------------------------------------
# ASR
# --------------------------------------------------------------------------------------------


@dataclass
class ASRView:
    """What the heat-map draws from the ASR rule for a ``(B, T)`` batch.

    ``segment_ids`` / ``kept``: (B, T); ``fallback``: (B,) rows whose mask would have been empty and
    fell back to the full response (``empty="full"``); ``center``: the baseline as one number when
    all rows share it (not ``sequence_mean``), else None.
    """

    segment_ids: Any
    kept: Any
    fallback: Any
    center: float | None


def asr_view(rewards, mask, seq_sign, *, baseline="batch_mean", delta=0.0, neutral="drop", empty="full",
             delta_quantile: float = 0.3) -> ASRView:
    """Segments, keep-mask and fallback rows of the ASR rule: :func:`segrl.ops.keep_mask`'s result.

    Segments are the hysteresis runs. A fallback row is shown so a fully kept rejected row of blue
    tokens is not mistaken for the rule keeping them on purpose; with ``empty="none"`` nothing falls back.
    """
    from segrl.ops import keep_mask

    res = keep_mask(rewards, mask, seq_sign, baseline=baseline, delta=delta, neutral=neutral, empty=empty,
                    delta_quantile=delta_quantile)
    fallback = res.fallback & (empty == "full")
    per_row = baseline in ("sequence_mean", "position_mean")
    center = None if per_row or res.baseline.numel() == 0 else float(res.baseline[0])
    return ASRView(res.segment_ids, res.keep, fallback, center)


def row_seq_sign(row: dict, i: int) -> int:
    """A JSONL row's sequence sign: ``seq_sign`` (+1/-1), else ``side`` (chosen +1 / rejected -1), else +1."""
    if row.get("seq_sign") is not None:
        sign = row["seq_sign"]
        if sign not in (1, -1):
            raise ValueError(f"row {i}: field 'seq_sign' must be +1 or -1, got {sign!r}")
        return int(sign)
    side = row.get("side")
    if side is None:
        return 1
    if side not in ("chosen", "rejected"):
        raise ValueError(f"row {i}: field 'side' must be 'chosen' or 'rejected', got {side!r}")
    return 1 if side == "chosen" else -1


def add_asr(rows: list[dict], cfg: VizConfig) -> tuple[list[dict], float | None]:
    """Fill in ``segment_ids`` / ``kept`` where a (validated) row lacks them, computing ASR over
    all rows at once so the ``batch_mean`` baseline is shared.

    Returns new row dicts and the shared baseline (None when no row needed ASR, or per-row baselines).
    """
    import torch

    if not any(r["segment_ids"] is None or r["kept"] is None for r in rows):
        return rows, None
    from segrl.padding import pad_rows

    rewards, mask = pad_rows([r["rewards"] for r in rows], 0.0, dtype=torch.float32)
    mask = mask.bool()
    signs = torch.tensor([row_seq_sign(r["extra"], i) for i, r in enumerate(rows)], dtype=torch.long)
    view = asr_view(rewards, mask, signs, baseline=parse_baseline(cfg.baseline),
                    delta=cfg.delta, delta_quantile=cfg.delta_quantile,
                    neutral=cfg.neutral, empty=cfg.empty)
    out = []
    for b, row in enumerate(rows):
        n = len(row["tokens"])
        new = {**row, "extra": dict(row["extra"])}
        if row["segment_ids"] is None:
            new["segment_ids"] = view.segment_ids[b, :n].tolist()
        if row["kept"] is None:
            new["kept"] = view.kept[b, :n].tolist()
            new["extra"]["fallback"] = bool(view.fallback[b])
        out.append(new)
    return out, view.center


# --------------------------------------------------------------------------------------------
# Row sources
# --------------------------------------------------------------------------------------------


def _flatten_rows(rows: list[dict]) -> list[dict]:
    """Validated rows back in the plain input format (``extra`` keys such as ``side`` restored)."""
    flat = []
    for row in rows:
        core = {k: v for k, v in row.items() if k != "extra"}
        flat.append({**row["extra"], **core})
    return flat


def rows_from_file(cfg: VizConfig) -> tuple[list[dict], float | None]:
    """Rows of ``--token_rewards_file`` (ASR fields added when ``--asr`` is on) and the shared
    ASR baseline, if one was computed."""
    from segrl.viz import rows_from_jsonl, validate_rows

    rows = validate_rows(rows_from_jsonl(cfg.token_rewards_file))
    center = None
    if cfg.asr:
        rows, center = add_asr(rows, cfg)
    return _flatten_rows(rows), center


def _message_text(value: Any, field_name: str, i: int, tokenizer=None, *, prompt: bool = False) -> str:
    """Text of a dataset field: a string as is; a conversational list of messages through the chat
    template (prompts, when the tokenizer has one) or as the joined message contents."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(m, dict) and "content" in m for m in value):
        if prompt and tokenizer is not None and getattr(tokenizer, "chat_template", None):
            return tokenizer.apply_chat_template(value, tokenize=False, add_generation_prompt=True)
        return "".join(str(m["content"]) for m in value)
    raise ValueError(f"dataset row {i}: field {field_name!r} must be a string or a list of messages")


def rows_from_models(cfg: VizConfig) -> tuple[list[dict], float | None]:
    """Implicit-reward rows (chosen, rejected, chosen, ...) for the first ``--max_samples`` pairs,
    and the shared ASR baseline (None without ``--asr``)."""
    import torch
    from transformers import AutoTokenizer

    from segrl.rewards.implicit import implicit_token_rewards
    from segrl.viz import rows_from_jsonl, rows_from_tensors

    if cfg.max_samples < 1:
        raise ValueError(f"max_samples must be >= 1, got {cfg.max_samples}")
    records = rows_from_jsonl(cfg.dataset)[: cfg.max_samples]
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.policy)
    prompts, responses, titles, sides = [], [], [], []
    for i, rec in enumerate(records):
        for key in ("prompt", "chosen", "rejected"):
            if key not in rec:
                raise ValueError(f"dataset row {i}: missing field {key!r} (TRL preference format)")
        prompt = _message_text(rec["prompt"], "prompt", i, tokenizer, prompt=True)
        for side in ("chosen", "rejected"):
            prompts.append(prompt)
            responses.append(_message_text(rec[side], side, i))
            titles.append(f"pair {i}")
            sides.append(side)
    rewards, batch = implicit_token_rewards(cfg.policy, cfg.ref_model, tokenizer, prompts, responses,
                                            beta=cfg.beta, batch_size=cfg.batch_size, max_length=cfg.max_length)
    if not cfg.asr:
        rows = rows_from_tensors(batch.tokens, rewards, batch.mask, titles=titles)
        for row, prompt, side in zip(rows, prompts, sides):
            row.update(prompt=prompt, side=side)
        return rows, None
    signs = torch.tensor([1 if s == "chosen" else -1 for s in sides], dtype=torch.long)
    view = asr_view(rewards, batch.mask, signs, baseline=parse_baseline(cfg.baseline),
                    delta=cfg.delta, delta_quantile=cfg.delta_quantile,
                    neutral=cfg.neutral, empty=cfg.empty)
    rows = rows_from_tensors(batch.tokens, rewards, batch.mask, view.segment_ids, view.kept, titles)
    for row, prompt, side, fallback in zip(rows, prompts, sides, view.fallback.tolist()):
        row.update(prompt=prompt, side=side, fallback=fallback)
    return rows, view.center


def build_rows(cfg: VizConfig) -> tuple[list[dict], float | None]:
    """The rows to render for ``cfg`` (checks that exactly one input source is given) and the
    shared ASR baseline if one was computed."""
    model_args = {"policy": cfg.policy, "ref_model": cfg.ref_model, "dataset": cfg.dataset}
    if cfg.token_rewards_file and any(model_args.values()):
        raise ValueError("give either --token_rewards_file or --policy/--ref_model/--dataset, not both")
    if cfg.token_rewards_file:
        return rows_from_file(cfg)
    missing = [f"--{k}" for k, v in model_args.items() if not v]
    if len(missing) == len(model_args):
        raise ValueError("no input: give --token_rewards_file, or --policy, --ref_model and --dataset")
    if missing:
        raise ValueError(f"model-computed rewards need {', '.join(missing)} as well")
    return rows_from_models(cfg)


def run(cfg: VizConfig) -> dict[str, str]:
    """Render the heat-map(s) for ``cfg``; returns ``{"html": path, "png": path?}``."""
    from segrl.viz import render_html, render_png

    rows, baseline = build_rows(cfg)
    # Centre the colours on the ASR baseline by default: then blue/red is exactly above/below the
    # line that decides the segments, which is what the keep-mask is read against.
    center = cfg.center if cfg.center is not None else (baseline if baseline is not None else 0.0)
    out = {"html": cfg.output_html}
    render_html(rows, cfg.output_html, title=cfg.title, center=center)
    if cfg.output_png:
        out["png"] = str(render_png(rows, cfg.output_png, max_rows=cfg.max_rows, dpi=cfg.dpi, center=center))
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl viz``. Returns 0 on success, 2 on invalid input."""
    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    try:
        paths = run(cfg)
    except (ValueError, FileNotFoundError) as err:
        print(f"segrl viz: error: {err}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"wrote {kind}: {path}")
    return 0
