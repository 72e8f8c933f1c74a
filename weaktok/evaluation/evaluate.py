"""Evaluation a skeptical reviewer accepts: the paper's Table 1 on what was *generated*, with baselines, 95 %
intervals, training seeds, distribution metrics, a memorisation check and the bypass ablation.

    weaktok evaluate --checkpoint runs/a/train [runs/b/train ...] --out runs/eval \
        [--shards shards/demo-eval --split eval] [--n-gen 64] [--device cuda]

Everything here is defined in docs/evaluation.md; in short:

* **Scored region.** Every clip is ``EVAL_SECONDS`` (8 s) from an item's start, loop-tiled if shorter.
  Unconditional outputs are scored whole. Seed-based outputs are scored *only on the in-painted region* (the last
  ``mask_fraction`` of the clip; the first part is the model's rendering of the seed). Real data and every baseline
  are scored on the same region of the same length.
* **Target.** The exact L-Score of the model's *training* split, as the paper's targets are training statistics,
  but measured on crops of the scored region (8 s from the start; the last 4 s of that), not on whole items:
  rhythmic irregularity grows with the window, so whole-item targets penalise any 8-s clip, real or generated.
  The whole-item (manifest) target is reported beside it. The paper's targets were predefined numbers, not
  dataset means: the paper's columns are quoted for reference, not as a like-for-like comparison.
* **Sets.** ``data``: the evaluation split itself (every item; its error vs the target is the floor of the
  comparison). On the first ``n_gen`` items: ``data_vocoder`` (the item's spectrogram through Griffin-Lim, no
  model), ``copy_seed`` (seed rows: the seed's known part copied into the hole, no model), ``prior_noise`` (the
  generation prior's noise through the vocoder; in the hole for seed rows), and the model (per checkpoint =
  training seed), optionally also after L-Score guidance (``guidance_steps``).
* **Uncertainty.** Percentile bootstrap over items (``weaktok.evaluation.stats``) for every mean and relative
  error; the target's own sampling noise is resampled too. Several checkpoints: mean ± sd across training seeds
  and a stratified, pooled interval.
* **Distributions** (``weaktok.evaluation.features``, offline features, no downloaded weights): Fréchet distance
  and KID to held-out real clips (the evaluation items not used for outputs), a real-vs-generated classifier's
  accuracy (0.5 = indistinguishable), and memorisation (generated clips' nearest training clip vs held-out real
  clips' nearest training clip).
* **Bypass ablation.** Reconstruction L1 and in-painting L1 (seed hole) with the chunk path cut
  (``model.chunk_path_cut``: bottleneck = identity) beside the intact model and the corpus mean spectrum.
* **Rulers** (``weaktok.evaluation.rulers``): what each exact term reads on click trains, drones, noise, silence.

Device (``--device``, default cuda when available): models, spectrograms, the prior, refinement and Griffin-Lim run
there a batch at a time; waveforms come to the CPU for librosa (exact L-Score, features). Exact L-Scores run
serially or on ``workers`` Ray actors. Progress bars show each pass.

Writes ``table1.json`` (machine-readable, every field above), ``table1.md``, ``rel_err.png`` (relative errors with
intervals, model beside baselines), ``lscore_hist.png``, ``examples_*.png`` and ``training_curves.png``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from weaktok import generate as G
from weaktok.evaluation import features as FT
from weaktok.evaluation.stats import summarize, summarize_seeds
from weaktok.model.unet import chunk_path_cut
from weaktok.plots import (
    md_table,
    pct,
    plot_lscore_hist,
    plot_spectrogram_rows,
    plot_training_curves,
)

GOAL = 0.15  # the research goal: every term within 15 % of the target
# Length of every evaluated clip. Measured on the demo shards (300 items, exact L-Score, 8-s crops): the coefficient
# of variation of the terms is 0.25 / 0.42 / 1.23 / 0.50, so a mean within +-10 % (95 %) needs about 25 / 69 / 581 /
# 95 items: irregularity (the spread of inter-onset intervals) is heavy-tailed. Hence a separate, larger evaluation
# split (``weaktok shards --split eval``) and the data floor over all of it.
EVAL_SECONDS = 8.0
N_GEN = 64  # outputs per mode per checkpoint (and items carrying the baselines)
TARGET_ITEMS = 256  # training items behind the length-matched target
MODES = ("uncond", "seed")

# The paper's Table 1 (docs/evaluation.md quotes it): predefined targets and its model's exact L-Scores.
PAPER_TABLE1 = {
    "names": ["timbral", "density", "irregularity", "structural"],
    "target": [0.4, 0.8, 0.6, 0.5],
    "uncond": [0.409, 2.962, 0.739, 0.496],
    "seed": [0.502, 6.667, 0.067, 0.571],
    "note": "The paper's targets are predefined numbers, not dataset statistics; its outputs' length and scored "
    "region are not stated. Its relative errors are quoted for reference, not as a like-for-like "
    "comparison with ours (our target: the training split's mean on crops of the scored region).",
}
PAPER_TABLE1["uncond_rel_err"] = [
    (u - t) / t for u, t in zip(PAPER_TABLE1["uncond"], PAPER_TABLE1["target"])
]
PAPER_TABLE1["seed_rel_err"] = [
    (s - t) / t for s, t in zip(PAPER_TABLE1["seed"], PAPER_TABLE1["target"])
]


# ----------------------------------------------------------------------------------------------------------
# Exact L-Score of waveforms


class Scorer:
    """Exact L-Score of waveform batches: serial, or on ``workers`` Ray actors (a private local cluster, started
    once). Scores are computed batch by batch, so no waveform outlives its batch (bounded memory on big splits)."""

    def __init__(self, sr: int, workers: int = 0, onset: str = "paper"):
        self.sr, self.pool, self.onset = sr, None, onset
        if onset != "paper" and workers > 1:
            raise ValueError(
                f"--onset {onset} is scored serially: the Ray pool runs the paper's preset "
                "(drop --workers)"
            )
        if workers > 1:
            from weaktok.lscore.pool import LScorePool

            self.pool = LScorePool(num_actors=workers, address="local", niceness=0)

    def __call__(self, waves) -> np.ndarray:  # list of (N_i,) -> (B, 4)
        waves = list(waves)
        if not waves:
            return np.zeros((0, 4))
        if self.pool is not None:
            return self.pool.map(waves, self.sr)
        from weaktok.lscore.exact import exact_lscore

        return np.stack([exact_lscore(w, self.sr, onset=self.onset) for w in waves])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def clip_features(waves, sr: int) -> np.ndarray:
    """(n, d) offline features of peak-normalised clips: Griffin-Lim's output level is arbitrary (model outputs
    measured up to 16x the RMS of the peak-normalised corpus), so loudness is left out of every distance."""
    return FT.features([w / max(float(np.abs(w).max()), 1e-9) for w in waves], sr)


def rel_err(values: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Signed relative error of per-term means: (mean - target) / |target|."""
    return (values - target) / np.maximum(np.abs(target), 1e-9)


# ----------------------------------------------------------------------------------------------------------
# Scored regions


@dataclass(frozen=True)
class Regions:
    """Where each mode is scored, in samples and spectrogram frames of an ``n``-sample clip."""

    n: int  # samples per clip
    frames: int  # spectrogram frames per clip
    hole_frame: int  # first in-painted frame (seed mode)
    hole_sample: int  # first scored sample (seed mode): hole_frame x hop
    sr: int

    def crop(
        self, mode: str, waves: np.ndarray
    ) -> list[np.ndarray]:  # (B, n) -> B waves of the mode's region
        return list(waves if mode == "uncond" else waves[:, self.hole_sample :])

    def seconds(self, mode: str) -> float:
        return (self.n - (0 if mode == "uncond" else self.hole_sample)) / self.sr

    def describe(self) -> dict:
        return {
            "uncond": {
                "start_s": 0.0,
                "start_sample": 0,
                "seconds": round(self.seconds("uncond"), 3),
                "what": "the whole output",
            },
            "seed": {
                "start_s": round(self.hole_sample / self.sr, 3),
                "start_sample": self.hole_sample,
                "seconds": round(self.seconds("seed"), 3),
                "what": "the in-painted region only (the seed's part is not scored)",
            },
        }


def make_regions(front, sr: int, seconds: float, mask_fraction: float) -> Regions:
    n = int(round(seconds * sr))
    frames = front.num_frames(n)
    hole = G.seed_hole_start(frames, mask_fraction)
    return Regions(n, frames, hole, min(hole * front.hop_length, n - 1), sr)


def copy_seed(spec: torch.Tensor, hole_frame: int) -> torch.Tensor:
    """(B, F, T) -> the seed's known frames tiled into the hole: the no-model baseline for seed rows (loops repeat,
    so copying the known part is a strong guess)."""
    T = spec.shape[-1]
    src = torch.arange(hole_frame, T, device=spec.device) % max(hole_frame, 1)
    out = spec.clone()
    out[..., hole_frame:] = spec[..., src]
    return out


# ----------------------------------------------------------------------------------------------------------
# Passes


@torch.no_grad()
def training_reference(
    loaded: G.Loaded,
    shards: str,
    regions: Regions,
    score: Scorer,
    max_items: int,
    onset: str = "paper",
) -> dict:
    """Exact L-Scores and features of the training split's clips, per mode's region: the length-matched target
    and the memorisation bank. Cached beside the first model (reference_<seconds>s_<hole>.pt)."""
    from weaktok.data.loader import eval_loader

    def compute() -> dict:
        rows = {f"{k}_{m}": [] for k in ("lscore", "feat") for m in MODES}
        bar = tqdm(total=max_items, desc="training reference", unit="item")
        for batch in eval_loader(shards, "train", 16, regions.n / regions.sr):
            waves = batch["audio"].numpy()[: max_items - len(rows["lscore_uncond"])]
            for m in MODES:
                cropped = regions.crop(m, waves)
                rows[f"lscore_{m}"] += list(score(cropped))
                rows[f"feat_{m}"] += list(clip_features(cropped, regions.sr))
            bar.update(len(waves))
            if len(rows["lscore_uncond"]) >= max_items:
                break
        bar.close()
        if not rows["lscore_uncond"]:
            raise ValueError(f"no items in the train split of {shards}")
        return {k: torch.tensor(np.asarray(v), dtype=torch.float64) for k, v in rows.items()}

    name = f"reference_{regions.n / regions.sr:g}s_{regions.hole_sample}_{max_items}_{onset}_v2.pt"
    stats = G.cached_beside(loaded, name, compute)
    return {k: v.cpu().numpy() for k, v in stats.items()}


class Collector:
    """Per-set, per-mode rows of exact L-Scores and features, appended batch by batch."""

    def __init__(self):
        self.lscore: dict[tuple[str, str], list] = {}
        self.feat: dict[tuple[str, str], list] = {}

    def add(self, name: str, mode: str, L: np.ndarray, F: np.ndarray) -> None:
        self.lscore.setdefault((name, mode), []).extend(L)
        self.feat.setdefault((name, mode), []).extend(F)

    def get(self, name: str, mode: str, what: str = "lscore") -> np.ndarray:
        return np.asarray((self.lscore if what == "lscore" else self.feat)[(name, mode)])


@torch.no_grad()
def evaluation_pass(
    models: list[G.Loaded],
    stats: dict,
    shards: str,
    split: str,
    regions: Regions,
    n_items: int,
    n_gen: int,
    mask_fraction: float,
    steps: int,
    score: Scorer,
    seed: int,
    guidance: G.Guidance | None,
    keep: int = 3,
) -> dict:
    """One pass over the evaluation split: real data on every item; baselines, model outputs (per model) and the
    bypass ablation on the first ``n_gen``. Returns a Collector plus the ablation's L1 rows and examples."""
    from weaktok.data.loader import eval_loader

    front, dev, sr = models[0].front, models[0].device, regions.sr
    hole = torch.zeros(regions.frames, dtype=torch.bool, device=dev)
    hole[regions.hole_frame :] = True
    col = Collector()
    l1 = {k: [] for k in ("recon_mean_spectrum", "inpaint_mean_spectrum")}
    for i in range(len(models)):
        for k in (
            "recon_intact",
            "recon_cut",
            "inpaint_intact",
            "inpaint_cut",
            "boundary_rate",
            "chunks_per_s",
            "gen_boundary_rate",
        ):
            l1[f"{i}:{k}"] = []
    examples: list[dict] = []
    seen = 0
    bar = tqdm(total=n_items, desc=f"evaluate {split}", unit="item")
    for b, batch in enumerate(eval_loader(shards, split, 8, regions.n / sr)):
        take = min(len(batch["keys"]), n_items - seen)
        if take <= 0:
            break
        audio = batch["audio"][:take]  # (B, n) CPU
        waves = audio.numpy()
        for m in MODES:  # the data floor: every item
            cropped = regions.crop(m, waves)
            col.add("data", m, score(cropped), clip_features(cropped, sr))
        g = min(take, n_gen - seen)  # items of this batch that also carry outputs
        if g > 0:
            spec = front(audio[:g].to(dev))  # (g, F, T)
            gen = torch.Generator(device=dev).manual_seed(seed * 1_000_003 + b)
            mean = stats["mean"][
                None, :, None
            ]  # (1, F, 1) the corpus mean spectrum: the trivial predictor
            l1["recon_mean_spectrum"] += (mean - spec).abs().mean(dim=(1, 2)).tolist()
            l1["inpaint_mean_spectrum"] += (mean - spec[..., hole]).abs().mean(dim=(1, 2)).tolist()
            specs = {
                ("data_vocoder", "uncond"): spec,
                ("data_vocoder", "seed"): spec,
                ("copy_seed", "seed"): copy_seed(spec, regions.hole_frame),
                ("prior_noise", "uncond"): G.sample_prior(stats, g, regions.frames, gen),
                ("prior_noise", "seed"): torch.where(
                    hole, G.sample_prior(stats, g, regions.frames, gen), spec
                ),
            }
            for i, loaded in enumerate(models):
                model = loaded.model
                seed_gen = lambda: torch.Generator(device=dev).manual_seed(seed + 7 * b)  # noqa: E731
                uncond_gen = lambda: torch.Generator(device=dev).manual_seed(seed + 7 * b + 3)  # noqa: E731
                out = ablation_losses(
                    model,
                    spec,
                    hole,
                    seed_gen,
                    uncond_gen,
                    stats,
                    mask_fraction,
                    steps,
                    l1,
                    f"{i}:",
                    "intact",
                )
                y_s, mo_s = out["seed"]
                y_u, mo_u = out["uncond"]
                with chunk_path_cut(model):
                    cut = ablation_losses(
                        model,
                        spec,
                        hole,
                        seed_gen,
                        uncond_gen,
                        stats,
                        mask_fraction,
                        steps,
                        l1,
                        f"{i}:",
                        "cut",
                    )
                specs[(f"model{i}_cut", "seed")] = cut["seed"][0]
                specs[(f"model{i}_cut", "uncond")] = cut["uncond"][0]
                out = out["forward"]
                n_chunks = out.chunk.num_chunks.float()
                l1[f"{i}:boundary_rate"] += (
                    out.chunk.boundaries.sum(1) / out.chunk.frame_mask.sum(1)
                ).tolist()
                for mo in (
                    mo_u,
                    mo_s,
                ):  # the chunks while generating (flow: mean over the ODE's calls; else last)
                    rate = mo.stats.get("sampling_boundary_rate", mo.stats["boundary_rate"])
                    l1[f"{i}:gen_boundary_rate"].append(float(rate))
                l1[f"{i}:chunks_per_s"] += (
                    n_chunks / (regions.frames * front.frame_seconds)
                ).tolist()
                specs[(f"model{i}", "seed")] = y_s
                specs[(f"model{i}", "uncond")] = y_u
                if guidance is not None:
                    specs[(f"model{i}_guided", "seed")] = G.guide(y_s, hole, guidance)
                    specs[(f"model{i}_guided", "uncond")] = G.guide(
                        y_u, torch.ones_like(hole), guidance
                    )
                if i == 0:
                    for j in range(min(g, keep - len(examples))):
                        examples.append(
                            {
                                "key": batch["keys"][j],
                                "data": spec[j].cpu(),
                                "seed": y_s[j].cpu(),
                                "uncond": y_u[j].cpu(),
                                "data_starts": G.chunk_start_frames(out, j),
                                "seed_starts": G.chunk_start_frames(mo_s, j),
                                "uncond_starts": G.chunk_start_frames(mo_u, j),
                            }
                        )
            unique = list(
                {id(v): v for v in specs.values()}.values()
            )  # data_vocoder serves both modes
            wav = (
                front.inverse(torch.cat(unique), length=regions.n).cpu().numpy()
            )  # one Griffin-Lim call
            at = {id(v): j for j, v in enumerate(unique)}
            for (name, m), v in specs.items():
                j = at[id(v)]
                cropped = regions.crop(m, wav[j * g : (j + 1) * g])
                col.add(name, m, score(cropped), clip_features(cropped, sr))
        seen += take
        bar.update(take)
    bar.close()
    if not seen:
        raise ValueError(f"split '{split}' of {shards} yielded no items")
    return {"col": col, "l1": l1, "examples": examples, "n_items": seen, "n_gen": min(n_gen, seen)}


def ablation_losses(
    model,
    spec,
    hole,
    seed_gen,
    uncond_gen,
    stats,
    mask_fraction,
    steps,
    l1: dict,
    prefix: str,
    which: str,
) -> dict:
    """One model (intact, or under ``chunk_path_cut``): its seed-based and unconditional outputs (the same noise
    draws for intact and cut) and the bypass rows ``l1[prefix + "recon_" + which]`` / ``"inpaint_"``:

    * in-painting models: recon = L1 of model(spec) vs spec; inpaint = L1 of the seed-based output's hole;
    * flow models (weaktok/flow.py ``eval_loss``, the validation loss): recon = the velocity error with nothing
      known, inpaint = with the seed's part known, on the hole.
    Returns {"seed": (y, ModelOutput), "uncond": (y, ModelOutput), "forward": a ModelOutput of the real clips}."""
    from weaktok.model import flow

    g, frames = spec.shape[0], spec.shape[-1]
    y_s = G.seed_based(model, spec, stats, mask_fraction, steps, seed_gen())
    y_u = G.unconditional(model, stats, g, frames, steps, uncond_gen())
    if G.is_flow(model):
        nothing = torch.zeros(frames, dtype=torch.bool, device=spec.device)
        recon = flow.eval_loss(model, spec, nothing, uncond_gen())[0]
        inpaint = flow.eval_loss(model, spec, ~hole, seed_gen())[0]
        fwd = model(
            flow.normalise(model, spec),
            t=torch.ones(g, device=spec.device),
            known=nothing.expand(g, -1),
        )
    else:
        fwd = model(spec)
        recon = (fwd.recon - spec).abs().mean(dim=(1, 2))
        inpaint = (y_s[0] - spec)[..., hole].abs().mean(dim=(1, 2))
    l1[f"{prefix}recon_{which}"] += recon.tolist()
    l1[f"{prefix}inpaint_{which}"] += inpaint.tolist()
    return {"seed": y_s, "uncond": y_u, "forward": fwd}


# ----------------------------------------------------------------------------------------------------------
# Tables


def distribution_metrics(
    col: Collector, mode: str, sets: list[str], n_gen: int, train_feat: np.ndarray, seed: int
) -> dict:
    """Fréchet distance, KID and real-vs-generated accuracy of each set against held-out real clips (evaluation
    items that carry no outputs), on features z-scored by that reference; memorisation against the training bank."""
    real = col.get("data", mode, "feat")
    ref = (
        real[n_gen:] if len(real) - n_gen >= 16 else real
    )  # too few spare items: the reference overlaps `data`
    mu, sd = FT.standardizer(ref)
    z = lambda x: (x - mu) / sd  # noqa: E731
    cands = {
        "data": real[:n_gen] if len(real) - n_gen >= 16 else real,
        **{s: col.get(s, mode, "feat") for s in sets},
    }
    out = {
        "reference_items": int(len(ref)),
        "reference_overlaps_data": bool(len(real) - n_gen < 16),
    }
    for name, f in cands.items():
        kid_mean, kid_std = FT.kid(z(f), z(ref), seed=seed)
        out[name] = {
            "n": int(len(f)),
            "frechet": float(FT.frechet_distance(z(f), z(ref))),
            "kid": float(kid_mean),
            "kid_std": float(kid_std),
            "two_sample": FT.two_sample_accuracy(z(ref), z(f), seed=seed),
            "memorisation": FT.memorisation(z(f), z(train_feat), z(ref)),
        }
    return out


def seeds_of(name: str, n_models: int, col: Collector, mode: str) -> list[np.ndarray]:
    return [col.get(f"{name}{i}", mode) for i in range(n_models)]


def build_table(
    p: dict,
    models: list[G.Loaded],
    ref: dict,
    manifest_target: dict,
    regions: Regions,
    args: dict,
    n_boot: int,
    seed: int,
) -> dict:
    col, n_models = p["col"], len(models)
    names = list(manifest_target["names"])
    guided = ("model0_guided", "seed") in col.lscore
    t: dict = {
        "names": names,
        "goal": GOAL,
        "scored_region": regions.describe(),
        "n_items": {
            "data": p["n_items"],
            "generated_per_seed": p["n_gen"],
            "target": int(len(ref["lscore_uncond"])),
        },
        "seeds": [{"checkpoint": str(m.path), "train_seed": m.cfg.seed} for m in models],
        "target": {
            "definition": "mean exact L-Score of the training split's clips, cropped to each mode's "
            "scored region",
            "whole_items": {
                "mean": manifest_target["mean"],
                "std": manifest_target["std"],
                "definition": "mean exact L-Score of whole training items (manifest)",
            },
        },
        "baselines": {},
        "paper": PAPER_TABLE1,
    }
    for m in MODES:
        # the target is a fixed number (the mean of *these* training items, which the model was fitted to), like the
        # paper's predefined targets; its ci95 says how well it estimates the corpus-wide mean, for reference
        items = ref[f"lscore_{m}"]
        tgt = items.mean(0)
        own = summarize(items, tgt, n_boot=n_boot, seed=seed)
        t["target"][m] = {
            "mean": tgt.tolist(),
            "std": items.std(0).tolist(),
            "n": int(len(items)),
            "ci95": own["ci95"],
        }
        t[m] = summarize_seeds(seeds_of("model", n_models, col, m), tgt, n_boot=n_boot, seed=seed)
        if guided:
            t[f"{m}_guided"] = summarize_seeds(
                [col.get(f"model{i}_guided", m) for i in range(n_models)],
                tgt,
                n_boot=n_boot,
                seed=seed,
            )
        for b in ("data", "data_vocoder", "copy_seed", "prior_noise"):
            if (b, m) in col.lscore:
                t["baselines"].setdefault(b, {})[m] = summarize(
                    col.get(b, m), tgt, n_boot=n_boot, seed=seed
                )
    # goal: every term's relative error within GOAL (point estimate, and the whole interval)
    pooled = {m: t[m]["pooled"] for m in MODES}
    t["goal_met"] = all(abs(e) <= GOAL for m in MODES for e in pooled[m]["rel_err"])
    t["goal_met_ci"] = all(
        -GOAL <= lo and hi <= GOAL for m in MODES for lo, hi in pooled[m]["rel_err_ci95"]
    )
    t["within_goal"] = {m: [bool(abs(e) <= GOAL) for e in pooled[m]["rel_err"]] for m in MODES}
    t["data_floor_ci_halfwidth"] = {
        m: [(hi - lo) / 2 for lo, hi in t["baselines"]["data"][m]["rel_err_ci95"]] for m in MODES
    }
    # distributions: per training seed, then mean and sd over seeds
    t["frechet"], t["kid"], t["two_sample_accuracy"], t["memorisation"] = {}, {}, {}, {}
    for m in MODES:
        sets = (
            [f"model{i}" for i in range(n_models)]
            + [f"model{i}_cut" for i in range(n_models)]
            + [b for b in ("data_vocoder", "copy_seed", "prior_noise") if (b, m) in col.feat]
        )
        d = distribution_metrics(col, m, sets, p["n_gen"], ref[f"feat_{m}"], seed)
        for key, field in (
            ("frechet", "frechet"),
            ("kid", "kid"),
            ("two_sample_accuracy", "two_sample"),
            ("memorisation", "memorisation"),
        ):
            row = {
                "reference_items": d["reference_items"],
                "reference_overlaps_data": d["reference_overlaps_data"],
            }
            for name in ["data", "data_vocoder", "copy_seed", "prior_noise"]:
                if name in d:
                    row[name] = d[name][field]
            row["model"] = _over_seeds([d[f"model{i}"][field] for i in range(n_models)])
            if (
                "model0_cut" in d
            ):  # the bypass ablation's outputs (chunk path cut), same noise as the model's
                row["model_cut"] = _over_seeds([d[f"model{i}_cut"][field] for i in range(n_models)])
            t[key][m] = row
    # the bypass ablation: the chunk path cut vs intact, per seed, with the mean-spectrum predictor beside them
    l1 = p["l1"]
    flow_models = G.is_flow(models[0].model)
    t["bypass"] = {
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
        t["bypass"][what] = {
            "intact": float(np.mean(intact)),
            "cut": float(np.mean(cut)),
            "per_seed_intact": intact,
            "per_seed_cut": cut,
            "rel_change": float(np.mean(change)),
            "per_seed_rel_change": change,
            "cut_minus_intact_ci95": ci,
        }
    t["chunks"] = {
        "boundary_rate": float(
            np.mean(sum((l1[f"{i}:boundary_rate"] for i in range(n_models)), []))
        ),
        "chunks_per_s": float(np.mean(sum((l1[f"{i}:chunks_per_s"] for i in range(n_models)), []))),
        "generation_boundary_rate": float(
            np.mean(sum((l1[f"{i}:gen_boundary_rate"] for i in range(n_models)), []))
        ),
        "target_ratio": models[0].cfg.model.chunking.target_ratio,
        "kind": models[0].cfg.model.chunking.kind,
    }
    t.update(args)
    return t


def _over_seeds(per_seed: list[dict | float]) -> dict:
    """Per-seed values of a metric -> {per_seed, mean, sd} (dicts: their headline number; see _headline)."""
    vals = [_headline(v) for v in per_seed]
    finite = [v for v in vals if v is not None and np.isfinite(v)]
    return {
        "per_seed": per_seed,
        "mean": float(np.mean(finite)) if finite else None,
        "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else None,
    }


def _headline(v):
    if isinstance(v, dict):
        for k in ("accuracy", "ratio", "near_copy_fraction"):
            if k in v:
                return v[k]
        return None
    return v


def _mean(x) -> float:
    return float(np.mean(x)) if len(x) else float("nan")


# ----------------------------------------------------------------------------------------------------------
# Markdown


def _ci(lo_hi) -> str:
    lo, hi = lo_hi
    return f"[{100 * lo:+.0f}, {100 * hi:+.0f}]"


def _cell(s: dict, j: int) -> str:
    """'mean (rel [lo, hi])' for term j of a summary."""
    return f"{s['mean'][j]:.3f} ({pct(s['rel_err'][j])} {_ci(s['rel_err_ci95'][j])})"


def table1_markdown(t: dict) -> str:
    names, P, reg = t["names"], t["paper"], t["scored_region"]
    nseeds = len(t["seeds"])
    model = {m: t[m]["pooled"] for m in MODES}
    rows = []
    for j, name in enumerate(names):
        rows.append(
            [
                name,
                f"{t['target']['uncond']['mean'][j]:.3f}",
                _cell(t["baselines"]["data"]["uncond"], j),
                _cell(model["uncond"], j),
                f"{t['target']['seed']['mean'][j]:.3f}",
                _cell(t["baselines"]["data"]["seed"], j),
                _cell(model["seed"], j),
                f"{P['target'][j]:g}",
                f"{P['uncond'][j]:g} ({pct(P['uncond_rel_err'][j])})",
                f"{P['seed'][j]:g} ({pct(P['seed_rel_err'][j])})",
            ]
        )
    head = [
        "term",
        "Target uncond",
        "Data uncond",
        "Model uncond",
        "Target seed",
        "Data seed",
        "Model seed",
        "paper Target",
        "paper Uncond",
        "paper Seed",
    ]
    goal = "**met**" if t["goal_met"] else "**NOT met**"
    s = (
        f"# Table 1: exact L-Score of generated audio vs the training target\n\n"
        f"Evaluation split `{t['split']}` of `{t['eval_shards']}`: {t['n_items']['data']} items (the data floor); "
        f"{t['n_items']['generated_per_seed']} outputs per mode per training seed; {nseeds} training seed(s). "
        f"Unconditional: {reg['uncond']['what']} ({reg['uncond']['seconds']:g} s). Seed-based: "
        f"{reg['seed']['what']} ({reg['seed']['seconds']:g} s from {reg['seed']['start_s']:g} s).\n"
        f"Cells: mean (relative error vs the target [95 % bootstrap interval]). Target = the training split's "
        f"mean on crops of the same region ({t['n_items']['target']} items). Goal (every model term within "
        f"±{GOAL:.0%}): {goal} by the point estimates, {'met' if t['goal_met_ci'] else 'not met'} by the "
        f"intervals.\n\n"
        + md_table(head, rows)
        + f"\n{P['note']}\n\n## Baselines (relative error vs the target [95 % interval])\n\n"
    )
    for m in MODES:
        rows = []
        for b, per in t["baselines"].items():
            if m in per:
                rows.append(
                    [
                        b,
                        per[m]["n"] if isinstance(per[m]["n"], int) else per[m]["n"][0],
                        *[
                            f"{pct(e)} {_ci(c)}"
                            for e, c in zip(per[m]["rel_err"], per[m]["rel_err_ci95"])
                        ],
                    ]
                )
        pm = t[m]
        rows.append(
            [
                f"model ({nseeds} seed{'s' if nseeds > 1 else ''})",
                pm["pooled"]["n"] if isinstance(pm["pooled"]["n"], int) else pm["pooled"]["n"][0],
                *[
                    f"{pct(e)} {_ci(c)}"
                    for e, c in zip(pm["pooled"]["rel_err"], pm["pooled"]["rel_err_ci95"])
                ],
            ]
        )
        if f"{m}_guided" in t:
            g = t[f"{m}_guided"]["pooled"]
            rows.append(
                [
                    "model + L-Score guidance",
                    g["n"] if isinstance(g["n"], int) else g["n"][0],
                    *[f"{pct(e)} {_ci(c)}" for e, c in zip(g["rel_err"], g["rel_err_ci95"])],
                ]
            )
        s += (
            f"**{m}** ({reg[m]['seconds']:g} s scored)\n\n"
            + md_table(["set", "n", *names], rows)
            + "\n"
        )
        if nseeds > 1:
            s += (
                "Across training seeds (mean ± sd of the per-seed relative errors): "
                + ", ".join(
                    f"{n} {pct(mu)} ± {100 * sd:.1f}"
                    for n, mu, sd in zip(
                        names, pm["rel_err_over_seeds"]["mean"], pm["rel_err_over_seeds"]["sd"]
                    )
                )
                + "\n\n"
            )
    s += (
        "## Distributions (offline features; reference: held-out real clips)\n\n"
        "Fréchet distance and KID on z-scored features (weaktok/evaluation/features.py; lower = closer to real "
        "audio); two-sample = a real-vs-generated classifier's cross-validated accuracy (0.5 = indistinguishable); "
        "memorisation = median distance to the nearest training clip relative to held-out real clips' (< 1: "
        "closer to training items than new real audio is) and the share of near-copies.\n\n"
    )
    for m in MODES:
        rows = []
        for name in ("data", "data_vocoder", "copy_seed", "prior_noise", "model", "model_cut"):
            if name not in t["frechet"][m]:
                continue
            fd, kd, ts, mem = (
                t[k][m][name] for k in ("frechet", "kid", "two_sample_accuracy", "memorisation")
            )
            if name in ("model", "model_cut"):
                fd, kd = fd["mean"], kd["mean"]
                ts, mem = ts["per_seed"][0], mem["per_seed"][0]
                name = {"model": "model", "model_cut": "model, chunk path cut"}[name] + (
                    " (seed 1 of several; see JSON)" if nseeds > 1 else ""
                )
            acc = (
                "—"
                if ts.get("accuracy") is None
                else f"{ts['accuracy']:.2f} [{ts['ci95'][0]:.2f}, {ts['ci95'][1]:.2f}]"
            )
            rows.append(
                [
                    name,
                    f"{fd:.2f}",
                    f"{kd:.3f}",
                    acc,
                    f"{mem['ratio']:.2f}",
                    f"{mem['near_copy_fraction']:.2f}",
                ]
            )
        s += (
            f"**{m}** (reference: {t['frechet'][m]['reference_items']} real clips)\n\n"
            + md_table(
                ["set", "Fréchet", "KID", "two-sample acc", "memorisation ratio", "near-copies"],
                rows,
            )
            + "\n"
        )
    bp = t["bypass"]
    flow_measure = bp.get("measure") == "flow_loss"
    fd_rows = "".join(
        f"Fréchet distance ({m}): intact {t['frechet'][m]['model']['mean']:.2f}, chunk path cut "
        f"{t['frechet'][m]['model_cut']['mean']:.2f}.\n"
        for m in MODES
        if "model_cut" in t["frechet"][m]
    )
    s += (
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
    s += (
        f"Chunks ({c['kind']}, eval-mode boundaries): boundary rate {c['boundary_rate']:.3f} per bottleneck frame "
        f"on real clips (target 1/{c['target_ratio']:g}), {c['chunks_per_s']:.2f} chunks/s; "
        f"{c['generation_boundary_rate']:.3f} while generating (flow: mean over the ODE's model calls).\n"
    )
    if t.get("rulers"):
        from weaktok.evaluation.rulers import ruler_markdown

        s += "\n## What the rulers read (exact L-Score on reference signals)\n\n" + ruler_markdown(
            t["rulers"]
        )
    return s


# ----------------------------------------------------------------------------------------------------------
# The command


def evaluate(
    checkpoints,
    out: str | Path,
    split: str = "test",
    max_items: int = 0,
    n_gen: int = N_GEN,
    mask_fraction: float = G.MASK_FRACTION,
    steps: int | None = None,
    seconds: float | None = None,
    shards: str | None = None,
    train_shards: str | None = None,
    workers: int = 0,
    seed: int = 0,
    guidance_steps: int = 0,
    device: str | torch.device | None = None,
    n_boot: int = 2000,
    target_items: int = TARGET_ITEMS,
    rulers: bool = True,
    onset: str = "paper",
) -> dict:
    """Table 1 and everything beside it for one or more ``checkpoints`` (runs of different training seeds) on
    ``split`` of ``shards``; writes table1.json, table1.md and PNGs to ``out``.

    ``shards``: the evaluation items (default: the first model's data.shards); ``train_shards``: the training data
    behind the target and the memorisation bank (default: the first model's data.shards). ``onset``: the exact
    L-Score's onset preset for every set, target included (``paper``, the default, or ``clicks``: see
    weaktok/lscore/exact.py and docs/evaluation.md). ``max_items``: items of
    the data floor (0 = all); ``n_gen``: outputs per mode per checkpoint. ``device``: see
    ``weaktok.device.resolve_device`` (a missing GPU fails before anything is loaded or written)."""
    from weaktok.data.manifest import load_manifest
    from weaktok.device import resolve_device

    t0 = time.time()
    device = resolve_device(device)
    checkpoints = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if not checkpoints:
        raise ValueError("evaluate: no checkpoint given")
    models = [G.load_model(c, device) for c in checkpoints]
    cfg, sr = models[0].cfg, models[0].cfg.audio.sample_rate
    for m in models[1:]:
        if m.cfg.audio != cfg.audio:
            raise ValueError(
                f"{m.path}: audio settings differ from {models[0].path}; evaluate runs of one config"
            )
    shards = str(shards or cfg.data.shards)
    train_shards = str(train_shards or cfg.data.shards)
    manifest = load_manifest(shards)
    if split not in manifest["splits"]:
        raise ValueError(f"{shards}: no split '{split}' (has: {', '.join(manifest['splits'])})")
    if manifest["sample_rate"] != sr:
        raise ValueError(
            f"{shards}: sample rate {manifest['sample_rate']} Hz, the model's is {sr} Hz"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # Griffin-Lim's random phase init draws from the global generator
    seconds = seconds or max(EVAL_SECONDS, cfg.audio.clip_seconds)
    regions = make_regions(models[0].front, sr, seconds, mask_fraction)
    stats = G.cached_spectrum(models[0], train_shards)
    guidance = G.make_guidance(models[0], train_shards, seconds, guidance_steps)
    total = manifest["splits"][split]["count"]
    n_items = min(total, max_items) if max_items else total
    score = Scorer(sr, workers, onset)
    try:
        ref = training_reference(models[0], train_shards, regions, score, target_items, onset)
        p = evaluation_pass(
            models,
            stats,
            shards,
            split,
            regions,
            n_items,
            n_gen,
            mask_fraction,
            steps,
            score,
            seed,
            guidance,
        )
        ruler_rows = None
        if rulers:
            from weaktok.evaluation.rulers import ruler_check

            ruler_rows = ruler_check(sr=sr, seconds=seconds)
    finally:
        score.close()
    args = {
        "onset": onset,
        "split": split,
        "eval_shards": shards,
        "train_shards": train_shards,
        "clip_seconds": seconds,
        "device": str(device),
        "lscore_mode": cfg.lscore.mode,
        "generation": {
            "mask_fraction": mask_fraction,
            "steps": steps,
            "seed": seed,
            "guidance_steps": guidance_steps,
            "flow": G.is_flow(models[0].model),
        },
    }
    t = build_table(
        p, models, ref, load_manifest(train_shards)["lscore_target"], regions, args, n_boot, seed
    )
    t["rulers"] = ruler_rows
    t["seconds"] = round(time.time() - t0, 1)
    (out / "table1.json").write_text(json.dumps(t, indent=2, default=_json_default))
    (out / "table1.md").write_text(table1_markdown(t))
    _plots(models[0], p, t, ref, out)
    t["seconds"] = round(time.time() - t0, 1)
    (out / "table1.json").write_text(json.dumps(t, indent=2, default=_json_default))
    return t


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.bool_):
        return bool(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def plot_rel_err(t: dict, path: Path) -> Path:
    """Relative error vs the target with 95 % intervals, per term and mode: the model beside every baseline."""
    from weaktok.plots import _plt, _save

    plt = _plt()
    names = t["names"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8), sharey=False)
    for ax, m in zip(axes, MODES):
        sets = [(b, per[m]) for b, per in t["baselines"].items() if m in per] + [
            ("model", t[m]["pooled"])
        ]
        if f"{m}_guided" in t:
            sets.append(("model+G", t[f"{m}_guided"]["pooled"]))
        w = 0.8 / len(sets)
        for k, (label, s) in enumerate(sets):
            x = np.arange(len(names)) + (k - (len(sets) - 1) / 2) * w
            e = 100 * np.asarray(s["rel_err"])
            ci = 100 * np.asarray(s["rel_err_ci95"])
            ax.errorbar(
                x, e, yerr=[e - ci[:, 0], ci[:, 1] - e], fmt="o", ms=4, capsize=2, label=label
            )
        ax.axhspan(-100 * GOAL, 100 * GOAL, color="g", alpha=0.08, label=f"±{GOAL:.0%} goal")
        ax.axhline(0, color="k", lw=0.6)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set(
            title=f"{m}: {t['scored_region'][m]['seconds']:g} s scored",
            ylabel="relative error vs target (%)",
        )
        ax.set_yscale("symlog", linthresh=50)
    axes[0].legend(fontsize=7)
    return _save(fig, path)


def _plots(loaded: G.Loaded, p: dict, t: dict, ref: dict, out: Path) -> None:
    fs, sr = loaded.front.frame_seconds, loaded.cfg.audio.sample_rate
    col = p["col"]
    plot_rel_err(t, out / "rel_err.png")
    plot_lscore_hist(
        t["names"],
        {
            "data (uncond region)": col.get("data", "uncond"),
            "model uncond": col.get("model0", "uncond"),
            "data (seed region)": col.get("data", "seed"),
            "model seed": col.get("model0", "seed"),
        },
        t["target"]["uncond"]["mean"],
        out / "lscore_hist.png",
    )
    for i, ex in enumerate(p["examples"]):
        rows = [
            (ex["data"], ex["data_starts"], f"data {ex['key']} (model's chunks)"),
            (ex["seed"], ex["seed_starts"], "seed-based (scored: the in-painted last part)"),
            (ex["uncond"], ex["uncond_starts"], f"unconditional {i}"),
        ]
        plot_spectrogram_rows(rows, out / f"examples_{i}.png", fs, sr)
    run = loaded.path.parent.parent if loaded.path.parent.name == "final" else loaded.path.parent
    plot_training_curves(run / "metrics.jsonl", out / "training_curves.png")
