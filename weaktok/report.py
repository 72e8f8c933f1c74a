"""Plots and markdown: spectrograms with chunk boundaries, L-Score histograms, training curves, Table 1, report.md.

Everything renders with matplotlib's Agg backend (no display needed) and returns the path it wrote.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    _plt().close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------
# Spectrograms


def draw_spectrogram(ax, spec, starts, frame_seconds: float, sample_rate: int, title: str = "",
                     vmax: float | None = None) -> None:
    """spec (F, T) log1p magnitude on ``ax``; cyan lines at chunk starts (spectrogram frames)."""
    spec = np.asarray(spec.detach().cpu() if hasattr(spec, "detach") else spec)
    F, T = spec.shape
    vmax = vmax or max(float(np.percentile(spec, 99.5)), 1e-3)
    ax.imshow(spec, origin="lower", aspect="auto", cmap="magma", vmin=0, vmax=vmax,
              extent=(0, T * frame_seconds, 0, sample_rate / 2000))
    extra = ""
    if starts is not None:
        for s in np.asarray(starts)[1:]:  # the first chunk always starts at 0
            ax.axvline(s * frame_seconds, color="cyan", lw=0.7, alpha=0.8)
        extra = f"  ({len(starts)} chunks, {len(starts) / max(T * frame_seconds, 1e-9):.1f}/s)"
    ax.set(xlabel="time (s)", ylabel="kHz", title=f"{title}{extra}")


def plot_spectrogram(spec, starts, path: str | Path, frame_seconds: float, sample_rate: int,
                     title: str = "") -> Path:
    """One spectrogram (F, T) with chunk boundaries -> PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 3.4))
    draw_spectrogram(ax, spec, starts, frame_seconds, sample_rate, title)
    return _save(fig, path)


def plot_spectrogram_rows(rows: list[tuple], path: str | Path, frame_seconds: float, sample_rate: int) -> Path:
    """Stacked spectrograms; rows = [(spec (F, T), starts or None, title), ...] sharing one colour scale."""
    plt = _plt()
    vmax = max(float(np.percentile(np.asarray(r[0]), 99.5)) for r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for ax, (spec, starts, title) in zip(axes[:, 0], rows):
        draw_spectrogram(ax, spec, starts, frame_seconds, sample_rate, title, vmax)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------
# L-Score histograms and training curves


def plot_lscore_hist(names: list[str], sets: dict[str, np.ndarray], target: list[float], path: str | Path) -> Path:
    """One panel per L-Score term: histograms of each set ({label: (N, 4)}), the target mean as a line."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for j, (ax, name) in enumerate(zip(np.atleast_1d(axes), names)):
        vals = [np.asarray(v)[:, j] for v in sets.values() if len(v)]
        lo, hi = min(v.min() for v in vals), max(v.max() for v in vals)
        bins = np.linspace(lo, hi + 1e-9, 20)
        for label, v in sets.items():
            if len(v):
                ax.hist(np.asarray(v)[:, j], bins=bins, alpha=0.45, label=f"{label} ({len(v)})", density=True)
        ax.axvline(target[j], color="k", ls="--", lw=1, label="target")
        ax.set(title=name)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return _save(fig, path)


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curves(metrics_path: str | Path, path: str | Path) -> Path | None:
    """Loss terms, validation recon, boundary rate and the L-Score error of validation's generations (unconditional
    and seed-based) from a run's metrics.jsonl."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    m = read_jsonl(metrics_path)
    train = [r for r in m if r.get("kind") == "train"]
    val = [r for r in m if r.get("kind") == "val"]
    plt = _plt()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    step = [r["step"] for r in train]
    for key in ("loss", "recon", "lscore_dist", "ratio_loss"):
        if train and key in train[0]:
            axes[0].plot(step, [r[key] for r in train], label=key, lw=1)
    axes[0].set(title="training losses", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    if val:
        axes[1].plot([r["step"] for r in val], [r["val_recon"] for r in val], "o-", label="val recon L1")
    if train and "recon" in train[0]:
        axes[1].plot(step, [r["recon"] for r in train], lw=0.8, alpha=0.6, label="train recon L1")
    axes[1].set(title="reconstruction", xlabel="step")
    axes[1].legend(fontsize=7)
    if train and "chunk_boundary_rate" in train[0]:
        axes[2].plot(step, [r["chunk_boundary_rate"] for r in train], lw=1, label="train")
    if val:
        axes[2].plot([r["step"] for r in val], [r["val_boundary_rate"] for r in val], "o-", label="val")
    axes[2].set(title="boundary rate (bottleneck)", xlabel="step")
    axes[2].legend(fontsize=7)
    scored = False
    for mode, style in (("uncond", "o-"), ("seed", "s--")):  # one line per term and generation mode
        errs = [r for r in val if f"val_gen_{mode}_rel_err" in r]
        for j, name in enumerate(errs[0].get("lscore_names", [f"term {i}" for i in range(4)]) if errs else []):
            axes[3].plot([r["step"] for r in errs], [r[f"val_gen_{mode}_rel_err"][j] for r in errs], style,
                         color=f"C{j}", label=f"{name} ({mode})")
        scored = scored or bool(errs)
    if scored:
        axes[3].axhline(0.15, color="k", ls="--", lw=0.8)
        axes[3].legend(fontsize=6)
    if train and "w_L" in train[0]:
        ax2 = axes[3].twinx()
        ax2.plot(step, [r["w_L"] for r in train], color="gray", lw=0.8, alpha=0.6)
        ax2.set_ylabel("w_L (curriculum)", color="gray")
    axes[3].set(title="val |rel. error| of exact L-Score (generations)", xlabel="step")
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Markdown


def pct(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:+.1f} %"


def md_table(header: list[str], rows: list[list]) -> str:
    fmt = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in fmt]) + "\n"


# ----------------------------------------------------------------------------------------------------------
# The demo's report.md


def _rel(path: str | Path, base: Path) -> str:
    import os

    return os.path.relpath(Path(path).resolve(), base.resolve())


def _training_summary(run: Path) -> dict:
    m = read_jsonl(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    val = [r for r in m if r.get("kind") == "val"]
    train = [r for r in m if r.get("kind") == "train"]
    return {"steps": val[-1]["step"] if val else 0, "epochs": val[-1]["epoch"] if val else 0,
            "val_recon": [val[0]["val_recon"], val[-1]["val_recon"]] if val else None,
            "samples_per_s": float(np.median([r["samples_per_s"] for r in train])) if train else None}


def _metrics_url(plan, run: Path) -> str:
    url = plan.notes.get("metrics_url")
    if not url and (run / "metrics_url.txt").is_file():
        url = (run / "metrics_url.txt").read_text().strip()
    return url or "(unknown)"


def write_demo_report(plan, run: Path, table: dict, gens: dict) -> Path:
    """runs/demo/report.md linking Table 1, the plots and the WAVs, with the stage timings."""
    import platform

    import torch

    base = plan.out
    ev = base / "eval"
    tr = _training_summary(run)
    cfg = read_yaml(run / "config.yaml")
    stages = [k for k in plan.timings if k != "total"]
    built = {k: plan.earlier.get(k, plan.timings[k]) if "reused" in plan.notes.get(k, "") else plan.timings[k]
             for k in stages}
    timing_rows = [[k, f"{plan.timings[k]:.1f}", f"{built[k]:.1f}", plan.notes.get(k, "")] for k in stages]
    timing_rows.append(["**total**", f"**{plan.timings.get('total', 0):.1f}**", f"**{sum(built.values()):.1f}**",
                        "without the report stage"])
    goal = "**met**" if table["goal_met"] else "**not met**"

    def misses(kinds) -> list[str]:  # terms outside the goal, e.g. "density (uncond +40.0 %)"
        return [f"{n} ({kind} {pct(table[kind]['pooled']['rel_err'][j])})" for kind in kinds
                for j, n in enumerate(table["names"]) if not table["within_goal"][kind][j]]

    alone = misses(("uncond", "seed"))
    t1 = (ev / "table1.md").read_text().split("\n", 2)[2].replace("\n## ", "\n### ")
    bp = table["bypass"]
    lines = [
        "# weaktok demo report", "",
        f"{time.strftime('%Y-%m-%d %H:%M')} on {platform.node()} ({os.cpu_count()} CPU cores, torch "
        f"{torch.__version__}, {'GPU' if torch.cuda.is_available() else 'no GPU'}). "
        f"Config `{' '.join([plan.config, *plan.overrides])}`; {plan.ranks} DeepSpeed ranks, ZeRO "
        f"{cfg['train']['zero_stage']}.", "",
        "## Timings", "", md_table(["stage", "this run (s)", "from scratch (s)", "note"], timing_rows),
        "`from scratch`: what each stage took when it last ran for real (a re-run reuses the corpus, the shards and "
        "a finished training run).", "",
        "## Training", "",
        f"Run folder `{_rel(run, base)}` ({tr['epochs']} epochs, {tr['steps']} optimizer steps; median "
        f"{tr['samples_per_s'] or 0:.1f} samples/s). Curriculum (the paper's two phases, scaled): "
        f"reconstruction only for {cfg['curriculum']['warmup_epochs']:g} epochs, then w_L 0 → "
        f"{cfg['curriculum']['final_w_L']:g} and w_recon 1 → {cfg['curriculum']['final_w_recon']:g} over "
        f"{cfg['curriculum']['anneal_epochs']:g} epochs.",
        *([f"Validation recon L1 {tr['val_recon'][0]:.4f} after the first epoch → {tr['val_recon'][1]:.4f} at "
           "the end."] if tr["val_recon"] else []),
        f"Prometheus metrics were served at {_metrics_url(plan, run)} while it trained.", "",
        f"![training curves]({_rel(ev / 'training_curves.png', base)})", "",
        "## Table 1", "", t1,
        f"Research goal (every L-Score term of Uncond and Seed within ±15 % of the target), the model alone: {goal}."
        + (f" Outside: {', '.join(alone)}." if alone else ""), "",
        f"Is the chunk path load-bearing? Cutting it (bottleneck = identity) changes reconstruction L1 by "
        f"{pct(bp['recon']['rel_change'])} and in-painting L1 by {pct(bp['inpaint']['rel_change'])}; predicting "
        f"the corpus mean spectrum in the hole scores {bp['mean_spectrum']['inpaint_l1']:.4f} vs the model's "
        f"{bp['inpaint']['intact']:.4f}.", "",
        f"![relative errors with 95 % intervals]({_rel(ev / 'rel_err.png', base)})", "",
        f"![L-Score histograms]({_rel(ev / 'lscore_hist.png', base)})", "",
        "Examples (data with the model's chunk boundaries, its seed-based continuation, an unconditional output):",
        "", *[f"![example]({_rel(p, base)})" for p in sorted(ev.glob("examples_*.png"))], "",
        "## Generated audio", "",
        "Both modes in-paint a hole by iterative refinement: the hole starts as noise shaped like the corpus "
        "spectrum (its mean, principal spectral shapes and their frame-to-frame correlation), and each model pass "
        "blends less fresh noise into the model's output. Seed-based: the hole is the last half of a test clip "
        "(the first half stays the seed). Unconditional: the hole is the whole clip. Griffin-Lim turns "
        "spectrograms into audio; each PNG shows the chunk boundaries (cyan). See the README, 'Generation'.", "",
    ]
    for kind in ("unconditional", "seed"):
        g = gens[kind]
        folder = base / "generate" / ("unconditional" if kind == "unconditional" else "seed")
        lines += [f"### {kind}", ""]
        for r, src in zip(g["outputs"], g.get("seed_audio") or [None] * len(g["outputs"])):
            seed = f" (seed: [{Path(src).name}]({_rel(src, base)}))" if src else ""
            lines.append(f"- [{r['name']}.wav]({_rel(folder / r['wav'], base)}) · "
                         f"[spectrogram]({_rel(folder / r['png'], base)}) · {r['chunks']} chunks{seed}")
        lines.append("")
    again = "weaktok demo --quick" if plan.config == "tiny" else "make demo"
    lines += ["## Reproduce", "", "```bash", f"{again:43s} # this report (reuses corpus, shards and the run)",
              f"weaktok evaluate --checkpoint {run} --shards {plan.eval_shards} --split eval --out {ev}",
              f"weaktok generate --checkpoint {run} --unconditional --n 8 --out {base}/generate/unconditional",
              f"weaktok ablate --config {plan.config} --out runs/ablate data.shards={plan.shards}   # dynamic vs fixed"
              ", surrogate vs paper", "```", ""]
    path = base / "report.md"
    path.write_text("\n".join(lines))
    return path


def read_yaml(path: str | Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())
