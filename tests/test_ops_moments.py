"""Masked moments, mean, whitening and the batch baseline with the moments hook (segrl.ops.moments).

The hook contract: with ``all_reduce`` summing the moment vectors of every "rank", each rank's result
equals the single-process op on the concatenated batch. Two ranks are simulated in one process: rank
``i``'s hook adds the moments of the other half (exactly what a sum all-reduce returns).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segrl import ops

PROPS = settings(deadline=None, max_examples=80, suppress_health_check=[HealthCheck.too_slow])


def two_rank_hooks(x_a, m_a, x_b, m_b):
    """The sum all-reduce each of two simulated ranks would see; counts how often it is called."""
    calls = []

    def hook_for(other_x, other_m):
        def hook(t):
            calls.append(t.clone())
            return t + ops.masked_moments(other_x, other_m)
        return hook

    return hook_for(x_b, m_b), hook_for(x_a, m_a), calls


def two_ranks(op_a, op_b):
    """Results of ``op_a(hook)`` / ``op_b(hook)`` when ``hook`` is a sum all-reduce between the two:
    each op runs once to record what it sends, then again with the other's tensors added."""
    sent = {"a": [], "b": []}

    def capture(key):
        return lambda t: sent[key].append(t.clone()) or t

    op_a(capture("a"))
    op_b(capture("b"))

    def replay(other):
        received = iter(sent[other])
        return lambda t: t + next(received)

    return op_a(replay("b")), op_b(replay("a"))


X = torch.tensor([[1.0, 2.0], [3.0, 100.0], [5.0, -7.0]])
M = torch.tensor([[1, 1], [1, 0], [1, 0]], dtype=torch.bool)


def test_moments_hand_values():
    # valid: 1, 2, 3, 5 -> count 4, sum 11, sum of squares 1 + 4 + 9 + 25 = 39; 100 and -7 are padding
    mom = ops.masked_moments(X, M)
    assert mom.dtype == torch.float64
    assert mom.tolist() == [4.0, 11.0, 39.0]
    # padding may hold anything, even NaN
    nan_pad = X.clone()
    nan_pad[1, 1] = float("nan")
    assert ops.masked_moments(nan_pad, M).tolist() == [4.0, 11.0, 39.0]


def test_mean_and_whiten_hand_values_split_over_two_ranks():
    # whole batch: mean 11 / 4 = 2.75, population variance 39 / 4 - 2.75^2 = 2.1875
    mean, sd = 2.75, math.sqrt(2.1875)
    expected = [(1 - mean) / sd, (2 - mean) / sd, (3 - mean) / sd, 0.0, (5 - mean) / sd, 0.0]
    assert ops.masked_mean(X, M).item() == pytest.approx(2.75)
    assert ops.masked_whiten(X, M).flatten().tolist() == pytest.approx(expected, rel=1e-6)
    # rank 0 holds row 0, rank 1 rows 1-2: their own means would be 1.5 and 4.0
    hook_a, hook_b, calls = two_rank_hooks(X[:1], M[:1], X[1:], M[1:])
    assert ops.masked_mean(X[:1], M[:1], all_reduce=hook_a).item() == pytest.approx(2.75)
    assert ops.masked_mean(X[1:], M[1:], all_reduce=hook_b).item() == pytest.approx(2.75)
    w = torch.cat([ops.masked_whiten(X[:1], M[:1], all_reduce=hook_a),
                   ops.masked_whiten(X[1:], M[1:], all_reduce=hook_b)])
    assert w.flatten().tolist() == pytest.approx(expected, rel=1e-6)
    # one collective per call, of the float64 moments [count, sum, sum of squares] of the local rows
    assert len(calls) == 4 and all(c.dtype == torch.float64 and c.shape == (3,) for c in calls)
    assert calls[0].tolist() == [2.0, 3.0, 5.0]
    # without the hook each rank whitens its own half: different numbers (the test above can fail)
    local = ops.masked_whiten(X[:1], M[:1])
    assert local[0].tolist() == pytest.approx([-1.0, 1.0], rel=1e-6)


def test_whiten_keeps_mean_when_asked():
    # shift_mean=False: (x - mean) / sd + mean
    w = ops.masked_whiten(X, M, shift_mean=False)
    sd = math.sqrt(2.1875)
    assert w[0, 0].item() == pytest.approx((1 - 2.75) / sd + 2.75, rel=1e-6)
    assert w[1, 1].item() == 0.0


def test_empty_mask_gives_zero():
    none = torch.zeros_like(M)
    assert ops.masked_mean(X, none).item() == 0.0
    assert ops.masked_whiten(X, none).abs().sum().item() == 0.0
    assert ops.masked_moments(X, none).tolist() == [0.0, 0.0, 0.0]


def test_mean_without_mask_is_over_every_entry():
    seq = torch.tensor([1.0, 2.0, 6.0])
    assert ops.masked_mean(seq).item() == pytest.approx(3.0)
    hook_a, hook_b, _ = two_rank_hooks(seq[:2], None, seq[2:], None)
    assert ops.masked_mean(seq[:2], all_reduce=hook_a).item() == pytest.approx(3.0)


def test_mean_is_differentiable_without_hook():
    x = X.clone().requires_grad_()
    ops.masked_mean(x, M).backward()
    assert x.grad.tolist() == [[0.25, 0.25], [0.25, 0.0], [0.25, 0.0]]


def test_torch_distributed_style_in_place_hook():
    """``torch.distributed.all_reduce`` sums in place and returns None: accepted."""
    other = ops.masked_moments(X[1:], M[1:])

    def in_place(t):
        t += other

    assert ops.masked_mean(X[:1], M[:1], all_reduce=in_place).item() == pytest.approx(2.75)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="mask"):
        ops.masked_mean(X, M[:2])
    with pytest.raises(ValueError, match="values"):
        ops.masked_whiten(torch.tensor([[float("nan"), 1.0]]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="values"):
        ops.masked_moments(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="all_reduce"):
        ops.masked_mean(X, M, all_reduce=lambda t: t[:2])
    with pytest.raises(ValueError, match="all_reduce"):
        ops.masked_whiten(X, M, all_reduce="sum")


def test_global_baseline_batch_mean_over_two_ranks():
    r = torch.tensor([[2.0, 4.0, 0.0], [1.0, 0.0, 0.0], [-3.0, 3.0, 9.0]])
    m = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    # global mean of the 6 valid tokens: (2 + 4 + 1 - 3 + 3 + 9) / 6 = 8 / 3 (rank 0 alone: 7 / 3)
    hook_a, hook_b, _ = two_rank_hooks(r[:2], m[:2], r[2:], m[2:])
    b_a = ops.resolve_global_baseline(r[:2], m[:2], "batch_mean", all_reduce=hook_a)
    b_b = ops.resolve_global_baseline(r[2:], m[2:], "batch_mean", all_reduce=hook_b)
    assert b_a.dtype == torch.float64 and b_a.shape == (2,) and b_b.shape == (1,)
    assert b_a.tolist() == pytest.approx([8 / 3] * 2) and b_b.tolist() == pytest.approx([8 / 3])
    # row-local options and the single process pass through unchanged (keep_mask resolves them itself)
    for option in ("sequence_mean", "zero", 0.5):
        assert ops.resolve_global_baseline(r[:2], m[:2], option, all_reduce=hook_a) == option
    assert ops.resolve_global_baseline(r, m, "batch_mean") == "batch_mean"
    # the resolved global baseline gives each rank the whole batch's keep mask
    sign = torch.tensor([1, -1, 1])
    whole = ops.keep_mask(r, m, sign, baseline="batch_mean").keep
    split = torch.cat([ops.keep_mask(r[:2], m[:2], sign[:2], baseline=b_a).keep,
                       ops.keep_mask(r[2:], m[2:], sign[2:], baseline=b_b).keep])
    assert torch.equal(whole, split)


def test_global_baseline_position_mean_over_two_ranks():
    r = torch.tensor([[1.0, 2.0, 3.0, 4.0], [0.0, 5.0, 0.0, 0.0], [2.0, -1.0, 7.0, 1.0]])
    m = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    whole = ops.position_mean_baseline(r, m)
    a, b = two_ranks(lambda hook: ops.resolve_global_baseline(r[:1], m[:1], "position_mean", all_reduce=hook),
                     lambda hook: ops.resolve_global_baseline(r[1:], m[1:], "position_mean", all_reduce=hook))
    torch.testing.assert_close(torch.cat([a, b]), whole)
    assert not torch.allclose(ops.position_mean_baseline(r[:1], m[:1]), whole[:1])  # rank 0 alone differs


@st.composite
def split_batches(draw):
    rows = draw(st.integers(2, 7))
    width = draw(st.integers(1, 6))
    lengths = draw(st.lists(st.integers(0, width), min_size=rows, max_size=rows))
    values = draw(st.lists(st.integers(-8, 8), min_size=rows * width, max_size=rows * width))
    x = torch.tensor(values, dtype=torch.float32).view(rows, width) / 2
    mask = torch.arange(width).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    cut = draw(st.integers(1, rows - 1))
    return x, mask, cut


@PROPS
@given(split_batches(), st.booleans())
def test_property_hooked_equals_whole_batch(batch, shift_mean):
    x, mask, cut = batch
    hook_a, hook_b, _ = two_rank_hooks(x[:cut], mask[:cut], x[cut:], mask[cut:])
    halves = ((x[:cut], mask[:cut], hook_a), (x[cut:], mask[cut:], hook_b))
    whole_mean = ops.masked_mean(x, mask)
    for xs, ms, hook in halves:
        torch.testing.assert_close(ops.masked_mean(xs, ms, all_reduce=hook), whole_mean)
    split = torch.cat([ops.masked_whiten(xs, ms, shift_mean=shift_mean, all_reduce=hook) for xs, ms, hook in halves])
    torch.testing.assert_close(split, ops.masked_whiten(x, mask, shift_mean=shift_mean), rtol=1e-5, atol=1e-5)
    # and the single-process op against a float64 two-pass reference
    valid = x[mask].double()
    if valid.numel():
        mean = valid.mean()
        sd = ((valid - mean) ** 2).mean().add(1e-8).sqrt()
        ref = torch.where(mask, (x.double() - mean) / sd + (0 if shift_mean else mean), 0.0)
        torch.testing.assert_close(ops.masked_whiten(x, mask, shift_mean=shift_mean).double(), ref,
                                   rtol=1e-5, atol=1e-5)


def test_mean_std_from_moments_biased_and_unbiased():
    # values 1, 3, 5: mean 3, squared deviations 4 + 0 + 4 = 8 -> population std sqrt(8 / 3), sample std 2
    moments = ops.masked_moments(torch.tensor([1.0, 3.0, 5.0]))
    mean, std = ops.moments_mean_std(moments)
    assert (mean.item(), std.item()) == (pytest.approx(3.0), pytest.approx(math.sqrt(8 / 3)))
    assert ops.moments_mean_std(moments, unbiased=True)[1].item() == pytest.approx(2.0)
    # per row (dim=1): row 0 has 1 and 3 valid, row 1 only 7 -> std 0 for a single value, either way
    rows = ops.masked_moments(torch.tensor([[1.0, 3.0], [7.0, 0.0]]), torch.tensor([[1, 1], [1, 0]]), dim=1)
    assert rows.tolist() == [[2.0, 1.0], [4.0, 7.0], [10.0, 49.0]]
    mean, std = ops.moments_mean_std(rows, unbiased=True)
    assert mean.tolist() == [2.0, 7.0] and std.tolist() == pytest.approx([math.sqrt(2.0), 0.0])
    with pytest.raises(ValueError, match="moments"):
        ops.moments_mean_std(torch.zeros(2))
