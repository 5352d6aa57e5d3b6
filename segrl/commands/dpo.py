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


def make_parser():
    from trl import ModelConfig, TrlParser

    from segrl.dpo import ASRDPOConfig

    return TrlParser((DPOScriptArguments, ASRDPOConfig, ModelConfig), prog="segrl dpo")


def _model_init_kwargs(training_args, model_args) -> dict:
    kwargs = dict(revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code,
                  attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    kwargs.update(training_args.model_init_kwargs or {})
    return {k: v for k, v in kwargs.items() if v is not None}


def run(script_args: DPOScriptArguments, training_args, model_args):
    """Build the datasets, models and :class:`~segrl.dpo.ASRDPOTrainer`; train, save; return the trainer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import get_peft_config, get_quantization_config

    from segrl.dpo import ASRDPOTrainer
    from segrl.rm.data import load_preference_dataset
    from segrl.rs import resolve_checkpoint

    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required")
    if not script_args.dataset_name:
        raise ValueError("`dataset_name` is required (a Hub id or a local file)")
    init_kwargs = _model_init_kwargs(training_args, model_args)
    training_args.model_init_kwargs = init_kwargs
    train = load_preference_dataset(script_args.dataset_name, script_args.dataset_train_split,
                                    config=script_args.dataset_config, max_samples=script_args.max_train_samples)
    eval_dataset = None
    if training_args.eval_strategy != "no":
        name = script_args.eval_dataset_name or script_args.dataset_name
        if script_args.eval_dataset_name is None and os.path.isfile(name.split(",")[0]):
            raise ValueError("eval_strategy is set but a local data file has no test split: pass `eval_dataset_name`")
        eval_dataset = load_preference_dataset(name, script_args.dataset_test_split, config=script_args.dataset_config,
                                               max_samples=script_args.max_eval_samples)
    tokenizer = AutoTokenizer.from_pretrained(script_args.tokenizer_name_or_path or model_args.model_name_or_path,
                                              revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl dpo``. Returns 0 on success, 2 on invalid input."""
    parser = make_parser()
    try:
        script_args, training_args, model_args = parser.parse_args_and_config(
            args=list(sys.argv[1:] if argv is None else argv))
        run(script_args, training_args, model_args)
    except (ValueError, FileNotFoundError) as err:
        print(f"segrl dpo: error: {err}", file=sys.stderr)
        return 2
    return 0
