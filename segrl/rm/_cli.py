"""Helpers shared by the reward-model commands (`segrl train-rm`, `fit-norm`, `eval-rm`)."""

from __future__ import annotations

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
    """Run ``fn``: bad options / data become a one-line error and exit code 2, other failures exit 1
    (``--debug`` / ``SEGRL_DEBUG=1``: full traceback). See :func:`segrl.commands._common.run_command`."""
    from segrl.commands._common import run_command

    return run_command(f"segrl {name}", fn)
