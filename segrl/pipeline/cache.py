"""The pipeline's stage cache: JSON / JSONL artifacts written atomically under ``output_dir``, and
the rule for when a cached artifact is reused (its recorded key matches, and ``force`` is off
unless this process computed it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["StageCache", "read_json", "read_jsonl", "write_json", "write_jsonl"]

RESULT = "result.json"


def read_json(path: Path):
    """The parsed file, or ``None`` when it is missing or not valid JSON (a stage to recompute)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_json(path: Path, data) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)  # a run killed mid-write never leaves a half result


def write_jsonl(path: Path, rows) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class StageCache:
    """Which cached artifacts may be reused, and how long each stage took.

    Args:
        force: recompute every stage once (artifacts computed by this process are still reused, so a
            stage that several methods share runs once per invocation).
    """

    def __init__(self, force: bool = False):
        self.force = force
        self._fresh: set[str] = set()
        self.timings: dict[str, float] = {}

    def reusable(self, record: dict | None, key: str) -> bool:
        """Whether a loaded ``record`` (``None`` when missing) carries ``key`` and may be reused."""
        return record is not None and record.get("key") == key and (not self.force or key in self._fresh)

    def computed(self, key: str) -> None:
        """Mark ``key`` as computed by this process."""
        self._fresh.add(key)

    def add_time(self, name: str, seconds: float) -> None:
        self.timings[name] = self.timings.get(name, 0.0) + seconds
