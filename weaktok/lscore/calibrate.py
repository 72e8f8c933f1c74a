"""Calibration of the differentiable L-Score against the exact one: correlations, raw pairs, scatter plots.

    set_ = calibration_set(sr=22050, n_synthetic=20, seed=0)   # [(name, y)]: real sonic-pi loops + synthetic
    res = calibrate([y for _, y in set_], sr=22050)              # {term: {pearson, spearman, bias, exact, diff}}
    plot_calibration(res, "calibration.png")

The differentiable side sees what it will see in training: the model front end (log1p magnitude STFT,
n_fft 1024, hop 256, ``weaktok.audio.SpecFrontEnd``) turned back into power. The synthetic clips imitate the
project corpus (IDM-style loops composed from the sonic-pi one-shots: random tempo 80-180 BPM, irregular
placement, stutters, silences) plus click trains and chord sequences for controlled rhythm/structure variety.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from weaktok.audio import SONIC_PI_SAMPLES, SpecFrontEnd, load_audio
from weaktok.lscore.differentiable import differentiable_lscore
from weaktok.lscore.exact import LSCORE_NAMES, exact_lscore
from weaktok.lscore.spectral import DEFAULT_PARAMS, SurrogateParams
from weaktok.plots import pyplot

SAMPLES_DIR = SONIC_PI_SAMPLES  # the real loops the calibration reads


# ----------------------------------------------------------------------------------------------------------
# the calibration set


@functools.lru_cache(maxsize=4)
def _load_dir(pattern: str, sr: int) -> tuple[tuple[str, np.ndarray], ...]:
    return tuple((p.stem, load_audio(p, sr)) for p in sorted(SAMPLES_DIR.glob(pattern)))


def real_loops(sr: int = 22050, max_seconds: float = 8.0) -> list[tuple[str, np.ndarray]]:
    """The 17 real sonic-pi loops (``loop_*.flac``), mono at sr, cropped to max_seconds. [] if not installed."""
    return [(name, y[: int(max_seconds * sr)]) for name, y in _load_dir("loop_*.flac", sr)]


def _one_shots(sr: int) -> list[np.ndarray]:
    return [y for _, y in _load_dir("drum_*.flac", sr) + _load_dir("elec_*.flac", sr)]


def _place(out: np.ndarray, hit: np.ndarray, at: int, gain: float) -> None:
    if 0 <= at < len(out):
        n = min(len(hit), len(out) - at)
        out[at : at + n] += gain * hit[:n]


def click_train(
    rate: float, jitter_s: float, seconds: float, sr: int, rng: np.random.Generator
) -> np.ndarray:
    """Short noise clicks at `rate` per second; each inter-onset interval gets N(0, jitter_s) added."""
    y = np.zeros(int(seconds * sr), np.float32)
    click = (rng.standard_normal(64) * np.exp(-np.arange(64) / 8.0)).astype(np.float32)
    t = 0.05
    while t < seconds:
        _place(y, click, int(t * sr), 0.8)
        t += max(0.03, 1.0 / rate + rng.normal(0.0, jitter_s))
    return y


def chord_sequence(chords, seconds: float, sr: int, chord_s: float = 0.5) -> np.ndarray:
    """Sine triads, chord_s each, cycling through ``chords`` (a list of pitch-class triples, 0 = A3)."""
    n = int(chord_s * sr)
    t = np.arange(n) / sr
    env = np.minimum(1.0, np.minimum(t, chord_s - t) / 0.01)
    out = []
    for i in range(int(seconds / chord_s)):
        f = 220.0 * 2.0 ** (np.asarray(chords[i % len(chords)]) / 12.0)
        out.append((np.sin(2 * np.pi * f[:, None] * t).sum(0) * env / 3.0).astype(np.float32))
    return np.concatenate(out)


def random_chords(n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """n random triads of distinct pitch classes."""
    return [rng.choice(12, size=3, replace=False) for _ in range(n)]


def idm_loop(sr: int, rng: np.random.Generator) -> np.ndarray:
    """An IDM-style loop from sonic-pi one-shots: random tempo, irregular placement, stutters, silences."""
    hits = _one_shots(sr)
    seconds = rng.uniform(4.0, 8.0)
    y = np.zeros(int(seconds * sr), np.float32)
    step = 60.0 / rng.uniform(80, 180) / 4  # a 16th note
    kit = [hits[i] for i in rng.choice(len(hits), size=rng.integers(2, 6), replace=False)]
    density, jitter = rng.uniform(0.2, 0.9), rng.choice([0.0, 0.1, 0.3]) * step
    t = 0.0
    while t < seconds:
        r = rng.random()
        if r < 0.06:  # a silence of 1-4 beats
            t += step * 4 * rng.integers(1, 5)
            continue
        if rng.random() < density:
            hit, gain = kit[rng.integers(len(kit))], rng.uniform(0.3, 1.0)
            if r > 0.93:  # a stutter: the hit retriggered at 1/32 or 1/64
                sub = step / rng.choice([2, 4])
                for k in range(rng.integers(3, 9)):
                    _place(y, hit[: int(sub * sr)], int((t + k * sub) * sr), gain)
            else:
                _place(y, hit, int((t + rng.normal(0.0, jitter) if jitter else t) * sr), gain)
        t += step * rng.choice([1, 1, 1, 2, 3])
    return (0.9 * y / max(1e-6, np.abs(y).max())).astype(np.float32)


def synthetic_set(n: int, sr: int = 22050, seed: int = 0) -> list[tuple[str, np.ndarray]]:
    """n synthetic clips, a fixed mix: ~60 % IDM loops, click trains, chord sequences, noise/silence cases."""
    rng = np.random.default_rng(seed)
    have_samples = bool(_one_shots(sr))
    out = []
    for i in range(n):
        kind = i % 10
        seconds = float(rng.uniform(4.0, 8.0))
        if kind < 6 and have_samples:
            out.append((f"idm_{i}", idm_loop(sr, rng)))
        elif kind in (6, 7) or (kind < 6 and not have_samples):
            rate, jit = float(rng.uniform(1.5, 10.0)), float(rng.choice([0.0, 0.02, 0.06]))
            out.append((f"clicks_{rate:.1f}_{jit}_{i}", click_train(rate, jit, seconds, sr, rng)))
        elif kind == 8:
            chords = random_chords(
                int(rng.choice([1, 2, 4, 16])), rng
            )  # repeated pattern ... all different
            out.append((f"chords_{len(chords)}_{i}", chord_sequence(chords, seconds, sr)))
        else:  # half-silent clicks: silences inside a loop
            y = click_train(float(rng.uniform(2, 8)), 0.01, seconds, sr, rng)
            y[int(seconds * sr * 0.4) : int(seconds * sr * 0.7)] = 0.0
            out.append((f"gapped_{i}", y))
    return out


def calibration_set(
    sr: int = 22050, n_synthetic: int = 20, seed: int = 0
) -> list[tuple[str, np.ndarray]]:
    """Real loops (if installed) + n_synthetic synthetic clips."""
    return real_loops(sr) + synthetic_set(n_synthetic, sr, seed)


# ----------------------------------------------------------------------------------------------------------
# correlations


@functools.lru_cache(maxsize=4)
def _front_end(sr: int, n_fft: int, hop: int) -> SpecFrontEnd:
    return SpecFrontEnd(sample_rate=sr, n_fft=n_fft, hop_length=hop)


def front_end_power(y: np.ndarray, sr: int, n_fft: int = 1024, hop: int = 256) -> torch.Tensor:
    """y (N,) -> (1, F, T) power from the model front end (log1p magnitude, then back to |X|^2)."""
    fe = _front_end(sr, n_fft, hop)
    with torch.no_grad():
        return fe.power(fe(torch.as_tensor(y, dtype=torch.float32)))


def calibrate(
    waveforms: list[np.ndarray],
    sr: int,
    params: SurrogateParams = DEFAULT_PARAMS,
    n_fft: int = 1024,
    hop: int = 256,
) -> dict:
    """Exact vs differentiable L-Score on each waveform -> {term: {pearson, spearman, bias, exact, diff}}.

    ``exact`` and ``diff`` are the raw per-clip values (lists, same order as ``waveforms``). ``bias`` is the
    relative offset of the means, mean(diff) / mean(exact) - 1: correlations cannot show an offset, and an offset
    is what a distribution loss matching surrogate outputs to exact targets would learn.
    """
    ex, di = [], []
    for y in waveforms:
        ex.append(exact_lscore(y, sr))
        with torch.no_grad():
            di.append(
                differentiable_lscore(
                    front_end_power(y, sr, n_fft, hop), sr, n_fft, hop, params=params
                )[0]
                .double()
                .numpy()
            )
    ex, di = np.array(ex), np.array(di)  # (N, 4)
    out = {}
    for k, name in enumerate(LSCORE_NAMES):
        a, b = ex[:, k], di[:, k]
        const = np.ptp(a) == 0 or np.ptp(b) == 0
        out[name] = {
            "pearson": float("nan") if const else float(stats.pearsonr(a, b)[0]),
            "spearman": float("nan") if const else float(stats.spearmanr(a, b)[0]),
            "bias": float(b.mean() / a.mean() - 1) if a.mean() != 0 else float("nan"),
            "exact": a.tolist(),
            "diff": b.tolist(),
        }
    return out


def plot_calibration(result: dict, path) -> Path:
    """One scatter per term (exact on x, differentiable on y) into a PNG; returns the path."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(LSCORE_NAMES), figsize=(4 * len(LSCORE_NAMES), 4))
    for ax, name in zip(axes, LSCORE_NAMES):
        r = result[name]
        ax.scatter(r["exact"], r["diff"], s=12, alpha=0.7)
        ax.set_title(
            f"{name}\npearson {r['pearson']:.2f}  spearman {r['spearman']:.2f}  bias {r['bias']:+.0%}"
        )
        ax.set_xlabel("exact (librosa)")
        ax.set_ylabel("differentiable")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
