"""Token-reward sources in segrl's ``(B, T)`` response-token layout (docs/method.md#tensor-conventions).

- :class:`SegmentRMRewards`: the one segment-RM reward source (token rewards and the training
  sequence score) used by ASR-DPO, rejection sampling, PPO and the verl plugin;
- :func:`implicit_token_rewards` and friends: the DPO implicit reward of a model pair.
"""

from segrl.rewards.implicit import (
    ResponseBatch,
    implicit_token_rewards,
    response_token_entropy,
    response_token_logprobs,
    tokenize_pairs,
)
from segrl.rewards.segment_rm import SegmentRMRewards, reward_model_score_fn

__all__ = [
    "ResponseBatch",
    "SegmentRMRewards",
    "implicit_token_rewards",
    "reward_model_score_fn",
    "response_token_entropy",
    "response_token_logprobs",
    "tokenize_pairs",
]
