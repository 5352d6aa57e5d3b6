"""``segrl ppo``: dense-reward PPO with a critic on a segment RM (bandit / token / segment arm, optional ASR).

Examples::

    segrl ppo --config examples/configs/ppo_segment.yaml
    segrl ppo --model_name_or_path runs/sft --reward_model_path runs/rm --dataset_name prompts.jsonl \\
        --total_episodes 800 --mask_type asr --use_peft true --eval_split 0.1 --eval_steps 10
    segrl ppo --config examples/configs/ppo_segment.yaml --resume_from_checkpoint latest
    accelerate launch --config_file examples/accelerate/multi_gpu.yaml -m segrl.cli ppo --config ...

(``--policy``, ``--reward_model``, ``--reference_model``, ``--dataset`` and ``--torch_dtype`` are the
deprecated names of ``--model_name_or_path``, ``--reward_model_path``, ``--ref_model_name_or_path``,
``--dataset_name`` and ``--dtype``; ``--num_iterations`` still fixes the iteration count, deprecated
for ``--total_episodes`` / ``--num_train_epochs``.)
"""

from __future__ import annotations


def make_parser():
    from trl import TrlParser

    from segrl.ppo.config import SegmentPPOConfig

    return TrlParser((SegmentPPOConfig,), prog="segrl ppo")


def check_inputs(args) -> None:
    """Every check that needs no model: the model paths and the prompt data (training and held-out)."""
    from segrl.data_checks import check_model_path
    from segrl.ppo.build import load_ppo_prompts

    check_model_path(args.model_name_or_path, "model_name_or_path")
    check_model_path(args.reward_model_path, "reward_model_path")
    check_model_path(args.ref_model_name_or_path, "ref_model_name_or_path", required=False)
    load_ppo_prompts(args)


def run(args):
    check_inputs(args)
    from transformers.utils import logging as hf_logging

    from segrl.ppo.build import build_ppo_trainer

    hf_logging.disable_progress_bar()
    trainer = build_ppo_trainer(args)
    history = trainer.train()
    if trainer.accelerator.is_main_process and history:
        last = history[-1]
        print(f"PPO done: {len(history)} iterations, reward {last['reward']:+.4f}, kl {last['kl']:.4f}; "
              f"policy saved to {args.output_dir}")
    return trainer


HELP_GROUPS = [("PPO", "segrl.ppo.config:SegmentPPOConfig")]
#: segrl ppo's own old names (the shared ones -- policy, dataset, ... -- are in _common.CONCEPTS).
ALIASES = {"torch_dtype": "dtype"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl ppo``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import command_main

    return command_main("segrl ppo", argv, make_parser, run, HELP_GROUPS, aliases=ALIASES)
