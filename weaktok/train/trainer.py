"""The training loop as a Trainer whose methods are its stages (see the package docstring for what a run writes,
its faults and config changes between runs):

    Trainer(cfg, out, hooks).fit()   ==   train(cfg, out, hooks)

``fit`` runs ``setup`` (checks, distributed, resume plan, model and engine, resume or init_from, metrics log,
pool), then ``train_epoch`` until the epochs or ``train.max_steps`` are done (each: ``train_step`` per micro-batch,
``validate``, ``checkpoint``), then ``export``; ``close`` stops what setup started, however fit ends.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from weaktok.audio import SpecFrontEnd
from weaktok.config import Config, ConfigError, save_config, to_dict
from weaktok.data.loader import train_loader
from weaktok.data.manifest import load_manifest, shard_paths
from weaktok.data.prior import corpus_spectrum
from weaktok.lscore.differentiable import DifferentiableLScore
from weaktok.model.flow import clean_estimate, flow_batch, set_normaliser
from weaktok.model.unet import build_model, count_params
from weaktok.train.checkpoint import rng_state, save_checkpoint, set_rng_state
from weaktok.train.curriculum import weights_at
from weaktok.train.distributed import Dist, broadcast_object, setup_distributed
from weaktok.train.engine import build_engine, check_precision, use_bf16
from weaktok.train.export import export_weights
from weaktok.train.hooks import HookList
from weaktok.train.lscore_glue import (
    feedback_step,
    lscore_targets,
    poll_pool,
    start_pool,
    submit_outputs,
)
from weaktok.train.resume import (
    apply_optimizer_settings,
    load_init_weights,
    load_resume,
    log_config_changes,
    resume_plan,
)
from weaktok.train.step import PartsWindow, all_finite, compute_flow_loss, compute_loss, corrupt
from weaktok.train.validation import validate


@dataclass
class TrainState:
    """Where training stands. Checkpoints store it in DeepSpeed's client state (``to_client_state``), hooks get it
    as a dict (``as_dict``), both with the keys of the dict that held it before it was a class."""

    step: int = 0  # optimizer steps taken
    epoch: int = 0  # epochs finished
    batch_in_epoch: int = 0  # micro-batches of the current epoch consumed (non-finite ones too)
    nan_skipped: int = 0  # micro-batches skipped on every rank for a non-finite loss
    corrupt_skipped: int = 0  # corrupt items this rank's data loader dropped
    samples: int = 0  # examples stepped on, all ranks together
    lscore_pool_errors: int = (
        0  # rank 0: L-Score pool failures; stored once non-zero, not restored on resume
    )
    target_correction: list = field(
        default_factory=lambda: [0.0] * 4
    )  # the closed loop's (lscore.feedback)

    RESUMED: ClassVar[tuple[str, ...]] = (
        "step",
        "epoch",
        "batch_in_epoch",
        "nan_skipped",
        "corrupt_skipped",
        "samples",
        "target_correction",
    )  # what a resume restores

    def as_dict(self) -> dict:
        """The counters as a dict (``lscore_pool_errors`` only once non-zero)."""
        d = {k: getattr(self, k) for k in self.RESUMED}
        if self.lscore_pool_errors:
            d["lscore_pool_errors"] = self.lscore_pool_errors
        return d

    def to_client_state(self, cfg: Config, world: int) -> dict:
        """What a checkpoint stores beside the tensors: the counters, this rank's RNG states, the number of ranks
        and the resolved config."""
        return {**self.as_dict(), "rng": rng_state(), "world": world, "config": to_dict(cfg)}

    @classmethod
    def from_client_state(cls, client: dict) -> TrainState:
        """The counters of a loaded checkpoint's client state (any missing one: 0)."""
        return cls(**{k: client[k] for k in cls.RESUMED if k in client})


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


@dataclass
class LogWindow:
    """What a train record averages over: the steps since the previous log line (or the epoch's start)."""

    t0: float = field(default_factory=time.perf_counter)
    samples: int = 0  # all ranks
    wait: float = 0.0  # seconds waiting for the data loader
    parts: PartsWindow = field(
        default_factory=PartsWindow
    )  # loss parts, on the device until the log line


def load_prior(cfg: Config, front, dist: Dist) -> dict | None:
    """Generation's prior statistics (corpus_prior) for ``fill: prior`` and for flow models (their normalisation,
    weaktok/flow.py), else None."""
    inpaint_prior = cfg.train.corruption.fill == "prior" and cfg.train.corruption.mask_prob
    if cfg.model.objective != "flow" and not inpaint_prior:
        return None
    return corpus_prior(cfg, front, dist)


def corpus_prior(cfg: Config, front, dist: Dist) -> dict:
    """Generation's prior statistics (weaktok/prior.py) from rank 0's share of the training split, computed on the
    CPU and broadcast; on every rank's device."""
    stats = (
        corpus_spectrum(cfg.data.shards, front.cpu(), cfg.audio.clip_seconds)
        if dist.is_main
        else None
    )
    front.to(dist.device)
    stats = broadcast_object(stats, dist)
    return {k: v.to(dist.device) for k, v in stats.items()}


class Trainer:
    """One training run of ``cfg`` writing to ``out``; ``hooks`` as for ``train``. Also a context manager
    (``close`` on exit) for callers that run the stages themselves."""

    def __init__(self, cfg: Config, out: str | Path, hooks: list | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.hooks = HookList(hooks or [])  # a copy: the caller's list stays as it was
        self.state = TrainState()
        self._cleanup = (
            contextlib.ExitStack()
        )  # whatever setup starts is stopped by close(), however the run ends
        # built by setup()
        self.dist: Dist | None = None
        self.manifest: dict = {}
        self.plan: list = []
        self.front = self.lscore_fn = self.model = self.engine = self.optimizer = self.scheduler = (
            None
        )
        self.target: dict = {}
        self.prior: dict | None = None  # training's prior statistics (fill: prior)
        self.val_prior: dict | None = (
            None  # validation's, when training has none (validation_prior)
        )
        self.log: MetricsLog | None = None
        self.pool = None
        self.gen: torch.Generator | None = None
        self.batches_per_epoch = self.steps_per_epoch = 0
        self.window = LogWindow()

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the L-Score pool, close metrics.jsonl, stop the metrics exporter (what setup started)."""
        self._cleanup.close()

    @property
    def done(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.state.step >= self.cfg.train.max_steps

    # ------------------------------------------------------------------------------------------------------
    # Stages

    def fit(self) -> dict:
        """Set up, train every epoch (validation and checkpoint at each end), export; the last validation record."""
        with self:
            self.setup()
            last_val: dict = {}
            while self.state.epoch < self.cfg.train.epochs and not self.done:
                last_val = self.train_epoch()
            if self.dist.is_main:
                poll_pool(self.pool, self.state, self.log, self.hooks)
            self.export()
        return last_val

    def setup(self) -> None:
        """Everything before the first step. Clear errors (shards, config, a checkpoint the config cannot load)
        before any compute; then the model, the engine, resume (or ``train.init_from``), the metrics log and
        the pool."""
        cfg, out = self.cfg, self.out
        self.manifest = manifest = load_manifest(cfg.data.shards)  # clear errors before any compute
        shard_paths(cfg.data.shards, "train", manifest, verify=cfg.data.verify_shards)
        if cfg.data.verify_shards and (manifest["splits"].get("val") or {}).get("shards"):
            shard_paths(
                cfg.data.shards, "val", manifest, verify=True
            )  # validation reads it every epoch
        if manifest["sample_rate"] != cfg.audio.sample_rate:
            raise ConfigError(
                f"config key 'audio.sample_rate': {cfg.audio.sample_rate} differs from the shards' "
                f"{manifest['sample_rate']} ({cfg.data.shards}/manifest.json)"
            )
        check_precision(cfg)
        self.dist = dist = setup_distributed(cfg.train.dist_timeout_s)
        # a config its checkpoint cannot load into: refused here, folder untouched
        self.plan = resume_plan(cfg, self.ckpt_dir, dist)
        torch.manual_seed(cfg.seed + dist.rank)
        np.random.seed(cfg.seed + dist.rank)
        random.seed(cfg.seed + dist.rank)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / "config.yaml")
        if (
            cfg.metrics.enabled
        ):  # before heavy compute: a metrics port in use fails here (weaktok/metrics.py)
            # imported here: weaktok.train.prometheus subclasses TrainHooks from this package, and a top-level import
            # would make `import weaktok.train.prometheus` (before weaktok.train) a circular import
            from weaktok.train.prometheus import MetricsExporter

            exporter = MetricsExporter(
                cfg, out, dist.rank, dist.local_rank, dist.world, manifest["lscore_target"]
            )
            self._cleanup.callback(exporter.close)
            self.hooks.append(exporter)

        self.front = SpecFrontEnd(
            cfg.audio.sample_rate,
            cfg.audio.n_fft,
            cfg.audio.hop_length,
            cfg.lscore.griffin_lim_iters,
        ).to(dist.device)
        self.lscore_fn = DifferentiableLScore(
            cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length, mode=cfg.lscore.mode
        ).to(dist.device)
        self.prior = load_prior(cfg, self.front, dist)
        self.model = build_model(cfg.model, self.front.n_freqs)
        if (
            cfg.model.objective == "flow" and not cfg.train.init_from
        ):  # a resumed run loads its own buffers
            set_normaliser(self.model, self.prior)
        if (
            cfg.train.init_from and not self.plan
        ):  # precedence: the run's own checkpoint (resume) > train.init_from
            load_init_weights(self.model, cfg, dist)
        self.batches_per_epoch = -(-cfg.data.samples_per_epoch // cfg.data.batch_size)
        self.steps_per_epoch = max(1, self.batches_per_epoch // cfg.train.grad_accum)
        total_steps = cfg.train.max_steps or self.steps_per_epoch * cfg.train.epochs
        self.engine, self.optimizer, self.scheduler = build_engine(cfg, self.model, total_steps)

        self.state = TrainState()
        self._resume()
        self.log = MetricsLog(out / "metrics.jsonl", dist.is_main)
        self._cleanup.callback(self.log.close)
        self.pool = start_pool(cfg, dist)
        if self.pool is not None:
            self._cleanup.callback(self.pool.close)
        # the loss's target and validation's (lscore_glue.lscore_targets); the closed loop's correction of the first
        self.base_target, self.val_target = lscore_targets(
            cfg, manifest, self.front, self.lscore_fn, dist, self.pool
        )
        self._apply_correction()
        self.gen = torch.Generator(device=dist.device).manual_seed(
            cfg.seed * 1000 + dist.rank + 7919 * self.state.step
        )
        if dist.is_main:
            print(
                f"[weaktok] {count_params(self.model) / 1e6:.2f} M params, world {dist.world}, ZeRO "
                f"{cfg.train.zero_stage}, {'bf16' if use_bf16(cfg) else 'fp32'}, {self.steps_per_epoch} "
                f"steps/epoch, device {dist.device}",
                flush=True,
            )

    def _resume(self) -> None:
        """Load the newest loadable checkpoint of the plan (resume.load_resume): counters, RNG (same number of
        ranks only), the optimizer settings of the current config; then say so, and what changed."""
        loaded = load_resume(self.cfg, self.engine, self.plan, self.ckpt_dir, self.dist)
        if loaded is None:
            return
        cand, client = loaded
        self.state = TrainState.from_client_state(client)
        if "rng" in client and self.dist.world == client.get("world", self.dist.world):
            set_rng_state(client["rng"])
        apply_optimizer_settings(self.cfg, self.scheduler)
        if self.dist.is_main:
            print(
                f"[weaktok] resumed from {cand.folder}: step {self.state.step}, epoch {self.state.epoch}, "
                f"batch {self.state.batch_in_epoch} of the epoch",
                flush=True,
            )
            log_config_changes(self.cfg, cand, client.get("config"))

    def train_epoch(self) -> dict:
        """The rest of the current epoch (a resumed one: the batches it still owes), then validation and the
        epoch's checkpoint; rank 0's validation record, on every rank."""
        cfg, dist, state = self.cfg, self.dist, self.state
        remaining = self.batches_per_epoch - state.batch_in_epoch
        # a resumed epoch reads a fresh stream (seeded by the step) for the batches it still owes
        loader = train_loader(
            cfg.data.shards,
            cfg.data.batch_size,
            cfg.audio.clip_seconds,
            remaining * cfg.data.batch_size,
            cfg.data.num_workers,
            cfg.data.shuffle_buffer,
            seed=cfg.seed + 1009 * dist.rank + state.step,
            epoch=state.epoch,
            verify=False,
        )
        self.engine.train()
        with contextlib.ExitStack() as stack:
            keys_log = None
            if cfg.data.log_keys:
                (self.out / "samples").mkdir(parents=True, exist_ok=True)
                keys_log = stack.enter_context(
                    open(self.out / "samples" / f"rank{dist.rank}.txt", "a")
                )
            self.window = LogWindow()
            it = iter(loader)
            while state.batch_in_epoch < self.batches_per_epoch and not self.done:
                t0 = time.perf_counter()
                try:
                    batch = next(it)
                except StopIteration:
                    break
                self.window.wait += time.perf_counter() - t0
                self.hooks.on_batch(batch, state.as_dict())
                if keys_log is not None:
                    keys_log.write("".join(f"{state.epoch}\t{k}\n" for k in batch["keys"]))
                self.train_step(batch)
        if state.batch_in_epoch >= self.batches_per_epoch:
            state.epoch += 1
            state.batch_in_epoch = 0
        val = self.validate()
        path = self.checkpoint()
        val = broadcast_object(
            val, dist
        )  # every rank gets rank 0's record (with the exact L-Score)
        self.hooks.on_epoch_end(val, path)
        return val

    def train_step(self, batch: dict) -> None:
        """One micro-batch: corrupt, forward, loss; skipped on every rank if the loss is non-finite on any, else
        backward and (DeepSpeed) step. At each optimizer step: pool, train record, mid-epoch checkpoint."""
        cfg, dist, state, engine = self.cfg, self.dist, self.state, self.engine
        progress = state.epoch + state.batch_in_epoch / self.batches_per_epoch
        w = weights_at(progress, cfg.curriculum)
        audio = batch["audio"].to(dist.device, non_blocking=True)
        state.corrupt_skipped += batch["skipped"]
        with torch.no_grad():
            spec = self.front(audio)  # (B, F, T) fp32
            if cfg.model.objective == "flow":
                fb = flow_batch(engine.module, spec, cfg.model.flow, self.gen)
            else:
                inp = corrupt(spec, cfg, self.gen, self.prior)
        if cfg.model.objective == "flow":
            losses, out = compute_flow_loss(
                engine, self.front, self.lscore_fn, spec, fb, w, self.target, cfg
            )
        else:
            losses, out = compute_loss(
                engine, self.front, self.lscore_fn, spec, inp, w, self.target, cfg
            )
        finite = all_finite(losses.total, dist)
        state.batch_in_epoch += 1
        if not finite:  # every rank skips together, so collectives stay matched
            state.nan_skipped += 1
            if dist.is_main:
                print(
                    f"[weaktok] non-finite loss at step {state.step}: step skipped "
                    f"({state.nan_skipped} so far)",
                    flush=True,
                )
            return
        engine.backward(losses.total)
        engine.step()
        self.window.parts.add(losses.parts)
        state.samples += audio.shape[0] * dist.world
        self.window.samples += audio.shape[0] * dist.world
        if state.batch_in_epoch % cfg.train.grad_accum == 0:
            state.step += 1
            step = state.step
            if (
                dist.is_main
                and self.pool is not None
                and cfg.lscore.pool_every
                and step % cfg.lscore.pool_every == 0
            ):
                outputs = (
                    clean_estimate(engine.module, out.recon.detach(), fb, cfg.model.flow)
                    if cfg.model.objective == "flow"
                    else out.recon.detach().float()
                )
                submit_outputs(self.pool, self.front, outputs[: cfg.lscore.pool_items], cfg, step)
            if dist.is_main:
                poll_pool(self.pool, state, self.log, self.hooks)
            if step % cfg.train.log_every == 0:
                self._log_train(progress, w)
            if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
                self.checkpoint()

    def _log_train(self, progress: float, w) -> None:
        """The train record of the window (every rank reads its loss parts; rank 0 writes), then a new window."""
        cfg, state, win = self.cfg, self.state, self.window
        now = time.perf_counter()
        elapsed = now - win.t0
        record = {
            "kind": "train",
            "step": state.step,
            "epoch": state.epoch,
            "progress": round(progress, 4),
            **win.parts.read(),
            "w_L": w.w_L,
            "w_recon": w.w_recon,
            "w_ratio": w.w_ratio,
            "phase": w.phase,
            "tau": cfg.model.chunking.tau,
            "lr": self.engine.get_lr()[0],
            "samples_per_s": win.samples / max(elapsed, 1e-9),
            "audio_s_per_s": win.samples * cfg.audio.clip_seconds / max(elapsed, 1e-9),
            "step_time_s": elapsed / cfg.train.log_every,
            "data_wait_s": win.wait,
            "data_wait_share": win.wait / max(elapsed, 1e-9),
            "nan_skipped": state.nan_skipped,
            "corrupt_skipped": state.corrupt_skipped,
        }
        if self.pool is not None:  # every record, so a stalled pool still shows its backlog
            record["pool_queue_depth"] = self.pool.queue_depth
            record["lscore_pool_errors"] = state.lscore_pool_errors
        if self.dist.is_main:
            self.log.write(record)
            self.hooks.on_log(record)
        self.window = LogWindow(t0=now)

    def validate(self) -> dict:
        """Validation (validation.validate: reconstruction, and the exact L-Score of generations); rank 0 logs it,
        tells the hooks and prints the epoch line."""
        val = validate(
            self.cfg,
            self.dist,
            self.engine,
            self.front,
            self.val_target,
            self.state,
            self.pool,
            self.validation_prior(),
        )
        if (
            self.cfg.lscore.feedback
        ):  # the closed loop: rank 0's exact scores move every rank's surrogate target
            corr = (
                feedback_step(
                    self.state.target_correction,
                    val,
                    self.val_target,
                    self.base_target,
                    self.cfg.lscore.feedback,
                )
                if self.dist.is_main
                else None
            )
            self.state.target_correction = broadcast_object(corr, self.dist)
            self._apply_correction()
            val["lscore_target_correction"] = self.state.target_correction
            val["lscore_loss_target"] = self.target["mean"].tolist()
        if self.dist.is_main:
            self.log.write(val)
            self.hooks.on_validation(val)
            dist = val.get("val_gen_std_dist_total")
            flow_loss = f"val flow loss {val['val_flow']:.4f}, " if "val_flow" in val else ""
            print(
                f"[weaktok] epoch {val['epoch']} step {val['step']}: {flow_loss}val recon {val['val_recon']:.4f}, "
                f"boundary rate {val['val_boundary_rate']:.3f}, generated L-Score distance "
                f"{'n/a' if dist is None else f'{dist:.3f}'}",
                flush=True,
            )
        return val

    def _apply_correction(self) -> None:
        """The loss's target: the base target plus the closed loop's correction (lscore.feedback; zeros when off)."""
        corr = torch.tensor(
            self.state.target_correction, device=self.dist.device, dtype=torch.float32
        )
        self.target = {"mean": self.base_target["mean"] + corr, "std": self.base_target["std"]}

    def validation_prior(self) -> dict | None:
        """The prior statistics validation generates from; None when it generates nothing (``lscore.val_items:
        0``). Training's own (``fill: prior``), else computed once, at the first validation (rank 0's share,
        broadcast: every rank calls this), and kept."""
        if not self.cfg.lscore.val_items:
            return None
        if self.prior is not None:
            return self.prior
        if self.val_prior is None:
            self.val_prior = corpus_prior(self.cfg, self.front, self.dist)
        return self.val_prior

    def checkpoint(self) -> Path:
        """A checkpoint of the current step (checkpoint.save_checkpoint); rank 0 tells the hooks. Its folder."""
        client = self.state.to_client_state(self.cfg, self.dist.world)
        tag = save_checkpoint(
            self.engine, self.ckpt_dir, client, self.cfg.train.keep_checkpoints, self.dist
        )
        if self.dist.is_main:
            self.hooks.on_checkpoint(self.ckpt_dir / tag, self.state.as_dict())
        return self.ckpt_dir / tag

    def export(self) -> Path | None:
        """final/model.pt (export.export_weights) and, with ``fill: prior``, final/spectrum.pt; the weights' path
        on rank 0."""
        path = export_weights(self.engine, self.cfg, self.out, self.dist)
        if (
            self.prior is not None and self.dist.is_main
        ):  # generation reuses it (generate.cached_spectrum)
            torch.save(
                {k: v.cpu() for k, v in self.prior.items()}, self.out / "final" / "spectrum.pt"
            )
        return path


def train(cfg: Config, out: str | Path, hooks: list | None = None) -> dict:
    """Train with ``cfg`` writing to ``out``; returns the last validation record.

    ``hooks``: objects with any of ``on_batch(batch, state)`` and ``on_epoch_end(val_record, checkpoint_path)``
    (every rank; the Ray Train and Tune launchers report there), and, on rank 0 only, ``on_log(record)``,
    ``on_validation(record)``, ``on_checkpoint(path, state)`` (the metrics exporter listens there)."""
    return Trainer(cfg, out, hooks).fit()
