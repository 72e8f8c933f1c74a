"""Rectified flow over normalised log1p spectrograms (``model.objective: flow``): the training pairs, the loss and
the ODE sampler. Liu et al. 2022 (rectified flow), Lipman et al. 2022 (flow matching), Esser et al. 2024 (SD3:
logit-normal times).

Space: x = (log1p spectrogram - m(f)) / s(f), per-frequency mean and std of the corpus' frames (the model carries
them as the buffers spec_mean / spec_std; training sets them from the prior statistics, ``set_normaliser``).

Training (``flow_batch``, ``flow_loss``), per example:
    x1 data, x0 ~ N(0, I), t ~ logit-normal (or uniform), x_t = (1 - t) x0 + t x1, target velocity v = x1 - x0
    known: nothing (share ``uncond_prob``: unconditional generation, and guidance's "no context"), else every frame
    but one span of U(hole_min, hole_max) of the clip, ending the clip for a share ``hole_at_end`` (seed-based
    generation's hole) or anywhere
    input: the clean x1 in the known frames, x_t elsewhere; the known mask; t
    loss: mean squared velocity error over the frames to generate only (the known ones are given, not generated)
The network predicts the clean x1 (``predict: data``; velocity (x1_hat - x_t) / (1 - t)) or the velocity itself
(``predict: velocity``); the loss is on the velocity either way (``to_velocity``). The L-Score loss sees the
one-step estimate of the clean spectrogram x1_hat (``to_clean``; known frames: the data) of the ``lscore_frac`` of
the batch with the largest t, the rows whose estimate is close to a sample rather than a blurred mean
(``clean_estimate``).

Sampling (``sample``): Euler or midpoint steps of dx/dt = v(x, t) from t = 0 (noise) to 1, the known frames held at
the data; classifier-free guidance v = v_none + g (v_known - v_none) when ``guidance`` != 1 and something is known.
"""

from __future__ import annotations

import math

import torch

from weaktok.config import FlowConfig


def normaliser_from_prior(stats: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Prior statistics (weaktok/data/prior.py) -> per-frequency mean (F,) and std (F,) of the corpus' frames: the
    principal shapes' variance plus the residual's (the diagonal of the frames' covariance)."""
    var = (stats["comp_std"][:, None] ** 2 * stats["components"] ** 2).sum(0) + stats[
        "resid_std"
    ] ** 2  # (F,)
    return stats["mean"].float(), var.sqrt().clamp_min(1e-3).float()


@torch.no_grad()
def set_normaliser(model: torch.nn.Module, stats: dict) -> None:
    """Write the corpus normalisation into a flow model's buffers (before training: it is saved with the weights)."""
    mean, std = normaliser_from_prior(stats)
    model.spec_mean.copy_(mean.to(model.spec_mean))
    model.spec_std.copy_(std.to(model.spec_std))


def normalise(model, spec: torch.Tensor) -> torch.Tensor:  # (B, F, T) log1p -> (B, F, T) flow space
    return (spec - model.spec_mean[:, None].float()) / model.spec_std[:, None].float()


def denormalise(
    model, x: torch.Tensor
) -> torch.Tensor:  # (B, F, T) flow space -> (B, F, T) log1p, >= 0
    return (x * model.spec_std[:, None].float() + model.spec_mean[:, None].float()).clamp_min(0)


# ----------------------------------------------------------------------------------------------------------
# What the network outputs, as a velocity and as a clean estimate

T_EPS = 0.05  # 1 - t is clamped here when a data prediction is turned into a velocity (JiT does the same)


def to_velocity(
    out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cfg: FlowConfig
) -> torch.Tensor:
    """The network's output (B, F, T) at input x_t and times t (B,) -> the velocity (B, F, T), fp32."""
    out = out.float()
    if cfg.predict == "velocity":
        return out
    return (out - x) / (1 - t[:, None, None]).clamp_min(T_EPS)


def to_clean(out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, cfg: FlowConfig) -> torch.Tensor:
    """The network's output -> the one-step clean estimate x1_hat (B, F, T) in flow space, fp32."""
    out = out.float()
    if cfg.predict == "data":
        return out
    return x + (1 - t[:, None, None]) * out


# ----------------------------------------------------------------------------------------------------------
# Training


def sample_times(n: int, cfg: FlowConfig, gen: torch.Generator, device) -> torch.Tensor:
    """(n,) training times in (0, 1)."""
    if cfg.t_dist == "uniform":
        return torch.rand(n, generator=gen, device=device)
    return torch.sigmoid(torch.randn(n, generator=gen, device=device))


def sample_known(
    n: int, frames: int, cfg: FlowConfig, gen: torch.Generator, device
) -> torch.Tensor:
    """(n, frames) bool: the known frames of each training example (see the module docstring)."""
    r = lambda: torch.rand(n, generator=gen, device=device)  # noqa: E731
    uncond = r() < cfg.uncond_prob
    length = (
        ((cfg.hole_min + (cfg.hole_max - cfg.hole_min) * r()) * frames)
        .round()
        .long()
        .clamp(1, frames)
    )
    start = (r() * (frames - length + 1)).long().clamp_max(frames - length)
    start = torch.where(r() < cfg.hole_at_end, frames - length, start)
    t = torch.arange(frames, device=device)
    hole = (t[None] >= start[:, None]) & (t[None] < (start + length)[:, None])
    return ~hole & ~uncond[:, None]


def flow_batch(model, spec: torch.Tensor, cfg: FlowConfig, gen: torch.Generator) -> dict:
    """spec (B, F, T) log1p -> the model's input and the training target (all in flow space, fp32)."""
    B, _, T = spec.shape
    x1 = normalise(model, spec)
    x0 = torch.randn(x1.shape, generator=gen, device=spec.device)
    t = sample_times(B, cfg, gen, spec.device)  # (B,)
    known = sample_known(B, T, cfg, gen, spec.device)  # (B, T)
    xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
    return {
        "x": torch.where(known[:, None], x1, xt),
        "t": t,
        "known": known,
        "v": x1 - x0,
        "x1": x1,
    }


def flow_loss(v_hat: torch.Tensor, batch: dict) -> torch.Tensor:
    """Mean squared velocity error over the frames to generate (every frequency)."""
    gen_frames = (~batch["known"]).float()[:, None]  # (B, 1, T)
    err = (v_hat.float() - batch["v"]) ** 2 * gen_frames
    return err.sum() / (gen_frames.sum() * v_hat.shape[1]).clamp_min(1)


def clean_estimate(model, out: torch.Tensor, batch: dict, cfg: FlowConfig) -> torch.Tensor:
    """The one-step log1p estimate (``to_clean``; data where known) of the ceil(lscore_frac * B) rows with the
    largest t: (b, F, T). Static shapes (top-k), no host sync."""
    k = max(1, math.ceil(cfg.lscore_frac * out.shape[0]))
    rows = batch["t"].topk(k).indices  # (k,)
    x1_hat = to_clean(out[rows], batch["x"][rows], batch["t"][rows], cfg)
    return denormalise(model, torch.where(batch["known"][rows][:, None], batch["x1"][rows], x1_hat))


# ----------------------------------------------------------------------------------------------------------
# Sampling


def velocity(
    model,
    x: torch.Tensor,
    t: float,
    known: torch.Tensor,
    data: torch.Tensor,
    guidance: float,
    cfg: FlowConfig,
):
    """v(x, t) with the known frames set to the data; guided when ``guidance`` != 1. -> (v (B, F, T), ModelOutput)."""
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    B = x.shape[0]
    tt = torch.full((B,), t, device=x.device)
    inp = torch.where(known[:, None], data, x)
    out = model(inp.to(dtype), t=tt, known=known)
    v = to_velocity(out.recon, inp, tt, cfg)
    if guidance != 1.0 and bool(known.any()):
        v_none = to_velocity(
            model(x.to(dtype), t=tt, known=torch.zeros_like(known)).recon, x, tt, cfg
        )
        v = v_none + guidance * (v - v_none)
    return v, out


@torch.no_grad()
def sample(
    model,
    known_spec: torch.Tensor,
    known: torch.Tensor,
    cfg: FlowConfig,
    gen: torch.Generator | None = None,
    steps: int | None = None,
    guidance: float | None = None,
):
    """known_spec (B, F, T) log1p (only its known frames are read), known (B, T) or (T,) bool -> (log1p output
    (B, F, T), the ModelOutput of the last model call, whose stats also hold ``sampling_boundary_rate``: the mean
    boundary rate over every call). From N(0, I) noise drawn from ``gen``, on known_spec's device."""
    steps = steps or cfg.steps
    guidance = cfg.guidance if guidance is None else guidance
    B, _, T = known_spec.shape
    known = known.to(known_spec.device).expand(B, T)
    data = normalise(model, known_spec)
    draw = gen.device if gen is not None else known_spec.device
    x = torch.randn(known_spec.shape, generator=gen, device=draw).to(known_spec.device)
    dt = 1.0 / steps
    rates = []  # boundary rate of every model call: the chunking the model actually uses while generating
    for i in range(steps):
        t = i * dt
        v, out = velocity(model, x, t, known, data, guidance, cfg)
        rates.append(out.stats["boundary_rate"])
        if cfg.solver == "midpoint":
            v, out = velocity(model, x + 0.5 * dt * v, t + 0.5 * dt, known, data, guidance, cfg)
            rates.append(out.stats["boundary_rate"])
        x = x + dt * v
    out.stats["sampling_boundary_rate"] = torch.stack(rates).mean()
    return denormalise(model, torch.where(known[:, None], data, x)), out


@torch.no_grad()
def eval_loss(model, spec: torch.Tensor, known: torch.Tensor, gen: torch.Generator, n_t: int = 4):
    """Validation loss per item: the velocity error of ``flow_loss`` over the frames to generate, averaged over n_t
    fixed times t = (k + 0.5) / n_t with one noise draw from ``gen`` (the same draws give the same number, so an
    intact and an ablated model are compared on equal terms). known (B, T) or (T,) bool.

    Returns (loss (B,), l1 (B,), the last ModelOutput): l1 is the one-step clean estimate's L1 to the data on the
    generated frames (log1p units), averaged over the same times."""
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    B, _, T = spec.shape
    known = known.to(spec.device).expand(B, T)
    x1 = normalise(model, spec)
    x0 = torch.randn(x1.shape, generator=gen, device=gen.device).to(spec.device)
    gen_frames = (~known).float()[:, None]  # (B, 1, T)
    denom = (gen_frames.sum(dim=(1, 2)) * spec.shape[1]).clamp_min(1)  # (B,)
    loss, l1 = spec.new_zeros(B), spec.new_zeros(B)
    for k in range(n_t):
        t = torch.full((B,), (k + 0.5) / n_t, device=spec.device)
        xt = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        x = torch.where(known[:, None], x1, xt)
        out = model(x.to(dtype), t=t, known=known)
        v_hat = to_velocity(out.recon, x, t, model.cfg.flow)
        loss += ((v_hat - (x1 - x0)) ** 2 * gen_frames).sum(dim=(1, 2)) / denom
        x1_hat = denormalise(model, to_clean(out.recon, x, t, model.cfg.flow))
        l1 += ((x1_hat - spec).abs() * gen_frames).sum(dim=(1, 2)) / denom
    return loss / n_t, l1 / n_t, out
