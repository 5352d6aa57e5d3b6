"""Input validation shared by the core ops.

Every check raises ``ValueError`` naming the offending argument, so a user who passes a wrong
tensor sees which one and what was expected instead of a broadcasting error three calls deeper.
"""

from __future__ import annotations

import math

import torch


def as_mask(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Return ``mask`` as a 2-D right-padded bool tensor, or raise ``ValueError``."""
    if not isinstance(mask, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor of shape (B, T), got {type(mask).__name__}")
    if mask.dim() != 2:
        raise ValueError(f"`{name}` must have shape (B, T), got shape {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        if not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"`{name}` must be boolean (or 0/1), got values outside {{0, 1}}")
        mask = mask.bool()
    check_right_padded(mask, name)
    return mask


def check_right_padded(mask: torch.Tensor, name: str) -> None:
    # Right-padded means no True after a False in a row: a valid token never follows padding.
    if mask.shape[1] > 1 and bool((mask[:, 1:] > mask[:, :-1]).any()):
        raise ValueError(f"`{name}` must be right-padded (True tokens first, then False padding in every row)")


def check_same_shape(tensor: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if not isinstance(tensor, torch.Tensor):
        raise ValueError(f"`{name}` must be a torch.Tensor, got {type(tensor).__name__}")
    if tuple(tensor.shape) != tuple(ref.shape):
        raise ValueError(
            f"`{name}` has shape {tuple(tensor.shape)} but `{ref_name}` has shape {tuple(ref.shape)}; they must match"
        )
    if tensor.device != ref.device:
        raise ValueError(f"`{name}` is on {tensor.device} but `{ref_name}` is on {ref.device}")


def check_finite_where(values: torch.Tensor, where: torch.Tensor, name: str) -> None:
    """Reject NaN / inf at valid positions (padding may hold anything)."""
    if not values.is_floating_point():
        raise ValueError(f"`{name}` must be a floating-point tensor, got {values.dtype}")
    finite = torch.isfinite(values)
    if bool(finite.all()):  # the common case: one pass, no mask arithmetic
        return
    bad = ~finite & where
    if bool(bad.any()):
        b, t = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"`{name}` contains NaN or inf at a valid position (first at [{b}, {t}]: {values[b, t].item()})")


def check_choice(value, name: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}")


def check_real(value, name: str, *, minimum: float | None = None, allow_inf: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"`{name}` must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"`{name}` must be finite, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value!r}")
    return value


def seq_sign_tensor(seq_sign, batch: int, device: torch.device) -> torch.Tensor:
    """Validate ``seq_sign`` (B,) of -1 / +1 and return it as a long tensor on ``device``."""
    sign = torch.as_tensor(seq_sign, device=device)
    if sign.dtype == torch.bool:
        raise ValueError("`seq_sign` must hold -1 / +1 as integers or floats, got a bool tensor (True/False cannot "
                         "express -1)")
    if sign.dim() != 1 or sign.shape[0] != batch:
        raise ValueError(f"`seq_sign` must have shape ({batch},), got shape {tuple(sign.shape)}")
    if not bool(((sign == 1) | (sign == -1)).all()):
        raise ValueError("`seq_sign` must contain only -1 and +1")
    return sign.long()
