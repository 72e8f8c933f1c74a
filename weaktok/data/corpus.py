"""The embedded default corpus: IDM/glitch-style loops composed from Debian's CC0 ``sonic-pi-samples``.

    summary = build_corpus(Path("corpus"), n=300, seed=0)   # or: weaktok corpus --out corpus

writes the FSLD layout (docs/data.md), so the real ingestion path runs on it::

    DIR/audio/wav/<soundid>_<userid>.wav   22050 Hz mono PCM16, 4-8 s each
    DIR/metadata.json                      {"<soundid>": {tags, license, username, pack, name,
                                             annotations: {bpm}, meter, source_samples, ...}}
    DIR/README.txt                         what this is and where the sounds come from

Items
-----
* **Real loops**: the package's ``loop_*.flac`` files (amen, breakbeat, tabla, ...), tiled or trimmed to
  4-8 s, as items of their own (up to one each, about n/6 of the corpus).
* **Composed loops**: one style family per item (``weaktok.data.styles``), composed by
  ``weaktok.data.compose`` from the sounds of ``weaktok.data.sounds``.

Tags are lower-case Freesound-style words so a filter such as ``--tags idm,glitch`` selects a real subset.

Without the package every sound is synthesised instead (``weaktok.data.sounds``), no real loops are written, and
the summary and README.txt say ``fallback: synthesis``.

Determinism: item i draws from ``numpy.random.default_rng([seed, i])`` only, so the same seed gives
byte-identical WAVs. Safety: each WAV is written under ``DIR/.partial/`` and renamed into place, so no
half-written WAV is ever visible; metadata.json is written last (tmp + ``os.replace``). A re-run first
removes the old metadata.json (a folder without one is an unfinished build, never a mix of two runs),
and after the new one lands deletes WAVs it no longer lists. A folder holding a metadata.json that this
module did not write (e.g. a real FSLD download) is refused rather than overwritten.

What the corpus measures (build time, the spread of each exact L-Score term over the items) is in
docs/results.md. The knobs do *not* control the terms one-to-one:

* density knob vs onsets/s: only weakly correlated. librosa's per-clip envelope normalisation lets one huge
  flux peak (the return from a digital-silence micro-cut, a loud kick over quiet hats) hide the other
  onsets, so micro-cuts lower the measured density; and drones/pads (``ambi_drone``, ``ambi_lunar_land``)
  read as many onsets/s, so some "ambient" items score as dense.
* repeat knob vs L_S: uncorrelated. L_S averages chroma similarity over *all* frame pairs, whatever the lag,
  so it measures tonal variety vs noise, not bar repetition. Through-composed bars move harmonically here
  (wider note palette, per-bar transposition), which raises L_S for pitched voices alone but barely shows
  under drums.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from weaktok.audio import SONIC_PI_SAMPLES, write_wav
from weaktok.data.compose import MAX_S, MIN_S, compose
from weaktok.data.sounds import REAL_LOOPS, SampleBank, gate
from weaktok.data.styles import ODD, STYLES

log = logging.getLogger(__name__)

CC0 = "http://creativecommons.org/publicdomain/zero/1.0/"
README_MARKER = "weaktok embedded corpus"
SOUND_ID_BASE = 900000
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
        log.warning(
            "no sonic-pi samples (*.flac) in %s; every sound is synthesised instead "
            "(fallback: synthesis)",
            samples_dir,
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
    """A few human-readable lines for the CLI, logged at INFO."""
    fam = ", ".join(f"{k} {v}" for k, v in summary["families"].items())
    tags = ", ".join(f"{k} {v}" for k, v in list(summary["tags"].items())[:16])
    log.info(
        f"corpus: {summary['n']} loops ({summary['composed']} composed, {summary['real_loops']} real) "
        f"-> {summary['out']} in {summary['build_seconds']} s, {summary['audio_seconds']} s of audio"
    )
    log.info(
        f"fallback: {summary['fallback'] or 'none'}"
        + (
            f" (synthesised: {', '.join(summary['synthesised_categories'])})"
            if summary["synthesised_categories"] and not summary["fallback"]
            else ""
        )
    )
    log.info(f"families: {fam}")
    log.info(f"tags: {tags}")
