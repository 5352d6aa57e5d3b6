"""``segrl eval-rm``: pairwise accuracy of a segment RM, and token credit on labelled data.

A pair counts as correct when the chosen response's score beats the rejected one's (ties are
wrong), the score being the training one: the mean segment reward. When the data carries token
labels (the built-in task's oracle columns, TRL's stepwise ``completions`` / ``labels``, or
character ``*label_spans``), the token-credit metrics of the token-reward source are reported too
(``credit``: within-response and pooled AUC, per side, first-error localisation;
docs/method.md#token-credit). The source is the RM (``--token_reward_source segment_rm``), the
implicit DPO reward of a policy and its reference (``implicit``), or the data's
``*_token_rewards`` columns (``columns``). Writes the result as JSON.

Examples::

    segrl eval-rm --reward_model_path runs/rm --dataset_name heldout.jsonl --output_json runs/rm/eval.json
    segrl eval-rm --config examples/configs/rm_eval.yaml
    segrl eval-rm --reward_model_path runs/rm --dataset_name prm_steps.jsonl --step_separator "\n"
    segrl eval-rm --token_reward_source implicit --implicit_policy runs/dpo --implicit_ref runs/sft \
        --dataset_name pairs_eval.jsonl --output_json credit.json
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from segrl.rm._cli import quiet_transformers, resolve_device


@dataclass
class EvalRMConfig:
    """Options of ``segrl eval-rm`` (flags, or keys of the ``--config`` YAML file)."""

    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Held-out data (builtin:NAME, .jsonl/.json/.csv/.parquet file, save_to_disk "
                                        "directory or Hub id): preference pairs, or TRL stepwise-supervision rows "
                                        "(credit only). Required."})
    reward_model_path: Optional[str] = field(default=None, metadata={"help": "Directory of the trained segment RM."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split to use when `dataset_name` is a Hub id."})
    max_pairs: Optional[int] = field(default=None, metadata={"help": "Evaluate only the first N pairs."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward pass."})
    max_length: Optional[int] = field(
        default=None,
        metadata={"help": "Drop pairs whose prompt + response is longer (tokens); reported as n_filtered."},
    )
    output_json: Optional[str] = field(
        default=None, metadata={"help": "Where to write the results (default: <reward_model_path>/eval_results.json)."}
    )
    ref_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Override the reference model stored with the RM (path or Hub id)."}
    )
    token_reward_source: str = field(
        default="segment_rm",
        metadata={"help": "Token rewards whose credit is measured: segment_rm (the RM at reward_model_path), implicit "
                          "(beta * (log pi - log pi_ref) of implicit_policy / implicit_ref) or columns "
                          "(chosen_token_rewards / rejected_token_rewards of the data)."},
    )
    implicit_policy: Optional[str] = field(default=None, metadata={"help": "Policy of the implicit reward."})
    implicit_ref: Optional[str] = field(default=None, metadata={"help": "Reference model of the implicit reward."})
    implicit_beta: float = field(default=0.1, metadata={"help": "Scale beta of the implicit reward."})
    tokenizer_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer for token_reward_source=columns (default: none needed with "
                                        "token-label columns)."})
    credit_labels: str = field(
        default="auto",
        metadata={"help": "Token labels for the credit metrics: auto (detect), columns, steps, spans, arith (the "
                          "built-in task's oracle from the text) or none."},
    )
    label_columns: Optional[list[str]] = field(
        default=None, metadata={"help": "Label column(s) (chosen, rejected) overriding the format's defaults."})
    step_separator: str = field(default="\n", metadata={"help": "Joins TRL stepwise `completions` into one response."})
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})
    drop_empty: bool = field(
        default=False,
        metadata={"help": "Drop rows with an empty `chosen` / `rejected` (counts printed) instead of stopping."},
    )


def make_parser():
    from trl import TrlParser

    return TrlParser((EvalRMConfig,), prog="segrl eval-rm")


def parse_config(argv: list[str]) -> EvalRMConfig:
    from segrl.commands._common import parse_args

    (cfg,) = parse_args(make_parser(), argv, "segrl eval-rm", ALIASES)
    return cfg


def check_inputs(cfg: EvalRMConfig):
    """Options, paths and data, checked before any model is loaded. Returns the data."""
    from segrl.data_checks import (check_length_filter, check_model_path, check_preference_data,
                                   check_stepwise_data, load_data)

    validate(cfg)
    if cfg.token_reward_source == "segment_rm":
        check_model_path(cfg.reward_model_path, "reward_model_path")
    check_model_path(cfg.ref_model_name_or_path, "ref_model_name_or_path", required=False)
    check_model_path(cfg.implicit_policy, "implicit_policy", required=False)
    check_model_path(cfg.implicit_ref, "implicit_ref", required=False)
    check_model_path(cfg.tokenizer_name_or_path, "tokenizer_name_or_path", required=False)
    if not cfg.dataset_name:
        raise ValueError("`dataset_name` is required (held-out preference pairs or stepwise rows)")
    dataset = load_data(cfg.dataset_name, cfg.dataset_test_split, arg="dataset_name")
    if {"chosen", "rejected"} & set(dataset.column_names) or "completions" not in dataset.column_names:
        dataset, _ = check_preference_data(dataset, "dataset_name", drop_empty=cfg.drop_empty)
        if cfg.max_length is not None and cfg.token_reward_source == "segment_rm":
            from transformers import AutoTokenizer

            check_length_filter(dataset, AutoTokenizer.from_pretrained(cfg.reward_model_path), cfg.max_length,
                                data_arg="dataset_name", mode="pair")
    else:
        dataset, _ = check_stepwise_data(dataset, "dataset_name")
    return dataset


def validate(cfg: EvalRMConfig) -> None:
    """Check option combinations before anything is loaded (``ValueError`` naming the option)."""
    from segrl.rm.evaluate import CREDIT_LABELS

    sources = ("segment_rm", "implicit", "columns")
    if cfg.token_reward_source not in sources:
        raise ValueError(f"`token_reward_source` must be one of {sources}, got {cfg.token_reward_source!r}")
    if cfg.token_reward_source == "segment_rm" and not cfg.reward_model_path:
        raise ValueError("`reward_model_path` is required with token_reward_source=segment_rm")
    if cfg.token_reward_source == "implicit" and not (cfg.implicit_policy and cfg.implicit_ref):
        raise ValueError("token_reward_source=implicit needs `implicit_policy` and `implicit_ref`")
    if cfg.credit_labels not in CREDIT_LABELS:
        raise ValueError(f"`credit_labels` must be one of {CREDIT_LABELS}, got {cfg.credit_labels!r}")
    if cfg.token_reward_source != "segment_rm" and cfg.credit_labels == "none":
        raise ValueError(f"token_reward_source={cfg.token_reward_source} only measures token credit; "
                         "`credit_labels` must not be 'none'")


def _credit_line(credit: dict) -> str:
    f = (lambda v: "–" if v is None else f"{v:.3f}")
    return (f"token credit ({credit['label_format']} labels, {credit['n_correct']} correct / {credit['n_wrong']} wrong "
            f"tokens): within-response AUC {f(credit['auc_within_response'])}, pooled AUC {f(credit['auc'])}, "
            f"first error at the largest drop {f(credit['first_error_hit_rate'])} "
            f"(chance {f(credit['first_error_chance'])}, {credit['first_error_n']} responses)")


def run(cfg: EvalRMConfig) -> dict:
    dataset = check_inputs(cfg)

    from segrl.rm.evaluate import evaluate_credit, evaluate_pairwise

    device = resolve_device(cfg.device)
    pairs = {"chosen", "rejected"} <= set(dataset.column_names)
    result: dict = {}
    credit_kwargs = dict(labels=cfg.credit_labels, label_columns=cfg.label_columns, step_separator=cfg.step_separator,
                         max_rows=cfg.max_pairs, batch_size=cfg.batch_size)
    if cfg.token_reward_source == "segment_rm":
        from segrl.rm.model import SegmentRewardModel

        rm = SegmentRewardModel.from_pretrained(cfg.reward_model_path, reference_model=cfg.ref_model_name_or_path, device=device)
        output = Path(cfg.output_json) if cfg.output_json else Path(cfg.reward_model_path) / "eval_results.json"
        if pairs:
            result = evaluate_pairwise(rm, dataset, batch_size=cfg.batch_size, max_pairs=cfg.max_pairs,
                                       max_length=cfg.max_length, progress=cfg.progress,
                                       credit_labels=cfg.credit_labels, label_columns=cfg.label_columns)
            credit = result.pop("credit", None)
        else:
            credit = evaluate_credit(rm, dataset, **credit_kwargs)
    else:
        if cfg.token_reward_source == "implicit":
            from segrl.token_rewards import ImplicitTokenRewards, _tokenizer_at

            tokenizer = _tokenizer_at(cfg.implicit_policy) or _tokenizer_at(cfg.implicit_ref)
            if tokenizer is None:
                raise ValueError("`implicit_policy` / `implicit_ref` carry no tokenizer")
            source = ImplicitTokenRewards(cfg.implicit_policy, cfg.implicit_ref, beta=cfg.implicit_beta,
                                          policy_tokenizer=tokenizer, batch_size=cfg.batch_size, device=device)
        else:
            from segrl.token_rewards import _tokenizer_at

            source = "columns"
            tokenizer = _tokenizer_at(cfg.tokenizer_name_or_path) if cfg.tokenizer_name_or_path else None
            if tokenizer is None:
                raise ValueError("token_reward_source=columns needs `tokenizer_name_or_path` (the tokenizer the "
                                 "reward columns were computed with)")
        local = Path(cfg.dataset_name.split(",")[0])
        output = Path(cfg.output_json) if cfg.output_json else (
            local.with_suffix(".credit.json") if local.is_file() else Path("credit_results.json"))
        credit = evaluate_credit(source, dataset, tokenizer, **credit_kwargs)
        result = {"token_reward_source": cfg.token_reward_source}
    if credit is None and (not pairs or cfg.token_reward_source != "segment_rm"):
        raise ValueError(f"`dataset_name` {cfg.dataset_name!r} carries no token labels (see --credit_labels) and no preference "
                         "pairs: nothing to evaluate")
    if credit is not None:
        result["credit"] = credit
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    if credit is not None:
        print(_credit_line(credit))
    print(f"wrote {output}")
    return result


HELP_GROUPS = [("eval-rm", "segrl.commands.eval_rm:EvalRMConfig")]
#: This command's own old flag names (the shared ones are in segrl.commands._common.CONCEPTS).
ALIASES = {"dataset_split": "dataset_test_split"}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl eval-rm``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import command_main

    def _run(cfg):
        quiet_transformers()
        return run(cfg)

    return command_main("segrl eval-rm", argv, make_parser, _run, HELP_GROUPS, aliases=ALIASES)


if __name__ == "__main__":
    raise SystemExit(main())
