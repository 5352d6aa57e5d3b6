"""ASR rejection sampling on TRL (arXiv 2411.00809, docs/method.md#rejection-sampling): :class:`ASRRejectionSampler`."""

from segrl.rs.config import ASRRejectionSamplingConfig
from segrl.rs.sampler import ASRRejectionSampler, load_candidates, resolve_checkpoint

__all__ = ["ASRRejectionSampler", "ASRRejectionSamplingConfig", "load_candidates", "resolve_checkpoint"]
