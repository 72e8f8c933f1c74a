"""table1.md: Table 1 and everything beside it as markdown, from the dict ``build_table`` returns (the cells read
``mean (relative error vs the target [95 % interval])``).

    (out / "table1.md").write_text(table1_markdown(t))
"""

from __future__ import annotations

from weaktok.evaluation.bypass import bypass_markdown
from weaktok.evaluation.ruler_tables import ruler_markdown
from weaktok.evaluation.table import GOAL
from weaktok.generate.sampler import MODES
from weaktok.plots import md_table, pct


def _ci(lo_hi) -> str:
    lo, hi = lo_hi
    return f"[{100 * lo:+.0f}, {100 * hi:+.0f}]"


def _cell(s: dict, j: int) -> str:
    """'mean (rel [lo, hi])' for term j of a summary."""
    return f"{s['mean'][j]:.3f} ({pct(s['rel_err'][j])} {_ci(s['rel_err_ci95'][j])})"


def table1_markdown(t: dict) -> str:
    """table1.md: the main table, the baselines, the distributions, the bypass ablation and the rulers."""
    s = _main_table(t) + _baselines(t) + _distributions(t) + _surrogate(t) + bypass_markdown(t)
    if t.get("rulers"):
        s += "\n## What the rulers read (exact L-Score on reference signals)\n\n" + ruler_markdown(
            t["rulers"]
        )
    return s


def _main_table(t: dict) -> str:
    """Target, data floor and model per term and mode, beside the paper's columns."""
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
    return (
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


def _baselines(t: dict) -> str:
    """Per mode: every baseline's and the model's relative errors with intervals."""
    names, reg, nseeds = t["names"], t["scored_region"], len(t["seeds"])
    s = ""
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
    return s


def _distributions(t: dict) -> str:
    """Per mode: Fréchet distance, KID, two-sample accuracy and memorisation of every set."""
    nseeds = len(t["seeds"])
    s = ""
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
    return s


def _surrogate(t: dict) -> str:
    """The L-Score loss's surrogate against the exact scores of the same clips, per set and mode."""
    names, n_seeds = t["names"], len(t["seeds"])
    rows = []
    for m in MODES:
        for name, r in t["surrogate_bias"][m].items():
            if name == "model" and n_seeds > 1:
                name = f"model (mean of {n_seeds} seeds)"
            cells = [
                f"{pct(b)} / {'—' if c is None else f'{c:.2f}'}"
                for b, c in zip(r["bias"], r["spearman"])
            ]
            rows.append([m, name, *cells])
    return (
        "## The L-Score loss's surrogate on these clips\n\n"
        "Each cell: bias = mean(surrogate) / mean(exact) − 1, then Spearman's ρ, over the scored clips. The "
        "surrogate reads the spectrogram as training's loss does (for outputs: the one the model emits, before "
        "Griffin-Lim); the exact score reads the waveform. On the model's outputs the bias is the offset the "
        "L-Score loss works with (docs/generative-model.md, the closed loop).\n\n"
        + md_table(["mode", "set", *names], rows)
        + "\n"
    )
