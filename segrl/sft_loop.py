"""The one plain-torch SFT loop (next-token cross-entropy, AdamW, grad-norm clip 1.0).

Used by the tiny-model builders (:mod:`segrl.models.tiny`) and the pipeline's SFT stage
(:mod:`segrl.pipeline.sft`); each supplies its own batches and learning-rate schedule. The trainers
people use for real SFT are TRL's; this loop exists so the fixtures and the demo need no Trainer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["run_sft_steps"]

#: ``next_batch(step) -> (input_ids, attention_mask, labels)``, each Shape: (B, W); labels -100 = ignored.
BatchFn = Callable[[int], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def run_sft_steps(model, next_batch: BatchFn, *, steps: int, lr_at: Callable[[int], float], learning_rate: float,
                  betas: tuple[float, float] = (0.9, 0.999), max_grad_norm: float = 1.0,
                  on_step: Callable[[int, float], None] | None = None) -> None:
    """Train ``model`` in place for ``steps`` AdamW steps (weight decay 0); leaves it in eval mode.

    Args:
        next_batch: the batch of step ``s`` (0-based).
        lr_at: learning rate of step ``s``, set on every parameter group before the step.
        learning_rate: AdamW's initial learning rate (overwritten by ``lr_at`` every step).
        on_step: ``on_step(step, loss)`` after every optimizer step, ``step`` 1-based.
    """
    if steps < 0:
        raise ValueError(f"`steps` must be >= 0, got {steps}")
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.0, betas=betas)
    model.train()
    for step in range(steps):
        ids, attn, labels = next_batch(step)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        loss = model(input_ids=ids, attention_mask=attn, labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        opt.step()
        if on_step is not None:
            on_step(step + 1, loss.item())
    model.eval()
