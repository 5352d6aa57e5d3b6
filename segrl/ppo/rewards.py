"""Dense reward sources for PPO: per-position scores -> segments -> normalised, spread token rewards.

A source turns a rollout batch into ``DenseRewards``. The segment pipeline (SPEC §2) is the same
for every arm; the arm is chosen by the entropy threshold ``c``: ``inf`` bandit, ``0`` token,
otherwise segment. The reference entropy comes from the reference forward pass PPO makes anyway
(for the KL term), so segmentation costs no extra forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from segrl import ops


@dataclass
class DenseRewards:
    """Rewards of one rollout batch, over response tokens. Shapes: (B, T) and (B,)."""

    token_rewards: torch.Tensor  # normalised segment rewards spread over tokens (bandit: at the last token)
    seq_rewards: torch.Tensor  # sequence score: mean of the raw segment rewards (SPEC §2)
    segment_ids: torch.Tensor  # -1 outside every segment


# (query_response_ids (B, L), attention_mask (B, L), context_length) -> per-position scores (B, L)
ScoreFn = Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]


class SegmentRewardSource:
    """Segment-level dense rewards from any per-position scorer (a segment RM's head, or a rule).

    Args:
        score_fn: per-position scalar for every position of the query+response batch.
        threshold: entropy threshold ``c`` (``math.inf`` bandit, ``0`` token-level).
        normalizer: fitted location-normaliser coefficients (``None`` is an error for a dense
            source: there is no silent identity).
        spread_mode: ``"even"`` | ``"end"`` | ``"repeat"``. The bandit arm always puts its one
            normalised reward on the last token (the ordinary RM), whatever this says.
        sigma_floor: floor of ``sigma(p)``.
    """

    def __init__(self, score_fn: ScoreFn, *, threshold: float, normalizer, spread_mode: str = "even",
                 sigma_floor: float = 1e-2):
        if normalizer is None:
            raise ValueError(
                "`normalizer` is None: fit the location-aware normaliser first (`segrl fit-norm`); "
                "pass explicit coefficients to opt out"
            )
        self.score_fn = score_fn
        self.threshold = float(threshold)
        self.normalizer = normalizer
        self.spread_mode = "end" if math.isinf(self.threshold) else spread_mode
        self.sigma_floor = sigma_floor

    @torch.no_grad()
    def __call__(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int,
                 response_mask: torch.Tensor, ref_entropy: torch.Tensor) -> DenseRewards:
        """Shapes: ``query_responses``/``attention_mask`` (B, L); ``response_mask``/``ref_entropy`` (B, T)."""
        scores = self.score_fn(query_responses, attention_mask, context_length)[:, context_length:].float()
        segment_ids = ops.entropy_segment_ids(ref_entropy, response_mask, self.threshold)
        seg_raw, seg_valid = ops.segment_end_values(scores, segment_ids)
        n_segments = seg_valid.sum(dim=1)
        eos_index = (response_mask.sum(dim=1) - 1).clamp(min=0)
        eos_score = scores.gather(1, eos_index.unsqueeze(1)).squeeze(1)
        seq_rewards = torch.where(n_segments > 0, seg_raw.sum(dim=1) / n_segments.clamp(min=1), eos_score)
        seg_norm = ops.location_normalize(seg_raw, seg_valid, self.normalizer, sigma_floor=self.sigma_floor)
        token_rewards = ops.spread_segment_rewards(seg_norm, segment_ids, mode=self.spread_mode)
        return DenseRewards(token_rewards, seq_rewards, segment_ids)


def reward_model_score_fn(rm_model) -> ScoreFn:
    """Per-position scores of a segment RM (a ``*ForSequenceClassification`` with ``num_labels=1``).

    Positions are passed explicitly so left-padded prompts score exactly like the right-padded
    batches the RM was trained on.
    """
    from segrl.rm.model import per_position_values

    def score(query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int) -> torch.Tensor:
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
        values, _ = per_position_values(rm_model, query_responses, attention_mask, position_ids=position_ids)
        return values

    return score


def source_from_reward_model(rm, *, threshold: float | None = None, spread_mode: str = "even") -> SegmentRewardSource:
    """A :class:`SegmentRewardSource` from a loaded :class:`segrl.rm.SegmentRewardModel`.

    ``threshold`` defaults to the RM's own; the normaliser is the RM's fitted one (an error if it
    was never fitted, for every arm: the bandit arm needs its global mean/std too).
    """
    if rm.normalizer is None:
        raise ValueError(
            "the reward model has no fitted normaliser; run `segrl fit-norm` on it before PPO "
            "(segrl never falls back to an identity normaliser)"
        )
    return SegmentRewardSource(
        reward_model_score_fn(rm.model),
        threshold=rm.threshold if threshold is None else threshold,
        normalizer=rm.normalizer,
        spread_mode=spread_mode,
        sigma_floor=rm.sigma_floor,
    )
