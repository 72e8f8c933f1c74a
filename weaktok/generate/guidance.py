"""L-Score guidance at generation time, and the statistics cached beside a model file.

L-Score guidance (``guide``, optional: ``--guidance-steps N``, default 0 = off). After the last pass, the hole gets a
per-item, per-frequency log-gain g (B, F, 1) (time-constant: it reshapes the spectral envelope and cannot create
onsets), fitted by N Adam steps so that the outputs' *differentiable* L-Score matches, in eq. 8's batch mean and
spread, the differentiable L-Score of real training audio of the same length (``surrogate_target``). Only the
timbral and structural terms steer it: timbral is the exact formula and structural tracks the exact term closely,
whereas the rhythm surrogates are rank-calibrated on real audio and an optimiser exploits their gap with librosa on
generated textures (measured in docs/results.md). Guidance is control at generation time, not a property of the
model: evaluate reports outputs with and without it.

The prior (``weaktok/data/prior.py``) is cached as ``spectrum.pt`` beside the model.pt (training writes it there when
it used the prior for its masked spans). Statistics cached beside model.pt are stored on the CPU, so a run folder
works on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from weaktok.data.loader import eval_loader
from weaktok.data.prior import PRIOR_COMPONENTS, corpus_spectrum
from weaktok.lscore.differentiable import DifferentiableLScore
from weaktok.lscore.loss import distribution_loss
from weaktok.model.weights import Loaded

GUIDE_TERMS = (0, 3)  # L-Score guidance steers timbral and structural (see the module docstring)
GUIDE_LR = 0.05  # Adam step on the log1p gain (log1p units ~ 0-6)
SURROGATE_ITEMS = 96  # training items behind the guidance target
# the prior statistics, cached beside model.pt (training writes it there with fill: prior)
SPECTRUM_FILE = "spectrum.pt"


# ----------------------------------------------------------------------------------------------------------
# Statistics cached beside model.pt


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


def cached_spectrum(
    loaded: Loaded, shards: str | Path | None = None, components: int = PRIOR_COMPONENTS
) -> dict:
    """corpus_spectrum of the model's training shards, cached beside its model.pt (spectrum.pt; training writes it
    when it used the prior)."""
    return cached_beside(
        loaded,
        SPECTRUM_FILE,
        lambda: corpus_spectrum(
            shards or loaded.cfg.data.shards,
            loaded.front,
            loaded.cfg.audio.clip_seconds,
            components,
        ),
        lambda s: (
            s["mean"].shape[0] == loaded.front.n_freqs and s["components"].shape[0] == components
        ),
    )


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
def surrogate_target(
    loaded: Loaded,
    lscore: torch.nn.Module,
    shards: str | Path,
    seconds: float,
    max_items: int = SURROGATE_ITEMS,
) -> dict:
    """Mean and std of the differentiable L-Score (``lscore``) over training-split crops of ``seconds``, cached
    beside model.pt (surrogate_<seconds>s.pt). ``lscore`` must be on the model's device."""

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


def make_guidance(
    loaded: Loaded, shards: str | Path, seconds: float, steps: int
) -> Guidance | None:
    if steps <= 0:
        return None
    cfg = loaded.cfg
    dl = DifferentiableLScore(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length).to(
        loaded.device
    )
    t = surrogate_target(loaded, dl, shards, seconds)
    return Guidance(dl, loaded.front, t["mean"], t["std"], steps)


def guide(y: torch.Tensor, hole: torch.Tensor, g: Guidance) -> torch.Tensor:
    """y (B, F, T) -> y with a fitted per-item, per-frequency log1p gain added inside the hole (T,); on y's device
    (``g`` must be there too: make_guidance puts it on the model's)."""
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
