"""The verl policy loss ``segrl_asr``: PPO clipped surrogate over the ASR-kept tokens.

``actor_rollout_ref.actor.policy_loss.loss_mode=segrl_asr``. The kept tokens are read from the
advantages the ``segrl_asr_gae`` estimator wrote (exactly 0 on dropped tokens); why, and how the
kept-token denominator is made exact, is in :mod:`segrl.integrations.verl.advantage`.
"""

from __future__ import annotations

import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla

from segrl.integrations.verl.common import POLICY_LOSS_NAME

__all__ = ["compute_policy_loss_segrl_asr"]


def compute_policy_loss_segrl_asr(old_log_prob: torch.Tensor, log_prob: torch.Tensor, advantages: torch.Tensor,
                                  response_mask: torch.Tensor, loss_agg_mode: str = "token-mean", config=None,
                                  rollout_is_weights: torch.Tensor | None = None):
    """verl policy loss ``segrl_asr``: PPO clipped surrogate over the ASR-kept tokens.

    ``kept = response_mask & (advantages != 0)``: the ``segrl_asr_gae`` estimator writes dropped
    tokens as exactly 0. (A kept token whose advantage happens to be exactly 0 contributes 0 to the
    loss either way; it only leaves the metrics.) The per-token surrogate is verl's own
    ``compute_policy_loss_vanilla`` (dual-clip, ``clip_ratio_low/high``, rollout IS weights), summed
    over kept tokens and divided by verl's global token count ``batch_num_tokens`` times ``dp_size``
    exactly as verl's token-mean does; with the estimator's ``N / K`` rescale that is the mean over
    kept tokens across the DP group. Dropped tokens get exactly zero gradient: their advantage is 0
    and verl's masked sum selects them out with ``torch.where`` (log-ratios are clamped to +-20, so
    the ratio there stays finite).

    Only ``loss_agg_mode="token-mean"`` (verl's default) is supported: the rescale is calibrated for
    a token denominator, and the seq-mean modes would divide twice.

    Shapes: all tensors (bs, response_length). Returns ``(loss, metrics)``; metrics add
    ``actor/segrl_asr_kept_fraction`` (clip fraction and ppo_kl are over kept tokens).
    """
    if loss_agg_mode != "token-mean":
        raise ValueError(f"policy loss '{POLICY_LOSS_NAME}' supports loss_agg_mode='token-mean' only, got "
                         f"{loss_agg_mode!r}")
    mask = response_mask.bool()
    keep = mask & (advantages != 0)
    info = dict(getattr(config, "global_batch_info", None) or {})
    n_tokens = info.get("batch_num_tokens")
    if n_tokens is None:
        # Outside verl's engines (direct calls, one process): count what the engine would count,
        # every response token; the estimator's rescale assumes that denominator.
        if int(info.get("dp_size") or 1) > 1:
            raise ValueError("(global) batch_num_tokens is required when dp_size > 1")
        n_tokens = mask.sum()
    # token-sum returns sum_kept(loss) * dp_size (verl's DP scaling); dividing by the global count
    # reproduces token-mean with the engine's denominator.
    token_sum, metrics = compute_policy_loss_vanilla(
        old_log_prob=old_log_prob, log_prob=log_prob, advantages=advantages, response_mask=keep,
        loss_agg_mode="token-sum", config=config, rollout_is_weights=rollout_is_weights,
    )
    loss = token_sum / n_tokens
    metrics = dict(metrics)
    metrics["actor/segrl_asr_kept_fraction"] = (keep.sum() / mask.sum().clamp(min=1)).item()
    return loss, metrics
