"""One runner per method family: ``run(pipeline, seed, spec, out, sft) -> (tracker, model, extra)``.

Each trains one method from the seed's SFT model with the library's public trainer of its family
(:class:`segrl.dpo.ASRDPOTrainer`, :class:`segrl.ppo.SegmentPPOTrainer`,
:class:`segrl.rs.ASRRejectionSampler`), evaluating on dev at the tracker's checkpoints through the
trainers' callbacks. :class:`segrl.pipeline.stages.Pipeline` does the caching and test evaluation.
"""

from __future__ import annotations

import importlib

__all__ = ["runner_for"]

_FAMILIES = {"dpo": "segrl.pipeline.runners.dpo", "ppo": "segrl.pipeline.runners.ppo", "rs": "segrl.pipeline.runners.rs"}


def runner_for(family: str):
    """The ``run`` function of a method family (``"dpo"``, ``"ppo"`` or ``"rs"``)."""
    if family not in _FAMILIES:
        raise ValueError(f"`family` must be one of {sorted(_FAMILIES)}, got {family!r}")
    return importlib.import_module(_FAMILIES[family]).run
