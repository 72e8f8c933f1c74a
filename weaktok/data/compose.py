"""Composing one loop of the embedded corpus: a style family's knobs, per-voice bar patterns (motifs vs fresh
bars, Euclidean or accent-weighted rhythms, dance templates), sequencing with jitter, swing, pitch and dynamics,
and the glitch effects on the mix (ratchets, buffer repeats, micro-cuts, bitcrush, drive).

    y, info = compose(rng, bank, STYLES["idm"], sr)   # y (n,) float32, 4-8 s; info: knobs and source files

Bars loop seamlessly: a hit that rings past the end wraps to the start (``sounds.mix_in``).
"""

from __future__ import annotations

import math

import numpy as np

from weaktok.data.sounds import REAL_LOOPS, SampleBank, bitcrush, gate, mix_in, ramp_mute, varispeed
from weaktok.data.styles import (
    METERS,
    SCALE,
    STYLES,
    VOICE_DENSITY,
    VOICE_GAIN,
    VOICE_GATE,
    Style,
)

MIN_S, MAX_S = 4.0, 8.0  # length range of an item (s)


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
    beats = REAL_LOOPS[name][0]  # beats in the file
    loop_bpm = beats * 60.0 / (len(bank.get(name)) / sr)
    x = bank.get(name, round(k["bpm"] / loop_bpm, 2))
    n_slices = beats * 4
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
