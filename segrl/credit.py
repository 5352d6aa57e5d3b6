"""Token credit of a reward source: does its token reward point at the right tokens?

Definitions (docs/method.md#token-credit). A response carries token labels ``y_t``: ``+1`` correct,
``-1`` wrong, ``0`` unlabelled (ignored). Given token rewards ``r_t`` of any source (a segment /
token / bandit RM, the implicit DPO reward, dataset columns):

- **within-response credit AUC** (``auc_within_response``): the ROC AUC of "``r_t - mean_t'(r_t')``
  predicts ``y_t = +1``", pooled over the labelled tokens of every response. The mean runs over
  all valid tokens of the response (EOS included), the tokens a sequence-mean ASR baseline averages.
  0.5: the source only ranks whole responses (a bandit RM's constant rewards score exactly 0.5);
  1.0: perfect localisation.
- **pooled AUC** (``auc``): the same on raw ``r_t``; a response-level score alone lifts it above 0.5.
- **per side** (``*_chosen`` / ``*_rejected``): both AUCs over the chosen (``side = +1``) or the
  rejected (``side = -1``) responses only.
- **first-error localisation** (``first_error_hit_rate``): a response's labelled *units* (steps,
  spans, or runs of equal non-zero token labels) are ordered; unit ``k`` *owns* the tokens after
  the last token of unit ``k-1`` up to its own last token (so a step's operands belong to it even when
  only its result digits are labelled). The *largest drop* is ``t* = argmin_t (r_t - r_{t-1})`` over
  ``1 <= t <= `` the last labelled token (ties: the first). A response counts as a hit when
  ``r_{t*} - r_{t*-1} < 0`` (no drop at all is a miss) and ``t*`` lies in the tokens owned by its
  first wrong unit. Only responses with a wrong unit and a candidate ``t`` count
  (``first_error_n``); ``first_error_chance`` is the mean share of candidate positions the first
  wrong unit owns, the hit rate of a drop placed uniformly at random.

Everything here is pure (tensors in, numbers out) apart from the label converters at the bottom,
which map step labels (TRL's stepwise-supervision format) and character spans onto tokens through a
fast tokenizer's offsets.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from segrl.padding import pad_rows

__all__ = [
    "centered_rewards",
    "credit_metrics",
    "first_error_localization",
    "labels_from_values",
    "pad_lists",
    "roc_auc",
    "span_token_labels",
    "steps_to_spans",
    "unit_ids_from_labels",
]


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Exact ROC AUC of ``scores`` for ``labels > 0`` vs ``labels <= 0`` (Mann-Whitney, ties count 1/2).

    Equals ``sklearn.metrics.roc_auc_score(labels > 0, scores)``. ``None`` when one class is absent.

    Args:
        scores: Shape: (N,), float.
        labels: Shape: (N,), any numeric / bool; positive means the positive class.
    """
    scores = torch.as_tensor(scores).reshape(-1).double()
    pos = torch.as_tensor(labels).reshape(-1) > 0
    if scores.shape != pos.shape:
        raise ValueError(f"`scores` has {scores.numel()} values but `labels` has {pos.numel()}")
    n_pos = int(pos.sum())
    n_neg = pos.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    # Average (1-based) rank of every distinct value: its run in sorted order spans ranks start+1 .. end.
    _, inverse, counts = torch.unique(scores, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    ranks = (ends - (counts.double() - 1) / 2)[inverse]
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def centered_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``r_t`` minus the mean of its row's valid tokens; 0 outside ``mask``.

    Shape: (B, T) in, (B, T) float64 out.
    """
    mask = mask.bool()
    r = torch.where(mask, rewards.double(), 0.0)
    mean = r.sum(dim=1, keepdim=True) / mask.sum(dim=1, keepdim=True).clamp(min=1)
    return torch.where(mask, r - mean, 0.0)


def unit_ids_from_labels(labels: torch.Tensor) -> torch.Tensor:
    """Units of token labels: maximal runs of one non-zero label, numbered ``0..K-1`` per row, ``-1`` on
    unlabelled tokens (the built-in task's oracle labels each step's result digits: one unit per step).

    Shape: (B, T) in, (B, T) long out.
    """
    labels = labels.long()
    prev = torch.nn.functional.pad(labels[:, :-1], (1, 0))
    starts = (labels != 0) & (labels != prev)
    ids = starts.long().cumsum(dim=1) - 1
    return torch.where(labels != 0, ids, -1)


def first_error_localization(rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor,
                             unit_ids: torch.Tensor | None = None) -> dict:
    """How often the largest drop of a response lands on its first wrong unit (module docstring).

    Args:
        rewards: token rewards. Shape: (B, T).
        labels: +1 / -1 / 0 per token. Shape: (B, T).
        mask: valid response tokens. Shape: (B, T).
        unit_ids: labelled unit of each token, ids increasing along the response, ``-1`` outside
            (default: :func:`unit_ids_from_labels`). Shape: (B, T).

    Returns:
        ``{"first_error_hit_rate", "first_error_chance", "first_error_n", "hit"}``: rates are
        ``None`` when no response counts; ``hit`` is a (B,) bool tensor (False for rows not counted)
        and ``counted`` a (B,) bool tensor.
    """
    mask = mask.bool()
    labels = torch.where(mask, labels.long(), 0)
    units = unit_ids_from_labels(labels) if unit_ids is None else torch.where(labels != 0, unit_ids.long(), -1)
    B, T = labels.shape
    t = torch.arange(T, device=labels.device).expand(B, T)
    big = torch.iinfo(torch.long).max
    wrong = (labels < 0) & (units >= 0)
    first_wrong = torch.where(wrong, units, big).amin(dim=1) if T else torch.full((B,), big)
    has_wrong = first_wrong < big
    k = first_wrong[:, None]
    end_prev = torch.where((units >= 0) & (units < k), t, -1).amax(dim=1) if T else torch.full((B,), -1)
    end_first = torch.where(units == k, t, -1).amax(dim=1) if T else torch.full((B,), -1)
    end_last = torch.where(units >= 0, t, -1).amax(dim=1) if T else torch.full((B,), -1)
    r = rewards.double()
    drop = r - torch.nn.functional.pad(r[:, :-1], (1, 0))
    candidate = mask & (t >= 1) & (t <= end_last[:, None])
    n_cand = candidate.sum(dim=1)
    counted = has_wrong & (n_cand > 0)
    masked_drop = torch.where(candidate, drop, float("inf"))
    t_star = masked_drop.argmin(dim=1) if T else torch.zeros(B, dtype=torch.long)
    d_star = masked_drop.gather(1, t_star[:, None]).squeeze(1) if T else torch.zeros(B)
    owned = (t > end_prev[:, None]) & (t <= end_first[:, None])
    hit = counted & (d_star < 0) & (t_star > end_prev) & (t_star <= end_first)
    share = (owned & candidate).sum(dim=1).double() / n_cand.clamp(min=1)
    n = int(counted.sum())
    return {
        "first_error_hit_rate": float(hit.sum()) / n if n else None,
        "first_error_chance": float(share[counted].mean()) if n else None,
        "first_error_n": n,
        "hit": hit,
        "counted": counted,
    }


def credit_metrics(rewards: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, *,
                   side: torch.Tensor | None = None, unit_ids: torch.Tensor | None = None) -> dict:
    """Every token-credit number of a reward source on labelled responses (module docstring).

    Args:
        rewards: token rewards of any source. Shape: (B, T), float.
        labels: +1 correct / -1 wrong / 0 unlabelled. Shape: (B, T).
        mask: valid response tokens (right-padded). Shape: (B, T), bool.
        side: +1 chosen / -1 rejected / 0 neither per row, for the per-side numbers. Shape: (B,).
        unit_ids: labelled units for first-error localisation (see :func:`first_error_localization`).
            Shape: (B, T).

    Returns:
        A flat dict of plain numbers: ``auc_within_response``, ``auc``, ``n_correct``, ``n_wrong``,
        ``n_responses``, the ``first_error_*`` numbers and, with ``side``, ``auc_chosen``,
        ``auc_within_response_chosen``, ``n_chosen_correct``, ``n_chosen_wrong`` and the same for
        ``rejected``. AUCs are ``None`` where a class is missing.
    """
    if rewards.shape != labels.shape or rewards.shape != mask.shape:
        raise ValueError(f"`rewards` {tuple(rewards.shape)}, `labels` {tuple(labels.shape)} and `mask` "
                         f"{tuple(mask.shape)} must have the same (B, T) shape")
    if not torch.isfinite(rewards[mask.bool()]).all():
        raise ValueError("`rewards` has a NaN or inf on a valid token")
    mask = mask.bool()
    labels = labels.long()
    if ((labels.abs() > 1) & mask).any():
        raise ValueError("`labels` must be +1 (correct), -1 (wrong) or 0 (unlabelled)")
    labelled = mask & (labels != 0)
    centred = centered_rewards(rewards, mask)
    raw = rewards.double()

    def block(rows: torch.Tensor, suffix: str) -> dict:
        sel = labelled & rows[:, None]
        y = labels[sel]
        return {f"auc_within_response{suffix}": roc_auc(centred[sel], y), f"auc{suffix}": roc_auc(raw[sel], y),
                f"n{suffix}_correct": int((y > 0).sum()), f"n{suffix}_wrong": int((y < 0).sum())}

    everyone = torch.ones(mask.shape[0], dtype=torch.bool, device=mask.device)
    out = block(everyone, "")
    out["n_responses"] = int(labelled.any(dim=1).sum())
    loc = first_error_localization(rewards, labels, mask, unit_ids)
    out.update({k: v for k, v in loc.items() if k.startswith("first_error")})
    if side is not None:
        side = torch.as_tensor(side, device=mask.device).reshape(-1)
        if side.numel() != mask.shape[0]:
            raise ValueError(f"`side` has {side.numel()} entries but there are {mask.shape[0]} rows")
        for name, sign in (("chosen", 1), ("rejected", -1)):
            out.update(block(side == sign, f"_{name}"))
            rows = loc["counted"] & (side == sign)
            n = int(rows.sum())
            out[f"first_error_hit_rate_{name}"] = float((loc["hit"] & rows).sum()) / n if n else None
    return out


# --------------------------------------------------------------------------------------------------
# Labels: from lists, step labels and character spans to (B, T) tensors
# --------------------------------------------------------------------------------------------------


def pad_lists(lists: Sequence[Sequence[float]], *, dtype=torch.float32, fill=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad per-response lists into ``(values, mask)``. Shape: (B, T) each (``T >= 1``)."""
    if len(lists) == 0:
        return torch.full((0, 1), fill, dtype=dtype), torch.zeros((0, 1), dtype=torch.bool)
    values, mask = pad_rows([list(x) for x in lists], fill, dtype=dtype, width=1)
    return values, mask.bool()


def labels_from_values(values: Sequence, n_tokens: int, *, ends_with_eos: bool, column: str, row: int) -> list[int]:
    """Token labels from a label column (or the built-in task's oracle ``*_token_rewards`` columns).

    One value per completion token as TRL tokenises it (or one fewer: EOS, which TRL appends, is then
    unlabelled); each value's sign is the label (``0`` unlabelled, ``True`` / ``False`` are ``+1`` / ``-1``).
    Raises ``ValueError`` naming ``column`` and ``row`` on a wrong length or a non-number.
    """
    if values is None or isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise ValueError(f"`{column}` in row {row} must be a list of token labels, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool):
            out.append(1 if v else -1)
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"`{column}` in row {row} must contain only numbers or bools, got {v!r}") from None
        if f != f:
            raise ValueError(f"`{column}` in row {row} has a NaN")
        out.append((f > 0) - (f < 0))
    if len(out) == n_tokens:
        return out
    if ends_with_eos and len(out) == n_tokens - 1:
        return out + [0]
    raise ValueError(f"`{column}` in row {row} has {len(out)} values but the response has {n_tokens} tokens "
                     f"(EOS included); expected one label per token")


def _span_label(value, column: str, row: int) -> int:
    if isinstance(value, bool):
        return 1 if value else -1
    if isinstance(value, (int, float)) and value in (1, -1):
        return int(value)
    raise ValueError(f"`{column}` in row {row}: a span's label must be true / false or +1 / -1, got {value!r}")


def steps_to_spans(steps: Sequence[str], step_labels: Sequence, separator: str = "\n", *, column: str = "labels",
                   row: int = 0) -> tuple[str, list[tuple[int, int, int]]]:
    """TRL's stepwise supervision (``completions`` = steps, ``labels`` = one bool per step) as one
    response text, the steps joined by ``separator``, and one ``(start, end, ±1)`` span per step
    (the step's own characters)."""
    if isinstance(steps, str) or not isinstance(steps, Sequence) or not steps:
        raise ValueError(f"`completions` in row {row} must be a non-empty list of step strings")
    if isinstance(step_labels, str) or not isinstance(step_labels, Sequence) or len(step_labels) != len(steps):
        n = len(step_labels) if isinstance(step_labels, Sequence) else type(step_labels).__name__
        raise ValueError(f"`{column}` in row {row} must have one label per step ({len(steps)}), got {n}")
    spans, pos, parts = [], 0, []
    for k, (step, label) in enumerate(zip(steps, step_labels)):
        if not isinstance(step, str):
            raise ValueError(f"`completions` in row {row}: step {k} must be a str, got {type(step).__name__}")
        if k:
            parts.append(separator)
            pos += len(separator)
        spans.append((pos, pos + len(step), _span_label(label, column, row)))
        parts.append(step)
        pos += len(step)
    return "".join(parts), spans


def span_token_labels(offsets: Sequence[tuple[int, int]], spans: Sequence, *, column: str = "label_spans",
                      row: int = 0) -> tuple[list[int], list[int]]:
    """Map character spans ``[start, end, label]`` of a response onto its tokens.

    ``offsets`` are the response tokens' character ranges in the response text (``(0, 0)`` or
    ranges past the text for EOS / special tokens). A token overlapping a span takes its label; a
    token overlapping several takes the wrong one if any (blame wins), else the first. Returns
    ``(labels, unit_ids)`` per token: ``+1`` / ``-1`` / ``0``, and the span index (spans sorted by
    start) or ``-1``.
    """
    if isinstance(spans, (str, bytes)) or not isinstance(spans, Sequence):
        raise ValueError(f"`{column}` in row {row} must be a list of [start, end, label], got {type(spans).__name__}")
    parsed = []
    for s in spans:
        if isinstance(s, (str, bytes)) or not isinstance(s, Sequence) or len(s) != 3:
            raise ValueError(f"`{column}` in row {row}: each span must be [start, end, label], got {s!r}")
        start, end, label = s
        if isinstance(start, bool) or isinstance(end, bool) or not isinstance(start, int) or not isinstance(end, int) \
                or not 0 <= start < end:
            raise ValueError(f"`{column}` in row {row}: span {list(s)!r} needs integer 0 <= start < end")
        parsed.append((start, end, _span_label(label, column, row)))
    parsed.sort(key=lambda s: (s[0], s[1]))
    labels, units = [], []
    for a, b in offsets:
        hits = [(k, lab) for k, (s, e, lab) in enumerate(parsed) if a < e and b > s and b > a]
        wrong = [h for h in hits if h[1] < 0]
        pick = wrong[0] if wrong else (hits[0] if hits else (-1, 0))
        units.append(pick[0])
        labels.append(pick[1])
    return labels, units
