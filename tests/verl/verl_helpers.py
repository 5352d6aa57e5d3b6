"""Small builders of verl data structures shared by the plugin tests."""

from __future__ import annotations

import numpy as np
import torch


def right_padded(rows: list[list[float]], width: int | None = None, dtype=torch.float32):
    """Rows of different lengths -> ``(values (B, T), mask (B, T) float)`` right-padded with 0."""
    width = width or max(len(r) for r in rows)
    values = torch.zeros(len(rows), width, dtype=dtype)
    mask = torch.zeros(len(rows), width, dtype=torch.float32)
    for b, r in enumerate(rows):
        values[b, : len(r)] = torch.tensor(r, dtype=dtype)
        mask[b, : len(r)] = 1.0
    return values, mask


def rollout_batch(prompts: list[list[int]], responses: list[list[int]], *, pad_id: int = 0,
                  prompt_padding: str = "left"):
    """A verl-style ``DataProto`` with ``prompts`` / ``responses`` / ``attention_mask``.

    ``prompt_padding="left"`` is the rollout layout; ``"right"`` is what the v1 trainer's colocated
    reward path rebuilds from nested tensors.
    """
    from verl import DataProto

    p_len, r_len = max(map(len, prompts)), max(map(len, responses))
    bs = len(prompts)
    p_ids = torch.full((bs, p_len), pad_id, dtype=torch.long)
    r_ids = torch.full((bs, r_len), pad_id, dtype=torch.long)
    attn = torch.zeros(bs, p_len + r_len, dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        if prompt_padding == "left":
            p_ids[b, p_len - len(p):] = torch.tensor(p)
            attn[b, p_len - len(p): p_len] = 1
        else:
            p_ids[b, : len(p)] = torch.tensor(p)
            attn[b, : len(p)] = 1
        r_ids[b, : len(r)] = torch.tensor(r)
        attn[b, p_len: p_len + len(r)] = 1
    return DataProto.from_dict(
        tensors={"prompts": p_ids, "responses": r_ids, "attention_mask": attn},
        non_tensors={"uid": np.array([f"u{b}" for b in range(bs)], dtype=object)},
    )
