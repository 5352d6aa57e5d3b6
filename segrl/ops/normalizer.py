"""Fitting the location-aware normaliser (arXiv 2501.02790 §3.2) with scikit-learn's HuberRegressor."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .segments import LOG_EPS

HUBER_EPSILON = 1.35


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
    def from_dict(cls, data) -> LocationNormalizerCoef:
        missing = [k for k in ("a_mu", "b_mu", "a_sigma", "b_sigma") if k not in data]
        if missing:
            raise ValueError(f"normaliser coefficients are missing {missing}")
        return cls(*(float(data[k]) for k in ("a_mu", "b_mu", "a_sigma", "b_sigma")))


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


def fit_location_normalizer(locations, rewards) -> LocationNormalizerCoef:
    """Fit ``mu(p)`` and ``sigma(p)`` by Huber regression of bucket means / stds on ``ln(p + 1e-10)``.

    Args:
        locations: ``p_k = k / K`` of every scored segment. Shape: (N,).
        rewards: the raw segment rewards. Shape: (N,).

    Returns:
        :class:`LocationNormalizerCoef`. Each bucket is one unweighted point (as published).
    """
    from sklearn.linear_model import HuberRegressor

    buckets = location_buckets(locations, rewards)
    x = np.log(buckets.locations + LOG_EPS).reshape(-1, 1)
    mu_fit = HuberRegressor(epsilon=HUBER_EPSILON).fit(x, buckets.means)
    sigma_fit = HuberRegressor(epsilon=HUBER_EPSILON).fit(x, buckets.stds)
    return LocationNormalizerCoef(
        a_mu=float(mu_fit.coef_[0]),
        b_mu=float(mu_fit.intercept_),
        a_sigma=float(sigma_fit.coef_[0]),
        b_sigma=float(sigma_fit.intercept_),
    )


def segment_locations(seg_valid) -> np.ndarray:
    """``p_k = k / K_b`` for every real segment slot, flattened row-major. ``seg_valid`` Shape: (B, K)."""
    valid = np.asarray(seg_valid.cpu() if hasattr(seg_valid, "cpu") else seg_valid, dtype=bool)
    n_segments = valid.sum(axis=1, keepdims=True)
    k = np.arange(1, valid.shape[1] + 1)[None, :]
    return (k / np.maximum(n_segments, 1))[valid]
