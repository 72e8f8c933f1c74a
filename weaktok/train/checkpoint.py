"""Checkpoints: write, then mark complete; which folders count; the config a checkpoint was written under and
whether the current config can load it (resume.py decides what to load and loads it).

Layout: ``<out>/checkpoints/step<NNNNNNNN>/`` is DeepSpeed's folder (its client state: the TrainState counters,
``rng``, ``world``, ``config``), plus ``config.yaml`` (the resolved config, read before any tensor) and
``COMPLETE`` (JSON: step, epoch, world, bf16; written last). ``latest`` is DeepSpeed's pointer to the newest tag.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch
import yaml

from weaktok.config import Config, ConfigError, to_dict
from weaktok.train.distributed import Dist, all_reduce_sum
from weaktok.train.engine import use_bf16

COMPLETE = "COMPLETE"
CORRUPT_SUFFIX = ".corrupt"  # a COMPLETE checkpoint that failed to load becomes <tag>.corrupt[N] (kept, never resumed)
CONFIG_FILE = "config.yaml"  # in each checkpoint folder: the resolved config it was written under


class CheckpointError(RuntimeError):
    """A checkpoint could not be written, or no complete checkpoint could be loaded."""


class ConfigMismatchError(CheckpointError, ConfigError):
    """The config does not fit the checkpoint the run would load (its own, to resume, or ``train.init_from``).
    Raised before anything is loaded into the model; no checkpoint is touched. Both kinds of error: the CLI reports
    it as a config error (exit 2), callers catching CheckpointError still catch it."""


# ----------------------------------------------------------------------------------------------------------
# Writing


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
    resave = (
        all_reduce_sum([float(dist.is_main and (path / COMPLETE).is_file())], dist)[0] > 0
    )  # rank 0 decides
    write = path.with_name(tag + ".next") if resave else path
    try:
        if dist.is_main and resave:
            shutil.rmtree(write, ignore_errors=True)  # a .next left by an earlier failure
        engine.save_checkpoint(
            str(ckpt_dir), tag=write.name, client_state=state
        )  # collective: every rank its part
    except Exception as e:
        shutil.rmtree(write, ignore_errors=True)
        prev = (
            f"the previous complete checkpoint {ckpt_dir / previous[-1]} is intact and `resume: auto` "
            "will pick it"
            if previous
            else "there is no earlier complete checkpoint"
        )
        try:  # torch.save reports a full disk as e.g. "unexpected pos 22976 vs 22870": say how much room is left
            room = f"{shutil.disk_usage(ckpt_dir).free / 1e6:.1f} MB free there"
        except OSError:
            room = "free space unknown"
        raise CheckpointError(
            f"writing checkpoint {write} failed on rank {dist.rank} "
            f"({type(e).__name__}: {str(e).strip()}; {room}); {prev}"
        ) from e
    if dist.world > 1:
        torch.distributed.barrier()
    if dist.is_main:
        tmp = write / (COMPLETE + ".tmp")
        try:  # written whole, then renamed: a marker is either absent or complete
            if (
                "config" in state
            ):  # read on resume before any tensor: a config that cannot load is refused up front
                (write / CONFIG_FILE).write_text(yaml.safe_dump(state["config"], sort_keys=False))
            tmp.write_text(
                json.dumps(
                    {
                        "step": state["step"],
                        "epoch": state["epoch"],
                        "world": dist.world,
                        "bf16": bool(engine.bfloat16_enabled()),
                    }
                )
            )
            os.replace(tmp, write / COMPLETE)
            if resave:  # old -> .old, .next -> tag, drop .old: one complete copy of the step at every moment
                old = path.with_name(tag + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(path, old)
                os.replace(write, path)
                shutil.rmtree(old, ignore_errors=True)
                (ckpt_dir / "latest").write_text(
                    tag
                )  # DeepSpeed's pointer (zero_to_fp32.py reads it)
        except OSError as e:
            if not (path / COMPLETE).is_file():
                shutil.rmtree(write, ignore_errors=True)
            raise CheckpointError(
                f"marking checkpoint {path} complete failed ({e}); older checkpoints are intact"
            ) from e
        for old in complete_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(ckpt_dir / old, ignore_errors=True)
    if dist.world > 1:
        torch.distributed.barrier()
    return tag


def rng_state() -> dict:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ----------------------------------------------------------------------------------------------------------
# Reading what a checkpoint holds, without loading it


def read_checkpoint_config(folder: Path) -> dict | None:
    try:
        config = yaml.safe_load((folder / CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


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


def numpy_rng_globals() -> list:
    """What the numpy RNG state in a checkpoint's client state unpickles to: allowed for weights-only loading."""
    core = np._core if hasattr(np, "_core") else np.core
    return [core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]


# ----------------------------------------------------------------------------------------------------------
# Config comparison: the config a checkpoint was written under vs the current one


# Config keys that change the model's parameter names or shapes: a checkpoint's tensors cannot load into a model
# built with another value (tests/integration/test_resume_config.py checks this list against build_model for every key).
SHAPE_KEYS = (
    "audio.n_fft",
    "model.channels",
    "model.dim",
    "model.n_layers",
    "model.ff_mult",
    "model.chunking.kind",
    "model.objective",
    "model.positions",
)
NOT_COMPARED = ("train.resume", "train.init_from")  # how a run starts, not what it trains
ABSENT = "(not recorded)"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def config_changes(old: dict, cfg: Config) -> dict[str, tuple]:
    """Dotted key -> (old value, new value) for every key (but ``NOT_COMPARED``) where ``cfg`` differs from ``old``."""
    a, b = _flat(old), _flat(to_dict(cfg))
    return {
        k: (a.get(k, ABSENT), b.get(k, ABSENT))
        for k in sorted(a.keys() | b.keys())
        if k not in NOT_COMPARED and a.get(k, ABSENT) != b.get(k, ABSENT)
    }


def show_value(value) -> str:
    """A config value as the messages print it (``ABSENT`` as is, anything else as its repr)."""
    return value if value is ABSENT else repr(value)


def _zero_layout(stage) -> int:
    return {0: 0, 1: 1, 2: 1}.get(
        stage, stage
    )  # ZeRO 1 and 2 store the optimizer state alike; 0 and 3 do not


def load_blockers(changes: dict[str, tuple], marker: dict, cfg: Config, world: int) -> list[str]:
    """One line per difference that stops a checkpoint from loading into this job (measured with DeepSpeed 0.19:
    each of these fails ``engine.load_checkpoint``): parameter shapes, the ZeRO optimizer-state layout (stage 0,
    1-2, 3), precision in effect (bf16 keeps its optimizer state in other files), and for ZeRO 1-3 the number
    of ranks the state is partitioned over. Other changes (lr, epochs, loss weights, ...) load fine."""
    lines = [
        f"{k}: {show_value(old)} -> {show_value(new)} (parameter shapes)"
        for k, (old, new) in changes.items()
        if k in SHAPE_KEYS and old is not ABSENT
    ]  # a key newer than the checkpoint: its default built it
    old_stage, new_stage = changes.get("train.zero_stage", (cfg.train.zero_stage,) * 2)
    if _zero_layout(old_stage) != _zero_layout(new_stage):
        lines.append(f"train.zero_stage: {old_stage} -> {new_stage} (optimizer state layout)")
    precision = {True: "bf16", False: "fp32"}
    if marker.get("bf16") is not None and marker["bf16"] != use_bf16(cfg):
        lines.append(
            f"train.precision in effect: {precision[marker['bf16']]} -> {precision[use_bf16(cfg)]} "
            f"(optimizer state layout; train.precision is {cfg.train.precision!r})"
        )
    if (
        old_stage
        and _zero_layout(old_stage) == _zero_layout(new_stage)
        and marker.get("world") not in (None, world)
    ):
        lines.append(
            f"ranks: {marker['world']} -> {world} (ZeRO stage {old_stage} partitions the optimizer state "
            "by rank)"
        )
    return lines
