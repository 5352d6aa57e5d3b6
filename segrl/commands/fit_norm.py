"""``segrl fit-norm``: fit a segment RM's location-aware normaliser and save it with the RM.

Scores the chosen and rejected responses of ``--n_pairs`` preference pairs (shuffled with ``--seed``)
with the trained RM, collects ``(p_k = k / K, r_k)`` for every segment, fits
``mu(p) = a_mu ln p + b_mu`` and ``sigma(p) = a_sigma ln p + b_sigma`` (Huber regression on bucket
means / stds, SPEC §2), writes the coefficients into ``<rm_path>/config.json`` (or a copy of the RM
in ``--output_dir``), and draws the fit to ``--plot_path``.

Examples::

    segrl fit-norm --rm_path runs/rm --dataset segrl/data/tiny_prefs.jsonl --n_pairs 1000
    segrl fit-norm --config examples/configs/rm_fit_norm.yaml
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from segrl.rm._cli import quiet_transformers, resolve_device, run_main


@dataclass
class FitNormConfig:
    """Options of ``segrl fit-norm`` (flags, or keys of the ``--config`` YAML file)."""

    rm_path: str = field(metadata={"help": "Directory of the trained segment RM (from `segrl train-rm`)."})
    dataset: str = field(metadata={"help": "Preference data (.jsonl/.json/.parquet file or Hub id), TRL format."})
    dataset_split: str = field(default="train", metadata={"help": "Split to use when `dataset` is a Hub id."})
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
        metadata={"help": "Save the RM with the fitted normaliser here instead of updating rm_path in place."},
    )
    reference_model: Optional[str] = field(
        default=None, metadata={"help": "Override the reference model stored with the RM (path or Hub id)."}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto."})
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})


def parse_config(argv: list[str]) -> FitNormConfig:
    from trl import TrlParser

    (cfg,) = TrlParser((FitNormConfig,), prog="segrl fit-norm").parse_args_and_config(args=argv)
    return cfg


def run(cfg: FitNormConfig) -> dict:
    """Fit, save, plot; returns a summary dict (also printed as JSON)."""
    from segrl.rm.data import load_preference_dataset
    from segrl.rm.model import SegmentRewardModel
    from segrl.rm.normalizer_fit import fit_normalizer

    rm = SegmentRewardModel.from_pretrained(cfg.rm_path, reference_model=cfg.reference_model,
                                            device=resolve_device(cfg.device))
    dataset = load_preference_dataset(cfg.dataset, cfg.dataset_split)
    out_dir = Path(cfg.output_dir or cfg.rm_path)
    plot_path = Path(cfg.plot_path) if cfg.plot_path else out_dir / "normalizer_fit.png"
    fit = fit_normalizer(rm, dataset, n_pairs=cfg.n_pairs, batch_size=cfg.batch_size, max_length=cfg.max_length,
                         seed=cfg.seed, plot_path=plot_path, progress=cfg.progress)
    if cfg.output_dir:
        rm.save_pretrained(out_dir)
    else:
        SegmentRewardModel.write_normalizer(cfg.rm_path, fit.coef)
    summary = {
        "rm": str(out_dir),
        "threshold": "inf" if math.isinf(rm.threshold) else rm.threshold,
        "n_pairs": fit.n_pairs,
        "n_segments": fit.n_segments,
        "n_buckets": int(fit.buckets.locations.size),
        "coefficients": fit.coef.to_dict(),
        "plot": str(fit.plot_path),
    }
    print(json.dumps(summary, indent=2))
    return summary


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl fit-norm``. Returns 0 on success, 2 on invalid options or data."""
    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    quiet_transformers()
    return run_main("fit-norm", lambda: run(cfg))


if __name__ == "__main__":
    raise SystemExit(main())
