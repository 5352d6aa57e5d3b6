"""PPO maths for dense per-token rewards (docs/method.md#ppo), as pure torch functions.

Shapes follow docs/method.md#tensor-conventions: right-padded ``(B, T)`` over response tokens. The
order of the functions is the order a PPO iteration uses them: shaped rewards -> GAE -> whitening
(:func:`segrl.ops.masked_whiten`, in :mod:`segrl.ops.moments`) -> losses.
"""

from __future__ import annotations

import torch

from ._checks import as_mask, check_finite_where, check_real, check_same_shape
from .moments import masked_mean, masked_whiten  # noqa: F401  (re-exported: they lived here)


def shaped_rewards(
    token_rewards: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    *,
    kl_coef: float = 0.01,
    clamp: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token PPO reward ``R_t = clamp(r_t, -c, c) - beta * kl_t`` with the k1 estimator ``kl_t = l_t - l_ref_t``.

    The clamp acts per token after spreading (as published). For the bandit arm pass a tensor
    that is zero except the normalised sequence reward at each row's last token.

    Args:
        token_rewards: spread, normalised segment rewards. Shape: (B, T).
        logprobs, ref_logprobs: ``log pi(y_t | x, y_<t)`` under the rollout policy and the reference. Shape: (B, T).
        mask: response tokens, right-padded. Shape: (B, T).

    Returns:
        ``(rewards, kl)``, both (B, T) and 0 at padding.
    """
    mask = as_mask(mask)
    for name, tensor in (("token_rewards", token_rewards), ("logprobs", logprobs), ("ref_logprobs", ref_logprobs)):
        check_same_shape(tensor, name, mask, "mask")
        check_finite_where(tensor, mask, name)
    kl_coef = check_real(kl_coef, "kl_coef", minimum=0.0)
    clamp = check_real(clamp, "clamp", minimum=0.0, allow_inf=True)
    zero = torch.zeros((), dtype=token_rewards.dtype, device=token_rewards.device)
    kl = torch.where(mask, logprobs - ref_logprobs, zero)
    rewards = torch.where(mask, token_rewards.clamp(-clamp, clamp) - kl_coef * kl, zero)
    return rewards, kl


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens; the value after the last token is 0.

    ``delta_t = R_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``, ``returns = A + V``.
    The recursion runs backwards over ``T`` (a loop over time is inherent to GAE; it is vectorised
    over the batch and costs T small kernels, negligible next to a forward pass).

    Shape: ``rewards``, ``values``, ``mask`` (B, T) -> ``(advantages, returns)`` (B, T), 0 at padding.
    """
    mask = as_mask(mask)
    check_same_shape(rewards, "rewards", mask, "mask")
    check_same_shape(values, "values", mask, "mask")
    gamma = check_real(gamma, "gamma", minimum=0.0)
    lam = check_real(lam, "lam", minimum=0.0)
    m = mask.to(rewards.dtype)
    rewards, values = rewards * m, values.detach() * m
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_advantage = (delta + gamma * lam * next_advantage) * m[:, t]
        advantages[:, t] = next_advantage
        next_value = values[:, t]
    return advantages, (advantages + values) * m


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    loss_mask: torch.Tensor,
    *,
    clip: float = 0.2,
    denominator: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate averaged over the tokens of ``loss_mask`` (an ASR mask shrinks the denominator).

    ``-min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t)`` with ``rho_t = exp(l_t - l_old_t)``.
    Tokens outside ``loss_mask`` get exactly zero gradient. ``denominator`` overrides the local
    kept-token count; data-parallel callers pass ``global_count / world_size`` so that the
    gradient average over ranks is the token mean of the global batch.

    Shape: all (B, T) -> scalar loss and detached stats (clip fraction, approx KL).
    """
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip, 1.0 + clip)
    per_token = torch.maximum(unclipped, clipped)
    # where() rather than multiply, so masked tokens with inf/NaN ratios cannot leak into the gradient
    per_token = torch.where(loss_mask, per_token, torch.zeros_like(per_token))
    loss = per_token.sum() / (loss_mask.sum().clamp(min=1) if denominator is None else denominator)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).to(logprobs.dtype), loss_mask),
            "approx_kl": masked_mean(0.5 * (logprobs - old_logprobs) ** 2, loss_mask),
        }
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, clip: float = 0.2,
    denominator: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)`` averaged over all response tokens
    (``denominator`` as in :func:`ppo_policy_loss`).

    Shape: all (B, T) -> scalar.
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    per_token = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    per_token = torch.where(mask, per_token, torch.zeros_like(per_token))
    return per_token.sum() / (mask.sum().clamp(min=1) if denominator is None else denominator)
