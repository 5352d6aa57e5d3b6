"""Pairwise (RewardBench-style) accuracy of a segment RM on held-out preference pairs.

A pair is correct when ``score(chosen) > score(rejected)`` (ties count as wrong), with the score the
training one: the mean segment reward (SPEC §2; for ``c = inf`` the value at EOS).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch

from segrl.rm.data import tokenize_preference_dataset
from segrl.rm.model import SegmentedResponses, SegmentRewardModel

__all__ = ["evaluate_pairwise", "iter_scored_pairs", "prepare_pairs"]


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
    return SegmentedResponses(*(getattr(seg, f)[rows] for f in
                                ("values", "entropy", "mask", "segment_ids", "seg_rewards", "seg_valid", "scores")))


def evaluate_pairwise(rm: SegmentRewardModel, dataset, *, batch_size: int = 8, max_pairs: int | None = None,
                      max_length: int | None = None, output_json: str | Path | None = None,
                      progress: bool = True) -> dict:
    """Pairwise accuracy of ``rm`` on a preference dataset (TRL format, standard or conversational).

    Returns a dict: ``accuracy`` (chosen > rejected, ties wrong), ``n_pairs``, ``n_ties``,
    ``n_filtered`` (pairs over ``max_length``), mean chosen / rejected scores and margin,
    ``segments_per_response``, ``mean_segment_length``, the RM's ``threshold`` (``"inf"`` for
    bandit) and ``reference_model``. Written as JSON to ``output_json`` if given.
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
    if output_json is not None:
        path = Path(output_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result
