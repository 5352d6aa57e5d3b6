"""DeepSpeed helpers shared by the trainers (imported lazily; DeepSpeed itself is optional)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def whole_model_loading():
    """Load frozen helper models (reference, reward model) as whole copies inside a ZeRO-3 run.

    Under ZeRO-3, transformers builds every ``from_pretrained`` model inside ``zero.Init``, which
    partitions its weights across ranks. A frozen helper that segrl calls directly (not through a
    DeepSpeed engine) then has empty weights -- and loading it on one rank only deadlocks the
    others. Unsetting transformers' global DeepSpeed config for the duration of the load gives an
    ordinary, complete module; the config is restored afterwards.
    """
    try:
        from transformers.integrations import deepspeed as hf_ds
    except ImportError:  # pragma: no cover - transformers always ships it
        yield
        return
    ref = hf_ds._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    if config is None or not hf_ds.is_deepspeed_zero3_enabled():
        yield
        return
    hf_ds.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        hf_ds.set_hf_deepspeed_config(config)


def embedding_rows(weight: torch.Tensor) -> int:
    """Rows of an embedding matrix, also when ZeRO-3 has partitioned it (``ds_shape`` is the full shape)."""
    return int(getattr(weight, "ds_shape", weight.shape)[0])
