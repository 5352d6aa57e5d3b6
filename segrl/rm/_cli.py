"""Helpers shared by the reward-model commands (`segrl train-rm`, `fit-norm`, `eval-rm`)."""

from __future__ import annotations

import sys
from collections.abc import Callable


def quiet_transformers() -> None:
    # Per-file "Loading weights" bars drown the command's own progress output.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def resolve_device(device: str):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def run_main(name: str, fn: Callable[[], object]) -> int:
    """Run ``fn``; a ``ValueError`` (bad option or data) becomes a one-line error and exit code 2."""
    try:
        fn()
    except ValueError as err:
        print(f"segrl {name}: error: {err}", file=sys.stderr)
        return 2
    return 0
