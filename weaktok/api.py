"""The Python API over a trained model (docs/api.md): load a model folder, generate, continue, reconstruct, encode.

    from weaktok import WeakTok
    tok = WeakTok.from_pretrained("models/demo")           # a model folder (weaktok export), or a run folder
    audio = tok.generate(n=2, seconds=4.0, seed=0)          # (2, N) float32 at tok.sample_rate
    tokens = tok.encode(wave, sr)                           # the weak tokens: chunk starts (s) + embeddings
    export("runs/demo/train", "models/demo")                # what `weaktok export RUN --out DIR` runs

Waveforms go in and come out as float32 numpy arrays, mono, at the model's sample rate (``sample_rate``); inputs
at another rate are resampled (``weaktok.audio.resample``: torchaudio). The methods run the code paths of
``weaktok generate`` (weaktok/generate/sampler.py, Griffin-Lim in weaktok/generate/run.py): the same seed on the
same device gives the same outputs as the command. Everything a method reads sits in the model folder; an older
run folder computes the statistics from its training shards on first use (weaktok/generate/guidance.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from weaktok.audio import resample
from weaktok.generate.export import export_model as export
from weaktok.generate.guidance import cached_spectrum, make_guidance
from weaktok.generate.run import waveforms
from weaktok.generate.sampler import MASK_FRACTION, is_flow, seed_based, unconditional
from weaktok.model import flow
from weaktok.model.unet import DOWNSAMPLE
from weaktok.model.weights import Loaded, load_model

__all__ = ["WeakTok", "WeakTokens", "export"]


@dataclass
class WeakTokens:
    """The weak tokens of one clip: content-driven chunks of the bottleneck, in time order."""

    # (C,) float seconds: where each chunk starts (the first at 0), strictly increasing
    boundaries: np.ndarray
    # (C, D) float32: each chunk's mean-pooled bottleneck frames (what the Transformer reads)
    embeddings: np.ndarray
    duration: float  # seconds of the encoded clip

    @property
    def n_chunks(self) -> int:
        return len(self.boundaries)


class WeakTok:
    """A trained weaktok model with its front end and generation statistics, on one device."""

    def __init__(self, loaded: Loaded):
        self.loaded = loaded
        # the prior statistics: read from the model folder (an older run: computed from its shards once)
        self.prior = cached_spectrum(loaded)

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device | None = None) -> WeakTok:
        """A model folder (``weaktok export``, or a run's final/), a run folder or a model.pt, on ``device``
        (default: cuda when available, else cpu). ModelFileError / ArtifactError name what is missing."""
        return cls(load_model(path, device))

    @property
    def sample_rate(self) -> int:
        return self.loaded.cfg.audio.sample_rate

    @property
    def clip_seconds(self) -> float:
        return self.loaded.cfg.audio.clip_seconds

    @property
    def device(self) -> torch.device:
        return self.loaded.device

    # ------------------------------------------------------------------------------------------------------
    # Generation

    def _generator(self, seed: int) -> torch.Generator:
        torch.manual_seed(seed)  # Griffin-Lim's random phase init draws from the global generator
        return torch.Generator(device=self.device).manual_seed(seed)

    def _guidance(self, seconds: float, steps: int):
        return make_guidance(self.loaded, self.loaded.cfg.data.shards, seconds, steps)

    def generate(
        self,
        n: int = 1,
        seconds: float | None = None,
        seed: int = 0,
        steps: int | None = None,
        guidance_steps: int = 0,
    ) -> np.ndarray:
        """(n, N) unconditional outputs of ``seconds`` (default: the model's clip length), as
        ``weaktok generate --unconditional --n n``."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        seconds = seconds or self.clip_seconds
        gen = self._generator(seed)
        frames = self.loaded.front.num_frames(int(round(seconds * self.sample_rate)))
        guidance = self._guidance(seconds, guidance_steps)
        y, _ = unconditional(self.loaded.model, self.prior, n, frames, steps, gen, guidance)
        return waveforms(self.loaded.front, y)

    def continue_audio(
        self,
        wav,
        sr: int,
        seconds: float | None = None,
        mask_fraction: float = MASK_FRACTION,
        seed: int = 0,
        steps: int | None = None,
        guidance_steps: int = 0,
    ) -> np.ndarray:
        """(N,) a clip of ``seconds`` (default: the clip length) whose first part is ``wav`` (loop-tiled if
        shorter, cropped if longer) and whose last ``mask_fraction`` the model writes, as
        ``weaktok generate --seed-audio``. The whole clip is the model's rendering."""
        if not 0 < mask_fraction <= 1:
            raise ValueError(f"mask_fraction must be in (0, 1], got {mask_fraction}")
        seconds = seconds or self.clip_seconds
        y = np.resize(self._mono(wav, sr), int(round(seconds * self.sample_rate)))  # as seed_wave
        gen = self._generator(seed)
        spec = self.loaded.front(torch.from_numpy(y).to(self.device))  # (1, F, T)
        guidance = self._guidance(seconds, guidance_steps)
        out, _ = seed_based(
            self.loaded.model, spec, self.prior, mask_fraction, steps, gen, guidance
        )
        return waveforms(self.loaded.front, out)[0]

    # ------------------------------------------------------------------------------------------------------
    # One pass over real audio

    def _mono(self, wav, sr: int) -> np.ndarray:
        y = wav.detach().cpu().numpy() if isinstance(wav, torch.Tensor) else np.asarray(wav)
        if y.ndim != 1 or y.size == 0:
            raise ValueError(f"expected a mono waveform of shape (N,), got shape {y.shape}")
        return resample(y.astype(np.float32, copy=False), sr, self.sample_rate)

    @torch.no_grad()
    def _forward(self, wav, sr: int):
        """(waveform (N,), spectrogram (1, F, T), ModelOutput) of one pass over the clip: in-painting models see
        it whole; flow models see the clean clip at t = 1 with nothing marked known (as evaluation's chunks)."""
        y = self._mono(wav, sr)
        spec = self.loaded.front(torch.from_numpy(y).to(self.device))  # (1, F, T)
        model = self.loaded.model
        if not is_flow(model):
            return y, spec, model(spec)
        nothing = torch.zeros(1, spec.shape[-1], dtype=torch.bool, device=self.device)
        t = torch.ones(1, device=self.device)
        return y, spec, model(flow.normalise(model, spec), t=t, known=nothing)

    def reconstruct(self, wav, sr: int, seed: int = 0) -> np.ndarray:
        """(N',) the model's rendering of ``wav`` (N' = its length at the model's rate, rounded down to a hop).
        In-painting models: their output for the whole clip. Flow models: the one-step clean estimate at t = 1
        (for ``flow.predict: velocity`` that is the input itself)."""
        _, spec, out = self._forward(wav, sr)
        rec = out.recon.float().clamp_min(0)
        if is_flow(self.loaded.model):
            t = torch.ones(1, device=self.device)
            x = flow.normalise(self.loaded.model, spec)
            rec = flow.denormalise(
                self.loaded.model, flow.to_clean(out.recon, x, t, self.loaded.model.cfg.flow)
            )
        torch.manual_seed(seed)  # Griffin-Lim's random phase init draws from the global generator
        return waveforms(self.loaded.front, rec)[0]

    def encode(self, wav, sr: int) -> WeakTokens:
        """The weak tokens of ``wav``: the bottleneck's chunks (evaluation-mode boundaries, no sampling)."""
        y, _, out = self._forward(wav, sr)
        co = out.chunk
        keep = co.chunk_mask[0]  # (C,)
        frames = co.chunk_starts[0][keep].cpu().numpy() * DOWNSAMPLE  # spectrogram frames
        return WeakTokens(
            boundaries=frames * self.loaded.front.frame_seconds,
            embeddings=co.chunks[0][keep].float().cpu().numpy(),
            duration=len(y) / self.sample_rate,
        )
