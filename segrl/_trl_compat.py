"""The TRL internals segrl relies on, and an import-time check that the installed TRL still has them.

segrl's trainers are TRL subclasses. Some of what they override or call is private to TRL
(``DPOTrainer._compute_loss``, ``GRPOTrainer._generate_and_score_completions``,
``trl.data_utils._tokenize``, the ``_metrics`` dict, ...). A TRL release that renames one of them
would not fail loudly: the override would simply never be called again and the ASR mask would
silently vanish from the loss. So every such dependency is listed here, once, with the parameter
names segrl expects, and each TRL-based segrl module calls :func:`check_trl_compat` for its group
when it is imported. A missing method, a changed signature, a TRL caller that no longer calls the
override, or a missing attribute raises :class:`TRLCompatibilityError` naming it and
:data:`SUPPORTED_TRL` (the range pinned in ``pyproject.toml``; ``make compat`` runs the parity
tests at both ends of it).

``SEGRL_SKIP_TRL_CHECK=1`` turns the check off (to try an untested TRL at your own risk).
"""

from __future__ import annotations

import importlib
import inspect
import os
import re
from dataclasses import dataclass, field

__all__ = [
    "GROUPS",
    "REQUIREMENTS",
    "SUPPORTED_TRL",
    "Requirement",
    "TRLCompatibilityError",
    "check_trl_compat",
    "problems",
]

#: The TRL versions segrl is tested against; keep equal to the ``trl`` requirement in pyproject.toml.
SUPPORTED_TRL = ">=1.16,<1.17"
SKIP_ENV = "SEGRL_SKIP_TRL_CHECK"


class TRLCompatibilityError(ImportError):
    """The installed TRL lacks (or changed) an internal that segrl overrides or calls."""


@dataclass(frozen=True)
class Requirement:
    """One TRL internal segrl depends on.

    Attributes:
        target: ``"module:Qualified.name"`` of the TRL object (``"trl.trainer.dpo_trainer:DPOTrainer._compute_loss"``).
        kind: ``"override"`` (segrl's subclass redefines it: the parameters must match **exactly**,
            since TRL calls segrl's version with them), ``"call"`` (segrl calls it: ``params`` must be
            its leading parameters, in order) or ``"attribute"`` (an instance attribute TRL sets and
            segrl reads: the TRL module must assign ``self.<name>``).
        params: expected parameter names (``self`` included for methods; ``"*args"`` / ``"**kw"`` for
            variadic ones). Ignored for attributes.
        called_from: ``"Class.method"`` names of the same TRL module whose source must still call
            ``self.<method>(``: the override is only useful while TRL calls it.
        source_has: strings the TRL object's source must contain (behaviour segrl relies on).
        used_by: the segrl code that depends on it (for the error message).
    """

    target: str
    kind: str
    params: tuple[str, ...] = ()
    used_by: str = ""
    called_from: tuple[str, ...] = ()
    source_has: tuple[str, ...] = field(default=())

    @property
    def display(self) -> str:
        module, _, qualname = self.target.partition(":")
        return f"{module}.{qualname}"


def _req(target, kind, params=(), used_by="", called_from=(), source_has=()) -> Requirement:
    return Requirement(target, kind, tuple(params), used_by, tuple(called_from), tuple(source_has))


_DPO = "trl.trainer.dpo_trainer:DPOTrainer"
_RM = "trl.trainer.reward_trainer:RewardTrainer"
_GRPO = "trl.trainer.grpo_trainer:GRPOTrainer"
_SFT = "trl.trainer.sft_trainer:SFTTrainer"

_DATA_UTILS = (
    _req("trl.data_utils:_tokenize", "call", ("processing_class", "input", "**apply_chat_template_kwargs"),
         "segrl.rm.data.tokenize_completion (TRL's joint prompt + completion tokenisation)"),
    _req("trl.data_utils:common_prefix_length", "call", ("ids", "other_ids"),
         "segrl.rm.data, segrl.rm.model, segrl.rm.evaluate, segrl.rs.sampler (where a completion starts)"),
    _req("trl.data_utils:extract_prompt", "call", ("example",), "segrl.rm.data (implicit-prompt datasets)"),
)

#: Every TRL internal segrl depends on, by group (the segrl module that checks it at import).
REQUIREMENTS: dict[str, tuple[Requirement, ...]] = {
    "dpo": (
        _req(f"{_DPO}._compute_loss", "override", ("self", "model", "inputs", "return_outputs"),
             "segrl.dpo.trainer.ASRDPOTrainer (ANDs the ASR keep mask into completion_mask)",
             called_from=("DPOTrainer.compute_loss",),
             source_has=('inputs["input_ids"].masked_fill(completion_mask == 0, -100)',)),
        _req(f"{_DPO}._prepare_dataset", "override", ("self", "dataset", "processing_class", "args", "dataset_name"),
             "segrl.dpo.trainer.ASRDPOTrainer (aligns token rewards to TRL's ids)",
             called_from=("DPOTrainer.__init__",)),
        _req(f"{_DPO}._precompute_ref_logps", "override", ("self", "dataset", "name", "batch_size"),
             "segrl.dpo.trainer.ASRDPOTrainer (stores per-token reference log-probs)",
             called_from=("DPOTrainer.__init__",)),
        _req(f"{_DPO}._set_signature_columns_if_needed", "override", ("self",),
             "segrl.dpo.trainer.ASRDPOTrainer (keeps the token-reward columns)"),
        _req(f"{_DPO}._metrics", "attribute", used_by="segrl.dpo.trainer.ASRDPOTrainer (asr/* metrics)"),
        _req(f"{_DPO}._signature_columns", "attribute", used_by="segrl.dpo.trainer.ASRDPOTrainer"),
        _req(f"{_DPO}._tokenizer", "attribute", used_by="segrl.dpo.trainer.ASRDPOTrainer"),
        _req(f"{_DPO}._precompute_model_hash", "attribute",
             used_by="segrl.dpo.trainer.ASRDPOTrainer._precompute_ref_logps (cache key)"),
        _req(f"{_DPO}._precompute_engine", "attribute",
             used_by="segrl.dpo.trainer.ASRDPOTrainer._precompute_ref_logps (DeepSpeed ZeRO-3)"),
        _req("trl.models:prepare_deepspeed", "call", ("model", "accelerator"), "segrl.dpo.trainer"),
        _req("trl.models.utils:disable_gradient_checkpointing", "call", ("model", "gradient_checkpointing_kwargs"),
             "segrl.dpo.trainer"),
        _req("trl.trainer.utils:get_config_model_id", "call", ("config",), "segrl.dpo.trainer"),
        _req("trl.trainer.utils:use_adapter", "call", ("model", "adapter_name"), "segrl.dpo.trainer"),
    ),
    "rm": (
        _req(f"{_RM}._prepare_dataset", "override", ("self", "dataset", "processing_class", "args", "dataset_name"),
             "segrl.rm.trainer.SegmentRewardTrainer (reference entropies, prompt_length)",
             called_from=("RewardTrainer.__init__",)),
        _req(f"{_RM}._set_signature_columns_if_needed", "override", ("self",),
             "segrl.rm.trainer.SegmentRewardTrainer (keeps prompt_length and the entropy columns)"),
        _req(f"{_RM}.compute_loss", "override", ("self", "model", "inputs", "return_outputs", "num_items_in_batch"),
             "segrl.rm.trainer.SegmentRewardTrainer (segment-level Bradley-Terry)"),
        _req("trl.trainer.reward_trainer:DataCollatorForPreference.torch_call", "override", ("self", "examples"),
             "segrl.rm.trainer.DataCollatorForSegmentPreference"),
        _req(f"{_RM}._metrics", "attribute", used_by="segrl.rm.trainer.SegmentRewardTrainer"),
        _req(f"{_RM}._signature_columns", "attribute", used_by="segrl.rm.trainer.SegmentRewardTrainer"),
        _req(f"{_RM}._total_train_tokens", "attribute", used_by="segrl.rm.trainer.SegmentRewardTrainer"),
        _req(f"{_RM}._tp_size", "attribute", used_by="segrl.rm.trainer.SegmentRewardTrainer"),
        _req("trl.trainer.utils:pad", "call", ("tensors", "padding_value"), "segrl.rm.trainer"),
        _req("trl.trainer.utils:global_then_local_main_first", "call", (), "segrl.rm.trainer"),
        *_DATA_UTILS,
    ),
    "grpo": (
        _req(f"{_GRPO}._generate_and_score_completions", "override", ("self", "inputs"),
             "segrl.grpo.trainer.SegmentGRPOTrainer (dense segment advantages, ASR tool_mask)",
             called_from=("GRPOTrainer._prepare_inputs",)),
        _req(f"{_GRPO}._compute_loss", "call", ("self", "model", "inputs"),
             "segrl.grpo.trainer.SegmentGRPOTrainer ((B, T) advantages and the ASR mask in tool_mask)",
             source_has=('inputs["tool_mask"]', "if advantages.dim() == 1:")),
        _req(f"{_GRPO}._metrics", "attribute", used_by="segrl.grpo.trainer.SegmentGRPOTrainer"),
        _req(f"{_GRPO}.num_generations", "attribute", used_by="segrl.grpo.trainer.SegmentGRPOTrainer"),
        _req(f"{_GRPO}.num_generations_eval", "attribute", used_by="segrl.grpo.trainer.SegmentGRPOTrainer"),
        _req(f"{_GRPO}.scale_rewards", "attribute", used_by="segrl.grpo.trainer.SegmentGRPOTrainer"),
    ),
    "rs": (
        _req(f"{_SFT}.log", "override", ("self", "logs", "start_time"),
             "segrl.rs.sampler (selection statistics on every SFT log line)"),
        _req("trl.data_utils:common_prefix_length", "call", ("ids", "other_ids"), "segrl.rs.sampler"),
    ),
    "ppo": (
        _req("trl.trainer.utils:disable_dropout_in_model", "call", ("model",), "segrl.ppo.trainer"),
        _req("trl.trainer.utils:entropy_from_logits", "call", ("logits",), "segrl.ppo.trainer"),
        _req("trl.trainer.utils:selective_log_softmax", "call", ("logits", "index"), "segrl.ppo.trainer"),
        _req("trl.models:unwrap_model_for_generation", "call", ("model", "accelerator", "gather_deepspeed3_params"),
             "segrl.ppo.trainer (ZeRO-3 generation)"),
    ),
}
GROUPS = tuple(REQUIREMENTS)

_CHECKED: set[str] = set()


def _resolve(target: str):
    module_name, _, qualname = target.partition(":")
    obj = importlib.import_module(module_name)
    owner = None
    for part in qualname.split("."):
        owner = obj
        obj = getattr(obj, part)  # AttributeError when renamed or removed
    return obj, owner


def _param_names(func) -> list[str]:
    names = []
    for p in inspect.signature(func).parameters.values():
        prefix = {p.VAR_POSITIONAL: "*", p.VAR_KEYWORD: "**"}.get(p.kind, "")
        names.append(prefix + p.name)
    return names


def _source(obj) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _module_source(module_name: str) -> str | None:
    module = importlib.import_module(module_name)
    try:
        with open(inspect.getsourcefile(module), encoding="utf-8") as fh:
            return fh.read()
    except (OSError, TypeError):
        return None  # no source shipped: nothing to check against


def _check_one(req: Requirement) -> str | None:
    """``None`` if ``req`` holds, else what is wrong (one sentence)."""
    module_name, _, qualname = req.target.partition(":")
    if req.kind == "attribute":
        cls_path, _, attr = req.target.rpartition(".")
        try:
            cls, _ = _resolve(cls_path)
        except (ImportError, AttributeError):
            return f"{cls_path.replace(':', '.')} does not exist"
        if hasattr(cls, attr):
            return None
        text = _module_source(module_name)
        if text is None or re.search(rf"self\.{re.escape(attr)}\s*(:[^=\n]*)?=", text):
            return None
        return f"{req.display} is no longer set by {module_name}"
    try:
        obj, owner = _resolve(req.target)
    except (ImportError, AttributeError):
        return f"{req.display} does not exist"
    try:
        actual = _param_names(obj)
    except (TypeError, ValueError):
        actual = None
    if actual is not None:
        expected = list(req.params)
        if req.kind == "override" and actual != expected:
            return f"{req.display} has parameters ({', '.join(actual)}), segrl's override expects ({', '.join(expected)})"
        if req.kind == "call" and actual[: len(expected)] != expected:
            return f"{req.display} has parameters ({', '.join(actual)}), segrl calls it with ({', '.join(expected)})"
    method = qualname.rsplit(".", 1)[-1]
    for caller in req.called_from:
        try:
            caller_obj, _ = _resolve(f"{module_name}:{caller}")
        except (ImportError, AttributeError):
            return f"{module_name}.{caller} (which calls {method}) does not exist"
        text = _source(caller_obj)
        if text and f"self.{method}(" not in text:
            return f"{module_name}.{caller} no longer calls self.{method}(...), so segrl's override would be skipped"
    if req.source_has:
        text = _source(obj)
        for needle in req.source_has:
            if text and needle not in text:
                return f"{req.display} no longer contains {needle!r}, which segrl relies on"
    return None


def problems(group: str) -> list[str]:
    """Everything in ``group`` the installed TRL does not satisfy (an empty list when all is well)."""
    if group not in REQUIREMENTS:
        raise ValueError(f"`group` must be one of {GROUPS}, got {group!r}")
    out = []
    for req in REQUIREMENTS[group]:
        issue = _check_one(req)
        if issue is not None:
            out.append(f"{issue} [used by {req.used_by}]" if req.used_by else issue)
    return out


def _trl_version() -> str:
    try:
        from importlib.metadata import version

        return version("trl")
    except Exception:  # noqa: BLE001 - only for the message
        return "unknown"


def check_trl_compat(group: str, *, force: bool = False) -> None:
    """Raise :class:`TRLCompatibilityError` if the installed TRL lacks what segrl's ``group`` module needs.

    Called once per group at import of the TRL-based segrl modules (``"dpo"``, ``"rm"``, ``"grpo"``,
    ``"rs"``, ``"ppo"``); later calls return at once unless ``force``. ``SEGRL_SKIP_TRL_CHECK=1``
    skips it.
    """
    if group not in REQUIREMENTS:
        raise ValueError(f"`group` must be one of {GROUPS}, got {group!r}")
    if (group in _CHECKED and not force) or os.environ.get(SKIP_ENV, "") not in ("", "0"):
        return
    found = problems(group)
    if found:
        lines = "\n".join(f"  - {p}" for p in found)
        raise TRLCompatibilityError(
            f"segrl ({group}) is incompatible with the installed trl {_trl_version()}:\n{lines}\n"
            f"segrl supports trl{SUPPORTED_TRL}: pip install 'trl{SUPPORTED_TRL}' "
            f"(or set {SKIP_ENV}=1 to skip this check at your own risk)."
        )
    _CHECKED.add(group)
