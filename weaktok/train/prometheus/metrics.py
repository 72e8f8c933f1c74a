"""Every metric the exporter serves: names, help texts, labels and buckets (the exporter's public interface: the
Grafana dashboard and the alert rules in cluster/ read these names), in a private ``CollectorRegistry``.

Which record field feeds which metric is written here as tables (``TRAIN_GAUGES``, ``VAL_GAUGES``, ...); the
exporter (exporter.py) walks them."""

from __future__ import annotations

import time

import torch
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from weaktok.lscore.exact import LSCORE_NAMES

STEP_TIME_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# train records (kind "train"): record key -> (gauge name, help)
TRAIN_GAUGES = {
    "step": ("weaktok_step", "Global optimizer step (resumed runs continue the count)"),
    "progress": ("weaktok_epoch_progress", "Training progress in epochs (fractional)"),
    "w_L": ("weaktok_w_lscore", "Curriculum weight of the L-Score distribution loss"),
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
    "data_wait_share": ("weaktok_data_wait_ratio", "Fraction of wall time rank 0 waited for data"),
    "chunk_boundary_rate": (
        "weaktok_chunk_boundary_ratio",
        "Fraction of bottleneck frames that start a chunk",
    ),
    "chunk_mean_prob": ("weaktok_chunk_mean_boundary_prob", "Mean boundary probability"),
    "chunk_mean_chunk_len": ("weaktok_chunk_mean_length", "Mean chunk length in bottleneck frames"),
    # MFU (weaktok/train/flops.py): on a GPU, or wherever metrics.peak_tflops is set
    "mfu": (
        "weaktok_mfu_ratio",
        "Model FLOPs utilisation: FLOPs per step / step time / the device's peak FLOP/s (rank 0)",
    ),
    "model_flops_per_step": (
        "weaktok_model_flops_per_step",
        "FLOPs of one optimizer step on one rank (forward + backward, counted by FlopCounterMode)",
    ),
    "peak_flops": (
        "weaktok_peak_flops_per_second",
        "Peak FLOP/s MFU divides by (metrics.peak_tflops, or a known GPU's dense bf16 peak)",
    ),
}
# CUDA caching-allocator statistics of this rank's device, read at each scrape: name -> (torch.cuda function, help)
GPU_MEMORY = {
    "weaktok_gpu_memory_allocated_bytes": ("memory_allocated", "GPU memory held by tensors"),
    "weaktok_gpu_memory_max_allocated_bytes": (
        "max_memory_allocated",
        "Peak GPU memory held by tensors so far",
    ),
    "weaktok_gpu_memory_reserved_bytes": (
        "memory_reserved",
        "GPU memory reserved by the caching allocator",
    ),
}
# train record key -> `term` label of weaktok_loss
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
    "val_boundary_rate": ("weaktok_val_boundary_ratio", "Validation boundary rate"),
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
        "weaktok_val_gen_std_dist_all_terms",
        (
            "Sum over terms of |exact - target| / target std of validation generations, "
            "mean over modes"
        ),
    ),
    "epoch": ("weaktok_epoch", "Completed epochs at the last validation"),
}
# validation generations (weaktok/train/validation.py): record key val_gen_<mode>_<what> (per-term list) -> gauge
# with the labels mode (generate.MODES: uncond, seed) and term
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
# the L-Score pool's stats (lscore_exact records, key "pool")
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


class RunMetrics:
    """One run's (and rank's) metrics in their own registry, every one labelled (run, rank[, ...])."""

    def __init__(self, labels: dict[str, str]):
        self.labels = labels  # {"run": ..., "rank": ...}
        self.registry = CollectorRegistry()
        self.last_checkpoint = (
            time.time()
        )  # or the exporter's start; weaktok_checkpoint_age_seconds reads it
        self._define_train()
        self._define_lscore_and_val()
        self._define_pool()
        self._define_checkpoint_and_rank()
        self.info = Info("weaktok_run", "Run facts", ("run", "rank"), registry=self.registry)

    def lab(self, metric, **extra):
        """The child of ``metric`` for this run and rank (and ``extra`` labels)."""
        return metric.labels(**self.labels, **extra)

    def set_terms(self, metric, values, **labels) -> None:
        """One value per L-Score term (LSCORE_NAMES order) into ``metric``'s ``term`` children."""
        for name, v in zip(LSCORE_NAMES, values):
            self.lab(metric, **labels, term=name).set(float(v))

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

    def _define_train(self) -> None:
        m = self._metric
        self.steps = m(Counter, "weaktok_train_steps", "Optimizer steps taken by this process")
        self.last_step_ts = m(
            Gauge,
            "weaktok_last_step_timestamp_seconds",
            "Unix time of the last optimizer step (exporter start before the first)",
        )
        self.lab(self.last_step_ts).set(time.time())
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

    def define_gpu_memory(self, device: torch.device) -> None:
        """The ``GPU_MEMORY`` gauges of ``device`` (a CUDA device), read from torch.cuda when scraped."""
        for name, (fn, doc) in GPU_MEMORY.items():
            read = getattr(torch.cuda, fn)
            self.lab(self._metric(Gauge, name, doc)).set_function(lambda read=read: read(device))

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
            "weaktok_checkpoint_age_seconds",
            "Seconds since the last complete checkpoint (or since the exporter started)",
        )
        self.lab(since).set_function(lambda: time.time() - self.last_checkpoint)
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
