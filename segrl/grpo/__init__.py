"""Critic-free dense-reward variant: TRL's GRPOTrainer fed (B, T) segment advantages."""

from .trainer import SegmentGRPOConfig, SegmentGRPOTrainer, dense_group_advantages

__all__ = ["SegmentGRPOConfig", "SegmentGRPOTrainer", "dense_group_advantages"]
