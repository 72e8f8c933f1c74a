"""The embedded default corpus: IDM/glitch-style loops composed from Debian's CC0 ``sonic-pi-samples``.

    summary = build_corpus(Path("corpus"), n=300, seed=0)   # or: weaktok corpus --out corpus

writes the FSLD layout (DESIGN.md section 5), so the real ingestion path runs on it::

    DIR/audio/wav/<soundid>_<userid>.wav   22050 Hz mono PCM16, 4-8 s each
    DIR/metadata.json                      {"<soundid>": {tags, license, username, pack, name,
                                             annotations: {bpm}, meter, source_samples, ...}}
    DIR/README.txt                         what this is and where the sounds come from

Items
-----
* **Real loops**: the package's ``loop_*.flac`` files (amen, breakbeat, tabla, ...), tiled or trimmed to
  4-8 s, as items of their own (up to one each, about n/6 of the corpus).
* **Composed loops**: one style family per item (``STYLES``: idm, glitch, breakcore, ambient, techno,
  house, hip-hop). A family fixes the meters, tempo range, voices (kick, snare, hat, glitch, bass, elec,
  perc, pad, breaks = re-sequenced amen slices) and *ranges* for the generator's knobs; each item draws its
  own knobs from those ranges: hit probability per 16th step (density), timing jitter (irregularity),
  ratchet / buffer-repeat probability (stutter), motif repetition vs fresh bars (structure), micro-cuts
  per second (gaps), pitch spread, bitcrush and swing. Pitch and tempo changes are resampling
  (``scipy.signal.resample_poly``), i.e. varispeed, as on a sampler. Bars loop seamlessly (tails wrap).

Tags are lower-case Freesound-style words so a filter such as ``--tags idm,glitch`` selects a real subset.

Without the package (``samples_dir`` missing or holding no ``.flac``) every sound is synthesised instead
(kick = decaying sine sweep, snare = noise burst + tone, hat = high-passed noise, glitch = bitcrushed
bursts, ...), no real loops are written, and the summary and README.txt say ``fallback: synthesis``.

Determinism: item i draws from ``numpy.random.default_rng([seed, i])`` only, so the same seed gives
byte-identical WAVs. Safety: each WAV is written under ``DIR/.partial/`` and renamed into place, so no
half-written WAV is ever visible; metadata.json is written last (tmp + ``os.replace``). A re-run first
removes the old metadata.json (a folder without one is an unfinished build, never a mix of two runs),
and after the new one lands deletes WAVs it no longer lists. A folder holding a metadata.json that this
module did not write (e.g. a real FSLD download) is refused rather than overwritten.

Measured (n=300, seed 0, 2 cores shared with other jobs): ~15 s to build (about half of it importing torch
and reading the 143 sonic-pi files once), ~170 MB of cached sounds. Exact L-Score over the 300 items
(min / median / max): timbral 0.15 / 0.49 / 0.87, density 0.15 / 4.2 / 9.0 onsets/s, irregularity
0.00 / 0.10 / 2.5 s, structural 0.03 / 0.16 / 0.56 (FSLD-like: DESIGN.md section 3 measured 2.9-9.0
onsets/s and L_S 0.02-0.49 on real loops). Things the knobs do *not* control one-to-one:

* density knob vs onsets/s: Spearman 0.46 only. librosa's per-clip envelope normalisation lets one huge
  flux peak (the return from a digital-silence micro-cut, a loud kick over quiet hats) hide the other
  onsets, so micro-cuts lower the measured density (Spearman -0.38 with onsets/s); and drones/pads
  (``ambi_drone``, ``ambi_lunar_land``) read as ~9 onsets/s, so some "ambient" items score as dense.
* repeat knob vs L_S: ~0. L_S averages chroma similarity over *all* frame pairs, whatever the lag, so it
  measures tonal variety vs noise, not bar repetition. Through-composed bars move harmonically here (wider
  note palette, per-bar transposition), which doubles L_S for pitched voices alone (0.15 -> 0.33 median)
  but barely shows under drums (0.15 -> 0.20).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
from scipy import signal

SONIC_PI_SAMPLES = Path("/usr/share/sonic-pi/samples")
CC0 = "http://creativecommons.org/publicdomain/zero/1.0/"
README_MARKER = "weaktok embedded corpus"
SOUND_ID_BASE = 900000
MIN_S, MAX_S = 4.0, 8.0
PEAK = 0.9

# fake Freesound users: username -> user id (the <userid> in file names)
USERS = {
    "glitchkid": 41001,
    "idm_lab": 41002,
    "breakfiend": 41003,
    "dronewhisper": 41004,
    "floorfiller": 41005,
    "boombap_b": 41006,
    "sonicpi_loops": 41007,
}

# meters as 16th-step groupings; a group start is an accent (7/8 = 2+2+3 eighths)
METERS = {
    "4/4": (4, 4, 4, 4),
    "3/4": (4, 4, 4),
    "5/8": (6, 4),
    "7/8": (4, 4, 6),
    "9/8": (4, 4, 4, 6),
    "11/16": (3, 3, 3, 2),
    "13/16": (3, 3, 3, 2, 2),
}
ODD = ("5/8", "7/8", "9/8", "11/16", "13/16")

# bank categories: sonic-pi file-name prefixes (or exact stems) that feed each voice
CATEGORIES = {
    "kick": ("bd_", "drum_heavy_kick", "drum_bass_", "elec_hollow_kick", "elec_soft_kick"),
    "snare": (
        "sn_",
        "drum_snare_",
        "elec_snare",
        "elec_hi_snare",
        "elec_lo_snare",
        "elec_mid_snare",
        "elec_filt_snare",
        "perc_snap",
    ),
    "hat": (
        "drum_cymbal_closed",
        "drum_cymbal_pedal",
        "elec_tick",
        "elec_cymbal",
        "drum_cymbal_soft",
    ),
    "glitch": (
        "glitch_",
        "mehackit_robot",
        "mehackit_phone",
        "elec_blip",
        "elec_twip",
        "elec_flip",
        "elec_plip",
        "elec_pop",
        "vinyl_scratch",
        "vinyl_backspin",
    ),
    "bass": ("bass_",),
    "elec": (
        "elec_beep",
        "elec_bell",
        "elec_bong",
        "elec_chime",
        "elec_ping",
        "elec_twang",
        "elec_wood",
        "elec_blup",
        "elec_triangle",
        "perc_bell",
    ),
    "perc": ("tabla_", "drum_tom_", "drum_cowbell", "perc_till", "perc_door", "elec_fuzz_tom"),
    "pad": ("ambi_", "guit_"),
    "breaks": ("loop_amen", "loop_amen_full", "loop_breakbeat"),
}
BREAK_BEATS = {"loop_amen": 4, "loop_amen_full": 16, "loop_breakbeat": 4}  # beats per file

# real loops: stem -> (beats in the file (tempo = beats / duration), tags, original Freesound page)
REAL_LOOPS = {
    "loop_3d_printer": (
        16,
        ["glitch", "experimental", "noise", "found-sound"],
        "hullum/sounds/415571",
    ),
    "loop_amen": (4, ["breakbeat", "amen", "drums", "jungle", "breaks"], "Dolfeus/sounds/43389"),
    "loop_amen_full": (
        16,
        ["breakbeat", "amen", "drums", "jungle", "breaks"],
        "gowers/sounds/202537",
    ),
    "loop_breakbeat": (4, ["breakbeat", "drums", "breaks", "hip-hop"], "Snapper4298/sounds/160354"),
    "loop_compus": (16, ["electronic", "experimental", "percussion"], "godspine/sounds/212288"),
    "loop_drone_g_97": (8, ["drone", "ambient", "bass"], "hullum/sounds/415570"),
    "loop_electric": (4, ["electronic", "synth"], "hullum/sounds/415569"),
    "loop_garzul": (16, ["electronic", "synth"], "Garzul/sounds/213524"),
    "loop_industrial": (2, ["industrial", "electronic", "drums"], "godspine/sounds/222072"),
    "loop_mehackit1": (4, ["electronic", "drums"], "hullum/sounds/415568"),
    "loop_mehackit2": (4, ["electronic", "drums"], "hullum/sounds/415575"),
    "loop_mika": (16, ["electronic", "synth", "bass"], "mika55/sounds/188551"),
    "loop_perc1": (4, ["percussion", "drums"], "hullum/sounds/415574"),
    "loop_perc2": (4, ["percussion", "drums"], "hullum/sounds/415573"),
    "loop_safari": (16, ["percussion", "world", "drums"], "nemaavla/sounds/318759"),
    "loop_tabla": (16, ["tabla", "percussion", "world", "indian"], "lezaarth/sounds/242591"),
    "loop_weirdo": (8, ["experimental", "electronic", "weird"], "hullum/sounds/415572"),
}


@dataclass(frozen=True)
class Style:
    """A style family: fixed tags/meters/voices and the ranges each item draws its knobs from."""

    tags: tuple[str, ...]
    user: str
    weight: float
    meters: tuple[str, ...]
    bpm: tuple[int, int]
    voices: tuple[str, ...]
    density: tuple[float, float]  # hit probability per 16th step (before per-voice scaling)
    jitter: tuple[float, float]  # timing jitter std, as a fraction of a step
    stutter: tuple[float, float]  # P(ratchet) per hit; buffer repeats per bar ~ 2x this
    repeat: tuple[float, float]  # P(a bar replays a motif) -- 1 = loop, 0 = through-composed
    gaps: tuple[float, float]  # micro-cuts per second
    pitch: tuple[float, float]  # semitone spread of one-shots
    crush: float = 0.0  # P(the item is bitcrushed)
    swing: tuple[float, float] = (0.0, 0.0)
    subdiv: tuple[float, ...] = (
        1.0,
    )  # hat/breaks grid per 16th: 1 = 16ths, 1.5 = triplets, 2 = 32nds
    grid: bool = False  # straight dance templates (four-on-the-floor, backbeat)


IRREG = ODD + ("4/4",)
STYLES = {
    "idm": Style(
        ("idm", "electronic", "experimental"),
        "idm_lab",
        0.24,
        IRREG,
        (90, 160),
        ("kick", "snare", "hat", "glitch", "elec", "bass"),
        (0.15, 0.9),
        (0.0, 0.3),
        (0.05, 0.35),
        (0.1, 0.95),
        (0.0, 0.6),
        (0.0, 7.0),
        crush=0.2,
        subdiv=(1.0, 1.0, 1.0, 1.5, 2.0),
    ),
    "glitch": Style(
        ("glitch", "electronic", "experimental", "clicks"),
        "glitchkid",
        0.18,
        IRREG,
        (80, 150),
        ("glitch", "glitch", "hat", "kick", "elec"),
        (0.1, 0.8),
        (0.05, 0.45),
        (0.2, 0.6),
        (0.0, 0.7),
        (0.3, 1.5),
        (0.0, 12.0),
        crush=0.6,
        subdiv=(1.0, 1.0, 2.0),
    ),
    "breakcore": Style(
        ("breakcore", "drill-and-bass", "breaks", "drum-and-bass"),
        "breakfiend",
        0.14,
        ("4/4", "4/4", "7/8", "13/16"),
        (160, 180),
        ("breaks", "kick", "snare", "hat", "bass"),
        (0.5, 1.0),
        (0.0, 0.12),
        (0.1, 0.5),
        (0.0, 0.6),
        (0.0, 0.4),
        (0.0, 5.0),
        crush=0.3,
        subdiv=(1.0, 1.5, 2.0),
    ),
    "ambient": Style(
        ("ambient", "drone", "atmospheric"),
        "dronewhisper",
        0.12,
        ("4/4", "3/4", "5/8"),
        (80, 110),
        ("pad", "elec"),
        (0.01, 0.06),
        (0.0, 0.3),
        (0.0, 0.0),
        (0.3, 1.0),
        (0.0, 0.0),
        (0.0, 5.0),
    ),
    "techno": Style(
        ("techno", "electronic", "dance"),
        "floorfiller",
        0.12,
        ("4/4",),
        (120, 140),
        ("kick", "hat", "snare", "perc", "bass"),
        (0.1, 0.4),
        (0.0, 0.0),
        (0.0, 0.05),
        (0.85, 1.0),
        (0.0, 0.0),
        (0.0, 1.0),
        grid=True,
    ),
    "house": Style(
        ("house", "electronic", "dance"),
        "floorfiller",
        0.08,
        ("4/4",),
        (118, 128),
        ("kick", "hat", "snare", "bass", "elec"),
        (0.1, 0.35),
        (0.0, 0.0),
        (0.0, 0.0),
        (0.85, 1.0),
        (0.0, 0.0),
        (0.0, 1.0),
        swing=(0.0, 0.15),
        grid=True,
    ),
    "hip-hop": Style(
        ("hip-hop", "boom-bap", "beats"),
        "boombap_b",
        0.12,
        ("4/4",),
        (80, 100),
        ("kick", "snare", "hat", "bass", "perc"),
        (0.1, 0.35),
        (0.0, 0.05),
        (0.0, 0.1),
        (0.6, 1.0),
        (0.0, 0.0),
        (0.0, 2.0),
        swing=(0.1, 0.3),
        grid=True,
    ),
}
# per-voice scale of the item's density, and the longest a hit may ring (s) before it is gated
VOICE_DENSITY = {
    "kick": 0.5,
    "snare": 0.35,
    "hat": 1.0,
    "glitch": 0.6,
    "bass": 0.3,
    "elec": 0.4,
    "perc": 0.5,
    "pad": 1.0,
    "breaks": 1.0,
}
VOICE_GATE = {
    "kick": 0.6,
    "snare": 0.5,
    "hat": 0.25,
    "glitch": 0.5,
    "bass": 0.8,
    "elec": 0.6,
    "perc": 0.6,
    "pad": 8.0,
    "breaks": 1.0,
}
VOICE_GAIN = {
    "kick": 1.0,
    "snare": 0.8,
    "hat": 0.45,
    "glitch": 0.7,
    "bass": 0.8,
    "elec": 0.5,
    "perc": 0.6,
    "pad": 0.7,
    "breaks": 0.9,
}
SCALE = (0, 3, 5, 7, 10, 12, 15)  # minor pentatonic, for pitched voices


# -----------------------------------------------------------------------------
# DSP helpers


@cache
def _lowpass(up: int, down: int) -> np.ndarray:
    """The anti-aliasing FIR ``resample_poly`` would design for (up, down); cached (design dominated)."""
    max_rate = max(up, down)
    return signal.firwin(2 * 10 * max_rate + 1, 1.0 / max_rate, window=("kaiser", 5.0))


def varispeed(x: np.ndarray, rate: float) -> np.ndarray:
    """Play x at ``rate`` times speed (pitch and tempo both scale), by polyphase resampling."""
    if abs(rate - 1.0) < 1e-6:
        return x
    frac = Fraction(1.0 / rate).limit_denominator(64)
    up, down = frac.numerator, frac.denominator
    return signal.resample_poly(x, up, down, window=_lowpass(up, down)).astype(np.float32)


def gate(x: np.ndarray, n: int, fade: int = 64) -> np.ndarray:
    """Truncate x to n samples with a short linear fade-out (no click)."""
    if len(x) <= n:
        return x
    x = x[: max(n, 1)].copy()
    k = min(fade, len(x))
    x[-k:] *= np.linspace(1.0, 0.0, k, dtype=np.float32)
    return x


def bitcrush(x: np.ndarray, bits: int, hold: int) -> np.ndarray:
    """Sample-and-hold by ``hold`` samples, then quantise to ``bits`` bits."""
    y = np.repeat(x[::hold], hold)[: len(x)]
    q = 2.0 ** (bits - 1)
    return (np.round(y * q) / q).astype(np.float32)


def mix_in(buf: np.ndarray, x: np.ndarray, start: int, gain: float) -> None:
    """Add gain*x into the loop buffer at ``start``; anything past the end wraps to the beginning."""
    n = len(buf)
    start %= n
    x = x[:n]
    head = min(len(x), n - start)
    buf[start : start + head] += gain * x[:head]
    if head < len(x):
        buf[: len(x) - head] += gain * x[head:]


def ramp_mute(y: np.ndarray, a: int, b: int, ramp: int = 44) -> None:
    """Silence y[a:b] in place with short ramps either side (a micro-cut)."""
    a, b = max(a, 0), min(b, len(y))
    if b - a <= 2 * ramp:
        return
    y[a : a + ramp] *= np.linspace(1.0, 0.0, ramp, dtype=np.float32)
    y[a + ramp : b - ramp] = 0.0
    y[b - ramp : b] *= np.linspace(0.0, 1.0, ramp, dtype=np.float32)


# -----------------------------------------------------------------------------
# sound banks: sonic-pi files (loaded once, cached) or synthesis


class SampleBank:
    """One-shots by category: sonic-pi files, or synthesised sounds (named ``synth:<category><i>``) for
    every category the folder lacks (all of them without the package). ``get`` caches, so each file is
    read and each pitch computed once."""

    SYNTH_VARIANTS = 4

    def __init__(self, samples_dir: Path, sr: int, seed: int):
        self.dir, self.sr, self.seed = Path(samples_dir), sr, seed
        self.files = sorted(p.stem for p in self.dir.glob("*.flac")) if self.dir.is_dir() else []
        self.loops = [f for f in self.files if f in REAL_LOOPS]
        self.categories = {
            c: [
                f
                for f in self.files
                if f.startswith(prefixes) and (f.startswith("loop_") == (c == "breaks"))
            ]
            for c, prefixes in CATEGORIES.items()
        }
        self.synthesised = [
            c for c, names in self.categories.items() if not names and c != "breaks"
        ]
        for c in self.synthesised:
            self.categories[c] = [f"synth:{c}{i}" for i in range(self.SYNTH_VARIANTS)]
        self._cache: dict[tuple[str, float], np.ndarray] = {}

    def get(self, name: str, rate: float = 1.0) -> np.ndarray:
        """Sound ``name`` at sr, played at ``rate`` (varispeed); cached."""
        key = (name, round(rate, 4))
        if key not in self._cache:
            self._cache[key] = (
                self._load(name) if key[1] == 1.0 else varispeed(self.get(name), key[1])
            )
        return self._cache[key]

    def _load(self, name: str) -> np.ndarray:
        if name.startswith("synth:"):
            cat, i = name[len("synth:") : -1], int(name[-1])
            return synth_sound(
                cat,
                np.random.default_rng([self.seed, 7919, list(CATEGORIES).index(cat), i]),
                self.sr,
            )
        from weaktok.audio import load_audio

        return load_audio(self.dir / f"{name}.flac", sr=self.sr)


def synth_sound(cat: str, rng: np.random.Generator, sr: int) -> np.ndarray:
    """One synthetic one-shot of category ``cat``, peak-normalised float32."""

    def t(sec):
        return np.arange(int(sec * sr)) / sr

    def sweep(f0, f1, tau_f, sec):
        f = f1 + (f0 - f1) * np.exp(-t(sec) / tau_f)
        return np.sin(2 * np.pi * np.cumsum(f) / sr)

    noise = lambda sec: rng.standard_normal(int(sec * sr))  # noqa: E731
    if cat == "kick":
        x = sweep(rng.uniform(110, 200), rng.uniform(38, 60), 0.03, 0.45) * np.exp(
            -t(0.45) / rng.uniform(0.08, 0.2)
        )
    elif cat == "snare":
        x = 0.8 * noise(0.3) * np.exp(-t(0.3) / rng.uniform(0.05, 0.12)) + 0.5 * np.sin(
            2 * np.pi * rng.uniform(160, 240) * t(0.3)
        ) * np.exp(-t(0.3) / 0.04)
    elif cat == "hat":
        b, a = signal.butter(4, rng.uniform(5000, 8000) / (sr / 2), btype="high")
        x = signal.lfilter(b, a, noise(0.2)) * np.exp(-t(0.2) / rng.uniform(0.015, 0.06))
    elif cat == "glitch":
        sec = rng.uniform(0.03, 0.2)
        src = (
            np.sign(np.sin(2 * np.pi * rng.uniform(80, 3000) * t(sec)))
            if rng.random() < 0.5
            else noise(sec)
        )
        x = bitcrush(
            (src * np.exp(-t(sec) / (sec / 2))).astype(np.float32),
            int(rng.integers(2, 5)),
            int(rng.integers(4, 24)),
        )
    elif cat == "bass":
        f = rng.uniform(40, 70)
        x = (
            np.sin(2 * np.pi * f * t(0.8)) + 0.3 * signal.sawtooth(2 * np.pi * f * t(0.8))
        ) * np.exp(-t(0.8) / 0.3)
    elif cat == "elec":
        x = np.sin(2 * np.pi * rng.uniform(400, 2000) * t(0.3)) * np.exp(
            -t(0.3) / rng.uniform(0.03, 0.12)
        )
    elif cat == "perc":
        x = sweep(rng.uniform(200, 400), rng.uniform(90, 180), 0.05, 0.4) * np.exp(-t(0.4) / 0.1)
    elif cat == "pad":
        f = rng.uniform(110, 220)
        env = np.minimum(t(4.0) / 1.0, 1.0) * np.minimum((4.0 - t(4.0)) / 1.5, 1.0)
        x = (
            sum(
                np.sin(2 * np.pi * f * r * (1 + rng.uniform(-0.003, 0.003)) * t(4.0))
                for r in (1, 1.5, 2, 3)
            )
            * env
        )
    else:
        raise ValueError(f"no synthesiser for category {cat!r}")
    x = np.asarray(x, dtype=np.float32)
    return (x * (0.95 / max(float(np.abs(x).max()), 1e-9))).astype(np.float32)


# -----------------------------------------------------------------------------
# composition


def draw_knobs(rng: np.random.Generator, style: Style) -> dict:
    """One item's generator knobs, uniform within the family's ranges."""
    u = lambda lo_hi: float(rng.uniform(*lo_hi))  # noqa: E731
    meter = str(rng.choice(style.meters))
    return dict(
        meter=meter,
        bpm=int(rng.integers(style.bpm[0], style.bpm[1] + 1)),
        density=u(style.density),
        jitter=u(style.jitter),
        stutter=u(style.stutter),
        repeat=u(style.repeat),
        gaps=u(style.gaps) if rng.random() < 0.6 else 0.0,  # 40% of items have no cuts at all
        pitch=u(style.pitch),
        swing=u(style.swing),
        crush=bool(rng.random() < style.crush),
        subdiv=float(rng.choice(style.subdiv)),
        dynamics=float(rng.uniform(0.0, 0.5)),
    )


def accents(meter: str) -> np.ndarray:
    """Metric weight per 16th step: 1 at group starts, 0.5 on other 8ths, 0.25 on off-16ths."""
    w = []
    for g in METERS[meter]:
        w += [1.0] + [0.5 if i % 2 == 0 else 0.25 for i in range(1, g)]
    return np.array(w)


def euclid(k: int, n: int, rot: int) -> np.ndarray:
    """Euclidean rhythm: k hits spread as evenly as possible over n steps, rotated."""
    hits = np.array([(i * k) % n < k for i in range(n)]) if k > 0 else np.zeros(n, bool)
    return np.roll(hits, rot)


def bar_pattern(
    rng: np.random.Generator, voice: str, meter: str, p: float, grid: bool, subdiv: float = 1.0
) -> np.ndarray:
    """Which grid steps of one bar this voice hits (bool, one per 16th, or per 16th/subdiv)."""
    steps = round(len(accents(meter)) * subdiv)
    if grid and voice == "kick":
        hits = np.arange(steps) % 4 == 0
        return hits | (rng.random(steps) < p * 0.15)
    if grid and voice == "snare":
        return np.isin(np.arange(steps), (4, 12)) | (rng.random(steps) < p * 0.1)
    if grid and voice == "hat":
        return (np.arange(steps) % 2 == 0) | (rng.random(steps) < p * 0.5)
    if voice == "pad":
        return np.isin(
            np.arange(steps), rng.choice(steps, size=1 + int(rng.random() < p * 10), replace=False)
        )
    if rng.random() < 0.4:  # Euclidean: even but odd-feeling in odd meters
        return euclid(max(1, round(p * steps)), steps, int(rng.integers(steps)))
    w = accents(meter) if subdiv == 1.0 else np.ones(steps)
    return rng.random(steps) < np.clip(p * w / w.mean(), 0.0, 1.0)


def pick_sample(rng, bank: SampleBank, voice: str) -> str | None:
    names = bank.categories.get(voice) or []
    return str(rng.choice(names)) if names else None


def compose(
    rng: np.random.Generator, bank: SampleBank, style: Style, sr: int
) -> tuple[np.ndarray, dict]:
    """One composed loop -> (y float32, info with knobs, meter, bpm and the source files used)."""
    k = draw_knobs(rng, style)
    steps = len(accents(k["meter"]))
    step_s = 60.0 / k["bpm"] / 4
    bar_s = steps * step_s
    n_bars = int(rng.integers(math.ceil(MIN_S / bar_s), math.floor(MAX_S / bar_s) + 1))
    n = int(round(n_bars * bar_s * sr))
    buf = np.zeros(n, np.float32)
    used: set[str] = set()
    for voice in style.voices:
        name = pick_sample(rng, bank, voice)
        if name is None:
            continue
        used.add(name)
        render_voice(rng, buf, bank, voice, name, style, k, n_bars, steps, step_s, sr)
    if not buf.any():  # an unlucky all-rest draw: one downbeat so no item is silent
        name = pick_sample(rng, bank, style.voices[0]) or pick_sample(rng, bank, "kick")
        used.add(name)
        mix_in(buf, bank.get(name), 0, 1.0)
    buffer_repeats(rng, buf, k, n_bars, step_s, sr)
    micro_cuts(rng, buf, k, step_s, sr)
    if k["crush"]:
        buf = bitcrush(
            buf / max(float(np.abs(buf).max()), 1e-9),
            int(rng.integers(4, 9)),
            int(rng.integers(2, 9)),
        )
    if style is STYLES["breakcore"]:
        drive = float(rng.uniform(1.0, 4.0))
        buf = np.tanh(drive * buf / max(float(np.abs(buf).max()), 1e-9))
    k["bars"] = n_bars
    return buf, dict(knobs=k, sources=sorted(used))


def voice_bars(rng, voice, style, k, n_bars, steps, sub) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per bar: (hits (steps,) bool, semitone offset per step). Structure lives here.

    ``repeat`` is the chance a bar replays one of 1-2 motifs; otherwise the bar is fresh (new rhythm and, for
    pitched voices, a new transposition). Low ``repeat`` also widens the note palette, so through-composed
    items move harmonically (what the chroma-based structural term can see), repeated ones sit on few notes.
    """
    p = min(1.0, k["density"] * VOICE_DENSITY[voice])
    palette = np.array(SCALE[: 1 + round((1.0 - k["repeat"]) * (len(SCALE) - 1))])

    def fresh(shift):
        return (
            bar_pattern(rng, voice, k["meter"], p, style.grid, sub),
            rng.choice(palette, size=steps) + shift,
        )

    motifs = [fresh(0.0) for _ in range(int(rng.integers(1, 3)))]
    bars = []
    for b in range(n_bars):
        if b == 0 or rng.random() < k["repeat"]:
            bars.append(motifs[b % len(motifs)])
        else:
            bars.append(fresh(float(rng.choice((-5, -2, 0, 2, 5, 7)))))
    return bars


def render_voice(rng, buf, bank, voice, name, style, k, n_bars, steps, step_s, sr) -> None:
    """Sequence one voice over all bars: motifs vs fresh bars, jitter, swing, pitch, dynamics, ratchets."""
    pitched = voice in ("bass", "elec", "pad")
    sub = k["subdiv"] if voice in ("hat", "breaks") else 1.0  # rolls / drill chops: a finer grid
    steps, step_s = round(steps * sub), steps * step_s / round(steps * sub)  # same bar length
    base = (
        float(rng.choice((-12, -5, 0, 7)))
        if pitched
        else float(rng.uniform(-k["pitch"], k["pitch"]))
    )
    gate_n = int(VOICE_GATE[voice] * sr if voice != "pad" else steps * step_s * sr)
    for b, (hits, notes) in enumerate(voice_bars(rng, voice, style, k, n_bars, steps, sub)):
        for s in np.flatnonzero(hits):
            t = (b * steps + s) * step_s
            t += k["swing"] * step_s * (s % 4 == 2 and sub == 1.0) + k["jitter"] * step_s * float(
                rng.standard_normal()
            )
            semis = base + (float(notes[s]) if pitched else float(rng.normal(0, k["pitch"] / 4)))
            gain = VOICE_GAIN[voice] * (
                1.0 if s == 0 else float(rng.uniform(1.0 - k["dynamics"], 1.0))
            )
            if voice == "breaks":
                x = break_slice(rng, bank, name, s, k, step_s, sr)
            else:
                x = gate(bank.get(name, 2.0 ** (round(semis) / 12)), gate_n)
            start = int(round(t * sr))
            if rng.random() < k["stutter"]:
                ratchet(rng, buf, x, start, step_s, sr, gain)
            else:
                mix_in(buf, x, start, gain)


def break_slice(rng, bank, name, s, k, step_s, sr) -> np.ndarray:
    """A 16th-note slice of a real break, varispeeded to the item's tempo; in order or shuffled."""
    loop_bpm = BREAK_BEATS[name] * 60.0 / (len(bank.get(name)) / sr)
    x = bank.get(name, round(k["bpm"] / loop_bpm, 2))
    n_slices = BREAK_BEATS[name] * 4
    idx = s % n_slices if rng.random() < k["repeat"] else int(rng.integers(n_slices))
    w = len(x) // n_slices
    return gate(x[idx * w : (idx + 2) * w], int(step_s * sr * float(rng.choice((1, 1, 2)))))


def ratchet(rng, buf, x, start, step_s, sr, gain) -> None:
    """Retrigger the head of a hit r times inside one or two steps (a drum-machine ratchet)."""
    r = int(rng.choice((2, 3, 4, 6, 8)))
    span = step_s * float(rng.choice((1, 2)))
    hop = int(span * sr / r)
    head = gate(x, hop)
    rise = rng.random() < 0.3
    for j in range(r):
        y = varispeed(head, 2.0 ** (j / 12)) if rise else head
        mix_in(buf, y, start + j * hop, gain * (1.0 - 0.5 * j / r))


def buffer_repeats(rng, buf, k, n_bars, step_s, sr) -> None:
    """Glitch stutter on the mix: copy a micro-slice and repeat it over the following steps."""
    for _ in range(int(rng.poisson(2.0 * k["stutter"] * n_bars))):
        w = int(step_s * sr / float(rng.choice((1, 2, 4, 8))))
        a = int(rng.integers(0, max(1, len(buf) - 8 * w)))
        if rng.random() < 0.5:
            a -= a % int(step_s * sr)  # on the grid
        piece = gate(buf[a : a + w].copy(), w)
        for j in range(1, int(rng.integers(2, 9))):
            b = a + j * w
            if b + w > len(buf):
                break
            buf[b : b + w] = piece


def micro_cuts(rng, buf, k, step_s, sr) -> None:
    """Silences: zero short spans (quarter step to two steps), at most 40% of the loop."""
    budget = 0.4 * len(buf)
    for _ in range(int(rng.poisson(k["gaps"] * len(buf) / sr))):
        w = int(step_s * sr * float(rng.choice((0.25, 0.5, 1, 2))))
        if w > budget:
            break
        a = int(rng.integers(0, len(buf) - w))
        if rng.random() < 0.5:
            a -= a % int(step_s * sr)
        ramp_mute(buf, a, a + w)
        budget -= w


def real_loop(
    rng: np.random.Generator, bank: SampleBank, name: str, sr: int
) -> tuple[np.ndarray, dict]:
    """A package loop as its own item: tiled whole (if short) or trimmed to whole beats (if long)."""
    x = bank.get(name)
    beats = REAL_LOOPS[name][0]
    dur = len(x) / sr
    bpm = beats * 60.0 / dur
    if dur < MIN_S:
        reps = int(rng.integers(math.ceil(MIN_S / dur), math.floor(MAX_S / dur) + 1))
        y = np.tile(x, reps)
    elif dur > MAX_S * 1.01:  # trim to whole bars
        bars = math.floor(MAX_S * bpm / 60.0 / 4)
        y = gate(x, min(int(bars * 4 * 60.0 / bpm * sr), int(MAX_S * sr)))
    elif dur > MAX_S:  # 8.01 s: a rounding overhang
        y = gate(x, int(MAX_S * sr))
    else:
        y = x
    return y, dict(knobs=dict(meter="4/4", bpm=int(round(bpm))), sources=[name])


# -----------------------------------------------------------------------------
# writing


def plan_items(rng: np.random.Generator, n: int, loops: list[str]) -> list[str]:
    """Kinds of the n items: real loop stems (about n/6, each at most once) and style names, shuffled."""
    n_real = min(len(loops), max(1, n // 6)) if loops else 0
    real = list(rng.choice(loops, size=n_real, replace=False)) if n_real else []
    names = list(STYLES)
    w = np.array([STYLES[s].weight for s in names])
    composed = list(rng.choice(names, size=n - n_real, p=w / w.sum()))
    kinds = [str(x) for x in real + composed]
    rng.shuffle(kinds)
    return kinds


def make_item(i: int, kind: str, seed: int, bank: SampleBank, sr: int) -> tuple[np.ndarray, dict]:
    """Item i -> (normalised audio, metadata entry without ids); draws only from rng([seed, i])."""
    rng = np.random.default_rng([seed, i])
    if kind in REAL_LOOPS:
        y, info = real_loop(rng, bank, kind, sr)
        tags = ["loop"] + REAL_LOOPS[kind][1]
        user, pack, desc = (
            "sonicpi_loops",
            "sonic-pi-samples loops",
            (
                f"{kind} from Debian sonic-pi-samples (CC0), original https://freesound.org/people/"
                f"{REAL_LOOPS[kind][2]}/; tiled/trimmed to a 4-8 s loop by weaktok"
            ),
        )
    else:
        style = STYLES[kind]
        y, info = compose(rng, bank, style, sr)
        meter = info["knobs"]["meter"]
        tags = ["loop", *style.tags] + (["odd-time"] if meter in ODD else [])
        if kind == "idm" and info["knobs"]["stutter"] > 0.25:
            tags.append("glitch")
        if info["knobs"]["crush"]:
            tags.append("bitcrush")
        user = (
            style.user
            if rng.random() < 0.75
            else str(rng.choice([u for u in USERS if u != "sonicpi_loops"]))
        )
        synth = all(x.startswith("synth:") for x in info["sources"])
        pack = f"weaktok {kind} loops" + (" (synthesised)" if synth else "")
        desc = (
            f"{kind} loop in {meter} at {info['knobs']['bpm']} bpm, composed by weaktok from "
            + ("synthesised sounds" if synth else "sonic-pi-samples one-shots (CC0)")
        )
    y = np.asarray(y, np.float32)
    y = y * (PEAK / max(float(np.abs(y).max()), 1e-9))
    k = info["knobs"]
    meta = dict(
        name=f"{kind}_{i:04d}",
        tags=list(dict.fromkeys(tags)),
        license=CC0,
        username=user,
        pack=pack,
        description=desc,
        annotations={"bpm": int(k["bpm"])},
        meter=k["meter"],
        source_samples=[f"{s}.flac" for s in info["sources"] if not s.startswith("synth:")],
        generator={
            "kind": kind,
            **{key: (round(v, 4) if isinstance(v, float) else v) for key, v in k.items()},
        },
    )
    return y.astype(np.float32), meta


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to path.tmp then os.replace: readers see the old file or the new one, never half."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def readme_text(summary: dict, samples_dir: Path) -> str:
    src = (
        "Every sound was SYNTHESISED (fallback: synthesis): sonic-pi-samples was not found at "
        f"{samples_dir}."
        if summary["fallback"]
        else f"Source sounds: Debian package sonic-pi-samples ({samples_dir}), all CC0 (public domain), originally "
        "from freesound.org; see its README.md for the original links."
    )
    return (
        f"{README_MARKER}\n\n"
        f"{summary['n']} loops in the Freesound Loop Dataset (FSLD) layout, written by `weaktok corpus` "
        f"(seed {summary['seed']}): audio/wav/<soundid>_<userid>.wav (22050 Hz mono PCM16, 4-8 s) and "
        "metadata.json (tags, license, username, pack, annotations.bpm, meter, source_samples).\n"
        f"{summary['composed']} are composed IDM/glitch-style loops (irregular meters, stutters, micro-cuts, "
        f"pitch/time variation); {summary['real_loops']} are the package's own loops.\n"
        f"{src}\nLicense of this corpus: CC0 ({CC0}).\n"
        f"fallback: {summary['fallback'] or 'none'}\n"
    )


def check_out_dir(out: Path) -> None:
    """Refuse to overwrite a metadata.json that is not ours (e.g. a real FSLD download)."""
    readme = out / "README.txt"
    if (out / "metadata.json").exists() and not (
        readme.exists() and readme.read_text().startswith(README_MARKER)
    ):
        raise FileExistsError(
            f"{out} already holds a metadata.json not written by `weaktok corpus`; "
            "choose an empty folder"
        )


def build_corpus(
    out: Path,
    n: int = 300,
    seed: int = 0,
    sr: int = 22050,
    samples_dir=SONIC_PI_SAMPLES,
    progress: bool = True,
) -> dict:
    """Write n loops in the FSLD layout under ``out``; returns a summary (counts per tag/family, fallback)."""
    from tqdm import tqdm

    from weaktok.audio import write_wav

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    t0 = time.perf_counter()
    out, samples_dir = Path(out), Path(samples_dir)
    check_out_dir(out)
    (out / "metadata.json").unlink(
        missing_ok=True
    )  # until the new one lands, the folder reads unfinished
    bank = SampleBank(samples_dir, sr, seed)
    fallback = None if bank.files else "synthesis"
    if fallback:
        print(
            f"weaktok corpus: WARNING: no sonic-pi samples (*.flac) in {samples_dir}; every sound is "
            "synthesised instead (fallback: synthesis)",
            file=sys.stderr,
        )
    kinds = plan_items(np.random.default_rng([seed, 2**31]), n, bank.loops)
    wav_dir, partial = out / "audio" / "wav", out / ".partial"
    wav_dir.mkdir(parents=True, exist_ok=True)
    partial.mkdir(parents=True, exist_ok=True)
    metadata, seconds = {}, 0.0
    for i, kind in enumerate(tqdm(kinds, desc="corpus", unit="loop", disable=not progress)):
        y, meta = make_item(i, kind, seed, bank, sr)
        sid, uid = SOUND_ID_BASE + i, USERS[meta["username"]]
        tmp = partial / f"{sid}_{uid}.wav"
        write_wav(tmp, y, sr)
        os.replace(tmp, wav_dir / tmp.name)
        metadata[str(sid)] = meta
        seconds += len(y) / sr
    summary = dict(
        out=str(out),
        n=n,
        seed=seed,
        composed=sum(k not in REAL_LOOPS for k in kinds),
        real_loops=sum(k in REAL_LOOPS for k in kinds),
        fallback=fallback,
        families=dict(Counter("real" if k in REAL_LOOPS else k for k in kinds).most_common()),
        synthesised_categories=bank.synthesised,
        tags=dict(Counter(t for m in metadata.values() for t in m["tags"]).most_common()),
        audio_seconds=round(seconds, 1),
    )
    (out / "README.txt").write_text(readme_text(summary, samples_dir))
    write_json_atomic(out / "metadata.json", metadata)
    keep = {f"{sid}_{USERS[m['username']]}.wav" for sid, m in metadata.items()}
    for p in wav_dir.glob("*.wav"):  # stale items of an earlier, larger run
        if p.name not in keep and p.stem.replace("_", "").isdigit():
            p.unlink()
    shutil.rmtree(partial, ignore_errors=True)
    summary["build_seconds"] = round(time.perf_counter() - t0, 2)
    return summary


def print_summary(summary: dict) -> None:
    """A few human-readable lines for the CLI."""
    fam = ", ".join(f"{k} {v}" for k, v in summary["families"].items())
    tags = ", ".join(f"{k} {v}" for k, v in list(summary["tags"].items())[:16])
    print(
        f"corpus: {summary['n']} loops ({summary['composed']} composed, {summary['real_loops']} real) "
        f"-> {summary['out']} in {summary['build_seconds']} s, {summary['audio_seconds']} s of audio"
    )
    print(
        f"fallback: {summary['fallback'] or 'none'}"
        + (
            f" (synthesised: {', '.join(summary['synthesised_categories'])})"
            if summary["synthesised_categories"] and not summary["fallback"]
            else ""
        )
    )
    print(f"families: {fam}")
    print(f"tags: {tags}")
