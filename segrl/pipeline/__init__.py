"""The whole segrl pipeline on the built-in credit-assignment task, as used by ``segrl demo`` and
``segrl experiment``.

SFT (:mod:`segrl.pipeline.sft`) -> preference pairs (:mod:`segrl.pipeline.pairs`) -> segment / token /
bandit reward models, normaliser fit -> DPO-family, PPO-family and rejection-sampling methods
(:mod:`segrl.pipeline.stages`) -> held-out evaluation (:mod:`segrl.pipeline.evaluation`) ->
aggregation, plots and the HTML report (:mod:`segrl.pipeline.report`).

Attributes are imported lazily (TRL and transformers load only when a stage runs).
"""

from __future__ import annotations

from segrl._lazy import lazy_exports

_EXPORTS = {
    "Pipeline": "segrl.pipeline.stages",
    "quiet_libraries": "segrl.pipeline.stages",
    "METHODS": "segrl.pipeline.settings",
    "MethodSpec": "segrl.pipeline.settings",
    "PairSettings": "segrl.pipeline.settings",
    "RMSettings": "segrl.pipeline.settings",
    "DPOSettings": "segrl.pipeline.settings",
    "PPOSettings": "segrl.pipeline.settings",
    "RSSettings": "segrl.pipeline.settings",
    "EvalSettings": "segrl.pipeline.settings",
    "SFTSettings": "segrl.pipeline.sft",
    "PACKAGED_SFT": "segrl.pipeline.sft",
    "train_sft": "segrl.pipeline.sft",
    "load_or_train_sft": "segrl.pipeline.sft",
    "ArithEvaluator": "segrl.pipeline.evaluation",
    "CheckpointTracker": "segrl.pipeline.evaluation",
    "heldout_split": "segrl.pipeline.evaluation",
    "sample_responses": "segrl.pipeline.pairs",
    "pairs_from_samples": "segrl.pipeline.pairs",
    "credit_auc": "segrl.pipeline.diagnostics",
    "segment_rm_credit": "segrl.pipeline.diagnostics",
    "aggregate": "segrl.pipeline.report",
    "markdown_table": "segrl.pipeline.report",
    "render_report": "segrl.pipeline.report",
    "Reporter": "segrl.pipeline.progress",
}

__getattr__, __dir__, __all__ = lazy_exports("segrl.pipeline", _EXPORTS)
