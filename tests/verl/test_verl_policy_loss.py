"""The `segrl_asr` policy loss: masked tokens contribute exactly zero, the denominator is the kept count.

verl's actor calls the registered loss per micro-batch as ``fn(old_log_prob=, log_prob=, advantages=,
response_mask=, loss_agg_mode=, config=, rollout_is_weights=)`` with ``config.global_batch_info`` holding
``batch_num_tokens`` = the number of ``response_mask`` tokens of the whole mini-batch summed over the DP
group (the engine's ``loss_mask.sum()`` all-reduce). These tests reproduce exactly that contract.
"""

from __future__ import annotations

import pytest
import torch
from verl.trainer.ppo.core_algos import compute_policy_loss_vanilla, get_policy_loss_fn
from verl.workers.config import ActorConfig
from verl_helpers import right_padded

from segrl import ops
from segrl.integrations import verl as plugin

LENGTHS = [5, 3, 4, 2]
T = 5


def _rollout(seed: int = 0):
    """A rollout batch: masks, log-probs and ASR advantages from the plugin's estimator."""
    g = torch.Generator().manual_seed(seed)
    mask = right_padded([[1.0] * n for n in LENGTHS], width=T)[1]
    rewards = torch.randn(len(LENGTHS), T, generator=g) * mask
    values = torch.randn(len(LENGTHS), T, generator=g) * mask
    out = plugin.asr_gae_advantages(rewards, values, mask, gamma=1.0, lam=0.95)
    old = -torch.rand(len(LENGTHS), T, generator=g) - 0.5
    # |log_prob - old| < 0.3: ratios in [0.74, 1.35], some clipped, dual-clip (ratio > 3) never fires
    new = old + (torch.rand(len(LENGTHS), T, generator=g) - 0.5) * 0.6
    return mask, out, old, new


def _config(**batch_info):
    config = ActorConfig(strategy="fsdp", ppo_mini_batch_size=4, ppo_micro_batch_size_per_gpu=1, clip_ratio=0.2,
                         rollout_n=1)
    config.global_batch_info.update(batch_info)
    return config


def _call(loss_fn, mask, adv, old, new, config):
    # exactly the keyword call of verl.workers.utils.losses.ppo_loss
    return loss_fn(old_log_prob=old, log_prob=new, advantages=adv, response_mask=mask.bool(),
                   loss_agg_mode="token-mean", config=config, rollout_is_weights=None)


def _kept_mean_by_hand(mask_keep, adv, old, new, clip=0.2):
    ratio = torch.exp(new - old)
    per_token = torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip))
    return per_token[mask_keep].sum() / mask_keep.sum()


def test_registered_under_its_name():
    assert get_policy_loss_fn("segrl_asr") is plugin.compute_policy_loss_segrl_asr


def test_denominator_is_the_kept_token_count():
    mask, out, old, new = _rollout()
    n_tokens, n_kept = int(mask.sum()), int(out.keep.sum())
    assert 0 < n_kept < n_tokens  # the test means something only if ASR dropped tokens
    loss, metrics = _call(get_policy_loss_fn("segrl_asr"), mask, out.advantages, old, new,
                          _config(dp_size=1, batch_num_tokens=n_tokens, global_batch_size=4))
    unscaled = out.advantages / out.scale
    expected = _kept_mean_by_hand(out.keep, unscaled, old, new)
    torch.testing.assert_close(loss, expected, atol=1e-6, rtol=1e-6)
    # ... which is segrl's own PPO loss with the ASR mask as loss mask (docs/method.md#ppo)
    ours, _ = ops.ppo_policy_loss(new, old, unscaled, out.keep, clip=0.2)
    torch.testing.assert_close(loss, ours, atol=1e-6, rtol=1e-6)
    assert metrics["actor/segrl_asr_kept_fraction"] == pytest.approx(n_kept / n_tokens)


def test_without_global_batch_info_it_counts_all_response_tokens_like_the_engine():
    mask, out, old, new = _rollout(1)
    with_info, _ = _call(plugin.compute_policy_loss_segrl_asr, mask, out.advantages, old, new,
                         _config(dp_size=1, batch_num_tokens=int(mask.sum())))
    without, _ = _call(plugin.compute_policy_loss_segrl_asr, mask, out.advantages, old, new, _config())
    torch.testing.assert_close(with_info, without)


def test_masked_tokens_contribute_exactly_zero():
    mask, out, old, new = _rollout(2)
    new = new.clone().requires_grad_(True)
    config = _config(dp_size=1, batch_num_tokens=int(mask.sum()))
    loss, _ = _call(plugin.compute_policy_loss_segrl_asr, mask, out.advantages, old, new, config)
    loss.backward()
    dropped = ~out.keep
    assert bool((new.grad[dropped] == 0).all())  # dropped response tokens and padding
    assert bool((new.grad[out.keep] != 0).any())
    # moving the log-probs of dropped tokens (even far: the ratio is clamped) leaves the loss unchanged
    moved = new.detach().clone()
    moved[dropped] += 25.0
    again, _ = _call(plugin.compute_policy_loss_segrl_asr, mask, out.advantages, old, moved, config)
    assert torch.equal(again, loss.detach())


def test_two_dp_ranks_with_micro_batches_give_the_global_kept_mean():
    mask, out, old, new = _rollout(3)
    n_tokens = int(mask.sum())  # engine: loss_mask.sum() all-reduced over the DP group
    fn = get_policy_loss_fn("segrl_asr")
    rank_losses = []
    for rows in ([0, 1], [2, 3]):  # two DP ranks, each with micro-batches of one row
        total = torch.zeros(())
        for r in rows:
            part, _ = _call(fn, mask[r:r + 1], out.advantages[r:r + 1], old[r:r + 1], new[r:r + 1],
                            _config(dp_size=2, batch_num_tokens=n_tokens))
            total = total + part  # gradient accumulation sums micro-batch losses
        rank_losses.append(total)
    global_loss = torch.stack(rank_losses).mean()  # DDP/FSDP average gradients over ranks
    expected = _kept_mean_by_hand(out.keep, out.advantages / out.scale, old, new)
    torch.testing.assert_close(global_loss, expected, atol=1e-6, rtol=1e-6)


def test_the_pitfall_zeroed_advantages_alone_keep_dropped_tokens_in_the_denominator():
    mask, out, old, new = _rollout(4)
    n_tokens, n_kept = int(mask.sum()), int(out.keep.sum())
    unscaled = out.advantages / out.scale
    vanilla, _ = compute_policy_loss_vanilla(old, new, unscaled, mask.bool(), "token-mean",
                                             _config(dp_size=1, batch_num_tokens=n_tokens))
    kept_mean = _kept_mean_by_hand(out.keep, unscaled, old, new)
    torch.testing.assert_close(vanilla, kept_mean * n_kept / n_tokens, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(vanilla, kept_mean)


def test_only_token_mean_and_dp_needs_the_global_count():
    mask, out, old, new = _rollout()
    with pytest.raises(ValueError, match="token-mean"):
        plugin.compute_policy_loss_segrl_asr(old, new, out.advantages, mask.bool(), "seq-mean-token-mean", _config())
    with pytest.raises(ValueError, match="batch_num_tokens"):
        plugin.compute_policy_loss_segrl_asr(old, new, out.advantages, mask.bool(), "token-mean",
                                             _config(dp_size=2))
