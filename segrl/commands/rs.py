"""``segrl rs``: ASR rejection sampling (sample K, score with a segment RM, keep the best, masked SFT).

Every field of :class:`segrl.rs.ASRRejectionSamplingConfig` (hence of TRL's ``SFTConfig`` and
transformers' ``TrainingArguments``), of TRL's ``ModelConfig`` and of :class:`RSScriptArguments` is a
flag and a YAML key; flags override the YAML.

Examples::

    segrl rs --config examples/configs/rs_asr.yaml
    segrl rs --model_name_or_path out/sft --dataset_name prompts.jsonl --reward_model_path out/segment-rm \\
        --num_candidates 8 --output_dir out/asr-rs
    segrl rs --model_name_or_path out/sft --candidates_file cands.jsonl --mask_type none --output_dir out/rs
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field


@dataclass
class RSScriptArguments:
    """Prompt data and tokenizer options of ``segrl rs``."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Prompts: a Hub id, local .jsonl/.json/.parquet/.csv file(s) or a save_to_disk directory, "
                          "with a `prompt` column (text or chat messages). Not needed with --candidates_file."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to read prompts from (Hub)."})
    max_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    tokenizer_name_or_path: str | None = field(
        default=None, metadata={"help": "Tokenizer (default: the one saved with model_name_or_path)."}
    )
    drop_empty: bool = field(
        default=False, metadata={"help": "Drop rows with an empty `prompt` (counts printed) instead of stopping."}
    )


def make_parser():
    from trl import ModelConfig, TrlParser

    from segrl.rs import ASRRejectionSamplingConfig

    return TrlParser((RSScriptArguments, ASRRejectionSamplingConfig, ModelConfig), prog="segrl rs")


def check_inputs(script_args: RSScriptArguments, args, model_args):
    """Every check that needs no model: paths, prompt data, option combinations. Returns the prompts."""
    from segrl.data_checks import check_model_path, check_prompt_data, load_data

    check_model_path(model_args.model_name_or_path, "model_name_or_path")
    check_model_path(script_args.tokenizer_name_or_path, "tokenizer_name_or_path", required=False)
    check_model_path(args.reward_model_path, "reward_model_path", required=False)
    if args.candidates_file is not None:
        if not os.path.isfile(args.candidates_file):
            raise FileNotFoundError(f"`candidates_file`: no such file or directory: {args.candidates_file}")
        if os.path.getsize(args.candidates_file) == 0:
            raise ValueError(f"`candidates_file` {args.candidates_file} is empty")
        return None
    if not script_args.dataset_name:
        raise ValueError("pass `dataset_name` (prompts) or `candidates_file`")
    prompts = load_data(script_args.dataset_name, script_args.dataset_train_split, config=script_args.dataset_config,
                        max_samples=script_args.max_prompts, arg="dataset_name")
    prompts, _ = check_prompt_data(prompts, "dataset_name", drop_empty=script_args.drop_empty)
    if args.reward_model_path is None:
        raise ValueError("scoring sampled candidates needs a segment reward model: pass --reward_model_path RM (from "
                         "segrl train-rm + fit-norm), or --candidates_file with precomputed scores")
    return prompts


def run(script_args: RSScriptArguments, args, model_args):
    """Check the inputs, then run generate -> score -> select -> train; return the sampler."""
    prompts = check_inputs(script_args, args, model_args)

    from transformers import AutoTokenizer

    from segrl.rs import ASRRejectionSampler

    kwargs = dict(revision=model_args.model_revision, trust_remote_code=args.trust_remote_code,
                  attn_implementation=model_args.attn_implementation, dtype=model_args.dtype)
    args.model_init_kwargs = {**{k: v for k, v in kwargs.items() if v is not None}, **(args.model_init_kwargs or {})}
    tokenizer = AutoTokenizer.from_pretrained(script_args.tokenizer_name_or_path or model_args.model_name_or_path,
                                              revision=model_args.model_revision,
                                              trust_remote_code=args.trust_remote_code)
    sampler = ASRRejectionSampler(model_args.model_name_or_path, args, processing_class=tokenizer, prompts=prompts)
    sampler.run()
    print(f"segrl rs: model saved to {args.output_dir}")
    return sampler


HELP_GROUPS = [
    ("prompts and models", "segrl.commands.rs:RSScriptArguments"),
    ("rejection sampling (sampling, scoring, ASR mask)", "segrl.rs.config:ASRRejectionSamplingConfig"),
]
INHERITED = "TRL SFTConfig, transformers TrainingArguments, TRL ModelConfig"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl rs``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import TRAINING_COMMON, command_main

    return command_main("segrl rs", argv, make_parser, run, HELP_GROUPS, INHERITED, common=TRAINING_COMMON)
