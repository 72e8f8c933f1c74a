"""Table 1 as a dict (table1.json): each set's exact L-Score vs the length-matched training target with 95 %
intervals, aggregated over training seeds, the distribution metrics, the bypass ablation and the chunks.

    t = build_table(p, models, ref, manifest_target, regions, args, n_boot, seed)
    t["seed"]["pooled"]["rel_err_ci95"]       # per term, pooled over training seeds
    t["baselines"]["copy_seed"]["seed"]       # the same summary for a no-model baseline

* **Target.** The mean exact L-Score of the model's *training* split, measured on crops of the scored region,
  not on whole items: rhythmic irregularity grows with the window, so whole-item targets penalise any clip
  shorter than an item, real or generated. The whole-item (manifest) target is reported beside it. The paper's
  targets were predefined numbers, not dataset means: its columns are quoted for reference, not as a
  like-for-like comparison.
* **Uncertainty.** Percentile bootstrap over items (``weaktok.evaluation.stats``) for every mean and relative
  error. Several checkpoints: mean ± sd across training seeds and a stratified, pooled interval.
* **Surrogate bias** (``surrogate_bias``): the L-Score loss's differentiable surrogate on each set's spectrograms
  against the exact scores of the same clips, as mean(surrogate) / mean(exact) - 1 and Spearman's rho per term. On
  the model's own outputs this is the offset the loss works with (the closed loop's job, docs/generative-model.md).
* **Distributions** (``weaktok.evaluation.features``): Fréchet distance and KID to held-out real clips (the
  evaluation items not used for outputs), a real-vs-generated classifier's accuracy (0.5 = indistinguishable),
  and memorisation (generated clips' nearest training clip vs held-out real clips' nearest training clip).
"""

from __future__ import annotations

import numpy as np
from scipy import stats as sps

from weaktok import generate as G
from weaktok.evaluation import features as FT
from weaktok.evaluation.bypass import bypass_table, chunks_table
from weaktok.evaluation.collect import Collector
from weaktok.evaluation.scoring import Regions
from weaktok.evaluation.stats import summarize, summarize_seeds
from weaktok.generate.sampler import MODES
from weaktok.lscore.exact import LSCORE_NAMES

GOAL = 0.15  # the research goal: every term within 15 % of the target
BASELINES = ("data", "data_vocoder", "copy_seed", "prior_noise")

# The paper's Table 1 (docs/evaluation.md quotes it): predefined targets and its model's exact L-Scores.
PAPER_TABLE1 = {
    "names": list(LSCORE_NAMES),
    "target": [0.4, 0.8, 0.6, 0.5],
    "uncond": [0.409, 2.962, 0.739, 0.496],
    "seed": [0.502, 6.667, 0.067, 0.571],
    "note": "The paper's targets are predefined numbers, not dataset statistics; its outputs' length and scored "
    "region are not stated. Its relative errors are quoted for reference, not as a like-for-like "
    "comparison with ours (our target: the training split's mean on crops of the scored region).",
}
PAPER_TABLE1.update(
    {
        f"{m}_rel_err": [(v - t) / t for v, t in zip(PAPER_TABLE1[m], PAPER_TABLE1["target"])]
        for m in MODES
    }
)


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
    z = lambda x: (x - mu) / sd
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


def _header(p: dict, models: list[G.Loaded], ref: dict, manifest_target: dict, regions) -> dict:
    """The table's fixed fields: term names, goal, scored region, item counts, seeds, target definitions."""
    return {
        "names": list(manifest_target["names"]),
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
    """``p``: the evaluation pass; ``ref``: the training reference; ``args``: the run's settings, copied in."""
    col, n_models = p["col"], len(models)
    guided = ("model0_guided", "seed") in col.lscore
    t = _header(p, models, ref, manifest_target, regions)
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
        per_seed = [col.get(f"model{i}", m) for i in range(n_models)]
        t[m] = summarize_seeds(per_seed, tgt, n_boot=n_boot, seed=seed)
        if guided:
            t[f"{m}_guided"] = summarize_seeds(
                [col.get(f"model{i}_guided", m) for i in range(n_models)],
                tgt,
                n_boot=n_boot,
                seed=seed,
            )
        for b in BASELINES:
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
    _distributions(t, p, ref, n_models, seed)
    t["surrogate_bias"] = surrogate_bias(col, n_models)
    flow_models = G.is_flow(models[0].model)
    t["bypass"] = bypass_table(p["l1"], n_models, flow_models, n_boot, seed)
    t["chunks"] = chunks_table(p["l1"], n_models, models[0].cfg.model.chunking)
    t.update(args)
    return t


def _bias(exact: np.ndarray, surr: np.ndarray) -> dict:
    """(n, 4) exact and surrogate scores of the same clips -> per term bias = mean(surrogate) / mean(exact) - 1
    (None where the exact mean is 0) and Spearman's rho (None where either side is constant)."""
    e, s = exact.mean(0), surr.mean(0)
    bias = [float(b / a - 1) if abs(a) > 1e-12 else None for a, b in zip(e, s)]
    rho = []
    for j in range(exact.shape[1]):
        ok = len(exact) > 2 and np.ptp(exact[:, j]) > 0 and np.ptp(surr[:, j]) > 0
        rho.append(float(sps.spearmanr(exact[:, j], surr[:, j])[0]) if ok else None)
    return {"bias": bias, "spearman": rho, "exact_mean": e.tolist(), "surrogate_mean": s.tolist()}


def surrogate_bias(col: Collector, n_models: int) -> dict:
    """t["surrogate_bias"][mode]: the surrogate's bias on the data, on every baseline and on the model's outputs
    (per training seed, then the mean and sd of the bias and the mean rho over seeds)."""
    out = {}
    for m in MODES:
        row = {
            b: _bias(col.get(b, m), col.get(b, m, "surrogate"))
            for b in BASELINES
            if (b, m) in col.surrogate
        }
        per_seed = [
            _bias(col.get(f"model{i}", m), col.get(f"model{i}", m, "surrogate"))
            for i in range(n_models)
        ]
        bias = np.array([[np.nan if b is None else b for b in r["bias"]] for r in per_seed])
        rho = [[r["spearman"][j] for r in per_seed] for j in range(bias.shape[1])]
        row["model"] = {
            "per_seed": per_seed,
            "bias": np.nanmean(bias, 0).tolist(),
            "bias_sd": np.nanstd(bias, 0, ddof=1).tolist() if n_models > 1 else None,
            "spearman": [None if None in r else float(np.mean(r)) for r in rho],
        }
        out[m] = row
    return out


def _distributions(t: dict, p: dict, ref: dict, n_models: int, seed: int) -> None:
    """t["frechet"|"kid"|"two_sample_accuracy"|"memorisation"][mode]: per training seed, mean and sd over seeds."""
    col = p["col"]
    t["frechet"], t["kid"], t["two_sample_accuracy"], t["memorisation"] = {}, {}, {}, {}
    for m in MODES:
        sets = (
            [f"model{i}" for i in range(n_models)]
            + [f"model{i}_cut" for i in range(n_models)]
            + [b for b in BASELINES if b != "data" and (b, m) in col.feat]
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
            for name in BASELINES:
                if name in d:
                    row[name] = d[name][field]
            row["model"] = _over_seeds([d[f"model{i}"][field] for i in range(n_models)])
            if (
                "model0_cut" in d
            ):  # the bypass ablation's outputs (chunk path cut), same noise as the model's
                row["model_cut"] = _over_seeds([d[f"model{i}_cut"][field] for i in range(n_models)])
            t[key][m] = row
