"""``segrl rs``: ASR rejection sampling (sample K, score with a segment RM, keep the best, masked SFT).

Every field of :class:`segrl.rs.ASRRejectionSamplingConfig` (hence of TRL's ``SFTConfig`` and
transformers' ``TrainingArguments``), of TRL's ``ModelConfig`` and of :class:`RSScriptArguments` is a
flag and a YAML key; flags override the YAML.

Examples::

    segrl rs --config examples/configs/rs_asr.yaml
    segrl rs --model_name_or_path out/sft --dataset_name prompts.jsonl --reward_model out/segment-rm \\
        --num_candidates 8 --output_dir out/asr-rs
    segrl rs --model_name_or_path out/sft --candidates_file cands.jsonl --mask_type none --output_dir out/rs
"""

from __future__ import annotations

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


def make_parser():
    from trl import ModelConfig, TrlParser

    from segrl.rs import ASRRejectionSamplingConfig

    return TrlParser((RSScriptArguments, ASRRejectionSamplingConfig, ModelConfig), prog="segrl rs")


def run(script_args: RSScriptArguments, args, model_args):
    """Run generate -> score -> select -> train; return the sampler."""
    from transformers import AutoTokenizer

    from segrl.rm.data import load_preference_dataset
    from segrl.rs import ASRRejectionSampler

    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required")
    prompts = None
    if args.candidates_file is None:
        if not script_args.dataset_name:
            raise ValueError("pass `dataset_name` (prompts) or `candidates_file`")
        prompts = load_preference_dataset(script_args.dataset_name, script_args.dataset_train_split,
                                          config=script_args.dataset_config, max_samples=script_args.max_prompts)
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


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl rs``. Returns 0 on success, 2 on invalid input."""
    parser = make_parser()
    try:
        script_args, args, model_args = parser.parse_args_and_config(args=list(sys.argv[1:] if argv is None else argv))
        run(script_args, args, model_args)
    except (ValueError, FileNotFoundError) as err:
        print(f"segrl rs: error: {err}", file=sys.stderr)
        return 2
    return 0
