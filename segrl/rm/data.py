"""Preference data for the segment reward model: loading, validation and tokenisation.

The tokenisation reproduces TRL's ``RewardTrainer`` exactly (so ``segment_threshold = inf`` trains
the very same RM on the very same ids) and adds what TRL's RM does not keep: where the response
starts. For non-conversational data EOS is appended to each completion and ``prompt + completion``
is tokenised jointly, as TRL does; conversational data goes through the chat template. The prompt
length is then derived as TRL's ``DPOTrainer`` does: the common prefix of the tokenised prompt and
both tokenised ``prompt + completion`` sequences (tokens can merge across the boundary, and some
chat templates render a prompt alone differently).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "PROCESSED_COLUMNS",
    "check_preference_columns",
    "load_preference_dataset",
    "tokenize_completion",
    "tokenize_preference_example",
    "tokenize_preference_dataset",
]

#: Columns a tokenised preference dataset carries (``chosen_ids`` / ``rejected_ids`` are TRL's).
PROCESSED_COLUMNS = ("chosen_ids", "rejected_ids", "prompt_length")


def load_preference_dataset(name_or_path: str, split: str = "train", *, config: str | None = None,
                            max_samples: int | None = None):
    """Load a preference dataset from ``builtin:NAME``, a local file/directory or a Hub id
    (:func:`segrl.data_checks.load_data`, the loader every command uses).

    - A local ``.json`` / ``.jsonl`` / ``.parquet`` / ``.csv`` file (or a list of them, comma
      separated) is read with ``datasets.load_dataset(<builder>, data_files=...)``; all rows go to
      the single split, whatever ``split`` says.
    - A directory written by ``Dataset.save_to_disk`` is read with ``load_from_disk``.
    - Anything else is a Hub id: ``load_dataset(name_or_path, config, split=split)``.

    Returns a ``datasets.Dataset`` (the first ``max_samples`` rows if given).
    """
    from segrl.data_checks import load_data  # the one loader of every command (also builtin:NAME)

    return load_data(name_or_path, split, config=config, max_samples=max_samples, arg="dataset")


def check_preference_columns(column_names: Sequence[str], name: str = "dataset") -> bool:
    """Raise ``ValueError`` unless the columns describe preference data; return whether it is tokenised.

    Accepted: ``chosen`` + ``rejected`` (+ optional ``prompt``), standard or conversational; or the
    tokenised form ``chosen_ids`` + ``rejected_ids`` + ``prompt_length``.
    """
    cols = set(column_names)
    if {"chosen_ids", "rejected_ids"} <= cols:
        if "prompt_length" not in cols:
            raise ValueError(
                f"`{name}` is tokenised (chosen_ids/rejected_ids) but has no `prompt_length` column: the segment RM "
                "needs to know where each response starts. Pass the raw prompt/chosen/rejected columns instead."
            )
        return True
    missing = [c for c in ("chosen", "rejected") if c not in cols]
    if missing:
        raise ValueError(
            f"`{name}` is missing column(s) {missing}; expected TRL preference data with `prompt` (optional), "
            f"`chosen` and `rejected` (got columns {sorted(cols)})"
        )
    return False


def _is_conversational(value) -> bool:
    return isinstance(value, list) and len(value) > 0 and isinstance(value[0], dict) and "role" in value[0]


def _check_field(example: dict, key: str, index, *, allow_empty: bool = False) -> None:
    where = f"row {index}" if index is not None else "example"
    value = example.get(key)
    if value is None:
        raise ValueError(f"{where} of the dataset has no `{key}`; every row needs prompt (optional), chosen, rejected")
    if isinstance(value, str):
        if not value and not allow_empty:
            raise ValueError(f"{where}: `{key}` is empty; every response needs at least one token")
        return
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m for m in value):
        raise ValueError(f"{where}: `{key}` must be a string or a list of chat messages, got {type(value).__name__}")
    if not value and not allow_empty:
        raise ValueError(f"{where}: `{key}` is an empty conversation")
    if key != "prompt" and any(not (m.get("content") or "") for m in value):
        raise ValueError(f"{where}: `{key}` has a message with empty content; every response needs text")


def _template_kwargs(example: dict) -> dict[str, Any]:
    # Same extra chat-template arguments TRL forwards (tools, chat_template_kwargs).
    tools = example.get("tools")
    tools = json.loads(tools) if isinstance(tools, str) else tools
    return {"tools": tools, **(example.get("chat_template_kwargs") or {})}


def tokenize_completion(tokenizer, prompt, completion, **template_kwargs) -> tuple[list[int], list[int]]:
    """``(prompt_ids, prompt_completion_ids)`` exactly as TRL's reward / DPO trainers tokenise them.

    Standard (str) inputs: EOS is appended to ``completion`` unless already there, and
    ``prompt + completion`` is tokenised jointly. Conversational inputs: the chat template is applied
    to ``prompt`` (with the generation prompt) and to ``prompt + completion``.
    """
    from trl.data_utils import _tokenize

    if _is_conversational(completion):
        prompt_ids = _tokenize(tokenizer, prompt, add_generation_prompt=True, **template_kwargs)["input_ids"]
        full_ids = _tokenize(tokenizer, prompt + completion, **template_kwargs)["input_ids"]
    else:
        eos = tokenizer.eos_token
        if eos is None:
            raise ValueError("`processing_class` has no eos token; the RM reads a response's score at its EOS")
        if not completion.endswith(eos):
            completion = completion + eos
        prompt_ids = _tokenize(tokenizer, prompt)["input_ids"]
        full_ids = _tokenize(tokenizer, prompt + completion)["input_ids"]
    return list(prompt_ids), list(full_ids)


def tokenize_preference_example(example: dict, tokenizer, index: int | None = None) -> dict[str, Any]:
    """Tokenise one preference row into ``chosen_ids``, ``rejected_ids`` (TRL's, prompt included) and
    ``prompt_length`` (tokens shared by the prompt and both sequences).

    Rows without ``prompt`` get it extracted as TRL does (``trl.data_utils.extract_prompt``), which
    leaves ``prompt + chosen`` unchanged, so the ids are the same as TRL's RM produces. Raises
    ``ValueError`` for missing or empty fields and for responses that tokenise to nothing.
    """
    from trl.data_utils import common_prefix_length, extract_prompt

    _check_field(example, "chosen", index)
    _check_field(example, "rejected", index)
    if "prompt" not in example or example["prompt"] is None:
        example = {**example, **extract_prompt({"chosen": example["chosen"], "rejected": example["rejected"]})}
    _check_field(example, "prompt", index, allow_empty=True)
    conv = [_is_conversational(example[k]) for k in ("prompt", "chosen", "rejected") if example[k]]
    if len(set(conv)) > 1:
        raise ValueError(f"row {index}: mixes conversational and plain-text fields; use one format per row")
    kwargs = _template_kwargs(example)
    prompt = example["prompt"]
    if not prompt and conv and conv[0]:
        prompt = []
    prompt_ids, chosen_ids = tokenize_completion(tokenizer, prompt, example["chosen"], **kwargs)
    _, rejected_ids = tokenize_completion(tokenizer, prompt, example["rejected"], **kwargs)
    prompt_length = min(common_prefix_length(prompt_ids, chosen_ids), common_prefix_length(prompt_ids, rejected_ids))
    for key, ids in (("chosen", chosen_ids), ("rejected", rejected_ids)):
        if len(ids) <= prompt_length:
            raise ValueError(f"row {index}: `{key}` tokenises to no response tokens")
    return {"chosen_ids": chosen_ids, "rejected_ids": rejected_ids, "prompt_length": prompt_length}


def _tokenize_row(example: dict, index: int, tokenizer) -> dict[str, Any]:
    # `datasets.map(with_indices=True)` passes the index second.
    return tokenize_preference_example(example, tokenizer, index)


def tokenize_preference_dataset(dataset, tokenizer, *, max_length: int | None = None, num_proc: int | None = None,
                                name: str = "dataset"):
    """Map :func:`tokenize_preference_example` over a ``datasets.Dataset`` (cached by ``datasets``),
    then drop pairs longer than ``max_length`` as TRL's RewardTrainer does (filtered, not truncated).

    Already tokenised datasets (``chosen_ids``, ``rejected_ids``, ``prompt_length``) are only filtered.
    """
    import datasets

    column_names = dataset.column_names if dataset.column_names is not None else list(next(iter(dataset)).keys())
    is_processed = check_preference_columns(column_names, name)
    map_kwargs: dict[str, Any] = {}
    if isinstance(dataset, datasets.Dataset):
        map_kwargs["num_proc"] = num_proc
    if not is_processed:
        if isinstance(dataset, datasets.Dataset):
            map_kwargs["desc"] = f"Tokenizing {name}"
        dataset = dataset.map(_tokenize_row, fn_kwargs={"tokenizer": tokenizer}, with_indices=True, **map_kwargs)
    if max_length is not None:
        if isinstance(dataset, datasets.Dataset):
            map_kwargs["desc"] = f"Filtering {name} >{max_length} tokens"
        dataset = dataset.filter(
            lambda ex: len(ex["chosen_ids"]) <= max_length and len(ex["rejected_ids"]) <= max_length, **map_kwargs
        )
    return dataset
