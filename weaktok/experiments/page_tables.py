"""The listening page's tables as HTML, from table1.json (the dict ``weaktok.evaluation.table.build_table``
returns): Table 1 with intervals beside the paper's eight cells, the baselines, the distances, the bypass ablation.
Cells read like table1.md's: mean, then relative error [95 % interval]. Every text is escaped."""

from __future__ import annotations

from html import escape

from weaktok.plots import chunks_target, pct

MODES = ("uncond", "seed")


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (each caller escapes its text); the header is escaped here."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (
        f'<div class="wide"><table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table></div>'
    )


def _ci(lo_hi) -> str:
    lo, hi = lo_hi
    return f'<span class="ci">[{100 * lo:+.0f}, {100 * hi:+.0f}]</span>'


def _rel(e: float, c, goal: float | None = None) -> str:
    cls = "" if goal is None else (' class="ok"' if abs(e) <= goal else ' class="bad"')
    return f"<span{cls}>{escape(pct(e))}</span> {_ci(c)}"


def _cell(s: dict, j: int, goal: float | None = None) -> str:
    return f"{s['mean'][j]:.3f}<br>{_rel(s['rel_err'][j], s['rel_err_ci95'][j], goal)}"


def _n(s: dict) -> int:
    return s["n"] if isinstance(s["n"], int) else s["n"][0]


def table1(t: dict) -> str:
    """Target, data floor and model per term and mode, beside the paper's columns (its eight cells quoted)."""
    P, goal, data = t["paper"], t["goal"], t["baselines"]["data"]
    rows = []
    for j, name in enumerate(t["names"]):
        rows.append(
            [
                escape(name),
                f"{t['target']['uncond']['mean'][j]:.3f}",
                _cell(data["uncond"], j),
                _cell(t["uncond"]["pooled"], j, goal),
                f"{t['target']['seed']['mean'][j]:.3f}",
                _cell(data["seed"], j),
                _cell(t["seed"]["pooled"], j, goal),
                f"{P['target'][j]:g}",
                f"{P['uncond'][j]:g} ({escape(pct(P['uncond_rel_err'][j]))})",
                f"{P['seed'][j]:g} ({escape(pct(P['seed_rel_err'][j]))})",
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
    return (
        _table(head, rows)
        + f"<p class=note>Cells: mean, then its relative error vs the target [95 % bootstrap interval]; model "
        f"cells are green within ±{100 * goal:g} %, red outside. Target = the training split's mean on crops of "
        f"the scored region ({t['n_items']['target']} items). {escape(P['note'])}</p>"
    )


def baselines(t: dict) -> str:
    """Per mode: every baseline's and the model's relative errors with intervals."""
    out = ""
    for m in MODES:
        rows = [
            [escape(b), str(_n(per[m]))]
            + [_rel(e, c) for e, c in zip(per[m]["rel_err"], per[m]["rel_err_ci95"])]
            for b, per in t["baselines"].items()
            if m in per
        ]
        for label, key in (("model", m), ("model + L-Score guidance", f"{m}_guided")):
            if key in t:
                s = t[key]["pooled"]
                rows.append(
                    [escape(label), str(_n(s))]
                    + [_rel(e, c, t["goal"]) for e, c in zip(s["rel_err"], s["rel_err_ci95"])]
                )
        out += f"<h3>{m} ({t['scored_region'][m]['seconds']:g} s scored)</h3>" + _table(
            ["set", "n", *t["names"]], rows
        )
    return out + (
        "<p class=note>Relative error vs the target [95 % interval]. data: the evaluation items; data_vocoder: "
        "their spectrograms through Griffin-Lim; copy_seed: the seed tiled into the hole; prior_noise: the "
        "generation prior's noise (docs/evaluation.md, 'Sets and baselines').</p>"
    )


def distances(t: dict) -> str:
    """Per mode: Fréchet distance, KID, two-sample accuracy and memorisation of every set."""
    out = ""
    for m in MODES:
        rows = []
        for name in ("data", "data_vocoder", "copy_seed", "prior_noise", "model", "model_cut"):
            if name not in t["frechet"][m]:
                continue
            fd, kd, ts, mem = (
                t[k][m][name] for k in ("frechet", "kid", "two_sample_accuracy", "memorisation")
            )
            if name in (
                "model",
                "model_cut",
            ):  # over checkpoints: mean distances; the first's test and memory
                fd, kd, ts, mem = fd["mean"], kd["mean"], ts["per_seed"][0], mem["per_seed"][0]
            acc = (
                "—"
                if ts.get("accuracy") is None
                else (
                    f"{ts['accuracy']:.2f} "
                    + f'<span class="ci">[{ts["ci95"][0]:.2f}, {ts["ci95"][1]:.2f}]</span>'
                )
            )
            label = {"model_cut": "model, chunk path cut"}.get(name, name)
            rows.append(
                [
                    escape(label),
                    f"{fd:.2f}",
                    f"{kd:.3f}",
                    acc,
                    f"{mem['ratio']:.2f}",
                    f"{mem['near_copy_fraction']:.2f}",
                ]
            )
        out += (
            f"<h3>{m} (reference: {t['frechet'][m]['reference_items']} real clips)</h3>"
            + _table(
                ["set", "Fréchet", "KID", "two-sample acc", "memorisation ratio", "near-copies"],
                rows,
            )
        )
    return out + (
        "<p class=note>Fréchet distance and KID on z-scored offline features (lower = closer to real audio); "
        "two-sample = a real-vs-generated classifier's accuracy (0.5 = indistinguishable); memorisation = "
        "median distance to the nearest training clip relative to held-out real clips' (&lt; 1: closer to "
        "training items than new real audio is).</p>"
    )


def bypass(t: dict) -> str:
    """The chunk path cut vs intact, and the chunk statistics."""
    bp, c = t["bypass"], t["chunks"]
    flow = bp.get("measure") == "flow_loss"
    rows = [
        [
            w,
            f"{bp[w]['intact']:.4f}",
            f"{bp[w]['cut']:.4f}",
            escape(pct(bp[w]["rel_change"])),
            f"[{bp[w]['cut_minus_intact_ci95'][0]:+.4f}, {bp[w]['cut_minus_intact_ci95'][1]:+.4f}]",
            "—" if flow else f"{bp['mean_spectrum'][w + '_l1']:.4f}",
        ]
        for w in ("recon", "inpaint")
    ]
    head = [
        "flow loss (velocity MSE)" if flow else "L1 (log1p spectrogram)",
        "intact",
        "chunk path cut",
        "change",
        "cut − intact [95 %]",
        "corpus mean spectrum (L1)",
    ]
    return (
        _table(head, rows)
        + f"<p class=note>{escape(bp['definition'])}.</p>"
        + f"<p class=note>Chunks ({escape(str(c['kind']))}): boundary rate {c['boundary_rate']:.3f} per bottleneck "
        f"frame on real clips ({escape(chunks_target(c))}), {c['chunks_per_s']:.2f} chunks/s; "
        f"{c['generation_boundary_rate']:.3f} while generating.</p>"
    )
