"""Masked means, whitening and batch baselines that are the same on one process and on many.

Every statistic here is built from :func:`masked_moments` -- ``[count, sum, sum of squares]`` in
float64 -- which add up across processes. An optional ``all_reduce`` callable (the "moments hook")
sums that vector over the ranks of a data-parallel job (e.g. ``lambda t: accelerator.reduce(t,
"sum")``); the result is then the single-process op on the concatenation of every rank's batch,
which is what docs/method.md#ppo asks of "whitened over the rollout batch" and
docs/method.md#baselines-and-delta of the batch-mean baseline. ``all_reduce=None`` is one process.

Shapes are free (``(B, T)`` for token tensors, ``(B,)`` for per-response values); ``mask`` has the
shape of the values and need not be right-padded (verl's masks have holes). See
docs/method.md#ops-contract.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._checks import check_same_shape

#: The moments hook: sums a float64 tensor over processes (in place or not) and returns the sum.
AllReduce = Callable[[torch.Tensor], torch.Tensor]


def _flags(mask: torch.Tensor | None, values: torch.Tensor, name: str = "mask") -> torch.Tensor:
    if mask is None:
        return torch.ones_like(values, dtype=torch.bool)
    check_same_shape(mask, name, values, "values")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"`{name}` must be boolean (or 0/1), got values outside {{0, 1}}")
        mask = mask.bool()
    return mask


def _checked(values: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(values, torch.Tensor):
        raise ValueError(f"`values` must be a torch.Tensor, got {type(values).__name__}")
    if not values.is_floating_point():
        raise ValueError(f"`values` must be a floating-point tensor, got {values.dtype}")
    mask = _flags(mask, values)
    if not bool((torch.isfinite(values) | ~mask).all()):
        raise ValueError("`values` contains NaN or inf at a position of `mask`")
    return values, mask


def _reduced(moments: torch.Tensor, all_reduce: AllReduce | None) -> torch.Tensor:
    if all_reduce is None:
        return moments
    if not callable(all_reduce):
        raise ValueError(f"`all_reduce` must be a callable (Tensor) -> Tensor or None, got {type(all_reduce).__name__}")
    out = all_reduce(moments)
    out = moments if out is None else out  # torch.distributed.all_reduce works in place and returns None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(moments.shape):
        raise ValueError(f"`all_reduce` must return a tensor of shape {tuple(moments.shape)}, got {out!r}")
    return out.to(torch.float64)


def masked_moments(values: torch.Tensor, mask: torch.Tensor | None = None, *, dim: int | None = None) -> torch.Tensor:
    """``[count, sum, sum of squares]`` of the entries of ``values`` where ``mask`` is True, in float64.

    The three numbers add up across batches (and ranks), so the mean and the variance of a union of
    batches follow from their sum (:func:`moments_mean_std`). Values at masked-out positions are
    ignored, even NaN or inf. Detached: the result carries no gradient.

    Args:
        values: Shape: any, e.g. (B, T).
        mask: which entries count; same shape. ``None``: every entry.
        dim: reduce only this dimension (e.g. ``dim=1``: the moments of each row), else all of them.

    Returns:
        float64 tensor of shape (3,), or (3, *shape without ``dim``) with ``dim``.
    """
    values, mask = _checked(values, mask)
    x = torch.where(mask, values.detach().double(), 0.0)
    dims = tuple(range(values.dim())) if dim is None else (dim,)
    return torch.stack([mask.double().sum(dim=dims), x.sum(dim=dims), (x * x).sum(dim=dims)])


def moments_mean_std(moments: torch.Tensor, *, unbiased: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation from (summed) :func:`masked_moments`, in float64.

    ``unbiased=False`` is the population std (divides by ``n``), ``True`` the sample std (``n - 1``,
    as ``torch.std`` and TRL's GRPO group std). No entry gives mean 0 and std 0; one entry gives
    std 0 either way.

    Shape: ``moments`` (3, ...) -> ``(mean, std)``, each of shape ``moments.shape[1:]``.
    """
    if not isinstance(moments, torch.Tensor) or moments.dim() < 1 or moments.shape[0] != 3:
        raise ValueError(f"`moments` must be a tensor of shape (3, ...) [count, sum, sum of squares], got "
                         f"{tuple(moments.shape) if isinstance(moments, torch.Tensor) else type(moments).__name__}")
    moments = moments.double()
    count, total, squares = moments[0], moments[1], moments[2]
    n = count.clamp(min=1)
    mean = total / n
    centred = (squares - n * mean * mean).clamp(min=0)  # sum of squared deviations
    var = centred / ((count - 1).clamp(min=1) if unbiased else n)
    return mean, var.sqrt()


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None = None, *,
                all_reduce: AllReduce | None = None) -> torch.Tensor:
    """Mean over the True entries of ``mask`` (0 if there are none), over every rank with ``all_reduce``.

    Accumulated in float64, returned in ``values.dtype``. Differentiable in ``values`` when
    ``all_reduce`` is None.

    Args:
        values: Shape: any, e.g. (B, T) token values or (B,) sequence rewards.
        mask: which entries count; same shape. ``None``: all of them.
        all_reduce: optional callable summing a float64 tensor over processes (the moments hook).

    Returns:
        A 0-d tensor.
    """
    values, mask = _checked(values, mask)
    if all_reduce is None:
        total = torch.where(mask, values, 0).sum(dtype=torch.float64)
        return (total / mask.sum().clamp(min=1)).to(values.dtype)
    moments = _reduced(masked_moments(values, mask), all_reduce)
    return (moments[1] / moments[0].clamp(min=1)).to(device=values.device, dtype=values.dtype)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor | None = None, *, shift_mean: bool = True,
                  eps: float = 1e-8, all_reduce: AllReduce | None = None) -> torch.Tensor:
    """Whiten over the valid entries of the whole batch: ``(x - mean) / sqrt(var + eps)``, 0 outside ``mask``.

    Mean and population variance come from :func:`masked_moments` (float64), summed over ranks by
    ``all_reduce``; ``shift_mean=False`` adds the mean back (only rescales). An empty mask gives 0.

    Args:
        values: e.g. GAE advantages. Shape: (B, T) (any shape works).
        mask: valid entries; same shape. ``None``: all of them.
        shift_mean: subtract the mean (True) or keep it (False).
        eps: added to the variance.
        all_reduce: optional callable summing a float64 tensor over processes (the moments hook).

    Returns:
        Tensor of the shape and dtype of ``values``.
    """
    values, mask = _checked(values, mask)
    mean, std = moments_mean_std(_reduced(masked_moments(values, mask), all_reduce).to(values.device))
    whitened = (values - mean.to(values.dtype)) * torch.rsqrt(std * std + eps).to(values.dtype)
    if not shift_mean:
        whitened = whitened + mean.to(values.dtype)
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def resolve_global_baseline(rewards: torch.Tensor, mask: torch.Tensor, baseline, *,
                            all_reduce: AllReduce | None = None):
    """An ASR baseline option with the batch-wide ones resolved over the batch of *every* rank.

    ``"batch_mean"`` becomes the float64 (B,) tensor of the global mean of the valid token rewards;
    ``"position_mean"`` the float64 (B, T) per-position-bin means of the global batch
    (:func:`segrl.ops.position_mean_baseline`). Row-local options (``"sequence_mean"``, ``"zero"``,
    a float, an already-resolved tensor) are returned unchanged: they never depend on the other
    ranks. With ``all_reduce=None`` the batch options are returned unchanged too (``keep_mask``
    resolves them over the batch it is given, identically). A per-rank mean would make the mask,
    and so the loss, depend on the number of processes (docs/method.md#baselines-and-delta).

    Shapes: ``rewards``, ``mask`` (B, T), right-padded.
    """
    if all_reduce is None or not isinstance(baseline, str) or baseline not in ("batch_mean", "position_mean"):
        return baseline
    if baseline == "position_mean":
        from .asr import position_mean_baseline

        return position_mean_baseline(rewards, mask, all_reduce=all_reduce)
    from ._checks import as_mask, check_finite_where

    mask = as_mask(mask)
    check_same_shape(rewards, "rewards", mask, "mask")
    check_finite_where(rewards, mask, "rewards")
    moments = _reduced(masked_moments(rewards, mask), all_reduce)
    mean = moments[1] / moments[0].clamp(min=1)
    return mean.to(rewards.device).expand(rewards.shape[0]).clone()
