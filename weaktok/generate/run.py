"""``weaktok generate``: outputs of a trained model as WAV files and spectrogram PNGs with chunk boundaries.

    weaktok generate --checkpoint runs/demo/train --seed-audio loop.wav --out gen/    # seed-based
    weaktok generate --checkpoint runs/demo/train --unconditional --n 8 --out gen/    # unconditional
    weaktok generate ... --device cuda:1    # default: cuda when torch sees a GPU, else cpu

Waveforms come from Griffin-Lim (``SpecFrontEnd.inverse``), ``GL_BATCH`` outputs at a time, on the model's device;
only the finished waveforms come back to the CPU to be written. Per output the command writes ``<name>.wav`` and
``<name>.png`` (the spectrogram with the chunk boundaries of the final pass: vertical lines at chunk starts,
bottleneck frames x 8 -> spectrogram frames), and ``generate.json`` lists them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from weaktok.audio import load_audio, write_wav
from weaktok.device import resolve_device
from weaktok.generate.guidance import cached_spectrum, make_guidance
from weaktok.generate.sampler import (
    MASK_FRACTION,
    STEPS,
    chunk_start_frames,
    is_flow,
    seed_based,
    unconditional,
)
from weaktok.model.weights import Loaded, load_model
from weaktok.plots import plot_spectrogram

GL_BATCH = 16  # outputs per Griffin-Lim call (bounds its memory: 16 x 8 s at n_fft 1024 ~ 0.5 GB)


def waveforms(front, specs: torch.Tensor) -> np.ndarray:
    """(B, F, T) log1p spectrograms -> (B, N) float32 waveforms by Griffin-Lim (``GL_BATCH`` at a time, on the
    spectrograms' device), each scaled to a peak of at most 0.99 (GL can overshoot: scale rather than clip)."""
    out = []
    for first in range(0, len(specs), GL_BATCH):
        for wave in front.inverse(specs[first : first + GL_BATCH]).cpu().numpy():
            peak = float(np.abs(wave).max())
            out.append(wave * (0.99 / peak) if peak > 0.99 else wave)
    return np.stack(out).astype(np.float32, copy=False)


def save_outputs(
    loaded: Loaded, specs: torch.Tensor, out, names: list[str], folder: str | Path, title: str
) -> list[dict]:
    """Griffin-Lim the spectrograms (``GL_BATCH`` at a time, on their device) to <folder>/<name>.wav and draw
    <name>.png; returns one record per output."""
    folder = Path(folder)
    front, sr = loaded.front, loaded.cfg.audio.sample_rate
    records = []
    bar = tqdm(total=len(names), desc="griffin-lim", unit="clip", leave=False)
    for first in range(0, len(names), GL_BATCH):
        waves = waveforms(front, specs[first : first + GL_BATCH])  # (b, N)
        for i, wave in enumerate(waves, first):
            name = names[i]
            write_wav(folder / f"{name}.wav", wave, sr)
            starts = chunk_start_frames(out, i)
            plot_spectrogram(
                specs[i].cpu(),
                starts,
                folder / f"{name}.png",
                front.frame_seconds,
                sr,
                f"{title} {name}",
            )
            records.append(
                {
                    "name": name,
                    "wav": f"{name}.wav",
                    "png": f"{name}.png",
                    "chunks": int(len(starts)),
                    "rms": float(np.sqrt(np.mean(wave**2))),
                }
            )
            bar.update(1)
    bar.close()
    return records


# ----------------------------------------------------------------------------------------------------------
# Seeds from files


def seed_wave(path: str | Path, sr: int, seconds: float) -> np.ndarray:
    """A seed audio file -> (N,) waveform of ``seconds`` at ``sr`` (loop-tiled if shorter, cropped if longer)."""
    y = load_audio(path, sr)  # AudioError names the file
    return np.resize(y, int(round(seconds * sr)))  # tiles a short loop, crops a long one


def seed_spectrogram(path: str | Path, loaded: Loaded, seconds: float) -> torch.Tensor:
    """A seed audio file -> (1, F, T) log1p spectrogram of ``seconds`` (loop-tiled if shorter), on the model's
    device."""
    y = seed_wave(path, loaded.cfg.audio.sample_rate, seconds)
    return loaded.front(torch.from_numpy(y).to(loaded.device))


# ----------------------------------------------------------------------------------------------------------
# The command


def generate(
    checkpoint: str | Path,
    out: str | Path,
    seed_audio: list[str] | None = None,
    n: int = 8,
    seconds: float | None = None,
    steps: int | None = None,
    mask_fraction: float = MASK_FRACTION,
    seed: int = 0,
    shards: str | None = None,
    guidance_steps: int = 0,
    device: str | torch.device | None = None,
) -> dict:
    """Write seed-based outputs (one per ``seed_audio`` file) or ``n`` unconditional ones to ``out``, computed in
    one batch on ``device`` (``weaktok.device.resolve_device``: default cuda when available, else cpu; DeviceError
    when CUDA is asked for and absent)."""
    if (
        (steps is not None and steps < 1)
        or not 0 < mask_fraction <= 1
        or n < 1
        or guidance_steps < 0
    ):
        raise ValueError(
            f"need steps >= 1, 0 < mask_fraction <= 1, n >= 1 and guidance_steps >= 0 (got {steps}, "
            f"{mask_fraction}, {n}, {guidance_steps})"
        )
    device = resolve_device(device)  # before anything is loaded: a missing GPU fails fast
    loaded = load_model(checkpoint, device)
    cfg = loaded.cfg
    seconds = seconds or cfg.audio.clip_seconds
    torch.manual_seed(
        seed
    )  # Griffin-Lim's random phase init draws from the global generator (every device's)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = Path(out)
    stats = cached_spectrum(loaded, shards)
    steps = steps or (cfg.model.flow.steps if is_flow(loaded.model) else STEPS)
    guidance = make_guidance(loaded, shards or cfg.data.shards, seconds, guidance_steps)
    if seed_audio:
        waves = np.stack(
            [seed_wave(p, cfg.audio.sample_rate, seconds) for p in seed_audio]
        )  # (S, N)
        specs = loaded.front(torch.from_numpy(waves).to(device))  # (S, F, T)
        y, mo = seed_based(loaded.model, specs, stats, mask_fraction, steps, gen, guidance)
        names = [f"seed_{i:02d}_{Path(p).stem}" for i, p in enumerate(seed_audio)]
        mode = "seed"
    else:
        frames = loaded.front.num_frames(int(round(seconds * cfg.audio.sample_rate)))
        y, mo = unconditional(loaded.model, stats, n, frames, steps, gen, guidance)
        names = [f"uncond_{i:02d}" for i in range(n)]
        mode = "unconditional"
    records = save_outputs(loaded, y, mo, names, out, mode)
    summary = {
        "mode": mode,
        "checkpoint": str(loaded.path),
        "device": str(device),
        "seconds": seconds,
        "steps": steps,
        "mask_fraction": mask_fraction if seed_audio else None,
        "seed": seed,
        "guidance_steps": guidance_steps,
        "seed_audio": [str(p) for p in seed_audio or []],
        "outputs": records,
    }
    (out / "generate.json").write_text(json.dumps(summary, indent=2))
    return summary
