"""Ruler check: what each exact L-Score term measures, read off signals whose answer is known.

    rows = ruler_check()                 # one dict per reference signal: the four terms, expected values, errors
    print(ruler_markdown(rows))          # the same as a markdown table (weaktok.evaluation.ruler_tables)
    inv = order_invariance()             # the drum loop vs the same loop with its 100 ms segments shuffled
    lim = detector_limits()              # density on noise over 20 seeds, real sustained sounds and drum loops
    python -m weaktok.evaluation.rulers  # prints all of these (the numbers quoted in docs/evaluation.md)

Why: the L-Score's names promise more than its terms deliver. "Rhythmic density" is an onset count, and the
paper's onset detector (librosa defaults, envelope normalised per clip) finds onsets in sounds that have none
and misses fast ones; "structural complexity" is one minus the mean pairwise cosine similarity of chroma
frames, a quantity that cannot see the order of the frames at all. A ruler is a signal with a known reading:
a click train at f Hz has density f onsets/s and irregularity 0, silence has no onsets, a steady drone or noise
has none after its start. Measuring the terms on such signals shows a reader, in numbers, what a change of an
L-Score term in a results table can and cannot mean.

The reference signals (all ``seconds`` long, mono float32 at ``sr``, deterministic):
  * click trains at 1, 2, 4, 8, 12, 16, 20 Hz: 3 ms exponentially decaying noise bursts, regular, the first one
    ``lead_in`` seconds in (a silent lead-in matters for the paper's detector, see docs/evaluation.md);
  * a jittered click train, 6 Hz on average, inter-onset intervals uniform in [1/12, 1/4] s (seeded): its true
    irregularity is the std of those intervals;
  * a drone: sonic-pi's ``ambi_drone`` loop tiled to length, or, when that file is absent, a synthesised
    sustained A-major chord with a slow (0.25 Hz) amplitude swell; the row's ``what`` says which;
  * white noise, a 440 Hz sine, and digital silence (all zeros);
  * a real drum loop (sonic-pi ``loop_amen`` tiled to length; skipped with a note when absent) and the same clip
    cut into 100 ms segments put back in a seeded random order: the order-invariance probe.

Each row carries the terms under every requested onset preset of :func:`weaktok.lscore.exact.exact_lscore`
("paper", the default, and the opt-in "clicks"); timbral and structural do not depend on the preset.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from weaktok.audio import SONIC_PI_SAMPLES, load_audio
from weaktok.evaluation.ruler_tables import (
    limits_markdown,
    order_invariance_markdown,
    ruler_markdown,
)
from weaktok.lscore.exact import (
    LSCORE_NAMES,
    exact_lscore,
    power_spectrogram,
    structural_exact,
    timbral_exact,
)

CLICK_RATES = (1, 2, 4, 8, 12, 16, 20)  # Hz
JITTER_RATE = 6.0  # Hz, mean rate of the jittered train
SEGMENT_S = 0.1  # order-invariance probe: segment length (seconds)
SEED = 0


# ----------------------------------------------------------------------------------------------------------
# building blocks


def _click(sr: int) -> np.ndarray:
    """A 3 ms noise burst with a 0.4 ms exponential decay, peak 0.8 (the same burst for every click)."""
    n = max(1, round(0.003 * sr))
    burst = np.random.default_rng(SEED).standard_normal(n) * np.exp(-np.arange(n) / (n / 8.0))
    return (0.8 * burst / np.abs(burst).max()).astype(np.float32)


def click_train(times: np.ndarray, sr: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Clicks at ``times`` (s) in an n-sample clip -> (y (n,), times of the clicks that fit whole in the clip)."""
    click = _click(sr)
    starts = np.round(np.asarray(times) * sr).astype(int)
    starts = starts[(starts >= 0) & (starts + len(click) <= n)]
    y = np.zeros(n, np.float32)
    for s in starts:
        y[s : s + len(click)] += click
    return y, starts / sr


def _tile(y: np.ndarray, n: int) -> np.ndarray:
    """Loop y end to start until it is n samples long (the sonic-pi loops are cut to loop seamlessly)."""
    return np.resize(y, n).astype(np.float32)


def _sample(name: str, sr: int, samples_dir: Path | None = None) -> np.ndarray | None:
    """A sonic-pi sample, mono at sr, peak-normalised; None if the file is not installed."""
    path = Path(samples_dir if samples_dir is not None else SONIC_PI_SAMPLES) / f"{name}.flac"
    return load_audio(path, sr) if path.exists() else None


def _synth_drone(sr: int, n: int) -> np.ndarray:
    """Sustained A-major chord (A2, E3, A3, C#4) with a 0.25 Hz, 30 % amplitude swell, peak about 0.5."""
    t = np.arange(n) / sr
    chord = sum(np.sin(2 * np.pi * f * t) for f in (110.0, 164.81, 220.0, 277.18)) / 4.0
    return (0.5 * chord * (1.0 - 0.3 * (0.5 - 0.5 * np.cos(2 * np.pi * 0.25 * t)))).astype(
        np.float32
    )


def shuffle_segments(
    y: np.ndarray, sr: int, segment_s: float = SEGMENT_S, seed: int = SEED
) -> np.ndarray:
    """Cut y into segment_s pieces (the last one may be shorter and stays last) and reorder the whole ones."""
    m = max(1, round(segment_s * sr))
    k = len(y) // m
    pieces = y[: k * m].reshape(k, m)[np.random.default_rng(seed).permutation(k)]
    return np.concatenate([pieces.reshape(-1), y[k * m :]]).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------
# the reference set


# one reference signal: name, y (None when its file is absent), what it is, expected density, expected irregularity
Reference = tuple[str, np.ndarray | None, str, float | None, float | None]


@functools.lru_cache(maxsize=4)
def _reference(sr: int, seconds: float, lead_in: float, samples_dir: str) -> tuple[Reference, ...]:
    """Every reference signal, in table order (cached: the loops are decoded and resampled once)."""
    n = round(seconds * sr)
    out = []
    for f in CLICK_RATES:
        y, t = click_train(np.arange(lead_in, seconds, 1.0 / f), sr, n)
        out.append(
            (
                f"click_{f}hz",
                y,
                f"{f} Hz regular click train, {len(t)} clicks from {lead_in:g} s",
                len(t) / seconds,
                0.0,
            )
        )
    rng = np.random.default_rng(SEED)
    iois = rng.uniform(0.5 / JITTER_RATE, 1.5 / JITTER_RATE, int(2 * JITTER_RATE * seconds) + 2)
    y, t = click_train(lead_in + np.concatenate([[0.0], np.cumsum(iois)]), sr, n)
    what = (
        f"jittered clicks, {JITTER_RATE:g} Hz mean, IOI uniform in [{0.5 / JITTER_RATE:.3f}, "
        f"{1.5 / JITTER_RATE:.3f}] s, {len(t)} clicks"
    )
    out.append(
        (f"click_jitter_{JITTER_RATE:g}hz", y, what, len(t) / seconds, float(np.std(np.diff(t))))
    )
    drone = _sample("ambi_drone", sr, samples_dir)
    if drone is not None:
        out.append(
            (
                "drone",
                _tile(drone, n),
                f"sonic-pi ambi_drone ({len(drone) / sr:.2f} s loop) tiled; no onsets",
                0.0,
                None,
            )
        )
    else:
        what = f"synthesised A-major drone with 0.25 Hz swell (ambi_drone.flac not found in {samples_dir}); no onsets"
        out.append(("drone", _synth_drone(sr, n), what, 0.0, None))
    noise = (0.3 * np.random.default_rng(SEED).standard_normal(n)).astype(np.float32)
    out.append(("white_noise", noise, "white noise, std 0.3, seed 0; no onsets", 0.0, None))
    sine = (0.5 * np.sin(2 * np.pi * 440.0 * np.arange(n) / sr)).astype(np.float32)
    out.append(("sine_440hz", sine, "440 Hz sine, amplitude 0.5; no onsets", 0.0, None))
    out.append(("silence", np.zeros(n, np.float32), "digital silence (all zeros)", 0.0, 0.0))
    amen = _sample("loop_amen", sr, samples_dir)
    if amen is not None:
        loop = _tile(amen, n)
        out.append(
            (
                "amen_loop",
                loop,
                f"sonic-pi loop_amen ({len(amen) / sr:.2f} s drum loop) tiled",
                None,
                None,
            )
        )
        what = f"amen_loop, its {SEGMENT_S * 1000:g} ms segments in a seeded random order"
        out.append(("amen_shuffled", shuffle_segments(loop, sr), what, None, None))
    else:
        note = f"skipped: loop_amen.flac not found in {samples_dir}"
        out += [("amen_loop", None, note, None, None), ("amen_shuffled", None, note, None, None)]
    return tuple(out)


def reference_signals(
    sr: int = 22050, seconds: float = 8.0, lead_in: float = 0.1
) -> dict[str, np.ndarray]:
    """name -> y (n,) float32, n = round(seconds * sr); signals whose source file is absent are left out."""
    ref = _reference(sr, float(seconds), float(lead_in), str(SONIC_PI_SAMPLES))
    return {name: y.copy() for name, y, *_ in ref if y is not None}


def reference_notes(sr: int = 22050, seconds: float = 8.0, lead_in: float = 0.1) -> dict[str, str]:
    """name -> what the signal is (says which drone was used, and which signals were skipped and why)."""
    ref = _reference(sr, float(seconds), float(lead_in), str(SONIC_PI_SAMPLES))
    return {name: what for name, _, what, *_ in ref}


# ----------------------------------------------------------------------------------------------------------
# measuring


def ruler_check(
    sr: int = 22050,
    seconds: float = 8.0,
    onset: str | tuple[str, ...] = ("paper", "clicks"),
    lead_in: float = 0.1,
) -> list[dict]:
    """One row per reference signal.

    Keys: name, what, timbral, density, irregularity, structural (under the first preset in ``onset``),
    expected_density, expected_irregularity (None where no value is known), abs_err (|density - expected|, click
    trains only, else None), and for every further preset p: density_p, irregularity_p, abs_err_p. A skipped
    signal has None for every measured value.
    """
    presets = (onset,) if isinstance(onset, str) else tuple(onset)
    rows = []
    reference = _reference(sr, float(seconds), float(lead_in), str(SONIC_PI_SAMPLES))
    for name, y, what, exp_density, exp_irregularity in reference:
        row = {
            "name": name,
            "what": what,
            "expected_density": exp_density,
            "expected_irregularity": exp_irregularity,
        }
        for i, preset in enumerate(presets):
            L = (
                [None] * len(LSCORE_NAMES)
                if y is None
                else exact_lscore(y, sr, onset=preset).tolist()
            )
            suffix = "" if i == 0 else f"_{preset}"
            if i == 0:
                row.update(zip(LSCORE_NAMES, L))
            row[f"density{suffix}"], row[f"irregularity{suffix}"] = L[1], L[2]
            clicks = name.startswith("click_") and y is not None
            row[f"abs_err{suffix}"] = abs(L[1] - exp_density) if clicks else None
        rows.append(row)
    return rows


def order_invariance(
    sr: int = 22050,
    seconds: float = 8.0,
    onset: str = "paper",
    segment_s: float = SEGMENT_S,
    seed: int = SEED,
) -> dict:
    """The drum loop's four terms vs those of its segment-shuffled copy, plus an exact frame-permutation control.

    Returns {"what", "loop": {term: value}, "shuffled": {...}, "change": shuffled - loop, "rel_change": change / |loop|,
    "frame_permuted": {"timbral": |change|, "structural": |change|}} where frame_permuted permutes the columns of
    the loop's power spectrogram directly (no splice artefacts): both terms are permutation invariant by
    construction, so this is ~1e-16. Returns {"what": "skipped: ..."} when loop_amen is not installed.
    """
    amen = _sample("loop_amen", sr)
    if amen is None:
        return {"what": f"skipped: loop_amen.flac not found in {SONIC_PI_SAMPLES}"}
    loop = _tile(amen, round(seconds * sr))
    shuffled = shuffle_segments(loop, sr, segment_s, seed)
    a, b = exact_lscore(loop, sr, onset=onset), exact_lscore(shuffled, sr, onset=onset)
    power = power_spectrogram(loop)  # (1025, T)
    permuted = power[:, np.random.default_rng(seed).permutation(power.shape[1])]
    return {
        "what": f"loop_amen tiled to {seconds:g} s vs its {segment_s * 1000:g} ms segments shuffled (seed {seed}), "
        f"onset={onset}",
        "loop": dict(zip(LSCORE_NAMES, a.tolist())),
        "shuffled": dict(zip(LSCORE_NAMES, b.tolist())),
        "change": dict(zip(LSCORE_NAMES, (b - a).tolist())),
        "rel_change": dict(zip(LSCORE_NAMES, ((b - a) / np.maximum(np.abs(a), 1e-12)).tolist())),
        "frame_permuted": {
            "timbral": abs(timbral_exact(permuted) - timbral_exact(power)),
            "structural": abs(structural_exact(permuted, sr) - structural_exact(power, sr)),
        },
    }


# sustained sounds with no drum hits, and real drum loops
REAL_STEADY = ("ambi_drone", "loop_drone_g_97", "ambi_glass_hum", "ambi_haunted_hum")
REAL_DRUMS = ("loop_amen", "loop_breakbeat", "loop_tabla")


def detector_limits(
    sr: int = 22050,
    seconds: float = 8.0,
    onsets: tuple[str, ...] = ("paper", "clicks"),
    n_noise: int = 20,
) -> list[dict]:
    """Density (onsets/s) per onset preset beyond the single rulers: white noise over ``n_noise`` seeds (mean, min,
    max), the installed sustained sonic-pi sounds and real drum loops (tiled or cropped to ``seconds``).

    Rows: {"name", "what", "<preset>": density or (mean, min, max) for noise}. Absent files are left out.
    """
    n = round(seconds * sr)
    rows = []
    noise = [
        (0.3 * np.random.default_rng(s).standard_normal(n)).astype(np.float32)
        for s in range(n_noise)
    ]
    row = {
        "name": "white_noise",
        "what": f"white noise, std 0.3, seeds 0..{n_noise - 1}: mean, min, max",
    }
    for p in onsets:
        d = np.array([exact_lscore(y, sr, onset=p)[1] for y in noise])
        row[p] = (float(d.mean()), float(d.min()), float(d.max()))
    rows.append(row)
    for kind, names in (("sustained, no onsets", REAL_STEADY), ("drum loop", REAL_DRUMS)):
        for name in names:
            y = _sample(name, sr)
            if y is None:
                continue
            row = {"name": name, "what": f"sonic-pi {name} ({len(y) / sr:.2f} s, {kind})"}
            row.update({p: float(exact_lscore(_tile(y, n), sr, onset=p)[1]) for p in onsets})
            rows.append(row)
    return rows


if __name__ == "__main__":
    rows = ruler_check()
    print(ruler_markdown(rows), "\n")
    for r in rows:
        print(f"- {r['name']}: {r['what']}")
    print("\nclick trains without the silent lead-in (first click at 0 s):\n")
    print(ruler_markdown([r for r in ruler_check(lead_in=0.0) if r["name"].startswith("click_")]))
    print("\nbeyond the rulers:\n")
    print(limits_markdown(detector_limits()))
    for preset in ("paper", "clicks"):
        result = order_invariance(onset=preset)
        print(f"\n{result['what']}\n\n{order_invariance_markdown(result)}")
        if "frame_permuted" in result:
            print(f"frame-permuted control, |change|: {result['frame_permuted']}")
