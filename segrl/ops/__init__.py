"""Core maths of segrl as pure torch functions: batched, loop-free, device-agnostic, no transformers.

Conventions (docs/method.md#tensor-conventions): right-padded ``(B, T)`` tensors over response tokens only; ``mask`` is True
for real response tokens; segments are ``segment_ids`` with ``-1`` outside every segment.
"""

from .asr import (
    BASELINE_MODES,
    MASK_KINDS,
    POSITION_BINS,
    ASRResult,
    KeepMaskResult,
    asr_mask,
    asr_segments,
    hysteresis_states,
    keep_mask,
    parse_baseline,
    position_bins,
    position_mean_baseline,
    preference_sign,
    resolve_baseline,
    resolve_delta,
    segment_ids_from_states,
    segment_means,
    sequence_sign,
    step_segment_ids,
    stepwise_mask,
    tokenwise_mask,
)
from .normalizer import (
    LocationBuckets,
    LocationNormalizerCoef,
    fit_location_normalizer,
    location_buckets,
    segment_locations,
)
from .ppo import gae_advantages, masked_mean, masked_whiten, ppo_policy_loss, ppo_value_loss, shaped_rewards
from .moments import AllReduce, masked_moments, moments_mean_std, resolve_global_baseline
from .segments import (
    entropy_segment_ids,
    location_normalize,
    segment_counts,
    segment_end_values,
    spread_segment_rewards,
)

__all__ = [
    "BASELINE_MODES",
    "MASK_KINDS",
    "POSITION_BINS",
    "ASRResult",
    "KeepMaskResult",
    "keep_mask",
    "position_bins",
    "position_mean_baseline",
    "preference_sign",
    "resolve_delta",
    "sequence_sign",
    "LocationBuckets",
    "LocationNormalizerCoef",
    "asr_mask",
    "asr_segments",
    "entropy_segment_ids",
    "fit_location_normalizer",
    "gae_advantages",
    "masked_mean",
    "masked_whiten",
    "parse_baseline",
    "ppo_policy_loss",
    "ppo_value_loss",
    "shaped_rewards",
    "hysteresis_states",
    "location_buckets",
    "location_normalize",
    "resolve_baseline",
    "segment_counts",
    "segment_end_values",
    "segment_ids_from_states",
    "segment_locations",
    "segment_means",
    "spread_segment_rewards",
    "step_segment_ids",
    "stepwise_mask",
    "tokenwise_mask",
]
__all__ += ["AllReduce", "masked_moments", "moments_mean_std", "resolve_global_baseline"]
