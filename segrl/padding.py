"""Lists of token ids (or values) to padded tensors: the one place segrl pads ragged rows.

Built on :func:`torch.nn.utils.rnn.pad_sequence`; adds the attention mask every caller needs and a
minimum width, and rejects an empty batch with a named error instead of torch's opaque one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.nn.utils.rnn import pad_sequence

__all__ = ["pad_rows"]


def pad_rows(rows: Sequence[Sequence], pad_value=0, *, side: str = "right", dtype: torch.dtype = torch.long,
             device=None, width: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ragged rows to one tensor.

    Args:
        rows: ``B`` rows of numbers (lists, tuples or 1-D tensors); rows may be empty.
        pad_value: value written into padding positions.
        side: ``"right"`` (tokens first, padding after) or ``"left"`` (padding first, as for generation).
        dtype: dtype of the values tensor.
        device: device of both tensors.
        width: pad to at least this many columns (default: the longest row).

    Returns:
        ``(values, attention)``: values Shape: (B, W) ``dtype``; attention Shape: (B, W) long, 1 on
        real entries. ``W = max(width or 0, longest row)``.
    """
    if side not in ("right", "left"):
        raise ValueError(f"`side` must be 'right' or 'left', got {side!r}")
    if len(rows) == 0:
        raise ValueError("`rows` must hold at least one row, got an empty batch")
    tensors = [torch.as_tensor(r, dtype=dtype).reshape(-1) for r in rows]
    longest = max(t.numel() for t in tensors)
    target = max(longest, width or 0)
    ones = [torch.ones(t.numel(), dtype=torch.long) for t in tensors]
    if target > longest:
        # pad_sequence pads to the longest row; a wider sentinel row sets the width, then is dropped.
        tensors.append(torch.zeros(target, dtype=dtype))
        ones.append(torch.zeros(target, dtype=torch.long))
    values = pad_sequence(tensors, batch_first=True, padding_value=pad_value, padding_side=side)
    attention = pad_sequence(ones, batch_first=True, padding_value=0, padding_side=side)
    if target > longest:
        values, attention = values[:-1], attention[:-1]
    return values.to(device), attention.to(device)
