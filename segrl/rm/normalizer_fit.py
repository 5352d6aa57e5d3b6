"""Fitting the location-aware normaliser of a trained segment RM (docs/method.md#location-normalizer, ``segrl fit-norm``).

Score the chosen **and** rejected responses of N preference pairs, record ``(p_k = k / K, r_k)``
for every segment, bucket by ``p`` (3 decimals), and Huber-fit bucket means and population stds
against ``ln(p + 1e-10)`` with :func:`segrl.ops.fit_location_normalizer`. A bandit RM (``c = inf``)
has one segment per response, so every ``p`` is 1: one bucket, whose mean and std become
``b_mu`` / ``b_sigma`` (the slopes are then fixed by Huber's L2 penalty to ~0), i.e. the usual
global bandit normaliser.

The fit is on the reward form in use (``reward_form``: ``"value"`` records ``r_k``, ``"delta"``
records ``r_k - r_{k-1}``, docs/method.md#reward-form); the form is saved with the coefficients, and
scoring with another form and ``normalize=True`` is an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segrl.ops import (
    LocationBuckets,
    LocationNormalizerCoef,
    fit_location_normalizer,
    location_buckets,
    segment_locations,
)
from segrl.rm.evaluate import iter_scored_pairs, prepare_pairs
from segrl.rm.model import SegmentRewardModel
from segrl.rm.scoring import form_segment_rewards, parse_reward_form

__all__ = ["NormalizerFit", "collect_segment_rewards", "fit_normalizer", "plot_normalizer_fit"]

LOG_EPS = 1e-10


@dataclass
class NormalizerFit:
    """Result of :func:`fit_normalizer`: coefficients, the buckets they were fitted on, counts."""

    coef: LocationNormalizerCoef
    buckets: LocationBuckets
    n_pairs: int
    n_segments: int
    plot_path: Path | None = None
    reward_form: str = "value"


def collect_segment_rewards(rm: SegmentRewardModel, dataset, *, n_pairs: int | None = None, batch_size: int = 8,
                            max_length: int | None = None, seed: int = 42, progress: bool = True,
                            reward_form: str | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """``(locations, rewards, n_pairs_used)``: ``p_k`` and the raw segment reward in ``reward_form``
    (default: the RM's) of every segment of the chosen and rejected responses of ``n_pairs`` pairs
    (shuffled with ``seed`` first, as published; all pairs if ``n_pairs`` is None). Shapes: (N_segments,).
    """
    form = parse_reward_form(rm.reward_form if reward_form is None else reward_form)
    tokenized, _ = prepare_pairs(rm, dataset, max_pairs=n_pairs, max_length=max_length,
                                 shuffle_seed=seed if n_pairs is not None else None)
    locs, rewards = [], []
    for chosen, rejected in iter_scored_pairs(rm, tokenized, batch_size=batch_size, progress=progress,
                                              desc="Scoring segments"):
        for side in (chosen, rejected):
            locs.append(segment_locations(side.seg_valid))
            formed = form_segment_rewards(side.seg_rewards, side.seg_valid, side.start_values, form)
            rewards.append(formed[side.seg_valid].double().numpy())
    locations = np.concatenate(locs) if locs else np.zeros(0)
    values = np.concatenate(rewards) if rewards else np.zeros(0)
    if locations.size == 0:
        raise ValueError("no segment found in the scored responses: nothing to fit the normaliser on")
    return locations, values, len(tokenized)


def fit_normalizer(rm: SegmentRewardModel, dataset, *, n_pairs: int | None = None, batch_size: int = 8,
                   max_length: int | None = None, seed: int = 42, plot_path: str | Path | None = None,
                   progress: bool = True, reward_form: str | None = None) -> NormalizerFit:
    """Fit ``mu(p)``, ``sigma(p)`` for ``rm`` on a preference dataset, on the segment rewards in
    ``reward_form`` (default: the RM's current form), and set ``rm.normalizer`` and ``rm.reward_form``.

    Save it with ``rm.save_pretrained(dir)`` or
    ``SegmentRewardModel.write_normalizer(dir, fit.coef, fit.reward_form)``. Writes a PNG of the fit
    to ``plot_path`` if given.
    """
    form = parse_reward_form(rm.reward_form if reward_form is None else reward_form)
    locations, rewards, used = collect_segment_rewards(rm, dataset, n_pairs=n_pairs, batch_size=batch_size,
                                                       max_length=max_length, seed=seed, progress=progress,
                                                       reward_form=form)
    # A degenerate fit (sigma ~ 0, too few segments or locations) is an error with the numbers; a
    # bandit RM has one location (p = 1) by construction.
    coef = fit_location_normalizer(locations, rewards, check=True, min_buckets=1 if math.isinf(rm.threshold) else 2)
    buckets = location_buckets(locations, rewards)
    rm.set_normalizer(coef, form)
    fit = NormalizerFit(coef, buckets, used, int(locations.size), reward_form=form)
    if plot_path is not None:
        fit.plot_path = plot_normalizer_fit(coef, buckets, plot_path, title=repr(rm))
    return fit


def plot_normalizer_fit(coef: LocationNormalizerCoef, buckets: LocationBuckets, path: str | Path,
                        title: str | None = None) -> Path:
    """PNG of bucket means / stds against ``p`` with the fitted ``mu(p)`` and ``sigma(p)`` curves."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    p_min = float(min(buckets.locations.min(), 1.0))
    grid = np.geomspace(max(p_min, 1e-4), 1.0, 200) if p_min < 1.0 else np.array([1.0])
    log_p = np.log(grid + LOG_EPS)
    mu = coef.a_mu * log_p + coef.b_mu
    sigma = coef.a_sigma * log_p + coef.b_sigma
    size = 10 + 60 * buckets.counts / max(buckets.counts.max(), 1)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, stat, curve, name, a, b in (
        (axes[0], buckets.means, mu, "mean", coef.a_mu, coef.b_mu),
        (axes[1], buckets.stds, sigma, "std", coef.a_sigma, coef.b_sigma),
    ):
        ax.scatter(buckets.locations, stat, s=size, alpha=0.6, label=f"bucket {name} (size ~ count)")
        ax.plot(grid, curve, color="C3", marker="o" if grid.size == 1 else None,
                label=f"fit: {a:.3g} ln p {'+' if b >= 0 else '-'} {abs(b):.3g}")
        if grid.size > 1:
            ax.set_xscale("log")
        ax.set_xlabel("segment location p = k / K")
        ax.set_ylabel(f"segment reward {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0].set_title("mu(p)")
    axes[1].set_title("sigma(p)")
    if title:
        fig.suptitle(title, fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
