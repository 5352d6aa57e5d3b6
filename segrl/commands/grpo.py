"""``segrl grpo``: TRL GRPO with dense (B, T) segment advantages from a segment RM (critic-free).

Examples::

    segrl grpo --model_name_or_path runs/sft --segment_reward_model runs/rm --dataset_name prompts.jsonl \\
        --output_dir runs/grpo --num_generations 4 --max_steps 50 --asr true
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field


@dataclass
class GRPOScriptArguments:
    model_name_or_path: str = field(default="", metadata={"help": "Policy: hub id or local path."})
    dataset_name: str = field(default="", metadata={"help": "Prompts: .jsonl/.json/.parquet file or hub id ('prompt' column)."})
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})


def main(argv: list[str]) -> int:
    from trl import TrlParser

    from segrl.grpo import SegmentGRPOConfig

    script, args = TrlParser((GRPOScriptArguments, SegmentGRPOConfig), prog="segrl grpo").parse_args_and_config(
        args=argv
    )
    try:
        from datasets import Dataset

        from segrl.grpo import SegmentGRPOTrainer
        from segrl.ppo.build import load_prompts

        if not script.model_name_or_path:
            raise ValueError("`model_name_or_path` is required")
        prompts = Dataset.from_dict({"prompt": load_prompts(script.dataset_name, script.dataset_split)})
        trainer = SegmentGRPOTrainer(script.model_name_or_path, args=args, train_dataset=prompts)
        trainer.train(resume_from_checkpoint=args.resume_from_checkpoint)
        trainer.save_model(args.output_dir)
    except ValueError as err:
        print(f"segrl grpo: error: {err}", file=sys.stderr)
        return 2
    print(f"GRPO done; policy saved to {args.output_dir}")
    return 0
