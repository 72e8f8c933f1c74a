"""The paper's two-phase curriculum as a pure function of training progress (in epochs, fractional).

    phase 1  [0, warmup_epochs):                     w_L = 0,                w_recon = 1
    phase 2  [warmup, warmup + anneal_epochs):       w_L: 0 -> final_w_L,    w_recon: 1 -> final_w_recon  (linear)
    after:                                           w_L = final_w_L,        w_recon = final_w_recon

Paper setting: 10 + 40 epochs, final w_recon 0.1. Being a pure function of progress, the weights after a resume
are exactly what they were before the interruption.
"""

from __future__ import annotations

from dataclasses import dataclass

from weaktok.config import CurriculumConfig


@dataclass(frozen=True)
class Weights:
    w_recon: float
    w_L: float
    w_ratio: float
    phase: int  # 1 = reconstruction only, 2 = annealing, 3 = done annealing


def weights_at(progress: float, cfg: CurriculumConfig) -> Weights:
    """progress: epochs completed so far, e.g. 12.5 = halfway through the 13th epoch."""
    if progress < cfg.warmup_epochs:
        return Weights(1.0, 0.0, cfg.ratio_weight, phase=1)
    if cfg.anneal_epochs > 0 and progress < cfg.warmup_epochs + cfg.anneal_epochs:
        a = (progress - cfg.warmup_epochs) / cfg.anneal_epochs  # in [0, 1)
        return Weights(
            1.0 + a * (cfg.final_w_recon - 1.0), a * cfg.final_w_L, cfg.ratio_weight, phase=2
        )
    return Weights(cfg.final_w_recon, cfg.final_w_L, cfg.ratio_weight, phase=3)
