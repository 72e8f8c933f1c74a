"""The training loop. Rank-agnostic: it reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* from the environment that
whichever launcher started it set (``weaktok train``, the ``deepspeed`` launcher, ``cluster/launch_multinode.sh``
or Ray Train) and never imports a launcher.

    python -m weaktok.train --config tiny --out runs/x data.shards=shards/demo     (what launchers run)

One step: waveforms -> log1p spectrogram (front end, fp32) -> corrupted copy -> model -> reconstruction;
loss = w_recon * L1(recon, clean) + w_L * L-Score distribution loss + w_ratio * chunking ratio loss, with the
curriculum's weights for the current (fractional) epoch. A non-finite loss is skipped on every rank and counted.

Every ``lscore.pool_every`` steps rank 0 inverts a few reconstructions to audio (Griffin-Lim) and submits them to
the Ray L-Score pool; results are logged when they arrive, the step never waits. Each epoch ends with validation
(reconstruction loss, chunk statistics, exact L-Score of reconstructions vs the target) and a checkpoint.

Outputs in ``--out``: config.yaml (resolved), metrics.jsonl (one JSON object per logged step / validation),
checkpoints/<tag>/ (DeepSpeed, with client state, and the config.yaml it was written under; a tag counts only once
it holds COMPLETE), final/model.pt (consolidated fp32 weights + config, for generation and evaluation).

Faults (tests/test_faults_train.py): a failed checkpoint write (full disk) raises CheckpointError naming the folder,
the previous checkpoint untouched; ``resume: auto`` skips folders without COMPLETE and falls back past a COMPLETE one
that fails to load because a file in it is damaged (warning, set aside as <tag>.corrupt); ``train.dist_timeout_s``
bounds every collective, so a rank whose peer died exits instead of waiting forever.

Config changes between runs in one folder (tests/test_resume_config.py): before anything is loaded, the newest
checkpoint's config.yaml is compared with the current config. A change its tensors cannot load into (parameter
shapes: ``SHAPE_KEYS``; ZeRO stage 0 / 1-2 / 3; bf16 vs fp32 in effect; for ZeRO the number of ranks) stops the run
with ConfigMismatchError naming each key old -> new; other changes are logged one line per key and apply (the
optimizer's lr, weight decay and betas too). A checkpoint that fails to load with every file intact is never set
aside: CheckpointError. Older checkpoints without config.yaml load as before, with a warning. ``train.init_from``
starts a new run (step 0, fresh optimizer and schedule) from a checkpoint's or final/model.pt's weights; it applies
only when the run has no checkpoint of its own to resume (own checkpoint > init_from).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import yaml

from weaktok.config import INIT_FROM_FORMS, Config, ConfigError, load_config, save_config, to_dict
from weaktok.curriculum import weights_at

COMPLETE = "COMPLETE"


# ----------------------------------------------------------------------------------------------------------
# Distributed context (from the environment; never from a launcher)


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no complete checkpoint could be loaded."""


class ConfigMismatchError(CheckpointError, ConfigError):
    """The config does not fit the checkpoint the run would load (its own, to resume, or ``train.init_from``).
    Raised before anything is loaded into the model; no checkpoint is touched. Both kinds of error: the CLI reports
    it as a config error (exit 2), callers catching CheckpointError still catch it."""


def setup_distributed(timeout_s: float | None = None) -> Dist:
    """Initialise torch.distributed through DeepSpeed from the launcher's environment variables.

    ``timeout_s`` bounds every collective (``train.dist_timeout_s``): a rank whose peer died or hangs raises after
    at most this long instead of waiting forever (gloo usually notices a dead peer's closed socket at once; a peer
    that is alive but stuck is only caught by the timeout). Where a launcher (Ray Train) already initialised the
    process group, that group and its timeout are kept."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"environment lacks {', '.join(missing)}: start training with `weaktok train`, the "
                           "deepspeed launcher, cluster/launch_multinode.sh or ray_jobs/train.py")
    use_cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed

    kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", verbose=False, **kwargs)
    local_rank = int(os.environ["LOCAL_RANK"])
    if not use_cuda and "OMP_NUM_THREADS" not in os.environ:
        # ranks sharing a CPU node split its cores: oversubscribed OpenMP regions spin-wait on busy cores and
        # slow small kernels down by 10-100x (measured here: an AdamW step 0.01 s -> 1 s)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, per_node)))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device)


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    if dist.world > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


# ----------------------------------------------------------------------------------------------------------
# DeepSpeed engine from the YAML config


def use_bf16(cfg: Config) -> bool:
    return cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and torch.cuda.is_available())


def check_precision(cfg: Config) -> None:
    """bf16 needs a ZeRO optimizer (stage >= 1): those keep the fp32 master weights in checkpoints that
    ``zero_to_fp32`` consolidates. Under stage 0 DeepSpeed keeps them in a wrapper no public API reads, and the
    export would hold bf16-rounded weights. Checked before any compute (``auto`` is bf16 only on a GPU)."""
    if use_bf16(cfg) and cfg.train.zero_stage == 0:
        raise ConfigError(f"config key 'train.zero_stage': 0 cannot train in bf16 (train.precision="
                          f"{cfg.train.precision}{' on a GPU' if cfg.train.precision == 'auto' else ''}): use "
                          "train.zero_stage=1 (same memory as 0 for one rank, fp32 master weights exported) or "
                          "train.precision=fp32")


def deepspeed_config(cfg: Config) -> dict:
    """The DeepSpeed JSON config: an optional template (train.deepspeed_config) overridden by the YAML keys."""
    ds: dict = {}
    if cfg.train.deepspeed_config:
        ds = json.loads(Path(cfg.train.deepspeed_config).read_text())
    ds.update({
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": cfg.train.grad_accum,
        "gradient_clipping": cfg.train.grad_clip,
        "bf16": {"enabled": use_bf16(cfg)},
        "fp16": {"enabled": False},  # fp16 is unsupported on CPU; bf16 needs no loss scaling
        "zero_allow_untested_optimizer": True,  # torch AdamW (works on CPU and GPU alike)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    })
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x accumulation x world
    zero = dict(ds.get("zero_optimization", {}))
    zero["stage"] = cfg.train.zero_stage
    ds["zero_optimization"] = zero
    return ds


def lr_lambda(cfg: Config, total_steps: int):
    """Linear warm-up then cosine decay to lr * min_lr_ratio over ``total_steps`` optimizer steps."""
    warm, floor = cfg.train.warmup_steps, cfg.train.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return f


def build_engine(cfg: Config, model: torch.nn.Module, total_steps: int):
    import deepspeed

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.train.lr, betas=tuple(cfg.train.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    engine, optimizer, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer,
                                                           lr_scheduler=scheduler, config=deepspeed_config(cfg))
    if cfg.train.compile:  # shapes are static (chunking.py): one graph per clip length, no recompiles per batch
        engine.compile(backend=cfg.train.compile_backend, compile_kwargs={"dynamic": False})
    return engine, optimizer, scheduler


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: write, then mark complete; resume from the newest complete one


CORRUPT_SUFFIX = ".corrupt"  # a COMPLETE checkpoint that failed to load becomes <tag>.corrupt[N] (kept, never resumed)
CONFIG_FILE = "config.yaml"  # in each checkpoint folder: the resolved config it was written under


def complete_tags(ckpt_dir: Path) -> list[str]:
    """Checkpoint tags holding a COMPLETE marker, oldest first (by the step recorded in the marker).

    A folder without the marker (a write cut short by a kill, a crash or a full disk) never counts, nor does one
    set aside as ``<tag>.corrupt`` after it failed to load."""
    tags = []
    for d in ckpt_dir.glob("*") if ckpt_dir.is_dir() else []:
        marker = d / COMPLETE
        if marker.is_file() and CORRUPT_SUFFIX not in d.name:
            try:
                tags.append((json.loads(marker.read_text())["step"], d.name))
            except (json.JSONDecodeError, KeyError, TypeError, OSError):
                continue
    return [t for _, t in sorted(tags)]


def save_checkpoint(engine, ckpt_dir: Path, state: dict, keep: int, dist: Dist) -> str:
    """Every rank writes its part, then (after a barrier) rank 0 writes the config it was trained under
    (``config.yaml``, from ``state["config"]``), marks the folder COMPLETE and rotates old ones.

    A failed write (disk full, I/O error) raises CheckpointError naming the folder; the partial folder is removed
    (it never held the marker, so resume would skip it anyway) and older checkpoints are untouched: rotation only
    runs once the new one is complete. A step saved twice (a mid-epoch checkpoint on the epoch's last step, then
    the epoch-end one) never overwrites the complete folder in place: the new one is written beside it as
    ``<tag>.next`` and swapped in once complete, so a complete copy of that step exists at every moment."""
    tag = f"step{state['step']:08d}"
    path = ckpt_dir / tag
    previous = complete_tags(ckpt_dir)
    resave = all_reduce_sum([float(dist.is_main and (path / COMPLETE).is_file())], dist)[0] > 0  # rank 0 decides
    write = path.with_name(tag + ".next") if resave else path
    try:
        if dist.is_main and resave:
            shutil.rmtree(write, ignore_errors=True)  # a .next left by an earlier failure
        engine.save_checkpoint(str(ckpt_dir), tag=write.name, client_state=state)  # collective: every rank its part
    except Exception as e:
        shutil.rmtree(write, ignore_errors=True)
        prev = f"the previous complete checkpoint {ckpt_dir / previous[-1]} is intact and `resume: auto` " \
               "will pick it" if previous else "there is no earlier complete checkpoint"
        try:  # torch.save reports a full disk as e.g. "unexpected pos 22976 vs 22870": say how much room is left
            room = f"{shutil.disk_usage(ckpt_dir).free / 1e6:.1f} MB free there"
        except OSError:
            room = "free space unknown"
        raise CheckpointError(f"writing checkpoint {write} failed on rank {dist.rank} "
                              f"({type(e).__name__}: {str(e).strip()}; {room}); {prev}") from e
    if dist.world > 1:
        torch.distributed.barrier()
    if dist.is_main:
        tmp = write / (COMPLETE + ".tmp")
        try:  # written whole, then renamed: a marker is either absent or complete
            if "config" in state:  # read on resume before any tensor: a config that cannot load is refused up front
                (write / CONFIG_FILE).write_text(yaml.safe_dump(state["config"], sort_keys=False))
            tmp.write_text(json.dumps({"step": state["step"], "epoch": state["epoch"], "world": dist.world,
                                       "bf16": bool(engine.bfloat16_enabled())}))
            os.replace(tmp, write / COMPLETE)
            if resave:  # old -> .old, .next -> tag, drop .old: one complete copy of the step at every moment
                old = path.with_name(tag + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(write, path)
                shutil.rmtree(old, ignore_errors=True)
                (ckpt_dir / "latest").write_text(tag)  # DeepSpeed's pointer (zero_to_fp32.py reads it)
        except OSError as e:
            if not (path / COMPLETE).is_file():
                shutil.rmtree(write, ignore_errors=True)
            raise CheckpointError(f"marking checkpoint {path} complete failed ({e}); older checkpoints are "
                                  "intact") from e
        for old in complete_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    if dist.world > 1:
        torch.distributed.barrier()
    return tag


def resume_candidates(cfg: Config, ckpt_dir: Path) -> list[tuple[Path, str]]:
    """Checkpoints to try, in order: for ``auto`` every complete one, newest first; for a path just that one."""
    if cfg.train.resume == "never":
        return []
    if cfg.train.resume == "auto":
        return [(ckpt_dir, t) for t in reversed(complete_tags(ckpt_dir))]
    path = Path(cfg.train.resume)
    if not (path / COMPLETE).is_file():
        raise ConfigError(f"config key 'train.resume': {path} is not a complete checkpoint (no {COMPLETE} marker)")
    return [(path.parent, path.name)]


# Config keys that change the model's parameter names or shapes: a checkpoint's tensors cannot load into a model
# built with another value (tests/test_resume_config.py checks this list against build_model for every key).
SHAPE_KEYS = ("audio.n_fft", "model.channels", "model.dim", "model.n_layers", "model.ff_mult", "model.chunking.kind")
NOT_COMPARED = ("train.resume", "train.init_from")  # how a run starts, not what it trains
_ABSENT = "(not recorded)"


@dataclass
class Candidate:
    """A checkpoint resume may load, with what rank 0 read from it before loading anything."""

    folder: Path
    config: dict | None  # its config.yaml; None: written before checkpoints stored one (or unreadable)
    marker: dict  # its COMPLETE marker: step, epoch, and (newer checkpoints) world and bf16


def read_checkpoint_config(folder: Path) -> dict | None:
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict, cfg: Config) -> dict[str, tuple]:
    """Dotted key -> (old value, new value) for every key (but ``NOT_COMPARED``) where ``cfg`` differs from ``old``."""
    a, b = _flat(old), _flat(to_dict(cfg))
    return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(a.keys() | b.keys())
            if k not in NOT_COMPARED and a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def _show(value) -> str:
    return value if value is _ABSENT else repr(value)


def _zero_layout(stage) -> int:
    return {0: 0, 1: 1, 2: 1}.get(stage, stage)  # ZeRO 1 and 2 store the optimizer state alike; 0 and 3 do not


def load_blockers(changes: dict[str, tuple], marker: dict, cfg: Config, world: int) -> list[str]:
    """One line per difference that stops a checkpoint from loading into this job (measured with DeepSpeed 0.19:
    each of these fails ``engine.load_checkpoint``): parameter shapes, the ZeRO optimizer-state layout (stage 0,
    1-2, 3), precision in effect (bf16 keeps its optimizer state in other files), and for ZeRO 1-3 the number
    of ranks the state is partitioned over. Other changes (lr, epochs, loss weights, ...) load fine."""
    lines = [f"{k}: {_show(old)} -> {_show(new)} (parameter shapes)" for k, (old, new) in changes.items()
             if k in SHAPE_KEYS and old is not _ABSENT]  # a key newer than the checkpoint: its default built it
    old_stage, new_stage = changes.get("train.zero_stage", (cfg.train.zero_stage,) * 2)
    if _zero_layout(old_stage) != _zero_layout(new_stage):
        lines.append(f"train.zero_stage: {old_stage} -> {new_stage} (optimizer state layout)")
    precision = {True: "bf16", False: "fp32"}
    if marker.get("bf16") is not None and marker["bf16"] != use_bf16(cfg):
        lines.append(f"train.precision in effect: {precision[marker['bf16']]} -> {precision[use_bf16(cfg)]} "
                     f"(optimizer state layout; train.precision is {cfg.train.precision!r})")
    if old_stage and _zero_layout(old_stage) == _zero_layout(new_stage) and marker.get("world") not in (None, world):
        lines.append(f"ranks: {marker['world']} -> {world} (ZeRO stage {old_stage} partitions the optimizer state "
                     "by rank)")
    return lines


def resume_plan(cfg: Config, ckpt_dir: Path, dist: Dist) -> list[Candidate]:
    """The checkpoints ``_resume`` will try, newest first, as rank 0 sees them (every rank gets the same list).

    Before anything is loaded or built: if the newest was written under a config whose tensors cannot load into
    this job (``load_blockers``), raise ConfigMismatchError naming each such key, old -> new, and the ways
    forward. No checkpoint is renamed or changed."""
    candidates = resume_candidates(cfg, ckpt_dir)  # on every rank: a bad train.resume path fails on all of them
    plan = None
    if dist.is_main:
        plan = []
        for load_dir, tag in candidates:
            marker = {}
            with contextlib.suppress(OSError, ValueError):  # complete_tags parsed it; an explicit path may not
                marker = json.loads((load_dir / tag / COMPLETE).read_text())
            plan.append(Candidate(load_dir / tag, read_checkpoint_config(load_dir / tag),
                                  marker if isinstance(marker, dict) else {}))
    plan = _broadcast_object(plan, dist)
    newest = plan[0] if plan else None
    if newest is not None and newest.config is not None:
        blockers = load_blockers(config_changes(newest.config, cfg), newest.marker, cfg, dist.world)
        if blockers:
            raise ConfigMismatchError(
                f"checkpoint {newest.folder} cannot be resumed with this config; nothing was loaded and no checkpoint "
                "was changed:\n  " + "\n  ".join(blockers) + "\nTo continue this run, set the old value(s) back. "
                "To train with the new ones, start a new run in another folder: --out NEW (from scratch), or --out "
                f"NEW train.init_from={newest.folder} (a new run from these weights: step 0, fresh optimizer and "
                "schedule; the parameter shapes must still match)")
    return plan


def unreadable_files(folder: Path) -> list[str]:
    """The ``.pt`` files of a checkpoint folder that are damaged: torch.save writes zip archives with a CRC per
    record, so truncation, garbage or a flipped bit shows here, without unpickling anything."""
    bad = []
    for f in sorted(folder.glob("*.pt")):
        try:
            with zipfile.ZipFile(f) as z:
                if z.testzip() is not None:
                    bad.append(f.name)
        except (OSError, zipfile.BadZipFile, EOFError, ValueError, RuntimeError):
            bad.append(f.name)
    return bad


def _numpy_rng_globals() -> list:
    """What the numpy RNG state in a checkpoint's client state unpickles to: allowed for weights-only loading."""
    core = np._core if hasattr(np, "_core") else np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


def init_from_weights(source: str) -> tuple[dict, dict | None, Path]:
    """(state dict, config it was trained under or None, path read) for ``train.init_from``: exported weights
    (final/model.pt, or a bare state dict), a checkpoint folder, or a run's checkpoints/ folder (its newest
    complete checkpoint). Weights files and ZeRO 0-2 folders are read weights-only; a ZeRO-3 folder, whose
    parameters are partitioned over the ranks' files, through DeepSpeed's zero_to_fp32 reader."""
    path = Path(source)
    if path.is_file():
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"train.init_from={path}: not a weights file ({type(e).__name__}: {e})") from e
        if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
            return blob["model"], blob.get("config"), path
        if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
            return blob, None, path
        raise CheckpointError(f"train.init_from={path} holds no model weights (expected weaktok's final/model.pt "
                              "or a state dict)")
    if not (path / COMPLETE).is_file():
        tags = complete_tags(path)
        if not tags:
            raise ConfigError(f"config key 'train.init_from': {path} is not {INIT_FROM_FORMS}")
        path = path / tags[-1]
    try:
        if (path / "mp_rank_00_model_states.pt").is_file():  # ZeRO 0-2: the whole module in one file
            with torch.serialization.safe_globals(_numpy_rng_globals()):
                blob = torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)
            weights = blob["module"]
        else:
            from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

            weights = get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    except Exception as e:
        raise CheckpointError(f"train.init_from: checkpoint {path} could not be read ({type(e).__name__}: "
                              f"{str(e).strip()[:300]})") from e
    return weights, read_checkpoint_config(path), path


def load_init_weights(model: torch.nn.Module, cfg: Config, dist: Dist) -> None:
    """A new run from ``train.init_from``'s weights (before DeepSpeed wraps the model: every ZeRO stage and its
    fp32 master copy start from them). A parameter missing, extra or of another shape: ConfigMismatchError naming
    each (and the shape keys that differ, where the source recorded its config)."""
    weights, old_config, path = init_from_weights(cfg.train.init_from)
    own = model.state_dict()
    problems = [f"{k}: {tuple(weights[k].shape)} there, {tuple(v.shape)} here" for k, v in own.items()
                if k in weights and weights[k].shape != v.shape]
    problems += [f"{k}: missing there" for k in own if k not in weights]
    problems += [f"{k}: not in this model" for k in weights if k not in own]
    if problems:
        keys = [f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in config_changes(old_config, cfg).items()
                if k in SHAPE_KEYS] if isinstance(old_config, dict) else []
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise ConfigMismatchError(
            f"train.init_from={path}: its weights do not fit this model"
            + (f" ({'; '.join(keys)})" if keys else "") + ":\n  " + "\n  ".join(shown)
            + "\nSet the model keys (model.*, audio.n_fft) to the values those weights were trained with.")
    model.load_state_dict(weights)
    if dist.is_main:
        print(f"[weaktok] new run from the weights of {path} (train.init_from): step 0, fresh optimizer and "
              "schedule", flush=True)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ----------------------------------------------------------------------------------------------------------
# The step


def corrupt(spec: torch.Tensor, cfg: Config, gen: torch.Generator, prior: dict | None = None) -> torch.Tensor:
    """Training input corruption: gaussian noise, and for some examples one time span replaced.

    ``fill: zeros`` writes zeros into the span. ``fill: prior`` writes what generation's refinement feeds the model
    in its hole (generate.refine): (1 - s) * spec + s * z, z the prior noise (weaktok/prior.py), s ~ U(0, 1) per
    example, so the model learns to refine every noise level, from pure prior noise (s = 1) down."""
    c = cfg.train.corruption
    x = spec + c.noise_std * torch.randn(spec.shape, generator=gen, device=spec.device) if c.noise_std else spec
    B, _, T = spec.shape
    if c.mask_prob > 0 and c.mask_max_fraction > 0:
        hit = torch.rand(B, generator=gen, device=spec.device) < c.mask_prob
        length = (torch.rand(B, generator=gen, device=spec.device) * c.mask_max_fraction * T).round().long()
        start = (torch.rand(B, generator=gen, device=spec.device) * T).long()
        start = torch.minimum(start, T - length)  # the span lies inside the clip, whole-clip spans included
        t = torch.arange(T, device=spec.device)
        span = (t[None] >= start[:, None]) & (t[None] < (start + length)[:, None]) & hit[:, None]  # (B, T)
        if c.fill == "prior":
            from weaktok.prior import sample_prior

            if prior is None:
                raise ValueError("train.corruption.fill=prior needs the prior statistics (weaktok.prior)")
            level = torch.rand(B, 1, 1, generator=gen, device=spec.device)  # (B, 1, 1)
            z = sample_prior(prior, B, T, gen)  # (B, F, T)
            x = torch.where(span[:, None, :], (1 - level) * spec + level * z, x)
        else:
            x = x.masked_fill(span[:, None, :], 0.0)
    return x


@dataclass
class Losses:
    total: torch.Tensor
    parts: dict[str, torch.Tensor] = field(default_factory=dict)  # detached 0-d fp32 tensors on the device


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The dtype ``module`` computes in: bf16 once DeepSpeed has cast it (bf16 on), else fp32."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), torch.float32)


def compute_loss(engine, front, lscore_fn, spec, inp, w, target, cfg: Config) -> tuple[Losses, object]:
    """One forward and the loss. The model runs in its own dtype (bf16 under DeepSpeed's bf16); the spectrogram
    front end, the differentiable L-Score and every loss term run in fp32.

    ``Losses.parts`` are detached 0-d tensors on the device (no host sync here): the loop sums them over
    ``train.log_every`` steps and reads them once per log line."""
    out = engine(inp.to(model_dtype(engine)))
    recon = out.recon.float()
    recon_loss = (recon - spec).abs().mean()
    from weaktok.lscore.loss import distribution_loss

    L_batch = lscore_fn(front.power(recon))  # (B, 4)
    dist_loss = distribution_loss(L_batch, target["mean"], target["std"], cfg.lscore.lambda_mu,
                                  cfg.lscore.lambda_sigma, cfg.lscore.standardise)
    ratio = out.chunk.ratio_loss.float()
    total = w.w_recon * recon_loss + w.w_L * dist_loss + w.w_ratio * ratio
    parts = {"loss": total, "recon": recon_loss, "lscore_dist": dist_loss, "ratio_loss": ratio,
             **{f"chunk_{k}": v for k, v in out.stats.items() if k != "ratio_loss"},
             **{f"lscore_batch_{i}": v for i, v in enumerate(L_batch.mean(0))}}
    return Losses(total, {k: v.detach().float() for k, v in parts.items()}), out


class PartsWindow:
    """Loss parts summed on the device over the steps since the last log line; ``read`` is the one host sync."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.n = 0

    def add(self, parts: dict[str, torch.Tensor]) -> None:
        for k, v in parts.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.clone()
        self.n += 1

    def read(self) -> dict[str, float]:
        """Window means as floats (one device-to-host copy), and a fresh window."""
        if not self.n:
            return {}
        values = (torch.stack(list(self.sums.values())) / self.n).tolist()
        out = dict(zip(self.sums, values))
        self.sums, self.n = {}, 0
        return out


def all_finite(loss: torch.Tensor, dist: Dist) -> bool:
    """True when the loss is finite on every rank: the one host sync of an ordinary step."""
    flag = torch.isfinite(loss.detach()).to(torch.float32).reshape(1)
    if dist.world > 1:
        torch.distributed.all_reduce(flag)
    return int(flag.item()) == dist.world


# ----------------------------------------------------------------------------------------------------------
# Logging


class MetricsLog:
    """metrics.jsonl on rank 0: one JSON object per line, flushed as written."""

    def __init__(self, path: Path, enabled: bool):
        self.enabled = enabled
        self.f = open(path, "a") if enabled else None

    def write(self, record: dict) -> None:
        if self.f:
            self.f.write(json.dumps({"time": time.time(), **record}) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


# ----------------------------------------------------------------------------------------------------------
# The loop


def train(cfg: Config, out: str | Path, hooks: list | None = None) -> dict:
    """Train with ``cfg`` writing to ``out``; returns the last validation record.

    ``hooks``: objects with any of ``on_batch(batch, state)`` and ``on_epoch_end(val_record, checkpoint_path)``
    (every rank; the Ray Train and Tune launchers report there), and, on rank 0 only, ``on_log(record)``,
    ``on_validation(record)``, ``on_checkpoint(path, state)`` (the metrics exporter listens there)."""
    from weaktok.audio import SpecFrontEnd
    from weaktok.data import train_loader
    from weaktok.lscore.differentiable import DifferentiableLScore
    from weaktok.manifest import load_manifest, shard_paths
    from weaktok.model import build_model, count_params

    out = Path(out)
    hooks = hooks or []
    manifest = load_manifest(cfg.data.shards)  # clear errors before any compute
    shard_paths(cfg.data.shards, "train", manifest, verify=cfg.data.verify_shards)
    if cfg.data.verify_shards and (manifest["splits"].get("val") or {}).get("shards"):
        shard_paths(cfg.data.shards, "val", manifest, verify=True)  # validation reads it every epoch
    if manifest["sample_rate"] != cfg.audio.sample_rate:
        raise ConfigError(f"config key 'audio.sample_rate': {cfg.audio.sample_rate} differs from the shards' "
                          f"{manifest['sample_rate']} ({cfg.data.shards}/manifest.json)")
    check_precision(cfg)
    dist = setup_distributed(cfg.train.dist_timeout_s)
    ckpt_dir = out / "checkpoints"
    plan = resume_plan(cfg, ckpt_dir, dist)  # a config its checkpoint cannot load into: refused here, folder untouched
    torch.manual_seed(cfg.seed + dist.rank)
    np.random.seed(cfg.seed + dist.rank)
    random.seed(cfg.seed + dist.rank)
    if dist.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
    with contextlib.ExitStack() as cleanup:  # whatever starts below is stopped however train() ends
        if cfg.metrics.enabled:  # before heavy compute: a metrics port in use fails here (weaktok/metrics.py)
            from weaktok.metrics import MetricsExporter
            exporter = MetricsExporter(cfg, out, dist.rank, dist.local_rank, dist.world, manifest["lscore_target"])
            cleanup.callback(exporter.close)
            hooks = [*hooks, exporter]  # a copy: the caller's list stays as it was

        front = SpecFrontEnd(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length,
                             cfg.lscore.griffin_lim_iters).to(dist.device)
        lscore_fn = DifferentiableLScore(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length,
                                         mode=cfg.lscore.mode).to(dist.device)
        model = build_model(cfg.model, front.n_freqs)
        if cfg.train.init_from and not plan:  # precedence: the run's own checkpoint (resume) > train.init_from
            load_init_weights(model, cfg, dist)
        batches_per_epoch = -(-cfg.data.samples_per_epoch // cfg.data.batch_size)
        steps_per_epoch = max(1, batches_per_epoch // cfg.train.grad_accum)
        total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
        engine, optimizer, scheduler = build_engine(cfg, model, total_steps)
        target = {k: torch.tensor(manifest["lscore_target"][k], device=dist.device) for k in ("mean", "std")}
        prior = _prior(cfg, front, dist)

        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "nan_skipped": 0, "corrupt_skipped": 0, "samples": 0}
        _resume(cfg, engine, scheduler, plan, ckpt_dir, state, dist)
        log = MetricsLog(out / "metrics.jsonl", dist.is_main)
        cleanup.callback(log.close)
        pool = _start_pool(cfg, dist)
        if pool is not None:
            cleanup.callback(pool.close)
        gen = torch.Generator(device=dist.device).manual_seed(cfg.seed * 1000 + dist.rank + 7919 * state["step"])
        if dist.is_main:
            print(f"[weaktok] {count_params(model) / 1e6:.2f} M params, world {dist.world}, ZeRO "
                  f"{cfg.train.zero_stage}, {'bf16' if use_bf16(cfg) else 'fp32'}, {steps_per_epoch} steps/epoch, "
                  f"device {dist.device}", flush=True)

        last_val: dict = {}
        while state["epoch"] < cfg.train.epochs and not _done(state, cfg):
            last_val = _run_epoch(cfg, dist, engine, front, lscore_fn, target, state, log, pool, gen, hooks,
                                  ckpt_dir, batches_per_epoch, train_loader, prior)
        if dist.is_main:
            _poll_pool(pool, state, log, hooks)
        export_weights(engine, cfg, out, dist)
        if prior is not None and dist.is_main:  # generation reuses it (generate.cached_spectrum)
            torch.save({k: v.cpu() for k, v in prior.items()}, out / "final" / "spectrum.pt")
    return last_val


def _prior(cfg: Config, front, dist: Dist) -> dict | None:
    """Generation's prior statistics for ``fill: prior`` (rank 0's share of the training split, broadcast)."""
    if cfg.train.corruption.fill != "prior" or not cfg.train.corruption.mask_prob:
        return None
    from weaktok.prior import corpus_spectrum

    stats = corpus_spectrum(cfg.data.shards, front.cpu(), cfg.audio.clip_seconds) if dist.is_main else None
    front.to(dist.device)
    stats = _broadcast_object(stats, dist)
    return {k: v.to(dist.device) for k, v in stats.items()}


def _resume(cfg: Config, engine, scheduler, plan: list[Candidate], ckpt_dir: Path, state: dict, dist: Dist) -> None:
    """Load the newest checkpoint of ``plan`` (``resume_plan``) that loads on every rank.

    With ``resume: auto`` a checkpoint that fails to load because a file in it is damaged (``unreadable_files``: a
    truncated or garbage file inside a COMPLETE folder) is reported with a warning naming the folder, set aside as
    ``<tag>.corrupt`` and the next older one is tried; the ranks agree on the outcome of each attempt (an
    all-reduce), so all of them resume from the same step. If none loads: CheckpointError. A checkpoint whose
    files are all intact but that still fails to load was written for another model or layout: CheckpointError at
    once, the checkpoint left as it is. An explicit ``resume: <path>`` that fails to load is a CheckpointError at
    once. After loading, config changes since the checkpoint are logged and the optimizer settings of ``cfg``
    apply (``_apply_optimizer_settings``)."""
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
        bad, n_damaged = (int(x) for x in all_reduce_sum([float(bool(error)), float(damaged)], dist))
        if not bad:
            break
        why = error or f"it loaded here but not on {bad} other rank(s)"
        if not n_damaged:  # every file intact: not broken, written for another model or layout; it stays as it is
            raise CheckpointError(
                f"checkpoint {where} is intact but does not load into this job ({why}); it was left as it is. It was "
                "probably written under another model shape, ZeRO stage, precision or number of ranks: resume with "
                f"those, or start a new run in another folder (--out NEW, with train.init_from={where} to start "
                "from its weights)")
        failed.append(str(where))
        more = i + 1 < len(plan) and cfg.train.resume == "auto"
        if dist.is_main:
            print(f"[weaktok] WARNING: checkpoint {where} is COMPLETE but failed to load ({why}); "
                  + ("falling back to the previous complete checkpoint" if more else "no older one to fall back to"),
                  flush=True)
        if cfg.train.resume != "auto":
            raise CheckpointError(f"checkpoint {where} (train.resume) failed to load: {why}")
        if dist.is_main and damaged:  # rank 0's copy is damaged: kept, out of resume's and rotation's way
            aside, n = where.with_name(where.name + CORRUPT_SUFFIX), 1
            while aside.exists():
                aside, n = where.with_name(f"{where.name}{CORRUPT_SUFFIX}{n}"), n + 1
            with contextlib.suppress(OSError):
                os.replace(where, aside)
        if dist.world > 1:
            torch.distributed.barrier()
    else:
        if failed:
            raise CheckpointError(f"no checkpoint in {ckpt_dir} loads: {', '.join(failed)} all failed (those bad on "
                                  f"rank 0 are set aside as <tag>{CORRUPT_SUFFIX}); restore one, or set "
                                  "train.resume=never to start over")
        return
    state.update({k: client[k] for k in state if k in client})
    if "rng" in client and dist.world == client.get("world", dist.world):
        set_rng_state(client["rng"])
    _apply_optimizer_settings(cfg, scheduler)
    if dist.is_main:
        print(f"[weaktok] resumed from {where}: step {state['step']}, epoch {state['epoch']}, "
              f"batch {state['batch_in_epoch']} of the epoch", flush=True)
        _log_config_changes(cfg, cand, client.get("config"))


def _log_config_changes(cfg: Config, cand: Candidate, client_config: dict | None) -> None:
    """Rank 0: one line per key whose value differs from the one the resumed checkpoint was written under."""
    old = cand.config if cand.config is not None else client_config
    if cand.config is None:
        print(f"[weaktok] WARNING: checkpoint {cand.folder} holds no {CONFIG_FILE} (written by an older weaktok): "
              "the config could not be checked before loading"
              + ("; compared after loading with the copy in its client state" if old else ""), flush=True)
    changes = config_changes(old, cfg) if isinstance(old, dict) else {}
    if changes:
        print(f"[weaktok] config changed since checkpoint {cand.folder}; resuming under the new values:", flush=True)
    for key, (before, after) in changes.items():
        print(f"[weaktok]   {key}: {_show(before)} -> {_show(after)}", flush=True)
    if cfg.train.init_from:
        print(f"[weaktok] train.init_from={cfg.train.init_from} ignored: this run resumes from its own checkpoint "
              "(a run's own checkpoints come first; start a new run from other weights with a new --out)", flush=True)


def _apply_optimizer_settings(cfg: Config, scheduler) -> None:
    """After a resume: lr, weight decay and betas as ``cfg`` sets them. Loading restored the checkpoint's values
    (the scheduler's base lr, the optimizer's param groups), which would silently undo a changed ``train.lr``.
    The schedule itself (warm-up, cosine over the run's length) is always the one ``cfg`` defines."""
    groups = scheduler.optimizer.param_groups  # [decay, no decay], as build_engine made them
    scheduler.base_lrs = [cfg.train.lr] * len(groups)
    for group, decay, f in zip(groups, (cfg.train.weight_decay, 0.0), scheduler.lr_lambdas):
        group.update(lr=cfg.train.lr * f(scheduler.last_epoch), weight_decay=decay, betas=tuple(cfg.train.betas))
    scheduler._last_lr = [g["lr"] for g in groups]


def _done(state: dict, cfg: Config) -> bool:
    return bool(cfg.train.max_steps) and state["step"] >= cfg.train.max_steps


def _run_epoch(cfg, dist, engine, front, lscore_fn, target, state, log, pool, gen, hooks, ckpt_dir,
               batches_per_epoch, train_loader, prior=None) -> dict:
    remaining = batches_per_epoch - state["batch_in_epoch"]
    # a resumed epoch reads a fresh stream (seeded by the step) for the batches it still owes
    loader = train_loader(cfg.data.shards, cfg.data.batch_size, cfg.audio.clip_seconds,
                          remaining * cfg.data.batch_size, cfg.data.num_workers, cfg.data.shuffle_buffer,
                          seed=cfg.seed + 1009 * dist.rank + state["step"], epoch=state["epoch"],
                          verify=False)
    engine.train()
    keys_log = None
    if cfg.data.log_keys:
        (ckpt_dir.parent / "samples").mkdir(parents=True, exist_ok=True)
        keys_log = open(ckpt_dir.parent / "samples" / f"rank{dist.rank}.txt", "a")
    t_last, wait = time.perf_counter(), 0.0
    window = {"samples": 0, "t0": time.perf_counter()}
    parts = PartsWindow()  # loss parts: means over the log window, read from the device once per log line
    it = iter(loader)
    while state["batch_in_epoch"] < batches_per_epoch and not _done(state, cfg):
        t0 = time.perf_counter()
        try:
            batch = next(it)
        except StopIteration:
            break
        wait += time.perf_counter() - t0
        progress = state["epoch"] + state["batch_in_epoch"] / batches_per_epoch
        w = weights_at(progress, cfg.curriculum)
        for h in hooks:
            getattr(h, "on_batch", lambda b, s: None)(batch, state)
        if keys_log is not None:
            keys_log.write("".join(f"{state['epoch']}\t{k}\n" for k in batch["keys"]))
        audio = batch["audio"].to(dist.device, non_blocking=True)
        state["corrupt_skipped"] += batch["skipped"]
        with torch.no_grad():
            spec = front(audio)  # (B, F, T) fp32
            inp = corrupt(spec, cfg, gen, prior)
        losses, out = compute_loss(engine, front, lscore_fn, spec, inp, w, target, cfg)
        finite = all_finite(losses.total, dist)
        state["batch_in_epoch"] += 1
        if not finite:  # every rank skips together, so collectives stay matched
            state["nan_skipped"] += 1
            if dist.is_main:
                print(f"[weaktok] non-finite loss at step {state['step']}: step skipped "
                      f"({state['nan_skipped']} so far)", flush=True)
            continue
        engine.backward(losses.total)
        engine.step()
        parts.add(losses.parts)
        state["samples"] += audio.shape[0] * dist.world
        window["samples"] += audio.shape[0] * dist.world
        if state["batch_in_epoch"] % cfg.train.grad_accum == 0:
            state["step"] += 1
            step = state["step"]
            if dist.is_main and pool is not None and cfg.lscore.pool_every and step % cfg.lscore.pool_every == 0:
                _submit_outputs(pool, front, out.recon.detach().float()[: cfg.lscore.pool_items], cfg, step)
            if dist.is_main:
                _poll_pool(pool, state, log, hooks)
            if step % cfg.train.log_every == 0:
                now = time.perf_counter()
                elapsed = now - window["t0"]
                record = {"kind": "train", "step": step, "epoch": state["epoch"], "progress": round(progress, 4),
                          **parts.read(), "w_L": w.w_L, "w_recon": w.w_recon, "w_ratio": w.w_ratio,
                          "phase": w.phase, "tau": cfg.model.chunking.tau, "lr": engine.get_lr()[0],
                          "samples_per_s": window["samples"] / max(elapsed, 1e-9),
                          "audio_s_per_s": window["samples"] * cfg.audio.clip_seconds / max(elapsed, 1e-9),
                          "step_time_s": (now - t_last) / cfg.train.log_every, "data_wait_s": wait,
                          "data_wait_share": wait / max(elapsed, 1e-9), "nan_skipped": state["nan_skipped"],
                          "corrupt_skipped": state["corrupt_skipped"]}
                if pool is not None:  # every record, so a stalled pool still shows its backlog
                    record["pool_queue_depth"] = pool.queue_depth
                    record["lscore_pool_errors"] = state.get("lscore_pool_errors", 0)
                if dist.is_main:
                    log.write(record)
                    for h in hooks:
                        getattr(h, "on_log", lambda r: None)(record)
                t_last, wait = now, 0.0
                window = {"samples": 0, "t0": now}
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                _checkpoint(engine, ckpt_dir, state, cfg, dist, hooks, gen)
    if keys_log is not None:
        keys_log.close()
    if state["batch_in_epoch"] >= batches_per_epoch:
        state["epoch"] += 1
        state["batch_in_epoch"] = 0
    val = validate(cfg, dist, engine, front, lscore_fn, target, state, pool)
    if dist.is_main:
        log.write(val)
        for h in hooks:
            getattr(h, "on_validation", lambda r: None)(val)
        print(f"[weaktok] epoch {val['epoch']} step {val['step']}: val recon {val['val_recon']:.4f}, "
              f"boundary rate {val['val_boundary_rate']:.3f}, lscore err {val.get('val_lscore_rel_err_mean', 'n/a')}",
              flush=True)
    path = _checkpoint(engine, ckpt_dir, state, cfg, dist, hooks, gen)
    val = _broadcast_object(val, dist)  # every rank gets rank 0's record (with the exact L-Score)
    for h in hooks:
        getattr(h, "on_epoch_end", lambda r, p: None)(val, path)
    return val


def _checkpoint(engine, ckpt_dir, state, cfg, dist, hooks, gen) -> Path:
    client = {**state, "rng": rng_state(), "world": dist.world, "config": to_dict(cfg)}
    tag = save_checkpoint(engine, ckpt_dir, client, cfg.train.keep_checkpoints, dist)
    if dist.is_main:
        for h in hooks:
            getattr(h, "on_checkpoint", lambda p, s: None)(ckpt_dir / tag, dict(state))
    return ckpt_dir / tag


def _broadcast_object(obj, dist: Dist):
    if dist.world == 1:
        return obj
    box = [obj if dist.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


# ----------------------------------------------------------------------------------------------------------
# Exact L-Score through the Ray pool (rank 0 only)


def _start_pool(cfg: Config, dist: Dist):
    if not dist.is_main or not (cfg.lscore.pool_every or cfg.lscore.val_items):
        return None
    from weaktok.lscore.pool import LScorePool

    return LScorePool(num_actors=cfg.lscore.pool_actors or None)


def _submit_outputs(pool, front, recon: torch.Tensor, cfg: Config, step: int) -> None:
    with torch.no_grad():
        waves = front.inverse(recon.clamp_min(0)).cpu().numpy()
    pool.submit(list(waves), cfg.audio.sample_rate, tag=step, block=False)


def _poll_pool(pool, state: dict, log: MetricsLog, hooks: list) -> None:
    if pool is None:
        return
    from weaktok.lscore.pool import LScorePoolError

    try:
        finished = pool.poll()
    except LScorePoolError as e:  # an actor died past its retries: the pool replaced it; training goes on
        state["lscore_pool_errors"] = state.get("lscore_pool_errors", 0) + 1
        print(f"[weaktok] L-Score pool error (step {state['step']}, continuing): {e}", flush=True)
        return
    for tag, scores in finished:
        record = {"kind": "lscore_exact", "step": state["step"], "from_step": tag,
                  "lscore_exact": np.asarray(scores).mean(0).tolist(), "pool": pool.stats()}
        log.write(record)
        for h in hooks:
            getattr(h, "on_log", lambda r: None)(record)


# ----------------------------------------------------------------------------------------------------------
# Validation


@torch.no_grad()
def validate(cfg, dist, engine, front, lscore_fn, target, state, pool) -> dict:
    from weaktok.data import eval_loader
    from weaktok.lscore.exact import LSCORE_NAMES

    engine.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # recon L1 sum, items, boundary rate sum, chunk length sum
    waves: list[np.ndarray] = []
    budget = cfg.data.val_max_items or float("inf")
    seen = 0
    for batch in eval_loader(cfg.data.shards, "val", cfg.data.val_batch_size, cfg.audio.clip_seconds):
        if seen >= budget / dist.world:
            break
        spec = front(batch["audio"].to(dist.device))
        out = engine(spec.to(model_dtype(engine)))
        n = spec.shape[0]
        seen += n
        sums[0] += (out.recon.float() - spec).abs().mean(dim=(1, 2)).sum().item()
        sums[1] += n
        sums[2] += float(out.stats["boundary_rate"]) * n
        sums[3] += float(out.stats["mean_chunk_len"]) * n
        if len(waves) < cfg.lscore.val_items:
            take = out.recon.float()[: cfg.lscore.val_items - len(waves)]
            waves += list(front.inverse(take.clamp_min(0)).cpu().numpy())
    engine.train()
    total = all_reduce_sum(sums, dist)
    n = max(total[1], 1)
    record = {"kind": "val", "step": state["step"], "epoch": state["epoch"], "val_items": int(total[1]),
              "val_recon": total[0] / n, "val_boundary_rate": total[2] / n, "val_mean_chunk_len": total[3] / n}
    gathered = _gather_objects(waves, dist)
    scores = None
    if dist.is_main and pool is not None and gathered:
        from weaktok.lscore.pool import LScorePoolError

        try:
            scores = pool.map(gathered, cfg.audio.sample_rate)  # (N, 4) exact, librosa
        except LScorePoolError as e:  # actors died past their retries: this validation goes without exact scores
            state["lscore_pool_errors"] = state.get("lscore_pool_errors", 0) + 1
            record["val_lscore_error"] = str(e)
            print(f"[weaktok] L-Score pool error in validation (step {state['step']}, continuing without exact "
                  f"L-Scores): {e}", flush=True)
    if scores is not None:
        mean = scores.mean(0)
        tmean = target["mean"].cpu().numpy()
        tstd = target["std"].cpu().numpy()
        rel = np.abs(mean - tmean) / np.maximum(np.abs(tmean), 1e-6)
        std_dist = np.abs(mean - tmean) / np.maximum(tstd, 1e-6)  # standardised L1 distance of the means
        record.update({"val_lscore_exact": mean.tolist(), "val_lscore_target": tmean.tolist(),
                       "val_lscore_target_std": tstd.tolist(), "val_lscore_rel_err": rel.tolist(),
                       "val_lscore_rel_err_mean": float(rel.mean()), "val_lscore_std_dist": std_dist.tolist(),
                       "val_lscore_std_dist_total": float(std_dist.sum()), "lscore_names": list(LSCORE_NAMES)})
    return record


def _gather_objects(items: list, dist: Dist) -> list:
    if dist.world == 1:
        return items
    out: list = [None] * dist.world
    torch.distributed.all_gather_object(out, items)
    return [x for part in out for x in part]


# ----------------------------------------------------------------------------------------------------------
# Export


def master_weights(engine, cfg: Config, ckpt_dir: Path, dist: Dist) -> dict[str, torch.Tensor] | None:
    """The fp32 master weights, whole (not ZeRO partitions), on rank 0 (None elsewhere).

    ZeRO 1-3: DeepSpeed's own consolidation (``zero_to_fp32``) of the newest complete checkpoint, which every run
    has written by now (each epoch ends with one). These are the optimizer's fp32 masters, not the bf16 copies
    the module computes with. ZeRO 0 (fp32 only): the module's own weights.
    """
    if cfg.train.zero_stage == 0:  # fp32 only (check_precision): the module's weights are the masters
        return {k: v.detach().float().cpu() for k, v in engine.module.state_dict().items()} if dist.is_main else None
    if not dist.is_main:
        return None
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    tag = complete_tags(ckpt_dir)[-1]
    with contextlib.redirect_stdout(sys.stderr):  # its progress lines are not ours to print on stdout
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    return {k: v.detach().float().cpu().contiguous() for k, v in state.items()}


def export_weights(engine, cfg: Config, out: Path, dist: Dist) -> Path | None:
    """The fp32 master weights and the config in ``out/final/model.pt`` (``torch.load(weights_only=True)``)."""
    state = master_weights(engine, cfg, out / "checkpoints", dist)
    if not dist.is_main or state is None:
        return None
    path = out / "final" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"model": state, "config": to_dict(cfg)}, tmp)
    os.replace(tmp, path)
    print(f"[weaktok] exported fp32 master weights to {path}", flush=True)
    return path


# ----------------------------------------------------------------------------------------------------------
# Entry point for launchers: python -m weaktok.train --config C --out DIR [key=value ...]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m weaktok.train", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="shipped config name (tiny, demo, paper) or a YAML path")
    p.add_argument("--out", required=True, help="run folder (config, metrics, checkpoints, final weights)")
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)  # deepspeed launcher compat
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, args.out)
    except ConfigError as e:
        print(f"weaktok train: config error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"weaktok train: checkpoint error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
