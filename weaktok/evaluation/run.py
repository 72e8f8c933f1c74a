"""``weaktok evaluate``: Table 1 on what was *generated*, with baselines, 95 % intervals, training seeds,
distribution metrics, a memorisation check and the bypass ablation (everything defined in docs/evaluation.md).

    weaktok evaluate --checkpoint runs/a/train [runs/b/train ...] --out runs/eval \
        [--shards shards/demo-eval --split eval] [--n-gen 64] [--device cuda]

The stages, one module each:

    scoring.py    the exact L-Score of waveforms (serial or on Ray actors), clip features, the scored regions
    collect.py    the training reference (the target) and the evaluation pass that makes and scores every set
    bypass.py     the chunk path cut vs intact, and the chunk statistics
    table.py      Table 1 as a dict: intervals, seeds, baselines, distributions (table1.json)
    markdown.py   table1.md
    clips.py      a few clips of every set as WAV + spectrogram PNG, for the listening page (weaktok report)
    rulers.py     what each exact term reads on click trains, drones, noise, silence

Device (``--device``, default cuda when available): models, spectrograms, the prior, refinement and Griffin-Lim run
there a batch at a time; waveforms come to the CPU for librosa (exact L-Score, features). Exact L-Scores run
serially or on ``workers`` Ray actors. Progress bars show each pass.

Writes ``table1.json`` (machine-readable, every field), ``table1.md``, ``rel_err.png`` (relative errors with
intervals, model beside baselines), ``lscore_hist.png``, ``examples_*.png``, ``training_curves.png`` and
``audio/`` (``clips`` clips per set and mode: WAV, PNG with the chunk boundaries, ``audio/clips.json``;
``weaktok report`` turns them into a listening page).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from weaktok import generate as G
from weaktok.data.manifest import load_manifest
from weaktok.device import resolve_device
from weaktok.evaluation.clips import CLIPS, ClipKeeper, write_clips
from weaktok.evaluation.collect import evaluation_pass, training_reference
from weaktok.evaluation.markdown import table1_markdown
from weaktok.evaluation.rulers import ruler_check
from weaktok.evaluation.scoring import Scorer, make_regions
from weaktok.evaluation.table import GOAL, build_table
from weaktok.generate.sampler import MODES
from weaktok.lscore.differentiable import DifferentiableLScore
from weaktok.plots import (
    plot_lscore_hist,
    plot_spectrogram_rows,
    plot_training_curves,
    pyplot,
    save_figure,
)

# Length of every evaluated clip (s). The terms' spread over items (measured in docs/results.md) is wide,
# irregularity (the spread of inter-onset intervals) heavy-tailed, so a mean within +-10 % needs hundreds of
# items: hence a separate, larger evaluation split (``weaktok shards --split eval``) and the data floor over all
# of it.
EVAL_SECONDS = 8.0
N_GEN = 64  # outputs per mode per checkpoint (and items carrying the baselines)
TARGET_ITEMS = 256  # training items behind the length-matched target


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
    clips: int = CLIPS,
) -> dict:
    """Table 1 and everything beside it for one or more ``checkpoints`` (runs of different training seeds) on
    ``split`` of ``shards``; writes table1.json, table1.md and PNGs to ``out``.

    ``shards``: the evaluation items (default: the first model's data.shards); ``train_shards``: the training data
    behind the target and the memorisation bank (default: the first model's data.shards). ``onset``: the exact
    L-Score's onset preset for every set, target included (``paper``, the default, or ``clicks``: see
    weaktok/lscore/exact.py and docs/evaluation.md). ``max_items``: items of
    the data floor (0 = all); ``n_gen``: outputs per mode per checkpoint; ``clips``: clips per set and mode
    written to ``out``/audio for listening (0 = none). ``device``: see
    ``weaktok.device.resolve_device`` (a missing GPU fails before anything is loaded or written)."""
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
    keep = ClipKeeper(clips)
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
            clips=keep,
            surrogate=DifferentiableLScore(sr, cfg.audio.n_fft, cfg.audio.hop_length).to(device),
        )
        ruler_rows = None
        if rulers:
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
    write_clips(keep, out / "audio", models[0].front, regions, t["seeds"])
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
    plt = pyplot()
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
    return save_figure(fig, path)


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
    plot_training_curves(run / "metrics.jsonl", out / "training_curves.png", goal=GOAL)
