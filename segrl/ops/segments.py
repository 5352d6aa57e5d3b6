"""Segment reward model maths (arXiv 2501.02790): entropy segmentation, segment read-out,
location-aware normalisation and spreading segment rewards back over tokens. docs/method.md#segment-rm, #location-normalizer, #spreading.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ._checks import as_mask, check_choice, check_finite_where, check_real, check_same_shape

SPREAD_MODES = ("even", "end", "repeat")
COEF_FIELDS = ("a_mu", "b_mu", "a_sigma", "b_sigma")
LOG_EPS = 1e-10


def entropy_segment_ids(entropy: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Cut each response where the frozen reference model is uncertain.

    Dense (``0 <= threshold < inf``): tokens ``0 .. n_b-2`` are segmented and the last valid
    token (EOS) belongs to no segment; token 0 starts segment 0 and token ``t >= 1`` starts a new
    segment iff ``entropy[b, t] > threshold`` (strict). ``threshold = 0`` gives one segment per
    token (the token-level RM). Bandit (``threshold = inf``): one segment of all ``n_b`` tokens,
    EOS included. A row with only EOS has no segment (dense) or one (bandit).

    Args:
        entropy: ``H(pi_ref(. | x, y_<t))`` in nats. Shape: (B, T).
        mask: valid response tokens, right-padded. Shape: (B, T).
        threshold: ``c >= 0``, or ``math.inf`` for the bandit RM.

    Returns:
        LongTensor (B, T): segment index ``0..K_b-1``, or -1 outside every segment.
    """
    mask = as_mask(mask)
    check_same_shape(entropy, "entropy", mask, "mask")
    threshold = check_real(threshold, "threshold", minimum=0.0, allow_inf=True)
    if math.isinf(threshold):
        return torch.where(mask, torch.zeros_like(mask, dtype=torch.long), torch.full_like(mask, -1, dtype=torch.long))
    # The last valid token is EOS: only tokens before it are segmented, so its entropy is never read.
    region = torch.zeros_like(mask)
    region[:, :-1] = mask[:, 1:]
    check_finite_where(entropy, region, "entropy")
    starts = entropy > threshold
    starts[:, :1] = True  # a slice, so T = 0 works too
    ids = (starts & region).long().cumsum(dim=1) - 1
    return torch.where(region, ids, torch.full_like(ids, -1))


def _check_segment_ids(segment_ids: torch.Tensor, name: str = "segment_ids") -> torch.Tensor:
    if not isinstance(segment_ids, torch.Tensor) or segment_ids.dim() != 2:
        raise ValueError(f"`{name}` must be a LongTensor of shape (B, T)")
    if segment_ids.is_floating_point() or segment_ids.dtype == torch.bool:
        raise ValueError(f"`{name}` must be an integer tensor, got {segment_ids.dtype}")
    inside = segment_ids >= 0
    as_mask(inside, f"{name} >= 0")  # segments occupy a prefix of each row
    steps = segment_ids[:, 1:] - segment_ids[:, :-1]
    ordered = ((steps == 0) | (steps == 1)) | ~inside[:, 1:]
    if bool((segment_ids < -1).any()) or not bool(ordered.all()) or bool((segment_ids[:, :1] > 0).any()):
        raise ValueError(f"`{name}` must number segments 0, 1, ... in order along each row, with -1 only at the end")
    return segment_ids.long()


def segment_counts(segment_ids: torch.Tensor) -> torch.Tensor:
    """Number of segments in each row. Shape: (B, T) -> (B,)."""
    return segment_ids.max(dim=1).values.clamp(min=-1) + 1 if segment_ids.shape[1] else segment_ids.new_zeros(
        segment_ids.shape[0]
    )


def segment_end_values(values: torch.Tensor, segment_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Read each segment's value at its **last** token (the RM's per-position score there).

    Args:
        values: per-position scalars, e.g. the RM head output. Shape: (B, T).
        segment_ids: from :func:`entropy_segment_ids`. Shape: (B, T).

    Returns:
        ``(seg_values, seg_valid)`` of shape (B, K_max), ``K_max`` the largest segment count in the
        batch (0 if none). Slots past a row's ``K_b`` hold 0 and are False in ``seg_valid``.
    """
    segment_ids = _check_segment_ids(segment_ids)
    check_same_shape(values, "values", segment_ids, "segment_ids")
    batch = values.shape[0]
    counts = segment_counts(segment_ids)
    k_max = int(counts.max()) if batch else 0
    inside = segment_ids >= 0
    next_ids = torch.full_like(segment_ids, -1)
    next_ids[:, :-1] = segment_ids[:, 1:]
    is_end = inside & (next_ids != segment_ids)
    check_finite_where(values, is_end, "values")
    # Non-end tokens are routed to a spare slot k_max that is dropped afterwards.
    index = torch.where(is_end, segment_ids, torch.full_like(segment_ids, k_max))
    out = torch.zeros(batch, k_max + 1, dtype=values.dtype, device=values.device)
    out.scatter_(1, index, torch.where(is_end, values, torch.zeros_like(values)))
    seg_valid = torch.arange(k_max, device=values.device).unsqueeze(0) < counts.unsqueeze(1)
    return out[:, :k_max], seg_valid


def _coef_values(coef) -> dict[str, float]:
    if coef is None:
        raise ValueError(
            "`coef` is None: the location-aware normaliser has not been fitted "
            "(fit it with fit_location_normalizer / `segrl fit-norm`; there is no silent identity)"
        )
    out = {}
    for field in COEF_FIELDS:
        value = coef.get(field) if isinstance(coef, Mapping) else getattr(coef, field, None)
        if value is None:
            raise ValueError(f"`coef` is missing {field!r}; expected fields {COEF_FIELDS}")
        out[field] = check_real(float(value), f"coef.{field}")
    return out


def location_normalize(
    seg_rewards: torch.Tensor, seg_valid: torch.Tensor, coef, sigma_floor: float = 1e-2
) -> torch.Tensor:
    """Location-aware normalisation ``(r_k - mu(p_k)) / sigma(p_k)`` with ``p_k = k / K_b``.

    ``mu(p) = a_mu ln(p + 1e-10) + b_mu``; ``sigma(p) = max(a_sigma ln(p + 1e-10) + b_sigma, sigma_floor)``.
    The floor exists because the published fits give ``sigma <= 0`` for long responses.

    Args:
        seg_rewards: segment rewards. Shape: (B, K).
        seg_valid: real segment slots, left-packed. Shape: (B, K).
        coef: mapping or object with ``a_mu, b_mu, a_sigma, b_sigma`` (a fitted normaliser).
        sigma_floor: lower bound on ``sigma(p)``, ``> 0``.

    Returns:
        Tensor (B, K); 0 at invalid slots.
    """
    seg_valid = as_mask(seg_valid, "seg_valid")
    check_same_shape(seg_rewards, "seg_rewards", seg_valid, "seg_valid")
    check_finite_where(seg_rewards, seg_valid, "seg_rewards")
    c = _coef_values(coef)
    sigma_floor = check_real(sigma_floor, "sigma_floor")
    if sigma_floor <= 0:
        raise ValueError(f"`sigma_floor` must be > 0, got {sigma_floor}")
    n_segments = seg_valid.sum(dim=1, keepdim=True).clamp(min=1).double()
    k = torch.arange(1, seg_rewards.shape[1] + 1, device=seg_rewards.device, dtype=torch.float64)
    log_p = torch.log(k.unsqueeze(0) / n_segments + LOG_EPS)
    mu = c["a_mu"] * log_p + c["b_mu"]
    sigma = (c["a_sigma"] * log_p + c["b_sigma"]).clamp(min=sigma_floor)
    normalized = ((seg_rewards.double() - mu) / sigma).to(seg_rewards.dtype)
    return torch.where(seg_valid, normalized, torch.zeros_like(normalized))


def spread_segment_rewards(seg_rewards: torch.Tensor, segment_ids: torch.Tensor, mode: str = "even") -> torch.Tensor:
    """Spread each segment's reward over its tokens.

    ``"even"`` (the paper's interpolation): ``r_k / L_k`` on every token of segment k;
    ``"end"``: ``r_k`` on its last token only; ``"repeat"``: ``r_k`` on every token.
    Tokens with segment id -1 (padding, EOS of a dense RM) get 0.

    Args:
        seg_rewards: Shape: (B, K) with ``K >= `` the largest segment count.
        segment_ids: Shape: (B, T).

    Returns:
        Tensor (B, T), dtype of ``seg_rewards``.
    """
    check_choice(mode, "mode", SPREAD_MODES)
    segment_ids = _check_segment_ids(segment_ids)
    if not isinstance(seg_rewards, torch.Tensor) or seg_rewards.dim() != 2:
        raise ValueError("`seg_rewards` must be a tensor of shape (B, K)")
    if seg_rewards.shape[0] != segment_ids.shape[0]:
        raise ValueError(
            f"`seg_rewards` has batch size {seg_rewards.shape[0]} but `segment_ids` has {segment_ids.shape[0]}"
        )
    if not seg_rewards.is_floating_point():
        raise ValueError(f"`seg_rewards` must be floating point, got {seg_rewards.dtype}")
    counts = segment_counts(segment_ids)
    if segment_ids.numel() and int(counts.max()) > seg_rewards.shape[1]:
        raise ValueError(
            f"`seg_rewards` has {seg_rewards.shape[1]} slots but `segment_ids` has up to {int(counts.max())} segments"
        )
    slot_valid = torch.arange(seg_rewards.shape[1], device=seg_rewards.device).unsqueeze(0) < counts.unsqueeze(1)
    check_finite_where(seg_rewards, slot_valid, "seg_rewards")
    inside = segment_ids >= 0
    if seg_rewards.shape[1] == 0:  # no segment anywhere (checked above), so every token gets 0
        return torch.zeros(segment_ids.shape, dtype=seg_rewards.dtype, device=seg_rewards.device)
    index = segment_ids.clamp(min=0)
    per_token = seg_rewards.gather(1, index)
    if mode == "even":
        lengths = torch.zeros_like(seg_rewards).scatter_add_(1, index, inside.to(seg_rewards.dtype))
        per_token = per_token / lengths.gather(1, index).clamp(min=1)
    elif mode == "end":
        next_ids = torch.full_like(segment_ids, -1)
        next_ids[:, :-1] = segment_ids[:, 1:]
        inside = inside & (next_ids != segment_ids)
    return torch.where(inside, per_token, torch.zeros_like(per_token))
