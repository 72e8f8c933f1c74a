"""A fixed, offline audio feature set and the distribution metrics computed on it: how close are generated clips
to real audio as a whole, and are they copies of the training set?

    F = features(waves, sr)                    # (n, d) float64, one row per clip, columns FEATURE_NAMES
    mu, sd = standardizer(F_real)              # z-score every set by one reference set before any distance
    fd = frechet_distance((F_real - mu) / sd, (F_gen - mu) / sd)
    kid_mean, kid_std = kid(Zr, Zg)
    memorisation(F_gen, F_train, F_heldout)    # {"ratio", "near_copy_fraction", ...}
    two_sample_accuracy(F_real, F_gen)         # {"accuracy": 0.5 = indistinguishable, "ci95", ...}

Why this feature set: the FAD/FID family embeds clips with a downloaded network (VGGish, PANNs, CLAP); this
project evaluates offline, so the embedding is a documented set of classic librosa descriptors instead, every one
of which can be read and checked. It is coarser than a learned embedding (it sees timbre, pitch-class content,
brightness, noisiness, loudness and onset rate, not e.g. instrument identity), so it complements rather than
replaces listening and the L-Score table.

The features (d = 73, ``FEATURE_NAMES`` in this order); one STFT, n_fft 1024, hop 256, Hann, ``center=True``:
  * ``mfcc_mean_00..19``, ``mfcc_std_00..19``: 20 MFCCs (DCT-II, ortho) of the 128-band log-mel spectrogram
    (``power_to_db``, ref 1, top_db 80), mean and std (ddof 0) over frames;
  * ``chroma_mean_C..B``: 12 pitch-class energies (``chroma_stft``, tuning fixed at 0: no pitch tracking), mean;
  * ``centroid``, ``bandwidth``, ``rolloff`` (85 %) in Hz, ``flatness`` (0 tonal .. 1 noise): mean and std each;
  * ``contrast_mean_0..6``: spectral contrast (dB) in 7 octave bands from 200 Hz, mean (at sample rates below
    14.2 kHz the bands start lower, at 0.45 sr / 32, so that the top octave starts below Nyquist);
  * ``onset_strength_mean``/``_std``: librosa's onset envelope on the log-mel spectrogram;
  * ``onsets_per_s``: onsets per second of clip, picked exactly as ``librosa.onset.onset_detect`` by
    ``weaktok.lscore.peaks.onset_detect`` (the L-Score's onset picker, here on the hop-256 envelope), with the
    L-Score's loudness gate: a clip whose loudest frame is below ``SILENCE_DBFS`` (-60 dBFS RMS) has none. As
    with the L-Score's density, the envelope is rescaled to [0, 1] per clip before picking, so a clip with no
    real onset still yields peaks from its envelope's fluctuations (a steady sine or white noise reads as many
    per second, measured in docs/results.md; a 4/s burst train gives exactly 4/s). Read it as a rate of
    envelope peaks;
  * ``rms_mean``/``rms_std``: frame RMS (linear); ``zcr_mean``: zero-crossing rate (crossings per sample).

No numba code runs here (see weaktok/lscore/exact.py for why: librosa's disk-cached numba kernels can be poisoned
by concurrent compiles, numba #10128). Onsets are picked by the numpy port; the zero-crossing rate, whose librosa
version is a cached numba GUFunc, is hand-written below; the other librosa calls are numpy/scipy (a test runs
``clip_features`` with every numba object in librosa replaced by one that raises).

The waveform is processed as float32 (as the L-Score), the frame statistics in float64. Degenerate clips give
finite numbers: silence has zero MFCC spread, zero chroma, centroid 0, flatness ~1 (librosa's amin floor), no
onsets; a clip shorter than n_fft is zero-padded to n_fft (an empty clip is therefore scored as 1024 samples of
silence). Non-finite samples raise ValueError.

Why z-score before distances: the columns have different units (Hz, dB, counts per second, linear RMS) and
ranges spanning five orders of magnitude, so without it the centroid and rolloff (thousands of Hz) alone would
decide the Fréchet distance and the KID kernel. ``standardizer(ref)`` returns the reference set's mean and std
(1 for a constant column); use one reference (e.g. the real test set) for every set compared in a table.

Metrics:
  * ``frechet_distance``: between Gaussians fitted to two feature sets (the FID/FAD formula, as pytorch-fid).
  * ``kid``: unbiased MMD^2 with the cubic polynomial kernel over random subsets (Bińkowski et al. 2018, "Demystifying
    MMD GANs"): unbiased, so ~0 for two samples of one distribution whatever their size, unlike FD.
  * ``memorisation``: nearest-training-neighbour distances of generated clips vs of held-out real clips.
  * ``two_sample_accuracy``: cross-validated accuracy of a real-vs-generated logistic regression (a classifier
    two-sample test, Lopez-Paz & Oquab 2017).
"""

from __future__ import annotations

import librosa
import numpy as np
from scipy import linalg
from scipy.stats import binomtest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics.pairwise import polynomial_kernel
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from weaktok.lscore.exact import SILENCE_DBFS
from weaktok.lscore.peaks import onset_detect

N_FFT = 1024
HOP = 256
N_MELS = 128
N_MFCC = 20
CONTRAST_BANDS = 6  # -> 7 contrast rows (librosa adds the band above the last octave)
CONTRAST_FMIN = 200.0
ZC_THRESHOLD = 1e-10  # |sample| at or below this counts as 0 (librosa's zero_crossings default)
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")

FEATURE_NAMES = (
    [f"mfcc_mean_{i:02d}" for i in range(N_MFCC)]
    + [f"mfcc_std_{i:02d}" for i in range(N_MFCC)]
    + [f"chroma_mean_{p}" for p in PITCH_CLASSES]
    + [
        f"{f}_{s}"
        for f in ("centroid", "bandwidth", "rolloff", "flatness")
        for s in ("mean", "std")
    ]
    + [f"contrast_mean_{i}" for i in range(CONTRAST_BANDS + 1)]
    + [
        "onset_strength_mean",
        "onset_strength_std",
        "onsets_per_s",
        "rms_mean",
        "rms_std",
        "zcr_mean",
    ]
)


# ----------------------------------------------------------------------------------------------------------
# Features


def zero_crossing_rate(y: np.ndarray) -> np.ndarray:
    """y (N,) -> (T,) crossings per sample in each frame; equal to ``librosa.feature.zero_crossing_rate(y,
    frame_length=1024, hop_length=256)`` (edge-padded centred frames, |x| <= 1e-10 counts as 0, 0 as positive).
    Hand-written because librosa's is a disk-cached numba GUFunc (see the module docstring)."""
    y = np.pad(y, N_FFT // 2, mode="edge")
    frames = np.lib.stride_tricks.sliding_window_view(y, N_FFT)[
        ::HOP
    ]  # (T, N_FFT), as librosa.util.frame
    negative = frames < -y.dtype.type(
        ZC_THRESHOLD
    )  # librosa's signbit after zeroing |x| <= threshold
    return (negative[:, 1:] != negative[:, :-1]).sum(axis=1) / N_FFT  # (T,)


def clip_features(y: np.ndarray, sr: int) -> np.ndarray:
    """y (N,) mono waveform at sr -> (d,) float64 features, in ``FEATURE_NAMES`` order."""
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(y)):
        raise ValueError("clip_features: waveform contains NaN or Inf")
    if y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    S = np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP))  # (513, T) magnitude
    P = S**2  # (513, T) power
    mel_db = librosa.power_to_db(
        librosa.feature.melspectrogram(S=P, sr=sr, n_mels=N_MELS)
    )  # (128, T)
    mfcc = librosa.feature.mfcc(S=mel_db, n_mfcc=N_MFCC)  # (20, T)
    chroma = librosa.feature.chroma_stft(S=P, sr=sr, n_fft=N_FFT, tuning=0.0)  # (12, T)
    spectral = [  # each (T,)
        librosa.feature.spectral_centroid(S=S, sr=sr, n_fft=N_FFT)[0],
        librosa.feature.spectral_bandwidth(S=S, sr=sr, n_fft=N_FFT)[0],
        librosa.feature.spectral_rolloff(S=S, sr=sr, n_fft=N_FFT)[0],
        librosa.feature.spectral_flatness(S=S)[0],
    ]
    fmin = min(
        CONTRAST_FMIN, 0.45 * sr / 2 ** (CONTRAST_BANDS - 1)
    )  # top band's lower edge < Nyquist
    contrast = librosa.feature.spectral_contrast(
        S=S, sr=sr, n_fft=N_FFT, fmin=fmin, n_bands=CONTRAST_BANDS
    )  # (7, T)
    env = librosa.onset.onset_strength(S=mel_db, sr=sr, hop_length=HOP, n_fft=N_FFT)  # (T,)
    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)[0]  # (T,)
    loud = 20.0 * np.log10(max(float(rms.max()), 1e-20)) >= SILENCE_DBFS
    n_onsets = len(onset_detect(env, sr=sr, hop_length=HOP)) if loud else 0
    mfcc, chroma, contrast, env, rms = (
        x.astype(np.float64) for x in (mfcc, chroma, contrast, env, rms)
    )
    spectral = [
        f.astype(np.float64) for f in spectral
    ]  # frame statistics in float64 (a constant has std 0)
    return np.concatenate(
        [
            mfcc.mean(1),
            mfcc.std(1),
            chroma.mean(1),
            np.ravel([(f.mean(), f.std()) for f in spectral]),
            contrast.mean(1),
            [
                env.mean(),
                env.std(),
                n_onsets / (y.size / sr),
                rms.mean(),
                rms.std(),
                zero_crossing_rate(y).mean(),
            ],
        ]
    )  # (73,)


def features(waves, sr: int, progress: bool = False) -> np.ndarray:
    """A list (or (n, N) array) of mono waveforms -> (n, d) float64 features; (0, d) for no waveform."""
    rows = [
        clip_features(w, sr)
        for w in tqdm(waves, desc="features", unit="clip", disable=not progress)
    ]
    return np.stack(rows) if rows else np.zeros((0, len(FEATURE_NAMES)))


def standardizer(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ref (n, d) -> (mu (d,), sd (d,)) to z-score any set as (x - mu) / sd; a constant column gets sd 1."""
    ref = np.asarray(ref, dtype=np.float64)
    mu, sd = ref.mean(0), ref.std(0)
    return mu, np.where(sd > 0, sd, 1.0)


# ----------------------------------------------------------------------------------------------------------
# Distances between sets


def frechet_distance(a: np.ndarray, b: np.ndarray, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to a (n, d) and b (m, d):
    ||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)).

    As pytorch-fid's ``calculate_frechet_distance``: a non-finite matrix square root (singular product) is retried
    with ``eps`` added to both diagonals; imaginary parts from round-off are dropped, and a ValueError is raised if
    they are not tiny (|imag| > 1e-3 on the diagonal). Needs at least 2 rows per set; with fewer rows than
    dimensions the covariances are singular and the distance is noisy.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or len(a) < 2 or len(b) < 2 or a.shape[1] != b.shape[1]:
        raise ValueError(
            f"frechet_distance needs two (n >= 2, d) sets, got {a.shape} and {b.shape}"
        )
    diff = a.mean(0) - b.mean(0)  # (d,)
    ca, cb = (
        np.atleast_2d(np.cov(a, rowvar=False)),
        np.atleast_2d(np.cov(b, rowvar=False)),
    )  # (d, d)
    covmean = linalg.sqrtm(ca @ cb)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(len(ca)) * eps
        covmean = linalg.sqrtm((ca + offset) @ (cb + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(
                f"frechet_distance: imaginary component {np.max(np.abs(covmean.imag)):.3g}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean))


def kid(
    a: np.ndarray, b: np.ndarray, subsets: int = 50, subset_size: int | None = None, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance on features: a (n, d), b (m, d) -> (mean, std over subsets) of the unbiased MMD^2
    with k(x, y) = (x . y / d + 1)^3, each subset ``subset_size`` rows of each set drawn without replacement
    (default min(n, m, 100)). Hand-written: scikit-learn has the kernel but no MMD estimator."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    m = subset_size or min(len(a), len(b), 100)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or not 2 <= m <= min(len(a), len(b)):
        raise ValueError(
            f"kid: subset_size {m} must be in [2, min(n, m)] for sets {a.shape}, {b.shape}"
        )
    rng = np.random.default_rng(seed)
    kernel = {"degree": 3, "gamma": 1.0 / a.shape[1], "coef0": 1.0}
    est = np.empty(subsets)
    for s in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]  # (m, d)
        y = b[rng.choice(len(b), m, replace=False)]  # (m, d)
        kxx, kyy = polynomial_kernel(x, **kernel), polynomial_kernel(y, **kernel)  # (m, m)
        kxy = polynomial_kernel(x, y, **kernel)  # (m, m)
        est[s] = ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (
            m * (m - 1)
        ) - 2.0 * kxy.mean()
    return float(est.mean()), float(est.std())


# ----------------------------------------------------------------------------------------------------------
# Memorisation


def nearest_distances(queries: np.ndarray, bank: np.ndarray) -> np.ndarray:
    """queries (n, d), bank (m, d) -> (n,) Euclidean distance of each query to its nearest bank row. Pass z-scored
    features (see ``standardizer``)."""
    nn = NearestNeighbors(n_neighbors=1).fit(np.asarray(bank, dtype=np.float64))
    return nn.kneighbors(np.asarray(queries, dtype=np.float64))[0][:, 0]


def memorisation(gen: np.ndarray, train: np.ndarray, heldout: np.ndarray) -> dict:
    """Do generated clips sit closer to training clips than new real audio does?

    gen (n, d), train (m, d), heldout (h, d) features, z-scored here by the training set (so raw features and
    features already z-scored by any reference give the same result, columns constant in training aside). Each
    generated clip's nearest-training distance is compared with held-out real clips' nearest-training distances:
      * ``ratio`` = median gen distance / median held-out distance: ~1 if generations are as novel as new real
        audio, < 1 if they sit closer to training items (None if the held-out median is 0);
      * ``near_copy_fraction``: share of generated clips closer to training than ``threshold``, the 5th
        percentile of the held-out distances: ~0.05 for novel generations, near 1 for copies.
    A training set with near-duplicates of held-out items (loop-tiled segments of one recording in both splits)
    lowers the held-out distances and so hides memorisation; split by recording.
    """
    mu, sd = standardizer(train)

    def z(x):
        return (np.asarray(x, dtype=np.float64) - mu) / sd

    bank = z(train)
    g, h = nearest_distances(z(gen), bank), nearest_distances(z(heldout), bank)  # (n,), (h,)
    g_med, h_med = float(np.median(g)), float(np.median(h))
    threshold = float(np.percentile(h, 5))
    return {
        "gen_median": g_med,
        "heldout_median": h_med,
        "ratio": g_med / h_med if h_med > 0 else None,
        "near_copy_fraction": float(np.mean(g < threshold)),
        "threshold": threshold,
        "n_gen": len(g),
        "n_heldout": len(h),
        "n_train": len(bank),
    }


# ----------------------------------------------------------------------------------------------------------
# Classifier two-sample test


def two_sample_accuracy(real: np.ndarray, gen: np.ndarray, seed: int = 0, folds: int = 5) -> dict:
    """Can a linear classifier tell real from generated features? 0.5 = indistinguishable, 1 = fully separable.

    The larger set is subsampled (seeded) to the smaller one's size; ``folds``-fold stratified cross-validation
    of StandardScaler + LogisticRegression; every row is predicted once, by the model that did not see it.
    -> {"accuracy", "ci95" (Wilson interval over the 2n held-out predictions), "p_value" (one-sided binomial test
    of accuracy > 0.5; the folds' predictions are treated as independent, as is usual), "n_per_class", "folds"};
    accuracy None with a ``reason`` when a class has fewer than ``folds`` rows.
    """
    real, gen = np.asarray(real, dtype=np.float64), np.asarray(gen, dtype=np.float64)
    n = min(len(real), len(gen))
    out = {"n_per_class": n, "folds": folds}
    if n < folds:
        return {
            **out,
            "accuracy": None,
            "ci95": None,
            "p_value": None,
            "reason": f"{n} rows per class, fewer than {folds} folds",
        }
    rng = np.random.default_rng(seed)
    real, gen = (x[np.sort(rng.choice(len(x), n, replace=False))] for x in (real, gen))
    X = np.concatenate([real, gen])  # (2n, d)
    y = np.repeat([1, 0], n)  # 1 = real
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    pred = cross_val_predict(
        model, X, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed)
    )
    correct = int((pred == y).sum())
    ci = binomtest(correct, 2 * n).proportion_ci(
        confidence_level=0.95, method="wilson"
    )  # two-sided
    p_value = binomtest(correct, 2 * n, 0.5, alternative="greater").pvalue
    return {
        **out,
        "accuracy": correct / (2 * n),
        "ci95": [float(ci.low), float(ci.high)],
        "p_value": float(p_value),
    }
