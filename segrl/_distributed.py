"""Data-parallel helpers shared by the trainers: the accelerate side of segrl.ops' moments hook."""

from __future__ import annotations

import torch


def sum_hook(accelerator):
    """The ``all_reduce`` hook of :mod:`segrl.ops.moments` for an ``accelerate.Accelerator``: a sum over
    every process, or ``None`` with one process (the ops then skip the collective)."""
    if accelerator is None or accelerator.num_processes == 1:
        return None
    return lambda t: accelerator.reduce(t, "sum")


def global_baseline(accelerator, baseline, rewards: torch.Tensor, mask: torch.Tensor):
    """The ASR baseline option with ``"batch_mean"`` / ``"position_mean"`` resolved over the batch of *every* rank.

    A per-rank mean would make the mask, and so the loss, depend on the number of processes. With
    one process, or a row-local option, ``baseline`` is returned unchanged. One implementation:
    :func:`segrl.ops.resolve_global_baseline` with the accelerator's sum as the moments hook.
    Shapes: ``rewards``, ``mask`` (B, T).
    """
    from segrl import ops

    return ops.resolve_global_baseline(rewards, mask, baseline, all_reduce=sum_hook(accelerator))


def global_auto_delta(accelerator, rewards: torch.Tensor, mask: torch.Tensor, baseline, quantile: float) -> float:
    """``asr_delta="auto"`` over the valid tokens of the batches of *every* process.

    docs/method.md#baselines-and-delta: never per micro-batch or per rank.

    Exact, not an approximation: the rows of all processes are gathered (padded to a common width)
    and :func:`segrl.ops.resolve_delta` runs on their concatenation. Each row's baseline is
    resolved before the gather (pass a global one as a tensor, e.g. from :func:`global_baseline`; a
    row-local name or a float resolves the same on any process). The same value on every process.

    Shapes: ``rewards``, ``mask`` (B, T); ``baseline`` a name, a float or a tensor (B,) / (B, T).
    """
    from segrl import ops

    grid = baseline if isinstance(baseline, torch.Tensor) else ops.resolve_baseline(rewards, mask, baseline)
    if accelerator is not None and accelerator.num_processes > 1:
        pad = accelerator.pad_across_processes
        rewards = accelerator.gather(pad(rewards.contiguous(), dim=1))
        mask = accelerator.gather(pad(mask.long().contiguous(), dim=1)).bool()
        grid = accelerator.gather(grid.contiguous() if grid.dim() == 1 else pad(grid.contiguous(), dim=1))
    return ops.resolve_delta(rewards, mask, grid, "auto", quantile)


def global_mask_options(accelerator, options: dict, rewards: torch.Tensor, mask: torch.Tensor) -> dict:
    """Keep-mask options (``ASRArguments.mask_kwargs()``) with everything batch-wide resolved over the
    batch of *every* process: a ``batch_mean`` / ``position_mean`` baseline (:func:`global_baseline`)
    and, for ``kind="asr"``, ``delta="auto"`` (:func:`global_auto_delta`). Options already resolved
    (a float delta, a row-local baseline) pass through. Returns a new dict; ``options`` is not changed.

    Shapes: ``rewards``, ``mask`` (B, T).
    """
    if options["kind"] == "none":
        return options
    out = {**options, "baseline": global_baseline(accelerator, options["baseline"], rewards, mask)}
    if out["kind"] == "asr" and out["delta"] == "auto":
        out["delta"] = global_auto_delta(accelerator, rewards, mask, out["baseline"], out["delta_quantile"])
    return out
