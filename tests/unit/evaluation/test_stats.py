"""weaktok.evaluation.stats: bootstrap intervals that cover, relative errors that are exact, a sampled target that
widens the interval by the expected amount, NaN items dropped per term, a stratified seed pool that weighs seeds
equally, and determinism."""

import json

import numpy as np
import pytest

from weaktok.evaluation.stats import summarize, summarize_seeds, within


def test_ci_of_the_mean_covers_mu_at_its_nominal_rate_with_the_normal_width():
    # 200 independent repetitions at once: each column is one repetition's 40 draws from N(mu, 1)
    mu, n, reps = 1.5, 40, 200
    v = np.random.default_rng(7).normal(mu, 1.0, size=(n, reps))
    s = summarize(v, np.full(reps, mu), n_boot=1000, seed=0)
    ci = np.array(s["ci95"])  # (reps, 2)
    coverage = np.mean((ci[:, 0] <= mu) & (mu <= ci[:, 1]))
    assert 0.90 <= coverage <= 0.99, (
        coverage
    )  # ~0.93-0.95 expected (percentile intervals undercover slightly)
    width = np.median(ci[:, 1] - ci[:, 0])
    assert width == pytest.approx(
        2 * 1.96 / np.sqrt(n), rel=0.1
    )  # the normal-theory width for sd 1


def test_rel_err_is_exact_on_constant_data():
    v = np.tile([2.0, 3.0, 0.5], (25, 1))  # (25, 3)
    s = summarize(v, [1.0, 4.0, 0.5], n_boot=200)
    assert s["mean"] == [2.0, 3.0, 0.5]
    assert s["std"] == [0.0, 0.0, 0.0]
    assert s["n"] == 25
    assert s["rel_err"] == [1.0, -0.25, 0.0]
    assert s["ci95"] == [[2.0, 2.0], [3.0, 3.0], [0.5, 0.5]]
    assert s["rel_err_ci95"] == [[1.0, 1.0], [-0.25, -0.25], [0.0, 0.0]]
    # a constant target given as samples is the same fixed target
    t = summarize(v, np.tile([1.0, 4.0, 0.5], (10, 1)), n_boot=200)
    assert t["rel_err"] == s["rel_err"] and t["rel_err_ci95"] == s["rel_err_ci95"]


def test_target_samples_widen_rel_err_ci_by_their_own_sampling_noise():
    rng = np.random.default_rng(3)
    n = m = 200
    v = rng.normal(10.0, 1.0, size=(n, 2))
    t = rng.normal(10.0, 1.0, size=(m, 2))
    fixed = summarize(v, t.mean(0), n_boot=2000, seed=1)
    sampled = summarize(v, t, n_boot=2000, seed=1)
    assert fixed["target"] == pytest.approx(sampled["target"])
    assert fixed["rel_err"] == pytest.approx(sampled["rel_err"])
    w_fixed = np.diff(fixed["rel_err_ci95"], axis=1)[:, 0]
    w_sampled = np.diff(sampled["rel_err_ci95"], axis=1)[:, 0]
    # equal sizes and spreads: var(mean_v - mean_t) = 2 var(mean_v), so the width grows by sqrt(2)
    np.testing.assert_allclose(w_sampled / w_fixed, np.sqrt(2), rtol=0.12)
    # the mean's own interval does not depend on the target
    np.testing.assert_allclose(
        np.diff(fixed["ci95"], axis=1), np.diff(sampled["ci95"], axis=1), rtol=0.1
    )


def test_nan_items_are_dropped_per_term_and_n_is_reported_per_term():
    rng = np.random.default_rng(4)
    v = rng.normal(0.0, 1.0, size=(30, 3))
    v[[2, 5, 7], 1] = np.nan
    v[:, 2] = np.nan  # a term without any valid item
    s = summarize(v, [0.5, 0.5, 0.5], n_boot=500)
    assert s["n"] == [30, 27, 0]
    assert s["mean"][1] == pytest.approx(np.nanmean(v[:, 1]))
    assert s["std"][1] == pytest.approx(np.nanstd(v[:, 1]))
    lo, hi = s["ci95"][1]
    assert lo < s["mean"][1] < hi
    assert (
        s["mean"][2] is None
        and s["ci95"][2] == [None, None]
        and s["rel_err_ci95"][2] == [None, None]
    )
    json.dumps(s, allow_nan=False)  # JSON-ready: no NaN anywhere
    # without NaN, n is one int; a NaN in the target's samples is dropped too
    t = rng.normal(0.5, 1.0, size=(20, 3))
    t[0, 0] = np.nan
    s = summarize(v[:, :1], t[:, :1], n_boot=500)
    assert s["n"] == 30 and s["target"][0] == pytest.approx(np.nanmean(t[:, 0]))


def test_pooled_over_one_seed_is_summarize_and_seeds_weigh_equally():
    rng = np.random.default_rng(5)
    v = rng.normal(1.0, 1.0, size=(50, 4))
    one = summarize_seeds([v], np.ones(4), n_boot=500, seed=9)
    assert one["pooled"] == summarize(v, np.ones(4), n_boot=500, seed=9)
    assert (
        one["seeds"] == 1
        and one["sd_over_seeds"] is None
        and one["rel_err_over_seeds"]["sd"] is None
    )
    # three seeds of constant scores 1, 2, 3 with 10, 20, 30 items: equal weight gives 2 (item weight: 2.33)
    seeds = [np.full((10 * (i + 1), 2), float(i + 1)) for i in range(3)]
    s = summarize_seeds(seeds, [2.0, 4.0], n_boot=500)
    assert s["mean_over_seeds"] == [2.0, 2.0]
    assert s["sd_over_seeds"] == pytest.approx([1.0, 1.0])
    assert s["rel_err_over_seeds"]["mean"] == pytest.approx([0.0, -0.5])
    assert s["rel_err_over_seeds"]["sd"] == pytest.approx([0.5, 0.25])
    assert s["pooled"]["mean"] == [2.0, 2.0] and s["pooled"]["n"] == 60
    # stratified: items are resampled within seeds, so constant seeds give a point interval (a bootstrap over
    # the 60 pooled items would mix the seeds and give a wide one)
    assert s["pooled"]["ci95"] == [[2.0, 2.0], [2.0, 2.0]]
    assert s["pooled"]["rel_err_ci95"] == [[0.0, 0.0], [-0.5, -0.5]]


def test_bootstrap_is_deterministic_for_a_seed():
    v = np.random.default_rng(6).normal(size=(40, 2))
    t = np.random.default_rng(8).normal(size=(30, 2))
    assert summarize(v, t, n_boot=300, seed=2) == summarize(v, t, n_boot=300, seed=2)
    assert (
        summarize(v, t, n_boot=300, seed=2)["ci95"] != summarize(v, t, n_boot=300, seed=3)["ci95"]
    )
    a = summarize_seeds([v, v[:20] + 1], t, n_boot=300, seed=2)
    assert a == summarize_seeds([v, v[:20] + 1], t, n_boot=300, seed=2)


def test_within_goal():
    assert within([-0.1, 0.15], 0.15) is True
    assert within([-0.2, 0.1], 0.15) is False
    assert within([0.05, 0.16], 0.15) is False
    assert within([None, 0.1], 0.15) is False and within(None, 0.15) is False
    assert within([[-0.1, 0.1], [0.0, 0.3], [None, None]], 0.15) == [True, False, False]
