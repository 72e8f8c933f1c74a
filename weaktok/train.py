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
checkpoints/<tag>/ (DeepSpeed, with client state; a tag counts only once it holds COMPLETE), final/model.pt
(consolidated fp32 weights + config, for generation and evaluation).

Faults (tests/test_faults_train.py): a failed checkpoint write (full disk) raises CheckpointError naming the folder,
the previous checkpoint untouched; ``resume: auto`` skips folders without COMPLETE and falls back past a COMPLETE one
that fails to load (warning, set aside as <tag>.corrupt); ``train.dist_timeout_s`` bounds every collective, so a
rank whose peer died exits instead of waiting forever.
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
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch

from weaktok.config import Config, ConfigError, load_config, save_config, to_dict
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
    return engine, optimizer, scheduler


# ----------------------------------------------------------------------------------------------------------
# Checkpoints: write, then mark complete; resume from the newest complete one


CORRUPT_SUFFIX = ".corrupt"  # a COMPLETE checkpoint that failed to load becomes <tag>.corrupt[N] (kept, never resumed)


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
    """Every rank writes its part, then (after a barrier) rank 0 marks the folder COMPLETE and rotates old ones.

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
            tmp.write_text(json.dumps({"step": state["step"], "epoch": state["epoch"]}))
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
    parts: dict[str, float] = field(default_factory=dict)


def compute_loss(engine, front, lscore_fn, spec, inp, w, target, cfg: Config) -> tuple[Losses, object]:
    out = engine(inp)
    recon = out.recon.float()
    recon_loss = (recon - spec).abs().mean()
    from weaktok.lscore.loss import distribution_loss

    L_batch = lscore_fn(front.power(recon))  # (B, 4)
    dist_loss = distribution_loss(L_batch, target["mean"], target["std"], cfg.lscore.lambda_mu,
                                  cfg.lscore.lambda_sigma, cfg.lscore.standardise)
    ratio = out.chunk.ratio_loss.float()
    total = w.w_recon * recon_loss + w.w_L * dist_loss + w.w_ratio * ratio
    parts = {"loss": total.item(), "recon": recon_loss.item(), "lscore_dist": dist_loss.item(),
             "ratio_loss": ratio.item(), **{f"chunk_{k}": float(v) for k, v in out.stats.items() if k != "ratio_loss"}}
    parts.update({f"lscore_batch_{i}": float(v) for i, v in enumerate(L_batch.detach().mean(0))})
    return Losses(total, parts), out


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
    dist = setup_distributed(cfg.train.dist_timeout_s)
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
        ckpt_dir = out / "checkpoints"

        front = SpecFrontEnd(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length,
                             cfg.lscore.griffin_lim_iters).to(dist.device)
        lscore_fn = DifferentiableLScore(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length,
                                         mode=cfg.lscore.mode).to(dist.device)
        model = build_model(cfg.model, front.n_freqs)
        batches_per_epoch = -(-cfg.data.samples_per_epoch // cfg.data.batch_size)
        steps_per_epoch = max(1, batches_per_epoch // cfg.train.grad_accum)
        total_steps = cfg.train.max_steps or steps_per_epoch * cfg.train.epochs
        engine, optimizer, scheduler = build_engine(cfg, model, total_steps)
        target = {k: torch.tensor(manifest["lscore_target"][k], device=dist.device) for k in ("mean", "std")}
        prior = _prior(cfg, front, dist)

        state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "nan_skipped": 0, "corrupt_skipped": 0, "samples": 0}
        _resume(cfg, engine, ckpt_dir, state, dist)
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


def _resume(cfg: Config, engine, ckpt_dir: Path, state: dict, dist: Dist) -> None:
    """Load the newest complete checkpoint that loads on every rank.

    With ``resume: auto`` a checkpoint that fails to load (a truncated or garbage file inside a COMPLETE folder) is
    reported with a warning naming the folder, set aside as ``<tag>.corrupt`` and the next older one is tried;
    the ranks agree on the outcome of each attempt (an all-reduce), so all of them resume from the same step. If
    none loads: CheckpointError. An explicit ``resume: <path>`` that fails to load is a CheckpointError at once."""
    candidates = _broadcast_object(resume_candidates(cfg, ckpt_dir), dist)  # rank 0's list: every rank agrees
    failed: list[str] = []
    for i, (load_dir, tag) in enumerate(candidates):
        error = ""
        try:
            load_path, client = engine.load_checkpoint(str(load_dir), tag=tag)
            if load_path is None or client is None:
                error = "DeepSpeed found no loadable model states in it"
        except Exception as e:  # torch.load on a truncated / garbage file: UnpicklingError, RuntimeError, EOFError...
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        bad = int(all_reduce_sum([1.0 if error else 0.0], dist)[0])  # ranks that could not load it
        if not bad:
            break
        where = load_dir / tag
        failed.append(str(where))
        why = error or f"it loaded here but not on {bad} other rank(s)"
        more = i + 1 < len(candidates) and cfg.train.resume == "auto"
        if dist.is_main:
            print(f"[weaktok] WARNING: checkpoint {where} is COMPLETE but failed to load ({why}); "
                  + ("falling back to the previous complete checkpoint" if more else "no older one to fall back to"),
                  flush=True)
        if cfg.train.resume != "auto":
            raise CheckpointError(f"checkpoint {where} (train.resume) failed to load: {why}")
        if dist.is_main and error:  # rank 0's own copy is bad: kept for inspection, out of resume's and rotation's way
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
    if dist.is_main:
        print(f"[weaktok] resumed from {load_dir / tag}: step {state['step']}, epoch {state['epoch']}, "
              f"batch {state['batch_in_epoch']} of the epoch", flush=True)


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
        finite = all_reduce_sum([float(torch.isfinite(losses.total).item())], dist)[0] == dist.world
        state["batch_in_epoch"] += 1
        if not finite:  # every rank skips together, so collectives stay matched
            state["nan_skipped"] += 1
            if dist.is_main:
                print(f"[weaktok] non-finite loss at step {state['step']}: step skipped "
                      f"({state['nan_skipped']} so far)", flush=True)
            continue
        engine.backward(losses.total)
        engine.step()
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
                          **losses.parts, "w_L": w.w_L, "w_recon": w.w_recon, "w_ratio": w.w_ratio,
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
        out = engine(spec)
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


def export_weights(engine, cfg: Config, out: Path, dist: Dist) -> Path | None:
    """Consolidated fp32 weights in ``out/final/model.pt`` (loadable with torch.load(weights_only=True))."""
    if cfg.train.zero_stage == 3:
        state = engine._zero3_consolidated_16bit_state_dict() if hasattr(
            engine, "_zero3_consolidated_16bit_state_dict") else None
    else:
        state = engine.module.state_dict()
    if not dist.is_main or state is None:
        return None
    path = out / "final" / "model.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".pt.tmp")
    torch.save({"model": {k: v.detach().float().cpu() for k, v in state.items()}, "config": to_dict(cfg)}, tmp)
    os.replace(tmp, path)
    print(f"[weaktok] exported fp32 weights to {path}", flush=True)
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
