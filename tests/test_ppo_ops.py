"""PPO maths against hand-computed values (docs/method.md#ppo)."""

import math

import pytest
import torch

from segrl import ops


def test_gae_hand_values():
    rewards = torch.tensor([[1.0, 0.0, 2.0], [3.0, 9.0, 9.0]])
    values = torch.tensor([[0.5, 1.0, 0.0], [1.0, 9.0, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]], dtype=torch.bool)
    adv, ret = ops.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.5)
    # row 0, backwards: t2 delta = 2 + 0 - 0 = 2, A2 = 2
    #                   t1 delta = 0 + 0.0 - 1.0 = -1, A1 = -1 + 0.5 * 2 = 0
    #                   t0 delta = 1 + 1.0 - 0.5 = 1.5, A0 = 1.5 + 0.5 * 0 = 1.5
    # row 1: padding contributes nothing, the value after the last token is 0: A0 = 3 - 1 = 2
    assert adv.tolist() == [[1.5, 0.0, 2.0], [2.0, 0.0, 0.0]]
    assert ret.tolist() == [[2.0, 1.0, 2.0], [3.0, 0.0, 0.0]]


def test_gae_discount():
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.zeros(1, 3)
    mask = torch.ones(1, 3, dtype=torch.bool)
    adv, _ = ops.gae_advantages(rewards, values, mask, gamma=0.9, lam=1.0)
    # lam = 1, V = 0: A_t is the discounted return 0.9^(2 - t)
    assert adv[0].tolist() == pytest.approx([0.81, 0.9, 1.0])


def test_whiten_over_valid_tokens_of_the_batch():
    x = torch.tensor([[1.0, 2.0], [3.0, 100.0]])
    mask = torch.tensor([[1, 1], [1, 0]], dtype=torch.bool)
    # mean (1 + 2 + 3) / 3 = 2, population variance (1 + 0 + 1) / 3 = 2/3
    w = ops.masked_whiten(x, mask)
    s = math.sqrt(2 / 3)
    assert w.flatten().tolist() == pytest.approx([-1 / s, 0.0, 1 / s, 0.0], rel=1e-5)


def test_shaped_rewards_clamp_then_kl():
    r = torch.tensor([[12.0, -0.5, 0.0]])
    logp = torch.tensor([[-1.0, -2.0, -3.0]])
    ref = torch.tensor([[-1.5, -2.0, -1.0]])
    mask = torch.tensor([[1, 1, 0]], dtype=torch.bool)
    shaped, kl = ops.shaped_rewards(r, logp, ref, mask, kl_coef=0.1, clamp=10.0)
    # t0: clamp(12) = 10, kl = -1 + 1.5 = 0.5 -> 10 - 0.05 = 9.95 ; t1: -0.5 - 0.1 * 0 = -0.5 ; t2 padding
    assert shaped[0].tolist() == pytest.approx([9.95, -0.5, 0.0])
    assert kl[0].tolist() == pytest.approx([0.5, 0.0, 0.0])


def test_policy_loss_clipping_and_mask_denominator():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 1.5, 1.0, 1.0]])).requires_grad_()
    adv = torch.tensor([[1.0, -1.0, 2.0, 5.0]])
    keep = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    loss, stats = ops.ppo_policy_loss(logp, old, adv, keep, clip=0.2)
    # t0: A = +1, rho = 1.5: max(-1.5, -1.2) = -1.2 (clipped) ; t1: A = -1: max(1.5, 1.2) = 1.5
    # t2: rho = 1: -2 ; t3 masked out. Mean over the 3 kept tokens: (-1.2 + 1.5 - 2) / 3
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 2.0) / 3, rel=1e-6)
    loss.backward()
    # the clipped token and the masked token get exactly zero gradient
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 3].item() == 0.0
    assert logp.grad[0, 2].item() == pytest.approx(-2.0 / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)


def test_value_loss_clipped():
    old = torch.tensor([[0.0, 0.0]])
    v = torch.tensor([[1.0, 0.1]])
    ret = torch.tensor([[1.0, 1.0]])
    mask = torch.tensor([[1, 1]], dtype=torch.bool)
    # t0: unclipped (1 - 1)^2 = 0, clipped (0.2 - 1)^2 = 0.64 -> 0.64 ; t1: (0.1 - 1)^2 = 0.81 both
    loss = ops.ppo_value_loss(v, old, ret, mask, clip=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 0.81) / 2)


def test_bad_input():
    m = torch.ones(1, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="values"):
        ops.gae_advantages(torch.zeros(1, 2), torch.zeros(1, 3), m)
    with pytest.raises(ValueError, match="token_rewards"):
        ops.shaped_rewards(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), torch.zeros(1, 2), m)
    with pytest.raises(ValueError, match="kl_coef"):
        ops.shaped_rewards(torch.zeros(1, 2), torch.zeros(1, 2), torch.zeros(1, 2), m, kl_coef=-1)
