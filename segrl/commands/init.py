"""``segrl init DIR``: write the example configs and the tiny data set into ``DIR`` (works after ``pip install``).

The configs are the package's own copies of ``examples/configs`` (they name their data
``builtin:tiny_prefs``, so they run from any directory); ``DIR/data/tiny_prefs.jsonl`` is the same
data as a file to copy the format from. Then, inside ``DIR``::

    segrl make-tiny --output_dir tiny/pair --pair true
    segrl train-rm  --config configs/rm_segment.yaml
    segrl fit-norm  --config configs/rm_fit_norm.yaml
    segrl dpo       --config configs/dpo_asr_segment_rm.yaml
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["InitConfig", "examples_dir", "main", "run"]

NEXT_STEPS = """\
# segrl examples

Written by `segrl init`. Run these from this directory (CPU is fine: a few minutes in all):

    segrl make-tiny --output_dir tiny/pair --pair true                  # tiny offline SFT model + tokenizer
    segrl train-rm  --config configs/rm_segment.yaml                    # segment reward model
    segrl fit-norm  --config configs/rm_fit_norm.yaml                   # its location normaliser
    segrl dpo       --config configs/dpo_asr_segment_rm.yaml            # ASR-DPO with the RM's token rewards
    segrl ppo       --config configs/ppo_segment.yaml --mask_type asr --total_episodes 64   # dense ASR-PPO

`configs/` holds every example config (keys = flag names; flags override them); `data/tiny_prefs.jsonl`
is the built-in preference data (`builtin:tiny_prefs`) as a file, in TRL's prompt / chosen / rejected format.
"""


@dataclass
class InitConfig:
    """Options of ``segrl init``."""

    directory: str = field(default="segrl-examples", metadata={"help": "Directory to write into (created)."})
    overwrite: bool = field(default=False, metadata={"help": "Replace files that already exist."})


def examples_dir() -> Path:
    """The example configs shipped in the package (``segrl/examples/configs``)."""
    path = Path(__file__).resolve().parents[1] / "examples" / "configs"
    if not path.is_dir():  # pragma: no cover - a broken install
        raise FileNotFoundError(f"the package's example configs are missing: no such file or directory: {path}")
    return path


def run(cfg: InitConfig) -> list[Path]:
    """Copy the configs, the data and a short README into ``cfg.directory``; returns the files written."""
    from segrl.data_checks import builtin_path

    root = Path(cfg.directory)
    plan = [(src, root / "configs" / src.name) for src in sorted(examples_dir().glob("*.yaml"))]
    plan.append((builtin_path("builtin:tiny_prefs"), root / "data" / "tiny_prefs.jsonl"))
    existing = [str(dst) for _, dst in plan if dst.exists()] + ([str(root / "README.md")]
                                                               if (root / "README.md").exists() else [])
    if existing and not cfg.overwrite:
        raise ValueError(f"`directory` {root} already holds {existing[0]} (and {len(existing) - 1} more); pass "
                         "--overwrite true to replace them")
    written = []
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
        written.append(dst)
    (root / "README.md").write_text(NEXT_STEPS)
    written.append(root / "README.md")
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``segrl init [DIR]``. Returns 0 on success, 2 on invalid options."""
    from segrl.commands._common import command_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):  # `segrl init DIR`
        argv = ["--directory", argv[0], *argv[1:]]

    def _run(cfg):
        files = run(cfg)
        print(f"wrote {len(files)} files to {Path(cfg.directory).resolve()}\n")
        print(f"next: cd {cfg.directory}, then (see its README.md):\n" + NEXT_STEPS.split("\n\n")[2])

    return command_main("segrl init", argv, make_parser, _run, [("init", "segrl.commands.init:InitConfig")])


def make_parser():
    from trl import TrlParser

    return TrlParser((InitConfig,), prog="segrl init")
