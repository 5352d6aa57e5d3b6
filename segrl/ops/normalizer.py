"""Fitting the location-aware normaliser (arXiv 2501.02790 §3.2) with scikit-learn's HuberRegressor."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from .segments import LOG_EPS

HUBER_EPSILON = 1.35
_KEYS = ("a_mu", "b_mu", "a_sigma", "b_sigma")
#: A fit whose sigma(1) is at most this fraction of the largest bucket std counts as sigma ~ 0.
MIN_SIGMA_RATIO = 1e-3


@dataclass(frozen=True)
class LocationNormalizerCoef:
    """Coefficients of ``mu(p) = a_mu ln(p + 1e-10) + b_mu`` and ``sigma(p) = a_sigma ln(p + 1e-10) + b_sigma``."""

    a_mu: float
    b_mu: float
    a_sigma: float
    b_sigma: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data, name: str = "normalizer") -> LocationNormalizerCoef:
        """Read saved coefficients, checking them: finite numbers and ``sigma(1) = b_sigma > 0``.

        ``name`` prefixes the errors (``"segment_rm.normalizer"`` for a saved RM's config).
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"`{name}` must be a mapping of {list(_KEYS)}, got {type(data).__name__}")
        missing = [k for k in _KEYS if k not in data]
        if missing:
            raise ValueError(f"`{name}` (normaliser coefficients) is missing {missing}")
        values = []
        for k in _KEYS:
            v = data[k]
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v):
                raise ValueError(f"`{name}.{k}` must be a finite number, got {v!r}")
            values.append(float(v))
        coef = cls(*values)
        if not coef.b_sigma > 0:
            raise ValueError(
                f"`{name}.b_sigma` must be > 0 (it is sigma(p) at p = 1, the last segment of every response), got "
                f"{coef.b_sigma!r}: a non-positive sigma would be floored to sigma_floor and scale the rewards by "
                "1 / sigma_floor. Refit the normaliser (segrl fit-norm)"
            )
        return coef


@dataclass(frozen=True)
class LocationBuckets:
    """Per-location statistics the fit is made on (also what the fit plot draws). Shapes: (n_buckets,)."""

    locations: np.ndarray
    means: np.ndarray
    stds: np.ndarray
    counts: np.ndarray


def location_buckets(locations, rewards) -> LocationBuckets:
    """Group segment rewards by location ``p`` rounded to 3 decimals; population std per bucket.

    Rounding follows the published script, which keys buckets by ``f"{p:.3f}"`` (correct decimal
    rounding of the float, not numpy's multiply-and-round).
    """
    locations = np.asarray(locations, dtype=np.float64)
    rewards = np.asarray(rewards, dtype=np.float64)
    if locations.ndim != 1 or rewards.ndim != 1:
        raise ValueError(
            f"`locations` and `rewards` must be 1-D arrays, got shapes {locations.shape} and {rewards.shape}"
        )
    if locations.shape != rewards.shape:
        raise ValueError(f"`locations` has {locations.size} entries but `rewards` has {rewards.size}")
    if locations.size == 0:
        raise ValueError("`locations` is empty: score some responses before fitting the normaliser")
    if not np.isfinite(locations).all() or not ((locations > 0) & (locations <= 1)).all():
        raise ValueError("`locations` must be finite values p = k / K in (0, 1]")
    if not np.isfinite(rewards).all():
        raise ValueError("`rewards` contains NaN or inf")
    distinct, inverse = np.unique(locations, return_inverse=True)
    keys = np.array([float(f"{p:.3f}") for p in distinct])
    bucket_locations, bucket_of_distinct = np.unique(keys, return_inverse=True)
    bucket = bucket_of_distinct[inverse]
    counts = np.bincount(bucket, minlength=bucket_locations.size).astype(np.float64)
    means = np.bincount(bucket, weights=rewards, minlength=bucket_locations.size) / counts
    sq_dev = (rewards - means[bucket]) ** 2
    stds = np.sqrt(np.bincount(bucket, weights=sq_dev, minlength=bucket_locations.size) / counts)
    return LocationBuckets(bucket_locations, means, stds, counts.astype(np.int64))


def fit_location_normalizer(locations, rewards, *, check: bool = False, min_buckets: int = 1) -> LocationNormalizerCoef:
    """Fit ``mu(p)`` and ``sigma(p)`` by Huber regression of bucket means / stds on ``ln(p + 1e-10)``.

    Args:
        locations: ``p_k = k / K`` of every scored segment. Shape: (N,).
        rewards: the raw segment rewards. Shape: (N,).
        check: reject a degenerate fit with :func:`check_location_fit` (``segrl fit-norm`` does).
        min_buckets: with ``check``, the fewest location buckets accepted (2 for a segment RM).

    Returns:
        :class:`LocationNormalizerCoef`. Each bucket is one unweighted point (as published).
    """
    from sklearn.linear_model import HuberRegressor

    buckets = location_buckets(locations, rewards)
    x = np.log(buckets.locations + LOG_EPS).reshape(-1, 1)
    mu_fit = HuberRegressor(epsilon=HUBER_EPSILON).fit(x, buckets.means)
    sigma_fit = HuberRegressor(epsilon=HUBER_EPSILON).fit(x, buckets.stds)
    coef = LocationNormalizerCoef(
        a_mu=float(mu_fit.coef_[0]),
        b_mu=float(mu_fit.intercept_),
        a_sigma=float(sigma_fit.coef_[0]),
        b_sigma=float(sigma_fit.intercept_),
    )
    if check:
        check_location_fit(coef, buckets, min_buckets=min_buckets)
    return coef


def check_location_fit(coef: LocationNormalizerCoef, buckets: LocationBuckets, *, min_buckets: int = 1) -> None:
    """Raise ``ValueError`` (with the numbers) when a normaliser fit is degenerate.

    Degenerate: too few segments to measure any spread (no bucket holds 2 or more), fewer than
    ``min_buckets`` location buckets, every bucket's rewards identical (all stds 0), or a fitted
    ``sigma(1) = b_sigma`` at or below ``MIN_SIGMA_RATIO`` times the largest bucket std (sigma ~ 0,
    which the ``sigma_floor`` would turn into a 1 / sigma_floor scaling of every reward).
    """
    n, nb = int(buckets.counts.sum()), int(buckets.locations.size)
    where = f"{n} segment(s) in {nb} location bucket(s)"
    if int(buckets.counts.max(initial=0)) < 2:
        raise ValueError(f"degenerate normaliser fit: too few segments ({where}, none with 2 or more segments): no "
                         "spread to fit sigma(p) on; score more pairs (`n_pairs`)")
    if nb < min_buckets:
        raise ValueError(f"degenerate normaliser fit: too few location buckets ({where}; at least {min_buckets} "
                         f"needed to fit mu(p) and sigma(p) against p): every response had the same number of "
                         "segments; check the segmentation threshold or score more pairs")
    top = float(buckets.stds.max())
    if not top > 0:
        raise ValueError(f"degenerate normaliser fit: every bucket's segment rewards are identical ({where}, all "
                         "stds 0), so sigma(p) would be 0; is the reward model constant?")
    if not coef.b_sigma > MIN_SIGMA_RATIO * top:
        raise ValueError(f"degenerate normaliser fit: sigma(1) = b_sigma = {coef.b_sigma:.6g} is ~0 or negative "
                         f"(largest bucket std {top:.6g}, {where}; fitted a_sigma = {coef.a_sigma:.6g}): the "
                         "sigma_floor would scale every reward by 1 / sigma_floor; score more pairs")


def segment_locations(seg_valid) -> np.ndarray:
    """``p_k = k / K_b`` for every real segment slot, flattened row-major. ``seg_valid`` Shape: (B, K)."""
    valid = np.asarray(seg_valid.cpu() if hasattr(seg_valid, "cpu") else seg_valid, dtype=bool)
    n_segments = valid.sum(axis=1, keepdims=True)
    k = np.arange(1, valid.shape[1] + 1)[None, :]
    return (k / np.maximum(n_segments, 1))[valid]
