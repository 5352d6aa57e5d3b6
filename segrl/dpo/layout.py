"""Index conversions between TRL's DPO batch layouts and segrl's response-token layout.

This is the one place where the off-by-one between token rewards and log-probs is handled.

A TRL ``DataCollatorForPreference`` batch has ``N = 2B`` rows (chosen rows, then rejected rows), and
every per-token quantity lives in one of three layouts:

- **input layout** ``(N, L)``: ``input_ids``, ``attention_mask``, ``completion_mask``. Row ``i`` holds
  its prompt at ``[0, s_i)``, its (possibly truncated) completion at ``[s_i, s_i + n_i)``, then
  right padding.
- **log-prob layout** ``(N, L - 1)``: TRL's ``per_token_logps``. The fused LM head scores the hidden
  state at position ``j`` against the label at ``j + 1``, so index ``j`` holds
  ``log pi(input_ids[j + 1] | input_ids[:j + 1])``.
- **response layout** ``(N, R)``, ``R = max_i n_i``: docs/method.md#tensor-conventions. Index ``t`` is completion token ``t``
  and holds values *about that token*: its reward ``r_t``, its log-prob ``log pi(y_t | x, y_<t)``.

Completion token ``t`` of row ``i`` therefore sits at input index ``s_i + t`` and at log-prob index
``s_i + t - 1`` (:data:`LOGP_SHIFT`). Every conversion below goes through :class:`ResponseSpan`,
so that relation is written exactly once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = [
    "LOGP_SHIFT",
    "ResponseSpan",
    "from_input_layout",
    "from_logp_layout",
    "response_span",
    "to_input_layout",
    "to_logp_layout",
]

#: log-prob index = input index - LOGP_SHIFT (the label of position j is the token at j + 1).
LOGP_SHIFT = 1


@dataclass(frozen=True)
class ResponseSpan:
    """Where each row's completion sits in the input layout.

    Attributes:
        start: input index of completion token 0 (``s_i``). Shape: (N,), long.
        length: number of completion tokens kept after truncation (``n_i``). Shape: (N,), long.
        mask: response-layout validity, ``mask[i, t] = t < n_i``. Shape: (N, R), bool.
        input_width: ``L``, the width of the input layout.
    """

    start: torch.Tensor
    length: torch.Tensor
    mask: torch.Tensor
    input_width: int

    @property
    def width(self) -> int:
        """``R``, the width of the response layout."""
        return self.mask.shape[1]


def response_span(completion_mask: torch.Tensor) -> ResponseSpan:
    """Locate every row's completion in a TRL ``completion_mask``.

    Args:
        completion_mask: 1 on completion tokens, in the input layout. Shape: (N, L).

    Raises:
        ValueError: if a row's completion is not one contiguous run (a collator that flushes or
            packs rows), or if a completion starts at input index 0 (an empty prompt: the first
            completion token then has no log-prob at all).
    """
    if completion_mask.dim() != 2:
        raise ValueError(f"`completion_mask` must have shape (N, L), got {tuple(completion_mask.shape)}")
    cm = completion_mask.bool()
    n_rows, width = cm.shape
    length = cm.sum(dim=1)
    # argmax returns the first maximal index: the first completion position (0 for an empty row).
    start = torch.where(length > 0, cm.to(torch.uint8).argmax(dim=1), torch.zeros_like(length))
    positions = torch.arange(width, device=cm.device)
    band = (positions >= start[:, None]) & (positions < (start + length)[:, None])
    if not torch.equal(band, cm):
        raise ValueError(
            "`completion_mask` must mark one contiguous run of completion tokens per row (prompt, completion, "
            "right padding), as TRL's DataCollatorForPreference emits; padding-free or left-padded batches are "
            "not supported"
        )
    if bool(((start == 0) & (length > 0)).any()):
        raise ValueError(
            "a completion starts at input position 0 (empty prompt), so its first token has no log-probability; "
            "ASR-DPO needs at least one prompt token (e.g. a BOS token or a chat-template header)"
        )
    r_width = int(length.max()) if n_rows else 0
    mask = torch.arange(r_width, device=cm.device)[None, :] < length[:, None]
    return ResponseSpan(start=start, length=length, mask=mask, input_width=width)


def _gather_rows(src: torch.Tensor, index: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``out[i, k] = src[i, index[i, k]]`` where ``valid``, else 0 (index clamped so padding never fails)."""
    if src.shape[1] == 0:
        return src.new_zeros(index.shape)
    out = src.gather(1, index.clamp(0, src.shape[1] - 1))
    return torch.where(valid, out, torch.zeros_like(out))


def from_input_layout(values: torch.Tensor, span: ResponseSpan) -> torch.Tensor:
    """Input layout -> response layout: ``out[i, t] = values[i, s_i + t]``. Shape: (N, L) -> (N, R)."""
    t = torch.arange(span.width, device=values.device)
    return _gather_rows(values, span.start[:, None] + t[None, :], span.mask)


def to_input_layout(values: torch.Tensor, span: ResponseSpan) -> torch.Tensor:
    """Response layout -> input layout: ``out[i, s_i + t] = values[i, t]``, 0 elsewhere. Shape: (N, R) -> (N, L)."""
    j = torch.arange(span.input_width, device=values.device)
    t = j[None, :] - span.start[:, None]
    valid = (t >= 0) & (t < span.length[:, None])
    return _gather_rows(values, t, valid)


def from_logp_layout(values: torch.Tensor, span: ResponseSpan) -> torch.Tensor:
    """Log-prob layout -> response layout: ``out[i, t] = values[i, s_i + t - 1]``. Shape: (N, L-1) -> (N, R)."""
    t = torch.arange(span.width, device=values.device)
    return _gather_rows(values, span.start[:, None] + t[None, :] - LOGP_SHIFT, span.mask)


def to_logp_layout(values: torch.Tensor, span: ResponseSpan) -> torch.Tensor:
    """Response layout -> log-prob layout: ``out[i, s_i + t - 1] = values[i, t]``. Shape: (N, R) -> (N, L-1)."""
    j = torch.arange(span.input_width - 1, device=values.device)
    t = j[None, :] + LOGP_SHIFT - span.start[:, None]
    valid = (t >= 0) & (t < span.length[:, None])
    return _gather_rows(values, t, valid)
