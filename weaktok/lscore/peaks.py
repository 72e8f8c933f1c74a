"""librosa's onset peak picking in plain numpy: ``peak_pick`` and ``onset_detect`` (envelope -> onset times).

    onsets = onset_detect(env, sr=22050, hop_length=512)   # env (T,) onset strength -> (K,) float64 seconds

Why this exists: librosa's only implementation of ``util.peak_pick`` is a numba ``@guvectorize(cache=True)``
GUFunc, ``__peak_pick``. A GUFunc is cached as two files, the kernel (``utils.__peak_pick-*.nbc``) and its
wrapper (``guf-utils.__peak_pick-*.nbc``); the wrapper calls the kernel by a symbol name carrying a per-process
compile counter. When two processes compile it at the same time (our L-Score actors warming up together, ranks
validating together) the two files can come from different processes, and from then on every process that
*calls* ``peak_pick`` segfaults (exit 139) until the cache files are deleted: numba issue #10128. Computing the
peaks here means no numba code runs at all on the exact L-Score path.

Proven equal, not just close: ``peak_pick`` returns the same indices as ``librosa.util.peak_pick`` (librosa 0.11,
numba 0.68), and ``onset_detect`` the same array as ``librosa.onset.onset_detect(onset_envelope=..., units="time")``
(tests/unit/lscore/test_peaks.py: random, quantised, tied and constant envelopes, float32 and float64, and real loops).
What that takes, all read off librosa's kernel and numba's ``np.mean`` (numba/np/arraymath.py):
  * delta is a float32 argument of the GUFunc, so the threshold is ``mean + float32(delta)``;
  * numba's mean sums the window left to right in an accumulator of the array's dtype (float32 for a float32
    envelope), then divides in float64 and casts back to that dtype;
  * the window max is exact in any order; a candidate is a frame equal to its window max and
    ``>= mean + delta``; then greedily, a peak silences the next ``wait`` frames.
Inputs are 1-D float32 or float64 arrays: librosa's GUFunc also declares int32/int64 loops, but its
``peak_pick`` cannot reach them (a TypeError, as here).
"""

from __future__ import annotations

import math

import numpy as np

_DTYPES = (np.float32, np.float64)


def _shifted(x: np.ndarray, k: int, fill) -> np.ndarray:
    """x (T,) -> (T,) with out[n] = x[n + k] where 0 <= n + k < T, else ``fill``."""
    T = x.shape[0]
    out = np.full(T, fill, dtype=x.dtype)
    if k >= 0:
        out[: max(T - k, 0)] = x[k:]
    else:
        out[-k:] = x[: max(T + k, 0)]
    return out


def window_max(x: np.ndarray, pre: int, post: int) -> np.ndarray:
    """x (T,) float -> (T,) max of x[max(0, n - pre) : min(n + post, T)] for each n (post >= 1: never empty).

    Out-of-range offsets contribute -inf; a NaN in the window makes the max NaN, as in numba's np.max.
    """
    T = x.shape[0]
    out = x.copy()
    for k in range(-min(pre, T), min(post, T)):
        if k != 0:
            np.maximum(out, _shifted(x, k, -np.inf), out=out)
    return out


def window_mean(x: np.ndarray, pre: int, post: int) -> np.ndarray:
    """x (T,) float -> (T,) mean of x[max(0, n - pre) : min(n + post, T)], rounded exactly as numba's ``np.mean``.

    Numba sums the window left to right in an accumulator of x's dtype, divides in float64 and casts back to
    x's dtype. Here the window offsets are summed in the same order for all n at once; out-of-range offsets
    add 0.0, which leaves the sum unchanged bit for bit (a sum that starts at +0.0 is never -0.0).
    """
    T = x.shape[0]
    total = np.zeros(T, dtype=x.dtype)
    for k in range(-min(pre, T), min(post, T)):
        total += _shifted(x, k, 0.0)  # in x's dtype: float32 + float32 stays float32, as in numba
    n = np.arange(T)
    count = np.minimum(n + post, T) - np.maximum(n - pre, 0)  # (T,) >= 1
    return (total.astype(np.float64) / count).astype(x.dtype)


def _as_index(value: float, name: str, minimum: int) -> int:
    """librosa's ``valid_int(value, cast=np.ceil)`` after its range check."""
    if value < minimum:
        raise ValueError(
            f"{name} must be {'non-negative' if minimum == 0 else 'positive'}, got {value}"
        )
    return int(math.ceil(value))


def peak_pick(
    x: np.ndarray,
    *,
    pre_max: float,
    post_max: float,
    pre_avg: float,
    post_avg: float,
    delta: float,
    wait: float,
) -> np.ndarray:
    """x (T,) float32/float64 -> (K,) int64 peak indices; equal to ``librosa.util.peak_pick(x, ...)`` (sparse).

    Frame n is a candidate if x[n] == max(x[n - pre_max : n + post_max]) and
    x[n] >= mean(x[n - pre_avg : n + post_avg]) + delta (windows clipped to the array); candidates are then
    taken greedily, each one silencing the ``wait`` frames after it.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"peak_pick expects a 1-D array, got shape {x.shape}")
    if x.dtype.type not in _DTYPES:
        raise TypeError(f"peak_pick supports {[d.__name__ for d in _DTYPES]}, got {x.dtype}")
    pre_max, pre_avg = _as_index(pre_max, "pre_max", 0), _as_index(pre_avg, "pre_avg", 0)
    post_max, post_avg = _as_index(post_max, "post_max", 1), _as_index(post_avg, "post_avg", 1)
    wait = _as_index(wait, "wait", 0)
    if delta < 0:
        raise ValueError(f"delta must be non-negative, got {delta}")
    if x.shape[0] == 0:  # as librosa (numba's np.max of the empty first window)
        raise ValueError("zero-size array to reduction operation maximum which has no identity")
    threshold = window_mean(x, pre_avg, post_avg) + np.float32(
        delta
    )  # float32 + float32 stays float32
    candidates = np.flatnonzero((x == window_max(x, pre_max, post_max)) & (x >= threshold))
    peaks, next_free = [], 0
    for n in candidates.tolist():  # greedy: a peak at n silences n + 1 .. n + wait
        if n >= next_free:
            peaks.append(n)
            next_free = n + wait + 1
    return np.array(peaks, dtype=np.int64)


def onset_detect(onset_envelope: np.ndarray, sr: float, hop_length: int = 512) -> np.ndarray:
    """onset_envelope (T,) float -> (K,) float64 onset times in seconds.

    Equal to ``librosa.onset.onset_detect(onset_envelope=onset_envelope, sr=sr, hop_length=hop_length,
    units="time")`` with its defaults: the envelope is rescaled to [0, 1], peaks are picked with windows of
    30 ms before / 0 ms after (max), 100 ms before / 100 ms after (mean), delta 0.07 and a 30 ms wait, no
    backtracking; frame k is at time k * hop_length / sr.
    """
    env = np.asarray(onset_envelope)
    if env.ndim != 1 or env.dtype.kind != "f":
        raise ValueError(f"onset_detect expects a 1-D float envelope, got {env.dtype} {env.shape}")
    env = env - np.min(
        env, keepdims=True, axis=-1
    )  # librosa's normalize=True, operation for operation
    env /= np.max(env, keepdims=True, axis=-1) + np.finfo(env.dtype).tiny
    if not env.any() or not np.all(np.isfinite(env)):
        frames = np.zeros(0, dtype=np.int64)
    else:
        frames = peak_pick(
            env,
            pre_max=0.03 * sr // hop_length,
            post_max=0.00 * sr // hop_length + 1,
            pre_avg=0.10 * sr // hop_length,
            post_avg=0.10 * sr // hop_length + 1,
            delta=0.07,
            wait=0.03 * sr // hop_length,
        )
    return (frames * hop_length).astype(int) / float(sr)
