"""Exact L-Score (weaktok/lscore/exact.py): known signals, degenerate inputs, real loops, librosa fidelity."""

import numpy as np
import pytest

from weaktok.lscore import exact_lscore, onset_times
from weaktok.lscore.calibrate import SAMPLES_DIR, chord_sequence, random_chords, real_loops

SR = 22050
REPEATED = [[3, 7, 10], [0, 3, 7]]  # C major, A minor (sharing two notes), repeated


def clicks_at(times, seconds, gain=0.8):
    """Single-sample clicks at the given times (s)."""
    y = np.zeros(int(seconds * SR), np.float32)
    y[(np.asarray(times) * SR).astype(int)] = gain
    return y


@pytest.mark.parametrize("rate", [2.0, 4.0, 8.0])
def test_click_train_density_and_regularity(rate):
    y = clicks_at(np.arange(0.1, 6.0, 1.0 / rate), 6.0)
    L = exact_lscore(y, SR)
    truth = len(np.arange(0.1, 6.0, 1.0 / rate)) / 6.0
    assert abs(L[1] - truth) < 0.5
    assert L[2] < 0.015  # only frame quantisation (hop = 23 ms) is left
    assert L[0] > 0.9  # a click is spectrally flat


def test_jittered_clicks_irregularity_matches_jitter():
    rng = np.random.default_rng(0)
    ioi = 0.3 + rng.normal(0.0, 0.06, size=24)
    y = clicks_at(0.1 + np.concatenate([[0.0], np.cumsum(ioi)]), 8.0)
    truth = np.std(ioi)
    L = exact_lscore(y, SR)
    assert abs(L[2] - truth) < 0.25 * truth + 0.01, (L[2], truth)
    assert abs(L[1] - 25 / 8.0) < 0.5


def test_noise_and_sine_timbral():
    rng = np.random.default_rng(0)
    assert exact_lscore(0.3 * rng.standard_normal(4 * SR).astype(np.float32), SR)[0] > 0.9
    sine = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(4 * SR) / SR).astype(np.float32)
    assert exact_lscore(sine, SR)[0] < 0.2


def test_structural_repeated_lower_than_random():
    rng = np.random.default_rng(1)
    rep = exact_lscore(chord_sequence(REPEATED, 6.0, SR), SR)[3]
    rnd = exact_lscore(chord_sequence(random_chords(12, rng), 6.0, SR), SR)[3]
    assert 0.0 <= rep < rnd <= 1.0
    assert rnd - rep > 0.1


def test_silence_is_all_zero():
    assert np.array_equal(exact_lscore(np.zeros(3 * SR, np.float32), SR), np.zeros(4))
    assert np.array_equal(exact_lscore(np.zeros(0), SR), np.zeros(4))


def test_quiet_clip_has_no_onsets():
    y = clicks_at(np.arange(0.1, 4.0, 0.25), 4.0, gain=1e-4)  # peak frame RMS far below -60 dBFS
    assert len(onset_times(y, SR)) == 0
    assert exact_lscore(y, SR)[1] == 0.0


@pytest.mark.parametrize(
    "y",
    [
        np.full(2 * SR, 0.5, np.float32),  # DC
        clicks_at([1.0], 2.0),  # a single click
        np.random.default_rng(0).standard_normal(100).astype(np.float32),  # shorter than one frame
        np.ones(1, np.float32),  # one sample
    ],
)
def test_degenerate_inputs_are_finite(y):
    L = exact_lscore(y, SR)
    assert L.shape == (4,) and L.dtype == np.float64 and np.all(np.isfinite(L))
    assert 0.0 <= L[0] <= 1.0 and 0.0 <= L[3] <= 1.0 and L[1] >= 0 and L[2] >= 0


def test_non_finite_raises():
    y = np.zeros(SR, np.float32)
    y[10] = np.nan
    with pytest.raises(ValueError):
        exact_lscore(y, SR)


@pytest.mark.skipif(not SAMPLES_DIR.exists(), reason="sonic-pi samples not installed")
def test_real_loops_plausible_and_onsets_match_librosa(librosa_reference):
    loops = real_loops(SR)
    assert len(loops) == 17
    L = np.array([exact_lscore(y, SR) for _, y in loops])
    assert np.all((L[:, 0] > 0.1) & (L[:, 0] < 0.9))
    assert np.all((L[:, 1] > 2.0) & (L[:, 1] < 10.0))
    assert np.all((L[:, 2] >= 0.0) & (L[:, 2] < 0.5))
    assert np.all((L[:, 3] > 0.0) & (L[:, 3] < 0.6))
    for _, y in loops[:4]:  # sharing the STFT does not change librosa's answer
        ref = librosa_reference.onset.onset_detect(y=y, sr=SR, hop_length=512, units="time")
        np.testing.assert_array_equal(onset_times(y, SR), ref)
