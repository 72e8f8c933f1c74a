"""Listening clips: the first few outputs of every set ``weaktok evaluate`` scores, as WAV + spectrogram PNG (with
the chunk boundaries the model formed, where a model is involved) and an index, ``<out>/audio/clips.json``, that
the listening page (``weaktok report``) reads.

    keep = ClipKeeper(4)                                   # per (set, mode): the first 4 clips
    keep.add("model0", "seed", waves, specs, keys, out)    # waves (B, n), specs (B, F, T), out: a ModelOutput
    write_clips(keep, out / "audio", front, regions, seeds)

The WAVs are exactly the waveforms Table 1 scored (the same Griffin-Lim call); real data is the clip itself.
Seed-mode PNGs mark where the in-painted (scored) region starts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from weaktok.audio import write_wav
from weaktok.generate.sampler import chunk_start_frames
from weaktok.plots import draw_spectrogram, pyplot, save_figure

CLIPS = 4  # clips per set and mode
MODE_ORDER = (
    "data",
    "uncond",
    "seed",
)  # "data": sets shared by both modes (the clip, the clip through the vocoder)
SET_ORDER = (
    "data",
    "data_vocoder",
    "copy_seed",
    "prior_noise",
)  # then model<i>, model<i>_cut, model<i>_guided

WHAT = {
    "data": "held-out evaluation clip, with the chunk boundaries the model forms on it",
    "data_vocoder": "the same clip's spectrogram through Griffin-Lim, no model: what the vocoder alone loses",
    "copy_seed": "no model: the seed's known part tiled into the hole",
    "prior_noise": "no model: the generation prior's noise through the vocoder (seed mode: in the hole only)",
    "model": "the model's output",
    "model_cut": "the model with its chunk path cut (bottleneck = identity; boundaries computed, not used)",
    "model_guided": "the model's output after L-Score guidance (boundaries: the model's pass before guidance)",
}


def _kind(name: str) -> str:
    """model3_cut -> model_cut; data -> data."""
    return re.sub(r"^model\d+", "model", name)


def _checkpoint(name: str) -> int | None:
    m = re.match(r"^model(\d+)", name)
    return int(m.group(1)) if m else None


class ClipKeeper:
    """The first ``n`` clips of each (set, mode), kept batch by batch during the evaluation pass."""

    def __init__(self, n: int = CLIPS):
        self.n = n
        self.kept: dict[tuple[str, str], list[dict]] = {}

    def add(self, name: str, mode: str, waves, specs, keys, out=None) -> None:
        """waves (B, n) numpy, specs (B, F, T) tensor, keys: B item keys; ``out``: the ModelOutput whose chunks
        to draw (None: no model involved)."""
        if self.n <= 0:
            return
        rows = self.kept.setdefault((name, mode), [])
        for k in range(min(len(keys), self.n - len(rows))):
            rows.append(
                {
                    "key": str(keys[k]),
                    "wave": np.asarray(waves[k], dtype=np.float32),
                    "spec": specs[k].detach().float().cpu().numpy(),
                    "starts": None if out is None else chunk_start_frames(out, k),
                }
            )

    def groups(self) -> list[tuple[str, str]]:
        """(set, mode) in page order: by mode, then baselines, then each checkpoint's sets."""

        def order(sm: tuple[str, str]) -> tuple:
            name, mode = sm
            i = _checkpoint(name)
            rank = SET_ORDER.index(name) if name in SET_ORDER else len(SET_ORDER)
            return (MODE_ORDER.index(mode), rank, i or 0, name)

        return sorted(self.kept, key=order)


def _safe(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", s)


def _plot(row: dict, path: Path, frame_seconds: float, sr: int, title: str, hole_s) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 2.2))
    draw_spectrogram(ax, row["spec"], row["starts"], frame_seconds, sr, title)
    if hole_s is not None:
        ax.axvline(hole_s, color="white", ls="--", lw=1.2)
    save_figure(fig, path)


def write_clips(
    keep: ClipKeeper, folder: str | Path, front, regions, seeds: list[dict]
) -> Path | None:
    """Write every kept clip to ``folder`` (<mode>/<set>_<k>_<key>.wav + .png) and ``folder``/clips.json;
    ``seeds``: table1.json's checkpoint list. Returns the index's path (None when nothing was kept)."""
    folder = Path(folder)
    if not keep.kept:
        (folder / "clips.json").unlink(
            missing_ok=True
        )  # an earlier run's index would describe other outputs
        return None
    sr, fs = regions.sr, front.frame_seconds
    hole_s = regions.hole_frame * fs
    groups = []
    for name, mode in keep.groups():
        i, kind = _checkpoint(name), _kind(name)
        clips = []
        for k, row in enumerate(keep.kept[(name, mode)]):
            stem = f"{mode}/{_safe(name)}_{k}" + (
                "" if mode == "uncond" else f"_{_safe(row['key'])}"
            )
            wave, peak = row["wave"], float(np.abs(row["wave"]).max())
            if (
                peak > 0.99
            ):  # Griffin-Lim can overshoot: scale rather than clip (as weaktok generate does)
                wave = wave * (0.99 / peak)
            write_wav(folder / f"{stem}.wav", wave, sr)
            title = f"{name} {mode} {k}" if mode == "uncond" else f"{name} {row['key']}"
            _plot(row, folder / f"{stem}.png", fs, sr, title, hole_s if mode == "seed" else None)
            clips.append(
                {
                    "key": row["key"] if mode != "uncond" else None,
                    "wav": f"{stem}.wav",
                    "png": f"{stem}.png",
                    "seconds": round(len(wave) / sr, 4),
                    "chunks": None if row["starts"] is None else int(len(row["starts"])),
                    "peak": round(peak, 4),
                    "scaled": peak > 0.99,
                }
            )
        groups.append(
            {
                "set": name,
                "mode": mode,
                "what": WHAT.get(kind, name),
                "checkpoint": None if i is None else seeds[i]["checkpoint"],
                "train_seed": None if i is None else seeds[i]["train_seed"],
                "clips": clips,
            }
        )
    index = {
        "sample_rate": sr,
        "clip_seconds": round(regions.n / sr, 4),
        "hole_start_s": round(hole_s, 4),
        "frame_seconds": fs,
        "modes": {
            "data": "the evaluation clips themselves (both modes start from them)",
            "uncond": "unconditional: the whole output is generated (and scored)",
            "seed": "seed-based: the first part is the seed clip, the rest (after the dashed line) is "
            "in-painted and scored",
        },
        "groups": groups,
    }
    path = folder / "clips.json"
    path.write_text(json.dumps(index, indent=2))
    return path
