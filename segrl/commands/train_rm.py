"""``segrl train-rm``: train a segment-level reward model (arXiv 2501.02790) with TRL.

Options are those of TRL's ``trl reward`` script (``ScriptArguments``, ``RewardConfig``,
``ModelConfig``) plus ``SegmentRewardConfig``'s ``segment_threshold``, ``ref_model_name_or_path``,
``entropy_batch_size``. ``--dataset_name`` is ``builtin:tiny_prefs``, local
``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` file(s), a ``save_to_disk`` directory or a Hub id, in TRL's
preference format (``prompt`` / ``chosen`` / ``rejected``, standard or
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

from segrl.rm._cli import quiet_transformers


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
    eval_split: Optional[float] = field(
        default=None,
        metadata={"help": "Hold out this fraction (0 < f < 1) of `dataset_name` (shuffled with --seed), train on the "
                          "rest, and score the held-out pairs after training: pairwise accuracy printed and saved to "
                          "<output_dir>/eval_results.json."},
    )
    drop_empty: bool = field(
        default=False,
        metadata={"help": "Drop rows with an empty `chosen` / `rejected` (counts printed) instead of stopping."},
    )
    implicit_prompt: str = field(
        default="warn",
        metadata={"help": "Data without a `prompt` column (TRL's implicit prompt: the common prefix of chosen and "
                          "rejected is taken as the prompt, so segments may start inside what was meant as the "
                          "prompt): 'warn', 'error' or 'allow' (silent).", "choices": ["warn", "error", "allow"]},
    )


def parse_config(argv: list[str]):
    from segrl.commands._common import parse_args

    return parse_args(make_parser(), argv, "segrl train-rm")


def check_inputs(script_args, training_args, model_args):
    """Every check that needs no model: paths, data (columns, types, empty responses, implicit prompts),
    the ``max_length`` filter and ``eval_split``. Returns ``(train, eval_dataset)``."""
    import os

    from transformers import AutoTokenizer

    from segrl.data_checks import check_length_filter, check_model_path, check_preference_data, load_data

    check_model_path(model_args.model_name_or_path, "model_name_or_path")
    check_model_path(training_args.ref_model_name_or_path, "ref_model_name_or_path", required=False)
    if script_args.implicit_prompt not in ("warn", "error", "allow"):
        raise ValueError(f"`implicit_prompt` must be one of warn, error, allow; got {script_args.implicit_prompt!r}")
    split = script_args.eval_split
    if split is not None and not 0.0 < split < 1.0:
        raise ValueError(f"`eval_split` must be a fraction in (0, 1), got {split}")
    if split is not None and script_args.eval_dataset_name:
        raise ValueError("pass either `eval_split` or `eval_dataset_name`, not both")
    train = load_data(script_args.dataset_name, script_args.dataset_train_split, config=script_args.dataset_config,
                      max_samples=script_args.max_train_samples, arg="dataset_name")
    train, report = check_preference_data(train, "dataset_name", drop_empty=script_args.drop_empty)
    if report.implicit_prompt and script_args.implicit_prompt != "allow":
        message = ("`dataset_name` has no `prompt` column: TRL takes the common prefix of chosen and rejected as the "
                   "prompt, so the segment RM also segments and scores whatever of the intended prompt is not shared "
                   "(fewer, longer segments). Add a `prompt` column, or pass --implicit_prompt allow")
        if script_args.implicit_prompt == "error":
            raise ValueError(message)
        print(f"segrl train-rm: warning: {message}", file=sys.stderr)
    eval_ds = None
    if split is not None:
        if len(train) < 2:
            raise ValueError(f"`eval_split` needs at least 2 pairs in `dataset_name`, got {len(train)}")
        parts = train.train_test_split(test_size=split, seed=training_args.seed)
        train, eval_ds = parts["train"], parts["test"]
    elif script_args.eval_dataset_name:
        eval_ds = load_data(script_args.eval_dataset_name, script_args.dataset_test_split,
                            max_samples=script_args.max_eval_samples, arg="eval_dataset_name")
        eval_ds, _ = check_preference_data(eval_ds, "eval_dataset_name", drop_empty=script_args.drop_empty)
    elif training_args.eval_strategy != "no":
        if os.path.exists(script_args.dataset_name) or script_args.dataset_name.startswith("builtin:"):
            raise ValueError("eval_strategy is set but a local `dataset_name` has a single split: pass "
                             "`eval_dataset_name` (a held-out file) or `eval_split` (a fraction)")
        eval_ds = load_data(script_args.dataset_name, script_args.dataset_test_split,
                            config=script_args.dataset_config, max_samples=script_args.max_eval_samples,
                            arg="dataset_name")
        eval_ds, _ = check_preference_data(eval_ds, "dataset_name", drop_empty=script_args.drop_empty)
    if training_args.max_length is not None:
        tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                                  trust_remote_code=training_args.trust_remote_code)
        check_length_filter(train, tokenizer, training_args.max_length, data_arg="dataset_name", mode="pair")
    return train, eval_ds


def run(script_args, training_args, model_args):
    """Check the inputs, train and save; with ``eval_split`` score the held-out pairs. Returns the trainer."""
    train, eval_ds = check_inputs(script_args, training_args, model_args)

    from trl import get_peft_config

    from segrl.rm.model import SegmentRewardModel
    from segrl.rm.trainer import SegmentRewardTrainer

    init_kwargs = dict(revision=model_args.model_revision, attn_implementation=model_args.attn_implementation,
                       dtype=model_args.dtype, trust_remote_code=training_args.trust_remote_code)
    init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = init_kwargs
    held_out = eval_ds if script_args.eval_split is not None else None
    if held_out is not None and training_args.eval_strategy == "no":
        eval_ds = None  # scored once after training below, not by the Trainer

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
    if held_out is not None and trainer.accelerator.is_main_process:
        trainer.held_out_results = score_held_out(training_args.output_dir, held_out, training_args)
    return trainer


def score_held_out(rm_dir, dataset, training_args) -> dict:
    """Pairwise accuracy of the saved RM on the ``eval_split`` pairs, printed and written to
    ``<rm_dir>/eval_results.json``."""
    import json
    from pathlib import Path

    from segrl.rm.evaluate import evaluate_pairwise
    from segrl.rm.model import SegmentRewardModel

    from segrl.rm._cli import resolve_device

    rm = SegmentRewardModel.from_pretrained(rm_dir, device=resolve_device("cpu" if training_args.use_cpu else "auto"))
    result = evaluate_pairwise(rm, dataset, batch_size=training_args.per_device_eval_batch_size,
                               max_length=training_args.max_length, progress=not training_args.disable_tqdm,
                               credit_labels="none")
    result["eval_split"] = True
    path = Path(rm_dir) / "eval_results.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"segrl train-rm: held-out accuracy {result['accuracy']:.4f} on {result['n_pairs']} pairs "
          f"(eval_split); written to {path}")
    return result


HELP_GROUPS = [
    ("data", "segrl.commands.train_rm:TrainRMScriptArguments"),
    ("segment reward model", "segrl.rm.trainer:SegmentRewardConfig"),
]
INHERITED = "TRL ScriptArguments, RewardConfig, transformers TrainingArguments, TRL ModelConfig"


def make_parser():
    from trl import ModelConfig, TrlParser

    from segrl.rm.trainer import SegmentRewardConfig

    return TrlParser((TrainRMScriptArguments, SegmentRewardConfig, ModelConfig), prog="segrl train-rm")


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl train-rm``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import TRAINING_COMMON, command_main

    def _run(*args):
        quiet_transformers()
        return run(*args)

    data = [("dataset_name", "Preference data (prompt / chosen / rejected): builtin:tiny_prefs, .jsonl/.json/.csv/"
                             ".parquet file(s), a save_to_disk directory or a Hub id. Required."),
            ("dataset_config", "Hub dataset configuration name."),
            ("dataset_train_split", "Training split (Hub datasets; default: train)."),
            ("dataset_test_split", "Evaluation split (Hub datasets; default: test).")]
    return command_main("segrl train-rm", argv, make_parser, _run, HELP_GROUPS, INHERITED,
                        common=data + TRAINING_COMMON)


if __name__ == "__main__":
    raise SystemExit(main())
