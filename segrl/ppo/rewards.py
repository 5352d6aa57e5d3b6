"""PPO's adapter onto the one segment-RM reward source (:class:`segrl.rewards.SegmentRMRewards`).

The arm is chosen by the entropy threshold ``c``: ``inf`` bandit, ``0`` token, otherwise segment.
The reference entropy comes from the reference forward pass PPO makes anyway (for the KL term), so
segmentation costs no extra forward pass. The bandit arm puts its one normalised reward on the
last token (docs/method.md#ppo).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from segrl.rewards.segment_rm import ScoreFn, SegmentRMRewards, reward_model_score_fn

__all__ = ["DenseRewards", "ScoreFn", "SegmentRewardSource", "reward_model_score_fn", "source_from_reward_model"]


@dataclass
class DenseRewards:
    """Rewards of one rollout batch, over response tokens. Shapes: (B, T) and (B,)."""

    token_rewards: torch.Tensor  # normalised segment rewards spread over tokens (bandit: at the last token)
    seq_rewards: torch.Tensor  # sequence score: mean of the raw segment values (docs/method.md#segment-rm)
    segment_ids: torch.Tensor  # -1 outside every segment


class SegmentRewardSource:
    """Segment-level dense rewards of a rollout batch from any per-position scorer.

    Args:
        score_fn: per-position scalar for every position of the query+response batch.
        threshold: entropy threshold ``c`` (``math.inf`` bandit, ``0`` token-level).
        normalizer: fitted location-normaliser coefficients (``None`` is an error: there is no
            silent identity).
        spread_mode: ``"even"`` | ``"end"`` | ``"repeat"``. The bandit arm always puts its one
            normalised reward on the last token (the ordinary RM), whatever this says.
        sigma_floor: floor of ``sigma(p)``.
        reward_form: ``"value"`` | ``"delta"`` (docs/method.md#reward-form); the normaliser must
            be fitted on it.
    """

    def __init__(self, score_fn: ScoreFn, *, threshold: float, normalizer, spread_mode: str = "even",
                 sigma_floor: float = 1e-2, reward_form: str = "value"):
        self.threshold = float(threshold)
        self.spread_mode = "end" if math.isinf(self.threshold) else spread_mode
        self.source = SegmentRMRewards.from_score_fn(score_fn, threshold=self.threshold, normalizer=normalizer,
                                                     mode=self.spread_mode, sigma_floor=sigma_floor,
                                                     reward_form=reward_form)

    @property
    def reward_form(self) -> str:
        return self.source.reward_form

    def __call__(self, query_responses: torch.Tensor, attention_mask: torch.Tensor, context_length: int,
                 response_mask: torch.Tensor, ref_entropy: torch.Tensor) -> DenseRewards:
        """Shapes: ``query_responses``/``attention_mask`` (B, L); ``response_mask``/``ref_entropy`` (B, T)."""
        out = self.source.score_rollout(query_responses, attention_mask, context_length, response_mask, ref_entropy)
        return DenseRewards(out.token_rewards, out.scores, out.segment_ids)


def source_from_reward_model(rm, *, threshold: float | None = None, spread_mode: str = "even") -> SegmentRewardSource:
    """A :class:`SegmentRewardSource` from a loaded :class:`segrl.rm.SegmentRewardModel`.

    ``threshold`` defaults to the RM's own; the normaliser and its reward form are the RM's fitted
    ones (an error if it was never fitted, for every arm: the bandit arm needs its global mean/std too).
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
        reward_form=rm.reward_form,
    )
