"""How a run starts: which checkpoint it resumes (refusing, before anything is loaded, a config that checkpoint
cannot load into), loading it with fall-back past damaged ones, or a new run from ``train.init_from``'s weights."""

from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from weaktok.config import INIT_FROM_FORMS, Config, ConfigError
from weaktok.model.weights import ModelFileError, read_model_file
from weaktok.train.checkpoint import (
    COMPLETE,
    CONFIG_FILE,
    CORRUPT_SUFFIX,
    SHAPE_KEYS,
    CheckpointError,
    ConfigMismatchError,
    complete_tags,
    config_changes,
    load_blockers,
    numpy_rng_globals,
    read_checkpoint_config,
    show_value,
    unreadable_files,
)
from weaktok.train.distributed import Dist, all_reduce_sum, broadcast_object

log = logging.getLogger(__name__)


def resume_candidates(cfg: Config, ckpt_dir: Path) -> list[tuple[Path, str]]:
    """Checkpoints to try, in order: for ``auto`` every complete one, newest first; for a path just that one."""
    if cfg.train.resume == "never":
        return []
    if cfg.train.resume == "auto":
        return [(ckpt_dir, t) for t in reversed(complete_tags(ckpt_dir))]
    path = Path(cfg.train.resume)
    if not (path / COMPLETE).is_file():
        raise ConfigError(
            f"config key 'train.resume': {path} is not a complete checkpoint (no {COMPLETE} marker)"
        )
    return [(path.parent, path.name)]


@dataclass
class Candidate:
    """A checkpoint resume may load, with what rank 0 read from it before loading anything."""

    folder: Path
    config: (
        dict | None
    )  # its config.yaml; None: written before checkpoints stored one (or unreadable)
    marker: dict  # its COMPLETE marker: step, epoch, and (newer checkpoints) world and bf16


def resume_plan(cfg: Config, ckpt_dir: Path, dist: Dist) -> list[Candidate]:
    """The checkpoints ``load_resume`` will try, newest first, as rank 0 sees them (every rank gets the same list).

    Before anything is loaded or built: if the newest was written under a config whose tensors cannot load into
    this job (``load_blockers``), raise ConfigMismatchError naming each such key, old -> new, and the ways
    forward. No checkpoint is renamed or changed."""
    candidates = resume_candidates(
        cfg, ckpt_dir
    )  # on every rank: a bad train.resume path fails on all of them
    plan = None
    if dist.is_main:
        plan = []
        for load_dir, tag in candidates:
            marker = {}
            with contextlib.suppress(
                OSError, ValueError
            ):  # complete_tags parsed it; an explicit path may not
                marker = json.loads((load_dir / tag / COMPLETE).read_text())
            plan.append(
                Candidate(
                    load_dir / tag,
                    read_checkpoint_config(load_dir / tag),
                    marker if isinstance(marker, dict) else {},
                )
            )
    plan = broadcast_object(plan, dist)
    newest = plan[0] if plan else None
    if newest is not None and newest.config is not None:
        blockers = load_blockers(config_changes(newest.config, cfg), newest.marker, cfg, dist.world)
        if blockers:
            raise ConfigMismatchError(
                f"checkpoint {newest.folder} cannot be resumed with this config; nothing was loaded and no checkpoint "
                "was changed:\n  "
                + "\n  ".join(blockers)
                + "\nTo continue this run, set the old value(s) back. "
                "To train with the new ones, start a new run in another folder: --out NEW (from scratch), or --out "
                f"NEW train.init_from={newest.folder} (a new run from these weights: step 0, fresh optimizer and "
                "schedule; the parameter shapes must still match)"
            )
    return plan


def load_resume(
    cfg: Config, engine, plan: list[Candidate], ckpt_dir: Path, dist: Dist
) -> tuple[Candidate, dict] | None:
    """Load the newest checkpoint of ``plan`` (``resume_plan``) that loads on every rank: (it, its client state),
    or None when the plan is empty.

    With ``resume: auto`` a checkpoint that fails to load because a file in it is damaged (``unreadable_files``: a
    truncated or garbage file inside a COMPLETE folder) is reported with a warning naming the folder, set aside as
    ``<tag>.corrupt`` and the next older one is tried; the ranks agree on the outcome of each attempt (an
    all-reduce), so all of them resume from the same step. If none loads: CheckpointError. A checkpoint whose
    files are all intact but that still fails to load was written for another model or layout: CheckpointError at
    once, the checkpoint left as it is. An explicit ``resume: <path>`` that fails to load is a CheckpointError at
    once. The caller restores the counters and RNG from the client state and applies the optimizer settings of
    ``cfg`` (``apply_optimizer_settings``)."""
    failed: list[str] = []
    for i, cand in enumerate(plan):
        where = cand.folder
        error = ""
        try:
            load_path, client = engine.load_checkpoint(str(where.parent), tag=where.name)
            if load_path is None or client is None:
                error = "DeepSpeed found no loadable model states in it"
        except Exception as e:  # torch.load on a truncated / garbage file: UnpicklingError, RuntimeError, EOFError...
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        damaged = bool(error) and bool(unreadable_files(where))
        bad, n_damaged = (
            int(x) for x in all_reduce_sum([float(bool(error)), float(damaged)], dist)
        )
        if not bad:
            return cand, client
        why = error or f"it loaded here but not on {bad} other rank(s)"
        if (
            not n_damaged
        ):  # every file intact: not broken, written for another model or layout; it stays as it is
            raise CheckpointError(
                f"checkpoint {where} is intact but does not load into this job ({why}); it was left as it is. It was "
                "probably written under another model shape, ZeRO stage, precision or number of ranks: resume with "
                f"those, or start a new run in another folder (--out NEW, with train.init_from={where} to start "
                "from its weights)"
            )
        failed.append(str(where))
        more = i + 1 < len(plan) and cfg.train.resume == "auto"
        if dist.is_main:
            log.warning(
                f"checkpoint {where} is COMPLETE but failed to load ({why}); "
                + (
                    "falling back to the previous complete checkpoint"
                    if more
                    else "no older one to fall back to"
                )
            )
        if cfg.train.resume != "auto":
            raise CheckpointError(f"checkpoint {where} (train.resume) failed to load: {why}")
        if (
            dist.is_main and damaged
        ):  # rank 0's copy is damaged: kept, out of resume's and rotation's way
            aside, n = where.with_name(where.name + CORRUPT_SUFFIX), 1
            while aside.exists():
                aside, n = where.with_name(f"{where.name}{CORRUPT_SUFFIX}{n}"), n + 1
            with contextlib.suppress(OSError):
                os.replace(where, aside)
        if dist.world > 1:
            torch.distributed.barrier()
    if failed:
        raise CheckpointError(
            f"no checkpoint in {ckpt_dir} loads: {', '.join(failed)} all failed (those bad on "
            f"rank 0 are set aside as <tag>{CORRUPT_SUFFIX}); restore one, or set "
            "train.resume=never to start over"
        )
    return None


def log_config_changes(cfg: Config, cand: Candidate, client_config: dict | None) -> None:
    """Rank 0: one line per key whose value differs from the one the resumed checkpoint was written under."""
    old = cand.config if cand.config is not None else client_config
    if cand.config is None:
        log.warning(
            f"checkpoint {cand.folder} holds no {CONFIG_FILE} (written by an older weaktok): "
            "the config could not be checked before loading"
            + ("; compared after loading with the copy in its client state" if old else "")
        )
    changes = config_changes(old, cfg) if isinstance(old, dict) else {}
    if changes:
        log.info(f"config changed since checkpoint {cand.folder}; resuming under the new values:")
    for key, (before, after) in changes.items():
        log.info(f"  {key}: {show_value(before)} -> {show_value(after)}")
    if cfg.train.init_from:
        log.info(
            f"train.init_from={cfg.train.init_from} ignored: this run resumes from its own checkpoint "
            "(a run's own checkpoints come first; start a new run from other weights with a new --out)"
        )


def apply_optimizer_settings(cfg: Config, scheduler) -> None:
    """After a resume: lr, weight decay and betas as ``cfg`` sets them. Loading restored the checkpoint's values
    (the scheduler's base lr, the optimizer's param groups), which would silently undo a changed ``train.lr``.
    The schedule itself (warm-up, cosine over the run's length) is always the one ``cfg`` defines."""
    groups = scheduler.optimizer.param_groups  # [decay, no decay], as build_engine made them
    scheduler.base_lrs = [cfg.train.lr] * len(groups)
    for group, decay, f in zip(groups, (cfg.train.weight_decay, 0.0), scheduler.lr_lambdas):
        group.update(
            lr=cfg.train.lr * f(scheduler.last_epoch),
            weight_decay=decay,
            betas=tuple(cfg.train.betas),
        )
    scheduler._last_lr = [g["lr"] for g in groups]


# ----------------------------------------------------------------------------------------------------------
# train.init_from: a new run from another run's weights


def init_from_weights(source: str) -> tuple[dict, dict | None, Path]:
    """(state dict, config it was trained under or None, path read) for ``train.init_from``: exported weights
    (final/model.pt, or a bare state dict), a checkpoint folder, or a run's checkpoints/ folder (its newest
    complete checkpoint). Weights files and ZeRO 0-2 folders are read weights-only; a ZeRO-3 folder, whose
    parameters are partitioned over the ranks' files, through DeepSpeed's zero_to_fp32 reader."""
    path = Path(source)
    if path.is_file():
        try:
            state, config = read_model_file(path)
        except ModelFileError as e:
            raise CheckpointError(f"train.init_from: {e}") from e
        return state, config, path
    if not (path / COMPLETE).is_file():
        tags = complete_tags(path)
        if not tags:
            raise ConfigError(f"config key 'train.init_from': {path} is not {INIT_FROM_FORMS}")
        path = path / tags[-1]
    try:
        if (
            path / "mp_rank_00_model_states.pt"
        ).is_file():  # ZeRO 0-2: the whole module in one file
            with torch.serialization.safe_globals(numpy_rng_globals()):
                blob = torch.load(
                    path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True
                )
            weights = blob["module"]
        else:
            # here, not at the top: DeepSpeed is heavy, and only ZeRO 3 checkpoints need its reader
            from deepspeed.utils.zero_to_fp32 import (  # noqa: PLC0415
                get_fp32_state_dict_from_zero_checkpoint,
            )

            weights = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    except Exception as e:
        raise CheckpointError(
            f"train.init_from: checkpoint {path} could not be read ({type(e).__name__}: "
            f"{str(e).strip()[:300]})"
        ) from e
    return weights, read_checkpoint_config(path), path


def load_init_weights(model: torch.nn.Module, cfg: Config, dist: Dist) -> None:
    """A new run from ``train.init_from``'s weights (before DeepSpeed wraps the model: every ZeRO stage and its
    fp32 master copy start from them). A parameter missing, extra or of another shape: ConfigMismatchError naming
    each (and the shape keys that differ, where the source recorded its config)."""
    weights, old_config, path = init_from_weights(cfg.train.init_from)
    own = model.state_dict()
    problems = [
        f"{k}: {tuple(weights[k].shape)} there, {tuple(v.shape)} here"
        for k, v in own.items()
        if k in weights and weights[k].shape != v.shape
    ]
    problems += [f"{k}: missing there" for k in own if k not in weights]
    problems += [f"{k}: not in this model" for k in weights if k not in own]
    if problems:
        keys = (
            [
                f"{k}: {show_value(a)} -> {show_value(b)}"
                for k, (a, b) in config_changes(old_config, cfg).items()
                if k in SHAPE_KEYS
            ]
            if isinstance(old_config, dict)
            else []
        )
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ConfigMismatchError(
            f"train.init_from={path}: its weights do not fit this model"
            + (f" ({'; '.join(keys)})" if keys else "")
            + ":\n  "
            + "\n  ".join(shown)
            + "\nSet the model keys (model.*, audio.n_fft) to the values those weights were trained with."
        )
    model.load_state_dict(weights)
    if dist.is_main:
        log.info(
            f"new run from the weights of {path} (train.init_from): step 0, fresh optimizer and schedule"
        )
