"""Prometheus metrics for training runs: :class:`MetricsExporter`, a train hook that serves ``/metrics`` over HTTP.

    exporter = MetricsExporter(cfg, out, rank, local_rank, world, target=manifest["lscore_target"])
    train(cfg, out, hooks=[exporter])          # train() does this itself when metrics.enabled (the default)
    exporter.close()

    metrics.py    every metric: names, help texts, labels, buckets; which record field feeds which
    serve.py      the HTTP server: port policy, MetricsPortInUse, the URL file, the loopback note
    exporter.py   MetricsExporter: the hook methods and how records become metric values

Every metric lives in a private ``CollectorRegistry`` (never the global one), is named ``weaktok_*`` and carries the
labels ``run`` (``metrics.run_name``, default: the run folder's name) and ``rank``.

On a CUDA device the exporter also serves the rank's GPU memory (``weaktok_gpu_memory_*_bytes``, read from the
caching allocator at each scrape); MFU (``weaktok_mfu_ratio``) comes in the train records (weaktok/train/flops.py).

Per-rank policy. The loop produces its numbers (losses, weights, throughput, chunking, L-Score, validation,
checkpoints) on rank 0 only, so by default only rank 0 serves, on ``metrics.host:metrics.port`` (127.0.0.1:9400).
With ``metrics.per_rank: true`` every rank serves its own registry on ``port + local_rank``; the hooks every rank
gets (``on_batch``, ``on_epoch_end``) feed the ``weaktok_rank_*`` series there (batches, samples, corrupt items
skipped, last batch time, epochs), which show a slow or hung rank. Non-serving ranks record into a registry nobody
reads (a few counter increments per batch).

Ports. A port already in use is a :class:`MetricsPortInUse` (a ``ConfigError`` naming ``metrics.port``), raised when
the exporter is created, i.e. before training compute starts: a run never goes on silently without metrics. With
``metrics.port_fallback: true`` the exporter tries the next ports (up to ``FALLBACK_TRIES``) instead.
``metrics.port: 0`` picks any free port. The URL is logged by every serving rank ("[weaktok] metrics at
http://127.0.0.1:PORT/metrics") and, on rank 0, written to ``<out>/metrics_url.txt`` (the URL the run served on; it
stays after the run ends).
"""

from weaktok.train.prometheus.exporter import MetricsExporter
from weaktok.train.prometheus.metrics import RunMetrics
from weaktok.train.prometheus.serve import FALLBACK_TRIES, URL_FILE, MetricsPortInUse, serve

__all__ = [
    "FALLBACK_TRIES",
    "URL_FILE",
    "MetricsExporter",
    "MetricsPortInUse",
    "RunMetrics",
    "serve",
]
