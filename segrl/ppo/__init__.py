"""Dense-reward PPO (bandit / token / segment arms) and ASR-PPO on accelerate."""

from .config import SegmentPPOConfig
from .rewards import DenseRewards, SegmentRewardSource
from .trainer import PPOCallback, SegmentPPOTrainer, forward_logits, response_mask_from

__all__ = [
    "DenseRewards",
    "PPOCallback",
    "SegmentPPOConfig",
    "SegmentPPOTrainer",
    "SegmentRewardSource",
    "forward_logits",
    "response_mask_from",
]
