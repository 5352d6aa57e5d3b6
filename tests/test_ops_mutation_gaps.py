"""Hand-computed cases for the gaps `make mutation` found in segrl/ops/asr.py (README, development
section): mutants that survived because no test pinned these values."""

import torch

from segrl import ops
from segrl.ops.asr import POSITION_BINS


def test_position_mean_with_a_one_token_row_hand_values():
    # bins=4: the one-token row's token is in bin 0; the 4-token row has bins 0, 1, 2, 3.
    rewards = torch.tensor([[5.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]).bool()
    assert ops.position_bins(mask, 4).tolist() == [[0, -1, -1, -1], [0, 1, 2, 3]]
    got = ops.position_mean_baseline(rewards, mask, bins=4)
    # bin 0: (5 + 1) / 2 = 3; bins 1-3 only hold the second row's tokens
    assert got.tolist() == [[3.0, 0.0, 0.0, 0.0], [3.0, 2.0, 3.0, 4.0]]
    # the default number of bins spreads a short row over 0 .. bins - 1: floor(t * bins / 4)
    assert ops.position_bins(mask).tolist()[1] == [t * POSITION_BINS // 4 for t in range(4)]


def test_the_logged_row_baseline_of_a_per_token_baseline_is_its_mean_over_the_row():
    """keep_mask(...).baseline for position_mean (the value trainers log as asr/baseline), and the
    same through the moments hook (an identity all_reduce: one process)."""
    rewards = torch.tensor([[5.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0]])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 1]]).bool()
    sign = torch.tensor([1, -1])
    direct = ops.keep_mask(rewards, mask, sign, baseline="position_mean", delta=0.0)
    # rows: [3] -> 3.0; [3, 2, 3, 4] -> 3.0
    assert direct.baseline.tolist() == [3.0, 3.0]
    grid = ops.resolve_global_baseline(rewards, mask, "position_mean", all_reduce=lambda t: t)
    assert grid.tolist() == [[3.0, 0.0, 0.0, 0.0], [3.0, 2.0, 3.0, 4.0]]
    hooked = ops.keep_mask(rewards, mask, sign, baseline=grid, delta=0.0)
    assert hooked.baseline.tolist() == [3.0, 3.0]
    assert torch.equal(hooked.keep, direct.keep)
    # states vs the per-position baseline: row 0: 5 > 3 -> +1; row 1: 1-3 <0, 2-2 tie (inherits -1), 3-3 tie, 4-4 tie
    assert direct.states.tolist() == [[1, 0, 0, 0], [-1, -1, -1, -1]]
    # a batch_mean through the hook: (5 + 1 + 2 + 3 + 4) / 5 = 3 for every row
    mean = ops.resolve_global_baseline(rewards, mask, "batch_mean", all_reduce=lambda t: t)
    assert mean.tolist() == [3.0, 3.0]


def test_keep_mask_none_fields():
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    out = ops.keep_mask(None, mask, torch.tensor([1, -1]), kind="none")
    assert out.keep.tolist() == mask.tolist() and out.keep is not mask
    assert out.states is None
    assert out.segment_ids.tolist() == [[0, 0, -1], [0, -1, -1]]  # each response is one segment
    assert out.baseline.dtype == torch.float64 and out.baseline.tolist() == [0.0, 0.0]
    assert out.delta == 0.0 and out.fallback.tolist() == [False, False]
    assert out.counts(mask).tolist() == [3.0, 3.0, 2.0, 3.0, 0.0, 2.0, 0.0]


def test_padding_states_are_zero_for_tokenwise_and_stepwise():
    rewards = torch.tensor([[1.0, -1.0, 7.0], [2.0, 9.0, -9.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]]).bool()
    sign = torch.tensor([1, 1])
    tok = ops.keep_mask(rewards, mask, sign, kind="tokenwise", baseline="zero")
    assert tok.states.tolist() == [[1, -1, 0], [1, 0, 0]]
    assert tok.keep.tolist() == [[True, False, False], [True, False, False]]
    assert tok.segment_ids is None
    boundary = torch.tensor([[1, 0, 1], [0, 1, 1]]).bool()
    step = ops.keep_mask(rewards, mask, sign, kind="stepwise", baseline="zero", is_boundary=boundary)
    # row 0: segments [1] (ends at the boundary) and [-1]; row 1: one segment [2]; padding -1 / state 0
    assert step.segment_ids.tolist() == [[0, 1, -1], [0, -1, -1]]
    assert step.states.tolist() == [[1, -1, 0], [1, 0, 0]]


def test_defaults_when_not_passed():
    """keep_mask: kind asr, baseline batch_mean, delta 0, neutral drop, empty full; hysteresis delta 0;
    tokenwise baseline batch_mean."""
    rewards = torch.tensor([[0.0, 2.0, 1.0, 4.0]])  # batch mean 1.75
    mask = torch.ones(1, 4, dtype=torch.bool)
    sign = torch.tensor([1])
    out = ops.keep_mask(rewards, mask, sign)
    assert out.baseline.tolist() == [1.75] and out.delta == 0.0
    assert out.states.tolist() == [[-1, 1, -1, 1]]
    assert out.keep.tolist() == [[False, True, False, True]]
    assert ops.hysteresis_states(rewards, mask, 1.0).tolist() == [[-1, 1, 1, 1]]  # delta 0: the tie 1.0 inherits +1
    assert ops.tokenwise_mask(rewards, mask, sign).tolist() == [[False, True, False, True]]
    # empty="full" by default: a row none of whose tokens agrees keeps the whole response
    full = ops.keep_mask(torch.tensor([[0.0, 0.0]]), torch.ones(1, 2, dtype=torch.bool), torch.tensor([1]),
                         baseline=1.0)
    assert full.keep.tolist() == [[True, True]] and full.fallback.tolist() == [True]
