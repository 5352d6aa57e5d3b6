"""The ASR mask options shared by every segrl trainer config, the CLI and the verl plugin.

:class:`ASRArguments` is the one definition of the ASR fields, their help strings, choices, defaults
and checks. ``ASRDPOConfig``, ``ASRRejectionSamplingConfig``, ``SegmentPPOConfig``,
``SegmentGRPOConfig`` and the verl options inherit it (list it *before* the TRL config among the
bases, so its ``__post_init__`` runs and then hands over to TRL's). Why the defaults are what they
are: docs/method.md#baselines-and-delta.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from segrl.ops.asr import DELTA_AUTO, EMPTY_POLICIES, MASK_KINDS, NEUTRAL_POLICIES, parse_baseline

__all__ = ["ASRArguments", "DEFAULT_BOUNDARY_CHARS", "parse_delta"]

#: A token whose decoded text contains any of these ends a step (``mask_type="stepwise"``).
DEFAULT_BOUNDARY_CHARS = ".!?;:\n"


def parse_delta(value, name: str = "asr_delta") -> str | float:
    """``"auto"`` or a finite float ``>= 0``; a string that spells a number (``"0.05"`` from a CLI) becomes a float."""
    if isinstance(value, str) and value.strip().lower() == DELTA_AUTO:
        return DELTA_AUTO
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be {DELTA_AUTO!r} or a number >= 0, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be {DELTA_AUTO!r} or a number >= 0, got {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"`{name}` must be {DELTA_AUTO!r} or a finite number >= 0, got {value!r}")
    return number


def _parse_quantile(value, name: str = "asr_delta_quantile") -> float:
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= number <= 1.0:  # also rejects NaN
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")
    return number


def _check_choice(value, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


@dataclass
class ASRArguments:
    r"""
    Options of the ASR keep mask (Adaptive Segment-level Reward, arXiv 2411.00809), checked at construction.

    Parameters:
        mask_type (`str`, *optional*, defaults to `"asr"`):
            Which tokens enter the loss: `"asr"` (hysteresis segments agreeing with the sequence
            sign), `"tokenwise"`, `"stepwise"` (punctuation / newline segments) or `"none"` (every
            response token: the vanilla method).
        asr_baseline (`str` or `float`, *optional*, defaults to `"sequence_mean"`):
            Token-reward baseline `b`: `"sequence_mean"` (per response), `"batch_mean"` (all valid
            tokens of the batch the mask is computed on), `"zero"`, `"position_mean"` (the batch
            mean at the same relative position, 10 bins: removes a reward trend over position) or a
            number.
        asr_delta (`str` or `float`, *optional*, defaults to `"auto"`):
            Hysteresis half-width `delta`: a number `>= 0`, or `"auto"`: the `asr_delta_quantile`
            quantile of `|r - b|`, resolved once before training (DPO / RS: over the training
            set's token rewards; PPO / GRPO: over each whole rollout batch).
        asr_delta_quantile (`float`, *optional*, defaults to `0.3`):
            Quantile `q` in `[0, 1]` of `asr_delta="auto"`.
        asr_neutral (`str`, *optional*, defaults to `"drop"`):
            `"drop"` or `"keep"` undecided tokens (state 0: inside the band before any decision).
        asr_empty (`str`, *optional*, defaults to `"full"`):
            A response whose mask would be empty: `"full"` falls back to all its tokens, `"none"`
            leaves it empty.
        step_boundary_chars (`str`, *optional*, defaults to `".!?;:\n"`):
            `mask_type="stepwise"`: a token whose decoded text contains any of these characters ends a step.
    """

    mask_type: str = field(
        default="asr",
        metadata={"help": "Which tokens enter the loss: 'asr' (hysteresis segments agreeing with the sequence "
                          "sign), 'tokenwise', 'stepwise' (punctuation segments) or 'none' (vanilla).",
                  "choices": list(MASK_KINDS)},
    )
    asr_baseline: str = field(
        default="sequence_mean",
        metadata={"help": "Token-reward baseline b: 'sequence_mean' (per response), 'batch_mean' (all valid tokens "
                          "of the batch), 'zero', 'position_mean' (batch mean at the same relative position, 10 "
                          "bins) or a number."},
    )
    asr_delta: str = field(
        default=DELTA_AUTO,
        metadata={"help": "Hysteresis half-width delta: a number >= 0, or 'auto' (the asr_delta_quantile quantile "
                          "of |r - b|, resolved once before training, never per micro-batch)."},
    )
    asr_delta_quantile: float = field(
        default=0.3, metadata={"help": "Quantile q in [0, 1] of asr_delta='auto'."}
    )
    asr_neutral: str = field(
        default="drop",
        metadata={"help": "Undecided tokens (state 0, inside the band before any decision): 'drop' or 'keep'.",
                  "choices": list(NEUTRAL_POLICIES)},
    )
    asr_empty: str = field(
        default="full",
        metadata={"help": "A response whose mask would be empty: 'full' (falls back to all its tokens) or 'none'.",
                  "choices": list(EMPTY_POLICIES)},
    )
    step_boundary_chars: str = field(
        default=DEFAULT_BOUNDARY_CHARS,
        metadata={"help": "mask_type='stepwise': a token whose text contains any of these characters ends a step."},
    )

    def __post_init__(self):
        from segrl.hardware import resolve_trl_defaults

        resolve_trl_defaults(self)  # before TRL's checks: bf16 only where the hardware has it, ...
        parent = getattr(super(), "__post_init__", None)
        if parent is not None:  # the TRL config this is mixed into
            parent()
        self.check_asr_arguments()

    def check_asr_arguments(self) -> None:
        """Validate and normalise the ASR fields in place (numeric strings become floats)."""
        _check_choice(self.mask_type, "mask_type", MASK_KINDS)
        self.asr_baseline = parse_baseline(self.asr_baseline, "asr_baseline")
        self.asr_delta = parse_delta(self.asr_delta, "asr_delta")
        self.asr_delta_quantile = _parse_quantile(self.asr_delta_quantile, "asr_delta_quantile")
        _check_choice(self.asr_neutral, "asr_neutral", NEUTRAL_POLICIES)
        _check_choice(self.asr_empty, "asr_empty", EMPTY_POLICIES)
        if not isinstance(self.step_boundary_chars, str):
            raise ValueError(f"`step_boundary_chars` must be a string, got {self.step_boundary_chars!r}")
        if self.mask_type == "stepwise" and not self.step_boundary_chars:
            raise ValueError("`step_boundary_chars` must not be empty for mask_type='stepwise'")

    @property
    def needs_token_rewards(self) -> bool:
        """Whether the mask reads token rewards (every kind but ``"none"``)."""
        return self.mask_type != "none"

    def mask_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`segrl.ops.keep_mask` (``is_boundary`` aside)."""
        return {
            "kind": self.mask_type, "baseline": self.asr_baseline, "delta": self.asr_delta,
            "delta_quantile": self.asr_delta_quantile, "neutral": self.asr_neutral, "empty": self.asr_empty,
        }

