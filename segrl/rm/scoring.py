"""From per-position RM values to segment rewards and sequence scores (SPEC §2), pure torch.

Shared by the trainer's loss, evaluation, the normaliser fit and ``score_tokens``, so training and
scoring cannot drift apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from segrl.ops import entropy_segment_ids, segment_end_values

__all__ = ["SegmentScores", "gather_response_values", "segment_sequence_scores"]


@dataclass
class SegmentScores:
    """Segmentation and scores of a batch of responses.

    Attributes:
        scores: sequence score, the mean of the segment rewards (``K = 0``: the value at EOS). Shape: (B,).
        segment_ids: ``0..K_b-1`` or -1 (padding; EOS of a dense RM). Shape: (B, T).
        seg_rewards: each segment's reward, the RM value at its last token; 0 at unused slots. Shape: (B, K_max).
        seg_valid: real segment slots. Shape: (B, K_max).
        num_segments: ``K_b``. Shape: (B,).
    """

    scores: torch.Tensor
    segment_ids: torch.Tensor
    seg_rewards: torch.Tensor
    seg_valid: torch.Tensor
    num_segments: torch.Tensor


def gather_response_values(values: torch.Tensor, prompt_length: torch.Tensor, width: int) -> torch.Tensor:
    """Move per-position values of ``input_ids`` layouts to the response-token layout (SPEC §0).

    Response token ``t`` of row ``b`` sits at position ``prompt_length[b] + t``; the RM value *at*
    that position (no shift: the head reads the hidden state after the token itself) is its value.

    Args:
        values: per-position RM outputs over prompt + response. Shape: (B, L).
        prompt_length: position of response token 0 in each row. Shape: (B,).
        width: ``T``, the response width of the output.

    Returns:
        Tensor (B, T); columns past a row's response hold arbitrary (finite) values of that row,
        to be ignored through the response mask.
    """
    if values.dim() != 2:
        raise ValueError(f"`values` must have shape (B, L), got {tuple(values.shape)}")
    if prompt_length.shape != (values.shape[0],):
        raise ValueError(f"`prompt_length` must have shape ({values.shape[0]},), got {tuple(prompt_length.shape)}")
    pos = prompt_length.to(values.device).long()[:, None] + torch.arange(width, device=values.device)[None, :]
    return values.gather(1, pos.clamp(max=values.shape[1] - 1))


def segment_sequence_scores(values: torch.Tensor, entropy: torch.Tensor | None, mask: torch.Tensor,
                            threshold: float) -> SegmentScores:
    """Segment responses by reference entropy and score them with the mean segment reward.

    Args:
        values: RM value at every response token. Shape: (B, T).
        entropy: ``H(pi_ref(. | x, y_<t))`` per response token, or ``None`` for the bandit RM
            (``threshold = inf`` never reads it). Shape: (B, T).
        mask: valid response tokens, right-padded; the last one is EOS. Shape: (B, T).
        threshold: segmentation threshold ``c`` (``0`` token-level, ``math.inf`` bandit).

    Returns:
        :class:`SegmentScores`. Differentiable w.r.t. ``values``.
    """
    if entropy is None:
        if not math.isinf(threshold):
            raise ValueError("`entropy` is required for a dense RM (finite `threshold`); only c = inf ignores it")
        entropy = torch.zeros(mask.shape, dtype=values.dtype, device=values.device)
    mask = mask.to(device=values.device, dtype=torch.bool)
    lengths = mask.sum(dim=1)
    if bool((lengths == 0).any()):
        raise ValueError("`mask` has a row without response tokens; every response needs at least its EOS token")
    segment_ids = entropy_segment_ids(entropy.to(values.device), mask, threshold)
    seg_rewards, seg_valid = segment_end_values(values, segment_ids)
    counts = seg_valid.sum(dim=1)
    eos_values = values.gather(1, (lengths - 1)[:, None]).squeeze(1)
    mean = seg_rewards.sum(dim=1) / counts.clamp(min=1).to(values.dtype)
    # K = 0 happens for a dense RM on a response that is only EOS: its score is the EOS value.
    scores = torch.where(counts > 0, mean, eos_values)
    if not bool(torch.isfinite(scores.detach()).all()):
        raise ValueError("`values` (the RM outputs) contain NaN or inf where a sequence score is read")
    return SegmentScores(scores, segment_ids, seg_rewards, seg_valid, counts)
