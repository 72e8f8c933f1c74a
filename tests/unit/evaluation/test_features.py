"""weaktok.evaluation.features: the offline feature set on signals with known answers (a sine's pitch class,
centroid and zero-crossing rate, a burst train's onset rate, silence), no numba kernel on its path, and the
distribution metrics against closed forms (Fréchet distance of Gaussians) or constructed cases (same vs shifted
distributions, copies vs fresh draws, separable vs identical sets)."""

import sys

import numpy as np
import pytest

from weaktok.evaluation.features import (
    FEATURE_NAMES,
    clip_features,
    features,
    frechet_distance,
    kid,
    memorisation,
    nearest_distances,
    standardizer,
    two_sample_accuracy,
)

SR = 22050


def col(f, name):
    return f[..., FEATURE_NAMES.index(name)]


def sine(freq=441.0, seconds=2.0):
    t = np.arange(int(seconds * SR)) / SR
    return 0.5 * np.sin(2 * np.pi * freq * t)


def noise(seconds=2.0, seed=0):
    return 0.1 * np.random.default_rng(seed).normal(size=int(seconds * SR))


def bursts(rate=4.0, seconds=3.0):
    """Decaying noise bursts every 1/rate s, the first at half a period: rate * seconds onsets."""
    y = np.zeros(int(seconds * SR))
    burst = np.random.default_rng(1).normal(size=2000) * np.exp(-np.arange(2000) / 300)
    for k in range(int(rate * seconds)):
        start = int((k + 0.5) / rate * SR)
        y[start : start + 2000] += burst
    return y


# ----------------------------------------------------------------------------------------------------------
# clip features


def test_features_of_sine_noise_and_silence_are_finite_and_tell_them_apart():
    f = features([sine(), noise(), np.zeros(2 * SR), np.zeros(0), 1e-7 * noise()], SR)
    assert f.shape == (5, len(FEATURE_NAMES)) and len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert np.all(np.isfinite(f))
    s, w, z = f[0], f[1], f[2]
    # the sine: its pitch class, its frequency as centroid, 2 f / sr crossings per sample, tonal
    assert (
        np.argmax(
            s[
                [
                    FEATURE_NAMES.index(f"chroma_mean_{p}")
                    for p in ("C", "D", "E", "F", "G", "A", "B")
                ]
            ]
        )
        == 5
    )
    assert col(s, "centroid_mean") == pytest.approx(441.0, rel=0.03)
    assert col(s, "zcr_mean") == pytest.approx(2 * 441.0 / SR, rel=0.02)
    assert col(s, "rms_mean") == pytest.approx(0.5 / np.sqrt(2), rel=0.02)
    assert col(s, "flatness_mean") < 0.01
    # white noise: flat, bright, about half the samples change sign
    assert col(w, "flatness_mean") > 0.3 and col(w, "centroid_mean") > 4000
    assert col(w, "zcr_mean") == pytest.approx(0.5, abs=0.03)
    assert col(w, "rms_mean") == pytest.approx(0.1, rel=0.05)
    # silence: no energy, no onsets, flatness 1 (librosa's amin floor); the empty clip is scored as silence
    assert col(z, "rms_mean") == 0 and col(z, "onsets_per_s") == 0 and col(z, "centroid_mean") == 0
    assert col(z, "flatness_mean") == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(f[3], z, atol=1e-6)
    assert col(z, "mfcc_std_00") == 0  # frame statistics in float64: a constant has no spread
    assert col(f[4], "onsets_per_s") == 0  # below the -60 dBFS loudness gate
    assert col(f[4], "zcr_mean") > 0.3  # 1e-8-scale samples are above the 1e-10 zero threshold


def test_onset_rate_of_a_burst_train():
    assert col(clip_features(bursts(4.0, 3.0), SR), "onsets_per_s") == pytest.approx(4.0)
    assert col(clip_features(bursts(2.0, 3.0), SR), "onsets_per_s") == pytest.approx(2.0)


def test_zero_crossing_threshold_counts_tiny_samples_as_zero():
    f = clip_features(
        1e-12 * np.sign(noise()), SR
    )  # every sample +-1e-12: all "zero", none crosses
    assert col(f, "zcr_mean") == 0


def test_features_are_deterministic_and_batch_equals_single():
    waves = [sine(330.0, 1.0), noise(1.0, seed=3)]
    a, b = features(waves, SR), features(waves, SR)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a[1], clip_features(waves[1].astype(np.float32), SR))
    assert features([], SR).shape == (0, len(FEATURE_NAMES))
    with pytest.raises(ValueError):
        clip_features(np.array([0.0, np.nan] * 600), SR)


def test_no_numba_kernel_runs(monkeypatch):
    """Every numba object librosa holds is replaced by one that raises; the features still compute."""
    import librosa

    y = noise(1.0)
    expected = clip_features(y, SR)  # first, so that every librosa module it needs is imported

    def forbidden(*args, **kwargs):
        raise AssertionError("a librosa numba kernel ran")

    patched = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("librosa"):
            for attr, obj in list(vars(module).items()):
                if type(obj).__module__.startswith("numba"):
                    monkeypatch.setattr(module, attr, forbidden)
                    patched += 1
    assert patched >= 10  # the dispatchers, GUFuncs, DUFuncs and stencils
    with pytest.raises(
        AssertionError, match="numba kernel ran"
    ):  # the guard bites: librosa's own zcr is numba
        librosa.feature.zero_crossing_rate(y)
    np.testing.assert_array_equal(clip_features(y, SR), expected)


# ----------------------------------------------------------------------------------------------------------
# distances between sets


def test_frechet_distance_of_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    n, d = 20000, 4
    a = rng.normal(size=(n, d))
    assert abs(frechet_distance(a, a)) < 1e-6
    # equal covariances: FD = ||mu_a - mu_b||^2
    shifts = [0.5, 1.0, 2.0]
    fds = [frechet_distance(a, rng.normal(size=(n, d)) + np.array([s, 0, 0, 0])) for s in shifts]
    np.testing.assert_allclose(
        fds, np.square(shifts), rtol=0.05, atol=0.01
    )  # mean-estimate noise ~ 0.01 s
    # equal means, C_a = I, C_b = 4 I: FD = d (1 + 4 - 2 * 2) = d
    assert frechet_distance(a, 2.0 * rng.normal(size=(n, d))) == pytest.approx(d, rel=0.03)


def test_standardizer_z_scores_and_tolerates_constant_columns():
    ref = np.column_stack([np.arange(10.0) * 1000, np.full(10, 3.0)])
    mu, sd = standardizer(ref)
    z = (ref - mu) / sd
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z.std(0), [1.0, 0.0])


def test_kid_is_zero_for_one_distribution_and_positive_for_a_shift():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, same_sd = kid(a, b, subsets=20, seed=0)
    shifted, _ = kid(a, rng.normal(size=(300, 8)) + 0.5, subsets=20, seed=0)
    assert abs(same) < 0.02 and abs(same) < 2 * same_sd
    assert shifted > 0.5 and shifted > 20 * abs(same)
    assert kid(a, b, subsets=20, seed=0) == (same, same_sd)
    with pytest.raises(ValueError):
        kid(a[:5], b, subset_size=10)


def test_two_sample_accuracy():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(150, 6))
    gen = rng.normal(size=(250, 6))
    same = two_sample_accuracy(real, gen, seed=0)
    assert two_sample_accuracy(real, gen, seed=0) == same  # seeded subsampling and folds
    assert same["n_per_class"] == 150 and same["folds"] == 5
    assert 0.4 <= same["accuracy"] <= 0.6 and same["ci95"][0] <= 0.5 <= same["ci95"][1]
    apart = two_sample_accuracy(real, rng.normal(size=(150, 6)) + 1.5, seed=0)
    assert apart["accuracy"] > 0.9 and apart["ci95"][0] > 0.85 and apart["p_value"] < 1e-10
    small = two_sample_accuracy(real, real[:4] + 1.0)
    assert small["accuracy"] is None and "fewer than 5" in small["reason"]


def test_nearest_distances_known_answer():
    bank = np.array([[0.0, 0.0], [3.0, 4.0]])
    q = np.array([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]])
    np.testing.assert_allclose(nearest_distances(q, bank), [1.0, 0.0, 5.0])


def test_memorisation_flags_copies_and_not_fresh_draws():
    rng = np.random.default_rng(3)
    train, heldout = rng.normal(size=(400, 5)), rng.normal(size=(150, 5))
    copies = memorisation(train[:150] + 1e-3 * rng.normal(size=(150, 5)), train, heldout)
    assert copies["near_copy_fraction"] > 0.95 and copies["ratio"] < 0.05
    fresh = memorisation(rng.normal(size=(150, 5)), train, heldout)
    assert 0.8 < fresh["ratio"] < 1.25 and fresh["near_copy_fraction"] < 0.15
    assert fresh["threshold"] == copies["threshold"]  # from the held-out set alone
    # z-scored by the training set inside: a per-feature rescaling of all inputs changes nothing
    gen = rng.normal(size=(150, 5))
    scale = np.array([1.0, 10.0, 1e3, 0.1, 5.0])
    a, b = (
        memorisation(gen, train, heldout),
        memorisation(gen * scale, train * scale, heldout * scale),
    )
    assert (
        a["ratio"] == pytest.approx(b["ratio"])
        and a["near_copy_fraction"] == b["near_copy_fraction"]
    )
