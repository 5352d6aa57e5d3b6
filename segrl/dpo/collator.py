"""Batch the per-token columns ASR-DPO needs next to TRL's preference batch."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["DataCollatorForASRPreference", "PER_TOKEN_COLUMNS"]

#: (chosen column, rejected column, batch key) of every per-completion-token list column.
PER_TOKEN_COLUMNS = (
    ("chosen_token_rewards", "rejected_token_rewards", "token_rewards"),
    ("ref_chosen_token_logps", "ref_rejected_token_logps", "ref_token_logps"),
)


@dataclass
class DataCollatorForASRPreference:
    """Wrap a preference collator and add per-token columns in the response layout.

    ``base`` is TRL's ``DataCollatorForPreference`` (or any collator emitting the same
    ``input_ids`` / ``attention_mask`` / ``completion_mask`` layout: rows ``[chosen x B; rejected x B]``,
    prompt then completion then right padding). Its output is returned unchanged, plus, when the
    examples carry them:

    - ``token_rewards``: from ``chosen_token_rewards`` / ``rejected_token_rewards``;
    - ``ref_token_logps``: from ``ref_chosen_token_logps`` / ``ref_rejected_token_logps``
      (written by ``ASRDPOTrainer`` when ``precompute_ref_log_probs=True``).

    Each is a float32 tensor of shape ``(2B, R)`` in segrl's response layout (see
    :mod:`segrl.dpo.layout`): entry ``t`` of a row belongs to completion token ``t``, ``R`` is the
    longest completion *after* the base collator's truncation, padding is 0. Truncation is read
    off the base's ``completion_mask``: with ``truncation_mode="keep_start"`` a row keeps the first
    ``n_i`` values of its list, with ``"keep_end"`` the last ``n_i``.
    """

    base: Callable[[list[dict[str, Any]]], dict[str, Any]]
    truncation_mode: str = "keep_start"

    def __post_init__(self):
        if self.truncation_mode not in ("keep_start", "keep_end"):
            raise ValueError(f"`truncation_mode` must be 'keep_start' or 'keep_end', got {self.truncation_mode!r}")

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = self.base(examples)
        present = [cols for cols in PER_TOKEN_COLUMNS if cols[0] in examples[0]]
        if not present:
            return out
        lengths = out["completion_mask"].sum(dim=1).tolist()  # n_i per row, chosen rows then rejected rows
        width = max(lengths, default=0)
        for chosen_col, rejected_col, key in present:
            rows = [ex[chosen_col] for ex in examples] + [ex[rejected_col] for ex in examples]
            names = [chosen_col] * len(examples) + [rejected_col] * len(examples)
            values = torch.zeros(len(rows), width, dtype=torch.float32)
            for i, (row, n, name) in enumerate(zip(rows, lengths, names)):
                kept = self._retained(row, n, name)
                if n:
                    values[i, :n] = torch.as_tensor(kept, dtype=torch.float32)
            out[key] = values
        return out

    def _retained(self, row: Sequence[float], n: int, name: str) -> Sequence[float]:
        # The completion occupies the end of prompt + completion, so "keep_start" truncation keeps
        # the completion's first n tokens and "keep_end" its last n.
        if row is None or len(row) < n:
            raise ValueError(
                f"`{name}` has {0 if row is None else len(row)} values but the batch keeps {n} completion tokens; "
                "per-token columns must have one value per completion token"
            )
        return row[:n] if self.truncation_mode == "keep_start" else row[len(row) - n:]
