"""``segrl grpo``: TRL GRPO with dense (B, T) segment advantages from a segment RM (critic-free).

Examples::

    segrl grpo --model_name_or_path runs/sft --reward_model_path runs/rm --dataset_name prompts.jsonl \\
        --output_dir runs/grpo --num_generations 4 --max_steps 50 --asr true

(``--segment_reward_model`` and ``--dataset_split`` are the deprecated names of ``--reward_model_path``
and ``--dataset_train_split``.)
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GRPOScriptArguments:
    model_name_or_path: str = field(default="", metadata={"help": "Policy: hub id or local path."})
    dataset_name: str = field(
        default="", metadata={"help": "Prompts: builtin:NAME, a .jsonl/.json/.csv/.parquet file, a save_to_disk "
                                      "directory or a Hub id ('prompt' column)."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    drop_empty: bool = field(
        default=False, metadata={"help": "Drop rows with an empty `prompt` (counts printed) instead of stopping."}
    )


def make_parser():
    from trl import TrlParser

    from segrl.grpo import SegmentGRPOConfig

    return TrlParser((GRPOScriptArguments, SegmentGRPOConfig), prog="segrl grpo")


def check_inputs(script, args):
    from datasets import Dataset

    from segrl.data_checks import check_model_path
    from segrl.ppo.build import load_prompts

    check_model_path(script.model_name_or_path, "model_name_or_path")
    check_model_path(args.reward_model_path, "reward_model_path")
    prompts = load_prompts(script.dataset_name, script.dataset_train_split, arg="dataset_name",
                           drop_empty=script.drop_empty)
    return Dataset.from_dict({"prompt": prompts})


def run(script, args):
    prompts = check_inputs(script, args)
    from segrl.grpo import SegmentGRPOTrainer

    trainer = SegmentGRPOTrainer(script.model_name_or_path, args=args, train_dataset=prompts)
    trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
    trainer.save_model(args.output_dir)
    print(f"GRPO done; policy saved to {args.output_dir}")
    return trainer


HELP_GROUPS = [
    ("prompts and model", "segrl.commands.grpo:GRPOScriptArguments"),
    ("segment rewards and ASR", "segrl.grpo.trainer:SegmentGRPOConfig"),
]
INHERITED = "TRL GRPOConfig, transformers TrainingArguments"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl grpo``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import TRAINING_COMMON, command_main

    return command_main("segrl grpo", argv, make_parser, run, HELP_GROUPS, INHERITED,
                        common=TRAINING_COMMON + [("num_generations", "Completions per prompt (the GRPO group).")])
