"""Load one split of a benchmark (MMLU, GSM8K) from a Hub id or a local copy, through ``datasets``.

Accepted sources (``name_or_path``):

- a Hub id (``cais/mmlu``, ``openai/gsm8k``): ``datasets.load_dataset(name, config, split=split)``;
- a ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` / ``.arrow`` file, or several comma-separated:
  all their rows form the split, whatever ``split`` says;
- a directory written by ``save_to_disk``: a ``DatasetDict`` (``dataset_dict.json``; ``split`` picks
  one of its splits) or a single ``Dataset`` (all its rows);
- a directory of data files named after their split, as in the Hub repositories: ``test.jsonl``,
  ``test-00000-of-00001.parquet``, ... directly inside it or inside its ``<config>/`` folder
  (``mmlu/all/test-*.parquet``, ``gsm8k/main/test-*.parquet``).
"""

from __future__ import annotations

import glob
import os

__all__ = ["is_data_files", "load_split"]


def _builder(files: list[str], arg: str) -> str:
    from segrl.rm.data import _LOCAL_BUILDERS

    exts = {os.path.splitext(f)[1].lower() for f in files}
    builders = {_LOCAL_BUILDERS.get(e) for e in exts}
    if None in builders or len(builders) != 1:
        raise ValueError(f"`{arg}` files must all be one of {sorted(_LOCAL_BUILDERS)}, got extensions {sorted(exts)}")
    return builders.pop()


def _split_files(directory: str, split: str) -> list[str]:
    from segrl.rm.data import _LOCAL_BUILDERS

    files = []
    for ext in _LOCAL_BUILDERS:
        files += glob.glob(os.path.join(glob.escape(directory), f"{split}{ext}"))
        files += glob.glob(os.path.join(glob.escape(directory), f"{split}-*{ext}"))
    return sorted(set(files))


def is_data_files(name_or_path: str) -> bool:
    """Whether ``name_or_path`` names existing data file(s) (one split's rows, not a whole dataset)."""
    return all(os.path.isfile(f.strip()) for f in str(name_or_path).split(",") if f.strip())


def load_split(name_or_path: str, split: str, *, config: str | None = None, arg: str = "dataset"):
    """One split of a dataset as a ``datasets.Dataset`` (see the module docstring for the sources).

    ``arg`` names the option in error messages. A local directory that holds neither a saved
    dataset nor files for ``split`` is an error (not a Hub look-up).
    """
    import datasets

    if not isinstance(name_or_path, str) or not name_or_path.strip():
        raise ValueError(f"`{arg}` must be a Hub id, a data file or a directory, got {name_or_path!r}")
    files = [f.strip() for f in name_or_path.split(",") if f.strip()]
    if is_data_files(name_or_path):
        return datasets.load_dataset(_builder(files, arg), data_files=files, split="train")
    if os.path.isdir(name_or_path):
        if os.path.isfile(os.path.join(name_or_path, "dataset_dict.json")):
            saved = datasets.load_from_disk(name_or_path)
            if split not in saved:
                raise ValueError(f"`{arg}` {name_or_path!r} has splits {sorted(saved)}, not {split!r}")
            return saved[split]
        if os.path.isfile(os.path.join(name_or_path, "state.json")):
            return datasets.load_from_disk(name_or_path)
        folders = ([os.path.join(name_or_path, config)] if config else []) + [name_or_path]
        for folder in folders:
            if found := _split_files(folder, split):
                return datasets.load_dataset(_builder(found, arg), data_files=found, split="train")
        raise ValueError(
            f"`{arg}` directory {name_or_path!r} holds no saved dataset and no {split!r} files "
            f"({split}.jsonl, {split}-*.parquet, ...{' in ' + repr(config) + '/ or' if config else ''} at its top)"
        )
    if os.path.exists(name_or_path) or len(files) > 1 or os.path.splitext(name_or_path)[1].lower() in (
            ".json", ".jsonl", ".parquet", ".csv", ".arrow"):
        raise ValueError(f"`{arg}` {name_or_path!r} looks like a local file but is not a readable data file")
    try:
        return datasets.load_dataset(name_or_path, config, split=split)
    except Exception as err:  # offline hub, unknown id or config: many exception types
        raise ValueError(
            f"could not load `{arg}` {name_or_path!r} (config {config!r}, split {split!r}) as a Hub dataset "
            f"({type(err).__name__}: {err}); pass a local file or directory instead when offline"
        ) from err
