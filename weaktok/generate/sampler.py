"""Sampling from a trained model: seed-based in-painting and unconditional generation, both modes one procedure.

The paper's model is a reconstructing U-Net and never says what "unconditional" and "seed-based" generation are
(docs/design.md, what the paper leaves undefined). weaktok defines both as filling a *hole*:

* Seed-based (``seed_based``): the seed clip's log1p spectrogram (loop-tiled or cropped to ``seconds``); the
  hole is its last ``mask_fraction`` (default half).
* Unconditional (``unconditional``): the hole is the whole clip. No seed, no training item.

Flow models (``model.objective: flow``) fill it by integrating the ODE of ``weaktok/model/flow.py``. In-painting
models are trained to denoise and to fill masked spans (``train.corruption``), so they refine noise into sound
(``refine``), K = ``steps`` passes, sigma_k linear from 1 down to 0:
    x_0 = seed where known, z_0 in the hole
    y_k = model(x_k)
    x_{k+1} = seed where known, (1 - sigma_{k+1}) y_k + sigma_{k+1} z_{k+1} in the hole  (fresh prior noise z)
The output is the last y in full: the model's rendering of the known frames and its in-painting of the hole.
The hole starts as prior noise (``weaktok/data/prior.py``: noise shaped like the corpus' log1p spectrogram frames),
not as the zeros training's mask writes: a model trained for minutes learns to leave a zeroed span near-silent,
whereas noise gives it something to refine.

Device: the model, the prior noise (a generator on that device), refinement and guidance run on the model's device,
in fp32. The same seed gives the same outputs on the same device; CPU and CUDA draw different random numbers.
"""

from __future__ import annotations

import numpy as np
import torch

from weaktok.data.prior import sample_prior
from weaktok.generate.guidance import Guidance, guide
from weaktok.model import flow
from weaktok.model.unet import DOWNSAMPLE

MODES = (
    "uncond",
    "seed",
)  # the two generation modes, in this order in every record (val_gen_<mode>_*, Table 1)
STEPS = 6  # model passes per output
MASK_FRACTION = 0.5  # seed-based: the last half of the seed is in-painted


def sigmas(steps: int) -> list[float]:
    """Injected-noise scale per pass: linear from 1 down to 0 (a single pass uses 1)."""
    return [1.0] if steps == 1 else [1.0 - k / (steps - 1) for k in range(steps)]


def is_flow(model) -> bool:
    """True for a ``model.objective: flow`` model (sampled by weaktok/model/flow.py), False for an in-painting one."""
    return bool(getattr(model, "flow", False))


@torch.no_grad()
def refine(
    model,
    known: torch.Tensor,
    hole: torch.Tensor,
    stats: dict,
    steps: int | None = None,
    gen: torch.Generator | None = None,
    guidance: Guidance | None = None,
):
    """known (B, F, T) spectrograms, hole (T,) bool -> (output (B, F, T), ModelOutput of the last pass).

    In-painting models: the refinement above, ``steps`` (default ``STEPS``) passes from ``stats``' prior noise.
    Flow models: the ODE of weaktok/model/flow.py from Gaussian noise, ``steps`` (default ``model.flow.steps``) steps;
    ``stats`` is not used. Runs on known's device (the model and ``stats`` must be there; ``gen`` may be on any
    device), fp32 in and out whatever the model's dtype."""
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
                x = torch.where(
                    hole, (1 - ss[k + 1]) * y + ss[k + 1] * sample_prior(stats, B, T, gen), known
                )
    if guidance is not None:
        y = guide(y, hole, guidance)
    return y, out


def seed_based(
    model,
    spec: torch.Tensor,
    stats: dict,
    mask_fraction: float = MASK_FRACTION,
    steps: int | None = None,
    gen: torch.Generator | None = None,
    guidance: Guidance | None = None,
):
    """spec (B, F, T) seed spectrograms; the last ``mask_fraction`` of the frames is in-painted."""
    return refine(
        model, spec, seed_hole(spec.shape[-1], mask_fraction), stats, steps, gen, guidance
    )


def seed_hole_start(frames: int, mask_fraction: float = MASK_FRACTION) -> int:
    """The first in-painted frame of a seed-based output of ``frames`` frames."""
    return frames - int(round(mask_fraction * frames))


def seed_hole(
    frames: int, mask_fraction: float = MASK_FRACTION, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """(frames,) bool: the last ``mask_fraction`` of the frames."""
    hole = torch.zeros(frames, dtype=torch.bool, device=device)
    hole[seed_hole_start(frames, mask_fraction) :] = True
    return hole


def unconditional(
    model,
    stats: dict,
    n: int,
    frames: int,
    steps: int | None = None,
    gen: torch.Generator | None = None,
    guidance: Guidance | None = None,
):
    """n outputs of ``frames`` frames: the whole clip is the hole (on the device of ``stats``)."""
    dev = stats["mean"].device
    known = torch.zeros(n, stats["mean"].shape[0], frames, device=dev)
    return refine(
        model, known, torch.ones(frames, dtype=torch.bool, device=dev), stats, steps, gen, guidance
    )


def chunk_start_frames(out, i: int) -> np.ndarray:
    """Chunk starts of batch item i in spectrogram frames (bottleneck frame x 8)."""
    starts = out.chunk.chunk_starts[i][out.chunk.chunk_mask[i]]  # (C_i,)
    return starts.cpu().numpy() * DOWNSAMPLE
