"""Hand-computed cases for every rule of docs/method.md#asr-mask to #spreading. The arithmetic is written next to each case."""

import math

import numpy as np
import pytest
import torch

from segrl import ops

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def T(rows, dtype=torch.float32, device="cpu"):
    return torch.tensor(rows, dtype=dtype, device=device)


def M(rows, device="cpu"):
    return torch.tensor(rows, dtype=torch.bool, device=device)


# ---------------------------------------------------------------- baselines


@pytest.mark.parametrize("device", DEVICES)
def test_resolve_baseline_modes(device):
    r = T([[1.0, 3.0, 99.0], [2.0, 99.0, 99.0]], device=device)
    m = M([[1, 1, 0], [1, 0, 0]], device=device)
    # batch mean over valid tokens only: (1 + 3 + 2) / 3 = 2; the 99s are padding.
    assert ops.resolve_baseline(r, m, "batch_mean").tolist() == [2.0, 2.0]
    # per-row means: (1 + 3) / 2 = 2 and 2 / 1 = 2... use a row that differs:
    r2 = T([[1.0, 3.0, 99.0], [5.0, 99.0, 99.0]], device=device)
    assert ops.resolve_baseline(r2, m, "sequence_mean").tolist() == [2.0, 5.0]
    assert ops.resolve_baseline(r2, m, "zero").tolist() == [0.0, 0.0]
    assert ops.resolve_baseline(r2, m, -0.5).tolist() == [-0.5, -0.5]


def test_resolve_baseline_empty_rows_are_zero():
    r = T([[7.0, 7.0], [1.0, 1.0]])
    m = M([[0, 0], [1, 0]])
    assert ops.resolve_baseline(r, m, "sequence_mean").tolist() == [0.0, 1.0]
    assert ops.resolve_baseline(r, M([[0, 0], [0, 0]]), "batch_mean").tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- hysteresis


@pytest.mark.parametrize("device", DEVICES)
def test_hysteresis_delta_zero_is_sign_with_ties_inheriting(device):
    # b = 0, delta = 0: states are sign(r) except ties (r == 0) copy the previous state.
    r = T([[0.0, 1.0, 0.0, -2.0, 0.0, 3.0]], device=device)
    m = M([[1, 1, 1, 1, 1, 1]], device=device)
    # t0: tie, no previous -> 0 (undecided); t1: +1; t2: tie -> +1; t3: -1; t4: tie -> -1; t5: +1
    assert ops.hysteresis_states(r, m, 0.0, 0.0).tolist() == [[0, 1, 1, -1, -1, 1]]


@pytest.mark.parametrize("device", DEVICES)
def test_hysteresis_band(device):
    # b = 1, delta = 0.5: band is [0.5, 1.5]; leaving it above 1.5 -> +1, below 0.5 -> -1.
    r = T([[1.2, 1.6, 1.0, 0.5, 0.4, 1.5, 1.51, 0.0]], device=device)
    m = M([[1, 1, 1, 1, 1, 1, 1, 0]], device=device)
    # t0 1.2 in band, nothing before -> 0; t1 1.6 > 1.5 -> +1; t2 1.0 band -> +1;
    # t3 0.5 == b - delta is in the band (strict) -> +1; t4 0.4 < 0.5 -> -1; t5 1.5 band -> -1;
    # t6 1.51 > 1.5 -> +1; t7 padding -> 0.
    assert ops.hysteresis_states(r, m, 1.0, 0.5).tolist() == [[0, 1, 1, 1, -1, -1, 1, 0]]


def test_hysteresis_per_row_baseline_tensor():
    r = T([[1.0, 2.0], [1.0, 2.0]])
    m = M([[1, 1], [1, 1]])
    # row 0: b = 1.5 -> [-1, +1]; row 1: b = 0 -> [+1, +1]
    assert ops.hysteresis_states(r, m, torch.tensor([1.5, 0.0]), 0.0).tolist() == [[-1, 1], [1, 1]]


# ---------------------------------------------------------------- segments from states


def test_segment_ids_from_states_runs_and_leading_undecided():
    states = torch.tensor([[0, 0, 1, 1, -1, 1, 0], [-1, -1, -1, 0, 0, 0, 0]])
    m = M([[1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 0, 0, 0, 0]])
    # row 0: runs [0 0][1 1][-1][1], padding -1. Pivots at t = 2, 4, 5.
    # row 1: one run of -1 then padding.
    assert ops.segment_ids_from_states(states, m).tolist() == [
        [0, 0, 1, 1, 2, 3, -1],
        [0, 0, 0, -1, -1, -1, -1],
    ]


# ---------------------------------------------------------------- ASR mask


def test_asr_mask_chosen_and_rejected_published_rule():
    # delta = 0, baseline 0 reduces to Equilibrate-RLHF: chosen keeps r > 0, rejected keeps r < 0.
    r = T([[0.5, -0.2, 0.3, 0.0], [0.5, -0.2, -0.3, 9.0]])
    m = M([[1, 1, 1, 1], [1, 1, 1, 0]])
    keep = ops.asr_mask(r, m, torch.tensor([1, -1]), baseline="zero")
    # row 0 (chosen): states [+,-,+, tie->+] -> keep [1,0,1,1]. The tie inherits +1 (hysteresis),
    # which is the only difference from the published per-token rule (it would drop r == 0).
    # row 1 (rejected): states [+,-,-] -> keep [0,1,1], padding False.
    assert keep.tolist() == [[True, False, True, True], [False, True, True, False]]
    assert keep.dtype == torch.bool


def test_asr_mask_batch_mean_baseline_and_hysteresis():
    r = T([[3.0, 2.5, 1.0, 2.2, 3.5], [0.0, 1.0, 2.0, 0.0, 0.0]])
    m = M([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # batch mean = (3 + 2.5 + 1 + 2.2 + 3.5 + 0 + 1 + 2) / 8 = 15.2 / 8 = 1.9; delta 0.5 -> band [1.4, 2.4]
    # row 0: 3 -> +; 2.5 -> +; 1.0 -> -; 2.2 band -> -; 3.5 -> +   states [+, +, -, -, +]
    # row 1: 0 -> -; 1.0 -> -; 2.0 band -> -                        states [-, -, -]
    res = ops.asr_segments(r, m, torch.tensor([1, 1]), delta=0.5)
    assert res.baseline.tolist() == pytest.approx([1.9, 1.9])
    assert res.states.tolist() == [[1, 1, -1, -1, 1], [-1, -1, -1, 0, 0]]
    assert res.segment_ids.tolist() == [[0, 0, 1, 1, 2], [0, 0, 0, -1, -1]]
    # row 0 chosen keeps its + segments; row 1 has no + token -> empty -> falls back to full mask
    assert res.keep.tolist() == [[True, True, False, False, True], [True, True, True, False, False]]
    assert res.fallback.tolist() == [False, True]
    none = ops.asr_mask(r, m, torch.tensor([1, 1]), delta=0.5, empty="none")
    assert none[1].tolist() == [False] * 5


def test_asr_mask_neutral_policy():
    r = T([[0.1, 0.1, 2.0, 0.1]])
    m = M([[1, 1, 1, 1]])
    # b = 0, delta = 1: t0, t1 undecided (0); t2 -> +1; t3 in band -> +1
    drop = ops.asr_mask(r, m, torch.tensor([1]), baseline=0.0, delta=1.0)
    keep = ops.asr_mask(r, m, torch.tensor([1]), baseline=0.0, delta=1.0, neutral="keep")
    assert drop.tolist() == [[False, False, True, True]]
    assert keep.tolist() == [[True, True, True, True]]
    # rejected: no -1 state at all -> drop policy empties the row -> full fallback; keep policy keeps the undecided run
    assert ops.asr_mask(r, m, torch.tensor([-1]), baseline=0.0, delta=1.0).tolist() == [[True] * 4]
    assert ops.asr_mask(r, m, torch.tensor([-1]), baseline=0.0, delta=1.0, neutral="keep").tolist() == [
        [True, True, False, False]
    ]


def test_asr_mask_empty_row_is_not_a_fallback():
    r = T([[1.0, 2.0], [0.0, 0.0]])
    m = M([[1, 1], [0, 0]])
    res = ops.asr_segments(r, m, torch.tensor([1, 1]), baseline="zero")
    assert res.keep.tolist() == [[True, True], [False, False]]
    assert res.fallback.tolist() == [False, False]


# ---------------------------------------------------------------- token-wise / step-wise baselines


def test_tokenwise_mask_ties_are_neutral():
    r = T([[1.0, 0.0, -1.0, 0.0]])
    m = M([[1, 1, 1, 1]])
    # states sign(r - 0) = [+, 0, -, 0]; chosen keeps only t0 with neutral drop, t0,t1,t3 with keep.
    assert ops.tokenwise_mask(r, m, torch.tensor([1]), baseline="zero").tolist() == [[True, False, False, False]]
    assert ops.tokenwise_mask(r, m, torch.tensor([1]), baseline="zero", neutral="keep").tolist() == [
        [True, True, False, True]
    ]


def test_step_segments_and_stepwise_mask():
    # tokens: "a" "b" "." "c" "\n" "d"; boundaries after "." (t2) and "\n" (t4)
    boundary = M([[0, 0, 1, 0, 1, 0]])
    m = M([[1, 1, 1, 1, 1, 1]])
    assert ops.step_segment_ids(boundary, m).tolist() == [[0, 0, 0, 1, 1, 2]]
    r = T([[2.0, -1.0, 2.0, -3.0, 1.0, 0.5]])
    # segment means: (2 - 1 + 2) / 3 = 1 ; (-3 + 1) / 2 = -1 ; 0.5. batch mean = 1.5 / 6 = 0.25
    # signs vs b = 0.25: +, -, + -> chosen keeps steps 0 and 2 (including the negative token t1)
    keep = ops.stepwise_mask(r, m, boundary, torch.tensor([1]))
    assert keep.tolist() == [[True, True, True, False, False, True]]
    assert ops.stepwise_mask(r, m, boundary, torch.tensor([-1])).tolist() == [[False, False, False, True, True, False]]


# ---------------------------------------------------------------- entropy segmentation


@pytest.mark.parametrize("device", DEVICES)
def test_entropy_segment_ids_dense(device):
    e = T([[9.0, 0.5, 2.0, 1.5, 2.5, 9.0, 9.0]], device=device)
    m = M([[1, 1, 1, 1, 1, 1, 0]], device=device)
    # n = 6, EOS is t5 -> segmented region t0..t4. c = 1.5: t0 starts seg 0 (its entropy is ignored);
    # t2 (2.0 > 1.5) starts seg 1; t3 (1.5, not strictly greater) continues; t4 (2.5) starts seg 2.
    assert ops.entropy_segment_ids(e, m, 1.5).tolist() == [[0, 0, 1, 1, 2, -1, -1]]


def test_entropy_segment_ids_token_and_bandit_and_short_rows():
    e = T([[0.3, 0.2, 0.0, 0.7], [5.0, 5.0, 5.0, 5.0], [1.0, 1.0, 1.0, 1.0]])
    m = M([[1, 1, 1, 1], [1, 0, 0, 0], [0, 0, 0, 0]])
    # c = 0: every token but EOS is its own segment, except a token with entropy exactly 0 (strict >).
    assert ops.entropy_segment_ids(e, m, 0.0).tolist() == [
        [0, 1, 1, -1],  # t2 has entropy 0.0, not > 0 -> joins segment 1; t3 is EOS
        [-1, -1, -1, -1],  # only EOS -> no segment
        [-1, -1, -1, -1],
    ]
    assert ops.entropy_segment_ids(e, m, math.inf).tolist() == [
        [0, 0, 0, 0],  # bandit: one segment, EOS included
        [0, -1, -1, -1],
        [-1, -1, -1, -1],
    ]


# ---------------------------------------------------------------- read-out, normalise, spread


def test_segment_end_values_reads_last_token():
    ids = torch.tensor([[0, 0, 1, 1, 1, -1], [0, 1, -1, -1, -1, -1], [-1, -1, -1, -1, -1, -1]])
    v = T([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], [7.0, 8.0, 9.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    seg, valid = ops.segment_end_values(v, ids)
    # row 0: seg 0 ends at t1 -> 2, seg 1 ends at t4 -> 5 (EOS value 6 is never read)
    assert seg.tolist() == [[2.0, 5.0], [7.0, 8.0], [0.0, 0.0]]
    assert valid.tolist() == [[True, True], [True, True], [False, False]]


def test_location_normalize_hand_values():
    coef = {"a_mu": 1.0, "b_mu": 0.5, "a_sigma": 0.5, "b_sigma": 2.0}
    seg = T([[1.0, 2.0, 3.0, 0.0], [4.0, 0.0, 0.0, 0.0]])
    valid = M([[1, 1, 1, 0], [1, 0, 0, 0]])
    out = ops.location_normalize(seg, valid, coef)
    # row 0, K = 3: p = 1/3, 2/3, 1
    expected = []
    for k, r in zip((1, 2, 3), (1.0, 2.0, 3.0)):
        lp = math.log(k / 3 + 1e-10)
        expected.append((r - (1.0 * lp + 0.5)) / max(0.5 * lp + 2.0, 1e-2))
    # row 1, K = 1: p = 1 -> ln(1 + 1e-10) ~ 0 -> (4 - 0.5) / 2 = 1.75
    assert out[0, :3].tolist() == pytest.approx(expected, rel=1e-6)
    assert out[1, 0].item() == pytest.approx(1.75, rel=1e-6)
    assert out[0, 3].item() == 0.0 and out[1, 1:].tolist() == [0.0, 0.0, 0.0]


def test_location_normalize_sigma_floor():
    # a_sigma ln(p) + b_sigma with p = 1/4: 1.0 * ln(0.25) + 0.5 = -0.886 < 0 -> floored at 0.01
    coef = {"a_mu": 0.0, "b_mu": 0.0, "a_sigma": 1.0, "b_sigma": 0.5}
    seg = T([[1.0, 1.0, 1.0, 1.0]])
    out = ops.location_normalize(seg, M([[1, 1, 1, 1]]), coef)
    assert out[0, 0].item() == pytest.approx(1.0 / 1e-2)
    assert out[0, 3].item() == pytest.approx(1.0 / 0.5)  # p = 1: sigma = 0.5
    assert ops.location_normalize(seg, M([[1, 1, 1, 1]]), coef, sigma_floor=0.1)[0, 0].item() == pytest.approx(10.0)


def test_spread_modes():
    ids = torch.tensor([[0, 1, 1, 1, 2, 2, 2, 2, -1]])
    seg = T([[0.5, 1.4, 1.6]])
    # the paper's worked example: 0.5 | 1.4 / 3 x3 ... here L = 1, 3, 4
    even = ops.spread_segment_rewards(seg, ids, "even")
    assert even[0].tolist() == pytest.approx([0.5, 1.4 / 3, 1.4 / 3, 1.4 / 3, 0.4, 0.4, 0.4, 0.4, 0.0])
    assert ops.spread_segment_rewards(seg, ids, "end")[0].tolist() == pytest.approx(
        [0.5, 0, 0, 1.4, 0, 0, 0, 1.6, 0]
    )
    assert ops.spread_segment_rewards(seg, ids, "repeat")[0].tolist() == pytest.approx(
        [0.5, 1.4, 1.4, 1.4, 1.6, 1.6, 1.6, 1.6, 0]
    )
    # even spreading preserves each segment's total
    assert even.sum().item() == pytest.approx(0.5 + 1.4 + 1.6)


def test_fit_location_normalizer_buckets_and_huber():
    # p = 1/3 (0.333) and 2/3 (0.667) and 1: rewards chosen so the buckets lie exactly on lines
    p = np.array([1 / 3, 1 / 3, 2 / 3, 2 / 3, 1.0, 1.0])
    a_mu, b_mu, a_s, b_s = 2.0, 1.0, 0.5, 1.5
    xs = np.log(np.array([0.333, 0.333, 0.667, 0.667, 1.0, 1.0]) + 1e-10)
    # each bucket: mean = a_mu x + b_mu, population std = a_s x + b_s -> values mean +- std
    mean, std = a_mu * xs + b_mu, a_s * xs + b_s
    r = mean + std * np.array([1, -1, 1, -1, 1, -1])
    buckets = ops.location_buckets(p, r)
    assert buckets.locations.tolist() == [0.333, 0.667, 1.0]
    assert buckets.counts.tolist() == [2, 2, 2]
    assert buckets.stds == pytest.approx(a_s * np.log(buckets.locations + 1e-10) + b_s)
    coef = ops.fit_location_normalizer(p, r)
    # exactly collinear points: the Huber fit recovers the lines (up to its tiny L2 penalty alpha=1e-4)
    assert coef.a_mu == pytest.approx(a_mu, abs=1e-3) and coef.b_mu == pytest.approx(b_mu, abs=1e-3)
    assert coef.a_sigma == pytest.approx(a_s, abs=1e-3) and coef.b_sigma == pytest.approx(b_s, abs=1e-3)


def test_fit_location_normalizer_rounds_like_string_format():
    # 0.0005 is stored slightly above 5e-4, so f"{p:.3f}" gives 0.001 (numpy's round would give 0.0)
    buckets = ops.location_buckets([0.0005, 0.001, 1.0], [1.0, 3.0, 0.0])
    assert buckets.locations.tolist() == [0.001, 1.0]
    assert buckets.means.tolist() == [2.0, 0.0] and buckets.stds.tolist() == [1.0, 0.0]


def test_fit_is_robust_to_an_outlier_bucket():
    # 20 buckets on the line 1.5 ln p + 0.2, each with spread +-0.1 (population std 0.1), one bucket +50.
    p = np.repeat(np.arange(1, 21) / 20, 4)
    r = 1.5 * np.log(p + 1e-10) + 0.2 + np.tile([0.1, -0.1, 0.1, -0.1], 20)
    r[0:4] += 50.0
    coef = ops.fit_location_normalizer(p, r)
    # least squares would give a slope of about -6.9 here; Huber ignores the outlier
    assert coef.a_mu == pytest.approx(1.5, abs=1e-3) and coef.b_mu == pytest.approx(0.2, abs=1e-3)
    assert coef.a_sigma == pytest.approx(0.0, abs=1e-3) and coef.b_sigma == pytest.approx(0.1, abs=1e-3)


def test_pipeline_composes_on_cuda_if_available():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    e = torch.rand(4, 16, device=device) * 3
    m = torch.arange(16, device=device).unsqueeze(0) < torch.tensor([[16], [5], [1], [0]], device=device)
    ids = ops.entropy_segment_ids(e, m, 1.0)
    seg, valid = ops.segment_end_values(torch.randn(4, 16, device=device), ids)
    coef = ops.LocationNormalizerCoef(0.5, 0.1, 0.2, 1.0)
    tok = ops.spread_segment_rewards(ops.location_normalize(seg, valid, coef), ids)
    assert tok.device.type == device and tok.shape == (4, 16)
    assert (tok[~(ids >= 0)] == 0).all()


def test_float32_rewards_compare_exactly_against_a_float64_baseline():
    # float32(0.2) = 0.20000000298..., strictly above the double 0.2: a +1 state, not a tie.
    r = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float32)
    m = torch.ones(1, 3, dtype=torch.bool)
    assert ops.hysteresis_states(r, m, 0.2, 0.0).tolist() == [[-1, 1, 1]]
    # ... and exactly equal to the double float(float32(0.2)): a tie that inherits -1
    b = float(torch.tensor(0.2, dtype=torch.float32))
    assert ops.hysteresis_states(r, m, b, 0.0).tolist() == [[-1, -1, 1]]
    # the band edges b +- delta are exact too: 0.3f is above 0.1 + 0.2 (double 0.30000000000000004)
    assert ops.hysteresis_states(r, m, 0.1, 0.2).tolist() == [[0, 0, 1]]
    # in float64 the reward 0.3 is below 0.1 + 0.2: inside the band
    r64 = torch.tensor([[0.1, 0.2, 0.3]], dtype=torch.float64)
    assert ops.hysteresis_states(r64, m, 0.1, 0.2).tolist() == [[0, 0, 0]]


# ---------------------------------------------------------------- signs, delta and the one keep mask


def test_sequence_sign_ties_are_plus_one():
    # R = [1, 2, 3, 2], batch mean b = 8 / 4 = 2: 1 < 2 -> -1; 2 == 2 -> +1 (tie); 3 > 2 -> +1.
    seq = T([1.0, 2.0, 3.0, 2.0])
    sign = ops.sequence_sign(seq, seq.mean())
    assert sign.tolist() == [-1, 1, 1, 1] and sign.dtype == torch.long
    # per-row (group) baselines: [0, 2, 5, 2] -> 1 >= 0, 2 >= 2, 3 < 5, 2 >= 2
    assert ops.sequence_sign(seq, T([0.0, 2.0, 5.0, 2.0])).tolist() == [1, 1, -1, 1]
    assert ops.sequence_sign(seq, 2.5).tolist() == [-1, -1, 1, -1]


def test_preference_sign_chosen_rows_first():
    assert ops.preference_sign(3).tolist() == [1, 1, 1, -1, -1, -1]
    assert ops.preference_sign(0).tolist() == []
    assert ops.preference_sign(1).dtype == torch.long


def test_resolve_delta_auto_hand_values():
    r = T([[1.0, 3.0, 6.0, 99.0], [2.0, 2.0, 99.0, 99.0]])
    m = M([[1, 1, 1, 0], [1, 1, 0, 0]])
    # batch mean over the 5 valid tokens: (1 + 3 + 6 + 2 + 2) / 5 = 14 / 5 = 2.8
    # |r - b| = [1.8, 0.2, 3.2, 0.8, 0.8] -> sorted [0.2, 0.8, 0.8, 1.8, 3.2]
    # q = 0.3: rank 0.3 * 4 = 1.2 -> 0.8 + 0.2 * (0.8 - 0.8) = 0.8
    assert ops.resolve_delta(r, m, "batch_mean", "auto", 0.3) == pytest.approx(0.8)
    # q = 0.5: rank 2 -> 0.8; q = 0.9: rank 3.6 -> 1.8 + 0.6 * (3.2 - 1.8) = 2.64; q = 0 / 1: min / max
    assert ops.resolve_delta(r, m, "batch_mean", "auto", 0.9) == pytest.approx(2.64)
    assert ops.resolve_delta(r, m, "batch_mean", "auto", 0.0) == pytest.approx(0.2)
    assert ops.resolve_delta(r, m, "batch_mean", "auto", 1.0) == pytest.approx(3.2)
    # sequence means 10/3 and 2: |r - b| = [7/3, 1/3, 8/3, 0, 0] -> sorted [0, 0, 1/3, 7/3, 8/3]
    # q = 0.5: rank 2 -> 1/3; q = 0.3: rank 1.2 -> 0 + 0.2 * (1/3 - 0) = 1/15
    assert ops.resolve_delta(r, m, "sequence_mean", "auto", 0.5) == pytest.approx(1 / 3)
    assert ops.resolve_delta(r, m, "sequence_mean", "auto", 0.3) == pytest.approx(1 / 15)
    # a resolved (B,) baseline works the same: b = [1, 2] -> [0, 2, 5, 0, 0] -> q = 0.5 -> 0
    assert ops.resolve_delta(r, m, T([1.0, 2.0], dtype=torch.float64), "auto", 0.5) == 0.0
    # a float delta is returned unchanged; no valid token gives 0
    assert ops.resolve_delta(r, m, "batch_mean", 0.25) == 0.25
    assert ops.resolve_delta(r, M([[0, 0, 0, 0], [0, 0, 0, 0]]), "batch_mean", "auto") == 0.0


def test_resolve_delta_beyond_torch_quantile_limit_matches_sorting():
    # torch.quantile refuses > 2**24 values; the kthvalue form must equal the sorted-array definition.
    from segrl.ops.asr import _kth_quantile

    g = torch.Generator().manual_seed(0)
    x = torch.randn(1001, generator=g, dtype=torch.float64)
    for q in (0.0, 0.3, 0.5, 0.77, 1.0):
        assert float(_kth_quantile(x, q)) == float(torch.quantile(x, q))
    big = torch.rand(1, (1 << 24) + 5, generator=g)
    m = torch.ones_like(big, dtype=torch.bool)
    got = ops.resolve_delta(big, m, "zero", "auto", 0.3)
    s = big.double().flatten().sort().values
    rank = 0.3 * (s.numel() - 1)
    lo = int(rank)
    assert got == pytest.approx(float(s[lo] + (rank - lo) * (s[lo + 1] - s[lo])), abs=1e-12)


def test_keep_mask_kinds_hand_values():
    # one chosen row, b = 0: rewards [1, -1, 0.2, -0.3]; boundaries after t1 -> steps {t0, t1}, {t2, t3}
    r = T([[1.0, -1.0, 0.2, -0.3]])
    m = M([[1, 1, 1, 1]])
    plus = torch.tensor([1])
    boundary = M([[0, 1, 0, 0]])
    # asr, delta 0.5: t0 1 > 0.5 -> +; t1 -1 < -0.5 -> -; t2, t3 in band -> inherit - ; keep only t0
    res = ops.keep_mask(r, m, plus, baseline="zero", delta=0.5)
    assert res.states.tolist() == [[1, -1, -1, -1]]
    assert res.segment_ids.tolist() == [[0, 1, 1, 1]]
    assert res.keep.tolist() == [[True, False, False, False]]
    assert res.delta == 0.5 and res.fallback.tolist() == [False]
    # tokenwise: signs [+, -, +, -] -> keep t0, t2; no segments
    res = ops.keep_mask(r, m, plus, kind="tokenwise", baseline="zero")
    assert res.keep.tolist() == [[True, False, True, False]] and res.segment_ids is None
    assert res.states.tolist() == [[1, -1, 1, -1]] and res.delta == 0.0
    # stepwise: step means 0 and -0.05; with b = -0.1 both are > b -> everything kept
    res = ops.keep_mask(r, m, plus, kind="stepwise", baseline=-0.1, is_boundary=boundary)
    assert res.keep.tolist() == [[True] * 4] and res.segment_ids.tolist() == [[0, 0, 1, 1]]
    # with b = -0.02: step 0 mean 0 > b (+), step 1 mean -0.05 < b (-)
    res = ops.keep_mask(r, m, plus, kind="stepwise", baseline=-0.02, is_boundary=boundary)
    assert res.keep.tolist() == [[True, True, False, False]]
    # none: everything, one segment, no rewards needed
    res = ops.keep_mask(None, m, plus, kind="none")
    assert res.keep.tolist() == [[True] * 4] and res.segment_ids.tolist() == [[0, 0, 0, 0]] and res.states is None
    # b = 5: no token above -> empty -> falls back to the full row (fallback flagged), or stays empty
    res = ops.keep_mask(r, m, plus, kind="tokenwise", baseline=5.0)
    assert res.keep.tolist() == [[True] * 4] and res.fallback.tolist() == [True]
    res = ops.keep_mask(r, m, plus, kind="tokenwise", baseline=5.0, empty="none")
    assert res.keep.tolist() == [[False] * 4] and res.fallback.tolist() == [True]


def test_keep_mask_auto_delta_and_counts():
    r = T([[3.0, 2.5, 1.0, 2.2, 3.5], [0.0, 1.0, 2.0, 0.0, 0.0]])
    m = M([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # b = 1.9 (see above); |r - b| = [1.1, 0.6, 0.9, 0.3, 1.6, 1.9, 0.9, 0.1]
    # sorted [0.1, 0.3, 0.6, 0.9, 0.9, 1.1, 1.6, 1.9]; q = 0.3: rank 2.1 -> 0.6 + 0.1 * 0.3 = 0.63
    res = ops.keep_mask(r, m, torch.tensor([1, -1]), delta="auto", delta_quantile=0.3)
    assert res.delta == pytest.approx(0.63)
    # band [1.27, 2.53]: row 0: 3 +, 2.5 +, 1.0 -, 2.2 -, 3.5 +; row 1: 0 -, 1 -, 2 -
    assert res.states.tolist() == [[1, 1, -1, -1, 1], [-1, -1, -1, 0, 0]]
    assert res.keep.tolist() == [[True, True, False, False, True], [True, True, True, False, False]]
    # counts: kept 6, tokens 8, segments 3 + 1, tokens in segments 8, fallbacks 0, rows 2, baseline sum 3.8
    assert res.counts(m).tolist() == pytest.approx([6, 8, 4, 8, 0, 2, 3.8])
    assert res.counts(m).dtype == torch.float64
    assert torch.equal(ops.asr_mask(r, m, torch.tensor([1, -1]), delta="auto"), res.keep)


def test_default_asr_mask_differs_from_tokenwise_on_noisy_rewards():
    # The trainers' defaults (sequence_mean, delta auto q = 0.3) use the hysteresis; delta 0 would
    # make ASR the token-wise mask on tie-free rewards. Noise around a chosen row's mean flips the
    # token-wise sign at random, while the band holds the state through small wiggles.
    g = torch.Generator().manual_seed(0)
    r = torch.randn(8, 40, generator=g)
    m = torch.ones(8, 40, dtype=torch.bool)
    sign = ops.preference_sign(4)
    default = ops.keep_mask(r, m, sign, baseline="sequence_mean", delta="auto", delta_quantile=0.3)
    tokenwise = ops.keep_mask(r, m, sign, kind="tokenwise", baseline="sequence_mean")
    assert default.delta > 0
    differ = (default.keep != tokenwise.keep).float().mean().item()
    assert differ > 0.05
    # and delta = 0 really is the token-wise mask here (no ties in Gaussian noise)
    zero = ops.keep_mask(r, m, sign, baseline="sequence_mean", delta=0.0)
    assert torch.equal(zero.keep, tokenwise.keep)


# ---------------------------------------------------------------- position_mean: a trend over position


def test_position_bins_hand_values():
    m = M([[1] * 5 + [0] * 15, [1] * 20, [1] * 3 + [0] * 17])
    bins = ops.position_bins(m)
    # n = 5: floor(10 t / 5) = 2t; n = 20: floor(t / 2); n = 3: floor(10 t / 3) = 0, 3, 6; -1 at padding
    assert bins[0].tolist() == [0, 2, 4, 6, 8] + [-1] * 15
    assert bins[1].tolist() == [t // 2 for t in range(20)]
    assert bins[2].tolist() == [0, 3, 6] + [-1] * 17


def test_position_mean_follows_the_signal_where_sequence_mean_follows_the_position():
    # rewards = trend(t) + signal: trend t (0..9), signal +-0.5 alternating, opposite in the two rows.
    t = torch.arange(10, dtype=torch.float32)
    sig = torch.tensor([0.5, -0.5] * 5)
    r = torch.stack([t + sig, t - sig])
    m = torch.ones(2, 10, dtype=torch.bool)
    sign = ops.preference_sign(1)  # row 0 chosen, row 1 rejected
    # n = 10: one token per bin; bin t's batch mean is ((t + s) + (t - s)) / 2 = t, so r - b = the signal.
    b = ops.position_mean_baseline(r, m)
    assert b.tolist() == [list(map(float, range(10)))] * 2
    pos = ops.keep_mask(r, m, sign, baseline="position_mean", delta=0.0)
    assert pos.states.tolist() == [[1, -1] * 5, [-1, 1] * 5]
    assert pos.keep.tolist() == [[True, False] * 5, [True, False] * 5]  # chosen +0.5 tokens, rejected -0.5 tokens
    # sequence mean 4.5 in both rows: row 0 = [.5, .5, 2.5, 2.5, 4.5, 4.5, 6.5, 6.5, 8.5, 8.5] -> the first half is
    # below, the tie at 4.5 inherits '-', the end is above: the mask is decided by position alone.
    seq = ops.keep_mask(r, m, sign, baseline="sequence_mean", delta=0.0)
    assert seq.states[0].tolist() == [-1] * 6 + [1] * 4
    assert seq.keep.tolist() == [[False] * 6 + [True] * 4, [True] * 5 + [False] * 5]
    # the resolved per-token baseline goes through hysteresis_states / asr_mask / resolve_delta as well
    assert ops.hysteresis_states(r, m, b, 0.0).tolist() == pos.states.tolist()
    assert torch.equal(ops.asr_mask(r, m, sign, baseline=b), pos.keep)
    assert ops.resolve_delta(r, m, "position_mean", "auto") == pytest.approx(0.5)
    assert pos.baseline.tolist() == [4.5, 4.5]  # the row's mean baseline, for logging


def test_stepwise_with_a_per_token_baseline_signs_mean_of_r_minus_b():
    # steps {t0, t1}, {t2, t3}; r = [1, 1, 0, 0], per-token b = [0, 3, -1, 0]
    # step 0: mean(1 - 0, 1 - 3) = -0.5 -> '-'; step 1: mean(0 + 1, 0 - 0) = 0.5 -> '+'
    r = T([[1.0, 1.0, 0.0, 0.0]])
    m = M([[1, 1, 1, 1]])
    b = torch.tensor([[0.0, 3.0, -1.0, 0.0]], dtype=torch.float64)
    res = ops.keep_mask(r, m, torch.tensor([1]), kind="stepwise", baseline=b, is_boundary=M([[0, 1, 0, 0]]))
    assert res.states.tolist() == [[-1, -1, 1, 1]]
    assert res.keep.tolist() == [[False, False, True, True]]
    assert res.baseline.tolist() == [0.5]  # the row's mean baseline: (0 + 3 - 1 + 0) / 4
