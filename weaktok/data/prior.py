"""The generation prior, "noise shaped like the corpus" (docs/data.md), shared by generation and training.

Over a split's log1p spectrogram frames: the mean m(f), the top k principal spectral shapes u_j(f) with their std
s_j and lag-1 (frame-to-frame) correlation r_j, and the residual std e(f). A sample is
    z(f, t) = m(f) + sum_j s_j c_j(t) u_j(f) + e(f) n(f, t),   c_j an AR(1) with correlation r_j, n ~ N(0, 1)
clamped at 0: second-order statistics only, so no training item can be reproduced (k = 0: the mean spectrum +
white noise). Generation refines such noise into sound (weaktok/generate/sampler.py); training with
``train.corruption.fill: prior`` shows the model the same noise in its masked spans (weaktok/train/step.py).
"""

from __future__ import annotations

from pathlib import Path

import torch

from weaktok.data.loader import eval_loader

PRIOR_COMPONENTS = 16  # principal spectral shapes (0: mean spectrum + white noise)


@torch.no_grad()
def corpus_spectrum(
    shards: str | Path,
    front,
    clip_seconds: float,
    components: int = PRIOR_COMPONENTS,
    split: str = "train",
    max_items: int = 512,
) -> dict[str, torch.Tensor]:
    """Second-order statistics of the log1p spectrogram frames of a split (the prior noise).

    Returns mean (F,), the top ``components`` principal spectral shapes (k, F) with their std (k,) and
    frame-to-frame (lag-1) correlation (k,), and the per-frequency std they leave unexplained (F,); computed on
    the front end's device, and returned there."""
    F, dev = front.n_freqs, front.device
    s1, s2 = (
        torch.zeros(F, dtype=torch.float64, device=dev),
        torch.zeros(F, F, dtype=torch.float64, device=dev),
    )
    lag, n, n_lag, items = torch.zeros(F, F, dtype=torch.float64, device=dev), 0, 0, 0
    for batch in eval_loader(str(shards), split, 16, clip_seconds):
        x = front(batch["audio"].to(dev)).transpose(1, 2).double()  # (B, T, F)
        flat = x.reshape(-1, F)  # (B*T, F)
        s1 += flat.sum(0)
        s2 += flat.T @ flat
        lag += torch.einsum("btf,btg->fg", x[:, :-1], x[:, 1:])
        n, n_lag, items = (
            n + flat.shape[0],
            n_lag + x.shape[0] * (x.shape[1] - 1),
            items + x.shape[0],
        )
        if items >= max_items:
            break
    if not n:
        raise ValueError(f"no items in the {split} split of {shards}")
    mean = s1 / n
    cov = s2 / n - torch.outer(mean, mean)  # (F, F)
    cov1 = lag / n_lag - torch.outer(mean, mean)  # (F, F) lag-1 cross-covariance
    var, vecs = torch.linalg.eigh(cov)  # ascending
    k = min(components, F)
    u = (
        vecs[:, -k:].flip(1).T if k else torch.zeros(0, F, dtype=torch.float64, device=dev)
    )  # (k, F)
    comp_var = var.flip(0)[:k].clamp_min(1e-12)  # (k,)
    rho = (torch.einsum("kf,fg,kg->k", u, cov1, u) / comp_var).clamp(0, 0.999)  # (k,)
    resid = (cov.diagonal() - (comp_var[:, None] * u**2).sum(0)).clamp_min(0)  # (F,)
    return {
        "mean": mean.float(),
        "components": u.float(),
        "comp_std": comp_var.sqrt().float(),
        "comp_rho": rho.float(),
        "resid_std": resid.sqrt().float(),
    }


def sample_prior(
    stats: dict, n: int, frames: int, gen: torch.Generator | None = None
) -> torch.Tensor:
    """(n, F, frames) log1p spectrograms of noise shaped like the corpus: mean + principal shapes whose
    coefficients follow an AR(1) in time with the corpus' std and lag-1 correlation + independent residual.

    On the device of ``stats``; the random draws come from ``gen`` on its own device (moved if that differs)."""
    u, sd, rho = stats["components"], stats["comp_std"], stats["comp_rho"]  # (k, F), (k,), (k,)
    k = u.shape[0]
    dev = u.device
    draw = gen.device if gen is not None else dev  # torch.randn needs the generator's device
    eps = torch.randn(n, k, frames, generator=gen, device=draw).to(dev)  # (n, k, T)
    c = torch.empty_like(eps)
    c[..., 0] = eps[..., 0]
    a, b = rho[None, :], (1 - rho**2).sqrt()[None, :]
    for t in range(1, frames):  # AR(1) with unit stationary variance
        c[..., t] = a * c[..., t - 1] + b * eps[..., t]
    shaped = torch.einsum("kf,nkt->nft", u, c * sd[None, :, None])  # (n, F, T)
    resid = stats["resid_std"][None, :, None] * torch.randn(
        n, u.shape[1], frames, generator=gen, device=draw
    ).to(dev)
    return (stats["mean"][None, :, None] + shaped + resid).clamp_min(0)
