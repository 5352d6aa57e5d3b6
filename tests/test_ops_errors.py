"""Bad input raises ValueError naming the argument (docs/method.md#ops-contract, last paragraph); inputs are never modified."""

import math

import pytest
import torch

from segrl import ops

R = torch.tensor([[1.0, -1.0, 0.5], [0.2, 0.0, 0.0]])
MASK = torch.tensor([[True, True, True], [True, False, False]])
SIGN = torch.tensor([1, -1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: ops.asr_mask(R[:, :2], MASK, SIGN), "rewards"),
        (lambda: ops.asr_mask(R, MASK, torch.tensor([1, 0])), "seq_sign"),
        (lambda: ops.asr_mask(R, MASK, torch.tensor([1])), "seq_sign"),
        (lambda: ops.asr_mask(R, MASK, SIGN, baseline="median"), "baseline"),
        (lambda: ops.asr_mask(R, MASK, SIGN, neutral="maybe"), "neutral"),
        (lambda: ops.asr_mask(R, MASK, SIGN, empty="half"), "empty"),
        (lambda: ops.asr_mask(R, MASK, SIGN, delta=-0.1), "delta"),
        (lambda: ops.asr_mask(R, MASK, SIGN, delta=float("nan")), "delta"),
        (lambda: ops.asr_mask(R, torch.tensor([[True, False, True], [True, False, False]]), SIGN), "right-padded"),
        (lambda: ops.asr_mask(R, torch.tensor([[1, 2, 0], [1, 0, 0]]), SIGN), "mask"),
        (lambda: ops.asr_mask(torch.tensor([[1.0, float("nan"), 0.0], [0.0, 0.0, 0.0]]), MASK, SIGN), "rewards"),
        (lambda: ops.asr_mask(torch.tensor([[1.0, float("inf"), 0.0], [0.0, 0.0, 0.0]]), MASK, SIGN), "rewards"),
        (lambda: ops.asr_mask(R.long(), MASK, SIGN), "rewards"),
        (lambda: ops.hysteresis_states(R, MASK, torch.zeros(3), 0.0), "baseline"),
        (lambda: ops.hysteresis_states(R, MASK, "batch_mean", 0.0), "baseline"),
        (lambda: ops.resolve_baseline(R, MASK[0], "zero"), "mask"),
        (lambda: ops.segment_ids_from_states(torch.tensor([[2, 0, 0], [0, 0, 0]]), MASK), "states"),
        (lambda: ops.segment_ids_from_states(torch.zeros(2, 3), MASK), "states"),
        (lambda: ops.entropy_segment_ids(R, MASK, -1.0), "threshold"),
        (lambda: ops.entropy_segment_ids(R, MASK, float("nan")), "threshold"),
        (lambda: ops.entropy_segment_ids(torch.tensor([[float("nan"), 0.0, 0.0], [0.0, 0.0, 0.0]]), MASK, 1.0), "entropy"),
        (lambda: ops.entropy_segment_ids(R[:1], MASK, 1.0), "entropy"),
        (lambda: ops.segment_end_values(R, torch.tensor([[0, 2, 2], [0, -1, -1]])), "segment_ids"),
        (lambda: ops.segment_end_values(R, torch.tensor([[0, -1, 0], [0, -1, -1]])), "segment_ids"),
        (lambda: ops.segment_end_values(R[:, :2], torch.tensor([[0, 0, 1], [0, -1, -1]])), "values"),
        (lambda: ops.location_normalize(R, MASK, None), "not been fitted"),
        (lambda: ops.location_normalize(R, MASK, {"a_mu": 1.0}), "coef"),
        (lambda: ops.location_normalize(R, MASK, {"a_mu": 1, "b_mu": 0, "a_sigma": 0, "b_sigma": 1}, 0.0), "sigma_floor"),
        (lambda: ops.location_normalize(R[:, :2], MASK, {"a_mu": 1, "b_mu": 0, "a_sigma": 0, "b_sigma": 1}), "seg_rewards"),
        (lambda: ops.spread_segment_rewards(R, torch.tensor([[0, 0, 1], [0, -1, -1]]), mode="sideways"), "mode"),
        (lambda: ops.spread_segment_rewards(R[:, :1], torch.tensor([[0, 0, 1], [0, -1, -1]])), "seg_rewards"),
        (lambda: ops.spread_segment_rewards(R[:1], torch.tensor([[0, 0, 1], [0, -1, -1]])), "seg_rewards"),
        (lambda: ops.fit_location_normalizer([0.5, 1.0], [1.0]), "rewards"),
        (lambda: ops.fit_location_normalizer([], []), "locations"),
        (lambda: ops.fit_location_normalizer([0.0, 1.0], [1.0, 2.0]), "locations"),
        (lambda: ops.fit_location_normalizer([0.5, 1.0], [1.0, float("nan")]), "rewards"),
        (lambda: ops.step_segment_ids(torch.tensor([[0, 3, 0], [0, 0, 0]]), MASK), "is_boundary"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_nan_at_padding_is_allowed():
    # Padding positions may hold anything (e.g. NaN from a masked log-softmax); only valid tokens are checked.
    r = torch.tensor([[1.0, float("nan")]])
    m = torch.tensor([[True, False]])
    assert ops.asr_mask(r, m, torch.tensor([1])).tolist() == [[True, False]]


def test_entropy_of_eos_is_never_read():
    # The last valid token (EOS) is outside every dense segment, so a NaN there is harmless.
    e = torch.tensor([[0.0, 3.0, float("nan")]])
    assert ops.entropy_segment_ids(e, torch.ones(1, 3, dtype=torch.bool), 1.0).tolist() == [[0, 1, -1]]


def test_inputs_are_not_modified():
    r, m, s = R.clone(), MASK.clone(), SIGN.clone()
    e = torch.rand(2, 3)
    e0 = e.clone()
    ops.asr_mask(r, m, s, delta=0.2)
    ops.tokenwise_mask(r, m, s)
    ops.stepwise_mask(r, m, torch.tensor([[0, 1, 0], [0, 0, 0]]).bool(), s)
    ids = ops.entropy_segment_ids(e, m, 0.5)
    ids0 = ids.clone()
    seg, valid = ops.segment_end_values(r, ids)
    seg0 = seg.clone()
    ops.spread_segment_rewards(ops.location_normalize(seg, valid, ops.LocationNormalizerCoef(1, 0, 0, 1)), ids)
    assert torch.equal(r, R) and torch.equal(m, MASK) and torch.equal(s, SIGN)
    assert torch.equal(e, e0) and torch.equal(ids, ids0) and torch.equal(seg, seg0)


def test_integer_mask_accepted():
    assert ops.asr_mask(R, MASK.long(), SIGN).dtype == torch.bool


def test_threshold_inf_is_bandit():
    ids = ops.entropy_segment_ids(torch.zeros(1, 3), torch.ones(1, 3, dtype=torch.bool), math.inf)
    assert ids.tolist() == [[0, 0, 0]]


@pytest.mark.parametrize(
    "call, match",
    [
        # a bool seq_sign cannot say -1: True/False must not pass as +1/0 (issue: seq_sign given as bool)
        (lambda: ops.asr_mask(R, MASK, torch.tensor([True, True])), "seq_sign"),
        (lambda: ops.keep_mask(R, MASK, [True, False]), "seq_sign"),
        (lambda: ops.keep_mask(R, MASK, torch.tensor([True, True]), kind="none"), "seq_sign"),
        (lambda: ops.keep_mask(R, MASK, SIGN, kind="segments"), "kind"),
        (lambda: ops.keep_mask(None, MASK, SIGN), "rewards"),
        (lambda: ops.keep_mask(R, MASK, SIGN, kind="stepwise"), "is_boundary"),
        (lambda: ops.keep_mask(R, MASK, SIGN, delta="automatic"), "delta"),
        (lambda: ops.keep_mask(R, MASK, SIGN, delta=-1.0), "delta"),
        (lambda: ops.keep_mask(R, MASK, SIGN, delta="auto", delta_quantile=1.5), "delta_quantile"),
        (lambda: ops.keep_mask(R, MASK, SIGN, delta="auto", delta_quantile=float("nan")), "delta_quantile"),
        (lambda: ops.keep_mask(R, MASK, SIGN, neutral="maybe"), "neutral"),
        (lambda: ops.keep_mask(R, MASK, SIGN, empty="half"), "empty"),
        (lambda: ops.keep_mask(R, MASK, SIGN, baseline=torch.zeros(3)), "baseline"),
        (lambda: ops.resolve_delta(R, MASK, "zero", "0.1"), "delta"),
        (lambda: ops.resolve_delta(R, MASK, "zero", "auto", -0.1), "delta_quantile"),
        (lambda: ops.resolve_delta(R, MASK, "median", "auto"), "baseline"),
        (lambda: ops.asr_mask(R, MASK, SIGN, delta="auto", delta_quantile=2), "delta_quantile"),
        (lambda: ops.sequence_sign(R, 0.0), "seq_rewards"),
        (lambda: ops.sequence_sign(torch.tensor([1.0, float("nan")]), 0.0), "seq_rewards"),
        (lambda: ops.sequence_sign(torch.tensor([1.0, 2.0]), torch.zeros(3)), "baseline"),
        (lambda: ops.sequence_sign(torch.tensor([1.0, 2.0]), "mean"), "baseline"),
        (lambda: ops.preference_sign(-1), "n_pairs"),
        (lambda: ops.preference_sign(True), "n_pairs"),
        (lambda: ops.position_bins(MASK, 0), "bins"),
    ],
)
def test_new_api_bad_input_names_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
