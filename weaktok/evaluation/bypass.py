"""The bypass ablation: is the chunk path load-bearing? Each model runs intact and with the chunk path cut
(``weaktok.model.unet.chunk_path_cut``: bottleneck = identity) on the same clips and the same noise draws; the
corpus mean spectrum is the trivial predictor beside them. The chunk statistics (boundary rate, chunks per
second) are read from the same forward passes (docs/evaluation.md, "Bypass ablation").

    r = bypass_losses(model, spec, hole, stats, mask_fraction, steps, noise_seed)   # intact
    with chunk_path_cut(model):
        c = bypass_losses(model, spec, hole, stats, mask_fraction, steps, noise_seed)   # cut
    t["bypass"] = bypass_table(l1, n_models, flow_models, n_boot, seed)   # l1: the pass's rows
    bypass_markdown(t)                                                     # the table1.md section
"""

from __future__ import annotations

import numpy as np
import torch

from weaktok import generate as G
from weaktok.evaluation.stats import summarize
from weaktok.generate.sampler import MODES
from weaktok.model import flow
from weaktok.plots import chunks_target, md_table, pct


def bypass_losses(model, spec, hole, stats, mask_fraction, steps, noise_seed: int) -> dict:
    """One model (intact, or under ``chunk_path_cut``) on real spectrograms ``spec`` (g, F, T): its seed-based
    and unconditional outputs (noise from ``noise_seed``, so intact and cut draw the same) and the bypass losses
    per item (g,):

    * in-painting models: recon = L1 of model(spec) vs spec; inpaint = L1 of the seed-based output's hole;
    * flow models (weaktok/model/flow.py ``eval_loss``, the validation loss): recon = the velocity error with
      nothing known, inpaint = with the seed's part known, on the hole.

    Returns {"seed": (y, ModelOutput), "uncond": (y, ModelOutput), "forward": a ModelOutput of the real clips,
    "recon": (g,), "inpaint": (g,)}."""
    dev = spec.device
    seed_gen = lambda: torch.Generator(device=dev).manual_seed(noise_seed)
    uncond_gen = lambda: torch.Generator(device=dev).manual_seed(noise_seed + 3)
    g, frames = spec.shape[0], spec.shape[-1]
    y_s = G.seed_based(model, spec, stats, mask_fraction, steps, seed_gen())
    y_u = G.unconditional(model, stats, g, frames, steps, uncond_gen())
    if G.is_flow(model):
        nothing = torch.zeros(frames, dtype=torch.bool, device=dev)
        recon = flow.eval_loss(model, spec, nothing, uncond_gen())[0]
        inpaint = flow.eval_loss(model, spec, ~hole, seed_gen())[0]
        fwd = model(
            flow.normalise(model, spec),
            t=torch.ones(g, device=dev),
            known=nothing.expand(g, -1),
        )
    else:
        fwd = model(spec)
        recon = (fwd.recon - spec).abs().mean(dim=(1, 2))
        inpaint = (y_s[0] - spec)[..., hole].abs().mean(dim=(1, 2))
    return {"seed": y_s, "uncond": y_u, "forward": fwd, "recon": recon, "inpaint": inpaint}


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


def bypass_table(l1: dict, n_models: int, flow_models: bool, n_boot: int, seed: int) -> dict:
    """The chunk path cut vs intact, per seed, with the mean-spectrum predictor beside them. ``l1``: the pass's
    rows, ``"<i>:recon_intact"`` / ``"<i>:recon_cut"`` / ``"<i>:inpaint_..."`` per model i and
    ``"recon_mean_spectrum"`` / ``"inpaint_mean_spectrum"``."""
    t = {
        "definition": (
            "flow validation loss (mean squared velocity error over the generated frames, 4 "
            "fixed times, the same noise intact and cut) over the first n_gen evaluation "
            "items: recon = nothing known, inpaint = the seed's part known"
            if flow_models
            else "L1 on log1p spectrograms over the first n_gen evaluation items: recon = "
            "model(spec) vs spec; inpaint = the seed-based output's hole vs the real hole "
            "(same noise draws intact and cut)"
        )
        + "; cut = bottleneck replaced by the identity",
        "measure": "flow_loss" if flow_models else "l1",
        "mean_spectrum": {
            "recon_l1": _mean(l1["recon_mean_spectrum"]),
            "inpaint_l1": _mean(l1["inpaint_mean_spectrum"]),
        },
    }
    for what in ("recon", "inpaint"):
        intact = [_mean(l1[f"{i}:{what}_intact"]) for i in range(n_models)]
        cut = [_mean(l1[f"{i}:{what}_cut"]) for i in range(n_models)]
        change = [(c - a) / a for a, c in zip(intact, cut)]
        paired = np.concatenate(
            [
                np.asarray(l1[f"{i}:{what}_cut"]) - np.asarray(l1[f"{i}:{what}_intact"])
                for i in range(n_models)
            ]
        )[:, None]
        ci = summarize(paired, np.zeros(1), n_boot=n_boot, seed=seed)["ci95"][0]
        t[what] = {
            "intact": float(np.mean(intact)),
            "cut": float(np.mean(cut)),
            "per_seed_intact": intact,
            "per_seed_cut": cut,
            "rel_change": float(np.mean(change)),
            "per_seed_rel_change": change,
            "cut_minus_intact_ci95": ci,
        }
    return t


def chunks_table(l1: dict, n_models: int, chunking) -> dict:
    """Eval-mode chunk statistics on real clips and while generating, pooled over the models."""

    def pooled(key: str) -> float:
        return float(np.mean(sum((l1[f"{i}:{key}"] for i in range(n_models)), [])))

    fixed = chunking.kind == "fixed"
    return {
        "boundary_rate": pooled("boundary_rate"),
        "chunks_per_s": pooled("chunks_per_s"),
        "generation_boundary_rate": pooled("gen_boundary_rate"),
        "kind": chunking.kind,
        # what the rate aims at: a fixed grid's stride, or dynamic chunking's target ratio N (the ratio loss's aim
        # with select: threshold, the exact count with select: topk)
        "target_ratio": None if fixed else chunking.target_ratio,
        "fixed_stride": chunking.fixed_stride if fixed else None,
        "select": None if fixed else chunking.select,
    }


def bypass_markdown(t: dict) -> str:
    """The table1.md section of the bypass ablation and the chunk statistics."""
    bp = t["bypass"]
    flow_measure = bp.get("measure") == "flow_loss"
    fd_rows = "".join(
        f"Fréchet distance ({m}): intact {t['frechet'][m]['model']['mean']:.2f}, chunk path cut "
        f"{t['frechet'][m]['model_cut']['mean']:.2f}.\n"
        for m in MODES
        if "model_cut" in t["frechet"][m]
    )
    s = (
        "## Bypass ablation: is the chunk path load-bearing?\n\n"
        + md_table(
            [
                "flow loss (velocity MSE)" if flow_measure else "L1 (log1p spectrogram)",
                "intact",
                "chunk path cut",
                "change",
                "cut − intact [95 %]",
                "corpus mean spectrum (L1)",
            ],
            [
                [
                    w,
                    f"{bp[w]['intact']:.4f}",
                    f"{bp[w]['cut']:.4f}",
                    pct(bp[w]["rel_change"]),
                    f"[{bp[w]['cut_minus_intact_ci95'][0]:+.4f}, {bp[w]['cut_minus_intact_ci95'][1]:+.4f}]",
                    "—" if flow_measure else f"{bp['mean_spectrum'][w + '_l1']:.4f}",
                ]
                for w in ("recon", "inpaint")
            ],
        )
        + f"\n{bp['definition']}.\n\n{fd_rows}\n"
    )
    c = t["chunks"]
    return s + (
        f"Chunks ({c['kind']}, eval-mode boundaries): boundary rate {c['boundary_rate']:.3f} per bottleneck frame "
        f"on real clips ({chunks_target(c)}), {c['chunks_per_s']:.2f} chunks/s; "
        f"{c['generation_boundary_rate']:.3f} while generating (flow: mean over the ODE's model calls).\n"
    )
