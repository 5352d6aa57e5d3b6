"""The location normaliser refuses degenerate fits and bad saved configs, with the numbers in the message.

Without these checks a fit with sigma = 0 (or a saved negative sigma) is floored to sigma_floor = 0.01
at scoring time, which silently multiplies every reward by 100.
"""

import json
import math

import numpy as np
import pytest

from segrl.ops import LocationNormalizerCoef, fit_location_normalizer, location_buckets
from segrl.ops.normalizer import check_location_fit

GOOD = {"a_mu": 0.5, "b_mu": 0.2, "a_sigma": 0.1, "b_sigma": 1.5}


# --------------------------------------------------------------------------------------------------
# degenerate fits
# --------------------------------------------------------------------------------------------------


def test_a_healthy_fit_passes_the_check():
    # buckets p = 1/2 and 1, each with rewards mean +- 1: stds 1, fitted sigma(1) = 1
    p = np.array([0.5, 0.5, 1.0, 1.0])
    r = np.array([1.0, -1.0, 3.0, 1.0])
    coef = fit_location_normalizer(p, r, check=True, min_buckets=2)
    assert coef.b_sigma == pytest.approx(1.0, abs=1e-3) and coef.b_mu == pytest.approx(2.0, abs=1e-3)


def test_single_segment_is_too_few():
    with pytest.raises(ValueError, match=r"too few segments \(1 segment\(s\) in 1 location bucket\(s\)"):
        fit_location_normalizer([1.0], [0.7], check=True)
    # every bucket a single segment: no spread anywhere (3 segments, 3 buckets)
    with pytest.raises(ValueError, match=r"too few segments \(3 segment\(s\) in 3 location bucket\(s\), none with 2"):
        fit_location_normalizer([1 / 3, 2 / 3, 1.0], [0.1, 0.2, 0.3], check=True)


def test_constant_rewards_give_sigma_zero():
    # without the check the fit returns sigma = 0 silently
    unchecked = fit_location_normalizer([0.5, 0.5, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0])
    assert unchecked.b_sigma == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match=r"identical \(4 segment\(s\) in 2 location bucket\(s\), all stds 0\)"):
        fit_location_normalizer([0.5, 0.5, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0], check=True)


def test_sigma_near_zero_at_p_1_is_named_with_the_numbers():
    # spread only at p = 1/2 (std 1); p = 1 is constant: sigma(1) fits ~0 while the largest std is 1
    p = np.array([0.5, 0.5, 1.0, 1.0])
    r = np.array([1.0, -1.0, 5.0, 5.0])
    buckets = location_buckets(p, r)
    assert buckets.stds.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match=r"sigma\(1\) = b_sigma = .* is ~0 or negative \(largest bucket std 1,"):
        fit_location_normalizer(p, r, check=True)
    # the threshold is relative: a hand-made coefficient just above 1e-3 x the largest std passes
    check_location_fit(LocationNormalizerCoef(0.0, 0.0, 0.0, 1.1e-3), buckets)
    with pytest.raises(ValueError, match="b_sigma = 0.0009"):
        check_location_fit(LocationNormalizerCoef(0.0, 0.0, 0.0, 0.9e-3), buckets)


def test_too_few_buckets_for_a_segment_rm():
    # every response had one segment: only p = 1, fine for a bandit RM, not for a segment RM
    p, r = [1.0, 1.0, 1.0], [0.0, 1.0, 2.0]
    assert fit_location_normalizer(p, r, check=True, min_buckets=1).b_sigma > 0
    with pytest.raises(ValueError, match=r"too few location buckets \(3 segment\(s\) in 1 location bucket\(s\); at "
                                         r"least 2 needed"):
        fit_location_normalizer(p, r, check=True, min_buckets=2)


# --------------------------------------------------------------------------------------------------
# loading saved coefficients and configs
# --------------------------------------------------------------------------------------------------


def test_from_dict_accepts_good_coefficients():
    assert LocationNormalizerCoef.from_dict(GOOD) == LocationNormalizerCoef(0.5, 0.2, 0.1, 1.5)
    assert LocationNormalizerCoef.from_dict({**GOOD, "b_sigma": 2}).b_sigma == 2.0  # ints are numbers


@pytest.mark.parametrize("b_sigma", [0.0, -0.3])
def test_from_dict_rejects_non_positive_sigma(b_sigma):
    with pytest.raises(ValueError, match=rf"`segment_rm.normalizer.b_sigma` must be > 0 .*got {b_sigma}"):
        LocationNormalizerCoef.from_dict({**GOOD, "b_sigma": b_sigma}, "segment_rm.normalizer")


@pytest.mark.parametrize("key, value", [("a_mu", "0.5"), ("b_mu", None), ("a_sigma", True), ("b_sigma", math.nan),
                                        ("b_mu", math.inf)])
def test_from_dict_rejects_non_numbers(key, value):
    with pytest.raises(ValueError, match=rf"`normalizer.{key}` must be a finite number"):
        LocationNormalizerCoef.from_dict({**GOOD, key: value})


def test_from_dict_names_missing_keys_and_non_mappings():
    with pytest.raises(ValueError, match=r"missing \['b_sigma'\]"):
        LocationNormalizerCoef.from_dict({k: v for k, v in GOOD.items() if k != "b_sigma"})
    with pytest.raises(ValueError, match="must be a mapping"):
        LocationNormalizerCoef.from_dict([1, 2, 3, 4])


def _settings(**overrides):
    base = {"format": 1, "threshold": 2.0, "reference_model": "ref", "normalizer": dict(GOOD), "sigma_floor": 0.01,
            "reward_form": "value"}
    return {**base, **overrides}


def test_segment_rm_settings_round_trip():
    from segrl.rm.model import SegmentRMSettings

    settings = SegmentRMSettings.from_dict(_settings())
    assert settings.normalizer == LocationNormalizerCoef(0.5, 0.2, 0.1, 1.5)
    assert SegmentRMSettings.from_dict(settings.to_dict()).to_dict() == settings.to_dict()
    assert SegmentRMSettings.from_dict({k: v for k, v in _settings().items() if k != "format"}).threshold == 2.0


@pytest.mark.parametrize("fmt", [2, 0, "1", True, None])
def test_segment_rm_settings_unknown_format(fmt):
    from segrl.rm.model import SegmentRMSettings

    with pytest.raises(ValueError, match=r"`segment_rm.format` is .*this segrl reads format 1"):
        SegmentRMSettings.from_dict(_settings(format=fmt))


@pytest.mark.parametrize("overrides, match", [
    ({"normalizer": {**GOOD, "b_sigma": -0.5}}, r"`segment_rm.normalizer.b_sigma` must be > 0"),
    ({"sigma_floor": 0.0}, r"`segment_rm.sigma_floor` must be a finite number > 0, got 0.0"),
    ({"sigma_floor": -1}, r"`segment_rm.sigma_floor` must be a finite number > 0, got -1"),
])
def test_segment_rm_settings_reject_non_positive_sigma(overrides, match):
    from segrl.rm.model import SegmentRMSettings

    with pytest.raises(ValueError, match=match):
        SegmentRMSettings.from_dict(_settings(**overrides))


def test_saved_rm_with_negative_sigma_fails_to_load(tmp_path):
    from segrl.rm.model import CONFIG_KEY, SegmentRMSettings, SegmentRewardModel

    config = {CONFIG_KEY: _settings(normalizer={**GOOD, "b_sigma": -0.2})}
    (tmp_path / "config.json").write_text(json.dumps(config))
    # write_normalizer reads the saved settings first: the bad sigma is named, the file is left as it was
    before = (tmp_path / "config.json").read_text()
    with pytest.raises(ValueError, match="b_sigma"):
        SegmentRewardModel.write_normalizer(tmp_path, LocationNormalizerCoef(**GOOD))
    assert (tmp_path / "config.json").read_text() == before
    with pytest.raises(ValueError, match="b_sigma"):
        SegmentRMSettings.from_dict(json.loads(before)[CONFIG_KEY])
