"""One training step's pieces: input corruption, the forward and the loss, the log window of loss parts, and the
all-rank finiteness check (the one host sync of an ordinary step)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from weaktok.config import Config
from weaktok.data.prior import sample_prior
from weaktok.lscore.loss import distribution_loss
from weaktok.model import flow
from weaktok.train.distributed import Dist


def corrupt(
    spec: torch.Tensor, cfg: Config, gen: torch.Generator, prior: dict | None = None
) -> torch.Tensor:
    """Training input corruption: gaussian noise, and for some examples one time span replaced.

    ``fill: zeros`` writes zeros into the span. ``fill: prior`` writes what generation's refinement feeds the model
    in its hole (generate.refine): (1 - s) * spec + s * z, z the prior noise (weaktok/data/prior.py), s ~ U(0, 1) per
    example, so the model learns to refine every noise level, from pure prior noise (s = 1) down."""
    c = cfg.train.corruption
    x = (
        spec + c.noise_std * torch.randn(spec.shape, generator=gen, device=spec.device)
        if c.noise_std
        else spec
    )
    B, _, T = spec.shape
    if c.mask_prob > 0 and c.mask_max_fraction > 0:
        hit = torch.rand(B, generator=gen, device=spec.device) < c.mask_prob
        length = (
            (torch.rand(B, generator=gen, device=spec.device) * c.mask_max_fraction * T)
            .round()
            .long()
        )
        start = (torch.rand(B, generator=gen, device=spec.device) * T).long()
        start = torch.minimum(
            start, T - length
        )  # the span lies inside the clip, whole-clip spans included
        t = torch.arange(T, device=spec.device)
        span = (
            (t[None] >= start[:, None]) & (t[None] < (start + length)[:, None]) & hit[:, None]
        )  # (B, T)
        if c.fill == "prior":
            if prior is None:
                raise ValueError(
                    "train.corruption.fill=prior needs the prior statistics (weaktok.data.prior)"
                )
            level = torch.rand(B, 1, 1, generator=gen, device=spec.device)  # (B, 1, 1)
            z = sample_prior(prior, B, T, gen)  # (B, F, T)
            x = torch.where(span[:, None, :], (1 - level) * spec + level * z, x)
        else:
            x = x.masked_fill(span[:, None, :], 0.0)
    return x


@dataclass
class Losses:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(
        default_factory=dict
    )  # detached 0-d fp32 tensors on the device


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype ``module`` computes in: bf16 once DeepSpeed has cast it (bf16 on), else fp32."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def compute_loss(
    engine, front, lscore_fn, spec, inp, w, target, cfg: Config
) -> tuple[Losses, object]:
    """One forward and the loss. The model runs in its own dtype (bf16 under DeepSpeed's bf16); the spectrogram
    front end, the differentiable L-Score and every loss term run in fp32.

    ``Losses.parts`` are detached 0-d tensors on the device (no host sync here): the loop sums them over
    ``train.log_every`` steps and reads them once per log line."""
    out = engine(inp.to(model_dtype(engine)))
    recon = out.recon.float()
    recon_loss = (recon - spec).abs().mean()
    L_batch = lscore_fn(front.power(recon))  # (B, 4)
    dist_loss = distribution_loss(
        L_batch,
        target["mean"],
        target["std"],
        cfg.lscore.lambda_mu,
        cfg.lscore.lambda_sigma,
        cfg.lscore.standardise,
    )
    ratio = out.chunk.ratio_loss.float()
    total = w.w_recon * recon_loss + w.w_L * dist_loss + w.w_ratio * ratio
    parts = {
        "loss": total,
        "recon": recon_loss,
        "lscore_dist": dist_loss,
        "ratio_loss": ratio,
        **{f"chunk_{k}": v for k, v in out.stats.items() if k != "ratio_loss"},
        **{f"lscore_batch_{i}": v for i, v in enumerate(L_batch.mean(0))},
    }
    return Losses(total, {k: v.detach().float() for k, v in parts.items()}), out


def compute_flow_loss(
    engine, front, lscore_fn, spec, fb: dict, w, target, cfg: Config
) -> tuple[Losses, object]:
    """``compute_loss`` for ``model.objective: flow`` (weaktok/model/flow.py): ``fb`` is ``flow.flow_batch`` of
    ``spec``. The velocity error takes the reconstruction's place in the curriculum (w_recon); the L-Score loss sees the
    one-step clean estimates of the batch's largest-t rows (``flow.clean_estimate``). ``recon`` in the parts is the
    L1 of every row's one-step estimate on its generated frames (log1p units, comparable across steps)."""
    model = engine.module
    out = engine(fb["x"].to(model_dtype(engine)), t=fb["t"], known=fb["known"])
    fc = cfg.model.flow
    flow_loss = flow.flow_loss(flow.to_velocity(out.recon, fb["x"], fb["t"], fc), fb)
    L_batch = lscore_fn(front.power(flow.clean_estimate(model, out.recon, fb, fc)))  # (b, 4)
    dist_loss = distribution_loss(
        L_batch,
        target["mean"],
        target["std"],
        cfg.lscore.lambda_mu,
        cfg.lscore.lambda_sigma,
        cfg.lscore.standardise,
    )
    ratio = out.chunk.ratio_loss.float()
    total = w.w_recon * flow_loss + w.w_L * dist_loss + w.w_ratio * ratio
    with torch.no_grad():
        x1_hat = flow.denormalise(model, flow.to_clean(out.recon, fb["x"], fb["t"], fc))
        gen_frames = (~fb["known"]).float()[:, None]
        recon = ((x1_hat - spec).abs() * gen_frames).sum() / (
            gen_frames.sum() * spec.shape[1]
        ).clamp_min(1)
    parts = {
        "loss": total,
        "flow": flow_loss,
        "recon": recon,
        "lscore_dist": dist_loss,
        "ratio_loss": ratio,
        **{f"chunk_{k}": v for k, v in out.stats.items() if k != "ratio_loss"},
        **{f"lscore_batch_{i}": v for i, v in enumerate(L_batch.mean(0))},
    }
    return Losses(total, {k: v.detach().float() for k, v in parts.items()}), out


class PartsWindow:
    """Loss parts summed on the device over the steps since the last log line; ``read`` is the one host sync."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n += 1

    def read(self) -> dict[str, float]:
        """Window means as floats (one device-to-host copy), and a fresh window."""
        if not self.n:
            return {}
        values = (torch.stack(list(self.sums.values())) / self.n).tolist()
        out = dict(zip(self.sums, values))
        self.sums, self.n = {}, 0
        return out


def all_finite(loss: torch.Tensor, dist: Dist) -> bool:
    """True when the loss is finite on every rank: the one host sync of an ordinary step."""
    flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if dist.world > 1:
        torch.distributed.all_reduce(flag)
    return int(flag.item()) == dist.world
