"""``weaktok export RUN --out DIR``: a trained run as a model folder (weaktok/model/artifact.py) that loads and
generates with nothing else: the fp32 weights, the config, the statistics generation reads from the training
shards (the prior; the L-Score guidance targets at the model's clip length and at the evaluation length) and a
model card. Training's end writes the same folder into the run's final/ (weaktok/train/trainer.py).

    export_model("runs/demo/train", "models/demo")     # a run folder, a final/ folder or a model.pt
    export_model(run, run / "final", in_place=True, stats={PRIOR: prior})    # training's end

The statistics come from beside the weights when the run has them (training's prior, caches of earlier
generation), else from the training shards (``data.shards`` of the run's config, or ``shards``); the source run
is only read. Training's end writes only the statistics it already holds (the prior, when it trained with one):
computing the rest costs seconds per run, and a folder without them computes them from the shards on first use,
or says how to get them (``weaktok export``) where the shards are not.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from weaktok.data.manifest import load_manifest
from weaktok.generate.guidance import cached_spectrum, surrogate_target
from weaktok.lscore.differentiable import DifferentiableLScore
from weaktok.model.artifact import (
    PRIOR,
    ArtifactError,
    check_writable,
    replace_folder,
    surrogate_name,
    write_folder,
)
from weaktok.model.card import find_table1, model_card, read_json
from weaktok.model.weights import Loaded, load_model

log = logging.getLogger(__name__)

EVAL_SECONDS = 8.0  # weaktok evaluate's default output length (weaktok/evaluation/run.py)


def run_folder(loaded: Loaded) -> Path:
    """The run folder a loaded model came from (the folder above final/, else the weights' folder)."""
    folder = loaded.path.parent
    return folder.parent if folder.name == "final" else folder


def folder_stats(loaded: Loaded, shards: str | Path | None) -> dict[str, dict[str, torch.Tensor]]:
    """The statistics a model folder carries, read from beside the weights or computed from ``shards``."""
    cfg, shards = loaded.cfg, str(shards or loaded.cfg.data.shards)
    stats = {PRIOR: cached_spectrum(loaded, shards, save=False)}
    dl = DifferentiableLScore(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length)
    for seconds in sorted({cfg.audio.clip_seconds, EVAL_SECONDS}):
        stats[surrogate_name(seconds)] = surrogate_target(loaded, dl, shards, seconds, save=False)
    return {name: {k: v.cpu() for k, v in s.items()} for name, s in stats.items()}


def card_for(loaded: Loaded, shards: str | Path | None, table1: str | Path | None) -> str:
    try:
        manifest = load_manifest(str(shards or loaded.cfg.data.shards))
    except (OSError, RuntimeError, ValueError):
        manifest = None
    source = Path(table1) if table1 else find_table1(run_folder(loaded))
    if table1 and not source.is_file():
        raise FileNotFoundError(f"--table1 {source}: no such file")
    table = read_json(source) if source else None
    return model_card(loaded.cfg, manifest, table, source, str(loaded.path))


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    shards: str | Path | None = None,
    table1: str | Path | None = None,
    in_place: bool = False,
    stats: dict[str, dict[str, torch.Tensor]] | None = None,
) -> Path:
    """Write the model folder of ``checkpoint`` to ``out`` and return it. ``out`` must be new, empty or an export
    (ArtifactError otherwise, before anything is read or written); it is replaced whole unless ``in_place`` (a
    run's final/, whose model.pt stays). ``table1``: the run's table1.json (default: found beside the run).
    ``stats``: the statistics to write (default: all of them, ``folder_stats``)."""
    check_writable(out)
    loaded = load_model(checkpoint, "cpu")
    if not in_place and Path(out).resolve() == loaded.path.parent.resolve():
        raise ArtifactError(f"{out} is the folder being exported: choose another --out")
    stats = folder_stats(loaded, shards) if stats is None else stats
    card = card_for(loaded, shards, table1)
    state = {
        k: v.float() if v.is_floating_point() else v for k, v in loaded.model.state_dict().items()
    }
    write = lambda folder: write_folder(folder, state, loaded.cfg, stats, card)  # noqa: E731
    path = write(Path(out)) if in_place else replace_folder(write, out)
    log.info(f"exported {loaded.path} to {path}")
    return path
