"""``segrl eval-rm``: pairwise (RewardBench-style) accuracy of a segment RM on held-out pairs.

A pair counts as correct when the chosen response's score beats the rejected one's (ties are
wrong), the score being the training one: the mean segment reward. Writes the result as JSON.

Examples::

    segrl eval-rm --rm_path runs/rm --dataset heldout.jsonl --output_json runs/rm/eval.json
    segrl eval-rm --config examples/configs/rm_eval.yaml
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from segrl.rm._cli import quiet_transformers, resolve_device, run_main


@dataclass
class EvalRMConfig:
    """Options of ``segrl eval-rm`` (flags, or keys of the ``--config`` YAML file)."""

    rm_path: str = field(metadata={"help": "Directory of the trained segment RM."})
    dataset: str = field(metadata={"help": "Held-out preference data (.jsonl/.json/.parquet file or Hub id)."})
    dataset_split: str = field(default="test", metadata={"help": "Split to use when `dataset` is a Hub id."})
    max_pairs: Optional[int] = field(default=None, metadata={"help": "Evaluate only the first N pairs."})
    batch_size: int = field(default=8, metadata={"help": "Rows per forward pass."})
    max_length: Optional[int] = field(
        default=None,
        metadata={"help": "Drop pairs whose prompt + response is longer (tokens); reported as n_filtered."},
    )
    output_json: Optional[str] = field(
        default=None, metadata={"help": "Where to write the results (default: <rm_path>/eval_results.json)."}
    )
    reference_model: Optional[str] = field(
        default=None, metadata={"help": "Override the reference model stored with the RM (path or Hub id)."}
    )
    device: str = field(default="auto", metadata={"help": "cpu, cuda, cuda:N, or auto."})
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})


def parse_config(argv: list[str]) -> EvalRMConfig:
    from trl import TrlParser

    (cfg,) = TrlParser((EvalRMConfig,), prog="segrl eval-rm").parse_args_and_config(args=argv)
    return cfg


def run(cfg: EvalRMConfig) -> dict:
    from segrl.rm.data import load_preference_dataset
    from segrl.rm.evaluate import evaluate_pairwise
    from segrl.rm.model import SegmentRewardModel

    rm = SegmentRewardModel.from_pretrained(cfg.rm_path, reference_model=cfg.reference_model,
                                            device=resolve_device(cfg.device))
    dataset = load_preference_dataset(cfg.dataset, cfg.dataset_split)
    output = Path(cfg.output_json) if cfg.output_json else Path(cfg.rm_path) / "eval_results.json"
    result = evaluate_pairwise(rm, dataset, batch_size=cfg.batch_size, max_pairs=cfg.max_pairs,
                               max_length=cfg.max_length, output_json=output, progress=cfg.progress)
    print(json.dumps(result, indent=2))
    print(f"wrote {output}")
    return result


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl eval-rm``. Returns 0 on success, 2 on invalid options or data."""
    cfg = parse_config(list(sys.argv[1:] if argv is None else argv))
    quiet_transformers()
    return run_main("eval-rm", lambda: run(cfg))


if __name__ == "__main__":
    raise SystemExit(main())
