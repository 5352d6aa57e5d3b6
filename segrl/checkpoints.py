"""Checkpoints every segrl trainer can trust: marked complete when written, checked before resuming.

- **Written completely or recognisably not.** A checkpoint directory counts as complete only once
  :data:`MARKER` (``segrl_checkpoint.json``) is in it; the marker is written last (atomically) and
  lists every file with its size. The TRL-based trainers (DPO, RM, RS, GRPO) get this from
  :class:`CompleteCheckpointsMixin` (put it first in the class bases); PPO writes its checkpoint
  into a temporary directory that :func:`finalize_checkpoint` marks and renames into place. A run
  killed with ``kill -9`` in the middle of a save leaves a directory without the marker (or a
  ``.tmp`` directory), never a checkpoint that looks complete.
- **One resolver.** :func:`resolve_checkpoint` turns ``resume_from_checkpoint`` into a path for
  every command: ``last`` / ``latest`` / ``true`` (any case) mean the newest *complete*
  ``checkpoint-N`` in ``output_dir``; incomplete ones are skipped with a warning that names them.
- **Checked before resuming.** :func:`check_checkpoint` raises a ``ValueError`` naming the file when
  one is truncated or corrupted (size differs from the marker's, a broken safetensors header, a
  ``torch.save`` zip without its directory, unreadable JSON), and when the optimizer, scheduler or
  RNG state is missing, since resuming would silently restart them and change the run, unless the
  user opts in with ``resume_partial`` (``--resume_partial true``), which resumes with a warning.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import warnings
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "MARKER",
    "RESUME_PARTIAL_HELP",
    "CompleteCheckpointsMixin",
    "ResumeArguments",
    "check_checkpoint",
    "finalize_checkpoint",
    "is_complete",
    "last_checkpoint",
    "mark_complete",
    "reading_checkpoint",
    "resolve_checkpoint",
]

#: Written last into a checkpoint directory: ``{"format": 1, "files": {relative path: bytes}}``.
MARKER = "segrl_checkpoint.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
_LAST = ("last", "latest", "true")
#: Help of the ``resume_partial`` field every trainer config declares.
RESUME_PARTIAL_HELP = ("Allow resuming from a checkpoint that lacks the optimizer, scheduler or RNG state (they "
                        "restart fresh, so the run differs from an uninterrupted one). Off: that is an error.")


@dataclass
class ResumeArguments:
    """The ``resume_partial`` option of every trainer config (a base class of each, like ``ASRArguments``)."""

    resume_partial: bool = field(default=False, metadata={"help": RESUME_PARTIAL_HELP})


# ------------------------------------------------------------------------------------------------ writing


def mark_complete(path: str | os.PathLike) -> None:
    """Write :data:`MARKER` into the checkpoint directory ``path``, listing its files and sizes."""
    path = Path(path)
    files = {}
    for dirpath, _, names in os.walk(path):
        for name in names:
            full = Path(dirpath) / name
            rel = full.relative_to(path).as_posix()
            if rel != MARKER and not rel.endswith(".segrl-tmp"):
                files[rel] = full.stat().st_size
    tmp = path / (MARKER + ".segrl-tmp")
    with open(tmp, "w") as f:
        json.dump({"format": 1, "files": dict(sorted(files.items()))}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path / MARKER)


def unmark(path: str | os.PathLike) -> None:
    """Remove the marker (before a checkpoint directory is written again)."""
    try:
        os.remove(Path(path) / MARKER)
    except FileNotFoundError:
        pass


def is_complete(path: str | os.PathLike) -> bool:
    """Whether the checkpoint directory ``path`` holds the completion marker."""
    return (Path(path) / MARKER).is_file()


def finalize_checkpoint(tmp: str | os.PathLike, final: str | os.PathLike) -> Path:
    """Mark the fully written directory ``tmp`` complete and rename it to ``final`` (replacing it)."""
    tmp, final = Path(tmp), Path(final)
    mark_complete(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


class CompleteCheckpointsMixin:
    """For a ``transformers.Trainer`` subclass (list it first among the bases): complete checkpoints, safe resume.

    ``_save_checkpoint`` marks each checkpoint complete once every process has written its part,
    and only then lets ``save_total_limit`` delete older ones (so a crash never leaves only
    incomplete checkpoints). ``train(resume_from_checkpoint=...)`` accepts ``last`` / ``latest`` /
    ``true`` and checks the checkpoint with :func:`check_checkpoint` before resuming.
    """

    def _save_checkpoint(self, model, trial):
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        run_dir = self._get_output_dir(trial=trial)
        folder = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save:
            unmark(folder)  # a checkpoint written again is incomplete until it is marked again
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        self.args.save_total_limit = None  # rotate only once the new checkpoint is marked
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = limit
        self.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are written
        if self.args.should_save:
            mark_complete(folder)
            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        path = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir)
        if path is not None:
            check_checkpoint(path, layout="trainer", resume_partial=getattr(self.args, "resume_partial", False),
                             world_size=self.args.world_size, process_index=self.args.process_index)
        return super().train(path, *args, **kwargs)

    # A file that passed the checks but still cannot be read (corrupted inside) is named, not a raw traceback.
    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        with reading_checkpoint(resume_from_checkpoint, "model weights (model.safetensors, adapter_model.*, ...)"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)

    def _load_optimizer_and_scheduler(self, checkpoint):
        with reading_checkpoint(checkpoint, "optimizer / scheduler state (optimizer.pt, scheduler.pt)"):
            return super()._load_optimizer_and_scheduler(checkpoint)

    def _load_rng_state(self, checkpoint):
        with reading_checkpoint(checkpoint, "RNG state (rng_state*.pth)"):
            return super()._load_rng_state(checkpoint)


@contextmanager
def reading_checkpoint(path, what: str):
    """Re-raise a failure to read ``what`` from checkpoint ``path`` as a ``ValueError`` naming both."""
    try:
        yield
    except ValueError:
        raise
    except (RuntimeError, OSError, EOFError, KeyError, TypeError, pickle.UnpicklingError) as err:
        if path is None:
            raise
        raise ValueError(f"checkpoint {path}: cannot read the {what}, the file is corrupted or does not match "
                         f"this run ({type(err).__name__}: {err})") from err


# ------------------------------------------------------------------------------------------------ resolving


def _numbered(output_dir: Path) -> list[tuple[int, Path]]:
    if not output_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in output_dir.iterdir() if (m := _CHECKPOINT.match(p.name)) and p.is_dir()]
    return sorted(found)


def last_checkpoint(output_dir: str | os.PathLike) -> str | None:
    """The newest complete ``checkpoint-N`` in ``output_dir`` (None if there is none).

    Newer incomplete ones (a save interrupted by a crash) are skipped with a warning naming them.
    """
    skipped = []
    for _, path in reversed(_numbered(Path(output_dir))):
        if is_complete(path):
            if skipped:
                warnings.warn(f"resume_from_checkpoint: skipping incomplete checkpoint(s) {', '.join(skipped)} "
                              f"(no {MARKER}: the save was interrupted); resuming from {path}", stacklevel=3)
            return str(path)
        skipped.append(str(path))
    if skipped:
        warnings.warn(f"resume_from_checkpoint: every checkpoint in {output_dir} is incomplete (no {MARKER}): "
                      f"{', '.join(skipped)}", stacklevel=3)
    return None


def resolve_checkpoint(value, output_dir: str | os.PathLike | None = None) -> str | None:
    """``resume_from_checkpoint`` as a path (or None), the same for every command.

    Args:
        value: the option's value (``None`` / ``False`` / ``""``: no resume; ``True`` or ``"last"`` /
            ``"latest"`` / ``"true"`` in any case: the newest complete checkpoint in ``output_dir``;
            anything else: a checkpoint directory), or an arguments object (``TrainingArguments``,
            ``SegmentPPOConfig``, ...) with ``resume_from_checkpoint`` and ``output_dir``.
        output_dir: where ``last`` looks (taken from the arguments object when one is passed).

    Raises:
        ValueError: ``last`` with no complete checkpoint, or a path that is not a directory.
    """
    if hasattr(value, "resume_from_checkpoint"):
        value, output_dir = value.resume_from_checkpoint, value.output_dir
    if value is None or value is False or value == "":
        return None
    if value is True or (isinstance(value, str) and value.strip().lower() in _LAST):
        found = last_checkpoint(output_dir) if output_dir is not None else None
        if found is None:
            raise ValueError(f"resume_from_checkpoint={value!r} but {output_dir} holds no complete checkpoint")
        return found
    path = os.fspath(value)
    if not os.path.isdir(path):
        raise ValueError(f"resume_from_checkpoint: no such checkpoint directory: {path}")
    return path


# ------------------------------------------------------------------------------------------------ checking


def _check_safetensors(path: Path) -> str | None:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            return "shorter than a safetensors header"
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            return f"header claims {n} bytes but the file has {size}"
        try:
            header = json.loads(f.read(n))
        except ValueError:
            return "unreadable safetensors header"
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__" and "data_offsets" in t]
    if 8 + n + max(ends, default=0) != size:
        return f"{size} bytes, the header needs {8 + n + max(ends, default=0)}"
    return None


def _check_torch_zip(path: Path) -> str | None:
    with open(path, "rb") as f:
        if f.read(4) != b"PK\x03\x04":
            return None  # not torch.save's zip format: nothing cheap to check
    try:
        with zipfile.ZipFile(path):
            return None
    except (zipfile.BadZipFile, OSError) as err:
        return f"not a readable torch.save archive ({err})"


def _check_file(path: Path) -> str | None:
    name = path.name
    if name.endswith(".safetensors"):
        return _check_safetensors(path)
    if name.endswith((".pt", ".pth", ".bin", ".pkl")):
        return _check_torch_zip(path)
    if name.endswith(".json"):
        try:
            json.loads(path.read_text())
        except (ValueError, UnicodeDecodeError):
            return "unreadable JSON"
    return None


def _state_files(path: Path, layout: str, world_size: int, process_index: int) -> dict[str, list[str]]:
    """For each kind of state, the files that would hold it (any one will do); {} when it is present."""
    names = {p.name for p in path.iterdir()}
    engine = any(n.startswith("global_step") for n in names)  # DeepSpeed keeps optimizer+scheduler there
    rank_file = (lambda stem, ext: f"{stem}{ext}" if world_size <= 1 else f"{stem}_{process_index}{ext}")
    if layout == "trainer":
        wanted = {
            "model weights": ["model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                              "pytorch_model.bin.index.json", "adapter_model.safetensors", "adapter_model.bin"],
            "trainer state": ["trainer_state.json"],
            "optimizer state": ["optimizer.pt", "optimizer_0"],
            "scheduler state": ["scheduler.pt"],
            "RNG state": [rank_file("rng_state", ".pth")],
        }
        if engine:
            wanted.pop("optimizer state"), wanted.pop("scheduler state")
            wanted["model weights"].append(next(n for n in names if n.startswith("global_step")))
        if any(n.startswith("pytorch_model_fsdp") for n in names):
            wanted["model weights"].extend(n for n in names if n.startswith("pytorch_model_fsdp"))
    elif layout == "accelerate":
        wanted = {
            "model weights": sorted(n for n in names if re.match(r"^(model(_\d+)?\.safetensors|pytorch_model.*)$", n)),
            "training state": ["segrl_state.json"],
            "optimizer state": sorted(n for n in names if re.match(r"^optimizer(_\d+)?\.bin$", n)),
            "RNG state": [f"random_states_{process_index}.pkl"],
        }
        if engine or any(n.startswith("pytorch_model") and (path / n).is_dir() for n in names):
            wanted.pop("optimizer state")
    else:
        raise ValueError(f"`layout` must be 'trainer' or 'accelerate', got {layout!r}")
    return {kind: files for kind, files in wanted.items() if not any(f in names for f in files)}


def check_checkpoint(path: str | os.PathLike, *, layout: str = "trainer", resume_partial: bool = False,
                     world_size: int = 1, process_index: int = 0) -> None:
    """Check that the checkpoint directory ``path`` can be resumed from exactly; raise ``ValueError`` if not.

    Args:
        path: the checkpoint directory.
        layout: ``"trainer"`` (``transformers.Trainer`` checkpoints: DPO, RM, RS, GRPO) or
            ``"accelerate"`` (``Accelerator.save_state``: PPO).
        resume_partial: allow missing optimizer / scheduler / RNG state (a warning instead of an error).
        world_size, process_index: which per-process RNG file this process needs.

    Raises:
        ValueError: naming the file that is truncated or corrupted, or the state that is missing.
    """
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"resume_from_checkpoint: no such checkpoint directory: {path}")
    marker = path / MARKER
    listed: dict[str, int] = {}
    if marker.is_file():
        try:
            listed = json.loads(marker.read_text())["files"]
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"checkpoint marker {marker} is unreadable ({err})") from err
        for rel, size in listed.items():
            file = path / rel
            if file.is_file() and file.stat().st_size != size:
                raise ValueError(f"checkpoint file {file} is truncated or corrupted: {file.stat().st_size} bytes, "
                                 f"{size} when it was saved")
    else:
        warnings.warn(f"checkpoint {path} has no {MARKER} (an interrupted save, or written by another tool); "
                      "checking its files", stacklevel=2)
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        problem = _check_file(file)
        if problem:
            raise ValueError(f"checkpoint file {file} is truncated or corrupted: {problem}")
    missing = _state_files(path, layout, world_size, process_index)
    for kind in ("model weights", "trainer state", "training state"):
        files = missing.pop(kind, None)
        if files is not None:
            raise ValueError(f"checkpoint {path} has no {kind} ({' or '.join(files) or 'no file'}); cannot resume "
                             "from it")
    if missing:
        what = "; ".join(f"{kind} ({' or '.join(files) or 'no file'})" for kind, files in missing.items())
        if not resume_partial:
            raise ValueError(f"checkpoint {path} lacks the {what}: resuming would restart it fresh and change the run. "
                             "Pass `--resume_partial true` (config `resume_partial: true`) to resume anyway")
        warnings.warn(f"resume_partial: resuming from {path} without the {what} (restarted fresh)", stacklevel=2)
