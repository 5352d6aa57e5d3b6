"""Evaluation of reward sources: pairwise accuracy of a segment RM, and token credit on labelled data.

- :func:`evaluate_pairwise`: a pair is correct when ``score(chosen) > score(rejected)`` (ties count
  as wrong), with the score the training one: the mean segment reward (docs/method.md#segment-rm;
  for ``c = inf`` the value at EOS).
- :func:`evaluate_credit`: the token-credit metrics of :mod:`segrl.credit` (docs/method.md#token-credit)
  of any token-reward source (a segment / token / bandit RM, the implicit DPO reward of a policy and
  its reference, dataset columns) on data carrying token labels in one of these forms:

  - ``"columns"``: one label per response token, ``chosen_token_labels`` / ``rejected_token_labels``
    (or ``token_labels`` next to a ``completion``); the built-in task's oracle columns
    ``chosen_token_rewards`` / ``rejected_token_rewards`` (values in {-1, 0, +1}) are found too;
  - ``"steps"``: TRL's stepwise supervision (``prompt``, ``completions`` = list of step strings,
    ``labels`` = one bool per step; PRM800K / Math-Shepherd, TRL's PRM trainer), the steps joined by
    ``step_separator`` and each step's label put on the tokens of its characters;
  - ``"spans"``: ``chosen_label_spans`` / ``rejected_label_spans`` (or ``label_spans`` next to a
    ``completion``): ``[start, end, label]`` character spans of the response text, label
    true / false or +1 / -1, mapped to tokens through the tokenizer's offsets;
  - ``"arith"``: the built-in task's oracle recomputed from the text (:func:`segrl.tasks.char_rewards`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from segrl.rm.data import tokenize_preference_dataset
from segrl.rm.model import SegmentedResponses, SegmentRewardModel

__all__ = ["CREDIT_LABELS", "CreditData", "credit_data", "detect_label_format", "evaluate_credit",
           "evaluate_pairwise", "iter_scored_pairs", "prepare_pairs"]


def prepare_pairs(rm: SegmentRewardModel, dataset, *, max_pairs: int | None = None, max_length: int | None = None,
                  shuffle_seed: int | None = None):
    """Tokenise a preference dataset as training does; optionally shuffle and keep ``max_pairs``.

    Returns ``(tokenised_dataset, n_filtered)``, ``n_filtered`` the pairs dropped for ``max_length``.
    """
    if max_pairs is not None and max_pairs < 1:
        raise ValueError(f"`max_pairs` must be >= 1, got {max_pairs}")
    if shuffle_seed is not None:
        dataset = dataset.shuffle(seed=shuffle_seed)
    if max_pairs is not None:
        dataset = dataset.select(range(min(max_pairs, len(dataset))))
    n_before = len(dataset)
    tokenized = tokenize_preference_dataset(dataset, rm.tokenizer, max_length=max_length, name="preference pairs")
    if len(tokenized) == 0:
        raise ValueError("no preference pair left to score (all longer than `max_length`?)")
    return tokenized, n_before - len(tokenized)


def iter_scored_pairs(rm: SegmentRewardModel, tokenized, *, batch_size: int = 8, chunk_pairs: int = 256,
                      progress: bool = True,
                      desc: str = "Scoring pairs") -> Iterator[tuple[SegmentedResponses, SegmentedResponses]]:
    """Score chosen and rejected responses chunk by chunk; yields ``(chosen, rejected)`` per chunk.

    Chunks bound memory (each chunk's tensors are padded to its own longest response).
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=len(tokenized), desc=desc, unit="pair", disable=not progress)
    try:
        for lo in range(0, len(tokenized), chunk_pairs):
            chunk = tokenized[lo : lo + chunk_pairs]
            plens = chunk["prompt_length"]
            prompts, responses = [], []
            for key in ("chosen_ids", "rejected_ids"):
                for ids, p in zip(chunk[key], plens):
                    prompts.append(list(ids[:p]))
                    responses.append(list(ids[p:]))
            seg = rm.segment_token_ids(prompts, responses, batch_size=batch_size)
            n = len(plens)
            yield _rows(seg, slice(0, n)), _rows(seg, slice(n, 2 * n))
            bar.update(n)
    finally:
        bar.close()


def _rows(seg: SegmentedResponses, rows: slice) -> SegmentedResponses:
    from dataclasses import fields

    return SegmentedResponses(**{f.name: (None if getattr(seg, f.name) is None else getattr(seg, f.name)[rows])
                                 for f in fields(seg) if f.init})


def evaluate_pairwise(rm: SegmentRewardModel, dataset, *, batch_size: int = 8, max_pairs: int | None = None,
                      max_length: int | None = None, output_json: str | Path | None = None,
                      progress: bool = True, credit_labels: str = "auto",
                      label_columns: Sequence[str] | None = None) -> dict:
    """Pairwise accuracy of ``rm`` on a preference dataset (TRL format, standard or conversational).

    Returns a dict: ``accuracy`` (chosen > rejected, ties wrong), ``n_pairs``, ``n_ties``,
    ``n_filtered`` (pairs over ``max_length``), mean chosen / rejected scores and margin,
    ``segments_per_response``, ``mean_segment_length``, the RM's ``threshold`` (``"inf"`` for
    bandit) and ``reference_model``; plus ``credit`` (:func:`evaluate_credit` of the RM's token
    rewards) when the data carries token labels (``credit_labels``: see :data:`CREDIT_LABELS`).
    Written as JSON to ``output_json`` if given.
    """
    tokenized, n_filtered = prepare_pairs(rm, dataset, max_pairs=max_pairs, max_length=max_length)
    chosen, rejected, n_segments, n_seg_tokens = [], [], 0, 0
    for ch, rj in iter_scored_pairs(rm, tokenized, batch_size=batch_size, progress=progress, desc="Evaluating"):
        chosen.append(ch.scores)
        rejected.append(rj.scores)
        for side in (ch, rj):
            n_segments += int(side.seg_valid.sum())
            n_seg_tokens += int((side.segment_ids >= 0).sum())
    s_w, s_l = torch.cat(chosen).double(), torch.cat(rejected).double()
    n = s_w.numel()
    result = {
        "accuracy": float((s_w > s_l).double().mean()),
        "n_pairs": n,
        "n_correct": int((s_w > s_l).sum()),
        "n_ties": int((s_w == s_l).sum()),
        "n_filtered": n_filtered,
        "mean_chosen_score": float(s_w.mean()),
        "mean_rejected_score": float(s_l.mean()),
        "mean_margin": float((s_w - s_l).mean()),
        "segments_per_response": n_segments / (2 * n),
        "mean_segment_length": n_seg_tokens / max(n_segments, 1),
        "threshold": "inf" if math.isinf(rm.threshold) else rm.threshold,
        "reference_model": rm.reference_model,
    }
    credit = evaluate_credit(rm, dataset, labels=credit_labels, label_columns=label_columns, max_rows=max_pairs,
                             batch_size=batch_size)
    if credit is not None:
        result["credit"] = credit
    if output_json is not None:
        path = Path(output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


# --------------------------------------------------------------------------------------------------
# Token credit on labelled data
# --------------------------------------------------------------------------------------------------

#: Label formats :func:`evaluate_credit` reads (``"auto"`` detects one, ``"none"`` skips credit).
CREDIT_LABELS = ("auto", "columns", "steps", "spans", "arith", "none")
_ORACLE_COLUMNS = ("chosen_token_rewards", "rejected_token_rewards")


@dataclass
class CreditData:
    """Labelled responses, tokenised as TRL's trainers do (prompt + response jointly, EOS appended).

    Attributes:
        prompt_ids, response_ids: token ids per response (the response ids include EOS).
        labels, unit_ids: per response token: +1 / -1 / 0, and the labelled unit (step, span or run)
            or -1.
        side: +1 chosen / -1 rejected / 0 (single-response data) per response.
        row: the dataset row of each response.
        label_format: the format read (one of :data:`CREDIT_LABELS` but ``"auto"`` / ``"none"``).
        label_columns: the columns the labels came from.
    """

    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    labels: list[list[int]]
    unit_ids: list[list[int]]
    side: list[int]
    row: list[int]
    label_format: str
    label_columns: tuple[str, ...]


def _is_ternary(rows, columns) -> bool:
    for r in rows:
        for c in columns:
            values = r.get(c)
            if not isinstance(values, list) or any(isinstance(v, (list, dict, str)) or v not in (-1, 0, 1)
                                                   for v in values):
                return False
    return True


def detect_label_format(column_names: Sequence[str],
                        head_rows: Sequence[dict] = ()) -> tuple[str, tuple[str, ...]] | None:
    """``(label_format, label_columns)`` of a dataset, or ``None`` when it carries no token labels.

    Pairs (``chosen`` / ``rejected``): ``*_token_labels`` columns, then ``*_label_spans``, then the
    built-in task's oracle ``*_token_rewards`` columns if ``head_rows`` show only -1 / 0 / +1 in them.
    Single responses: TRL's stepwise ``completions`` + ``labels``; ``completion`` + ``token_labels`` or
    ``label_spans``.
    """
    cols = set(column_names)
    if {"completions", "labels"} <= cols:
        return "steps", ("labels",)
    if {"chosen", "rejected"} <= cols:
        if {"chosen_token_labels", "rejected_token_labels"} <= cols:
            return "columns", ("chosen_token_labels", "rejected_token_labels")
        if {"chosen_label_spans", "rejected_label_spans"} <= cols:
            return "spans", ("chosen_label_spans", "rejected_label_spans")
        if set(_ORACLE_COLUMNS) <= cols and head_rows and _is_ternary(head_rows, _ORACLE_COLUMNS):
            return "columns", _ORACLE_COLUMNS
        return None
    if "completion" in cols:
        if "token_labels" in cols:
            return "columns", ("token_labels",)
        if "label_spans" in cols:
            return "spans", ("label_spans",)
    return None


def _responses(dataset, fmt: str, label_columns, step_separator: str):
    """``(prompt, response, side, row, label_source)`` per response; ``label_source`` is a value list
    (columns), a span list (spans / steps / arith) tagged by ``kind``."""
    from segrl.tasks import char_rewards

    cols = set(dataset.column_names)
    pairs = {"chosen", "rejected"} <= cols
    for i, ex in enumerate(dataset):
        prompt = ex.get("prompt") or ""
        if fmt == "steps":
            text, spans = _steps(ex, step_separator, i)
            yield prompt, text, 0, i, ("spans", spans, "labels")
            continue
        sides = (("chosen", 1), ("rejected", -1)) if pairs else (("completion", 0),)
        for k, (key, sign) in enumerate(sides):
            response = ex[key]
            if fmt == "arith":
                values = char_rewards(prompt, response)
                spans = _runs_to_spans(values)
                yield prompt, response, sign, i, ("spans", spans, "arith oracle")
            else:
                column = label_columns[k] if len(label_columns) > k else label_columns[0]
                yield prompt, response, sign, i, (fmt, ex.get(column), column)


def _steps(ex, separator: str, row: int):
    from segrl.credit import steps_to_spans

    return steps_to_spans(ex["completions"], ex["labels"], separator, column="labels", row=row)


def _runs_to_spans(values: Sequence[float]) -> list[list]:
    """Character spans of maximal runs of one non-zero value (the arith oracle's result digits)."""
    spans, start = [], None
    for j, v in enumerate(list(values) + [0.0]):
        if start is not None and v != values[start]:
            spans.append([start, j, 1 if values[start] > 0 else -1])
            start = None
        if start is None and v != 0 and j < len(values):
            start = j
    return spans


def _response_offsets(tokenizer, prompt: str, response: str, prompt_len: int, full_ids: list[int], row: int):
    """Character ranges of the response tokens in the response text (TRL's joint tokenisation)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("span / step labels need a fast tokenizer (offset mappings)")
    eos = tokenizer.eos_token or ""
    text = prompt + response + ("" if response.endswith(eos) else eos)
    enc = tokenizer(text=text, return_offsets_mapping=True)
    if list(enc["input_ids"]) != list(full_ids):
        raise ValueError(f"row {row}: the tokenizer's offsets do not reproduce the training tokenisation; span / step "
                         "labels need plain-text prompts and responses")
    return [(a - len(prompt), b - len(prompt)) for a, b in enc["offset_mapping"][prompt_len:]]


def credit_data(dataset, tokenizer, *, labels: str = "auto", label_columns: Sequence[str] | None = None,
                step_separator: str = "\n", max_rows: int | None = None) -> CreditData | None:
    """Labelled responses of ``dataset`` (a ``datasets.Dataset`` or a list of dicts) as token lists.

    ``labels`` is one of :data:`CREDIT_LABELS`; ``"auto"`` returns ``None`` when the data carries no
    labels, an explicit format raises ``ValueError`` when its columns are missing.
    """
    from datasets import Dataset
    from trl.data_utils import common_prefix_length

    from segrl.credit import labels_from_values, span_token_labels, unit_ids_from_labels
    from segrl.rm.data import tokenize_completion

    if labels not in CREDIT_LABELS:
        raise ValueError(f"`credit_labels` must be one of {CREDIT_LABELS}, got {labels!r}")
    if labels == "none":
        return None
    if isinstance(dataset, (list, tuple)):
        dataset = Dataset.from_list(list(dataset))
    if max_rows is not None:
        dataset = dataset.select(range(min(max_rows, len(dataset))))
    cols = list(dataset.column_names)
    detected = detect_label_format(cols, [dataset[i] for i in range(min(50, len(dataset)))])
    if labels == "auto":
        if detected is None:
            return None
        fmt, columns = detected
    else:
        fmt = labels
        pairs = {"chosen", "rejected"} <= set(cols)
        defaults = {"columns": ("chosen_token_labels", "rejected_token_labels") if pairs else ("token_labels",),
                    "spans": ("chosen_label_spans", "rejected_label_spans") if pairs else ("label_spans",),
                    "steps": ("labels",), "arith": ()}
        columns = tuple(label_columns) if label_columns else (
            detected[1] if detected is not None and detected[0] == fmt else defaults[fmt])
        needed = (["completions", "labels"] if fmt == "steps" else
                  [] if fmt == "arith" else list(columns))
        if not pairs and fmt != "steps":
            needed.append("completion")
        missing = [c for c in needed if c not in cols]
        if missing:
            raise ValueError(f"`credit_labels={fmt!r}` needs column(s) {missing}; the data has {sorted(cols)}")
    if label_columns and labels == "auto":
        columns = tuple(label_columns)
    out = CreditData([], [], [], [], [], [], fmt, tuple(columns))
    eos_id = tokenizer.eos_token_id
    for prompt, response, sign, i, (kind, source, column) in _responses(dataset, fmt, columns, step_separator):
        if not isinstance(response, str) or not response:
            raise ValueError(f"row {i}: the response must be a non-empty string for token-credit labels")
        p_ids, full = tokenize_completion(tokenizer, prompt, response)
        cut = common_prefix_length(p_ids, full)
        r_ids = full[cut:]
        if not r_ids:
            raise ValueError(f"row {i}: the response tokenises to no response tokens")
        if kind == "columns":
            lab = labels_from_values(source, len(r_ids), ends_with_eos=r_ids[-1] == eos_id, column=column, row=i)
            units = unit_ids_from_labels(torch.tensor([lab], dtype=torch.long))[0].tolist()
        else:
            offsets = _response_offsets(tokenizer, prompt, response, cut, full, i)
            lab, units = span_token_labels(offsets, source, column=column, row=i)
        out.prompt_ids.append(p_ids[:cut])
        out.response_ids.append(r_ids)
        out.labels.append(lab)
        out.unit_ids.append(units)
        out.side.append(sign)
        out.row.append(i)
    return out


def evaluate_credit(source, dataset, tokenizer=None, *, labels: str = "auto",
                    label_columns: Sequence[str] | None = None, reward_columns: Sequence[str] | None = None,
                    step_separator: str = "\n", max_rows: int | None = None, batch_size: int = 64,
                    normalize: bool | None = None, output_json: str | Path | None = None) -> dict | None:
    """Token-credit metrics (:func:`segrl.credit.credit_metrics`) of a token-reward source on labelled data.

    Args:
        source: a :class:`~segrl.rm.SegmentRewardModel` (spread token rewards, normalised when it has a
            fitted normaliser), any callable ``(prompt_ids, response_ids) -> list[list[float]]`` such as
            :class:`segrl.token_rewards.ImplicitTokenRewards`, or ``"columns"``: rewards read from
            ``reward_columns`` of the data (default ``chosen_token_rewards`` / ``rejected_token_rewards``,
            or ``token_rewards`` for single responses; one float per response token as TRL tokenises it).
        dataset: preference pairs, TRL stepwise-supervision rows, or ``prompt`` / ``completion`` rows.
        tokenizer: the source's tokenizer (default: ``source.tokenizer``).
        normalize: for a reward model, apply its location normaliser (default: when it has one).
        labels: the label format, one of :data:`CREDIT_LABELS` (see the module docstring).
        label_columns: override the label columns of the format.

    Returns:
        The metrics plus ``label_format``, ``label_columns``, ``n_rows``; ``None`` when ``labels="auto"``
        finds no labels. Written as JSON to ``output_json`` if given.
    """
    from segrl.credit import credit_metrics, pad_lists
    from segrl.token_rewards import align_token_rewards

    tokenizer = tokenizer if tokenizer is not None else getattr(source, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("`tokenizer` is needed to tokenise the responses (the source has none)")
    data = credit_data(dataset, tokenizer, labels=labels, label_columns=label_columns,
                       step_separator=step_separator, max_rows=max_rows)
    if data is None:
        return None
    if not data.response_ids:
        raise ValueError("no labelled response to evaluate")
    if isinstance(source, str):
        if source != "columns":
            raise ValueError(f"`source` must be a reward model, a callable or 'columns', got {source!r}")
        rows = dataset if isinstance(dataset, (list, tuple)) else None
        pairs = any(s != 0 for s in data.side)
        cols = tuple(reward_columns) if reward_columns else (
            ("chosen_token_rewards", "rejected_token_rewards") if pairs else ("token_rewards",))
        rewards = []
        for r_ids, sign, i in zip(data.response_ids, data.side, data.row):
            ex = rows[i] if rows is not None else dataset[i]
            column = cols[0] if sign >= 0 else cols[-1]
            if column not in ex:
                raise ValueError(f"`token_reward_source='columns'` needs a `{column}` column")
            rewards.append(align_token_rewards(ex[column], r_ids, eos_token_id=tokenizer.eos_token_id, column=column,
                                               row=i))
        source_name = f"columns {list(cols)}"
    else:
        if hasattr(source, "score_token_ids"):
            rm = source
            norm = getattr(rm, "normalizer", None) is not None if normalize is None else normalize
            source_name = f"reward model (c = {getattr(rm, 'threshold', '?')}, {'normalised' if norm else 'raw'})"

            def source(prompt_ids, response_ids):
                values, mask = rm.score_token_ids(prompt_ids, response_ids, normalize=norm, batch_size=batch_size)
                return [values[b, : int(mask[b].sum())].tolist() for b in range(len(response_ids))]
        elif callable(source):
            source_name = type(source).__name__
        else:
            raise ValueError(f"`source` must be a reward model, a callable or 'columns', got {type(source).__name__}")
        rewards = []
        for lo in range(0, len(data.response_ids), batch_size):
            hi = lo + batch_size
            rewards += source(data.prompt_ids[lo:hi], data.response_ids[lo:hi])
    for i, (r, lab) in enumerate(zip(rewards, data.labels)):
        if len(r) != len(lab):
            raise ValueError(f"the source gave {len(r)} rewards for response {i} of {len(lab)} tokens")
    values, mask = pad_lists(rewards)
    lab, _ = pad_lists(data.labels, dtype=torch.long)
    units, _ = pad_lists(data.unit_ids, dtype=torch.long, fill=-1)
    side = torch.tensor(data.side) if any(s != 0 for s in data.side) else None
    result = credit_metrics(values, lab, mask, side=side, unit_ids=units)
    result.update(label_format=data.label_format, label_columns=list(data.label_columns),
                  n_rows=len(set(data.row)), source=source_name)
    if output_json is not None:
        path = Path(output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result
