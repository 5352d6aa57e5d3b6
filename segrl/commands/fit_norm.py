"""``segrl fit-norm``: fit a segment RM's location-aware normaliser and save it with the RM.

Scores the chosen and rejected responses of ``--n_pairs`` preference pairs (shuffled with ``--seed``)
with the trained RM, collects ``(p_k = k / K, r_k)`` for every segment (``r_k`` in ``--reward_form``:
the value at the segment's end, or its change since the previous segment's end), fits
``mu(p) = a_mu ln p + b_mu`` and ``sigma(p) = a_sigma ln p + b_sigma`` (Huber regression on bucket
means / stds, docs/method.md#location-normalizer), writes the coefficients into
``<reward_model_path>/config.json`` (or a copy of the RM
in ``--output_dir``), and draws the fit to ``--plot_path``.

Examples::

    segrl fit-norm --reward_model_path runs/rm --dataset_name builtin:tiny_prefs --n_pairs 1000
    segrl fit-norm --config examples/configs/rm_fit_norm.yaml
    segrl fit-norm --reward_model_path runs/rm --dataset_name prefs.jsonl --reward_form delta

The reward form is saved with the coefficients: every consumer of the RM (ASR-DPO, rejection
sampling, PPO, verl) then uses that form, and asking one for another form is an error.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from segrl.rm._cli import quiet_transformers, resolve_device


@dataclass
class FitNormConfig:
    """Options of ``segrl fit-norm`` (flags, or keys of the ``--config`` YAML file)."""

    reward_model_path: Optional[str] = field(
        default=None, metadata={"help": "Directory of the trained segment RM (from `segrl train-rm`). Required."})
    dataset_name: Optional[str] = field(
        default=None, metadata={"help": "Preference data (builtin:NAME, .jsonl/.json/.csv/.parquet file, save_to_disk "
                                        "directory or Hub id), TRL format. Required."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to use when `dataset_name` is a Hub id."})
    n_pairs: Optional[int] = field(
        default=None, metadata={"help": "Number of pairs to score (shuffled with --seed first); default: all."}
    )
    seed: int = field(default=42, metadata={"help": "Shuffle seed for choosing the pairs (42, as published)."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward pass."})
    max_length: Optional[int] = field(
        default=None, metadata={"help": "Drop pairs whose prompt + response is longer (tokens), as in training."}
    )
    plot_path: Optional[str] = field(
        default=None, metadata={"help": "PNG of the fit (default: <output dir>/normalizer_fit.png)."}
    )
    output_dir: Optional[str] = field(
        default=None,
        metadata={"help": "Save the RM with the fitted normaliser here instead of updating reward_model_path in place."},
    )
    reward_form: Optional[str] = field(
        default=None,
        metadata={"help": "Token-reward form to fit on and save with the RM: 'value' (the paper's) or 'delta' "
                          "(change since the previous segment end); default: the RM's current form.",
                  "choices": ["value", "delta"]},
    )
    ref_model_name_or_path: Optional[str] = field(
        default=None, metadata={"help": "Override the reference model stored with the RM (path or Hub id)."}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    drop_empty: bool = field(
        default=False,
        metadata={"help": "Drop rows with an empty `chosen` / `rejected` (counts printed) instead of stopping."},
    )


def make_parser():
    from trl import TrlParser

    return TrlParser((FitNormConfig,), prog="segrl fit-norm")


def parse_config(argv: list[str]) -> FitNormConfig:
    from segrl.commands._common import parse_args

    (cfg,) = parse_args(make_parser(), argv, "segrl fit-norm")
    return cfg


def check_inputs(cfg: FitNormConfig):
    """Every check that needs no model: the RM path, the data and the ``max_length`` filter. Returns the data."""
    from transformers import AutoTokenizer

    from segrl.data_checks import check_length_filter, check_model_path, check_preference_data, load_data

    check_model_path(cfg.reward_model_path, "reward_model_path")
    check_model_path(cfg.ref_model_name_or_path, "ref_model_name_or_path", required=False)
    if cfg.n_pairs is not None and cfg.n_pairs < 1:
        raise ValueError(f"`n_pairs` must be >= 1, got {cfg.n_pairs}")
    if not cfg.dataset_name:
        raise ValueError("`dataset_name` is required (preference pairs to score)")
    dataset = load_data(cfg.dataset_name, cfg.dataset_train_split, arg="dataset_name")
    dataset, _ = check_preference_data(dataset, "dataset_name", drop_empty=cfg.drop_empty)
    if cfg.max_length is not None:
        check_length_filter(dataset, AutoTokenizer.from_pretrained(cfg.reward_model_path), cfg.max_length,
                            data_arg="dataset_name", mode="pair")
    return dataset


def run(cfg: FitNormConfig) -> dict:
    """Fit, save, plot; returns a summary dict (also printed as JSON)."""
    dataset = check_inputs(cfg)

    from segrl.rm.model import SegmentRewardModel
    from segrl.rm.normalizer_fit import fit_normalizer
    from segrl.rm.scoring import parse_reward_form

    if cfg.reward_form is not None:
        parse_reward_form(cfg.reward_form)

    rm = SegmentRewardModel.from_pretrained(cfg.reward_model_path, reference_model=cfg.ref_model_name_or_path,
                                            device=resolve_device(cfg.device))
    out_dir = Path(cfg.output_dir or cfg.reward_model_path)
    plot_path = Path(cfg.plot_path) if cfg.plot_path else out_dir / "normalizer_fit.png"
    fit = fit_normalizer(rm, dataset, n_pairs=cfg.n_pairs, batch_size=cfg.batch_size, max_length=cfg.max_length,
                         seed=cfg.seed, plot_path=plot_path, progress=cfg.progress, reward_form=cfg.reward_form)
    if cfg.output_dir:
        rm.save_pretrained(out_dir)
    else:
        SegmentRewardModel.write_normalizer(cfg.reward_model_path, fit.coef, fit.reward_form)
    summary = {
        "rm": str(out_dir),
        "threshold": "inf" if math.isinf(rm.threshold) else rm.threshold,
        "reward_form": fit.reward_form,
        "n_pairs": fit.n_pairs,
        "n_segments": fit.n_segments,
        "n_buckets": int(fit.buckets.locations.size),
        "coefficients": fit.coef.to_dict(),
        "plot": str(fit.plot_path),
    }
    print(json.dumps(summary, indent=2))
    return summary


HELP_GROUPS = [("fit-norm", "segrl.commands.fit_norm:FitNormConfig")]


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl fit-norm``. Returns 0 on success, 2 on invalid options or data, 1 on other errors."""
    from segrl.commands._common import command_main

    def _run(cfg):
        quiet_transformers()
        return run(cfg)

    return command_main("segrl fit-norm", argv, make_parser, _run, HELP_GROUPS)


if __name__ == "__main__":
    raise SystemExit(main())
