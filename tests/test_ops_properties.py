"""Property tests: every core op in :mod:`segrl.ops` against the plain-loop reference.

The reference (``tests/loop_reference.py``) is written straight from ``docs/method.md`` with Python loops,
independently of the vectorised implementation. Batches are small, random and right-padded, with
rows of length 0, 1 and 2, garbage in the padding, small integer (or half-integer) rewards so that
ties ``r == b`` and ``r == b +- delta`` really happen, entropies that tie the threshold, every
baseline / neutral / empty / spread mode. Every call also checks that the inputs were not modified
and that the outputs have the documented dtypes.
"""

from __future__ import annotations

import math
import os
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import loop_reference as ref  # noqa: E402

from segrl import ops  # noqa: E402

PROPS = settings(deadline=None, max_examples=150, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.too_slow])
FITS = settings(deadline=None, max_examples=25, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

FLOAT_DTYPES = [torch.float32, torch.float64]
BASELINES = ["batch_mean", "sequence_mean", "zero", 0.0, 1.0, -1.0, 0.5, 2]
DELTAS = [0.0, 0.5, 1.0, 2.0]
THRESHOLDS = [0.0, 0.5, 1.0, 1.5, 0.25, math.inf]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _snapshot(args, kwargs):
    out = []
    for x in list(args) + list(kwargs.values()):
        if isinstance(x, torch.Tensor):
            out.append((x, x.detach().clone(), x.dtype, x.shape))
    return out


def call(fn, *args, **kwargs):
    """Call ``fn`` and assert that none of its tensor arguments was modified."""
    snap = _snapshot(args, kwargs)
    result = fn(*args, **kwargs)
    for live, copy, dtype, shape in snap:
        assert live.dtype == dtype and live.shape == shape, f"{fn.__name__} changed an input's dtype/shape"
        assert torch.equal(live.detach(), copy), f"{fn.__name__} modified an input tensor in place"
    return result


def assert_same_long(got, want, name):
    assert isinstance(got, torch.Tensor), f"{name}: not a tensor"
    assert got.dtype == torch.long, f"{name}: dtype {got.dtype}, docs/method.md#tensor-conventions says torch.long"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(got.cpu(), want), f"{name}:\n got {got.tolist()}\nwant {want.tolist()}"


def assert_same_bool(got, want, name):
    assert isinstance(got, torch.Tensor), f"{name}: not a tensor"
    assert got.dtype == torch.bool, f"{name}: dtype {got.dtype}, docs/method.md#tensor-conventions says torch.bool"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    assert torch.equal(got.cpu(), want), f"{name}:\n got {got.int().tolist()}\nwant {want.int().tolist()}"


def assert_close(got, want, name, rtol=1e-5, atol=1e-5):
    assert isinstance(got, torch.Tensor), f"{name}: not a tensor"
    assert got.dtype.is_floating_point, f"{name}: dtype {got.dtype} is not floating point"
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    torch.testing.assert_close(got.detach().cpu().double(), want.double(), rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


def make_mask(lengths, T):
    mask = torch.zeros(len(lengths), T, dtype=torch.bool)
    for b, n in enumerate(lengths):
        mask[b, :n] = True
    return mask


def coef_get(coef, name):
    if isinstance(coef, dict):
        return float(coef[name])
    try:
        return float(getattr(coef, name))
    except AttributeError:
        return float(coef[name])


# --------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------


@st.composite
def shapes(draw, min_B=1, max_B=5, max_T=9):
    B = draw(st.integers(min_B, max_B))
    T = draw(st.integers(0, max_T))
    short = st.sampled_from([0, 1, 2]).map(lambda n: min(n, T))
    lengths = draw(st.lists(st.one_of(short, st.integers(0, T)), min_size=B, max_size=B))
    return B, T, lengths, make_mask(lengths, T)


@st.composite
def reward_batches(draw, min_B=1, max_B=5, max_T=9, values=None):
    """(rewards, mask): small integer or half-integer rewards; finite garbage in the padding."""
    B, T, lengths, mask = draw(shapes(min_B, max_B, max_T))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    if values is None:
        scale = draw(st.sampled_from([1.0, 0.5]))
        values = st.integers(-3, 3).map(lambda v: v * scale)
    flat = draw(st.lists(values, min_size=B * T, max_size=B * T))
    pad = draw(st.lists(st.sampled_from([0.0, -7.0, 5.0, 100.0]), min_size=B * T, max_size=B * T))
    r = torch.tensor(flat, dtype=torch.float64).reshape(B, T)
    g = torch.tensor(pad, dtype=torch.float64).reshape(B, T)
    rewards = torch.where(mask, r, g).to(dtype)
    return rewards, mask


def seq_signs(B):
    return st.tuples(
        st.lists(st.sampled_from([-1, 1]), min_size=B, max_size=B),
        st.sampled_from([torch.long, torch.float32]),
    ).map(lambda p: torch.tensor(p[0], dtype=p[1]))


@st.composite
def segment_id_batches(draw, min_B=1, max_B=5, max_T=9):
    """Valid segment ids: per row, consecutive runs numbered 0..K_b-1 then a tail of -1."""
    B = draw(st.integers(min_B, max_B))
    T = draw(st.integers(0, max_T))
    rows = []
    for _ in range(B):
        covered = draw(st.integers(0, T))
        row, k, t = [], 0, 0
        while t < covered:
            run = draw(st.integers(1, covered - t))
            row += [k] * run
            k += 1
            t += run
        rows.append(row + [-1] * (T - covered))
    return torch.tensor(rows, dtype=torch.long).reshape(B, T)


def num_segments(ids):
    return [int(row.max().item()) + 1 if row.numel() and row.max() >= 0 else 0 for row in ids]


# --------------------------------------------------------------------------------------------
# the reference itself, on hand-checked examples (guards the oracle)
# --------------------------------------------------------------------------------------------


def test_reference_hand_examples():
    r = torch.tensor([[1.0, 0.0, -1.0, 0.0, 2.0, 9.0], [0.0, 0.0, 1.0, 0.0, 0.0, 0.0]])
    m = make_mask([5, 3], 6)
    assert ref.resolve_baseline(r, m, "batch_mean").tolist() == [0.375, 0.375]
    assert ref.resolve_baseline(r, m, "sequence_mean").tolist() == pytest.approx([0.4, 1 / 3])
    s = ref.hysteresis_states(r, m, 0.0, 0.0)
    assert s.tolist() == [[1, 1, -1, -1, 1, 0], [0, 0, 1, 0, 0, 0]]
    assert ref.segment_ids_from_states(s, m).tolist() == [[0, 0, 1, 1, 2, -1], [0, 0, 1, -1, -1, -1]]
    assert ref.hysteresis_states(r, m, 0.0, 1.0).tolist() == [[0, 0, 0, 0, 1, 0], [0] * 6]
    sign = torch.tensor([1, -1])
    assert ref.asr_mask(r, m, sign, baseline="zero").int().tolist() == [[1, 1, 0, 0, 1, 0], [1, 1, 1, 0, 0, 0]]
    assert ref.asr_mask(r, m, sign, baseline="zero", empty="none").int().tolist() == [[1, 1, 0, 0, 1, 0], [0] * 6]
    assert ref.asr_mask(r, m, sign, baseline="zero", neutral="keep").int().tolist() == [[1, 1, 0, 0, 1, 0], [1, 1, 0, 0, 0, 0]]
    assert ref.tokenwise_mask(r, m, torch.tensor([1, 1]), baseline="zero").int().tolist() == [[1, 0, 0, 0, 1, 0], [0, 0, 1, 0, 0, 0]]
    e = torch.tensor([[0.0, 1.0, 0.5, 2.0, 0.5, 0.0], [0.0, 3.0, 3.0, 0.0, 0.0, 0.0]])
    ids = ref.entropy_segment_ids(e, m, 0.5)
    assert ids.tolist() == [[0, 1, 1, 2, -1, -1], [0, 1, -1, -1, -1, -1]]
    assert ref.entropy_segment_ids(e, m, 0.0).tolist() == [[0, 1, 2, 3, -1, -1], [0, 1, -1, -1, -1, -1]]
    assert ref.entropy_segment_ids(e, m, math.inf).tolist() == [[0, 0, 0, 0, 0, -1], [0, 0, 0, -1, -1, -1]]
    assert ref.entropy_segment_ids(e, make_mask([1, 0], 6), 0.5).tolist() == [[-1] * 6, [-1] * 6]
    assert ref.entropy_segment_ids(e, make_mask([1, 0], 6), math.inf).tolist() == [[0] + [-1] * 5, [-1] * 6]
    sv, ok = ref.segment_end_values(torch.arange(12.0).reshape(2, 6), ids)
    assert sv.tolist() == [[0.0, 2.0, 3.0], [6.0, 7.0, 0.0]] and ok.tolist() == [[True] * 3, [True, True, False]]
    coef = {"a_mu": 0.0, "b_mu": 1.0, "a_sigma": 0.0, "b_sigma": 2.0}
    assert ref.location_normalize(sv, ok, coef).tolist() == [[-0.5, 0.5, 1.0], [2.5, 3.0, 0.0]]
    coef = {"a_mu": 1.0, "b_mu": 0.0, "a_sigma": 0.0, "b_sigma": 0.001}  # sigma floored to 1e-2
    got = ref.location_normalize(torch.tensor([[1.0, 1.0]], dtype=torch.float64), torch.tensor([[True, True]]), coef)
    assert got.tolist()[0] == pytest.approx([(1 - math.log(0.5)) / 1e-2, 100.0])
    assert ref.spread_segment_rewards(sv, ids, "even").tolist() == [[0, 1, 1, 3, 0, 0], [6, 7, 0, 0, 0, 0]]
    assert ref.spread_segment_rewards(sv, ids, "end").tolist() == [[0, 0, 2, 3, 0, 0], [6, 7, 0, 0, 0, 0]]
    assert ref.spread_segment_rewards(sv, ids, "repeat").tolist() == [[0, 2, 2, 3, 0, 0], [6, 7, 0, 0, 0, 0]]
    isb = torch.tensor([[0, 1, 0, 0, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    assert ref.step_segment_ids(isb, m).tolist() == [[0, 0, 1, 1, 1, -1], [0, 1, 2, -1, -1, -1]]
    # row 0: step means 0.5 and 1/3 (> 0); row 1: steps [0], [0], [1]
    assert ref.stepwise_mask(r, m, isb, torch.tensor([1, 1]), baseline="zero").int().tolist() == [[1, 1, 1, 1, 1, 0], [0, 0, 1, 0, 0, 0]]
    keys, means, stds = ref.fit_location_buckets([0.5, 0.5, 1.0, 0.3333333, 0.333], [1.0, 3.0, 5.0, 1.0, 2.0])
    assert keys == [0.333, 0.5, 1.0] and means == [1.5, 2.0, 5.0] and stds == [0.5, 1.0, 0.0]


# --------------------------------------------------------------------------------------------
# section 1: ASR
# --------------------------------------------------------------------------------------------


@PROPS
@given(batch=reward_batches(), baseline=st.sampled_from(BASELINES))
def test_resolve_baseline_matches_reference(batch, baseline):
    rewards, mask = batch
    got = call(ops.resolve_baseline, rewards, mask, baseline)
    want = ref.resolve_baseline(rewards, mask, baseline)
    assert_close(got, want, "resolve_baseline", rtol=1e-6, atol=1e-6)


@PROPS
@given(batch=reward_batches(), data=st.data())
def test_hysteresis_states_matches_reference(batch, data):
    rewards, mask = batch
    B = rewards.shape[0]
    delta = data.draw(st.sampled_from(DELTAS), label="delta")
    kind = data.draw(st.sampled_from(["float", "tensor", "resolved"]), label="baseline kind")
    if kind == "float":
        baseline = data.draw(st.sampled_from([0.0, 0.5, 1.0, -1.0, 2.0]), label="baseline")
    elif kind == "tensor":
        vals = data.draw(st.lists(st.integers(-4, 4), min_size=B, max_size=B), label="baseline")
        baseline = torch.tensor(vals, dtype=rewards.dtype) / 2
    else:
        mode = data.draw(st.sampled_from(["batch_mean", "sequence_mean", "zero"]), label="baseline mode")
        baseline = ref.resolve_baseline(rewards, mask, mode).to(rewards.dtype)
    got = call(ops.hysteresis_states, rewards, mask, baseline, delta)
    want = ref.hysteresis_states(rewards, mask, baseline, delta)
    assert_same_long(got, want, "hysteresis_states")


@PROPS
@given(shape=shapes(), data=st.data())
def test_segment_ids_from_states_matches_reference(shape, data):
    B, T, lengths, mask = shape
    flat = data.draw(st.lists(st.sampled_from([-1, 0, 1]), min_size=B * T, max_size=B * T), label="states")
    states = torch.tensor(flat, dtype=torch.long).reshape(B, T)
    if data.draw(st.booleans(), label="zero padding"):  # what hysteresis_states returns
        states = states.masked_fill(~mask, 0)
    got = call(ops.segment_ids_from_states, states, mask)
    want = ref.segment_ids_from_states(states, mask)
    assert_same_long(got, want, "segment_ids_from_states")


@PROPS
@given(batch=reward_batches(), delta=st.sampled_from(DELTAS))
def test_segments_of_hysteresis_states(batch, delta):
    """Pipeline: the library's states fed to the library's segmenter equal the reference's."""
    rewards, mask = batch
    base = ops.resolve_baseline(rewards, mask, "batch_mean")
    got = ops.segment_ids_from_states(ops.hysteresis_states(rewards, mask, base, delta), mask)
    want = ref.segment_ids_from_states(ref.hysteresis_states(rewards, mask, ref.resolve_baseline(rewards, mask, "batch_mean"), delta), mask)
    assert_same_long(got, want, "segment_ids_from_states(hysteresis_states)")


@PROPS
@given(
    batch=reward_batches(),
    data=st.data(),
    baseline=st.sampled_from(BASELINES),
    delta=st.sampled_from(DELTAS),
    neutral=st.sampled_from(["drop", "keep"]),
    empty=st.sampled_from(["full", "none"]),
)
def test_asr_mask_matches_reference(batch, data, baseline, delta, neutral, empty):
    rewards, mask = batch
    sign = data.draw(seq_signs(rewards.shape[0]), label="seq_sign")
    got = call(ops.asr_mask, rewards, mask, sign, baseline=baseline, delta=delta, neutral=neutral, empty=empty)
    want = ref.asr_mask(rewards, mask, sign, baseline=baseline, delta=delta, neutral=neutral, empty=empty)
    assert_same_bool(got, want, "asr_mask")


@PROPS
@given(batch=reward_batches(), data=st.data())
def test_asr_mask_defaults_match_reference(batch, data):
    rewards, mask = batch
    sign = data.draw(seq_signs(rewards.shape[0]), label="seq_sign")
    got = call(ops.asr_mask, rewards, mask, sign)
    want = ref.asr_mask(rewards, mask, sign, baseline="batch_mean", delta=0.0, neutral="drop", empty="full")
    assert_same_bool(got, want, "asr_mask(defaults)")


@PROPS
@given(
    batch=reward_batches(),
    data=st.data(),
    baseline=st.sampled_from(BASELINES),
    neutral=st.sampled_from(["drop", "keep"]),
    empty=st.sampled_from(["full", "none"]),
)
def test_tokenwise_mask_matches_reference(batch, data, baseline, neutral, empty):
    rewards, mask = batch
    sign = data.draw(seq_signs(rewards.shape[0]), label="seq_sign")
    got = call(ops.tokenwise_mask, rewards, mask, sign, baseline=baseline, neutral=neutral, empty=empty)
    want = ref.tokenwise_mask(rewards, mask, sign, baseline=baseline, neutral=neutral, empty=empty)
    assert_same_bool(got, want, "tokenwise_mask")


@PROPS
@given(shape=shapes(), data=st.data())
def test_step_segment_ids_matches_reference(shape, data):
    B, T, lengths, mask = shape
    flat = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T), label="is_boundary")
    is_boundary = torch.tensor(flat, dtype=torch.bool).reshape(B, T)
    got = call(ops.step_segment_ids, is_boundary, mask)
    want = ref.step_segment_ids(is_boundary, mask)
    assert_same_long(got, want, "step_segment_ids")


@PROPS
@given(
    batch=reward_batches(),
    data=st.data(),
    baseline=st.sampled_from(BASELINES),
    neutral=st.sampled_from(["drop", "keep"]),
    empty=st.sampled_from(["full", "none"]),
)
def test_stepwise_mask_matches_reference(batch, data, baseline, neutral, empty):
    rewards, mask = batch
    B, T = rewards.shape
    flat = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T), label="is_boundary")
    is_boundary = torch.tensor(flat, dtype=torch.bool).reshape(B, T)
    sign = data.draw(seq_signs(B), label="seq_sign")
    got = call(ops.stepwise_mask, rewards, mask, is_boundary, sign, baseline=baseline, neutral=neutral, empty=empty)
    want = ref.stepwise_mask(rewards, mask, is_boundary, sign, baseline=baseline, neutral=neutral, empty=empty)
    assert_same_bool(got, want, "stepwise_mask")


# --------------------------------------------------------------------------------------------
# section 2: segment reward model
# --------------------------------------------------------------------------------------------


@st.composite
def entropy_batches(draw, min_B=1, max_B=5, max_T=9):
    B, T, lengths, mask = draw(shapes(min_B, max_B, max_T))
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    values = st.one_of(
        st.sampled_from([0.0, 0.25, 0.5, 1.0, 1.5, 2.0]),  # exact ties with THRESHOLDS
        st.floats(0.0, 5.0, allow_nan=False, allow_infinity=False, width=32),
    )
    flat = draw(st.lists(values, min_size=B * T, max_size=B * T))
    entropy = torch.tensor(flat, dtype=torch.float64).reshape(B, T)
    entropy = torch.where(mask, entropy, torch.full_like(entropy, 99.0)).to(dtype)
    return entropy, mask


@PROPS
@given(batch=entropy_batches(), threshold=st.sampled_from(THRESHOLDS))
def test_entropy_segment_ids_matches_reference(batch, threshold):
    entropy, mask = batch
    got = call(ops.entropy_segment_ids, entropy, mask, threshold)
    want = ref.entropy_segment_ids(entropy, mask, threshold)
    assert_same_long(got, want, "entropy_segment_ids")


@PROPS
@given(ids=segment_id_batches(), data=st.data())
def test_segment_end_values_matches_reference(ids, data):
    B, T = ids.shape
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    flat = data.draw(st.lists(st.floats(-10, 10, width=32), min_size=B * T, max_size=B * T), label="values")
    values = torch.tensor(flat, dtype=dtype).reshape(B, T)
    got_v, got_m = call(ops.segment_end_values, values, ids)
    want_v, want_m = ref.segment_end_values(values, ids)
    assert got_v.dtype == values.dtype, f"segment_end_values: value dtype {got_v.dtype} != input {values.dtype}"
    assert_same_bool(got_m, want_m, "segment_end_values valid")
    assert_close(got_v, want_v, "segment_end_values values", rtol=0, atol=0)


@PROPS
@given(batch=entropy_batches(), threshold=st.sampled_from(THRESHOLDS), data=st.data())
def test_segment_end_values_on_entropy_segments(batch, threshold, data):
    entropy, mask = batch
    ids = ops.entropy_segment_ids(entropy, mask, threshold)
    B, T = ids.shape
    values = torch.arange(B * T, dtype=torch.float32).reshape(B, T) - 3.0
    got_v, got_m = call(ops.segment_end_values, values, ids)
    want_v, want_m = ref.segment_end_values(values, ref.entropy_segment_ids(entropy, mask, threshold))
    assert_same_bool(got_m, want_m, "segment_end_values valid")
    assert_close(got_v, want_v, "segment_end_values values", rtol=0, atol=0)


@st.composite
def coefs(draw):
    c = {
        "a_mu": draw(st.floats(-2, 2, width=32)),
        "b_mu": draw(st.floats(-2, 2, width=32)),
        "a_sigma": draw(st.floats(-1, 1, width=32)),
        "b_sigma": draw(st.floats(-0.5, 2, width=32)),  # negative b_sigma exercises the floor
    }
    return c if draw(st.booleans()) else SimpleNamespace(**c)


@PROPS
@given(data=st.data(), coef=coefs(), floor=st.sampled_from([None, 1e-2, 0.1, 0.5]))
def test_location_normalize_matches_reference(data, coef, floor):
    B = data.draw(st.integers(1, 5), label="B")
    K = data.draw(st.integers(0, 8), label="K_max")
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    counts = data.draw(st.lists(st.integers(0, K), min_size=B, max_size=B), label="K_b")
    seg_valid = make_mask(counts, K)
    flat = data.draw(st.lists(st.floats(-10, 10, width=32), min_size=B * K, max_size=B * K), label="seg_rewards")
    seg_rewards = torch.tensor(flat, dtype=dtype).reshape(B, K)
    if floor is None:
        got = call(ops.location_normalize, seg_rewards, seg_valid, coef)
        want = ref.location_normalize(seg_rewards, seg_valid, coef)
    else:
        got = call(ops.location_normalize, seg_rewards, seg_valid, coef, sigma_floor=floor)
        want = ref.location_normalize(seg_rewards, seg_valid, coef, sigma_floor=floor)
    assert_close(got, want, "location_normalize", rtol=1e-4, atol=1e-4)
    assert torch.all(got[~seg_valid] == 0), "location_normalize: invalid slots must be 0"


@PROPS
@given(ids=segment_id_batches(), mode=st.sampled_from(["even", "end", "repeat", None]), data=st.data())
def test_spread_segment_rewards_matches_reference(ids, mode, data):
    B, T = ids.shape
    K = max(num_segments(ids), default=0)
    dtype = data.draw(st.sampled_from(FLOAT_DTYPES), label="dtype")
    flat = data.draw(st.lists(st.floats(-10, 10, width=32), min_size=B * K, max_size=B * K), label="seg_rewards")
    seg_rewards = torch.tensor(flat, dtype=dtype).reshape(B, K)
    if mode is None:  # default is "even"
        got = call(ops.spread_segment_rewards, seg_rewards, ids)
        want = ref.spread_segment_rewards(seg_rewards, ids, "even")
    else:
        got = call(ops.spread_segment_rewards, seg_rewards, ids, mode=mode)
        want = ref.spread_segment_rewards(seg_rewards, ids, mode)
    assert got.dtype == seg_rewards.dtype, f"spread_segment_rewards: dtype {got.dtype} != {seg_rewards.dtype}"
    assert_close(got, want, f"spread_segment_rewards({mode})", rtol=1e-6, atol=1e-6)


@PROPS
@given(batch=entropy_batches(), threshold=st.sampled_from(THRESHOLDS), mode=st.sampled_from(["even", "end", "repeat"]))
def test_segment_pipeline_matches_reference(batch, threshold, mode):
    """entropy_segment_ids -> segment_end_values -> location_normalize -> spread, end to end."""
    entropy, mask = batch
    values = (entropy * 3 - 2).masked_fill(~mask, 0)  # any per-position scalar
    coef = {"a_mu": 0.3, "b_mu": -0.2, "a_sigma": -0.1, "b_sigma": 0.8}
    ids = ops.entropy_segment_ids(entropy, mask, threshold)
    sv, ok = ops.segment_end_values(values, ids)
    got = ops.spread_segment_rewards(ops.location_normalize(sv, ok, coef), ids, mode=mode)
    rids = ref.entropy_segment_ids(entropy, mask, threshold)
    rsv, rok = ref.segment_end_values(values, rids)
    want = ref.spread_segment_rewards(ref.location_normalize(rsv, rok, coef), rids, mode)
    assert_close(got, want, "segment pipeline", rtol=1e-4, atol=1e-4)


# ---- fit_location_normalizer -------------------------------------------------------------

# Denominators that divide 1000: every k/K has at most 3 decimals, so rounding to 3 decimals is
# (up to float representation) the identity and bucket membership is unambiguous.
EXACT_K = [1, 2, 4, 5, 8, 10, 20, 25, 40, 50]


@st.composite
def fit_data(draw, Ks):
    n = draw(st.integers(4, 40))
    locs, rews = [], []
    for _ in range(n):
        K = draw(st.sampled_from(Ks))
        k = draw(st.integers(1, K))
        locs.append(k / K)
        rews.append(draw(st.floats(-5, 5, allow_nan=False, allow_infinity=False)))
    assume(len({round(p, 3) for p in locs}) >= 3)
    return np.array(locs), np.array(rews)


def _fit_close(got, want, name):
    for key in ("a_mu", "b_mu", "a_sigma", "b_sigma"):
        g, w = coef_get(got, key), getattr(want, key)
        assert math.isfinite(g), f"{name}: {key} = {g}"
        assert abs(g - w) <= 1e-4 * max(1.0, abs(w)), f"{name}: {key} = {g}, reference {w}"


@FITS
@given(d=fit_data(EXACT_K))
def test_fit_location_normalizer_matches_reference(d):
    locs, rews = d
    got = ops.fit_location_normalizer(locs, rews)
    _fit_close(got, ref.fit_location_normalizer(locs, rews), "fit_location_normalizer")


@FITS
@given(d=fit_data(list(range(1, 65)) + [80, 160, 400, 2000]))
def test_fit_location_normalizer_rounds_locations_to_3_decimals(d):
    """Locations like 1/3 are bucketed as round(p, 3) = 0.333 and regressed at ln(0.333 + 1e-10).
    Rounding is Python's round / the paper's "%.3f" key (correct rounding of the binary value):
    1/80 = 0.0125 (stored as 0.012500000000000000694) goes to 0.013, where np.round gives 0.012;
    the denominators 80, 160, 400 and 2000 tell the two apart."""
    locs, rews = d
    got = ops.fit_location_normalizer(locs, rews)
    _fit_close(got, ref.fit_location_normalizer(locs, rews), "fit_location_normalizer(rounded p)")


def test_fit_location_normalizer_recovers_a_noiseless_law():
    rng = np.random.default_rng(0)
    locs, rews = [], []
    for K in range(1, 21):
        for k in range(1, K + 1):
            p = k / K
            mu, sigma = 0.4 * math.log(p + 1e-10) + 1.0, -0.05 * math.log(p + 1e-10) + 0.3
            z = rng.standard_normal(4)
            z = (z - z.mean()) / z.std()  # exactly mean 0, population std 1 per draw
            for zi in z:
                locs.append(p)
                rews.append(mu + sigma * zi)
    got = ops.fit_location_normalizer(np.array(locs), np.array(rews))
    # buckets mix several p's only where round(p, 3) merges them; the law is recovered closely
    assert coef_get(got, "a_mu") == pytest.approx(0.4, abs=2e-2)
    assert coef_get(got, "b_mu") == pytest.approx(1.0, abs=2e-2)
    assert coef_get(got, "a_sigma") == pytest.approx(-0.05, abs=2e-2)
    assert coef_get(got, "b_sigma") == pytest.approx(0.3, abs=2e-2)
    # and the fitted coef is accepted by location_normalize as is
    out = ops.location_normalize(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), got)
    assert out.shape == (1, 3) and torch.isfinite(out).all()


@FEW
@given(
    batch=reward_batches(max_B=8, max_T=64),
    data=st.data(),
    baseline=st.sampled_from(BASELINES),
    delta=st.sampled_from(DELTAS),
    threshold=st.sampled_from(THRESHOLDS),
    mode=st.sampled_from(["even", "end", "repeat"]),
)
def test_longer_rows_match_reference(batch, data, baseline, delta, threshold, mode):
    """The same comparisons on rows up to 64 tokens (long runs, many segments)."""
    rewards, mask = batch
    B, T = rewards.shape
    sign = data.draw(seq_signs(B), label="seq_sign")
    want = ref.asr_mask(rewards, mask, sign, baseline=baseline, delta=delta)
    assert_same_bool(ops.asr_mask(rewards, mask, sign, baseline=baseline, delta=delta), want, "asr_mask")
    entropy = rewards.abs()
    want_ids = ref.entropy_segment_ids(entropy, mask, threshold)
    ids = ops.entropy_segment_ids(entropy, mask, threshold)
    assert_same_long(ids, want_ids, "entropy_segment_ids")
    sv, ok = ref.segment_end_values(rewards, want_ids)
    assert_close(ops.spread_segment_rewards(sv, ids, mode=mode), ref.spread_segment_rewards(sv, want_ids, mode), "spread_segment_rewards")


# --------------------------------------------------------------------------------------------
# structured invariants
# --------------------------------------------------------------------------------------------


@st.composite
def continuous_batches(draw, max_B=6, max_T=12):
    """Rewards with no exact zeros (continuous in the paper's setting)."""
    nonzero = st.floats(-3, 3, allow_nan=False, width=32).filter(lambda v: v != 0.0)
    return draw(reward_batches(max_B=max_B, max_T=max_T, values=nonzero))


def _fallback_rows(keep, mask):
    return [b for b in range(mask.shape[0]) if mask[b].any() and not keep[b].any()]


@PROPS
@given(batch=continuous_batches(), chosen=st.booleans())
def test_equilibrate_rule_delta0_baseline0(batch, chosen):
    """delta = 0, b = 0: chosen keeps r > 0, rejected keeps r < 0 (Equilibrate-RLHF), except rows
    that fall back to the full mask. Holds for rewards with no exact zero (see the tie test)."""
    rewards, mask = batch
    B = rewards.shape[0]
    sign = torch.full((B,), 1 if chosen else -1, dtype=torch.long)
    rule = ((rewards > 0) if chosen else (rewards < 0)) & mask
    got = ops.asr_mask(rewards, mask, sign, baseline="zero", delta=0.0)
    for b in range(B):
        if b in _fallback_rows(rule, mask):
            assert torch.equal(got[b], mask[b]), f"row {b}: fallback must give the full response mask"
        else:
            assert torch.equal(got[b], rule[b]), f"row {b}: {got[b].tolist()} != rule {rule[b].tolist()}"
    got_none = ops.asr_mask(rewards, mask, sign, baseline="zero", delta=0.0, empty="none")
    assert torch.equal(got_none, rule)


@PROPS
@given(batch=reward_batches(), chosen=st.booleans())
def test_tokenwise_is_the_equilibrate_rule_even_with_zeros(batch, chosen):
    rewards, mask = batch
    B = rewards.shape[0]
    sign = torch.full((B,), 1 if chosen else -1, dtype=torch.long)
    rule = ((rewards > 0) if chosen else (rewards < 0)) & mask
    assert torch.equal(ops.tokenwise_mask(rewards, mask, sign, baseline="zero", empty="none"), rule)


def test_asr_ties_inherit_the_previous_state():
    """docs/method.md#asr-mask: with delta = 0, r_t == b inherits s_{t-1}; so an exact 0 after a positive token is kept
    for chosen (this is where ASR differs from the r > 0 rule), and a leading 0 is undecided."""
    rewards = torch.tensor([[0.0, 1.0, 0.0, -1.0, 0.0]])
    mask = torch.ones(1, 5, dtype=torch.bool)
    got = ops.asr_mask(rewards, mask, torch.tensor([1]), baseline="zero")
    assert got.tolist() == [[False, True, True, False, False]]
    assert ops.hysteresis_states(rewards, mask, 0.0, 0.0).tolist() == [[0, 1, 1, -1, -1]]


@PROPS
@given(shape=shapes(max_B=6, max_T=12), data=st.data())
def test_threshold_zero_gives_one_segment_per_non_eos_token(shape, data):
    B, T, lengths, mask = shape
    flat = data.draw(st.lists(st.floats(2.0**-10, 10, width=32), min_size=B * T, max_size=B * T), label="entropy>0")
    entropy = torch.tensor(flat).reshape(B, T)
    ids = ops.entropy_segment_ids(entropy, mask, 0.0)
    for b, n in enumerate(lengths):
        assert num_segments(ids[b : b + 1])[0] == max(n - 1, 0)
        if n >= 2:
            assert ids[b, : n - 1].tolist() == list(range(n - 1)) and ids[b, n - 1] == -1


@PROPS
@given(batch=entropy_batches(max_B=6, max_T=12))
def test_threshold_inf_gives_exactly_one_segment(batch):
    entropy, mask = batch
    ids = ops.entropy_segment_ids(entropy, mask, math.inf)
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        assert num_segments(ids[b : b + 1])[0] == (1 if n > 0 else 0)
        assert torch.equal(ids[b] == 0, mask[b])


@PROPS
@given(batch=entropy_batches(max_B=6, max_T=12), threshold=st.sampled_from(THRESHOLDS[:-1]))
def test_dense_segments_cover_all_but_eos(batch, threshold):
    entropy, mask = batch
    ids = ops.entropy_segment_ids(entropy, mask, threshold)
    for b in range(mask.shape[0]):
        n = int(mask[b].sum())
        covered = ids[b] >= 0
        assert covered.sum() == max(n - 1, 0)
        assert not covered[n - 1 :].any()


@PROPS
@given(ids=segment_id_batches(), data=st.data())
def test_even_spread_preserves_segment_sums(ids, data):
    B, T = ids.shape
    K = max(num_segments(ids), default=0)
    flat = data.draw(st.lists(st.integers(-5, 5), min_size=B * K, max_size=B * K), label="seg_rewards")
    seg_rewards = torch.tensor(flat, dtype=torch.float64).reshape(B, K)
    counts = num_segments(ids)
    for mode in ("even", "end"):
        out = ops.spread_segment_rewards(seg_rewards, ids, mode=mode)
        sums = torch.zeros(B, K + 1, dtype=torch.float64).scatter_add_(1, ids.clamp(min=-1) % (K + 1), out)
        for b in range(B):
            assert torch.allclose(sums[b, : counts[b]], seg_rewards[b, : counts[b]], atol=1e-9), f"{mode}: row {b}"


def test_segment_end_values_is_differentiable():
    """The segment RM (docs/method.md#segment-rm) trains through the values read at segment ends."""
    values = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    ids = torch.tensor([[0, 0, 1, -1, -1], [0, 1, 1, 1, -1]])
    sv, ok = ops.segment_end_values(values, ids)
    (sv * ok).sum().backward()
    assert values.grad.tolist() == [[0, 1, 1, 0, 0], [1, 0, 0, 1, 0]]


def test_asr_mask_accepts_rewards_that_require_grad():
    rewards = torch.tensor([[1.0, -1.0, 2.0]], requires_grad=True)
    out = ops.asr_mask(rewards, torch.ones(1, 3, dtype=torch.bool), torch.tensor([1]))
    assert out.dtype == torch.bool and out.tolist() == [[True, False, True]]


# --------------------------------------------------------------------------------------------
# degenerate shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,T", [(0, 4), (3, 0), (0, 0)])
def test_empty_batches(B, T):
    rewards = torch.zeros(B, T)
    mask = torch.zeros(B, T, dtype=torch.bool)
    sign = torch.ones(B, dtype=torch.long)
    assert_same_bool(ops.asr_mask(rewards, mask, sign), torch.zeros(B, T, dtype=torch.bool), "asr_mask")
    assert_close(ops.resolve_baseline(rewards, mask, "batch_mean"), torch.zeros(B), "resolve_baseline")
    assert_same_long(ops.hysteresis_states(rewards, mask, 0.0, 0.0), torch.zeros(B, T, dtype=torch.long), "hysteresis_states")
    for c in (0.0, math.inf):
        ids = ops.entropy_segment_ids(rewards, mask, c)
        assert_same_long(ids, torch.full((B, T), -1), "entropy_segment_ids")
        sv, ok = ops.segment_end_values(rewards, ids)
        assert sv.shape == (B, 0) and ok.shape == (B, 0) and ok.dtype == torch.bool
        assert_close(ops.spread_segment_rewards(sv, ids), torch.zeros(B, T), "spread_segment_rewards")


# --------------------------------------------------------------------------------------------
# invalid input (docs/method.md#ops-contract): ValueError naming the argument
# --------------------------------------------------------------------------------------------


def _valid_inputs():
    rewards = torch.tensor([[1.0, -1.0, 0.5], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True], [True, False, False]])
    return rewards, mask, torch.tensor([1, -1])


@pytest.mark.parametrize(
    "case,arg",
    [
        ("not_right_padded", "mask"),
        ("nan_rewards", "rewards"),
        ("inf_rewards", "rewards"),
        ("shape_mismatch", "mask"),
        ("bad_neutral", "neutral"),
        ("bad_empty", "empty"),
        ("bad_baseline", "baseline"),
        ("negative_delta", "delta"),
    ],
)
def test_asr_mask_rejects_invalid_input(case, arg):
    rewards, mask, sign = _valid_inputs()
    kw = {}
    if case == "not_right_padded":
        mask = torch.tensor([[True, False, True], [True, False, False]])
    elif case == "nan_rewards":
        rewards = rewards.clone()
        rewards[0, 1] = float("nan")
    elif case == "inf_rewards":
        rewards = rewards.clone()
        rewards[0, 1] = float("inf")
    elif case == "shape_mismatch":
        mask = mask[:, :2]
    elif case == "bad_neutral":
        kw["neutral"] = "ignore"
    elif case == "bad_empty":
        kw["empty"] = "vanilla"
    elif case == "bad_baseline":
        kw["baseline"] = "median"
    elif case == "negative_delta":
        kw["delta"] = -0.5
    with pytest.raises(ValueError, match=arg):
        ops.asr_mask(rewards, mask, sign, **kw)


def test_other_ops_reject_unknown_options():
    ids = torch.tensor([[0, 0, 1, -1]])
    with pytest.raises(ValueError, match="mode"):
        ops.spread_segment_rewards(torch.ones(1, 2), ids, mode="mean")
    rewards, mask, _ = _valid_inputs()
    with pytest.raises(ValueError, match="baseline"):
        ops.resolve_baseline(rewards, mask, "median")
    with pytest.raises(ValueError, match="mask"):
        ops.entropy_segment_ids(torch.ones(1, 3), torch.tensor([[False, True, True]]), 0.5)


# --------------------------------------------------------------------------------------------
# CUDA: the same code on the GPU gives the same answers
# --------------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@FEW
@given(batch=reward_batches(), data=st.data(), threshold=st.sampled_from(THRESHOLDS), mode=st.sampled_from(["even", "end", "repeat"]))
def test_cuda_matches_cpu(batch, data, threshold, mode):
    rewards, mask = batch
    B, T = rewards.shape
    sign = data.draw(seq_signs(B), label="seq_sign")
    flat = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T), label="is_boundary")
    is_boundary = torch.tensor(flat, dtype=torch.bool).reshape(B, T)
    dev = torch.device("cuda")
    for kw in ({}, {"baseline": "sequence_mean", "delta": 1.0, "neutral": "keep", "empty": "none"}):
        got = ops.asr_mask(rewards.to(dev), mask.to(dev), sign.to(dev), **kw)
        assert got.device.type == "cuda"
        assert_same_bool(got, ops.asr_mask(rewards, mask, sign, **kw), "asr_mask on cuda")
    got = ops.tokenwise_mask(rewards.to(dev), mask.to(dev), sign.to(dev))
    assert_same_bool(got, ops.tokenwise_mask(rewards, mask, sign), "tokenwise_mask on cuda")
    got = ops.stepwise_mask(rewards.to(dev), mask.to(dev), is_boundary.to(dev), sign.to(dev))
    assert_same_bool(got, ops.stepwise_mask(rewards, mask, is_boundary, sign), "stepwise_mask on cuda")
    entropy = rewards.abs()
    ids = ops.entropy_segment_ids(entropy.to(dev), mask.to(dev), threshold)
    assert ids.device.type == "cuda"
    assert_same_long(ids, ops.entropy_segment_ids(entropy, mask, threshold), "entropy_segment_ids on cuda")
    sv, ok = ops.segment_end_values(rewards.to(dev), ids)
    csv, cok = ops.segment_end_values(rewards, ids.cpu())
    assert_same_bool(ok, cok, "segment_end_values on cuda")
    assert_close(sv, csv, "segment_end_values on cuda")
    coef = {"a_mu": 0.3, "b_mu": -0.2, "a_sigma": -0.1, "b_sigma": 0.8}
    assert_close(ops.location_normalize(sv, ok, coef), ops.location_normalize(csv, cok, coef), "location_normalize on cuda")
    assert_close(ops.spread_segment_rewards(sv, ids, mode=mode), ops.spread_segment_rewards(csv, ids.cpu(), mode=mode), "spread on cuda")


# --------------------------------------------------------------------------------------------
# resolve_delta, keep_mask, sequence_sign (the one ASR entry point)
# --------------------------------------------------------------------------------------------


def loop_quantile_delta(rewards, mask, baseline, q):
    """``delta="auto"`` by plain loops: sort |r - b| over valid tokens, linear interpolation at q * (n - 1)."""
    b = ref.resolve_baseline(rewards, mask, baseline).tolist()
    devs = sorted(abs(float(rewards[i, t]) - b[i]) for i in range(rewards.shape[0])
                  for t in range(rewards.shape[1]) if bool(mask[i, t]))
    if not devs:
        return 0.0
    rank = q * (len(devs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(devs) - 1)
    return devs[lo] + (rank - lo) * (devs[hi] - devs[lo])


@PROPS
@given(batch=reward_batches(), baseline=st.sampled_from(BASELINES),
       q=st.one_of(st.sampled_from([0.0, 0.3, 0.5, 1.0]), st.floats(0.0, 1.0)))
def test_resolve_delta_matches_loop(batch, baseline, q):
    rewards, mask = batch
    got = call(ops.resolve_delta, rewards, mask, baseline, "auto", q)
    assert isinstance(got, float) and got >= 0.0
    assert got == pytest.approx(loop_quantile_delta(rewards, mask, baseline, q), rel=1e-9, abs=1e-12)


@PROPS
@given(
    batch=reward_batches(),
    data=st.data(),
    baseline=st.sampled_from(BASELINES),
    delta=st.sampled_from(DELTAS + ["auto"]),
    neutral=st.sampled_from(["drop", "keep"]),
    empty=st.sampled_from(["full", "none"]),
)
def test_keep_mask_asr_matches_reference(batch, data, baseline, delta, neutral, empty):
    rewards, mask = batch
    sign = data.draw(seq_signs(rewards.shape[0]), label="seq_sign")
    res = call(ops.keep_mask, rewards, mask, sign, baseline=baseline, delta=delta, neutral=neutral, empty=empty)
    d = ops.resolve_delta(rewards, mask, baseline, delta)
    assert res.delta == d
    assert_same_long(res.states, ref.hysteresis_states(rewards, mask, ref.resolve_baseline(rewards, mask, baseline), d),
                     "keep_mask states")
    assert_same_long(res.segment_ids, ref.segment_ids_from_states(res.states, mask), "keep_mask segment_ids")
    want = ref.asr_mask(rewards, mask, sign, baseline=baseline, delta=d, neutral=neutral, empty=empty)
    assert_same_bool(res.keep, want, "keep_mask(asr)")
    strict = ref.asr_mask(rewards, mask, sign, baseline=baseline, delta=d, neutral=neutral, empty="none")
    assert res.fallback.tolist() == [bool(mask[i].any()) and not bool(strict[i].any()) for i in range(len(mask))]
    assert_same_bool(call(ops.asr_mask, rewards, mask, sign, baseline=baseline, delta=delta, neutral=neutral,
                          empty=empty), want, "asr_mask")


@PROPS
@given(batch=reward_batches(), data=st.data(), baseline=st.sampled_from(BASELINES),
       kind=st.sampled_from(["tokenwise", "stepwise", "none"]), empty=st.sampled_from(["full", "none"]))
def test_keep_mask_other_kinds_match_reference(batch, data, baseline, kind, empty):
    rewards, mask = batch
    B, T = rewards.shape
    sign = data.draw(seq_signs(B), label="seq_sign")
    flags = data.draw(st.lists(st.booleans(), min_size=B * T, max_size=B * T), label="is_boundary")
    is_boundary = torch.tensor(flags, dtype=torch.bool).reshape(B, T)
    res = call(ops.keep_mask, rewards, mask, sign, kind=kind, baseline=baseline, empty=empty, is_boundary=is_boundary)
    if kind == "tokenwise":
        want = ref.tokenwise_mask(rewards, mask, sign, baseline=baseline, empty=empty)
        strict = ref.tokenwise_mask(rewards, mask, sign, baseline=baseline, empty="none")
        assert res.segment_ids is None
    elif kind == "stepwise":
        want = ref.stepwise_mask(rewards, mask, is_boundary, sign, baseline=baseline, empty=empty)
        strict = ref.stepwise_mask(rewards, mask, is_boundary, sign, baseline=baseline, empty="none")
        assert_same_long(res.segment_ids, ref.step_segment_ids(is_boundary, mask), "stepwise segment_ids")
    else:
        want = strict = mask
    assert_same_bool(res.keep, want, f"keep_mask({kind})")
    assert res.fallback.tolist() == [bool(mask[i].any()) and not bool(strict[i].any()) for i in range(B)]


@PROPS
@given(values=st.lists(st.integers(-3, 3).map(float), min_size=0, max_size=9), data=st.data())
def test_sequence_sign_matches_loop(values, data):
    seq = torch.tensor(values, dtype=torch.float32)
    per_row = data.draw(st.booleans(), label="per_row")
    if per_row:
        base = torch.tensor(data.draw(st.lists(st.integers(-3, 3).map(float), min_size=len(values),
                                               max_size=len(values))), dtype=torch.float64)
        want = [1 if v >= float(b) else -1 for v, b in zip(values, base)]
    else:
        base = sum(values) / len(values) if values else 0.0
        want = [1 if v >= base else -1 for v in values]
    assert call(ops.sequence_sign, seq, base).tolist() == want


@st.composite
def trended_pairs(draw):
    """Twin rows (same length, opposite signal) with rewards = trend(relative-position bin) + signal.

    The trend rises by 5..9 per bin (far more than the |signal| <= 1), the signal alternates its sign
    along the response, so the position and the signal disagree about half of the time.
    """
    n_pairs = draw(st.integers(1, 3))
    lengths = draw(st.lists(st.integers(10, 30), min_size=n_pairs, max_size=n_pairs))
    steps = draw(st.lists(st.floats(5.0, 9.0), min_size=10, max_size=10))
    trend = np.cumsum(steps) + draw(st.floats(-20, 20))
    T = max(lengths)
    rows, signals = [], []
    for n in lengths:
        mags = draw(st.lists(st.floats(0.25, 1.0), min_size=n, max_size=n))
        s = [m * (-1) ** t for t, m in enumerate(mags)]
        base = [trend[(t * 10) // n] for t in range(n)]
        for sign in (1, -1):
            rows.append([b + sign * v for b, v in zip(base, s)] + [0.0] * (T - n))
            signals.append([sign * v for v in s] + [0.0] * (T - n))
    mask = make_mask([n for n in lengths for _ in (0, 1)], T)
    return torch.tensor(rows, dtype=torch.float64), torch.tensor(signals, dtype=torch.float64), mask


@FEW
@given(batch=trended_pairs())
def test_position_mean_removes_a_planted_position_trend(batch):
    rewards, signal, mask = batch
    sign = torch.ones(rewards.shape[0], dtype=torch.long)
    truth = torch.sign(signal).long()
    pos = call(ops.keep_mask, rewards, mask, sign, baseline="position_mean", delta=0.0)
    assert torch.equal(pos.states[mask], truth[mask])  # the mask follows the planted signal exactly
    seq = ops.keep_mask(rewards, mask, sign, baseline="sequence_mean", delta=0.0)
    agree = (seq.states[mask] == truth[mask]).double().mean().item()
    assert agree < 0.8  # the per-response mean leaves the trend in: position decides
    # the resolved baseline is the per-bin batch mean, by loops
    b = ops.position_mean_baseline(rewards, mask)
    n = mask.sum(dim=1).tolist()
    sums, counts = [0.0] * 10, [0] * 10
    for i in range(rewards.shape[0]):
        for t in range(n[i]):
            sums[(t * 10) // n[i]] += float(rewards[i, t])
            counts[(t * 10) // n[i]] += 1
    for i in range(rewards.shape[0]):
        for t in range(rewards.shape[1]):
            want = sums[(t * 10) // n[i]] / counts[(t * 10) // n[i]] if t < n[i] else 0.0
            assert float(b[i, t]) == pytest.approx(want, rel=1e-12, abs=1e-9)
