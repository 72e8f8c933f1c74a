"""Prometheus metrics for training runs: :class:`MetricsExporter`, a train hook that serves ``/metrics`` over HTTP.

    exporter = MetricsExporter(cfg, out, rank, local_rank, world, target=manifest["lscore_target"])
    train(cfg, out, hooks=[exporter])          # train() does this itself when metrics.enabled (the default)
    exporter.close()

Every metric lives in a private ``CollectorRegistry`` (never the global one), is named ``weaktok_*`` and carries the
labels ``run`` (``metrics.run_name``, default: the run folder's name) and ``rank``.

Per-rank policy. The loop produces its numbers (losses, weights, throughput, chunking, L-Score, validation,
checkpoints) on rank 0 only, so by default only rank 0 serves, on ``metrics.host:metrics.port`` (127.0.0.1:9400).
With ``metrics.per_rank: true`` every rank serves its own registry on ``port + local_rank``; the hooks every rank
gets (``on_batch``, ``on_epoch_end``) feed the ``weaktok_rank_*`` series there (batches, samples, corrupt items
skipped, last batch time, epochs), which show a slow or hung rank. Non-serving ranks record into a registry nobody
reads (a few counter increments per batch).

Ports. A port already in use is a :class:`MetricsPortInUse` (a ``ConfigError`` naming ``metrics.port``), raised when
the exporter is created, i.e. before training compute starts: a run never goes on silently without metrics. With
``metrics.port_fallback: true`` the exporter tries the next ports (up to ``FALLBACK_TRIES``) instead.
``metrics.port: 0`` picks any free port. The URL is printed ("[weaktok] metrics at http://127.0.0.1:PORT/metrics")
and, on rank 0, written to ``<out>/metrics_url.txt`` (the URL the run served on; it stays after the run ends).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, start_http_server

from weaktok.config import Config, ConfigError
from weaktok.lscore.exact import LSCORE_NAMES
from weaktok.train.hooks import TrainHooks

FALLBACK_TRIES = 20
URL_FILE = "metrics_url.txt"
STEP_TIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# train records (kind "train"): record key -> (gauge name, help)
TRAIN_GAUGES = {
    "step": ("weaktok_step", "Global optimizer step (resumed runs continue the count)"),
    "progress": ("weaktok_epoch_progress", "Training progress in epochs (fractional)"),
    "w_L": ("weaktok_w_L", "Curriculum weight of the L-Score distribution loss"),
    "w_recon": ("weaktok_w_recon", "Curriculum weight of the reconstruction loss"),
    "w_ratio": ("weaktok_w_ratio", "Weight of the chunking ratio loss"),
    "phase": (
        "weaktok_curriculum_phase",
        "Curriculum phase: 1 reconstruction only, 2 annealing, 3 annealed",
    ),
    "tau": ("weaktok_tau", "Gumbel-Softmax temperature of the chunker"),
    "lr": ("weaktok_lr", "Learning rate"),
    "samples_per_s": ("weaktok_samples_per_second", "Training samples per second, all ranks"),
    "audio_s_per_s": (
        "weaktok_audio_seconds_per_second",
        "Seconds of training audio per second, all ranks",
    ),
    "data_wait_share": ("weaktok_data_wait_share", "Share of wall time rank 0 waited for data"),
    "chunk_boundary_rate": (
        "weaktok_chunk_boundary_rate",
        "Fraction of bottleneck frames that start a chunk",
    ),
    "chunk_mean_prob": ("weaktok_chunk_mean_boundary_prob", "Mean boundary probability"),
    "chunk_mean_chunk_len": ("weaktok_chunk_mean_length", "Mean chunk length in bottleneck frames"),
}
LOSS_TERMS = {
    "loss": "total",
    "recon": "recon",
    "flow": "flow",
    "lscore_dist": "lscore_dist",
    "ratio_loss": "ratio",
}
# validation records (kind "val"): scalar key -> (gauge name, help); per-term lists -> gauges with a `term` label
VAL_GAUGES = {
    "val_recon": ("weaktok_val_recon", "Validation reconstruction L1"),
    "val_flow": ("weaktok_val_flow_loss", "Validation flow loss (velocity MSE; flow models only)"),
    "val_boundary_rate": ("weaktok_val_boundary_rate", "Validation boundary rate"),
    "val_mean_chunk_len": (
        "weaktok_val_mean_chunk_length",
        "Validation mean chunk length (bottleneck frames)",
    ),
    "val_items": ("weaktok_val_items", "Items in the last validation"),
    "val_gen_rel_err_mean": (
        "weaktok_val_gen_rel_err_mean",
        "Mean relative error of the exact L-Score of validation generations vs target",
    ),
    "val_gen_std_dist_total": (
        "weaktok_val_gen_std_dist_total",
        (
            "Sum over terms of |exact - target| / target std of validation generations, "
            "mean over modes"
        ),
    ),
    "epoch": ("weaktok_epoch", "Completed epochs at the last validation"),
}
# validation generations (weaktok/train/validation.py): record key val_gen_<mode>_<what> (per-term list) -> gauge
# with the labels mode (uncond, seed) and term
VAL_GEN_MODES = ("uncond", "seed")
VAL_TERMS = {
    "lscore": ("weaktok_val_gen_lscore", "Exact L-Score of validation generations (mean)"),
    "rel_err": (
        "weaktok_val_gen_rel_err",
        "Relative error of validation generations' exact L-Score vs the target",
    ),
    "std_dist": (
        "weaktok_val_gen_std_dist",
        "|exact - target| / target std per term (validation generations)",
    ),
}
POOL_GAUGES = {
    "queue_depth": ("weaktok_lscore_pool_queue_depth", "Unfinished L-Score pool batches"),
    "max_in_flight": (
        "weaktok_lscore_pool_max_in_flight",
        "Pool bound on unfinished batches (then drops)",
    ),
    "num_actors": ("weaktok_lscore_pool_actors", "L-Score pool actors"),
}
POOL_LATENCY = {
    "turnaround": "turnaround_s_per_clip",
    "worker": "worker_s_per_clip",
    "worker_cpu": "worker_cpu_s_per_clip",
}
POOL_COUNTERS = {
    "submitted": ("weaktok_lscore_pool_submitted", "Batches submitted to the L-Score pool"),
    "dropped": ("weaktok_lscore_pool_dropped", "Batches dropped because the pool was full"),
    "clips_scored": ("weaktok_lscore_pool_clips_scored", "Clips scored by the pool"),
    "replaced_actors": (
        "weaktok_lscore_pool_replaced_actors",
        "Pool actors replaced after failures",
    ),
}


class MetricsPortInUse(ConfigError):
    """The metrics port (``metrics.port``) is taken: a clear, user-fixable error raised before training starts."""


class MetricsExporter(TrainHooks):
    """A train hook that keeps the run's Prometheus metrics and serves them (see the module docstring)."""

    def __init__(
        self,
        cfg: Config,
        out: str | Path,
        rank: int = 0,
        local_rank: int = 0,
        world: int = 1,
        target: dict | None = None,
    ):
        self.cfg, self.out = cfg.metrics, Path(out)
        self.rank, self.local_rank = rank, local_rank
        self.labels = {"run": self.cfg.run_name or self.out.resolve().name, "rank": str(rank)}
        self.registry = CollectorRegistry()
        self.server = self.thread = None
        self.url: str | None = None
        self._last: dict[
            str, float
        ] = {}  # last cumulative value seen per record field (counters get deltas)
        self._last_checkpoint = time.time()
        self._define()
        self._lab(self._info).info(
            {
                "config": cfg.name,
                "world": str(world),
                "per_rank": str(self.cfg.per_rank),
                "zero_stage": str(cfg.train.zero_stage),
            }
        )
        if target:
            self._set_terms(self.lscore_target, target["mean"])
        if self.cfg.enabled and (rank == 0 or self.cfg.per_rank):
            self._serve()

    # ------------------------------------------------------------------------------------------------------
    # metric definitions

    def _metric(
        self, kind, name: str, doc: str, label: str | None = None, values=LSCORE_NAMES, **kw
    ):
        """A metric labelled (run, rank[, label]) in our registry. Counters and histograms get their children now
        (their series start at 0 on the first scrape); gauges appear once they have a value, not as a fake 0."""
        m = kind(
            name, doc, ("run", "rank", *([label] if label else [])), registry=self.registry, **kw
        )
        if kind is not Gauge:
            for v in values if label else [None]:
                m.labels(**self.labels, **({label: v} if label else {}))
        return m

    def _lab(self, metric, **extra):
        """The child of ``metric`` for this run and rank (and ``extra`` labels)."""
        return metric.labels(**self.labels, **extra)

    def _define(self) -> None:
        """Create every metric (names and help texts are the exporter's public interface)."""
        m = self._metric
        self.steps = m(Counter, "weaktok_train_steps", "Optimizer steps taken by this process")
        self.last_step_ts = m(
            Gauge,
            "weaktok_last_step_timestamp_seconds",
            "Unix time of the last optimizer step (exporter start before the first)",
        )
        self._lab(self.last_step_ts).set(time.time())
        self.train = {k: m(Gauge, n, d) for k, (n, d) in TRAIN_GAUGES.items()}
        self.loss = m(
            Gauge,
            "weaktok_loss",
            "Loss terms at the last logged step (term: total, recon, lscore_dist, ratio)",
            "term",
        )
        self.step_time = m(
            Histogram,
            "weaktok_step_time_seconds",
            "Mean step time of each logging window (one observation per log record)",
            buckets=STEP_TIME_BUCKETS,
        )
        self.data_wait = m(
            Counter, "weaktok_data_wait_seconds", "Seconds rank 0 waited for training batches"
        )
        self.nan_skipped = m(
            Counter, "weaktok_nan_skipped_steps", "Steps skipped for a non-finite loss"
        )
        self.corrupt_skipped = m(
            Counter, "weaktok_corrupt_skipped", "Corrupt samples skipped by rank 0's loader"
        )
        self.lscore_batch = m(
            Gauge,
            "weaktok_lscore_batch",
            "Differentiable L-Score of the training batch (mean)",
            "term",
        )
        self._define_lscore_and_val()
        self._define_pool()
        self._define_checkpoint_and_rank()
        self._info = Info("weaktok_run", "Run facts", ("run", "rank"), registry=self.registry)

    def _define_lscore_and_val(self) -> None:
        m = self._metric
        self.lscore_exact = m(
            Gauge,
            "weaktok_lscore_exact",
            "Exact L-Score of generated outputs from the pool (batch mean)",
            "term",
        )
        self.lscore_exact_lag = m(
            Gauge,
            "weaktok_lscore_exact_lag_steps",
            "Steps between submitting outputs to the pool and receiving their L-Score",
        )
        self.lscore_target = m(
            Gauge, "weaktok_lscore_target", "Target L-Score (training-set mean)", "term"
        )
        self.val = {k: m(Gauge, n, d) for k, (n, d) in VAL_GAUGES.items()}
        self.val_terms = {
            k: Gauge(n, d, ("run", "rank", "mode", "term"), registry=self.registry)
            for k, (n, d) in VAL_TERMS.items()
        }
        self.validations = m(Counter, "weaktok_validations", "Validations run")

    def _define_pool(self) -> None:
        m = self._metric
        self.pool = {k: m(Gauge, n, d) for k, (n, d) in POOL_GAUGES.items()}
        self.pool_counters = {k: m(Counter, n, d) for k, (n, d) in POOL_COUNTERS.items()}
        self.pool_latency = m(
            Gauge,
            "weaktok_lscore_pool_seconds_per_clip",
            "Recent L-Score pool seconds per clip (kind: turnaround, worker, worker_cpu)",
            "kind",
        )

    def _define_checkpoint_and_rank(self) -> None:
        m = self._metric
        self.checkpoints = m(Counter, "weaktok_checkpoints", "Complete checkpoints written")
        self.last_checkpoint_ts = m(
            Gauge,
            "weaktok_last_checkpoint_timestamp_seconds",
            "Unix time of the last complete checkpoint",
        )
        since = m(
            Gauge,
            "weaktok_seconds_since_checkpoint",
            "Seconds since the last complete checkpoint (or since the exporter started)",
        )
        self._lab(since).set_function(lambda: time.time() - self._last_checkpoint)
        self.rank_batches = m(Counter, "weaktok_rank_batches", "Micro-batches this rank started")
        self.rank_samples = m(Counter, "weaktok_rank_samples", "Samples this rank trained on")
        self.rank_corrupt = m(
            Counter, "weaktok_rank_corrupt_skipped", "Corrupt samples this rank's loader skipped"
        )
        self.rank_last_batch_ts = m(
            Gauge,
            "weaktok_rank_last_batch_timestamp_seconds",
            "Unix time this rank last started a micro-batch",
        )
        self.rank_epochs = m(Counter, "weaktok_rank_epochs", "Epochs this rank finished")

    # ------------------------------------------------------------------------------------------------------
    # serving

    def _serve(self) -> None:
        """Start the HTTP server, print and record its URL; a taken port is a MetricsPortInUse."""
        base = self.cfg.port + self.local_rank if self.cfg.port else 0
        if base > 65535:
            raise ConfigError(
                f"config key 'metrics.port': {self.cfg.port} + local rank {self.local_rank} > 65535"
            )
        ports = (
            range(base, min(base + FALLBACK_TRIES, 65536))
            if self.cfg.port_fallback and base
            else [base]
        )
        for port in ports:
            if self._bind(port):
                break
        else:
            raise MetricsPortInUse(
                _in_use_message(self.cfg.host, list(ports), self.cfg.port_fallback)
            )
        port = self.server.server_port
        host = self.cfg.host if self.cfg.host not in ("0.0.0.0", "::") else socket.getfqdn()
        self.url = (
            f"http://{host}:{port}/metrics"
            if ":" not in host
            else f"http://[{host}]:{port}/metrics"
        )
        moved = f" (metrics.port {base} was in use)" if port != base and base else ""
        print(
            f"[weaktok] metrics at {self.url}{moved}"
            + (f" (rank {self.rank})" if self.rank else ""),
            flush=True,
        )
        if not _is_loopback(
            self.server.server_address[0]
        ):  # configured on purpose; say what it means
            print(
                f"[weaktok] note: metrics.host={self.cfg.host} serves /metrics (run names, paths, losses) without "
                "authentication to every machine that can reach this one; 127.0.0.1 keeps it local",
                flush=True,
            )
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / URL_FILE).write_text(self.url + "\n")

    def _bind(self, port: int) -> bool:
        """Try one port: True when serving, False when it is in use; other failures are config errors."""
        try:
            self.server, self.thread = start_http_server(
                port, addr=self.cfg.host, registry=self.registry
            )
        except socket.gaierror as e:
            raise ConfigError(
                f"config key 'metrics.host': cannot resolve {self.cfg.host!r} ({e})"
            ) from None
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            raise ConfigError(
                f"config key 'metrics.port': cannot serve metrics on {self.cfg.host}:{port} "
                f"({e.strerror or e})"
            ) from None
        return True

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
        for key in (
            "step",
            "nan_skipped",
            "corrupt_skipped",
        ):  # first call: a resumed run's totals are the base
            self._last.setdefault(key, state.get(key, 0))
        self._lab(self.rank_batches).inc()
        self._lab(self.rank_samples).inc(len(batch["audio"]))
        self._lab(self.rank_corrupt).inc(batch.get("skipped", 0))
        self._lab(self.rank_last_batch_ts).set_to_current_time()
        self._advance(state["step"])

    def on_log(self, record: dict) -> None:
        """Rank 0: a train record (every ``train.log_every`` steps) or an exact L-Score result from the pool."""
        if record.get("kind") == "lscore_exact":
            self._on_exact(record)
        elif record.get("kind", "train") == "train":
            self._on_train(record)

    def on_validation(self, record: dict) -> None:
        """Rank 0, each epoch end: validation metrics (the generations' exact L-Score only when the pool scored)."""
        self._lab(self.validations).inc()
        for key, gauge in self.val.items():
            if key in record:
                self._lab(gauge).set(record[key])
        for what, metric in self.val_terms.items():
            for mode in VAL_GEN_MODES:
                if f"val_gen_{mode}_{what}" in record:
                    self._set_terms(metric, record[f"val_gen_{mode}_{what}"], mode=mode)
        if "val_gen_target" in record:
            self._set_terms(self.lscore_target, record["val_gen_target"])

    def on_checkpoint(self, path, state: dict) -> None:
        """Rank 0, each complete checkpoint."""
        self._last_checkpoint = time.time()
        self._lab(self.checkpoints).inc()
        self._lab(self.last_checkpoint_ts).set(self._last_checkpoint)

    def on_epoch_end(self, val_record: dict, checkpoint_path) -> None:
        """Every rank, after the epoch's checkpoint."""
        self._lab(self.rank_epochs).inc()

    # ------------------------------------------------------------------------------------------------------
    # record handling

    def _on_train(self, record: dict) -> None:
        self._advance(record["step"])
        for key, gauge in self.train.items():
            if key in record:
                self._lab(gauge).set(record[key])
        for key, term in LOSS_TERMS.items():
            if key in record:
                self._lab(self.loss, term=term).set(record[key])
        if "step_time_s" in record:
            self._lab(self.step_time).observe(record["step_time_s"])
        self._lab(self.data_wait).inc(max(0.0, record.get("data_wait_s", 0.0)))
        self._inc_to(self.nan_skipped, "nan_skipped", record.get("nan_skipped"))
        self._inc_to(self.corrupt_skipped, "corrupt_skipped", record.get("corrupt_skipped"))
        batch = [record.get(f"lscore_batch_{i}") for i in range(len(LSCORE_NAMES))]
        if None not in batch:
            self._set_terms(self.lscore_batch, batch)
        if (
            "pool_queue_depth" in record
        ):  # in every train record, so a stalled pool still shows its backlog
            self._lab(self.pool["queue_depth"]).set(record["pool_queue_depth"])

    def _on_exact(self, record: dict) -> None:
        self._set_terms(self.lscore_exact, record["lscore_exact"])
        if "from_step" in record:
            self._lab(self.lscore_exact_lag).set(record["step"] - record["from_step"])
        stats = record.get("pool", {})
        for key, gauge in self.pool.items():
            if key in stats:
                self._lab(gauge).set(stats[key])
        for kind, key in POOL_LATENCY.items():
            if key in stats:
                self._lab(self.pool_latency, kind=kind).set(stats[key])
        for key, counter in self.pool_counters.items():
            self._inc_to(counter, f"pool.{key}", stats.get(key))

    def _advance(self, step: int) -> None:
        """Step counter, step gauge and last-step time from the global step."""
        self._lab(self.train["step"]).set(step)
        if self._inc_to(self.steps, "step", step) > 0:
            self._lab(self.last_step_ts).set_to_current_time()

    def _inc_to(self, counter, key: str, total) -> float:
        """Feed a counter from a cumulative record field: increment by the growth since the last value seen."""
        if total is None:
            return 0.0
        delta = total - self._last.get(key, 0)
        self._last[key] = total
        if delta > 0:
            self._lab(counter).inc(delta)
        return delta

    def _set_terms(self, metric, values, **labels) -> None:
        for name, v in zip(LSCORE_NAMES, values):
            self._lab(metric, **labels, term=name).set(float(v))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _in_use_message(host: str, ports: list[int], fallback: bool) -> str:
    tried = f"ports {ports[0]}-{ports[-1]} are all" if len(ports) > 1 else f"port {ports[0]} is"
    fix = "" if fallback else ", or metrics.port_fallback=true to try the next ports"
    return (
        f"config key 'metrics.port': {tried} already in use on {host} (another run's exporter?); "
        f"set metrics.port to a free port, metrics.port=0 for any free port{fix}, "
        f"or metrics.enabled=false to train without metrics"
    )
