"""The training loop as a Trainer whose methods are its stages (see the package docstring for what a run writes,
its faults and config changes between runs):

    Trainer(cfg, out, hooks).fit()   ==   train(cfg, out, hooks)

``fit`` runs ``setup`` (checks, distributed, resume plan, model and engine, resume or init_from, metrics log,
pool), then ``train_epoch`` until the epochs or ``train.max_steps`` are done (each: ``train_step`` per micro-batch,
``validate``, ``checkpoint``), then ``export``; ``close`` stops what setup started, however fit ends. What the
stages are built from is in build.py, the counters in state.py, what they log in records.py.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch

from weaktok.config import Config, save_config
from weaktok.data.loader import train_loader
from weaktok.model.flow import clean_estimate, flow_batch
from weaktok.model.unet import count_params
from weaktok.train.build import (
    build_front,
    build_lscore,
    build_run_model,
    check_data,
    corpus_prior,
    epoch_size,
    load_prior,
    seed_everything,
    start_exporter,
)
from weaktok.train.checkpoint import CONFIG_FILE, save_checkpoint, set_rng_state
from weaktok.train.curriculum import weights_at
from weaktok.train.distributed import Dist, broadcast_object, setup_distributed
from weaktok.train.engine import build_engine, check_precision, use_bf16
from weaktok.train.export import export_weights, write_model_folder
from weaktok.train.flops import StepFlops
from weaktok.train.hooks import HookList, TrainHooks
from weaktok.train.lscore_glue import (
    feedback_step,
    lscore_targets,
    poll_pool,
    start_pool,
    submit_outputs,
)
from weaktok.train.records import METRICS_FILE, LogWindow, MetricsLog, epoch_line, train_record
from weaktok.train.resume import (
    apply_optimizer_settings,
    load_resume,
    log_config_changes,
    resume_plan,
)
from weaktok.train.state import TrainState
from weaktok.train.step import all_finite, compute_flow_loss, compute_loss, corrupt
from weaktok.train.tracking import check_tracking, start_reporting
from weaktok.train.validation import validate

log = logging.getLogger(__name__)


class Trainer:
    """One training run of ``cfg`` writing to ``out``; ``hooks`` as for ``train``. Also a context manager
    (``close`` on exit) for callers that run the stages themselves."""

    def __init__(self, cfg: Config, out: str | Path, hooks: list[TrainHooks] | None = None):
        self.cfg, self.out = cfg, Path(out)
        self.ckpt_dir = self.out / "checkpoints"
        self.hooks = HookList(hooks or [])  # a copy: the caller's list stays as it was
        self.state = TrainState()
        # whatever setup starts is stopped by close(), however the run ends
        self._cleanup = contextlib.ExitStack()
        # built by setup()
        self.dist: Dist | None = None
        self.manifest: dict = {}
        self.plan: list = []
        self.front = self.lscore_fn = self.model = None
        self.engine = self.optimizer = self.scheduler = None
        self.target: dict = {}
        self.prior: dict | None = None  # training's prior statistics (fill: prior)
        # validation's prior statistics, when training has none (validation_prior)
        self.val_prior: dict | None = None
        self.log: MetricsLog | None = None
        self.pool = None
        self.gen: torch.Generator | None = None
        self.batches_per_epoch = self.steps_per_epoch = 0
        self.window = LogWindow()
        self.flops: StepFlops | None = None

    def __enter__(self) -> Trainer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the L-Score pool, close metrics.jsonl and the trackers, stop the metrics exporter (what setup
        started)."""
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
        before any compute; then the model, the engine, resume (or ``train.init_from``), the metrics log, the
        trackers and the pool."""
        cfg, out = self.cfg, self.out
        self.manifest = check_data(cfg)
        check_precision(cfg)
        check_tracking(cfg)
        self.dist = dist = setup_distributed(cfg.train.dist_timeout_s)
        # a config its checkpoint cannot load into: refused here, folder untouched
        self.plan = resume_plan(cfg, self.ckpt_dir, dist)
        seed_everything(cfg.seed + dist.rank)
        if dist.is_main:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out / CONFIG_FILE)
        exporter = start_exporter(cfg, out, dist, self.manifest["lscore_target"])
        if exporter is not None:
            self._cleanup.callback(exporter.close)
            self.hooks.append(exporter)

        self.front = build_front(cfg, dist.device)
        self.lscore_fn = build_lscore(cfg, dist.device)
        self.prior = load_prior(cfg, self.front, dist)
        self.model = build_run_model(cfg, self.front.n_freqs, self.prior, bool(self.plan), dist)
        # MFU's FLOPs per step (flops.py): rank 0 counts once, before DeepSpeed wraps the model
        self.flops = StepFlops.count(
            cfg, self.model, self.front, self.lscore_fn, self.manifest, dist
        )
        self.batches_per_epoch, self.steps_per_epoch, total_steps = epoch_size(cfg)
        self.engine, self.optimizer, self.scheduler = build_engine(cfg, self.model, total_steps)

        self.state = TrainState()
        self._resume()
        self.log = MetricsLog(out / METRICS_FILE, dist.is_main)
        self._cleanup.callback(self.log.close)
        for hook in start_reporting(cfg, out, dist.is_main, self.state.step, total_steps):
            self._cleanup.callback(hook.close)  # the console line and the trackers (rank 0)
            self.hooks.append(hook)
        self.pool = start_pool(cfg, dist)
        if self.pool is not None:
            self._cleanup.callback(self.pool.close)
        # the loss's target and validation's (lscore_glue.lscore_targets); the closed loop's correction of the first
        self.base_target, self.val_target = lscore_targets(
            cfg, self.manifest, self.front, self.lscore_fn, dist, self.pool
        )
        self._apply_correction()
        self.gen = torch.Generator(device=dist.device).manual_seed(
            cfg.seed * 1000 + dist.rank + 7919 * self.state.step
        )
        if dist.is_main:
            log.info(
                f"{count_params(self.model) / 1e6:.2f} M params, world {dist.world}, ZeRO "
                f"{cfg.train.zero_stage}, {'bf16' if use_bf16(cfg) else 'fp32'}, {self.steps_per_epoch} "
                f"steps/epoch, device {dist.device}"
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
            log.info(
                f"resumed from {cand.folder}: step {self.state.step}, epoch {self.state.epoch}, "
                f"batch {self.state.batch_in_epoch} of the epoch"
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
        # every rank gets rank 0's record (with the exact L-Score)
        val = broadcast_object(val, dist)
        self.hooks.on_epoch_end(val, path)
        return val

    def train_step(self, batch: dict) -> None:
        """One micro-batch: corrupt, forward, loss; skipped on every rank if the loss is non-finite on any, else
        backward and (DeepSpeed) step. At each optimizer step: pool, train record, mid-epoch checkpoint."""
        cfg, dist, state, engine = self.cfg, self.dist, self.state, self.engine
        flow = cfg.model.objective == "flow"
        progress = state.epoch + state.batch_in_epoch / self.batches_per_epoch
        w = weights_at(progress, cfg.curriculum)
        audio = batch["audio"].to(dist.device, non_blocking=True)
        state.corrupt_skipped += batch["skipped"]
        with torch.no_grad():
            spec = self.front(audio)  # (B, F, T) fp32
            if flow:
                fb = flow_batch(engine.module, spec, cfg.model.flow, self.gen)
            else:
                inp = corrupt(spec, cfg, self.gen, self.prior)
        if flow:
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
                log.info(
                    f"non-finite loss at step {state.step}: step skipped ({state.nan_skipped} so far)"
                )
            return
        engine.backward(losses.total)
        engine.step()
        self.window.parts.add(losses.parts)
        state.samples += audio.shape[0] * dist.world
        self.window.samples += audio.shape[0] * dist.world
        if state.batch_in_epoch % cfg.train.grad_accum != 0:
            return
        state.step += 1
        step = state.step
        pool_due = (
            self.pool is not None and cfg.lscore.pool_every and step % cfg.lscore.pool_every == 0
        )
        if dist.is_main and pool_due:
            recon = out.recon.detach()
            outputs = (
                clean_estimate(engine.module, recon, fb, cfg.model.flow) if flow else recon.float()
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
        now = time.perf_counter()
        lr = self.engine.get_lr()[0]
        record = train_record(self.cfg, self.state, self.window, progress, w, lr, now)
        if self.pool is not None:  # every record, so a stalled pool still shows its backlog
            record["pool_queue_depth"] = self.pool.queue_depth
            record["lscore_pool_errors"] = self.state.lscore_pool_errors
        if self.flops is not None:
            record.update(self.flops.fields(record["step_time_s"]))
        if self.dist.is_main:
            self.log.write(record)
            self.hooks.on_log(record)
        self.window = LogWindow(t0=now)

    def validate(self) -> dict:
        """Validation (validation.validate: reconstruction, and the exact L-Score of generations); rank 0 logs it,
        tells the hooks (the record, then a few generated clips) and logs the epoch line."""
        cfg, dist, state = self.cfg, self.dist, self.state
        clips: list = []  # rank 0's first generations (validation.ValClip), for the trackers
        prior = self.validation_prior()
        val = validate(
            cfg, dist, self.engine, self.front, self.val_target, state, self.pool, prior, clips
        )
        # the closed loop: rank 0's exact scores move every rank's surrogate target
        if cfg.lscore.feedback:
            corr = None
            if dist.is_main:
                progress = state.epoch + state.batch_in_epoch / self.batches_per_epoch
                corr = feedback_step(
                    state.target_correction,
                    val,
                    self.val_target,
                    self.base_target,
                    cfg.lscore.feedback,
                    clamp=cfg.lscore.feedback_clamp,
                    active=weights_at(progress, cfg.curriculum).w_L > 0,
                )
            state.target_correction = broadcast_object(corr, dist)
            self._apply_correction()
            val["lscore_target_correction"] = state.target_correction
            val["lscore_loss_target"] = self.target["mean"].tolist()
        if dist.is_main:
            self.log.write(val)
            self.hooks.on_validation(val)
            self.hooks.on_val_clips(val["step"], clips)
            log.info(epoch_line(val))
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
        """final/model.pt (export.export_weights), with ``fill: prior`` final/spectrum.pt, and final/ as a model
        folder (export.write_model_folder); the weights' path on rank 0."""
        path = export_weights(self.engine, self.cfg, self.out, self.dist)
        if path is not None:  # rank 0
            write_model_folder(self.out, self.prior)
        return path


def train(cfg: Config, out: str | Path, hooks: list[TrainHooks] | None = None) -> dict:
    """Train with ``cfg`` writing to ``out``; returns the last validation record.

    ``hooks``: TrainHooks (weaktok/train/hooks.py): ``on_batch(batch, state)`` and ``on_epoch_end(val_record,
    checkpoint_path)`` on every rank (the Ray Train and Tune launchers report there), and, on rank 0 only,
    ``on_log(record)``, ``on_validation(record)``, ``on_checkpoint(path, state)`` (the metrics exporter listens
    there)."""
    return Trainer(cfg, out, hooks).fit()
