"""Plots and markdown: spectrograms with chunk boundaries, L-Score histograms, training curves, Table 1, report.md.

Everything renders with matplotlib's Agg backend (no display needed) and returns the path it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend, imported on first use: ``weaktok --help`` must not load matplotlib."""
    import matplotlib  # noqa: PLC0415 (heavy: only when a plot is drawn)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after use("Agg"))

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Lay out, write (90 dpi) and close ``fig``; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    pyplot().close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------
# Spectrograms


def draw_spectrogram(
    ax,
    spec,
    starts,
    frame_seconds: float,
    sample_rate: int,
    title: str = "",
    vmax: float | None = None,
) -> None:
    """spec (F, T) log1p magnitude on ``ax``; cyan lines at chunk starts (spectrogram frames)."""
    spec = np.asarray(spec.detach().cpu() if hasattr(spec, "detach") else spec)
    F, T = spec.shape
    vmax = vmax or max(float(np.percentile(spec, 99.5)), 1e-3)
    ax.imshow(
        spec,
        origin="lower",
        aspect="auto",
        cmap="magma",
        vmin=0,
        vmax=vmax,
        extent=(0, T * frame_seconds, 0, sample_rate / 2000),
    )
    extra = ""
    if starts is not None:
        for s in np.asarray(starts)[1:]:  # the first chunk always starts at 0
            ax.axvline(s * frame_seconds, color="cyan", lw=0.7, alpha=0.8)
        extra = f"  ({len(starts)} chunks, {len(starts) / max(T * frame_seconds, 1e-9):.1f}/s)"
    ax.set(xlabel="time (s)", ylabel="kHz", title=f"{title}{extra}")


def plot_spectrogram(
    spec, starts, path: str | Path, frame_seconds: float, sample_rate: int, title: str = ""
) -> Path:
    """One spectrogram (F, T) with chunk boundaries -> PNG."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.4))
    draw_spectrogram(ax, spec, starts, frame_seconds, sample_rate, title)
    return save_figure(fig, path)


def plot_spectrogram_rows(
    rows: list[tuple], path: str | Path, frame_seconds: float, sample_rate: int
) -> Path:
    """Stacked spectrograms; rows = [(spec (F, T), starts or None, title), ...] sharing one colour scale."""
    plt = pyplot()
    vmax = max(float(np.percentile(np.asarray(r[0]), 99.5)) for r in rows)
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for ax, (spec, starts, title) in zip(axes[:, 0], rows):
        draw_spectrogram(ax, spec, starts, frame_seconds, sample_rate, title, vmax)
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# L-Score histograms and training curves


def plot_lscore_hist(
    names: list[str], sets: dict[str, np.ndarray], target: list[float], path: str | Path
) -> Path:
    """One panel per L-Score term: histograms of each set ({label: (N, 4)}), the target mean as a line."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
    for j, (ax, name) in enumerate(zip(np.atleast_1d(axes), names)):
        vals = [np.asarray(v)[:, j] for v in sets.values() if len(v)]
        lo, hi = min(v.min() for v in vals), max(v.max() for v in vals)
        bins = np.linspace(lo, hi + 1e-9, 20)
        for label, v in sets.items():
            if len(v):
                ax.hist(
                    np.asarray(v)[:, j],
                    bins=bins,
                    alpha=0.45,
                    label=f"{label} ({len(v)})",
                    density=True,
                )
        ax.axvline(target[j], color="k", ls="--", lw=1, label="target")
        ax.set(title=name)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    return save_figure(fig, path)


def read_jsonl(path: str | Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def plot_training_curves(
    metrics_path: str | Path, path: str | Path, goal: float | None = None
) -> Path | None:
    """Loss terms, validation recon, boundary rate and the L-Score error of validation's generations (unconditional
    and seed-based) from a run's metrics.jsonl; ``goal``: a dashed line at that relative error."""
    metrics_path = Path(metrics_path)
    if not metrics_path.is_file():
        return None
    m = read_jsonl(metrics_path)
    train = [r for r in m if r.get("kind") == "train"]
    val = [r for r in m if r.get("kind") == "val"]
    plt = pyplot()
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
    step = [r["step"] for r in train]
    for key in ("loss", "recon", "lscore_dist", "ratio_loss"):
        if train and key in train[0]:
            axes[0].plot(step, [r[key] for r in train], label=key, lw=1)
    axes[0].set(title="training losses", xlabel="step", yscale="log")
    axes[0].legend(fontsize=7)
    if val:
        axes[1].plot(
            [r["step"] for r in val], [r["val_recon"] for r in val], "o-", label="val recon L1"
        )
    if train and "recon" in train[0]:
        axes[1].plot(step, [r["recon"] for r in train], lw=0.8, alpha=0.6, label="train recon L1")
    axes[1].set(title="reconstruction", xlabel="step")
    axes[1].legend(fontsize=7)
    if train and "chunk_boundary_rate" in train[0]:
        axes[2].plot(step, [r["chunk_boundary_rate"] for r in train], lw=1, label="train")
    if val:
        axes[2].plot(
            [r["step"] for r in val], [r["val_boundary_rate"] for r in val], "o-", label="val"
        )
    axes[2].set(title="boundary rate (bottleneck)", xlabel="step")
    axes[2].legend(fontsize=7)
    scored = False
    for mode, style in (("uncond", "o-"), ("seed", "s--")):  # one line per term and generation mode
        errs = [r for r in val if f"val_gen_{mode}_rel_err" in r]
        for j, name in enumerate(
            errs[0].get("lscore_names", [f"term {i}" for i in range(4)]) if errs else []
        ):
            axes[3].plot(
                [r["step"] for r in errs],
                [r[f"val_gen_{mode}_rel_err"][j] for r in errs],
                style,
                color=f"C{j}",
                label=f"{name} ({mode})",
            )
        scored = scored or bool(errs)
    if scored:
        if goal is not None:
            axes[3].axhline(goal, color="k", ls="--", lw=0.8)
        axes[3].legend(fontsize=6)
    if train and "w_L" in train[0]:
        ax2 = axes[3].twinx()
        ax2.plot(step, [r["w_L"] for r in train], color="gray", lw=0.8, alpha=0.6)
        ax2.set_ylabel("w_L (curriculum)", color="gray")
    axes[3].set(title="val |rel. error| of exact L-Score (generations)", xlabel="step")
    return save_figure(fig, path)


# ----------------------------------------------------------------------------------------------------------
# Markdown


def pct(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{100 * x:+.1f} %"


def chunks_target(c: dict) -> str:
    """The rate a chunks record aims at, in words: 'a fixed grid of stride 2', or 'target 1/3, threshold'."""
    if c["kind"] == "fixed":
        stride = c.get("fixed_stride")
        return "a fixed grid" + (f" of stride {stride}" if stride else "")
    return f"target 1/{c['target_ratio']:g}, {c.get('select') or 'threshold'}"


def md_table(header: list[str], rows: list[list]) -> str:
    fmt = [[f"{v:.3f}" if isinstance(v, float) else str(v) for v in row] for row in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in fmt]) + "\n"
