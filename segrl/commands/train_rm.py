"""``segrl train-rm``: train a segment-level reward model (arXiv 2501.02790) with TRL.

Options are those of TRL's ``trl reward`` script (``ScriptArguments``, ``RewardConfig``,
``ModelConfig``) plus ``SegmentRewardConfig``'s ``segment_threshold``, ``reference_model``,
``entropy_batch_size``. ``--dataset_name`` is a local ``.jsonl`` / ``.json`` / ``.parquet`` file or a
Hub id, in TRL's preference format (``prompt`` / ``chosen`` / ``rejected``, standard or
conversational).

Examples::

    segrl train-rm --config examples/configs/rm_segment.yaml
    segrl train-rm --model_name_or_path tiny/pair/sft --dataset_name prefs.jsonl \\
        --segment_threshold 2.0 --output_dir runs/rm --max_steps 50
    segrl train-rm --config examples/configs/rm_segment.yaml --segment_threshold inf   # the bandit RM

The saved directory loads with ``SegmentRewardModel.from_pretrained`` and carries the threshold and
reference model in ``config.json`` (PEFT adapters are merged before saving).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

from trl import ScriptArguments

from segrl.rm._cli import quiet_transformers, run_main


@dataclass
class TrainRMScriptArguments(ScriptArguments):
    """Data options of ``segrl train-rm`` (TRL's ``ScriptArguments`` plus local files and limits)."""

    eval_dataset_name: Optional[str] = field(
        default=None,
        metadata={"help": "Held-out preference data (file or Hub id) for evaluation; default: the "
                          "`dataset_test_split` of `dataset_name` when eval_strategy is not 'no'."},
    )
    max_train_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N training pairs."})
    max_eval_samples: Optional[int] = field(default=None, metadata={"help": "Use only the first N eval pairs."})


def parse_config(argv: list[str]):
    from trl import ModelConfig, TrlParser

    from segrl.rm.trainer import SegmentRewardConfig

    parser = TrlParser((TrainRMScriptArguments, SegmentRewardConfig, ModelConfig), prog="segrl train-rm")
    return parser.parse_args_and_config(args=argv)


def run(script_args, training_args, model_args):
    """Train and save; returns the trainer."""
    from trl import get_peft_config

    from segrl.rm.data import load_preference_dataset
    from segrl.rm.model import SegmentRewardModel
    from segrl.rm.trainer import SegmentRewardTrainer

    if not model_args.model_name_or_path:
        raise ValueError("`model_name_or_path` is required (the RM's init model, usually the SFT model)")
    if not script_args.dataset_name:
        raise ValueError("`dataset_name` is required (a .jsonl/.json/.parquet file or a Hub id)")
    init_kwargs = dict(revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
                       dtype=model_args.dtype, trust_remote_code=training_args.trust_remote_code)
    init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = init_kwargs

    train = load_preference_dataset(script_args.dataset_name, script_args.dataset_train_split,
                                    config=script_args.dataset_config, max_samples=script_args.max_train_samples)
    eval_ds = None
    if script_args.eval_dataset_name:
        eval_ds = load_preference_dataset(script_args.eval_dataset_name, script_args.dataset_test_split,
                                          max_samples=script_args.max_eval_samples)
    elif training_args.eval_strategy != "no":
        import os

        if os.path.exists(script_args.dataset_name):
            raise ValueError("eval_strategy is set but a local `dataset_name` has a single split: pass "
                             "`eval_dataset_name` (a held-out file)")
        eval_ds = load_preference_dataset(script_args.dataset_name, script_args.dataset_test_split,
                                          config=script_args.dataset_config, max_samples=script_args.max_eval_samples)

    peft_config = get_peft_config(model_args)
    if peft_config is not None and str(getattr(peft_config, "task_type", "")).upper().endswith("CAUSAL_LM"):
        # An RM is a sequence classifier: SEQ_CLS also makes PEFT train and save the `score` head.
        from peft import TaskType

        peft_config.task_type = TaskType.SEQ_CLS
    trainer = SegmentRewardTrainer(model=model_args.model_name_or_path, args=training_args, train_dataset=train,
                                   eval_dataset=eval_ds, peft_config=peft_config)
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if peft_config is not None:
        if trainer.accelerator.is_main_process:
            SegmentRewardModel.from_trainer(trainer).save_pretrained(training_args.output_dir)
    else:
        trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"saved segment RM (threshold {training_args.segment_threshold}) to "
                              f"{training_args.output_dir}")
    return trainer


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl train-rm``. Returns 0 on success, 2 on invalid options or data."""
    args = parse_config(list(sys.argv[1:] if argv is None else argv))
    quiet_transformers()
    return run_main("train-rm", lambda: run(*args))


if __name__ == "__main__":
    raise SystemExit(main())
