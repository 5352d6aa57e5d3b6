"""``segrl dpo``: ASR-DPO (or vanilla DPO with ``--mask_type none``) on TRL, from flags or a YAML file.

Every field of :class:`segrl.dpo.ASRDPOConfig` (hence of TRL's ``DPOConfig`` and transformers'
``TrainingArguments``), of TRL's ``ModelConfig`` (``model_name_or_path``, ``dtype``, ``use_peft``,
``lora_*``, ...) and of :class:`DPOScriptArguments` below is a flag and a YAML key; flags override
the YAML. Checkpoints, ``--resume_from_checkpoint PATH|last``, progress bars and ``report_to``
(tensorboard, wandb, ...) are the Trainer's.

Examples::

    segrl dpo --config examples/configs/dpo_asr.yaml
    segrl dpo --model_name_or_path out/sft --dataset_name prefs.jsonl --mask_type asr --asr_delta 0.1 \\
        --output_dir out/asr-dpo
    segrl dpo --config examples/configs/dpo_asr.yaml --resume_from_checkpoint last
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field


@dataclass
class DPOScriptArguments:
    """Data and model-loading options of ``segrl dpo`` that are not training arguments."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Preference data: a Hub id, local .jsonl/.json/.parquet/.csv file(s) (comma separated) or a "
                          "save_to_disk directory. Columns prompt/chosen/rejected (+ chosen_token_rewards / "
                          "rejected_token_rewards for token_reward_source=columns)."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Training split (Hub datasets)."})
    eval_dataset_name: str | None = field(
        default=None, metadata={"help": "Evaluation data (same forms as dataset_name); default: dataset_test_split "
                                        "of dataset_name when eval_strategy is not 'no'."}
    )
    dataset_test_split: str = field(default="test", metadata={"help": "Evaluation split (Hub datasets)."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N evaluation rows."})
    ref_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Reference model (default: a frozen copy of the initial policy)."}
    )
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the one saved with model_name_or_path)."}
    )
    drop_empty: bool = field(
        default=False,
        metadata={"help": "Drop rows with an empty `chosen` / `rejected` (counts printed) instead of stopping."},
    )


def make_parser():
    from trl import ModelConfig, TrlParser

    from segrl.dpo import ASRDPOConfig

    return TrlParser((DPOScriptArguments, ASRDPOConfig, ModelConfig), prog="segrl dpo")


def _model_init_kwargs(training_args, model_args) -> dict:
    kwargs = dict(revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code,
                  attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    kwargs.update(training_args.model_init_kwargs or {})
    return {k: v for k, v in kwargs.items() if v is not None}


TOKEN_REWARD_COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")


def check_inputs(script_args: DPOScriptArguments, training_args, model_args):
    """Every check that needs no model: paths, data (columns, types, empty responses), option
    combinations and the ``max_length`` filter. Returns ``(train, eval_dataset, tokenizer)``."""
    from transformers import AutoTokenizer

    from segrl.data_checks import check_length_filter, check_model_path, check_preference_data, load_data

    check_model_path(model_args.model_name_or_path, "model_name_or_path")
    check_model_path(script_args.ref_model_name_or_path, "ref_model_name_or_path", required=False)
    check_model_path(script_args.tokenizer_name_or_path, "tokenizer_name_or_path", required=False)
    if training_args.mask_type != "none" and training_args.token_reward_source == "columns":
        # The default source reads dataset columns; a reward model (or an implicit pair) given without
        # --token_reward_source means that source.
        inferred = ("segment_rm" if training_args.reward_model_path else
                    "implicit" if training_args.implicit_policy and training_args.implicit_ref else None)
        if inferred:
            training_args.token_reward_source = inferred
            print(f"segrl dpo: token_reward_source={inferred} (from the "
                  f"{'reward_model_path' if inferred == 'segment_rm' else 'implicit_policy / implicit_ref'} given)",
                  file=sys.stderr)
    source = training_args.token_reward_source
    if training_args.mask_type != "none":
        if source == "segment_rm":
            check_model_path(training_args.reward_model_path, "reward_model_path")
        elif source == "implicit":
            check_model_path(training_args.implicit_policy, "implicit_policy")
            check_model_path(training_args.implicit_ref, "implicit_ref")
    train = load_data(script_args.dataset_name, script_args.dataset_train_split, config=script_args.dataset_config,
                      max_samples=script_args.max_train_samples, arg="dataset_name")
    train, _ = check_preference_data(train, "dataset_name", drop_empty=script_args.drop_empty)
    needs_columns = training_args.mask_type != "none" and source == "columns"
    missing = [c for c in TOKEN_REWARD_COLUMNS if c not in train.column_names]
    if needs_columns and missing:
        raise ValueError(
            f"mask_type={training_args.mask_type} takes its token rewards from `token_reward_source`="
            f"{source}, but `dataset_name` has no {' / '.join(f'`{c}`' for c in missing)} column. Pass "
            "--token_reward_source segment_rm --reward_model_path RM (a segment RM from segrl train-rm + fit-norm), "
            "--token_reward_source implicit --implicit_policy P --implicit_ref R, or --mask_type none (plain DPO)")
    eval_dataset = None
    if training_args.eval_strategy != "no":
        name = script_args.eval_dataset_name or script_args.dataset_name
        if script_args.eval_dataset_name is None and (name.startswith("builtin:") or os.path.isfile(name.split(",")[0])):
            raise ValueError("eval_strategy is set but a local data file has no test split: pass `eval_dataset_name`")
        eval_dataset = load_data(name, script_args.dataset_test_split, config=script_args.dataset_config,
                                 max_samples=script_args.max_eval_samples, arg="eval_dataset_name")
        eval_dataset, _ = check_preference_data(eval_dataset, "eval_dataset_name", drop_empty=script_args.drop_empty,
                                                extra_columns=TOKEN_REWARD_COLUMNS if needs_columns else ())
    tokenizer = AutoTokenizer.from_pretrained(script_args.tokenizer_name_or_path or model_args.model_name_or_path,
                                              revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    if getattr(training_args, "truncation_mode", "keep_start") == "keep_start":
        check_length_filter(train, tokenizer, training_args.max_length, data_arg="dataset_name", mode="prompt")
    return train, eval_dataset, tokenizer


def run(script_args: DPOScriptArguments, training_args, model_args):
    """Check the inputs, build the models and :class:`~segrl.dpo.ASRDPOTrainer`; train, save; return the trainer."""
    train, eval_dataset, tokenizer = check_inputs(script_args, training_args, model_args)

    from transformers import AutoModelForCausalLM
    from trl import get_peft_config, get_quantization_config

    from segrl.dpo import ASRDPOTrainer
    from segrl.rs import resolve_checkpoint

    init_kwargs = _model_init_kwargs(training_args, model_args)
    training_args.model_init_kwargs = init_kwargs
    ref_model = None
    if script_args.ref_model_name_or_path:
        ref_kwargs = {k: v for k, v in init_kwargs.items() if k != "revision"}
        ref_model = AutoModelForCausalLM.from_pretrained(script_args.ref_model_name_or_path, **ref_kwargs)
    trainer = ASRDPOTrainer(
        model=model_args.model_name_or_path, ref_model=ref_model, args=training_args, train_dataset=train,
        eval_dataset=eval_dataset, processing_class=tokenizer, peft_config=get_peft_config(model_args),
        quantization_config=get_quantization_config(model_args),
    )
    trainer.train(resume_from_checkpoint=resolve_checkpoint(training_args))
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"segrl dpo: model saved to {training_args.output_dir}")
    return trainer


HELP_GROUPS = [
    ("data and models", "segrl.commands.dpo:DPOScriptArguments"),
    ("ASR-DPO (mask and token rewards)", "segrl.dpo.config:ASRDPOConfig"),
]
INHERITED = "TRL DPOConfig, transformers TrainingArguments, TRL ModelConfig"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl dpo``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import TRAINING_COMMON, command_main

    return command_main("segrl dpo", argv, make_parser, run, HELP_GROUPS, INHERITED,
                        common=TRAINING_COMMON + [("beta", "DPO temperature."),
                                                  ("loss_type", "Any TRL DPO loss type (sigmoid, ipo, ...).")])
