"""From per-position RM values to segment rewards, sequence scores and token rewards, pure torch.

Shared by the trainer's loss, evaluation, the normaliser fit, ``score_tokens`` and the one
segment-RM reward source (:class:`segrl.rewards.SegmentRMRewards`, used by ASR-DPO, rejection
sampling, PPO and verl), so training and scoring cannot drift apart. The maths is in
docs/method.md#segment-rm, #reward-form, #location-normalizer and #spreading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from segrl.ops import entropy_segment_ids, location_normalize, segment_end_values, spread_segment_rewards

__all__ = [
    "REWARD_FORMS",
    "SEGMENT_LOSSES",
    "SegmentScores",
    "SegmentTokenRewards",
    "form_segment_rewards",
    "gather_response_values",
    "parse_reward_form",
    "parse_segment_loss",
    "prefix_pairs_loss",
    "segment_sequence_scores",
    "segment_token_rewards",
]

#: ``"value"``: a segment's reward is the RM value at its last token (the paper's); ``"delta"``: the
#: change of that value since the previous segment's end (docs/method.md#reward-form).
REWARD_FORMS = ("value", "delta")

#: ``"mean"``: Bradley-Terry on the mean segment rewards (the paper's); ``"prefix_pairs"``: Bradley-Terry
#: between every segment reward of the chosen and every one of the rejected response
#: (:func:`prefix_pairs_loss`, docs/method.md#segment-rm).
SEGMENT_LOSSES = ("mean", "prefix_pairs")


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
    """Move per-position values of ``input_ids`` layouts to the response-token layout (docs/method.md#tensor-conventions).

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


def parse_segment_loss(value, name: str = "segment_loss") -> str:
    """A segment-RM training loss, checked: one of :data:`SEGMENT_LOSSES`; ``ValueError`` naming ``name``."""
    if not isinstance(value, str) or value not in SEGMENT_LOSSES:
        raise ValueError(f"`{name}` must be one of {SEGMENT_LOSSES}, got {value!r}")
    return value


def prefix_pairs_loss(seg: SegmentScores, margin: torch.Tensor | None = None) -> torch.Tensor:
    """Bradley-Terry between every chosen and every rejected segment reward (``segment_loss="prefix_pairs"``).

    For a pair with chosen segment rewards ``w_1..w_K`` and rejected ``l_1..l_J``, the loss is
    ``mean_{i,j} -log sigma(w_i - l_j [- margin])``; the batch loss is the mean over pairs. A response
    without segments (a dense RM on an EOS-only response) takes part with its sequence score. With
    one segment per response (the bandit RM) this is the ordinary Bradley-Terry loss. Unlike
    Bradley-Terry on the mean, a pair keeps pushing each prefix until that prefix's value is ranked,
    so every segment-end value is trained as a value of its prefix (docs/method.md#segment-rm).

    Args:
        seg: :func:`segment_sequence_scores` of rows ``[chosen x B; rejected x B]``.
        margin: optional per-pair margin, as TRL's. Shape: (B,).

    Returns:
        Scalar loss, differentiable w.r.t. the values behind ``seg``.
    """
    if seg.scores.shape[0] % 2:
        raise ValueError(f"`seg` must hold [chosen x B; rejected x B] rows, got {seg.scores.shape[0]} rows")
    empty = seg.num_segments == 0
    rewards = torch.where(empty[:, None] & (torch.arange(seg.seg_rewards.shape[1], device=empty.device) == 0),
                          seg.scores[:, None], seg.seg_rewards)
    valid = seg.seg_valid | (empty[:, None] & (torch.arange(seg.seg_valid.shape[1], device=empty.device) == 0))
    r_w, r_l = torch.chunk(rewards, 2)
    v_w, v_l = torch.chunk(valid, 2)
    diff = r_w[:, :, None] - r_l[:, None, :]
    if margin is not None:
        diff = diff - margin.to(diff)[:, None, None]
    both = v_w[:, :, None] & v_l[:, None, :]
    per_pair = -(torch.nn.functional.logsigmoid(diff) * both).sum(dim=(1, 2)) / both.sum(dim=(1, 2))
    return per_pair.mean()


def parse_reward_form(value, name: str = "reward_form") -> str:
    """A reward form, checked: one of :data:`REWARD_FORMS`; ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, str) or value not in REWARD_FORMS:
        raise ValueError(f"`{name}` must be one of {REWARD_FORMS}, got {value!r}")
    return value


def form_segment_rewards(seg_rewards: torch.Tensor, seg_valid: torch.Tensor, start_values: torch.Tensor | None,
                         reward_form: str) -> torch.Tensor:
    """Segment rewards in the form in use (docs/method.md#reward-form).

    ``"value"``: ``r_k`` unchanged. ``"delta"``: ``r_k - r_{k-1}`` with ``r_0`` the RM value at the
    last prompt token (``start_values``), i.e. potential-based shaping of the same values: the
    deltas of a row sum to ``r_K - r_0``.

    Args:
        seg_rewards: ``r_k``, the RM value at each segment's last token. Shape: (B, K_max).
        seg_valid: real segment slots (contiguous from slot 0). Shape: (B, K_max).
        start_values: ``r_0`` per row, needed for ``"delta"`` only. Shape: (B,).
        reward_form: ``"value"`` | ``"delta"``.

    Returns:
        Tensor (B, K_max), 0 at unused slots.
    """
    parse_reward_form(reward_form)
    if reward_form == "value":
        return seg_rewards
    if start_values is None:
        raise ValueError("reward_form='delta' needs `start_values` (the RM value at the last prompt token of each row)")
    if start_values.shape != seg_rewards.shape[:1]:
        raise ValueError(f"`start_values` must have shape ({seg_rewards.shape[0]},), got {tuple(start_values.shape)}")
    previous = torch.cat([start_values.to(seg_rewards)[:, None], seg_rewards[:, :-1]], dim=1)
    return torch.where(seg_valid, seg_rewards - previous, torch.zeros_like(seg_rewards))


@dataclass
class SegmentTokenRewards:
    """What the segment-RM reward source gives for a batch of responses (response-token layout).

    Attributes:
        token_rewards: segment rewards in the form in use, normalised (unless asked not to), spread
            over their tokens; 0 on padding and on a dense RM's EOS. Shape: (B, T), fp32.
        mask: valid response tokens. Shape: (B, T), bool.
        scores: the training sequence score, mean of the raw segment values (``K = 0``: the EOS
            value), whatever the reward form. Shape: (B,).
        segment_ids: ``0..K_b-1`` or -1. Shape: (B, T).
        seg_rewards: segment rewards in the form in use, before normalisation. Shape: (B, K_max).
        seg_valid: real segment slots. Shape: (B, K_max).
        num_segments: ``K_b``. Shape: (B,).
        reward_form: the form of ``seg_rewards`` / ``token_rewards``.
    """

    token_rewards: torch.Tensor
    mask: torch.Tensor
    scores: torch.Tensor
    segment_ids: torch.Tensor
    seg_rewards: torch.Tensor
    seg_valid: torch.Tensor
    num_segments: torch.Tensor
    reward_form: str = "value"


def segment_token_rewards(seg, mask: torch.Tensor, *, start_values: torch.Tensor | None = None,
                          reward_form: str = "value", normalizer=None, sigma_floor: float = 1e-2,
                          mode: str = "even") -> SegmentTokenRewards:
    """Token rewards of segmented responses: form, then location-normalise, then spread.

    Args:
        seg: the output of :func:`segment_sequence_scores` (or anything with ``scores``,
            ``segment_ids``, ``seg_rewards``, ``seg_valid``).
        mask: valid response tokens. Shape: (B, T).
        start_values: the RM value at the last prompt token of each row (``"delta"`` only). Shape: (B,).
        reward_form: ``"value"`` | ``"delta"`` (docs/method.md#reward-form).
        normalizer: location-normaliser coefficients fitted **on this form**, or ``None`` for raw
            segment rewards (the caller decides; a consumer that needs a fit must check for it).
        sigma_floor: floor of ``sigma(p)``.
        mode: spreading, ``"even"`` | ``"end"`` | ``"repeat"`` (docs/method.md#spreading).

    Returns:
        :class:`SegmentTokenRewards`.
    """
    seg_rewards = form_segment_rewards(seg.seg_rewards, seg.seg_valid, start_values, reward_form)
    scaled = seg_rewards if normalizer is None else location_normalize(seg_rewards, seg.seg_valid, normalizer,
                                                                       sigma_floor=sigma_floor)
    token_rewards = spread_segment_rewards(scaled, seg.segment_ids, mode=mode)
    return SegmentTokenRewards(token_rewards.float(), mask.bool(), seg.scores, seg.segment_ids, seg_rewards,
                               seg.seg_valid, seg.seg_valid.sum(dim=1), reward_form)
