"""One loader and one validation for the data every segrl command reads.

Every command (``dpo``, ``rs``, ``ppo``, ``grpo``, ``train-rm``, ``fit-norm``, ``eval-rm``) loads its
data with :func:`load_data` and checks it with :func:`check_preference_data`,
:func:`check_prompt_data` or :func:`check_stepwise_data` *before* any model is loaded and before any
output directory is created, so a bad file costs a second, not a model load, and leaves no
half-written run behind. Errors are ``ValueError`` (``FileNotFoundError`` for missing paths) naming
the argument and the column.

Data sources (:func:`load_data`):

- ``builtin:NAME``: a data set shipped in the package (``builtin:tiny_prefs``: 48 preference pairs
  of the running-sum task), available after ``pip install``;
- local ``.jsonl`` / ``.json`` / ``.csv`` / ``.parquet`` / ``.arrow`` files (comma separated for
  several), a directory written by ``Dataset.save_to_disk``, or a directory of data files;
- anything else that *looks like* a Hub id (``name`` or ``owner/name``) goes to the Hub. A string that
  looks like a local path and does not exist is ``no such file or directory: PATH``.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BUILTIN_DATA",
    "DataReport",
    "builtin_path",
    "check_length_filter",
    "check_model_path",
    "check_preference_data",
    "check_prompt_data",
    "check_stepwise_data",
    "is_hub_id",
    "load_data",
]

#: ``builtin:NAME`` -> file in ``segrl/data``.
BUILTIN_DATA = {"tiny_prefs": "tiny_prefs.jsonl"}
BUILTIN_PREFIX = "builtin:"

_LOCAL_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}
# Hub ids: "name" or "owner/name" (letters, digits, - _ .), not starting with '.' or '-'.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def builtin_path(name: str) -> Path:
    """Path of the packaged data set ``builtin:NAME`` (or of ``NAME``)."""
    key = name[len(BUILTIN_PREFIX):] if name.startswith(BUILTIN_PREFIX) else name
    if key not in BUILTIN_DATA:
        raise ValueError(f"unknown built-in data set {name!r}; available: "
                         f"{', '.join(BUILTIN_PREFIX + k for k in BUILTIN_DATA)}")
    return Path(__file__).resolve().parent / "data" / BUILTIN_DATA[key]


def is_hub_id(value: str) -> bool:
    """Whether ``value`` could be a Hub repo id (``name`` or ``owner/name``) rather than a local path.

    Strings with a data-file extension, more than one ``/``, a leading ``.`` / ``/`` / ``~`` or a
    Windows drive are local paths.
    """
    if not isinstance(value, str) or not _HUB_ID.match(value):
        return False
    return os.path.splitext(value)[1].lower() not in _LOCAL_BUILDERS


def _not_found(arg: str, path: str) -> FileNotFoundError:
    return FileNotFoundError(f"`{arg}`: no such file or directory: {path}")


def check_model_path(value: str | None, arg: str = "model_name_or_path", *, required: bool = True) -> None:
    """Fail fast on a model argument that is neither an existing local path nor a plausible Hub id.

    A Hub-id-looking string that is not a local directory is left to the Hub, except in offline mode
    (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``) where it must be in the local Hub cache.
    """
    if value is None or value == "":
        if required:
            raise ValueError(f"`{arg}` is required (a local model directory or a Hub id)")
        return
    if not isinstance(value, str):
        raise ValueError(f"`{arg}` must be a path or a Hub id, got {type(value).__name__}")
    if os.path.exists(value):
        return
    if not is_hub_id(value):
        raise _not_found(arg, value)
    if _offline():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(value, "config.json")
        except Exception:  # noqa: BLE001 - a malformed id is reported below like a missing one
            cached = None
        if not isinstance(cached, str):
            raise FileNotFoundError(f"`{arg}`: no such file or directory: {value} (and no cached Hub model of that "
                                    "name: offline mode)")


def _offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _check_not_empty(path: str, arg: str) -> None:
    if os.path.getsize(path) == 0:
        raise ValueError(f"`{arg}` file {path} is empty")
    if os.path.splitext(path)[1].lower() in (".json", ".jsonl", ".csv"):
        with open(path, "rb") as f:
            if not f.read(1 << 16).strip():
                raise ValueError(f"`{arg}` file {path} is empty (whitespace only)")


def load_data(name_or_path: str, split: str = "train", *, config: str | None = None, max_samples: int | None = None,
              arg: str = "dataset_name"):
    """Load a ``datasets.Dataset`` from ``builtin:NAME``, local file(s), a data directory or a Hub id.

    Local files all go to one split, whatever ``split`` says; ``save_to_disk`` directories holding a
    ``DatasetDict`` give ``split``. Returns the first ``max_samples`` rows if given. Raises
    ``FileNotFoundError`` (``no such file or directory: PATH``) for a missing local path and
    ``ValueError`` naming ``arg`` for empty or unreadable data.
    """
    import datasets

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"`{arg}` is required: a data file, a directory, `builtin:NAME` or a Hub id "
                         f"(got {name_or_path!r})")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"the number of rows to use must be >= 1, got {max_samples}")
    if name_or_path.startswith(BUILTIN_PREFIX):
        name_or_path = str(builtin_path(name_or_path))
    files = [f.strip() for f in name_or_path.split(",") if f.strip()]
    local = [f for f in files if os.path.exists(f)]
    bars = datasets.is_progress_bar_enabled()
    if local:
        datasets.disable_progress_bars()  # "Generating train split" bars for a local file are noise
    try:
        if local and len(local) == len(files) and all(os.path.isfile(f) for f in files):
            exts = {os.path.splitext(f)[1].lower() for f in files}
            builders = {_LOCAL_BUILDERS.get(e) for e in exts}
            if None in builders or len(builders) != 1:
                raise ValueError(f"`{arg}` files must all be one of {sorted(_LOCAL_BUILDERS)}, got extensions "
                                 f"{sorted(exts)}")
            for f in files:
                _check_not_empty(f, arg)
            ds = datasets.load_dataset(builders.pop(), data_files=files, split="train")
        elif len(files) == 1 and os.path.isdir(files[0]):
            path = files[0]
            if os.path.isfile(os.path.join(path, "dataset_info.json")) or os.path.isfile(
                    os.path.join(path, "dataset_dict.json")):
                ds = datasets.load_from_disk(path)
                if isinstance(ds, datasets.DatasetDict):
                    if split not in ds:
                        raise ValueError(f"`{arg}` {path} has no split {split!r} (splits: {sorted(ds)})")
                    ds = ds[split]
            else:
                if not any(p.suffix.lower() in _LOCAL_BUILDERS for p in Path(path).rglob("*") if p.is_file()):
                    raise ValueError(f"`{arg}` directory {path} holds no data files ({sorted(_LOCAL_BUILDERS)}) "
                                     "and is not a save_to_disk directory")
                ds = datasets.load_dataset(path, config, split=split)
        else:
            missing = [f for f in files if not os.path.exists(f)]
            if len(files) > 1 or not is_hub_id(files[0]):
                raise _not_found(arg, missing[0] if missing else files[0])
            try:
                ds = datasets.load_dataset(files[0], config, split=split)
            except (FileNotFoundError, ConnectionError, OSError, ValueError) as err:
                raise ValueError(f"`{arg}` {files[0]!r} is not a local file or directory and could not be loaded "
                                 f"from the Hub: {_one_line(err)}") from err
    except (FileNotFoundError, ValueError):
        raise
    except Exception as err:  # noqa: BLE001 - parser errors of `datasets` (bad JSON, ...) become named errors
        raise ValueError(f"could not read `{arg}` {name_or_path}: {type(err).__name__}: {_one_line(err)}") from err
    finally:
        if bars and local:
            datasets.enable_progress_bars()
    if isinstance(ds, datasets.DatasetDict):  # pragma: no cover - load_dataset(split=...) returns a Dataset
        ds = ds[split]
    if len(ds) == 0:
        raise ValueError(f"`{arg}` {name_or_path} has no rows")
    if max_samples is not None:
        ds = ds.select(range(min(max_samples, len(ds))))
    return ds


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


@dataclass
class DataReport:
    """What a check found: rows kept, rows dropped (``--drop_empty``) and whether the prompt is implicit."""

    n_rows: int
    n_dropped: int = 0
    implicit_prompt: bool = False


def _is_messages(value) -> bool:
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(m, dict) and "role" in m and isinstance(m.get("content"), str) for m in value))


def _text_of(value) -> str:
    return value if isinstance(value, str) else "".join(m.get("content") or "" for m in value)


def _field_problem(value, *, prompt: bool = False) -> str | None:
    """``None`` if ``value`` is a non-empty text or chat, ``"empty"`` if empty, else a description."""
    if value is None:
        return "null"
    if isinstance(value, str):
        return None if (value.strip() or prompt) else "empty"
    if isinstance(value, list):
        if not value:
            return "empty"
        if not _is_messages(value):
            return "not a string or a list of chat messages ({'role', 'content'})"
        if not prompt and not _text_of(value).strip():
            return "empty"
        return None
    return f"a {type(value).__name__}, not a string or a list of chat messages"


def _check_rows(ds, arg: str, columns: Sequence[str], *, drop_empty: bool, prompt_columns: Sequence[str] = (),
                log: Callable[[str], None] | None = None):
    """Type-check ``columns`` row by row; drop or reject rows with an empty value. Returns ``(ds, n_dropped)``."""
    empty_rows: list[int] = []
    empty_cols: dict[str, int] = {}
    for col in columns:
        for i, value in enumerate(_column_values(ds, col)):
            problem = _field_problem(value, prompt=col in prompt_columns)
            if problem is None:
                continue
            if problem == "empty":
                empty_rows.append(i)
                empty_cols[col] = empty_cols.get(col, 0) + 1
                continue
            raise ValueError(f"`{arg}` row {i}: column `{col}` is {problem} (got {value!r:.60})")
    if not empty_rows:
        return ds, 0
    bad = sorted(set(empty_rows))
    counts = ", ".join(f"{n} empty `{c}`" for c, n in empty_cols.items())
    if not drop_empty:
        raise ValueError(f"`{arg}`: {len(bad)} of {len(ds)} rows have an empty response ({counts}; first: row "
                         f"{bad[0]}); fix the data or pass --drop_empty true to drop them")
    if len(bad) == len(ds):
        raise ValueError(f"`{arg}`: every one of the {len(ds)} rows has an empty response ({counts}); nothing to "
                         "train on")
    keep = sorted(set(range(len(ds))) - set(bad))
    (log or _stderr)(f"segrl: dropped {len(bad)} of {len(ds)} rows of `{arg}` with an empty response ({counts}) "
                     "[--drop_empty]")
    return ds.select(keep), len(bad)


def _column_values(ds, column: str, batch_size: int = 10_000):
    """The values of one column, read a batch at a time (a large data set is never materialised whole)."""
    for batch in ds.select_columns([column]).iter(batch_size=batch_size):
        yield from batch[column]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _require_columns(ds, arg: str, required: Sequence[str], what: str) -> None:
    missing = [c for c in required if c not in ds.column_names]
    if missing:
        raise ValueError(f"`{arg}` is missing column(s) {', '.join(f'`{c}`' for c in missing)}; {what} "
                         f"(got columns {sorted(ds.column_names)})")


def check_preference_data(ds, arg: str = "dataset_name", *, drop_empty: bool = False,
                          extra_columns: Sequence[str] = (), log: Callable[[str], None] | None = None):
    """Check TRL preference data (``prompt`` optional, ``chosen``, ``rejected``; text or chat messages).

    Also accepts the tokenised form (``chosen_ids``, ``rejected_ids``, ``prompt_length``) unchecked.
    ``extra_columns`` must also be present (e.g. ``chosen_token_rewards``). Returns ``(ds, DataReport)``;
    rows with an empty response are an error unless ``drop_empty``.
    """
    cols = set(ds.column_names)
    if {"chosen_ids", "rejected_ids", "prompt_length"} <= cols:
        return ds, DataReport(len(ds))
    _require_columns(ds, arg, ["chosen", "rejected", *extra_columns],
                     "expected TRL preference data: `prompt` (optional), `chosen`, `rejected`")
    checked = ["chosen", "rejected"] + (["prompt"] if "prompt" in cols else [])
    if "prompt" in cols:
        for i, value in enumerate(_column_values(ds, "prompt")):
            if value is None:
                raise ValueError(f"`{arg}` row {i}: column `prompt` is null")
    ds, n_dropped = _check_rows(ds, arg, checked, drop_empty=drop_empty, prompt_columns=("prompt",), log=log)
    implicit = "prompt" not in cols
    return ds, DataReport(len(ds), n_dropped, implicit)


def check_prompt_data(ds, arg: str = "dataset_name", column: str = "prompt", *, drop_empty: bool = False,
                      log: Callable[[str], None] | None = None):
    """Check prompt data (a ``column`` of text or chat messages, none empty). Returns ``(ds, DataReport)``."""
    _require_columns(ds, arg, [column], f"expected prompts in a `{column}` column (text or chat messages)")
    ds, n_dropped = _check_rows(ds, arg, [column], drop_empty=drop_empty, log=log)
    return ds, DataReport(len(ds), n_dropped)


def check_stepwise_data(ds, arg: str = "dataset") -> tuple[Any, DataReport]:
    """Check TRL stepwise-supervision data: ``prompt``, ``completions`` (list of str), ``labels`` (list of bool)."""
    _require_columns(ds, arg, ["prompt", "completions", "labels"],
                     "expected TRL stepwise-supervision data: `prompt`, `completions`, `labels`")
    for i, (prompt, steps, labels) in enumerate(zip(ds["prompt"], ds["completions"], ds["labels"])):
        if not isinstance(prompt, str):
            raise ValueError(f"`{arg}` row {i}: column `prompt` is {_field_problem(prompt) or 'not a string'}")
        if not isinstance(steps, list) or not steps or not all(isinstance(s, str) for s in steps):
            raise ValueError(f"`{arg}` row {i}: column `completions` must be a non-empty list of strings")
        if not isinstance(labels, list) or len(labels) != len(steps):
            raise ValueError(f"`{arg}` row {i}: column `labels` must be a list with one label per completion step "
                             f"({len(steps)})")
        if not "".join(steps).strip():
            raise ValueError(f"`{arg}` row {i}: column `completions` is empty")
    return ds, DataReport(len(ds))


def check_length_filter(ds, tokenizer, max_length: int | None, *, arg: str = "max_length",
                        data_arg: str = "dataset_name", mode: str = "pair") -> None:
    """Fail when ``max_length`` would filter out *every* row, saying how many and by which limit.

    ``mode="pair"``: a row survives when ``prompt + chosen`` and ``prompt + rejected`` (+ EOS) both fit
    (the reward model's filter); ``mode="prompt"``: when the prompt alone is shorter than
    ``max_length`` (TRL's DPO filter with ``keep_start`` truncation). Stops at the first row that
    survives, so a usable data set costs a few tokenisations.
    """
    if max_length is None or len(ds) == 0 or "chosen_ids" in ds.column_names:
        return
    from segrl.rm.data import tokenize_completion

    shortest = None
    for row in ds:
        prompt = row.get("prompt")
        if prompt is None:
            prompt = [] if isinstance(row.get("chosen"), list) else ""
        if mode == "prompt":
            if isinstance(prompt, list):
                n = len(tokenize_completion(tokenizer, prompt, [{"role": "assistant", "content": "x"}])[0])
            else:
                n = len(tokenizer(prompt)["input_ids"]) if prompt else 0
            if n < max_length:
                return
        else:
            n = max(len(tokenize_completion(tokenizer, prompt, row[side])[1]) for side in ("chosen", "rejected"))
            if n <= max_length:
                return
        shortest = n if shortest is None else min(shortest, n)
    what = "prompts" if mode == "prompt" else "pairs (prompt + response)"
    raise ValueError(f"`{arg}`={max_length} filters out every row of `{data_arg}`: all {len(ds)} {what} are "
                     f"{'at least' if mode == 'prompt' else 'longer than'} that many tokens (shortest: {shortest}); "
                     f"raise `{arg}`")
