"""The `segrl_asr_gae` advantage estimator against verl's own data structures and call paths."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl_helpers import right_padded

from segrl import ops
from segrl.integrations import verl as plugin

# Two responses: 3 tokens and 2 tokens (+1 padding).
REWARDS = [[1.0, -1.0, 2.0], [-2.0, 1.0]]
VALUES = [[0.5, 0.2, -0.1], [0.3, 0.1]]
# GAE with gamma = 1, lam = 0.95, worked out by hand (value after the last token is 0):
#   row 0: d2 = 2 + 0 + 0.1 = 2.1            A2 = 2.1
#          d1 = -1 - 0.1 - 0.2 = -1.3         A1 = -1.3 + 0.95 * 2.1 = 0.695
#          d0 = 1 + 0.2 - 0.5 = 0.7           A0 = 0.7 + 0.95 * 0.695 = 1.36025
#   row 1: d1 = 1 + 0 - 0.1 = 0.9             A1 = 0.9
#          d0 = -2 + 0.1 - 0.3 = -2.2         A0 = -2.2 + 0.95 * 0.9 = -1.345
HAND_GAE = [[1.36025, 0.695, 2.1], [-1.345, 0.9]]
HAND_RETURNS = [[1.86025, 0.895, 2.0], [-1.045, 1.0]]
# ASR mask by hand with the options of earlier releases (LEGACY: batch_mean baseline, delta 0):
# sequence sums R = (2, -1), batch mean 0.5 -> signs (+1, -1). Token baseline = mean of the 5 valid
# rewards = 0.2, so states are row 0 (+, -, +), row 1 (-, +): keep the tokens that agree with their
# row's sign.
LEGACY = {"asr_baseline": "batch_mean", "asr_delta": 0.0}
HAND_KEEP = [[True, False, True], [True, False]]
# ... and with the defaults (sequence_mean baseline, delta "auto" = 0.3-quantile of |r - b|):
# baselines row 0: 2/3, row 1: -1/2; |r - b| = 1/3, 5/3, 4/3 | 3/2, 3/2 -> sorted 1/3, 4/3, 3/2, 3/2, 5/3;
# rank 0.3 * 4 = 1.2 -> delta = 4/3 + 0.2 * (3/2 - 4/3) = 41/30. Row 0: band (-0.7, 2.033): states
# (0, -, -), nothing agrees with +1 -> falls back to the full row. Row 1: band (-1.867, 0.867):
# states (-, +), sign -1 keeps token 0.
HAND_DELTA = 41 / 30
HAND_KEEP_DEFAULT = [[True, True, True], [True, False]]


def _batch(rewards=REWARDS, values=VALUES, scores=None) -> DataProto:
    r, mask = right_padded(rewards)
    v, _ = right_padded(values)
    tensors = {"token_level_rewards": r, "values": v, "response_mask": mask}
    if scores is not None:
        tensors["token_level_scores"] = right_padded(scores)[0]
    return DataProto.from_dict(tensors=tensors, non_tensors={"uid": np.array(["a", "b"][: len(rewards)], dtype=object)})


def _algo(**segrl_options):
    conf = {"gamma": 1.0, "lam": 0.95, "adv_estimator": plugin.ADV_ESTIMATOR_NAME}
    if segrl_options:
        conf[plugin.CONFIG_KEY] = segrl_options
    return OmegaConf.create(conf)


def _padded_bool(rows):
    width = max(map(len, rows))
    return torch.tensor([list(r) + [False] * (width - len(r)) for r in rows])


def test_registered_under_its_name():
    assert get_adv_estimator_fn("segrl_asr_gae") is plugin.compute_segrl_asr_gae_advantage


def test_default_options_auto_delta_and_sequence_mean_by_hand():
    r, mask = right_padded(REWARDS)
    v, _ = right_padded(VALUES)
    out = plugin.asr_gae_advantages(r, v, mask, gamma=1.0, lam=0.95)
    assert out.delta == pytest.approx(HAND_DELTA)
    assert torch.equal(out.keep, _padded_bool(HAND_KEEP_DEFAULT))
    assert out.fallback.tolist() == [True, False]
    assert out.scale == pytest.approx(5 / 4)
    options = plugin.ASROptions()
    assert (options.mask_type, options.asr_baseline, options.asr_delta) == ("asr", "sequence_mean", "auto")


def test_gae_matches_hand_computation_then_mask_and_rescale():
    r, mask = right_padded(REWARDS)
    v, _ = right_padded(VALUES)
    out = plugin.asr_gae_advantages(r, v, mask, gamma=1.0, lam=0.95, options=plugin.ASROptions(**LEGACY))

    hand_returns, _ = right_padded(HAND_RETURNS)
    torch.testing.assert_close(out.returns * mask, hand_returns, atol=1e-6, rtol=0)
    # the raw GAE also agrees with segrl's own op (same maths, independent implementation)
    ours, _ = ops.gae_advantages(r, v, mask.bool(), gamma=1.0, lam=0.95)
    torch.testing.assert_close(ours, right_padded(HAND_GAE)[0], atol=1e-6, rtol=0)

    keep = _padded_bool(HAND_KEEP)
    assert torch.equal(out.keep, keep)
    assert out.seq_sign.tolist() == [1, -1]
    assert not out.fallback.any()
    assert out.scale == pytest.approx(5 / 3)  # N = 5 response tokens, K = 3 kept

    flat = [a for row in HAND_GAE for a in row]  # verl whitens over valid tokens, unbiased variance
    mean, var = statistics.mean(flat), statistics.variance(flat)
    whitened = [[(a - mean) / math.sqrt(var + 1e-8) for a in row] for row in HAND_GAE]
    expected = torch.where(keep, right_padded(whitened)[0] * (5 / 3), torch.zeros(()))
    torch.testing.assert_close(out.advantages, expected, atol=1e-5, rtol=0)
    assert bool((out.advantages[~keep] == 0).all())  # dropped tokens and padding: exactly zero


def test_through_verl_compute_advantage_reads_values_from_the_dataproto():
    data = _batch()
    data = compute_advantage(data, adv_estimator="segrl_asr_gae", gamma=1.0, lam=0.95, config=_algo(**LEGACY))
    r, mask = right_padded(REWARDS)
    v, _ = right_padded(VALUES)
    direct = plugin.asr_gae_advantages(r, v, mask, gamma=1.0, lam=0.95, options=plugin.ASROptions(**LEGACY))
    torch.testing.assert_close(data.batch["advantages"], direct.advantages, atol=0, rtol=0)
    torch.testing.assert_close(data.batch["returns"] * mask, right_padded(HAND_RETURNS)[0], atol=1e-6, rtol=0)
    assert torch.equal(data.batch["advantages"] != 0, _padded_bool(HAND_KEEP))


def test_gamma_and_lam_come_from_the_algorithm_config():
    a = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo()).batch["returns"]
    conf = _algo()
    conf.lam = 1.0
    b = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=conf).batch["returns"]
    assert not torch.allclose(a, b)
    # with lam = 1 the return is the plain reward-to-go (gamma = 1)
    torch.testing.assert_close(b[0, :3], torch.tensor([2.0, 1.0, 2.0]), atol=1e-6, rtol=0)


def test_without_critic_values_it_says_how_to_fix_it():
    data = _batch()
    data.batch.pop("values")
    with pytest.raises(ValueError, match="critic.enable=True"):
        compute_advantage(data, adv_estimator="segrl_asr_gae", config=_algo())


def test_signal_defaults_to_scores_before_the_in_reward_kl():
    # token_level_rewards = scores - KL: the KL lifts row 0's middle token from -1 to 0.5.
    rewards = [[1.0, 0.5, 2.0], [-2.0, 1.0]]
    by_scores = compute_advantage(_batch(rewards, scores=REWARDS), adv_estimator="segrl_asr_gae",
                                  config=_algo(**LEGACY))
    assert torch.equal(by_scores.batch["advantages"] != 0, _padded_bool(HAND_KEEP))
    by_rewards = compute_advantage(_batch(rewards, scores=REWARDS), adv_estimator="segrl_asr_gae",
                                   config=_algo(signal="rewards", **LEGACY))
    # token baseline over rewards = 0.5: the middle token ties and inherits the "+" state -> kept
    assert torch.equal(by_rewards.batch["advantages"] != 0, _padded_bool([[True, True, True], [True, False]]))


def test_options_from_config_reach_the_mask():
    # delta so wide that every token stays undecided -> "drop" empties each row -> "full" falls back
    data = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(asr_delta=100.0))
    _, mask = right_padded(REWARDS)
    assert torch.equal(data.batch["advantages"] != 0, mask.bool())
    # ... while empty="none" leaves the rows empty: every advantage is exactly 0
    data = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(asr_delta=100.0, asr_empty="none"))
    assert bool((data.batch["advantages"] == 0).all())
    # neutral="keep" keeps the undecided tokens instead
    data = compute_advantage(_batch(), adv_estimator="segrl_asr_gae",
                             config=_algo(asr_delta=100.0, asr_neutral="keep", asr_empty="none"))
    assert torch.equal(data.batch["advantages"] != 0, mask.bool())
    # the keys of earlier releases still work (deprecated)
    data = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(delta=100.0, empty="none"))
    assert bool((data.batch["advantages"] == 0).all())
    # mask_type="tokenwise" (sign of r - b, no hysteresis): sequence_mean baselines 2/3 and -1/2
    data = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(mask_type="tokenwise"))
    assert torch.equal(data.batch["advantages"] != 0, _padded_bool([[True, False, True], [True, False]]))
    # mask_type="none": plain GAE on every response token
    data = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(mask_type="none"))
    assert torch.equal(data.batch["advantages"] != 0, mask.bool())


def test_rescale_off_keeps_whitened_values():
    on = compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(**LEGACY)).batch["advantages"]
    off = compute_advantage(_batch(), adv_estimator="segrl_asr_gae",
                            config=_algo(rescale=False, **LEGACY)).batch["advantages"]
    torch.testing.assert_close(on, off * (5 / 3), atol=1e-6, rtol=0)


def test_config_validation():
    with pytest.raises(ValueError, match="unknown"):
        compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(deltaa=0.1))
    with pytest.raises(ValueError, match="asr_neutral"):
        compute_advantage(_batch(), adv_estimator="segrl_asr_gae", config=_algo(neutral="maybe"))
    # bad options fail when the options are built, naming the field
    for bad, name in (({"asr_delta": -1.0}, "asr_delta"), ({"asr_delta": "wide"}, "asr_delta"),
                      ({"asr_empty": "all"}, "asr_empty"), ({"asr_baseline": "median"}, "asr_baseline"),
                      ({"mask_type": "stepwise"}, "stepwise"), ({"seq_baseline": "x"}, "seq_baseline")):
        with pytest.raises(ValueError, match=name):
            plugin.ASROptions(**bad)
    with pytest.raises(ValueError, match="both"):
        plugin.ASROptions.from_config(_algo(delta=0.1, asr_delta=0.2))
    assert plugin.ASROptions.from_config(_algo(baseline="0.25")).asr_baseline == 0.25
    assert plugin.ASROptions.from_config(_algo(asr_delta="0.5")).asr_delta == 0.5
    # verl's AlgoConfig dataclass has no segrl key: defaults apply
    assert plugin.ASROptions.from_config(AlgoConfig(gamma=1.0, lam=0.95)) == plugin.ASROptions()


def test_sequence_sign_ties_go_positive_and_group_mean_uses_uid():
    signal = torch.tensor([[1.0], [3.0], [10.0], [12.0]])
    mask = torch.ones_like(signal)
    _, _, sign = plugin.asr_keep_mask(signal, mask)
    assert sign.tolist() == [-1, -1, 1, 1]  # batch mean 6.5
    _, _, sign = plugin.asr_keep_mask(signal, mask, options=plugin.ASROptions(seq_baseline="group_mean"),
                                      index=np.array(["a", "a", "b", "b"], dtype=object))
    assert sign.tolist() == [-1, 1, -1, 1]  # group means 2 and 11
    _, _, sign = plugin.asr_keep_mask(torch.tensor([[2.0], [2.0]]), torch.ones(2, 1))
    assert sign.tolist() == [1, 1]  # R == mean: ties -> +1
    with pytest.raises(ValueError, match="uid"):
        plugin.asr_keep_mask(signal, mask, options=plugin.ASROptions(seq_baseline="group_mean"))


def test_multi_turn_holes_are_skipped_and_never_kept():
    # response_mask 0 at positions 2-3 (a tool observation inside the response); their rewards are junk
    signal = torch.tensor([[1.0, -1.0, 9.0, 9.0, -1.0, 1.0], [-1.0, -1.0, 2.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0, 0, 1, 1], [1, 1, 1, 0, 0, 0]], dtype=torch.float32)
    keep, _, sign = plugin.asr_keep_mask(signal, mask)
    compact = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-1.0, -1.0, 2.0, 0.0]])
    compact_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]).bool()
    expected = ops.keep_mask(compact, compact_mask, sign, **plugin.ASROptions().mask_kwargs()).keep
    assert keep[0, [0, 1, 4, 5]].tolist() == expected[0].tolist()
    assert keep[1, :3].tolist() == expected[1, :3].tolist()
    assert not keep[0, 2:4].any() and not keep[1, 3:].any()
    # junk in the holes changes nothing
    clean = signal.clone()
    clean[0, 2:4] = 0.0
    assert torch.equal(plugin.asr_keep_mask(clean, mask)[0], keep)


def test_v1_trainer_path_delegates_to_the_registry():
    from verl.trainer.ppo.v1.utils import compute_advantage_for_multi_trajectories

    data = compute_advantage_for_multi_trajectories(
        _batch(), batch_keys=["a_0_0", "b_0_0"], adv_estimator="segrl_asr_gae", gamma=1.0, lam=0.95,
        config=_algo(**LEGACY)
    )
    assert torch.equal(data.batch["advantages"] != 0, _padded_bool(HAND_KEEP))
