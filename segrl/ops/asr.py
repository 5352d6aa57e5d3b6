"""Adaptive Segment-level Reward (arXiv 2411.00809): hysteresis segmentation and the ASR mask.

All functions take right-padded ``(B, T)`` tensors over response tokens only (SPEC §0) and are
loop-free over ``B`` and ``T``. See SPEC §1 for the rules implemented here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._checks import (
    as_mask,
    check_choice,
    check_finite_where,
    check_real,
    check_same_shape,
    seq_sign_tensor,
)

BASELINE_MODES = ("batch_mean", "sequence_mean", "zero")
NEUTRAL_POLICIES = ("drop", "keep")
EMPTY_POLICIES = ("full", "none")


def parse_baseline(value, name: str = "baseline") -> str | float:
    """A baseline option as :func:`resolve_baseline` takes it: a name in ``BASELINE_MODES`` or a finite float.

    Strings that spell a number (``"0.5"``, as a CLI flag or YAML value may arrive) become floats.
    """
    if isinstance(value, str) and value in BASELINE_MODES:
        return value
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be one of {BASELINE_MODES} or a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be one of {BASELINE_MODES} or a number, got {value!r}") from None
    if math.isnan(number) or math.isinf(number):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    return number


def _checked_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mask = as_mask(mask)
    check_same_shape(rewards, "rewards", mask, "mask")
    check_finite_where(rewards, mask, "rewards")
    return rewards.detach(), mask


def resolve_baseline(rewards: torch.Tensor, mask: torch.Tensor, baseline="batch_mean") -> torch.Tensor:
    """Resolve a baseline spec to one number per row, computed on detached rewards over valid tokens.

    Args:
        rewards: token rewards. Shape: (B, T), floating point.
        mask: valid response tokens, right-padded. Shape: (B, T).
        baseline: ``"batch_mean"`` (mean of every valid token in the batch), ``"sequence_mean"``
            (per row), ``"zero"``, or a float. An empty batch / row has baseline 0.

    Returns:
        Tensor of shape (B,), float64: the mean is accumulated in double precision and every
        comparison against it is made in double, so ties ``r == b`` are decided exactly.
    """
    rewards, mask = _checked_rewards(rewards, mask)
    return _resolve_baseline(rewards, mask, baseline)


def _resolve_baseline(rewards: torch.Tensor, mask: torch.Tensor, baseline) -> torch.Tensor:
    batch, device = rewards.shape[0], rewards.device
    if isinstance(baseline, str):
        check_choice(baseline, "baseline", BASELINE_MODES)
        if baseline == "zero":
            return torch.zeros(batch, dtype=torch.float64, device=device)
        masked = torch.where(mask, rewards, 0.0)
        if baseline == "batch_mean":
            value = masked.sum(dtype=torch.float64) / mask.sum().clamp(min=1)
            return value.expand(batch).clone()
        return masked.sum(dim=1, dtype=torch.float64) / mask.sum(dim=1).clamp(min=1)
    value = check_real(baseline, "baseline")
    return torch.full((batch,), value, dtype=torch.float64, device=device)


def _baseline_column(baseline, rewards: torch.Tensor) -> torch.Tensor:
    """A resolved baseline (float or (B,) tensor) as a (B, 1) column for broadcasting."""
    batch = rewards.shape[0]
    if isinstance(baseline, torch.Tensor):
        if baseline.dim() != 1 or baseline.shape[0] != batch:
            raise ValueError(f"`baseline` tensor must have shape ({batch},), got {tuple(baseline.shape)}")
        if not bool(torch.isfinite(baseline).all()):
            raise ValueError("`baseline` contains NaN or inf")
        return baseline.detach().to(device=rewards.device, dtype=torch.float64).unsqueeze(1)
    value = check_real(baseline, "baseline")
    return torch.full((batch, 1), value, dtype=torch.float64, device=rewards.device)


def hysteresis_states(rewards: torch.Tensor, mask: torch.Tensor, baseline, delta: float = 0.0) -> torch.Tensor:
    """Schmitt-trigger state of every token: +1 above ``b + delta``, -1 below ``b - delta``, else the previous state.

    The state before the first token is 0 ("undecided"), so a leading run inside the neutral band
    stays 0; with ``delta = 0`` ties ``r == b`` inherit the previous state. Vectorised as "the
    sign at the last index <= t that left the band" via a ``cummax`` over indices.

    Args:
        rewards: Shape: (B, T).
        mask: Shape: (B, T), right-padded.
        baseline: a float, or a resolved Tensor of shape (B,) (see :func:`resolve_baseline`).
        delta: hysteresis half-width, ``>= 0``.

    Returns:
        LongTensor of shape (B, T) with values in {-1, 0, +1}; 0 at padding.
    """
    rewards, mask = _checked_rewards(rewards, mask)
    delta = check_real(delta, "delta", minimum=0.0)
    return _hysteresis_states(rewards, mask, _baseline_column(baseline, rewards), delta)


def _exact_thresholds(b: torch.Tensor, delta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Band edges ``b +- delta`` (float64, (B, 1)) in a form comparable with rewards of ``dtype``.

    For float32 rewards the edges are rounded *outwards* to float32 (``hi`` down, ``lo`` up), which
    keeps every comparison exactly equal to the float64 one -- for a float32 ``r``,
    ``r > hi64  <=>  r > round_down32(hi64)`` -- while sparing a float64 copy of the whole batch.
    Other dtypes compare in float64 by type promotion.
    """
    hi, lo = b + delta, b - delta
    if dtype != torch.float32:
        return hi, lo
    hi32, lo32 = hi.float(), lo.float()
    hi32 = torch.where(hi32.double() > hi, torch.nextafter(hi32, torch.full_like(hi32, -torch.inf)), hi32)
    lo32 = torch.where(lo32.double() < lo, torch.nextafter(lo32, torch.full_like(lo32, torch.inf)), lo32)
    return hi32, lo32


def _raw_states(rewards: torch.Tensor, mask: torch.Tensor, b: torch.Tensor, delta: float) -> torch.Tensor:
    """Hysteresis states as int8, *not* zeroed at padding (callers mask). ``b``: float64 (B, 1)."""
    hi, lo = _exact_thresholds(b, delta, rewards.dtype)
    above = (rewards > hi) & mask
    below = (rewards < lo) & mask
    sign = above.to(torch.int8) - below.to(torch.int8)
    positions = torch.arange(rewards.shape[1], device=rewards.device).expand(sign.shape)
    # Index of the last token <= t that left the band. Where none did, index 0 is used, whose sign is
    # then 0 ("undecided") unless token 0 itself left the band, so no -1 sentinel is needed.
    last_exit = torch.where(above | below, positions, 0).cummax(dim=1).values
    return sign.gather(1, last_exit)


def _hysteresis_states(rewards: torch.Tensor, mask: torch.Tensor, b: torch.Tensor, delta: float) -> torch.Tensor:
    return (_raw_states(rewards, mask, b, delta) * mask).long()


def segment_ids_from_states(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Number the maximal runs of equal state (0, 1, ... per row); -1 at padding.

    A pivot is a token ``t >= 1`` whose state differs from token ``t - 1``'s; each pivot starts a
    new segment. A leading undecided run (state 0) is a segment of its own.

    Args:
        states: Shape: (B, T), integer values in {-1, 0, +1}.
        mask: Shape: (B, T), right-padded.

    Returns:
        LongTensor of shape (B, T).
    """
    mask = as_mask(mask)
    check_same_shape(states, "states", mask, "mask")
    if states.is_floating_point() or states.is_complex() or states.dtype == torch.bool:
        raise ValueError(f"`states` must be an integer tensor with values in {{-1, 0, 1}}, got dtype {states.dtype}")
    if not bool(((states >= -1) & (states <= 1)).all()):
        raise ValueError("`states` must only contain -1, 0 and +1")
    return _run_ids(states, mask)


def _run_ids(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    starts = torch.ones_like(mask)
    starts[:, 1:] = states[:, 1:] != states[:, :-1]
    ids = (starts & mask).long().cumsum(dim=1) - 1
    return torch.where(mask, ids, torch.full_like(ids, -1))


def _keep_by_state(
    states: torch.Tensor, mask: torch.Tensor, seq_sign: torch.Tensor, neutral: str, empty: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep tokens whose state agrees with the row's sign; returns (mask, fallback rows (B,)).

    ``states`` may hold anything at padding: every use is ANDed with ``mask``.
    """
    keep = (states == seq_sign.to(states.dtype).unsqueeze(1)) & mask
    if neutral == "keep":
        keep = keep | ((states == 0) & mask)
    fallback = mask.any(dim=1) & ~keep.any(dim=1)
    if empty == "full":
        keep = torch.where(fallback.unsqueeze(1), mask, keep)
    return keep, fallback


@dataclass
class ASRResult:
    """Everything the ASR rule computes for a batch; trainers log it, viz draws it.

    Shapes: ``keep``, ``states``, ``segment_ids``: (B, T); ``baseline``, ``fallback``: (B,).
    """

    keep: torch.Tensor
    states: torch.Tensor
    segment_ids: torch.Tensor
    baseline: torch.Tensor
    fallback: torch.Tensor


def _validate_policies(neutral: str, empty: str) -> None:
    check_choice(neutral, "neutral", NEUTRAL_POLICIES)
    check_choice(empty, "empty", EMPTY_POLICIES)


def asr_segments(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    seq_sign,
    *,
    baseline="batch_mean",
    delta: float = 0.0,
    neutral: str = "drop",
    empty: str = "full",
) -> ASRResult:
    """:func:`asr_mask` plus its intermediate states, segments and fallback flags (same arguments)."""
    keep, fallback, states, b, mask = _asr_keep(rewards, mask, seq_sign, baseline, delta, neutral, empty)
    states = (states * mask).long()
    return ASRResult(keep, states, _run_ids(states, mask), b, fallback)


def _asr_keep(rewards, mask, seq_sign, baseline, delta, neutral, empty):
    rewards, mask = _checked_rewards(rewards, mask)
    _validate_policies(neutral, empty)
    delta = check_real(delta, "delta", minimum=0.0)
    sign = seq_sign_tensor(seq_sign, rewards.shape[0], rewards.device)
    b = _resolve_baseline(rewards, mask, baseline)
    states = _raw_states(rewards, mask, b.unsqueeze(1), delta)
    keep, fallback = _keep_by_state(states, mask, sign, neutral, empty)
    return keep, fallback, states, b, mask


def asr_mask(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    seq_sign,
    *,
    baseline="batch_mean",
    delta: float = 0.0,
    neutral: str = "drop",
    empty: str = "full",
) -> torch.Tensor:
    """The ASR keep-mask: response tokens whose hysteresis segment's sign agrees with the sequence sign.

    ``m_t = mask_t and s_t == seq_sign`` (SPEC §1). With ``delta = 0`` and ``baseline = 0`` it is
    the published Equilibrate-RLHF rule: chosen keeps ``r > 0``, rejected keeps ``r < 0``.

    Args:
        rewards: token rewards. Shape: (B, T).
        mask: valid response tokens, right-padded. Shape: (B, T).
        seq_sign: +1 (chosen / accepted / above-mean sequence) or -1 per row. Shape: (B,).
        baseline: ``"batch_mean"`` | ``"sequence_mean"`` | ``"zero"`` | float (see :func:`resolve_baseline`).
        delta: hysteresis half-width ``>= 0``.
        neutral: ``"drop"`` drops undecided (state 0) tokens, ``"keep"`` keeps them.
        empty: ``"full"`` gives a row whose mask would be empty its full response mask; ``"none"`` leaves it empty.

    Returns:
        BoolTensor of shape (B, T), False at padding.
    """
    return _asr_keep(rewards, mask, seq_sign, baseline, delta, neutral, empty)[0]


def tokenwise_mask(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    seq_sign,
    *,
    baseline="batch_mean",
    neutral: str = "drop",
    empty: str = "full",
) -> torch.Tensor:
    """Token-wise baseline: keep token ``t`` iff ``sign(r_t - b) == seq_sign`` (no segments, no hysteresis).

    Unlike :func:`hysteresis_states` with ``delta = 0``, a tie ``r_t == b`` is state 0 here (it
    does not inherit), so ``neutral`` decides it.

    Shape: ``rewards``, ``mask`` (B, T); ``seq_sign`` (B,); returns BoolTensor (B, T).
    """
    rewards, mask = _checked_rewards(rewards, mask)
    _validate_policies(neutral, empty)
    sign = seq_sign_tensor(seq_sign, rewards.shape[0], rewards.device)
    b = _resolve_baseline(rewards, mask, baseline).unsqueeze(1)
    states = torch.where(mask, torch.sign(rewards.double() - b).long(), torch.zeros_like(rewards, dtype=torch.long))
    return _keep_by_state(states, mask, sign, neutral, empty)[0]


def step_segment_ids(is_boundary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Step-wise segments: a new segment starts right after every boundary (punctuation / newline) token.

    Token 0 starts segment 0; token ``t >= 1`` starts a new segment iff ``is_boundary[t - 1]``.

    Args:
        is_boundary: whether each token ends a step. Shape: (B, T), bool.
        mask: Shape: (B, T), right-padded.

    Returns:
        LongTensor of shape (B, T); -1 at padding.
    """
    mask = as_mask(mask)
    check_same_shape(is_boundary, "is_boundary", mask, "mask")
    is_boundary = as_mask_values(is_boundary, "is_boundary")
    starts = torch.ones_like(mask)
    starts[:, 1:] = is_boundary[:, :-1]
    ids = (starts & mask).long().cumsum(dim=1) - 1
    return torch.where(mask, ids, torch.full_like(ids, -1))


def as_mask_values(flags: torch.Tensor, name: str) -> torch.Tensor:
    """A 0/1 flag tensor as bool, without the right-padding requirement."""
    if flags.dtype == torch.bool:
        return flags
    if not bool(((flags == 0) | (flags == 1)).all()):
        raise ValueError(f"`{name}` must be boolean (or 0/1)")
    return flags.bool()


def segment_means(values: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over each segment, broadcast back to its tokens (0 where id is -1).

    Shape: ``values``, ``segment_ids`` (B, T) -> (B, T).
    """
    valid = segment_ids >= 0
    n_slots = segment_ids.shape[1] + 1  # one spare slot collects the -1 tokens
    index = torch.where(valid, segment_ids, torch.full_like(segment_ids, n_slots - 1))
    zeros = torch.zeros(values.shape[0], n_slots, dtype=values.dtype, device=values.device)
    sums = zeros.scatter_add(1, index, torch.where(valid, values, torch.zeros_like(values)))
    counts = zeros.scatter_add(1, index, valid.to(values.dtype))
    means = sums / counts.clamp(min=1)
    return torch.where(valid, means.gather(1, index), torch.zeros_like(values))


def stepwise_mask(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    is_boundary: torch.Tensor,
    seq_sign,
    *,
    baseline="batch_mean",
    neutral: str = "drop",
    empty: str = "full",
) -> torch.Tensor:
    """Step-wise baseline: punctuation segments, each signed by ``sign(mean segment reward - b)``.

    Shape: ``rewards``, ``mask``, ``is_boundary`` (B, T); ``seq_sign`` (B,); returns BoolTensor (B, T).
    """
    rewards, mask = _checked_rewards(rewards, mask)
    _validate_policies(neutral, empty)
    sign = seq_sign_tensor(seq_sign, rewards.shape[0], rewards.device)
    b = _resolve_baseline(rewards, mask, baseline).unsqueeze(1)
    ids = step_segment_ids(is_boundary, mask)
    states = torch.where(mask, torch.sign(segment_means(rewards.double(), ids) - b).long(), torch.zeros_like(ids))
    return _keep_by_state(states, mask, sign, neutral, empty)[0]
