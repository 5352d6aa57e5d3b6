"""The verl advantage estimator ``segrl_asr_gae``: GAE with verl's own code, then the ASR mask.

Tensor layout (verl's, which matches docs/method.md#tensor-conventions): ``(bs, response_length)``
tensors over response tokens, ``response_mask`` 1 on tokens the policy generated.
``token_level_scores`` are the reward manager's dense rewards, ``token_level_rewards`` the same
minus the in-reward KL penalty (equal when ``algorithm.use_kl_in_reward=False``).

How the ASR mask reaches the actor, and why the loss is divided by the kept-token count
----------------------------------------------------------------------------------------
A verl advantage estimator only returns ``(advantages, returns)``, and the actor's policy loss only
receives ``old_log_prob, log_prob, advantages, response_mask, loss_agg_mode, config,
rollout_is_weights``. The ASR mask therefore travels inside the advantages: dropped tokens get an
advantage of exactly ``0.0`` (so they contribute exactly nothing to any PPO surrogate), and the
``segrl_asr`` loss recovers ``kept = response_mask & (advantages != 0)``.

The token-count pitfall: the actor's engine counts the denominator of ``token-mean`` *before* the
loss runs — ``batch_num_tokens = loss_mask.sum()`` all-reduced over the data-parallel group, with
``loss_mask = response_mask`` (``verl/workers/engine/fsdp/transformer_impl.py``,
``workers/utils/padding.py``) — and hands it to the loss in ``config.global_batch_info``. Zeroing
advantages (or shrinking the mask inside the loss) keeps every dropped token in that denominator
(verl#4852), so the surrogate would be averaged over *all* response tokens, not the kept ones. A
loss function cannot recount it either: it sees one micro-batch, while the count spans the whole
mini-batch on every DP rank.

The fix: the estimator runs on the driver and sees the whole rollout batch (all DP ranks), so it
multiplies the kept advantages by ``N / K`` (``N`` response tokens, ``K`` kept tokens in the batch).
The PPO surrogate is positively homogeneous in the advantage (also with dual-clip and rollout IS
weights), so the engine's ``sum_kept(loss) / N`` becomes exactly ``sum_kept(loss) / K``: the mean
over kept tokens across the DP group. This is exact when one PPO mini-batch is the whole rollout
batch (``actor.ppo_mini_batch_size == data.train_batch_size``, any number of epochs, micro-batches
or DP ranks); with several mini-batches each one is divided by ``K * N_mb / N``, the expected kept
count of a randomly drawn mini-batch. ``rescale: false`` turns this off (dropped tokens are then
zero-weighted but still counted, the "vanilla denominator" semantics). The critic is untouched:
``returns`` are plain GAE returns and the value loss covers every response token (docs/method.md#ppo).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from verl.trainer.ppo.core_algos import compute_gae_advantage_return

from segrl import ops
from segrl.integrations.verl.caller_batch import caller_batch
from segrl.integrations.verl.common import ADV_ESTIMATOR_NAME, CONFIG_KEY, config_get
from segrl.integrations.verl.options import ASROptions

logger = logging.getLogger(__name__)

__all__ = ["ASRAdvantages", "asr_gae_advantages", "asr_keep_mask", "compute_segrl_asr_gae_advantage"]


@dataclass
class ASRAdvantages:
    """Output of :func:`asr_gae_advantages`. Shapes: (bs, T) unless noted.

    ``advantages``: whitened GAE advantages, exactly 0 on dropped tokens and padding, kept tokens
    times ``scale``. ``returns``: plain GAE returns (critic targets, every response token).
    ``keep``: the ASR mask. ``fallback``: (bs,) rows whose mask fell back to the full response.
    ``seq_sign``: (bs,) the sequence signs. ``scale``: the kept-token rescale factor ``N / K``.
    ``delta``: the hysteresis half-width the mask used (``asr_delta`` resolved; 0 without hysteresis).
    """

    advantages: torch.Tensor
    returns: torch.Tensor
    keep: torch.Tensor
    fallback: torch.Tensor
    seq_sign: torch.Tensor
    scale: float
    delta: float = 0.0


def _group_ids(index, batch: int, device) -> torch.Tensor:
    """verl's ``uid`` array (any hashable per row) -> dense group ids, shape (bs,)."""
    if index is None:
        raise ValueError(f"`{CONFIG_KEY}.seq_baseline='group_mean'` needs verl's `uid` index (pass `index`)")
    values = np.asarray(index, dtype=object).reshape(-1)
    if values.shape[0] != batch:
        raise ValueError(f"`index` has {values.shape[0]} entries for a batch of {batch}")
    _, inverse = np.unique(values.astype(str), return_inverse=True)
    return torch.as_tensor(inverse, dtype=torch.long, device=device)


def asr_keep_mask(signal: torch.Tensor, response_mask: torch.Tensor, *, options: ASROptions | None = None,
                  index=None, result: bool = False):
    """The keep mask of a verl rollout batch (docs/method.md#asr-mask, PPO case).

    Sequence reward ``R_b = sum_t signal[b, t]`` over response tokens; sequence sign
    :func:`segrl.ops.sequence_sign` of ``R_b`` against ``b_seq``, the batch (or group) mean of ``R``
    (ties +1); then :func:`segrl.ops.keep_mask` with the options' ``mask_kwargs()``. The batch is
    the whole rollout batch (every DP rank's rows: the estimator runs on the driver), so a batch
    baseline and ``asr_delta="auto"`` are resolved over all of it, never per micro-batch.

    verl's ``response_mask`` can have holes (multi-turn: tool-observation tokens are 0); segrl.ops
    wants right-padded rows, so each row's valid tokens are moved to the front in order, masked,
    and scattered back. For single-turn batches this is the identity.

    Args:
        signal: token signal. Shape: (bs, T).
        response_mask: Shape: (bs, T), bool or 0/1.
        options: :class:`ASROptions`.
        index: verl's ``uid`` per row, for ``seq_baseline="group_mean"``. Shape: (bs,).

        result: also return the :class:`segrl.ops.KeepMaskResult` (over the compacted rows).

    Returns:
        ``(keep (bs, T) bool, fallback (bs,) bool, seq_sign (bs,) long)``, plus the result when ``result``.
    """
    options = ASROptions() if options is None else options
    if signal.shape != response_mask.shape or signal.dim() != 2:
        raise ValueError(f"`signal` {tuple(signal.shape)} and `response_mask` {tuple(response_mask.shape)} "
                         "must both have shape (bs, T)")
    mask = response_mask.bool()
    signal = signal.detach().float()
    seq = torch.where(mask, signal, torch.zeros_like(signal)).sum(dim=1, dtype=torch.float64)
    if options.seq_baseline == "batch_mean":
        b_seq = ops.masked_mean(seq)
    else:
        groups = _group_ids(index, seq.shape[0], seq.device)
        n_groups = int(groups.max()) + 1 if groups.numel() else 0
        sums = torch.zeros(n_groups, dtype=seq.dtype, device=seq.device).index_add_(0, groups, seq)
        counts = torch.zeros(n_groups, dtype=seq.dtype, device=seq.device).index_add_(0, groups, torch.ones_like(seq))
        b_seq = (sums / counts)[groups]
    seq_sign = ops.sequence_sign(seq, b_seq)  # ties -> +1 (docs/method.md#sequence-sign)

    # Stable sort of "is padding" puts valid tokens first, in their original order.
    order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)
    compact_mask = mask.gather(1, order)
    compact_signal = torch.where(compact_mask, signal.gather(1, order), torch.zeros_like(signal))
    res = ops.keep_mask(compact_signal, compact_mask, seq_sign, **options.mask_kwargs())
    keep = torch.zeros_like(mask).scatter(1, order, res.keep)
    return (keep, res.fallback, seq_sign, res) if result else (keep, res.fallback, seq_sign)


def asr_gae_advantages(token_level_rewards: torch.Tensor, values: torch.Tensor, response_mask: torch.Tensor, *,
                       gamma: float, lam: float, signal: torch.Tensor | None = None, index=None,
                       options: ASROptions | None = None) -> ASRAdvantages:
    """GAE with verl's own ``compute_gae_advantage_return``, then the ASR mask on the advantages.

    Args:
        token_level_rewards: per-token PPO rewards (dense RM rewards, minus KL if in-reward). Shape: (bs, T).
        values: critic values at response positions. Shape: (bs, T).
        response_mask: Shape: (bs, T).
        gamma, lam: GAE discount and lambda (``algorithm.gamma`` / ``algorithm.lam``).
        signal: token signal of the mask (default: ``token_level_rewards``). Shape: (bs, T).
        index: verl's ``uid`` per row (for ``group_mean``). Shape: (bs,).
        options: :class:`ASROptions`.

    Returns:
        :class:`ASRAdvantages`. Advantages are whitened over all response tokens first (verl's GAE
        does that), then masked, so kept tokens keep the batch's advantage scale.
    """
    mask = response_mask.bool()
    # verl's GAE does arithmetic on the mask (`1 - mask`), which a bool tensor does not support.
    advantages, returns = compute_gae_advantage_return(
        token_level_rewards=token_level_rewards, values=values,
        response_mask=mask.to(token_level_rewards.dtype), gamma=gamma, lam=lam,
    )
    options = ASROptions() if options is None else options
    keep, fallback, seq_sign, res = asr_keep_mask(token_level_rewards if signal is None else signal, mask,
                                                  options=options, index=index, result=True)
    n_tokens, n_kept = int(mask.sum()), int(keep.sum())
    scale = n_tokens / n_kept if options.rescale and n_kept > 0 else 1.0
    advantages = torch.where(keep, advantages * scale, torch.zeros_like(advantages))
    return ASRAdvantages(advantages, returns, keep, fallback, seq_sign, scale, res.delta)



def compute_segrl_asr_gae_advantage(token_level_rewards: torch.Tensor, response_mask: torch.Tensor, config=None,
                                    index=None, values: torch.Tensor | None = None,
                                    token_level_scores: torch.Tensor | None = None, **kwargs):
    """verl advantage estimator ``segrl_asr_gae``: GAE + the ASR mask (arXiv 2411.00809).

    Registered with ``register_adv_est``; select it with ``algorithm.adv_estimator=segrl_asr_gae``
    (needs ``critic.enable=True``: verl only enables the critic by itself for ``gae``). Options come
    from ``algorithm.segrl_asr`` (:class:`ASROptions`); ``algorithm.gamma`` / ``algorithm.lam`` drive GAE.

    ``values`` (and ``token_level_scores``) are taken from the keyword arguments when given, else
    from the ``DataProto`` verl's ``compute_advantage`` is processing: verl 0.9.1 passes neither to a
    registered estimator, so :func:`segrl.integrations.verl.caller_batch.caller_batch` finds that batch.

    Shapes: all tensors (bs, response_length). Returns ``(advantages, returns)``; see
    :func:`asr_gae_advantages` and the module docstring for how the mask and the kept-token
    denominator reach the ``segrl_asr`` policy loss.
    """
    options = ASROptions.from_config(config)
    batch = None
    if values is None or (options.signal == "scores" and token_level_scores is None):
        batch = caller_batch(token_level_rewards)
    if values is None:
        if batch is None or "values" not in batch.keys():
            raise ValueError(
                f"adv_estimator '{ADV_ESTIMATOR_NAME}' needs critic values: set critic.enable=True (verl enables the "
                "critic on its own only for 'gae'), or pass `values=` when calling it directly"
            )
        values = batch["values"]
    signal = token_level_rewards
    if options.signal == "scores":
        if token_level_scores is None and batch is not None and "token_level_scores" in batch.keys():
            token_level_scores = batch["token_level_scores"]
        if token_level_scores is not None:
            signal = token_level_scores
    gamma = float(config_get(config, "gamma", 1.0))
    lam = float(config_get(config, "lam", 1.0))
    out = asr_gae_advantages(token_level_rewards, values, response_mask, gamma=gamma, lam=lam, signal=signal,
                             index=index, options=options)
    mask = response_mask.bool()
    logger.info("segrl_asr_gae: asr/delta %.4g, asr/kept_token_fraction %.3f of %d response tokens, "
                "%d fallback rows, rescale %.3f", out.delta, float(out.keep.sum()) / max(int(mask.sum()), 1),
                int(mask.sum()), int(out.fallback.sum()), out.scale)
    return out.advantages, out.returns
