"""Hardware-dependent defaults shared by every trainer config (one place for the rule)."""

from __future__ import annotations

import logging

logger = logging.getLogger("segrl")

__all__ = ["bf16_supported", "cpu_safe_bf16", "resolve_trl_defaults"]


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


def resolve_trl_defaults(args) -> None:
    """What every segrl config based on a TRL config does before TRL's ``__post_init__``:
    :func:`cpu_safe_bf16`, and TRL's ``gradient_checkpointing`` default moved to transformers' new
    name ``activation_checkpointing`` (TRL still sets the old one, so every config warned that it is
    deprecated; the old name keeps mirroring the new one)."""
    cpu_safe_bf16(args)
    for old, new in (("gradient_checkpointing", "activation_checkpointing"),
                     ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs")):
        if hasattr(args, new) and getattr(args, new) is None and getattr(args, old, None) is not None:
            setattr(args, new, getattr(args, old))
            setattr(args, old, None)
