"""The sounds the embedded corpus is made of: Debian's CC0 ``sonic-pi-samples`` (one-shots by voice category
and the package's own loops), or synthesised stand-ins, plus the sampler-style DSP that plays them.

    bank = SampleBank(SONIC_PI_SAMPLES, sr=22050, seed=0)
    x = bank.get("bd_haus", rate=2 ** (3 / 12))     # a kick three semitones up (varispeed), cached
    y = gate(x, n)                                   # truncated to n samples with a short fade-out

Without the package (``samples_dir`` missing or holding no ``.flac``) every sound is synthesised instead
(kick = decaying sine sweep, snare = noise burst + tone, hat = high-passed noise, glitch = bitcrushed
bursts, ...), and ``SampleBank.synthesised`` lists the categories that were. Pitch and tempo changes are
resampling (``scipy.signal.resample_poly``), i.e. varispeed, as on a sampler.
"""

from __future__ import annotations

from fractions import Fraction
from functools import cache
from pathlib import Path

import numpy as np
from scipy import signal

from weaktok.audio import load_audio

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
