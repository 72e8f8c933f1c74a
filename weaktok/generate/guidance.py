"""L-Score guidance at generation time, and the statistics cached beside a model file.

L-Score guidance (``guide``, optional: ``--guidance-steps N``, default 0 = off). After the last pass, the hole gets a
per-item, per-frequency log-gain g (B, F, 1) (time-constant: it reshapes the spectral envelope and cannot create
onsets), fitted by N Adam steps so that the outputs' *differentiable* L-Score matches, in eq. 8's batch mean and
spread, the differentiable L-Score of real training audio of the same length (``surrogate_target``). Only the
timbral and structural terms steer it: timbral is the exact formula and structural tracks the exact term closely,
whereas the rhythm surrogates are rank-calibrated on real audio and an optimiser exploits their gap with librosa on
generated textures (measured in docs/results.md). Guidance is control at generation time, not a property of the
model: evaluate reports outputs with and without it.

The prior (``weaktok/data/prior.py``) and the guidance targets sit beside the weights as safetensors files: a model
folder (weaktok/model/artifact.py) carries them, so generation needs no shards; for an older run folder they are
computed from the training shards and cached there (older caches: spectrum.pt, surrogate_<s>s.pt, still read).
They are stored on the CPU, so a folder works on any device.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from weaktok.data.loader import eval_loader
from weaktok.data.manifest import ShardsError
from weaktok.data.prior import PRIOR_COMPONENTS, corpus_spectrum
from weaktok.lscore.differentiable import DifferentiableLScore
from weaktok.lscore.loss import distribution_loss
from weaktok.model.artifact import PRIOR, read_stats, surrogate_name, write_tensors
from weaktok.model.weights import Loaded, ModelFileError

GUIDE_TERMS = (0, 3)  # L-Score guidance steers timbral and structural (see the module docstring)
GUIDE_LR = 0.05  # Adam step on the log1p gain (log1p units ~ 0-6)
SURROGATE_ITEMS = 96  # training items behind the guidance target
# an older run's prior cache (training writes it there with fill: prior); model folders hold prior.safetensors
SPECTRUM_FILE = "spectrum.pt"


# ----------------------------------------------------------------------------------------------------------
# Statistics beside the weights


def cached_beside(
    loaded: Loaded,
    name: str,
    compute,
    valid=lambda stats: True,
    legacy: str = "",
    save: bool = True,
) -> dict:
    """The statistics ``name`` (a file stem: ``artifact.PRIOR``, ``artifact.surrogate_name(s)``) beside the
    model's weights: the model folder's ``<name>.safetensors``, else an older run's ``legacy`` (default
    ``<name>.pt``), when present and ``valid``; else computed from the training shards and, with ``save``, cached
    there as ``<name>.safetensors`` (a read-only folder is fine: they are recomputed next time). Stored on the
    CPU, returned on the model's device. Shards that are not here: ModelFileError saying how to get the file."""
    folder, stem = loaded.path.parent, name.removesuffix(".pt")  # a ".pt" name: its older cache
    stats = read_stats(folder, stem)
    old = folder / (legacy or f"{stem}.pt")
    if stats is None and old.is_file():
        stats = torch.load(old, map_location="cpu", weights_only=True)
    if stats is None or not valid(stats):
        try:
            stats = {k: v.cpu() for k, v in compute().items()}
        except (FileNotFoundError, ShardsError) as e:
            raise ModelFileError(
                f"{folder} has no {stem}.safetensors and it cannot be computed here ({e}); export the run "
                f"where its training shards are: `weaktok export RUN --out DIR` (docs/api.md)"
            ) from None
        if save:
            try:
                write_tensors(folder / f"{stem}.safetensors", stats)
            except OSError:
                pass
    return {k: v.to(loaded.device) for k, v in stats.items()}


def cached_spectrum(
    loaded: Loaded,
    shards: str | Path | None = None,
    components: int = PRIOR_COMPONENTS,
    save: bool = True,
) -> dict:
    """corpus_spectrum of the model's training shards, read from beside its weights when there (prior.safetensors;
    an older run's spectrum.pt, which training writes when it used the prior)."""
    return cached_beside(
        loaded,
        PRIOR,
        lambda: corpus_spectrum(
            shards or loaded.cfg.data.shards,
            loaded.front,
            loaded.cfg.audio.clip_seconds,
            components,
        ),
        lambda s: (
            s["mean"].shape[0] == loaded.front.n_freqs and s["components"].shape[0] == components
        ),
        legacy=SPECTRUM_FILE,
        save=save,
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
    save: bool = True,
) -> dict:
    """Mean and std of the differentiable L-Score (``lscore``) over training-split crops of ``seconds``, read from
    or cached beside the weights (surrogate_<seconds>s.safetensors; older runs: .pt). ``lscore`` must be on the
    model's device."""

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

    return cached_beside(loaded, surrogate_name(seconds), compute, save=save)


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
