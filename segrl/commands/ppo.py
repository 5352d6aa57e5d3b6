"""``segrl ppo``: dense-reward PPO with a critic on a segment RM (bandit / token / segment arm, optional ASR).

Examples::

    segrl ppo --config examples/configs/ppo_segment.yaml
    segrl ppo --policy runs/sft --reward_model runs/rm --dataset prompts.jsonl --num_iterations 50 --asr true
    segrl ppo --config examples/configs/ppo_segment.yaml --resume_from_checkpoint latest
    accelerate launch --config_file examples/accelerate/multi_gpu.yaml -m segrl.cli ppo --config ...
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    from trl import TrlParser

    from segrl.ppo.config import SegmentPPOConfig

    (args,) = TrlParser((SegmentPPOConfig,), prog="segrl ppo").parse_args_and_config(args=argv)
    try:
        from transformers.utils import logging as hf_logging

        from segrl.ppo.build import build_ppo_trainer

        hf_logging.disable_progress_bar()
        trainer = build_ppo_trainer(args)
        history = trainer.train()
    except ValueError as err:
        print(f"segrl ppo: error: {err}", file=sys.stderr)
        return 2
    if trainer.accelerator.is_main_process and history:
        last = history[-1]
        print(f"PPO done: {len(history)} iterations, reward {last['reward']:+.4f}, kl {last['kl']:.4f}; "
              f"policy saved to {args.output_dir}")
    return 0
