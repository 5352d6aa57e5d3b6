"""What the method runners share: TRL arguments for a quiet CPU run, log averaging, random controls."""

from __future__ import annotations

import random
from pathlib import Path

__all__ = ["mean", "metric", "quiet_trainer", "random_like", "random_rewards", "trainer_common"]


def mean(values):
    """Mean of the non-``None`` values, ``None`` when there are none."""
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def metric(logs: dict, name: str, *old_names: str):
    """``logs[name]``, else the first of its ``old_names`` present (logs written before the metric
    namespaces of README "Logged metrics", e.g. a resumed run's history), else ``None``."""
    for key in (name, *old_names):
        if key in logs:
            return logs[key]
    return None


def random_like(lists, rng: random.Random) -> list[list[float]]:
    """Seeded standard-normal values shaped like ``lists`` (token rewards without any credit)."""
    return [[rng.gauss(0.0, 1.0) for _ in values] for values in lists]


def random_rewards(rows: list[dict], seed: int, columns) -> list[dict]:
    """Replace the token-reward ``columns`` (oracle-shaped lists) by seeded Gaussian noise."""
    rng = random.Random(f"random-rewards-{seed}")
    return [{**r, **{c: random_like([r[c]], rng)[0] for c in columns}} for r in rows]


def quiet_trainer(trainer):
    """Drop the PrinterCallback transformers adds when ``disable_tqdm=True`` (it prints every log dict)."""
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def trainer_common(output_dir: Path, seed: int) -> dict:
    """TrainingArguments shared by every TRL trainer of the pipeline: CPU, quiet, no checkpoints."""
    return dict(output_dir=str(output_dir), save_strategy="no", report_to="none", disable_tqdm=True,
                use_cpu=True, seed=seed, data_seed=seed, logging_steps=5, dataloader_num_workers=0,
                bf16=False, fp16=False)


def numeric_logs(log_history) -> list[dict]:
    """The numeric entries of a transformers ``log_history``."""
    return [{k: v for k, v in h.items() if isinstance(v, (int, float))} for h in log_history]
