"""Plain-Python loop reference of the core ops in :mod:`segrl.ops`.

Written straight from ``docs/method.md`` (#tensor-conventions to #spreading, and #ops-contract) with no vectorisation tricks: every
function converts its tensors to nested Python lists, loops over rows ``b`` and positions ``t``
with Python floats / ints, and converts the result back to a tensor at the end. It is slow on
purpose and exists only as an *independent* oracle for ``tests/test_ops_properties.py`` and as the
baseline of ``benchmarks/bench_ops.py``. It does not validate inputs the way the library must
(it only asserts what it relies on); it never modifies its inputs.

Conventions (docs/method.md#tensor-conventions): tensors are ``(B, T)``, right-padded, over response tokens only;
``mask[b, t]`` is True for real tokens; ``segment_ids`` are ``0..K_b-1`` in order, ``-1`` outside
every segment. Integer outputs are ``torch.long``, flags ``torch.bool``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from types import SimpleNamespace

import torch

__all__ = [
    "resolve_baseline",
    "hysteresis_states",
    "segment_ids_from_states",
    "asr_mask",
    "tokenwise_mask",
    "step_segment_ids",
    "stepwise_mask",
    "entropy_segment_ids",
    "segment_end_values",
    "location_normalize",
    "spread_segment_rewards",
    "fit_location_normalizer",
]


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def _as_lists(x: torch.Tensor) -> list:
    return x.detach().cpu().tolist()


def _row_lengths(mask: list[list[bool]]) -> list[int]:
    """n_b for every row, asserting that the mask is right-padded (valid tokens form a prefix)."""
    lengths = []
    for row in mask:
        n = 0
        for v in row:
            if v:
                n += 1
        for t in range(len(row)):
            assert bool(row[t]) == (t < n), "loop reference: mask must be right-padded"
        lengths.append(n)
    return lengths


def _sign(x: float) -> int:
    if x > 0:
        return 1
    if x < 0:
        return -1
    return 0


def _float_dtype(t: torch.Tensor) -> torch.dtype:
    return t.dtype if t.dtype.is_floating_point else torch.get_default_dtype()


def _keep_from_states(states, mask, seq_sign, neutral, empty):
    """Shared tail of every ASR-style mask: keep = valid & (state == sign) [| state 0 with keep],
    then the empty-row fallback."""
    if neutral not in ("drop", "keep"):
        raise ValueError(f"neutral must be 'drop' or 'keep', got {neutral!r}")
    if empty not in ("full", "none"):
        raise ValueError(f"empty must be 'full' or 'none', got {empty!r}")
    B = len(mask)
    out = []
    for b in range(B):
        sign = int(seq_sign[b])
        assert sign in (-1, 1), "loop reference: seq_sign must be -1 / +1"
        row = []
        for t in range(len(mask[b])):
            keep = False
            if mask[b][t]:
                s = states[b][t]
                if s == sign:
                    keep = True
                elif s == 0 and neutral == "keep":
                    keep = True
            row.append(keep)
        n_b = sum(1 for v in mask[b] if v)
        if empty == "full" and n_b > 0 and not any(row):
            row = [bool(v) for v in mask[b]]
        out.append(row)
    return out


def _bool_tensor(rows: list[list[bool]], B: int, T: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.bool).reshape(B, T)


def _long_tensor(rows: list[list[int]], B: int, T: int) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.long).reshape(B, T)


# --------------------------------------------------------------------------------------------
# section 1: ASR
# --------------------------------------------------------------------------------------------


def resolve_baseline(rewards: torch.Tensor, mask: torch.Tensor, baseline) -> torch.Tensor:
    """Baseline per row, shape (B,), float64.

    ``"batch_mean"``: mean of all valid tokens of the batch (0.0 if there are none);
    ``"sequence_mean"``: mean of the row's valid tokens (0.0 for an empty row);
    ``"zero"``: 0.0; a float: that float for every row. A (B,) tensor is passed through.
    """
    r = _as_lists(rewards)
    m = _as_lists(mask)
    B = len(r)
    if isinstance(baseline, torch.Tensor):
        vals = [float(v) for v in _as_lists(baseline.reshape(-1))]
        assert len(vals) == B
    elif isinstance(baseline, str):
        if baseline == "batch_mean":
            total, count = 0.0, 0
            for b in range(B):
                for t in range(len(r[b])):
                    if m[b][t]:
                        total += float(r[b][t])
                        count += 1
            mean = total / count if count > 0 else 0.0
            vals = [mean] * B
        elif baseline == "sequence_mean":
            vals = []
            for b in range(B):
                total, count = 0.0, 0
                for t in range(len(r[b])):
                    if m[b][t]:
                        total += float(r[b][t])
                        count += 1
                vals.append(total / count if count > 0 else 0.0)
        elif baseline == "zero":
            vals = [0.0] * B
        else:
            raise ValueError(f"unknown baseline {baseline!r}")
    elif isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        vals = [float(baseline)] * B
    else:
        raise ValueError(f"unknown baseline {baseline!r}")
    return torch.tensor(vals, dtype=torch.float64).reshape(B)


def hysteresis_states(rewards: torch.Tensor, mask: torch.Tensor, baseline, delta: float) -> torch.Tensor:
    """Schmitt trigger: s_t = +1 if r_t > b + d, -1 if r_t < b - d, else s_{t-1}; s_{-1} = 0;
    0 at masked positions."""
    r = _as_lists(rewards)
    m = _as_lists(mask)
    B = len(r)
    T = rewards.shape[1]
    _row_lengths(m)
    if isinstance(baseline, torch.Tensor):
        base = [float(v) for v in _as_lists(baseline.reshape(-1))]
    else:
        base = [float(baseline)] * B
    d = float(delta)
    out = []
    for b in range(B):
        prev = 0
        row = []
        for t in range(T):
            if not m[b][t]:
                row.append(0)
                continue
            x = float(r[b][t])
            if x > base[b] + d:
                s = 1
            elif x < base[b] - d:
                s = -1
            else:
                s = prev
            row.append(s)
            prev = s
        out.append(row)
    return _long_tensor(out, B, T)


def segment_ids_from_states(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Maximal runs of equal state among valid tokens, numbered 0.. in order; -1 at padding."""
    s = _as_lists(states)
    m = _as_lists(mask)
    B = len(s)
    T = states.shape[1]
    _row_lengths(m)
    out = []
    for b in range(B):
        row = []
        seg = -1
        prev_state = None
        for t in range(T):
            if not m[b][t]:
                row.append(-1)
                continue
            if prev_state is None or int(s[b][t]) != prev_state:
                seg += 1
            prev_state = int(s[b][t])
            row.append(seg)
        out.append(row)
    return _long_tensor(out, B, T)


def asr_mask(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    seq_sign: torch.Tensor,
    *,
    baseline="batch_mean",
    delta: float = 0.0,
    neutral: str = "drop",
    empty: str = "full",
) -> torch.Tensor:
    """m_t = mask_t and s_t == sigma (state 0 also kept with neutral="keep"); empty="full" gives a
    row (n_b > 0) with nothing kept its full response mask."""
    B, T = rewards.shape
    base = resolve_baseline(rewards, mask, baseline)
    states = _as_lists(hysteresis_states(rewards, mask, base, delta))
    keep = _keep_from_states(states, _as_lists(mask), _as_lists(seq_sign.reshape(-1)), neutral, empty)
    return _bool_tensor(keep, B, T)


def tokenwise_mask(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    seq_sign: torch.Tensor,
    *,
    baseline="batch_mean",
    neutral: str = "drop",
    empty: str = "full",
) -> torch.Tensor:
    """Token-wise baseline: state_t = sign(r_t - b) with r_t == b giving 0 (no inheritance)."""
    B, T = rewards.shape
    base = [float(v) for v in _as_lists(resolve_baseline(rewards, mask, baseline))]
    r = _as_lists(rewards)
    m = _as_lists(mask)
    _row_lengths(m)
    states = []
    for b in range(B):
        row = []
        for t in range(T):
            row.append(_sign(float(r[b][t]) - base[b]) if m[b][t] else 0)
        states.append(row)
    keep = _keep_from_states(states, m, _as_lists(seq_sign.reshape(-1)), neutral, empty)
    return _bool_tensor(keep, B, T)


def step_segment_ids(is_boundary: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token 0 starts segment 0; token t >= 1 starts a new segment iff is_boundary[t-1]
    (a segment ends after a punctuation / newline token); -1 at padding."""
    f = _as_lists(is_boundary)
    m = _as_lists(mask)
    B = len(m)
    T = mask.shape[1]
    _row_lengths(m)
    out = []
    for b in range(B):
        row = []
        seg = -1
        for t in range(T):
            if not m[b][t]:
                row.append(-1)
                continue
            if t == 0:
                seg = 0
            elif f[b][t - 1]:
                seg += 1
            row.append(seg)
        out.append(row)
    return _long_tensor(out, B, T)


def stepwise_mask(
    rewards: torch.Tensor,
    mask: torch.Tensor,
    is_boundary: torch.Tensor,
    seq_sign: torch.Tensor,
    *,
    baseline="batch_mean",
    neutral: str = "drop",
    empty: str = "full",
) -> torch.Tensor:
    """Step-wise baseline: a step segment's state is sign(mean reward of the segment - b_row)
    (0 on an exact tie); the segment's tokens get that state; then as asr_mask."""
    B, T = rewards.shape
    base = [float(v) for v in _as_lists(resolve_baseline(rewards, mask, baseline))]
    ids = _as_lists(step_segment_ids(is_boundary, mask))
    r = _as_lists(rewards)
    m = _as_lists(mask)
    states = []
    for b in range(B):
        sums: dict[int, float] = {}
        counts: dict[int, int] = {}
        for t in range(T):
            k = ids[b][t]
            if k >= 0:
                sums[k] = sums.get(k, 0.0) + float(r[b][t])
                counts[k] = counts.get(k, 0) + 1
        seg_state = {k: _sign(sums[k] / counts[k] - base[b]) for k in sums}
        row = []
        for t in range(T):
            k = ids[b][t]
            row.append(seg_state[k] if k >= 0 else 0)
        states.append(row)
    keep = _keep_from_states(states, m, _as_lists(seq_sign.reshape(-1)), neutral, empty)
    return _bool_tensor(keep, B, T)


# --------------------------------------------------------------------------------------------
# section 2: segment reward model
# --------------------------------------------------------------------------------------------


def entropy_segment_ids(entropy: torch.Tensor, mask: torch.Tensor, threshold: float) -> torch.Tensor:
    """Dense (0 <= c < inf): tokens 0..n_b-2 are segmented, EOS (token n_b-1) gets -1; token 0
    starts segment 0, token t (1 <= t <= n_b-2) starts a new one iff entropy[t] > c (strict).
    Bandit (c = inf): one segment with all n_b tokens, EOS included. n_b = 1: dense -> no
    segment, bandit -> one. n_b = 0: no segment. Padding -1."""
    e = _as_lists(entropy)
    m = _as_lists(mask)
    B = len(m)
    T = mask.shape[1]
    lengths = _row_lengths(m)
    c = float(threshold)
    bandit = math.isinf(c) and c > 0
    out = []
    for b in range(B):
        n = lengths[b]
        row = [-1] * T
        if bandit:
            for t in range(n):
                row[t] = 0
        else:
            seg = -1
            for t in range(0, n - 1):  # EOS (t = n - 1) belongs to no segment
                if t == 0:
                    seg = 0
                elif float(e[b][t]) > c:
                    seg += 1
                row[t] = seg
        out.append(row)
    return _long_tensor(out, B, T)


def segment_end_values(values: torch.Tensor, segment_ids: torch.Tensor):
    """(B, K_max) value at each segment's last token and (B, K_max) validity; K_max is the
    largest number of segments of any row (0 if none); invalid slots hold 0 / False."""
    v = _as_lists(values)
    ids = _as_lists(segment_ids)
    B = len(ids)
    T = segment_ids.shape[1]
    per_row_k = []
    for b in range(B):
        seen = set()
        for t in range(T):
            if ids[b][t] >= 0:
                seen.add(ids[b][t])
        assert seen == set(range(len(seen))), "loop reference: segment ids must be 0..K_b-1"
        per_row_k.append(len(seen))
    K_max = max(per_row_k) if per_row_k else 0
    vals = [[0.0] * K_max for _ in range(B)]
    valid = [[False] * K_max for _ in range(B)]
    for b in range(B):
        for t in range(T):  # later tokens overwrite earlier ones: the last token wins
            k = ids[b][t]
            if k >= 0:
                vals[b][k] = float(v[b][t])
                valid[b][k] = True
    out_v = torch.tensor(vals, dtype=_float_dtype(values)).reshape(B, K_max)
    out_m = torch.tensor(valid, dtype=torch.bool).reshape(B, K_max)
    return out_v, out_m


def _coef_get(coef, name: str) -> float:
    if isinstance(coef, Mapping):
        return float(coef[name])
    return float(getattr(coef, name))


def location_normalize(seg_rewards: torch.Tensor, seg_valid: torch.Tensor, coef, sigma_floor: float = 1e-2) -> torch.Tensor:
    """r_hat_k = (r_k - mu(p_k)) / sigma(p_k), p_k = k / K_b (k 1-based, K_b = number of valid
    slots of row b), mu(p) = a_mu ln(p + 1e-10) + b_mu, sigma(p) = max(a_sigma ln(p + 1e-10)
    + b_sigma, sigma_floor). Invalid slots are 0."""
    r = _as_lists(seg_rewards)
    ok = _as_lists(seg_valid)
    B = len(ok)
    K = seg_valid.shape[1]
    a_mu, b_mu = _coef_get(coef, "a_mu"), _coef_get(coef, "b_mu")
    a_sg, b_sg = _coef_get(coef, "a_sigma"), _coef_get(coef, "b_sigma")
    out = []
    for b in range(B):
        K_b = sum(1 for x in ok[b] if x)
        for j in range(K):
            assert bool(ok[b][j]) == (j < K_b), "loop reference: valid slots must be a prefix"
        row = []
        for j in range(K):
            if not ok[b][j]:
                row.append(0.0)
                continue
            p = (j + 1) / K_b
            lp = math.log(p + 1e-10)
            mu = a_mu * lp + b_mu
            sigma = max(a_sg * lp + b_sg, float(sigma_floor))
            row.append((float(r[b][j]) - mu) / sigma)
        out.append(row)
    return torch.tensor(out, dtype=_float_dtype(seg_rewards)).reshape(B, K)


def spread_segment_rewards(seg_rewards: torch.Tensor, segment_ids: torch.Tensor, mode: str = "even") -> torch.Tensor:
    """"even": every token of segment k gets r_k / L_k; "end": r_k on its last token only;
    "repeat": r_k on every token. Tokens with id -1 get 0."""
    if mode not in ("even", "end", "repeat"):
        raise ValueError(f"unknown mode {mode!r}")
    r = _as_lists(seg_rewards)
    ids = _as_lists(segment_ids)
    B = len(ids)
    T = segment_ids.shape[1]
    out = []
    for b in range(B):
        length: dict[int, int] = {}
        last: dict[int, int] = {}
        for t in range(T):
            k = ids[b][t]
            if k >= 0:
                length[k] = length.get(k, 0) + 1
                last[k] = t
        row = []
        for t in range(T):
            k = ids[b][t]
            if k < 0:
                row.append(0.0)
            elif mode == "even":
                row.append(float(r[b][k]) / length[k])
            elif mode == "end":
                row.append(float(r[b][k]) if last[k] == t else 0.0)
            else:
                row.append(float(r[b][k]))
        out.append(row)
    return torch.tensor(out, dtype=_float_dtype(seg_rewards)).reshape(B, T)


def fit_location_buckets(locations, rewards) -> tuple[list[float], list[float], list[float]]:
    """Buckets keyed by round(p, 3) (Python's round), sorted by key: (keys, means, population stds)."""
    locs = [float(x) for x in (locations.tolist() if hasattr(locations, "tolist") else locations)]
    rews = [float(x) for x in (rewards.tolist() if hasattr(rewards, "tolist") else rewards)]
    assert len(locs) == len(rews)
    buckets: dict[float, list[float]] = {}
    for p, r in zip(locs, rews):
        buckets.setdefault(round(p, 3), []).append(r)
    keys, means, stds = [], [], []
    for key in sorted(buckets):
        vals = buckets[key]
        mean = sum(vals) / len(vals)
        var = sum((v - mean) ** 2 for v in vals) / len(vals)  # population variance
        keys.append(key)
        means.append(mean)
        stds.append(math.sqrt(var))
    return keys, means, stds


def fit_location_normalizer(locations, rewards):
    """Bucket by round(p, 3); fit bucket means and bucket population stds against
    ln(p + 1e-10) with sklearn's HuberRegressor(epsilon=1.35), one point per bucket."""
    import numpy as np
    from sklearn.linear_model import HuberRegressor

    keys, means, stds = fit_location_buckets(locations, rewards)
    x = np.array([[math.log(k + 1e-10)] for k in keys], dtype=np.float64)
    mu_fit = HuberRegressor(epsilon=1.35).fit(x, np.array(means, dtype=np.float64))
    sg_fit = HuberRegressor(epsilon=1.35).fit(x, np.array(stds, dtype=np.float64))
    return SimpleNamespace(
        a_mu=float(mu_fit.coef_[0]),
        b_mu=float(mu_fit.intercept_),
        a_sigma=float(sg_fit.coef_[0]),
        b_sigma=float(sg_fit.intercept_),
    )
