"""Console output of the pipeline: stage headers and rich progress bars, one live display at a time.

rich allows a single live display per console, and ``SegmentPPOTrainer.train`` opens its own
progress bar, so every bar here lives exactly as long as one stage step (never nested).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from transformers import TrainerCallback

__all__ = ["Reporter", "RichTrainerProgress"]


class Reporter:
    """Stage headers, one-line notes and progress bars on a rich console (``enabled=False``: silent)."""

    def __init__(self, console=None, *, enabled: bool = True):
        from rich.console import Console

        self.console = console or Console()
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def stage(self, title: str) -> None:
        if self.enabled:
            self.console.rule(f"[bold]{title}[/]  [dim]{self.elapsed():.0f}s[/]", align="left")

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text)

    @contextlib.contextmanager
    def bar(self, description: str, total: int) -> Iterator:
        """Yields ``update(completed, info="")``."""
        if not self.enabled:
            yield lambda completed, info="": None
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        with Progress(TextColumn("  {task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      TextColumn("[dim]{task.fields[info]}"), console=self.console) as progress:
            task = progress.add_task(description, total=total, info="")

            def update(completed: int, info: str = "") -> None:
                progress.update(task, completed=completed, info=info)

            yield update


class RichTrainerProgress(TrainerCallback):
    """A rich progress bar for a transformers / TRL ``Trainer`` (run it with ``disable_tqdm=True``).

    Shows the step, the last logged loss and whatever ``extra()`` returns (e.g. the last held-out
    step accuracy).
    """

    def __init__(self, reporter: Reporter, description: str, extra=None):
        self.reporter, self.description, self.extra = reporter, description, extra
        self._cm = None
        self._update = None
        self._loss = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._cm = self.reporter.bar(self.description, state.max_steps)
        self._update = self._cm.__enter__()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self._loss = logs["loss"]

    def on_step_end(self, args, state, control, **kwargs):
        info = [] if self._loss is None else [f"loss {self._loss:.3f}"]
        if self.extra is not None:
            info.append(self.extra())
        self._update(state.global_step, "  ".join(i for i in info if i))

    def on_train_end(self, args, state, control, **kwargs):
        if self._cm is not None:
            self._cm.__exit__(None, None, None)
            self._cm = None
