"""Bootstrap confidence intervals for evaluation tables: how sure is a mean, and its relative error to a target?

    s = summarize(values, target)                     # values (n, k) per-item scores; target (k,) or (m, k)
    s["mean"], s["ci95"], s["rel_err"], s["rel_err_ci95"]
    within(s["rel_err_ci95"], 0.15)                   # [bool] * k: is each interval inside +-15 %?
    p = summarize_seeds([v_seed0, v_seed1, ...], target)   # several training seeds

Why: Table 1 compares per-term means of a few hundred generated clips with the training split's mean L-Score. A
point estimate alone cannot say whether "-12 %" is inside a +-15 % goal or only happened to land there; the
interval does. Every interval is a percentile bootstrap of the mean over items (B = ``n_boot`` replicates).

The relative error is (mean - tmean) / |tmean| (|tmean| floored at 1e-9). When the target is itself a sample of
the reference (``target`` (m, k): per-item scores of the training split), its sampling noise is part of the
comparison: each bootstrap replicate resamples the target's items too, independently of the evaluated items, so
``rel_err_ci95`` is wider than with a fixed target (``target`` (k,)).

Several training seeds (``summarize_seeds``): the spread of the per-seed means (``sd_over_seeds``, ddof 1) is the
training-seed variance that a single run cannot show. ``pooled`` is a stratified bootstrap: each replicate
resamples items within every seed, then averages the seed means with equal weight (the point estimate is that
equal-weight average, not the mean of all items), so a seed with more items does not count more. With one
seed, ``pooled`` is exactly ``summarize`` (same seed, same replicates).

Missing scores: an item whose score is NaN for a term is dropped for that term only (its other terms count).
``n`` is then a list of per-term item counts instead of one int; a term with no valid item reports None
everywhere (non-finite numbers become None throughout: the dicts are JSON-ready). Inf is not treated as
missing: a score of Inf is a bug upstream and shows up as such. ``std`` is over items with ddof 0, as in
Table 1 (``weaktok.evaluation.table``). The interval keys are called ``ci95`` whatever ``level`` is (recorded as
``level``).

The resampling itself is ``scipy.stats.bootstrap`` (vectorised: one (B, n) index matrix per sample, no Python
loop over replicates); stratification and the target's resampling are its multi-sample mode, in which every
sample is resampled independently. Each term draws from its own stream, ``default_rng([seed, term])``, so a
term's interval does not change when other terms are added, dropped or have missing items.
"""

from __future__ import annotations

import numpy as np
from scipy.stats import bootstrap


def _rel(mean, tmean):
    """Signed relative error (mean - tmean) / |tmean|, |tmean| floored at 1e-9."""
    return (mean - tmean) / np.maximum(np.abs(tmean), 1e-9)


def _json(x):
    """Array or scalar -> nested lists of floats, non-finite -> None."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 0:
        return float(x) if np.isfinite(x) else None
    return [_json(v) for v in x]


def _items(values) -> np.ndarray:
    """(n, k) or (n,) scores -> (n, k) float64."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"values must be (n, k), got shape {v.shape}")
    return v


def _target(target, k: int) -> tuple[np.ndarray, np.ndarray | None]:
    """target (k,) fixed or (m, k) samples -> (tmean (k,), samples (m, k) or None)."""
    t = np.asarray(target, dtype=np.float64)
    if t.ndim == 1 and t.shape[0] == k:
        return t, None
    if t.ndim == 2 and t.shape[1] == k:
        valid = ~np.isnan(t)
        count = valid.sum(0)
        tmean = np.where(valid, t, 0.0).sum(0) / np.maximum(count, 1)
        return np.where(count > 0, tmean, np.nan), t
    raise ValueError(f"target must be ({k},) or (m, {k}), got shape {t.shape}")


def _term_ci(
    groups: list[np.ndarray],
    tsamples: np.ndarray | None,
    tfixed: float,
    n_boot: int,
    level: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One term: groups [(n_i,)] of valid item scores (non-empty), target samples (m,) or None (then ``tfixed``)
    -> (2, 2) [[mean lo, hi], [rel_err lo, hi]] from the same replicates."""
    G = len(groups)

    def statistic(
        *samples, axis=-1
    ):  # samples: G groups then, if sampled, the target; each (..., n_i)
        mean = sum(np.mean(s, axis=axis) for s in samples[:G]) / G  # equal weight per group
        tmean = np.mean(samples[G], axis=axis) if tsamples is not None else tfixed
        return np.stack([mean, _rel(mean, tmean)])

    data = list(groups) + ([tsamples] if tsamples is not None else [])
    # scipy refuses a sample of one item; its bootstrap is that item every time, which [x, x] reproduces exactly
    data = [np.repeat(d, 2) if d.size == 1 else d for d in data]
    res = bootstrap(
        data,
        statistic,
        n_resamples=n_boot,
        method="percentile",
        confidence_level=level,
        vectorized=True,
        rng=rng,
    )
    return np.stack([res.confidence_interval.low, res.confidence_interval.high], axis=1)


def _summary(groups: list[np.ndarray], target, n_boot: int, seed: int, level: float) -> dict:
    """Stratified bootstrap over groups [(n_i, k)] (one group: a plain bootstrap); see the module docstring."""
    groups = [_items(g) for g in groups]
    k = groups[0].shape[1]
    if any(g.shape[1] != k for g in groups):
        raise ValueError(f"every set must have the same {k} terms, got {[g.shape for g in groups]}")
    tmean, tsamp = _target(target, k)
    rows = sum(len(g) for g in groups)
    mean, std, n = np.full(k, np.nan), np.full(k, np.nan), np.zeros(k, dtype=int)
    ci = np.full((k, 2, 2), np.nan)  # term, (mean, rel_err), (lo, hi)
    for j in range(k):
        rng = np.random.default_rng(
            [seed, j]
        )  # a stream per term: a term's interval ignores the other terms
        cols = [g[:, j][~np.isnan(g[:, j])] for g in groups]
        cols = [
            c for c in cols if c.size
        ]  # a seed with no valid item for this term drops out of it
        n[j] = sum(c.size for c in cols)
        if not cols:
            continue
        mean[j] = np.mean([c.mean() for c in cols])
        std[j] = np.concatenate(cols).std()
        tj = None if tsamp is None else tsamp[:, j][~np.isnan(tsamp[:, j])]
        if tj is not None and tj.size == 0:  # no reference for this term: the mean's interval only
            ci[j, 0] = _term_ci(cols, None, 0.0, n_boot, level, rng)[0]
            continue
        ci[j] = _term_ci(cols, tj, float(tmean[j]), n_boot, level, rng)
    return {
        "mean": _json(mean),
        "ci95": _json(ci[:, 0]),
        "std": _json(std),
        "n": int(rows) if np.all(n == rows) else n.tolist(),
        "rel_err": _json(_rel(mean, tmean)),
        "rel_err_ci95": _json(ci[:, 1]),
        "target": _json(tmean),
        "level": level,
        "n_boot": n_boot,
    }


def summarize(values, target, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """values (n, k) per-item scores of one set; target (k,) fixed or (m, k) per-item reference samples.

    -> {"mean": (k,), "ci95": k x [lo, hi], "std": (k,), "n": int or (k,) if any NaN, "rel_err": (k,),
    "rel_err_ci95": k x [lo, hi], "target": (k,) target means, "level", "n_boot"}, all JSON-ready lists.
    """
    return _summary([values], target, n_boot, seed, level)


def summarize_seeds(
    per_seed_values: list, target, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict:
    """Runs of different training seeds, each (n_i, k) -> spread over seeds and a stratified pooled bootstrap.

    -> {"seeds": S, "per_seed_mean": S x (k,), "mean_over_seeds": (k,), "sd_over_seeds": (k,) or None with one
    seed, "rel_err_over_seeds": {"mean": (k,), "sd": (k,) or None}, "pooled": summarize-like dict}.
    """
    groups = [_items(v) for v in per_seed_values]
    if not groups:
        raise ValueError("summarize_seeds needs at least one seed")
    pooled = _summary(groups, target, n_boot, seed, level)
    tmean = np.array([np.nan if t is None else t for t in pooled["target"]])
    valid = [~np.isnan(g) for g in groups]
    counts = np.stack([m.sum(0) for m in valid])  # (S, k)
    seed_means = np.stack([np.where(m, g, 0.0).sum(0) for g, m in zip(groups, valid)]) / np.maximum(
        counts, 1
    )
    seed_means[counts == 0] = np.nan  # (S, k)
    seed_rel = _rel(seed_means, tmean)  # (S, k)

    def over_seeds(
        x,
    ):  # (S, k) -> mean (k,), sd (k,) with ddof 1 (None with one seed) over seeds with data
        ok = ~np.isnan(x)
        m = ok.sum(0)
        mean = np.where(ok, x, 0.0).sum(0) / np.maximum(m, 1)
        var = np.where(ok, (x - mean) ** 2, 0.0).sum(0) / np.maximum(m - 1, 1)
        sd = np.where(m > 1, np.sqrt(var), np.nan)
        return _json(np.where(m > 0, mean, np.nan)), (None if len(x) == 1 else _json(sd))

    mean_over, sd_over = over_seeds(seed_means)
    rel_mean, rel_sd = over_seeds(seed_rel)
    return {
        "seeds": len(groups),
        "per_seed_mean": _json(seed_means),
        "mean_over_seeds": mean_over,
        "sd_over_seeds": sd_over,
        "rel_err_over_seeds": {"mean": rel_mean, "sd": rel_sd},
        "pooled": pooled,
    }


def within(ci, goal: float):
    """Whether an interval [lo, hi] lies within [-goal, +goal] (a missing bound: False). Given a list of
    intervals (e.g. ``summary["rel_err_ci95"]``), a list of bools."""
    if ci is None:
        return False
    if len(ci) and (ci[0] is None or np.ndim(ci[0]) == 0):
        lo, hi = ci
        return lo is not None and hi is not None and -goal <= lo and hi <= goal
    return [within(c, goal) for c in ci]
