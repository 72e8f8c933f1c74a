"""``MetricsExporter``: the train hook that turns the loop's records into the run's metrics (metrics.py) and serves
them (serve.py). Counters are fed from cumulative record fields by their growth, so a resumed run's totals are a
base, not an increment."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from weaktok.config import Config
from weaktok.generate.sampler import MODES
from weaktok.lscore.exact import LSCORE_NAMES
from weaktok.train.hooks import TrainHooks
from weaktok.train.prometheus.metrics import LOSS_TERMS, POOL_LATENCY, RunMetrics
from weaktok.train.prometheus.serve import serve


class MetricsExporter(TrainHooks):
    """A train hook that keeps the run's Prometheus metrics and serves them (see the package docstring)."""

    def __init__(
        self,
        cfg: Config,
        out: str | Path,
        rank: int = 0,
        local_rank: int = 0,
        world: int = 1,
        target: dict | None = None,
        device: torch.device | None = None,
    ):
        self.cfg, self.out = cfg.metrics, Path(out)
        self.rank, self.local_rank = rank, local_rank
        labels = {"run": self.cfg.run_name or self.out.resolve().name, "rank": str(rank)}
        self.m = RunMetrics(labels)
        self.registry = self.m.registry
        self.server = self.thread = None
        self.url: str | None = None
        # last cumulative value seen per record field (counters get deltas)
        self._last: dict[str, float] = {}
        self.m.lab(self.m.info).info(
            {
                "config": cfg.name,
                "world": str(world),
                "per_rank": str(self.cfg.per_rank),
                "zero_stage": str(cfg.train.zero_stage),
            }
        )
        if device is not None and device.type == "cuda":
            self.m.define_gpu_memory(device)
        if target:
            self.m.set_terms(self.m.lscore_target, target["mean"])
        if self.cfg.enabled and (rank == 0 or self.cfg.per_rank):
            self.server, self.thread, self.url = serve(
                self.registry, self.cfg, rank, local_rank, self.out
            )

    def close(self) -> None:
        """Stop the HTTP server (idempotent); the metrics stay readable from ``registry``."""
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join(timeout=5)
            self.server = self.thread = None

    # ------------------------------------------------------------------------------------------------------
    # train hooks

    def on_batch(self, batch: dict, state: dict) -> None:
        """Every rank, each micro-batch: per-rank counters; the step counter follows ``state['step']``."""
        m = self.m
        for key in ("step", "nan_skipped", "corrupt_skipped"):
            # first call: a resumed run's totals are the base
            self._last.setdefault(key, state.get(key, 0))
        m.lab(m.rank_batches).inc()
        m.lab(m.rank_samples).inc(len(batch["audio"]))
        m.lab(m.rank_corrupt).inc(batch.get("skipped", 0))
        m.lab(m.rank_last_batch_ts).set_to_current_time()
        self._advance(state["step"])

    def on_log(self, record: dict) -> None:
        """Rank 0: a train record (every ``train.log_every`` steps) or an exact L-Score result from the pool."""
        if record.get("kind") == "lscore_exact":
            self._on_exact(record)
        elif record.get("kind", "train") == "train":
            self._on_train(record)

    def on_validation(self, record: dict) -> None:
        """Rank 0, each epoch end: validation metrics (the generations' exact L-Score only when the pool scored)."""
        m = self.m
        m.lab(m.validations).inc()
        for key, gauge in m.val.items():
            if key in record:
                m.lab(gauge).set(record[key])
        for what, metric in m.val_terms.items():
            for mode in MODES:
                if f"val_gen_{mode}_{what}" in record:
                    m.set_terms(metric, record[f"val_gen_{mode}_{what}"], mode=mode)
        if "val_gen_target" in record:
            m.set_terms(m.lscore_target, record["val_gen_target"])

    def on_checkpoint(self, path: Path, state: dict) -> None:
        """Rank 0, each complete checkpoint."""
        m = self.m
        m.last_checkpoint = time.time()
        m.lab(m.checkpoints).inc()
        m.lab(m.last_checkpoint_ts).set(m.last_checkpoint)

    def on_epoch_end(self, val_record: dict, checkpoint_path: Path) -> None:
        """Every rank, after the epoch's checkpoint."""
        self.m.lab(self.m.rank_epochs).inc()

    # ------------------------------------------------------------------------------------------------------
    # record handling

    def _on_train(self, record: dict) -> None:
        m = self.m
        self._advance(record["step"])
        for key, gauge in m.train.items():
            if key in record:
                m.lab(gauge).set(record[key])
        for key, term in LOSS_TERMS.items():
            if key in record:
                m.lab(m.loss, term=term).set(record[key])
        if "step_time_s" in record:
            m.lab(m.step_time).observe(record["step_time_s"])
        m.lab(m.data_wait).inc(max(0.0, record.get("data_wait_s", 0.0)))
        self._inc_to(m.nan_skipped, "nan_skipped", record.get("nan_skipped"))
        self._inc_to(m.corrupt_skipped, "corrupt_skipped", record.get("corrupt_skipped"))
        batch = [record.get(f"lscore_batch_{i}") for i in range(len(LSCORE_NAMES))]
        if None not in batch:
            m.set_terms(m.lscore_batch, batch)
        # in every train record, so a stalled pool still shows its backlog
        if "pool_queue_depth" in record:
            m.lab(m.pool["queue_depth"]).set(record["pool_queue_depth"])

    def _on_exact(self, record: dict) -> None:
        m = self.m
        m.set_terms(m.lscore_exact, record["lscore_exact"])
        if "from_step" in record:
            m.lab(m.lscore_exact_lag).set(record["step"] - record["from_step"])
        stats = record.get("pool", {})
        for key, gauge in m.pool.items():
            if key in stats:
                m.lab(gauge).set(stats[key])
        for kind, key in POOL_LATENCY.items():
            if key in stats:
                m.lab(m.pool_latency, kind=kind).set(stats[key])
        for key, counter in m.pool_counters.items():
            self._inc_to(counter, f"pool.{key}", stats.get(key))

    def _advance(self, step: int) -> None:
        """Step counter, step gauge and last-step time from the global step."""
        m = self.m
        m.lab(m.train["step"]).set(step)
        if self._inc_to(m.steps, "step", step) > 0:
            m.lab(m.last_step_ts).set_to_current_time()

    def _inc_to(self, counter, key: str, total) -> float:
        """Feed a counter from a cumulative record field: increment by the growth since the last value seen."""
        if total is None:
            return 0.0
        delta = total - self._last.get(key, 0)
        self._last[key] = total
        if delta > 0:
            self.m.lab(counter).inc(delta)
        return delta
