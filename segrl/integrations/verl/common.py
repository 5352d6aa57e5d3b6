"""Names and config access shared by the modules of the segrl verl plugin."""

from __future__ import annotations

ADV_ESTIMATOR_NAME = "segrl_asr_gae"
POLICY_LOSS_NAME = "segrl_asr"
REWARD_MANAGER_NAME = "segrl_dense"
CONFIG_KEY = "segrl_asr"  # options live under `+algorithm.segrl_asr.*`


def config_get(config, dotted: str, default=None):
    """``config.a.b.c`` for a dotted key over mappings, OmegaConf nodes or dataclasses; ``default`` if absent/None."""
    node = config
    for part in dotted.split("."):
        if node is None:
            return default
        try:
            node = node.get(part) if hasattr(node, "get") else getattr(node, part, None)
        except Exception:  # OmegaConf raises on missing keys in struct mode
            return default
    return default if node is None else node
