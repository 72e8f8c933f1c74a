"""Generation from a trained model: seed-based in-painting and unconditional iterative refinement.

    weaktok generate --checkpoint runs/demo/train --seed-audio loop.wav --out gen/    # seed-based
    weaktok generate --checkpoint runs/demo/train --unconditional --n 8 --out gen/    # unconditional
    weaktok generate ... --device cuda:1    # default: cuda when torch sees a GPU, else cpu

The paper's model is a reconstructing U-Net and never says what "unconditional" and "seed-based" generation are
(DESIGN.md section 6). weaktok defines both as one procedure, in-painting a *hole* by iterative refinement: the
model is trained to denoise and to fill masked spans (``train.corruption``), so it can refine noise into sound.

The prior (``weaktok/prior.py``, cached as ``spectrum.pt`` beside the model.pt; training writes it there when it
used the prior for its masked spans): noise shaped like the corpus' log1p spectrogram frames (mean, principal
spectral shapes with AR(1) time correlation, residual), second-order statistics only.

Refinement (``refine``), K = ``steps`` passes, sigma_k linear from 1 down to 0:
    x_0 = seed where known, z_0 in the hole
    y_k = model(x_k)
    x_{k+1} = seed where known, (1 - sigma_{k+1}) y_k + sigma_{k+1} z_{k+1} in the hole  (fresh prior noise z)
The output is the last y in full: the model's rendering of the known frames and its in-painting of the hole.

* Seed-based (``seed_based``): the seed clip's log1p spectrogram (loop-tiled or cropped to ``seconds``); the
  hole is its last ``mask_fraction`` (default half).
* Unconditional (``unconditional``): the hole is the whole clip. No seed, no training item.

The hole starts as prior noise, not as the zeros training's mask writes: a model trained for minutes learns to
leave a zeroed span near-silent (demo run: in-painting L1 0.51, worse than the 0.24 of simply predicting the
clip's mean spectrum), whereas noise gives it something to refine.

L-Score guidance (``guide``, optional: ``--guidance-steps N``, default 0 = off). After the last pass, the hole gets a
per-item, per-frequency log-gain g (B, F, 1) (time-constant: it reshapes the spectral envelope and cannot create
onsets), fitted by N Adam steps so that the outputs' *differentiable* L-Score matches, in eq. 8's batch mean and
spread, the differentiable L-Score of real training audio of the same length (``surrogate_target``). Only the
timbral and structural terms steer it: timbral is the exact formula and structural tracks the exact term closely,
whereas the rhythm surrogates are rank-calibrated on real audio and an optimiser exploits their gap with librosa on
generated textures (measured on the demo model, 16 unconditional outputs, per-bin guidance on all four terms:
surrogate density 3.9 onsets/s = the target, librosa 5.9, +43 %). Guidance is control at generation time, not a
property of the model: evaluate reports outputs with and without it.

Waveforms come from Griffin-Lim (``SpecFrontEnd.inverse``), ``GL_BATCH`` outputs at a time. Per output the command
writes ``<name>.wav`` and ``<name>.png`` (the spectrogram with the chunk boundaries of the final pass: vertical lines
at chunk starts, bottleneck frames x 8 -> spectrogram frames), and ``generate.json`` lists them.

Device (``device=`` / ``--device``; ``weaktok.device.resolve_device``: default cuda when available, else cpu): the
model, the spectrogram front end, the prior noise (a generator on that device), refinement, guidance and Griffin-Lim
all run there, in fp32; only the finished waveforms come back to the CPU to be written. The same seed gives the same
outputs on the same device; CPU and CUDA draw different random numbers. Statistics cached beside model.pt are stored
on the CPU, so a run folder works on either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weaktok.config import Config, ConfigError, build, validate
from weaktok.prior import PRIOR_COMPONENTS, corpus_spectrum, sample_prior  # noqa: F401 (the prior, re-exported)

DOWNSAMPLE = 8  # spectrogram frames per bottleneck frame (model.DOWNSAMPLE)
STEPS = 6  # model passes per output
MASK_FRACTION = 0.5  # seed-based: the last half of the seed is in-painted
GUIDE_TERMS = (0, 3)  # L-Score guidance steers timbral and structural (see the module docstring)
GUIDE_LR = 0.05  # Adam step on the log1p gain (log1p units ~ 0-6)
SURROGATE_ITEMS = 96  # training items behind the guidance target
GL_BATCH = 16  # outputs per Griffin-Lim call (bounds its memory: 16 x 8 s at n_fft 1024 ~ 0.5 GB)


class CheckpointError(FileNotFoundError):
    """A checkpoint path that does not hold weaktok weights; the message names the file."""


# ----------------------------------------------------------------------------------------------------------
# Loading a trained model


@dataclass
class Loaded:
    model: torch.nn.Module
    cfg: Config
    front: torch.nn.Module  # SpecFrontEnd
    path: Path  # the model.pt read
    device: torch.device = torch.device("cpu")  # where model and front end live


def model_path(checkpoint: str | Path) -> Path:
    """A run folder (-> run/final/model.pt), a final/ folder, or a model.pt file -> the model.pt path."""
    p = Path(checkpoint)
    for cand in (p, p / "model.pt", p / "final" / "model.pt"):
        if cand.is_file():
            return cand
    raise CheckpointError(f"no trained weights at {p}: expected a model.pt file or a run folder holding "
                          f"final/model.pt (train one with `weaktok train --config demo --out {p}`)")


def load_model(checkpoint: str | Path, device: str | torch.device | None = None) -> Loaded:
    """The model and its front end on ``device`` (``resolve_device``: default cuda when available, else cpu)."""
    from weaktok.audio import SpecFrontEnd
    from weaktok.device import resolve_device
    from weaktok.model import build_model

    device = resolve_device(device)
    path = model_path(checkpoint)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
        cfg = build(Config, blob["config"], prefix="")
    except (RuntimeError, KeyError, TypeError, EOFError, ConfigError) as e:
        raise CheckpointError(f"{path}: not a weaktok model file ({type(e).__name__}: {e})") from None
    validate(cfg)
    front = SpecFrontEnd(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length,
                         cfg.lscore.griffin_lim_iters).to(device)
    model = build_model(cfg.model, front.n_freqs).to(device)
    model.load_state_dict(blob["model"])
    model.eval()
    return Loaded(model, cfg, front, path, device)


# ----------------------------------------------------------------------------------------------------------
# The prior (weaktok/prior.py), cached per model


def cached_beside(loaded: Loaded, name: str, compute, valid=lambda stats: True) -> dict:
    """Statistics cached as ``name`` beside the model's model.pt: loaded when present and ``valid``, else computed
    and saved (a read-only run folder is fine: they are recomputed next time). Stored on the CPU, returned on the
    model's device."""
    cache = loaded.path.parent / name
    stats = torch.load(cache, map_location="cpu", weights_only=True) if cache.is_file() else None
    if stats is None or not valid(stats):
        stats = {k: v.cpu() for k, v in compute().items()}
        try:
            torch.save(stats, cache)
        except OSError:
            pass
    return {k: v.to(loaded.device) for k, v in stats.items()}


def cached_spectrum(loaded: Loaded, shards: str | Path | None = None, components: int = PRIOR_COMPONENTS) -> dict:
    """corpus_spectrum of the model's training shards, cached beside its model.pt (spectrum.pt; training writes it
    when it used the prior)."""
    return cached_beside(
        loaded, "spectrum.pt",
        lambda: corpus_spectrum(shards or loaded.cfg.data.shards, loaded.front, loaded.cfg.audio.clip_seconds,
                                components),
        lambda s: s["mean"].shape[0] == loaded.front.n_freqs and s["components"].shape[0] == components)


# ----------------------------------------------------------------------------------------------------------
# L-Score guidance


@dataclass
class Guidance:
    lscore: torch.nn.Module  # DifferentiableLScore of the model's STFT
    front: torch.nn.Module  # SpecFrontEnd (log1p spectrogram -> power)
    mean: torch.Tensor  # (4,) target: differentiable L-Score of real audio of the output length
    std: torch.Tensor  # (4,)
    steps: int


@torch.no_grad()
def surrogate_target(loaded: Loaded, lscore: torch.nn.Module, shards: str | Path, seconds: float,
                     max_items: int = SURROGATE_ITEMS) -> dict:
    """Mean and std of the differentiable L-Score (``lscore``) over training-split crops of ``seconds``, cached
    beside model.pt (surrogate_<seconds>s.pt). ``lscore`` must be on the model's device."""
    from weaktok.data import eval_loader

    def compute() -> dict:
        front, scores = loaded.front, []
        for batch in eval_loader(str(shards), "train", 16, seconds):
            scores.append(lscore(front.power(front(batch["audio"].to(loaded.device)))))  # (B, 4)
            if sum(len(s) for s in scores) >= max_items:
                break
        if not scores:
            raise ValueError(f"no items in the train split of {shards}")
        L = torch.cat(scores)
        return {"mean": L.mean(0), "std": L.std(0), "n": torch.tensor(len(L))}

    return cached_beside(loaded, f"surrogate_{seconds:g}s.pt", compute)


def make_guidance(loaded: Loaded, shards: str | Path, seconds: float, steps: int) -> Guidance | None:
    if steps <= 0:
        return None
    from weaktok.lscore.differentiable import DifferentiableLScore

    cfg = loaded.cfg
    dl = DifferentiableLScore(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length).to(loaded.device)
    t = surrogate_target(loaded, dl, shards, seconds)
    return Guidance(dl, loaded.front, t["mean"], t["std"], steps)


def guide(y: torch.Tensor, hole: torch.Tensor, g: Guidance) -> torch.Tensor:
    """y (B, F, T) -> y with a fitted per-item, per-frequency log1p gain added inside the hole (T,); on y's device
    (``g`` must be there too: make_guidance puts it on the model's)."""
    from weaktok.lscore.loss import distribution_loss

    y, hole, terms = y.detach(), hole.to(y.device), list(GUIDE_TERMS)
    gain = torch.zeros(y.shape[0], y.shape[1], 1, device=y.device, requires_grad=True)  # (B, F, 1)
    opt = torch.optim.Adam([gain], lr=GUIDE_LR)
    with torch.enable_grad():
        for _ in range(g.steps):
            z = torch.where(hole, (y + gain).clamp_min(0), y)
            L = g.lscore(g.front.power(z))[:, terms]  # (B, 2)
            loss = distribution_loss(L, g.mean[terms], g.std[terms], 1.0, 0.5)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return torch.where(hole, (y + gain.detach()).clamp_min(0), y)


# ----------------------------------------------------------------------------------------------------------
# Refinement and the two modes


def sigmas(steps: int) -> list[float]:
    """Injected-noise scale per pass: linear from 1 down to 0 (a single pass uses 1)."""
    return [1.0] if steps == 1 else [1.0 - k / (steps - 1) for k in range(steps)]


def is_flow(model) -> bool:
    """True for a ``model.objective: flow`` model (sampled by weaktok/flow.py), False for an in-painting one."""
    return bool(getattr(model, "flow", False))


@torch.no_grad()
def refine(model, known: torch.Tensor, hole: torch.Tensor, stats: dict, steps: int | None = None,
           gen: torch.Generator | None = None, guidance: Guidance | None = None):
    """known (B, F, T) spectrograms, hole (T,) bool -> (output (B, F, T), ModelOutput of the last pass).

    In-painting models: the refinement above, ``steps`` (default ``STEPS``) passes from ``stats``' prior noise.
    Flow models: the ODE of weaktok/flow.py from Gaussian noise, ``steps`` (default ``model.flow.steps``) steps;
    ``stats`` is not used. Runs on known's device (the model and ``stats`` must be there; ``gen`` may be on any
    device), fp32 in and out whatever the model's dtype."""
    from weaktok import flow

    hole = hole.to(known.device)
    if is_flow(model):
        y, out = flow.sample(model, known, ~hole, model.cfg.flow, gen, steps)
    else:
        B, _, T = known.shape
        dtype = next((p.dtype for p in model.parameters()), torch.float32)
        ss = sigmas(steps or STEPS) + [0.0]
        x = torch.where(hole, sample_prior(stats, B, T, gen), known)  # (B, F, T)
        for k in range(steps or STEPS):
            out = model(x.to(dtype))
            y = out.recon.float().clamp_min(0)
            if ss[k + 1] > 0:
                x = torch.where(hole, (1 - ss[k + 1]) * y + ss[k + 1] * sample_prior(stats, B, T, gen), known)
    if guidance is not None:
        y = guide(y, hole, guidance)
    return y, out


def seed_based(model, spec: torch.Tensor, stats: dict, mask_fraction: float = MASK_FRACTION,
               steps: int | None = None, gen: torch.Generator | None = None, guidance: Guidance | None = None):
    """spec (B, F, T) seed spectrograms; the last ``mask_fraction`` of the frames is in-painted."""
    return refine(model, spec, seed_hole(spec.shape[-1], mask_fraction), stats, steps, gen, guidance)


def seed_hole_start(frames: int, mask_fraction: float = MASK_FRACTION) -> int:
    """The first in-painted frame of a seed-based output of ``frames`` frames."""
    return frames - int(round(mask_fraction * frames))


def seed_hole(frames: int, mask_fraction: float = MASK_FRACTION, device: torch.device | str = "cpu") -> torch.Tensor:
    """(frames,) bool: the last ``mask_fraction`` of the frames."""
    hole = torch.zeros(frames, dtype=torch.bool, device=device)
    hole[seed_hole_start(frames, mask_fraction):] = True
    return hole


def unconditional(model, stats: dict, n: int, frames: int, steps: int | None = None,
                  gen: torch.Generator | None = None, guidance: Guidance | None = None):
    """n outputs of ``frames`` frames: the whole clip is the hole (on the device of ``stats``)."""
    dev = stats["mean"].device
    known = torch.zeros(n, stats["mean"].shape[0], frames, device=dev)
    return refine(model, known, torch.ones(frames, dtype=torch.bool, device=dev), stats, steps, gen, guidance)


# ----------------------------------------------------------------------------------------------------------
# Outputs: spectrogram PNG with chunk boundaries, WAV


def chunk_start_frames(out, i: int) -> np.ndarray:
    """Chunk starts of batch item i in spectrogram frames (bottleneck frame x 8)."""
    starts = out.chunk.chunk_starts[i][out.chunk.chunk_mask[i]]  # (C_i,)
    return starts.cpu().numpy() * DOWNSAMPLE


def save_outputs(loaded: Loaded, specs: torch.Tensor, out, names: list[str], folder: str | Path,
                 title: str) -> list[dict]:
    """Griffin-Lim the spectrograms (``GL_BATCH`` at a time, on their device) to <folder>/<name>.wav and draw
    <name>.png; returns one record per output."""
    from tqdm import tqdm

    from weaktok.audio import write_wav
    from weaktok.report import plot_spectrogram

    folder = Path(folder)
    front, sr = loaded.front, loaded.cfg.audio.sample_rate
    records = []
    bar = tqdm(total=len(names), desc="griffin-lim", unit="clip", leave=False)
    for first in range(0, len(names), GL_BATCH):
        waves = front.inverse(specs[first : first + GL_BATCH]).cpu().numpy()  # (b, N)
        for i, wave in enumerate(waves, first):
            name, peak = names[i], float(np.abs(wave).max())
            if peak > 0.99:  # GL can overshoot: scale rather than clip
                wave = wave * (0.99 / peak)
            write_wav(folder / f"{name}.wav", wave, sr)
            starts = chunk_start_frames(out, i)
            plot_spectrogram(specs[i].cpu(), starts, folder / f"{name}.png", front.frame_seconds, sr,
                             f"{title} {name}")
            records.append({"name": name, "wav": f"{name}.wav", "png": f"{name}.png", "chunks": int(len(starts)),
                            "rms": float(np.sqrt(np.mean(wave ** 2)))})
            bar.update(1)
    bar.close()
    return records


# ----------------------------------------------------------------------------------------------------------
# Seeds from files


def seed_wave(path: str | Path, sr: int, seconds: float) -> np.ndarray:
    """A seed audio file -> (N,) waveform of ``seconds`` at ``sr`` (loop-tiled if shorter, cropped if longer)."""
    from weaktok.audio import load_audio

    y = load_audio(path, sr)  # AudioError names the file
    return np.resize(y, int(round(seconds * sr)))  # tiles a short loop, crops a long one


def seed_spectrogram(path: str | Path, loaded: Loaded, seconds: float) -> torch.Tensor:
    """A seed audio file -> (1, F, T) log1p spectrogram of ``seconds`` (loop-tiled if shorter), on the model's
    device."""
    y = seed_wave(path, loaded.cfg.audio.sample_rate, seconds)
    return loaded.front(torch.from_numpy(y).to(loaded.device))


# ----------------------------------------------------------------------------------------------------------
# The command


def generate(checkpoint: str | Path, out: str | Path, seed_audio: list[str] | None = None, n: int = 8,
             seconds: float | None = None, steps: int | None = None, mask_fraction: float = MASK_FRACTION,
             seed: int = 0, shards: str | None = None, guidance_steps: int = 0,
             device: str | torch.device | None = None) -> dict:
    """Write seed-based outputs (one per ``seed_audio`` file) or ``n`` unconditional ones to ``out``, computed in
    one batch on ``device`` (``weaktok.device.resolve_device``: default cuda when available, else cpu; DeviceError
    when CUDA is asked for and absent)."""
    from weaktok.device import resolve_device

    if (steps is not None and steps < 1) or not 0 < mask_fraction <= 1 or n < 1 or guidance_steps < 0:
        raise ValueError(f"need steps >= 1, 0 < mask_fraction <= 1, n >= 1 and guidance_steps >= 0 (got {steps}, "
                         f"{mask_fraction}, {n}, {guidance_steps})")
    device = resolve_device(device)  # before anything is loaded: a missing GPU fails fast
    loaded = load_model(checkpoint, device)
    cfg = loaded.cfg
    seconds = seconds or cfg.audio.clip_seconds
    torch.manual_seed(seed)  # Griffin-Lim's random phase init draws from the global generator (every device's)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = Path(out)
    stats = cached_spectrum(loaded, shards)
    steps = steps or (cfg.model.flow.steps if is_flow(loaded.model) else STEPS)
    guidance = make_guidance(loaded, shards or cfg.data.shards, seconds, guidance_steps)
    if seed_audio:
        waves = np.stack([seed_wave(p, cfg.audio.sample_rate, seconds) for p in seed_audio])  # (S, N)
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
    summary = {"mode": mode, "checkpoint": str(loaded.path), "device": str(device), "seconds": seconds, "steps": steps,
               "mask_fraction": mask_fraction if seed_audio else None, "seed": seed, "guidance_steps": guidance_steps,
               "seed_audio": [str(p) for p in seed_audio or []], "outputs": records}
    (out / "generate.json").write_text(json.dumps(summary, indent=2))
    return summary
