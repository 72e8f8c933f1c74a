"""The run's deliverable: ``final/model.pt`` (the format: ``weaktok/model/weights.py``), the fp32 master weights
(consolidated, not ZeRO partitions) and the config, loadable with ``torch.load(weights_only=True)``; then final/
becomes a model folder beside it (``weaktok export``'s format, weaktok/model/artifact.py: model.safetensors,
config, statistics, model card), which loads without the training shards."""

from __future__ import annotations

import contextlib
import logging
import sys
from pathlib import Path

import torch

from weaktok.config import Config
from weaktok.generate.export import export_model
from weaktok.generate.guidance import SPECTRUM_FILE
from weaktok.model.artifact import PRIOR
from weaktok.model.weights import MODEL_FILE, save_model
from weaktok.train.checkpoint import complete_tags
from weaktok.train.distributed import Dist

log = logging.getLogger(__name__)


def master_weights(
    engine, cfg: Config, ckpt_dir: Path, dist: Dist
) -> dict[str, torch.Tensor] | None:
    """The fp32 master weights, whole (not ZeRO partitions), on rank 0 (None elsewhere).

    ZeRO 1-3: DeepSpeed's own consolidation (``zero_to_fp32``) of the newest complete checkpoint, which every run
    has written by now (each epoch ends with one). These are the optimizer's fp32 masters, not the bf16 copies
    the module computes with. ZeRO 0 (fp32 only): the module's own weights.
    """
    if (
        cfg.train.zero_stage == 0
    ):  # fp32 only (check_precision): the module's weights are the masters
        return (
            {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()}
            if dist.is_main
            else None
        )
    if not dist.is_main:
        return None
    # here, not at the top: DeepSpeed is heavy, and only ZeRO 1-3 runs need its reader
    from deepspeed.utils.zero_to_fp32 import (  # noqa: PLC0415
        get_fp32_state_dict_from_zero_checkpoint,
    )

    tag = complete_tags(ckpt_dir)[-1]
    with contextlib.redirect_stdout(
        sys.stderr
    ):  # its progress lines are not ours to print on stdout
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def export_weights(engine, cfg: Config, out: Path, dist: Dist) -> Path | None:
    """The fp32 master weights and the config in ``out/final/model.pt`` (``torch.load(weights_only=True)``)."""
    state = master_weights(engine, cfg, out / "checkpoints", dist)
    if not dist.is_main or state is None:
        return None
    path = save_model(out / "final" / MODEL_FILE, state, cfg)
    log.info(f"exported fp32 master weights to {path}")
    return path


def write_model_folder(out: Path, prior: dict | None = None) -> Path:
    """Rank 0, after ``export_weights``: final/ as a model folder (weaktok/generate/export.py) with the prior
    training used, if any (``fill: prior``, flow models; also as final/spectrum.pt for older readers). The other
    statistics are left to ``weaktok export``, which reads the shards: computing them here costs every run."""
    final, stats = out / "final", {}
    if prior is not None:
        stats[PRIOR] = {k: v.cpu() for k, v in prior.items()}
        torch.save(stats[PRIOR], final / SPECTRUM_FILE)
    return export_model(final / MODEL_FILE, final, in_place=True, stats=stats)
