"""The demo's report.md: Table 1, the plots and the WAVs linked, with the stage timings."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from weaktok.generate.sampler import MODES
from weaktok.plots import md_table, pct, read_jsonl


def _rel(path: str | Path, base: Path) -> str:
    return os.path.relpath(Path(path).resolve(), base.resolve())


def _training_summary(run: Path) -> dict:
    m = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    val = [r for r in m if r.get("kind") == "val"]
    train = [r for r in m if r.get("kind") == "train"]
    return {
        "steps": val[-1]["step"] if val else 0,
        "epochs": val[-1]["epoch"] if val else 0,
        "val_recon": [val[0]["val_recon"], val[-1]["val_recon"]] if val else None,
        "samples_per_s": float(np.median([r["samples_per_s"] for r in train])) if train else None,
    }


def _metrics_url(plan, run: Path) -> str:
    url = plan.notes.get("metrics_url")
    if not url and (run / "metrics_url.txt").is_file():
        url = (run / "metrics_url.txt").read_text().strip()
    return url or "(unknown)"


def write_demo_report(plan, run: Path, table: dict, gens: dict) -> Path:
    """runs/demo/report.md linking Table 1, the plots and the WAVs, with the stage timings."""
    base = plan.out
    ev = base / "eval"
    tr = _training_summary(run)
    cfg = read_yaml(run / "config.yaml")
    stages = [k for k in plan.timings if k != "total"]
    built = {
        k: plan.earlier.get(k, plan.timings[k])
        if "reused" in plan.notes.get(k, "")
        else plan.timings[k]
        for k in stages
    }
    timing_rows = [
        [k, f"{plan.timings[k]:.1f}", f"{built[k]:.1f}", plan.notes.get(k, "")] for k in stages
    ]
    timing_rows.append(
        [
            "**total**",
            f"**{plan.timings.get('total', 0):.1f}**",
            f"**{sum(built.values()):.1f}**",
            "without the report stage",
        ]
    )
    goal = "**met**" if table["goal_met"] else "**not met**"

    def misses(kinds) -> list[str]:  # terms outside the goal, e.g. "density (uncond +40.0 %)"
        return [
            f"{n} ({kind} {pct(table[kind]['pooled']['rel_err'][j])})"
            for kind in kinds
            for j, n in enumerate(table["names"])
            if not table["within_goal"][kind][j]
        ]

    alone = misses(MODES)
    t1 = (ev / "table1.md").read_text().split("\n", 2)[2].replace("\n## ", "\n### ")
    bp = table["bypass"]
    lines = [
        "# weaktok demo report",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {'GPU' if torch.cuda.is_available() else 'no GPU'}). "
        f"Config `{' '.join([plan.config, *plan.overrides])}`; {plan.ranks} DeepSpeed ranks, ZeRO "
        f"{cfg['train']['zero_stage']}.",
        "",
        "**Listen:** open [index.html](index.html) in a browser (Markdown viewers do not play WAVs): Table 1, the "
        f"plots and a player with its spectrogram for every clip (`weaktok report {base}` rewrites it).",
        "",
        "## Timings",
        "",
        md_table(["stage", "this run (s)", "from scratch (s)", "note"], timing_rows),
        "`from scratch`: what each stage took when it last ran for real (a re-run reuses the corpus, the shards and "
        "a finished training run).",
        "",
        "## Training",
        "",
        f"Run folder `{_rel(run, base)}` ({tr['epochs']} epochs, {tr['steps']} optimizer steps; median "
        f"{tr['samples_per_s'] or 0:.1f} samples/s). Curriculum (the paper's two phases, scaled): "
        f"reconstruction only for {cfg['curriculum']['warmup_epochs']:g} epochs, then w_L 0 → "
        f"{cfg['curriculum']['final_w_L']:g} and w_recon 1 → {cfg['curriculum']['final_w_recon']:g} over "
        f"{cfg['curriculum']['anneal_epochs']:g} epochs.",
        *(
            [
                f"Validation recon L1 {tr['val_recon'][0]:.4f} after the first epoch → {tr['val_recon'][1]:.4f} at "
                "the end."
            ]
            if tr["val_recon"]
            else []
        ),
        f"Prometheus metrics were served at {_metrics_url(plan, run)} while it trained.",
        "",
        f"![training curves]({_rel(ev / 'training_curves.png', base)})",
        "",
        "## Table 1",
        "",
        t1,
        f"Research goal (every L-Score term of Uncond and Seed within ±{100 * table['goal']:g} % of the target), "
        f"the model alone: {goal}." + (f" Outside: {', '.join(alone)}." if alone else ""),
        "",
        f"Is the chunk path load-bearing? Cutting it (bottleneck = identity) changes reconstruction L1 by "
        f"{pct(bp['recon']['rel_change'])} and in-painting L1 by {pct(bp['inpaint']['rel_change'])}; predicting "
        f"the corpus mean spectrum in the hole scores {bp['mean_spectrum']['inpaint_l1']:.4f} vs the model's "
        f"{bp['inpaint']['intact']:.4f}.",
        "",
        f"![relative errors with 95 % intervals]({_rel(ev / 'rel_err.png', base)})",
        "",
        f"![L-Score histograms]({_rel(ev / 'lscore_hist.png', base)})",
        "",
        "Examples (data with the model's chunk boundaries, its seed-based continuation, an unconditional output):",
        "",
        *[f"![example]({_rel(p, base)})" for p in sorted(ev.glob("examples_*.png"))],
        "",
        "## Generated audio",
        "",
        "Both modes in-paint a hole by iterative refinement: the hole starts as noise shaped like the corpus "
        "spectrum (its mean, principal spectral shapes and their frame-to-frame correlation), and each model pass "
        "blends less fresh noise into the model's output. Seed-based: the hole is the last half of a test clip "
        "(the first half stays the seed). Unconditional: the hole is the whole clip. Griffin-Lim turns "
        "spectrograms into audio; each PNG shows the chunk boundaries (cyan). See the README, 'Generation'.",
        "",
    ]
    for kind in ("unconditional", "seed"):
        g = gens[kind]
        folder = base / "generate" / ("unconditional" if kind == "unconditional" else "seed")
        lines += [f"### {kind}", ""]
        for r, src in zip(g["outputs"], g.get("seed_audio") or [None] * len(g["outputs"])):
            seed = f" (seed: [{Path(src).name}]({_rel(src, base)}))" if src else ""
            lines.append(
                f"- [{r['name']}.wav]({_rel(folder / r['wav'], base)}) · "
                f"[spectrogram]({_rel(folder / r['png'], base)}) · {r['chunks']} chunks{seed}"
            )
        lines.append("")
    again = "weaktok demo --quick" if plan.config == "tiny" else "make demo"
    lines += [
        "## Reproduce",
        "",
        "```bash",
        f"{again:43s} # this report (reuses corpus, shards and the run)",
        f"weaktok evaluate --checkpoint {run} --shards {plan.eval_shards} --split eval --out {ev}",
        f"weaktok generate --checkpoint {run} --unconditional --n 8 --out {base}/generate/unconditional",
        f"weaktok ablate --config {plan.config} --out runs/ablate data.shards={plan.shards}   # dynamic vs fixed"
        ", surrogate vs paper",
        "```",
        "",
    ]
    path = base / "report.md"
    path.write_text("\n".join(lines))
    return path


def read_yaml(path: str | Path) -> dict:
    return yaml.safe_load(Path(path).read_text())
