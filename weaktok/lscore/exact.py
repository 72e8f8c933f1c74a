"""The exact L-Score (docs/design.md): four librosa/numpy terms on a mono waveform. No gradient.

    L = exact_lscore(y, sr)   # (4,) float64: timbral, density (onsets/s), irregularity (s), structural
    L = exact_lscore(y, sr, onset="clicks")   # opt-in onset preset for density/irregularity (see below)

All terms use one STFT (n_fft 2048, hop 512, Hann, ``center=True``, librosa's defaults otherwise). The power
spectrogram is computed once and handed to librosa's ``S=`` entry points, which is numerically identical to
calling ``onset_detect(y=...)`` / ``chroma_stft(y=...)`` (they build the very same ``|stft|**2``; a test checks
this) and roughly halves the cost.

No numba code runs here. librosa's peak picking is a numba GUFunc cached on disk, and concurrent first compiles
can poison that cache so that every later call segfaults (numba #10128); onsets are therefore picked by
:mod:`weaktok.lscore.peaks`, a numpy port proven equal to ``librosa.onset.onset_detect``. The other librosa
calls (stft, melspectrogram, power_to_db, onset_strength, rms, chroma_stft) are numpy/scipy: librosa's other
cached kernels (``_localmax``, ``_cabs2``, ...) are compiled or loaded when librosa is imported, but none is
called on this path (checked by wrapping every numba object in librosa), and a poisoned entry only crashes
when called (tests/unit/lscore/test_peaks.py runs this path on a poisoned cache).

Onset detection choice
----------------------
We keep librosa's defaults, *including* ``normalize=True`` (envelope rescaled to [0, 1] per clip before peak
picking), for fidelity with the paper, which called ``onset_detect`` with defaults. Consequence, documented
rather than hidden: a sound with no onsets but a fluctuating envelope (white noise, a drone) still yields
onsets from its normalised noise (white noise: several per second, depending on the seed; measured in
docs/evaluation.md), because normalisation turns any tiny flux into a full-scale envelope. The only guard is the
design's loudness gate (docs/design.md): a
clip whose peak frame RMS (``librosa.feature.rms``, same frames) is below -60 dBFS has 0 onsets, so silence
and near-silence score 0 instead of amplified dither.

Opt-in onset preset ``onset="clicks"`` (the default ``onset="paper"`` is the above, unchanged bit for bit):
onsets are read off their own finer STFT (n_fft 1024, hop 256: a 46 ms window, so clicks 50 ms apart land
in different frames), with a SuperFlux-style flux (``lag=2``, ``max_size=3``) and, crucially, *no*
normalisation: a peak must rise 2.5 (mean dB over mel bands) above its local mean, an absolute threshold that
steady sounds do not reach. It counts fast click trains that the paper's detector misses, reads sustained sounds
and white noise near 0 where that one reads several onsets per second, and stays close to it on real drum loops
(weaktok/evaluation/rulers.py; measured in docs/evaluation.md). Timbral and structural never depend on the
preset; the same RMS gate applies to both; it costs one more, smaller STFT.

Degenerate inputs (all give finite numbers)
-------------------------------------------
* empty clip: all four terms are 0.
* clip shorter than one frame (``n_fft`` samples): zero-padded at the end to ``n_fft`` samples; every term,
  including the duration that divides the onset count, is computed on the padded clip.
* digital silence: no frame has energy, so timbral = structural = 0; the RMS gate gives 0 onsets.
* non-finite samples raise ``ValueError`` (librosa would raise too; garbage in should be loud).
"""

from __future__ import annotations

import librosa
import numpy as np

from weaktok.lscore.peaks import onset_detect, peak_pick

LSCORE_NAMES = ("timbral", "density", "irregularity", "structural")

N_FFT = 2048
HOP = 512
FRAME_GATE_DB = 60.0  # timbral: only frames within this many dB of the loudest frame count
SILENCE_DBFS = -60.0  # onsets: a clip whose peak frame RMS is below this has none

ONSET_PRESETS = ("paper", "clicks")
CLICKS_N_FFT, CLICKS_HOP = (
    1024,
    256,
)  # "clicks" onsets: their own STFT, twice the paper's time resolution
CLICKS_LAG, CLICKS_MAX_SIZE = (
    2,
    3,
)  # flux against the max over 3 mel bands 2 frames back (SuperFlux)
CLICKS_DELTA = 2.5  # absolute threshold on the un-normalised envelope (mean dB rise over mel bands)


def _prepare(y: np.ndarray) -> np.ndarray:
    """Any 1-D array -> float32, zero-padded to at least one frame. Empty stays empty."""
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(y)):
        raise ValueError("exact_lscore: waveform contains NaN or Inf")
    if 0 < y.size < N_FFT:
        y = np.pad(y, (0, N_FFT - y.size))
    return y


def power_spectrogram(y: np.ndarray) -> np.ndarray:
    """y (N,) -> |STFT|^2 (F=1025, T=N//512+1), exactly what librosa's features compute internally."""
    return np.abs(librosa.stft(y, n_fft=N_FFT, hop_length=HOP)) ** 2


def timbral_exact(power: np.ndarray) -> float:
    """L_T from a power spectrogram (F, T): mean normalised spectral entropy over non-quiet frames.

    Per frame p = S / sum(S), H = -sum p log p / log F; mean over frames whose energy is within 60 dB of the
    loudest frame (frames with zero energy never count). Hand-written: librosa has no spectral entropy.
    """
    S = np.asarray(power, dtype=np.float64)  # (F, T)
    energy = S.sum(axis=0)  # (T,)
    if S.size == 0 or energy.max() <= 0:
        return 0.0
    keep = (energy > 0) & (energy >= energy.max() * 10.0 ** (-FRAME_GATE_DB / 10.0))
    p = S[:, keep] / energy[keep]  # (F, K)
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    H = -plogp.sum(axis=0) / np.log(S.shape[0])  # (K,)
    return float(np.clip(H.mean(), 0.0, 1.0))  # a perfectly flat frame can round to 1 + 1e-16


def click_onset_times(y: np.ndarray, sr: int) -> np.ndarray:
    """The ``onset="clicks"`` preset, ungated: y (N,) float32 -> (K,) onset times in seconds.

    librosa's onset_strength on a 1024/256 mel-dB spectrogram with lag 2 and max_size 3, peaks picked with
    librosa's default windows (30 ms / 0 ms max, 100 ms / 100 ms mean, 30 ms wait) but no normalisation and
    delta ``CLICKS_DELTA``.
    """
    power = np.abs(librosa.stft(y, n_fft=CLICKS_N_FFT, hop_length=CLICKS_HOP)) ** 2
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, fmax=0.5 * sr))
    env = librosa.onset.onset_strength(
        S=mel_db,
        sr=sr,
        hop_length=CLICKS_HOP,
        n_fft=CLICKS_N_FFT,
        lag=CLICKS_LAG,
        max_size=CLICKS_MAX_SIZE,
    )  # (T,)
    frames = peak_pick(
        env,
        pre_max=0.03 * sr // CLICKS_HOP,
        post_max=1,
        pre_avg=0.10 * sr // CLICKS_HOP,
        post_avg=0.10 * sr // CLICKS_HOP + 1,
        delta=CLICKS_DELTA,
        wait=0.03 * sr // CLICKS_HOP,
    )
    return (frames * CLICKS_HOP).astype(int) / float(sr)


def onset_times(
    y: np.ndarray, sr: int, power: np.ndarray | None = None, *, onset: str = "paper"
) -> np.ndarray:
    """Onset times in seconds: ``librosa.onset.onset_detect`` with defaults (hop 512), RMS-gated.

    ``power`` (F, T) may be passed to reuse the STFT; the result equals ``librosa.onset.onset_detect(y=y, sr=sr,
    hop_length=512, units="time")`` for clips whose peak RMS is at least -60 dBFS, and is empty otherwise.
    The peaks are picked by :func:`weaktok.lscore.peaks.onset_detect` (same result, no numba).
    ``onset="clicks"`` uses :func:`click_onset_times` instead (same gate; ``power`` is not used).
    """
    if onset not in ONSET_PRESETS:
        raise ValueError(f"onset must be one of {ONSET_PRESETS}, got {onset!r}")
    y = _prepare(y)
    if y.size == 0:
        return np.zeros(0)
    rms = librosa.feature.rms(y=y, frame_length=N_FFT, hop_length=HOP)  # (1, T)
    if 20.0 * np.log10(max(float(rms.max()), 1e-20)) < SILENCE_DBFS:
        return np.zeros(0)
    if onset == "clicks":
        return click_onset_times(y, sr)
    if power is None:
        power = power_spectrogram(y)
    mel_db = librosa.power_to_db(librosa.feature.melspectrogram(S=power, sr=sr, fmax=0.5 * sr))
    env = librosa.onset.onset_strength(S=mel_db, sr=sr, hop_length=HOP, n_fft=N_FFT)  # (T,)
    return onset_detect(env, sr=sr, hop_length=HOP)


def density_exact(onsets: np.ndarray, duration_s: float) -> float:
    """L_RD: onsets per second."""
    return float(len(onsets) / duration_s) if duration_s > 0 else 0.0


def irregularity_exact(onsets: np.ndarray) -> float:
    """L_RI: population std (ddof 0) of inter-onset intervals in seconds; 0 with fewer than 3 onsets."""
    if len(onsets) < 3:
        return 0.0
    return float(np.std(np.diff(onsets)))


def structural_exact(power: np.ndarray, sr: int) -> float:
    """L_S from a power spectrogram (F, T): 1 - mean off-diagonal cosine self-similarity of chroma.

    chroma = ``librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0)``; frames with zero chroma energy are
    dropped; columns L2-normalised; S = C^T C; L_S = 1 - mean_{i != j} S_ij. 0 with fewer than 2 frames left.
    """
    if power.size == 0:
        return 0.0
    C = librosa.feature.chroma_stft(S=power, sr=sr, tuning=0.0).astype(np.float64)  # (12, T)
    C = C[:, C.sum(axis=0) > 0]  # (12, K)
    K = C.shape[1]
    if K < 2:
        return 0.0
    C = C / np.linalg.norm(C, axis=0, keepdims=True)
    S = C.T @ C  # (K, K)
    off_mean = (S.sum() - np.trace(S)) / (K * (K - 1))
    return float(1.0 - off_mean)


def exact_lscore(y: np.ndarray, sr: int, *, onset: str = "paper") -> np.ndarray:
    """y (N,) mono waveform at sr -> (4,) float64 [timbral, density, irregularity, structural].

    ``onset`` picks the onset detector behind density and irregularity: "paper" (default) or "clicks".
    """
    if onset not in ONSET_PRESETS:
        raise ValueError(f"onset must be one of {ONSET_PRESETS}, got {onset!r}")
    y = _prepare(y)
    if y.size == 0:
        return np.zeros(4)
    power = power_spectrogram(y)  # (1025, T)
    onsets = onset_times(y, sr, power=power, onset=onset)
    return np.array(
        [
            timbral_exact(power),
            density_exact(onsets, y.size / sr),
            irregularity_exact(onsets),
            structural_exact(power, sr),
        ],
        dtype=np.float64,
    )
