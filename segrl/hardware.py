"""Hardware-dependent defaults shared by every trainer config (one place for the rule)."""

from __future__ import annotations

import logging

logger = logging.getLogger("segrl")

__all__ = ["bf16_supported", "cpu_safe_bf16"]


def bf16_supported() -> bool:
    """Whether an accelerator here trains in bfloat16 (CUDA Ampere+, XPU, NPU: transformers' check)."""
    from transformers.utils import is_torch_bf16_gpu_available

    return bool(is_torch_bf16_gpu_available())


def cpu_safe_bf16(args) -> None:
    """TRL configs leave ``bf16=None`` meaning "True unless fp16", which fails on a machine without a
    bf16-capable accelerator. Resolve an unset ``bf16`` to ``False`` there (logged); an explicit
    value is left alone. Call it from a config's ``__post_init__`` before TRL's."""
    if getattr(args, "bf16", False) is None and not getattr(args, "fp16", False) and not bf16_supported():
        args.bf16 = False
        logger.warning("segrl: no bf16-capable GPU found: bf16=False (set bf16 explicitly to override)")
