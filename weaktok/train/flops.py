"""Model FLOPs utilisation (MFU) of a training run: the FLOPs of one optimizer step, counted once with
``torch.utils.flop_counter.FlopCounterMode``, over the step time and the device's peak FLOP/s.

    flops = StepFlops.count(cfg, model, front, lscore_fn, manifest, dist)  # None: MFU off
    record.update(flops.fields(step_time_s))  # model_flops_per_step, peak_flops, mfu

The peak is ``metrics.peak_tflops`` when set, else the dense bf16 peak of a known GPU (``PEAK_TFLOPS``, matched
against ``torch.cuda.get_device_name``); on a CPU, or an unknown GPU, without ``metrics.peak_tflops`` there is
no MFU (and no FLOP count). ``model_flops`` is shared with ``weaktok bench``.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from weaktok.config import Config
from weaktok.model.flow import flow_batch
from weaktok.train.curriculum import weights_at
from weaktok.train.step import compute_flow_loss, compute_loss

log = logging.getLogger(__name__)

# Dense (no sparsity) bf16 tensor-core peak in TFLOP/s from the vendors' data sheets; the first name that is a
# substring of the device name wins, so the more specific names come first.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("B200", 2250.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
)


def peak_flops(cfg: Config, device: torch.device) -> float | None:
    """The device's peak FLOP/s: ``metrics.peak_tflops`` if set, else a known CUDA GPU's (``PEAK_TFLOPS``);
    None when neither."""
    if cfg.metrics.peak_tflops:
        return cfg.metrics.peak_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = known_peak(name)
    if peak is None:
        log.info(f"no MFU: the peak FLOP/s of {name!r} is unknown; set metrics.peak_tflops")
    return peak


def known_peak(device_name: str) -> float | None:
    """The dense bf16 peak FLOP/s of a GPU called ``device_name`` (``PEAK_TFLOPS``), or None."""
    for known, tflops in PEAK_TFLOPS:
        if known in device_name:
            return tflops * 1e12
    return None


class _Bare(torch.nn.Module):
    """A plain module where the loss functions expect DeepSpeed's engine (they read ``engine.module``)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.module = model

    def forward(self, *args, **kw):
        return self.module(*args, **kw)


def model_flops(model, front, lscore_fn, batch_audio, target, cfg: Config) -> float:
    """FLOPs of one forward + backward of the model and its loss (all terms on, as at the end of the curriculum)
    on ``batch_audio`` (B, samples): counted by FlopCounterMode, not estimated. The gradients it leaves on
    ``model`` are the caller's to clear."""
    spec = front(batch_audio)  # (B, F, T)
    engine = model if hasattr(model, "module") else _Bare(model)
    w = weights_at(1e9, cfg.curriculum)
    with FlopCounterMode(display=False) as counter:
        if cfg.model.objective == "flow":
            gen = torch.Generator(device=spec.device).manual_seed(0)
            fb = flow_batch(engine.module, spec, cfg.model.flow, gen)
            losses, _ = compute_flow_loss(engine, front, lscore_fn, spec, fb, w, target, cfg)
        else:
            losses, _ = compute_loss(engine, front, lscore_fn, spec, spec, w, target, cfg)
        losses.total.backward()
    return float(counter.get_total_flops())


@dataclass
class StepFlops:
    """FLOPs of one optimizer step on one rank (``grad_accum`` micro-batches) and the device's peak FLOP/s."""

    per_step: float
    peak: float

    @classmethod
    def count(cls, cfg: Config, model, front, lscore_fn, manifest: dict, dist) -> StepFlops | None:
        """Rank 0 counts once, on a copy of ``model`` (before DeepSpeed wraps it) and synthetic audio of the
        run's micro-batch shape, on its device; the run's RNG streams are left as they were. None on other
        ranks and when there is no peak (see the module docstring)."""
        device = dist.device
        peak = peak_flops(cfg, device) if dist.is_main else None
        if peak is None:
            return None
        n = int(round(cfg.audio.clip_seconds * cfg.audio.sample_rate))
        gen = torch.Generator().manual_seed(0)
        # (B, samples): one micro-batch of synthetic audio
        audio = (0.1 * torch.randn(cfg.data.batch_size, n, generator=gen)).to(device)
        target = {
            k: torch.tensor(manifest["lscore_target"][k], dtype=torch.float32, device=device)
            for k in ("mean", "std")
        }
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                counted = copy.deepcopy(model).to(device).train()
                micro = model_flops(counted, front, lscore_fn, audio, target, cfg)
            del counted
        except Exception as e:  # a diagnostic: it never stops the run
            log.warning(f"no MFU: counting the step's FLOPs failed ({type(e).__name__}: {e})")
            return None
        if device.type == "cuda":  # the memory gauges report training's memory, not the count's
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        flops = cls(per_step=micro * cfg.train.grad_accum, peak=peak)
        log.info(f"MFU: {flops.per_step:.3g} FLOPs per step, peak {peak / 1e12:g} TFLOP/s")
        return flops

    def fields(self, step_time_s: float) -> dict:
        """The train record's MFU fields for a window whose mean step time is ``step_time_s``."""
        return {
            "model_flops_per_step": self.per_step,
            "peak_flops": self.peak,
            "mfu": self.per_step / max(step_time_s, 1e-12) / self.peak,
        }
