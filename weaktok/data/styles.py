"""The style families of the embedded corpus and the per-voice tables the composer reads.

A family (``STYLES``: idm, glitch, breakcore, ambient, techno, house, hip-hop) fixes its tags, meters, tempo
range and voices (kick, snare, hat, glitch, bass, elec, perc, pad, breaks = re-sequenced amen slices) and
*ranges* for the generator's knobs; each item draws its own knobs from those ranges (``compose.draw_knobs``):
hit probability per 16th step (density), timing jitter (irregularity), ratchet / buffer-repeat probability
(stutter), motif repetition vs fresh bars (structure), micro-cuts per second (gaps), pitch spread, bitcrush and
swing. Meters are 16th-step groupings whose group starts are accents.
"""

from __future__ import annotations

from dataclasses import dataclass

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
