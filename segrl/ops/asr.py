"""Adaptive Segment-level Reward (arXiv 2411.00809): signs, baselines, delta, hysteresis and the keep mask.

All functions take right-padded ``(B, T)`` tensors over response tokens only
(docs/method.md#tensor-conventions) and are loop-free over ``B`` and ``T``. The rules are in
docs/method.md#asr-mask, #baselines-and-delta and #sequence-sign; :func:`keep_mask` is the one entry
point every trainer, the verl plugin, ``segrl viz`` and the report call.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
from .segments import segment_counts

BASELINE_MODES = ("batch_mean", "sequence_mean", "zero", "position_mean")
NEUTRAL_POLICIES = ("drop", "keep")
EMPTY_POLICIES = ("full", "none")
MASK_KINDS = ("asr", "tokenwise", "stepwise", "none")
#: The ``delta`` option that resolves the half-width from the rewards (:func:`resolve_delta`).
DELTA_AUTO = "auto"
#: Relative-position bins of the ``"position_mean"`` baseline: token ``t`` of a row with ``n`` tokens
#: is in bin ``floor(t * POSITION_BINS / n)``, so bin ``k`` covers relative positions ``[k/10, (k+1)/10)``.
POSITION_BINS = 10
#: ``torch.quantile`` refuses inputs of more than 2**24 elements; above this an exact kthvalue form is used.
_QUANTILE_MAX = 1 << 24


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


# ---------------------------------------------------------------------------------------------- signs


def sequence_sign(seq_rewards: torch.Tensor, baseline) -> torch.Tensor:
    """The sequence sign ``sigma = +1`` where ``R >= b`` (ties +1), else ``-1`` (docs/method.md#sequence-sign).

    PPO: ``baseline`` is the global batch mean of the sequence rewards; GRPO / verl group variants:
    the group mean of each row; rejection sampling: every accepted response is ``+1`` (``baseline``
    ``-inf`` is not needed: use ``torch.ones``). The comparison is made in float64, so a tie is exact.

    Args:
        seq_rewards: one reward per response. Shape: (B,), floating point, finite.
        baseline: a float, a 0-d tensor, or one baseline per row. Shape: () or (B,).

    Returns:
        LongTensor of shape (B,) with values in {-1, +1}.
    """
    if not isinstance(seq_rewards, torch.Tensor) or seq_rewards.dim() != 1:
        shape = tuple(seq_rewards.shape) if isinstance(seq_rewards, torch.Tensor) else type(seq_rewards).__name__
        raise ValueError(f"`seq_rewards` must be a 1-D tensor of shape (B,), got {shape}")
    if not seq_rewards.is_floating_point():
        raise ValueError(f"`seq_rewards` must be a floating-point tensor, got {seq_rewards.dtype}")
    if not bool(torch.isfinite(seq_rewards).all()):
        raise ValueError("`seq_rewards` contains NaN or inf")
    values = seq_rewards.detach().double()
    if isinstance(baseline, torch.Tensor):
        if baseline.dim() > 1 or (baseline.dim() == 1 and baseline.shape != seq_rewards.shape):
            raise ValueError(f"`baseline` must be a number or a tensor of shape () or {tuple(seq_rewards.shape)}, "
                             f"got shape {tuple(baseline.shape)}")
        if not baseline.is_floating_point() or not bool(torch.isfinite(baseline).all()):
            raise ValueError("`baseline` must be a finite floating-point tensor")
        b = baseline.detach().to(device=values.device, dtype=torch.float64)
    else:
        b = check_real(baseline, "baseline")
    return torch.where(values >= b, 1, -1).long()


def preference_sign(n_pairs: int, device=None) -> torch.Tensor:
    """Sequence signs of a DPO batch laid out ``[chosen x n_pairs; rejected x n_pairs]``: ``+1`` then ``-1``.

    Returns:
        LongTensor of shape (2 * n_pairs,).
    """
    if isinstance(n_pairs, bool) or not isinstance(n_pairs, int) or n_pairs < 0:
        raise ValueError(f"`n_pairs` must be an int >= 0, got {n_pairs!r}")
    sign = torch.ones(2 * n_pairs, dtype=torch.long, device=device)
    sign[n_pairs:] = -1
    return sign


# ---------------------------------------------------------------------------------------------- baselines


def position_bins(mask: torch.Tensor, bins: int = POSITION_BINS) -> torch.Tensor:
    """The relative-position bin of every token: ``floor(t * bins / n_b)`` (integer arithmetic), -1 at padding.

    Bin ``k`` holds the tokens at relative positions ``t / n_b`` in ``[k / bins, (k + 1) / bins)``; a
    row shorter than ``bins`` puts each token in its own bin, spread over ``0 .. bins - 1``.

    Shape: ``mask`` (B, T) -> LongTensor (B, T).
    """
    mask = as_mask(mask)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"`bins` must be an int >= 1, got {bins!r}")
    n = mask.sum(dim=1, keepdim=True).clamp(min=1)
    t = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    return torch.where(mask, torch.div(t * bins, n, rounding_mode="floor"), -1)


def position_mean_baseline(rewards: torch.Tensor, mask: torch.Tensor, *, bins: int = POSITION_BINS,
                           all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """The ``"position_mean"`` baseline: the batch mean of the rewards in each token's relative-position bin.

    A reward trend over the position in the response (e.g. normalised RM rewards that rise towards
    the end) is then removed before the sign is taken, so the mask follows what differs between
    responses at the same place, not where a token sits (docs/method.md#baselines-and-delta).
    Computed in float64 on detached rewards over valid tokens; bins are :func:`position_bins`.

    Args:
        rewards: Shape: (B, T). mask: Shape: (B, T), right-padded.
        bins: number of relative-position bins.
        all_reduce: optional callable summing a float64 tensor over processes (the moments hook):
            the bin sums and counts are reduced, so every rank gets the baseline of the global batch.

    Returns:
        Tensor of shape (B, T), float64, 0 at padding.
    """
    rewards, mask = _checked_rewards(rewards, mask)
    return _position_mean(rewards, mask, bins, all_reduce)


def _position_mean(rewards, mask, bins, all_reduce=None) -> torch.Tensor:
    ids = position_bins(mask, bins)
    slot = torch.where(mask, ids, bins).flatten()  # spare slot `bins` collects the padding (never read back)
    stats = torch.zeros(2, bins + 1, dtype=torch.float64, device=rewards.device)
    stats[0].scatter_add_(0, slot, rewards.double().flatten())
    stats[1].scatter_add_(0, slot, mask.double().flatten())
    if all_reduce is not None:
        stats = all_reduce(stats)
    means = stats[0] / stats[1].clamp(min=1)
    return torch.where(mask, means[ids.clamp(min=0)], 0.0)


def resolve_baseline(rewards: torch.Tensor, mask: torch.Tensor, baseline="batch_mean") -> torch.Tensor:
    """Resolve a baseline spec to numbers, computed on detached rewards over valid tokens.

    Args:
        rewards: token rewards. Shape: (B, T), floating point.
        mask: valid response tokens, right-padded. Shape: (B, T).
        baseline: ``"batch_mean"`` (mean of every valid token in the batch), ``"sequence_mean"``
            (per row), ``"zero"``, ``"position_mean"`` (:func:`position_mean_baseline`) or a float.
            An empty batch / row has baseline 0.

    Returns:
        Tensor of shape (B,), float64 -- or (B, T) for ``"position_mean"``, the only per-token
        baseline. The mean is accumulated in double precision and every comparison against it is
        made in double, so ties ``r == b`` are decided exactly.
    """
    rewards, mask = _checked_rewards(rewards, mask)
    return _resolve_baseline(rewards, mask, baseline)


def _resolve_baseline(rewards: torch.Tensor, mask: torch.Tensor, baseline) -> torch.Tensor:
    batch, device = rewards.shape[0], rewards.device
    if isinstance(baseline, str):
        check_choice(baseline, "baseline", BASELINE_MODES)
        if baseline == "zero":
            return torch.zeros(batch, dtype=torch.float64, device=device)
        if baseline == "position_mean":
            return _position_mean(rewards, mask, POSITION_BINS)
        masked = torch.where(mask, rewards, 0.0)
        if baseline == "batch_mean":
            value = masked.sum(dtype=torch.float64) / mask.sum().clamp(min=1)
            return value.expand(batch).clone()
        return masked.sum(dim=1, dtype=torch.float64) / mask.sum(dim=1).clamp(min=1)
    value = check_real(baseline, "baseline")
    return torch.full((batch,), value, dtype=torch.float64, device=device)


def _baseline_grid(baseline, rewards: torch.Tensor, mask: torch.Tensor, *, names: bool = True) -> torch.Tensor:
    """Any baseline (a name, a float, a resolved (B,) or (B, T) tensor) as float64 (B, 1) or (B, T)."""
    batch, width = rewards.shape
    if isinstance(baseline, torch.Tensor):
        if tuple(baseline.shape) == (batch,):
            grid = baseline.unsqueeze(1)
        elif tuple(baseline.shape) == (batch, width):
            grid = baseline
        else:
            raise ValueError(f"`baseline` tensor must have shape ({batch},) or ({batch}, {width}), "
                             f"got {tuple(baseline.shape)}")
        if not baseline.is_floating_point():
            raise ValueError(f"`baseline` must be a floating-point tensor, got {baseline.dtype}")
        grid = grid.detach().to(device=rewards.device, dtype=torch.float64)
        valid = mask if grid.shape[1] == width else torch.ones_like(grid, dtype=torch.bool)
        if not bool((torch.isfinite(grid) | ~valid).all()):
            raise ValueError("`baseline` contains NaN or inf")
        return grid
    if isinstance(baseline, str) and not names:
        raise ValueError(f"`baseline` must be a number or a resolved tensor here, got {baseline!r}; resolve a "
                         "name with resolve_baseline first")
    b = _resolve_baseline(rewards, mask, baseline)
    return b if b.dim() == 2 else b.unsqueeze(1)


def _row_baseline(grid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """One baseline per row (B,): the baseline itself, or a per-token baseline's mean over the row's tokens."""
    if grid.shape[1] == 1:
        return grid[:, 0].clone()
    return torch.where(mask, grid, 0.0).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


# ---------------------------------------------------------------------------------------------- delta


def _check_quantile(q) -> float:
    q = check_real(q, "delta_quantile", minimum=0.0)
    if q > 1.0:
        raise ValueError(f"`delta_quantile` must be in [0, 1], got {q!r}")
    return q


def _check_delta(delta) -> float | str:
    if isinstance(delta, str):
        if delta != DELTA_AUTO:
            raise ValueError(f"`delta` must be a number >= 0 or {DELTA_AUTO!r}, got {delta!r}")
        return delta
    return check_real(delta, "delta", minimum=0.0)


def _kth_quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    """``torch.quantile(values, q)`` (linear interpolation) from two ``kthvalue`` calls; any size."""
    n = values.numel()
    rank = q * (n - 1)
    below = math.floor(rank)
    above = min(below + 1, n - 1)
    low = torch.kthvalue(values, below + 1).values
    high = low if above == below else torch.kthvalue(values, above + 1).values
    return torch.lerp(low, high, torch.tensor(rank - below, dtype=values.dtype, device=values.device))


def _quantile(values: torch.Tensor, q: float) -> float:
    if values.numel() == 0:
        return 0.0
    if values.numel() <= _QUANTILE_MAX:
        return float(torch.quantile(values, q))
    return float(_kth_quantile(values, q))


def resolve_delta(rewards: torch.Tensor, mask: torch.Tensor, baseline, delta, delta_quantile: float = 0.3) -> float:
    """The hysteresis half-width as a number (docs/method.md#baselines-and-delta).

    A number is returned unchanged (checked ``>= 0``). ``"auto"`` is the ``delta_quantile``-quantile
    of ``|r_t - b_t|`` over the valid tokens of the tensors given, on detached rewards, in float64,
    with ``torch.quantile``'s linear interpolation (an exact ``kthvalue`` form above its 2**24-element
    limit); no valid token gives ``0.0``. Which tokens to pass is the caller's choice: never a
    micro-batch (trainers resolve it once over the training set, or over a whole rollout batch).

    Args:
        rewards: Shape: (B, T). mask: Shape: (B, T), right-padded.
        baseline: a name (as :func:`resolve_baseline`), a float, or a resolved tensor of shape (B,) or (B, T).
        delta: a float ``>= 0`` or ``"auto"``.
        delta_quantile: ``q`` in ``[0, 1]``.

    Returns:
        A Python float ``>= 0``.
    """
    delta = _check_delta(delta)
    q = _check_quantile(delta_quantile)
    if delta != DELTA_AUTO:
        return delta
    rewards, mask = _checked_rewards(rewards, mask)
    return _auto_delta(rewards, mask, _baseline_grid(baseline, rewards, mask), q)


def _auto_delta(rewards: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor, q: float) -> float:
    deviation = (rewards.double() - grid).abs()
    return _quantile(deviation[mask], q)


# ---------------------------------------------------------------------------------------------- hysteresis


def hysteresis_states(rewards: torch.Tensor, mask: torch.Tensor, baseline, delta: float = 0.0) -> torch.Tensor:
    """Schmitt-trigger state of every token: +1 above ``b + delta``, -1 below ``b - delta``, else the previous state.

    The state before the first token is 0 ("undecided"), so a leading run inside the neutral band
    stays 0; with ``delta = 0`` ties ``r == b`` inherit the previous state. Vectorised as "the
    sign at the last index <= t that left the band" via a ``cummax`` over indices.

    Args:
        rewards: Shape: (B, T).
        mask: Shape: (B, T), right-padded.
        baseline: a float, or a resolved Tensor of shape (B,) or (B, T) (see :func:`resolve_baseline`).
        delta: hysteresis half-width, ``>= 0``.

    Returns:
        LongTensor of shape (B, T) with values in {-1, 0, +1}; 0 at padding.
    """
    rewards, mask = _checked_rewards(rewards, mask)
    delta = check_real(delta, "delta", minimum=0.0)
    grid = _baseline_grid(baseline, rewards, mask, names=False)
    return (_raw_states(rewards, mask, grid, delta) * mask).long()


def _exact_thresholds(b: torch.Tensor, delta: float, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Band edges ``b +- delta`` (float64, (B, 1) or (B, T)) in a form comparable with rewards of ``dtype``.

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
    """Hysteresis states as int8, *not* zeroed at padding (callers mask). ``b``: float64 (B, 1) or (B, T)."""
    hi, lo = _exact_thresholds(b, delta, rewards.dtype)
    above = (rewards > hi) & mask
    below = (rewards < lo) & mask
    sign = above.to(torch.int8) - below.to(torch.int8)
    positions = torch.arange(rewards.shape[1], device=rewards.device).expand(sign.shape)
    # Index of the last token <= t that left the band. Where none did, index 0 is used, whose sign is
    # then 0 ("undecided") unless token 0 itself left the band, so no -1 sentinel is needed.
    last_exit = torch.where(above | below, positions, 0).cummax(dim=1).values
    return sign.gather(1, last_exit)


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

    ``states`` may hold anything at padding: every use is ANDed with ``mask``. A fallback row is a
    row with response tokens whose mask would be empty -- the one definition of "fallback".
    """
    keep = (states == seq_sign.to(states.dtype).unsqueeze(1)) & mask
    if neutral == "keep":
        keep = keep | ((states == 0) & mask)
    fallback = mask.any(dim=1) & ~keep.any(dim=1)
    if empty == "full":
        keep = torch.where(fallback.unsqueeze(1), mask, keep)
    return keep, fallback


def _validate_policies(neutral: str, empty: str) -> None:
    check_choice(neutral, "neutral", NEUTRAL_POLICIES)
    check_choice(empty, "empty", EMPTY_POLICIES)


# ---------------------------------------------------------------------------------------------- keep mask


@dataclass
class KeepMaskResult:
    """Everything a keep mask was derived from, for one batch of responses; trainers log it, viz draws it.

    Attributes:
        keep: tokens that enter the loss. Shape: (B, T), bool.
        states: the per-token sign the mask was decided on (hysteresis state for ``"asr"``, token
            sign for ``"tokenwise"``, segment sign for ``"stepwise"``), or ``None`` for ``"none"``.
            Shape: (B, T), long, 0 at padding.
        segment_ids: the segments (``-1`` outside), or ``None`` for ``"tokenwise"``, which has none;
            ``"none"`` makes each response one segment. Shape: (B, T), long.
        fallback: rows with response tokens whose mask was empty (with ``empty="full"`` they fell
            back to the whole response). Shape: (B,), bool.
        baseline: the resolved baseline of each row (for ``"position_mean"``: its mean over the row's
            tokens). Shape: (B,), float64.
        delta: the resolved hysteresis half-width (0.0 for the kinds without hysteresis).
    """

    keep: torch.Tensor
    states: torch.Tensor | None
    segment_ids: torch.Tensor | None
    fallback: torch.Tensor
    baseline: torch.Tensor
    delta: float

    def counts(self, mask: torch.Tensor) -> torch.Tensor:
        """Counts for logging, summed over rows (so they can be gathered and added across processes).

        Returns a float64 vector ``[kept tokens, response tokens, segments, tokens in segments,
        fallback rows, rows, baseline sum]``. Shape: (7,).
        """
        mask = mask.bool()
        zero = torch.zeros((), dtype=torch.float64, device=mask.device)
        if self.segment_ids is None:
            segments = in_segments = zero
        else:
            segments = segment_counts(self.segment_ids).sum().double()
            in_segments = (self.segment_ids >= 0).sum().double()
        rows = mask.any(dim=1)
        return torch.stack([
            self.keep.sum().double(), mask.sum().double(), segments, in_segments,
            (self.fallback & rows).sum().double(), rows.sum().double(), self.baseline.sum().double(),
        ])


def keep_mask(
    rewards: torch.Tensor | None,
    mask: torch.Tensor,
    seq_sign,
    *,
    kind: str = "asr",
    baseline="batch_mean",
    delta=0.0,
    delta_quantile: float = 0.3,
    neutral: str = "drop",
    empty: str = "full",
    is_boundary: torch.Tensor | None = None,
) -> KeepMaskResult:
    """The keep mask of one of the four segmenters the ASR paper compares (docs/method.md#asr-mask).

    - ``"asr"``: hysteresis segments around ``b +- delta``; keep the tokens whose state equals the
      row's sequence sign;
    - ``"tokenwise"``: per-token ``sign(r_t - b)`` (a tie is state 0, decided by ``neutral``);
    - ``"stepwise"``: segments cut after step-end tokens (``is_boundary``), each signed by
      ``sign(mean(r - b))`` over the segment;
    - ``"none"``: every response token (sample-wise, the vanilla loss); ``rewards`` may be ``None``.

    Then ``neutral="keep"`` adds the state-0 tokens, and ``empty="full"`` gives a row whose mask
    would be empty its whole response (counted in ``fallback``).

    Args:
        rewards: token rewards. Shape: (B, T), floating point; ignored for ``"none"``.
        mask: valid response tokens, right-padded. Shape: (B, T).
        seq_sign: +1 / -1 per row (:func:`sequence_sign`, :func:`preference_sign`). Shape: (B,).
        kind: one of ``MASK_KINDS``.
        baseline: a name in ``BASELINE_MODES``, a float, or an already-resolved tensor of shape (B,)
            or (B, T) (trainers resolve batch means over every rank and pass the tensor).
        delta: ``"asr"`` half-width: a float ``>= 0``, or ``"auto"`` resolved over *this* batch by
            :func:`resolve_delta` (trainers resolve it over the right token set and pass the float).
        delta_quantile: ``q`` of ``"auto"``.
        neutral: ``"drop"`` | ``"keep"`` undecided (state 0) tokens.
        empty: ``"full"`` | ``"none"``.
        is_boundary: step-end tokens, required for ``"stepwise"``. Shape: (B, T), bool.

    Returns:
        :class:`KeepMaskResult`.
    """
    check_choice(kind, "kind", MASK_KINDS)
    _validate_policies(neutral, empty)
    delta = _check_delta(delta)
    q = _check_quantile(delta_quantile)
    if kind == "none":
        mask = as_mask(mask)
        seq_sign_tensor(seq_sign, mask.shape[0], mask.device)
        rows = mask.shape[0]
        return KeepMaskResult(
            keep=mask.clone(), states=None, segment_ids=torch.where(mask, 0, -1).long(),
            fallback=torch.zeros(rows, dtype=torch.bool, device=mask.device),
            baseline=torch.zeros(rows, dtype=torch.float64, device=mask.device), delta=0.0,
        )
    if rewards is None:
        raise ValueError(f"`rewards` is None but kind={kind!r} needs token rewards")
    rewards, mask = _checked_rewards(rewards, mask)
    sign = seq_sign_tensor(seq_sign, rewards.shape[0], rewards.device)
    grid = _baseline_grid(baseline, rewards, mask)
    resolved_delta = 0.0
    if kind == "asr":
        resolved_delta = _auto_delta(rewards, mask, grid, q) if delta == DELTA_AUTO else delta
        states = _raw_states(rewards, mask, grid, resolved_delta)
        keep, fallback = _keep_by_state(states, mask, sign, neutral, empty)
        states = (states * mask).long()
        segment_ids = _run_ids(states, mask)
    else:
        if kind == "tokenwise":
            signal, segment_ids = rewards.double() - grid, None
        else:
            if is_boundary is None:
                raise ValueError("kind='stepwise' needs `is_boundary` (step-end tokens)")
            segment_ids = step_segment_ids(is_boundary, mask)
            signal = _segment_signal(rewards, grid, segment_ids)
        states = torch.where(mask, torch.sign(signal).long(), 0)
        keep, fallback = _keep_by_state(states, mask, sign, neutral, empty)
    return KeepMaskResult(keep, states, segment_ids, fallback, _row_baseline(grid, mask), resolved_delta)


def _segment_signal(rewards: torch.Tensor, grid: torch.Tensor, segment_ids: torch.Tensor) -> torch.Tensor:
    """``mean(r) - b`` over each step segment, on its tokens (float64); ``mean(r - b)`` for a per-token ``b``."""
    if grid.shape[1] == 1:
        return segment_means(rewards.double(), segment_ids) - grid
    return segment_means(rewards.double() - grid, segment_ids)


def asr_mask(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    seq_sign,
    *,
    baseline="batch_mean",
    delta=0.0,
    neutral: str = "drop",
    empty: str = "full",
    delta_quantile: float = 0.3,
) -> torch.Tensor:
    """The ASR keep-mask: response tokens whose hysteresis segment's sign agrees with the sequence sign.

    ``m_t = mask_t and s_t == seq_sign`` (docs/method.md#asr-mask). With ``delta = 0`` and
    ``baseline = 0`` it is the published Equilibrate-RLHF rule: chosen keeps ``r > 0``, rejected
    keeps ``r < 0``. Same result as ``keep_mask(..., kind="asr").keep``, without the segment ids.

    Args:
        rewards: token rewards. Shape: (B, T).
        mask: valid response tokens, right-padded. Shape: (B, T).
        seq_sign: +1 (chosen / accepted / above-mean sequence) or -1 per row. Shape: (B,).
        baseline: a name in ``BASELINE_MODES``, a float, or a resolved (B,) / (B, T) tensor.
        delta: hysteresis half-width ``>= 0``, or ``"auto"`` (:func:`resolve_delta` over this batch).
        neutral: ``"drop"`` drops undecided (state 0) tokens, ``"keep"`` keeps them.
        empty: ``"full"`` gives a row whose mask would be empty its full response mask; ``"none"`` leaves it empty.
        delta_quantile: ``q`` of ``delta="auto"``.

    Returns:
        BoolTensor of shape (B, T), False at padding.
    """
    _validate_policies(neutral, empty)
    delta = _check_delta(delta)
    q = _check_quantile(delta_quantile)
    rewards, mask = _checked_rewards(rewards, mask)
    sign = seq_sign_tensor(seq_sign, rewards.shape[0], rewards.device)
    grid = _baseline_grid(baseline, rewards, mask)
    if delta == DELTA_AUTO:
        delta = _auto_delta(rewards, mask, grid, q)
    states = _raw_states(rewards, mask, grid, delta)
    return _keep_by_state(states, mask, sign, neutral, empty)[0]


#: Deprecated name of :class:`KeepMaskResult` (``asr_segments`` returned it).
ASRResult = KeepMaskResult


def asr_segments(rewards, mask, seq_sign, *, baseline="batch_mean", delta=0.0, neutral="drop",
                 empty="full") -> KeepMaskResult:
    """Deprecated: ``keep_mask(rewards, mask, seq_sign, kind="asr", ...)``."""
    return keep_mask(rewards, mask, seq_sign, kind="asr", baseline=baseline, delta=delta, neutral=neutral,
                     empty=empty)


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
    does not inherit), so ``neutral`` decides it. ``keep_mask(..., kind="tokenwise").keep``.

    Shape: ``rewards``, ``mask`` (B, T); ``seq_sign`` (B,); returns BoolTensor (B, T).
    """
    return keep_mask(rewards, mask, seq_sign, kind="tokenwise", baseline=baseline, neutral=neutral,
                     empty=empty).keep


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

    ``keep_mask(..., kind="stepwise", is_boundary=is_boundary).keep``.

    Shape: ``rewards``, ``mask``, ``is_boundary`` (B, T); ``seq_sign`` (B,); returns BoolTensor (B, T).
    """
    return keep_mask(rewards, mask, seq_sign, kind="stepwise", baseline=baseline, neutral=neutral, empty=empty,
                     is_boundary=is_boundary).keep
