"""Load one split of a benchmark (MMLU, GSM8K) from a Hub id or a local copy.

A thin layer over :func:`segrl.data_checks.load_data` (the loader every command uses: Hub ids, local
``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` / ``.arrow`` files, ``save_to_disk`` directories,
``builtin:NAME``) that adds what benchmark copies need: a directory of files named after their
split, as in the Hub repositories (``test.jsonl``, ``dev.jsonl``, ``test-00000-of-00001.parquet``,
...), directly inside it or inside its ``<config>/`` folder (``mmlu/all/dev-*.parquet``,
``gsm8k/main/test-*.parquet``). Split names are kept as they are (``datasets``' own inference would
rename MMLU's ``dev`` to ``validation``); a directory without files for the split is an error.
"""

from __future__ import annotations

import glob
import os

__all__ = ["is_data_files", "load_split"]


def _split_files(directory: str, split: str) -> list[str]:
    from segrl.data_checks import _LOCAL_BUILDERS

    files = []
    for ext in _LOCAL_BUILDERS:
        for pattern in (f"{split}{ext}", f"{split}-*{ext}"):
            files += glob.glob(os.path.join(glob.escape(directory), pattern))
    return sorted(set(files))


def _saved(directory: str) -> bool:
    # what load_data reads with load_from_disk
    return any(os.path.isfile(os.path.join(directory, name)) for name in ("dataset_info.json", "dataset_dict.json"))


def is_data_files(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names existing data file(s) (one split's rows, not a whole dataset)."""
    files = [f.strip() for f in str(name_or_path).split(",") if f.strip()]
    return bool(files) and all(os.path.isfile(f) for f in files)


def load_split(name_or_path: str, split: str, *, config: str | None = None, arg: str = "dataset"):
    """One split of a dataset as a ``datasets.Dataset`` (see the module docstring for the sources).

    Data file(s) are all one split, whatever ``split`` says. Errors name ``arg``: ``ValueError``, or
    ``FileNotFoundError`` for a local-looking path that does not exist.
    """
    from segrl.data_checks import load_data

    path = name_or_path.strip() if isinstance(name_or_path, str) else name_or_path
    if isinstance(path, str) and os.path.isdir(path) and not _saved(path):
        folders = ([os.path.join(path, config)] if config else []) + [path]
        for folder in folders:
            if found := _split_files(folder, split):
                return load_data(",".join(found), split, arg=arg)
        raise ValueError(f"`{arg}` directory {path} holds no {split!r} split: no {split}.jsonl, {split}-*.parquet, "
                         f"... in {' or '.join(folders)}, and it is not a save_to_disk directory")
    return load_data(path, split, config=config, arg=arg)
