"""Data-parallel helpers shared by the trainers."""

from __future__ import annotations

import torch


def global_baseline(accelerator, baseline, rewards: torch.Tensor, mask: torch.Tensor):
    """The ASR baseline option with ``"batch_mean"`` resolved over the batch of *every* rank.

    A per-rank mean would make the mask, and so the loss, depend on the number of processes. With
    one process, or any other option, ``baseline`` is returned unchanged (``segrl.ops`` resolves it
    in float64, as here). Shapes: ``rewards``, ``mask`` (B, T).
    """
    if baseline != "batch_mean" or accelerator.num_processes == 1:
        return baseline
    stats = torch.stack([torch.where(mask, rewards, 0).double().sum(), mask.double().sum()])
    stats = accelerator.reduce(stats, "sum")
    return float(stats[0] / stats[1].clamp(min=1))
