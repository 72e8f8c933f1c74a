"""Ray job entrypoint for training (thin: parse arguments, call weaktok).

    ray job submit --working-dir . -- python ray_jobs/train.py --config demo --out /shared/runs/demo \\
        --workers 4 data.shards=/shared/shards/fsld

``--out`` must be reachable from every worker (shared storage on a multi-node cluster). GPUs: ``--gpus-per-worker``
auto (default: one GPU per worker, NCCL, when the Ray cluster reports GPUs; CPUs and gloo otherwise), 0 or 1;
``--gpus`` is ``--gpus-per-worker 1``. The config (``--config`` + overrides) is resolved here, once; the workers
get it resolved (weaktok/launch/ray_train.py). ``--storage-path`` (a folder or a URI: s3://bucket/runs, gs://...),
``--num-to-keep``, ``--checkpoint-score-attribute`` and ``--checkpoint-score-order`` set the config's ``ray.*`` keys
(the same as ``ray.storage_path=...`` overrides; the flags win).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # the working dir Ray ships is the repo root

from weaktok.config import ConfigError, load_config, with_values  # noqa: E402
from weaktok.launch.ray_train import run_ray_train  # noqa: E402
from weaktok.log import setup_logging  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(
        description="weaktok training on Ray Train (DeepSpeed inside each worker)"
    )
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="run folder, on storage every worker can reach")
    p.add_argument("--workers", type=int, default=2, help="training workers (ranks)")
    p.add_argument(
        "--gpus-per-worker",
        default="auto",
        metavar="auto|0|1",
        help="GPUs per worker: auto (default) = 1 if the Ray cluster reports GPUs, else 0; "
        "1 = NCCL, bf16; 0 = CPU, gloo",
    )
    p.add_argument(
        "--gpus",
        action="store_const",
        const="1",
        dest="gpus_per_worker",
        help="same as --gpus-per-worker 1",
    )
    p.add_argument("--cpus-per-worker", type=float, default=1.0)
    p.add_argument(
        "--max-failures", type=int, default=0, help="worker-group restarts before giving up"
    )
    p.add_argument(
        "--storage-path",
        default=None,
        help="ray.storage_path: where Ray persists checkpoints, a folder or a URI such as s3://bucket/runs "
        "(default <out>/ray)",
    )
    p.add_argument(
        "--num-to-keep", type=int, default=None, help="ray.num_to_keep: checkpoints kept (0 = all)"
    )
    p.add_argument(
        "--checkpoint-score-attribute",
        default=None,
        help="ray.checkpoint_score_attribute: the metric ranking checkpoints (e.g. val_recon)",
    )
    p.add_argument(
        "--checkpoint-score-order",
        choices=("min", "max"),
        default=None,
        help="ray.checkpoint_score_order",
    )
    p.add_argument(
        "--address", default=None, help="Ray address (default: RAY_ADDRESS or a new local cluster)"
    )
    p.add_argument("overrides", nargs="*", metavar="key=value")
    a = p.parse_args()
    setup_logging("[weaktok] ")  # a training entry point: its lines carry training's prefix
    flags = {
        "ray.storage_path": a.storage_path,
        "ray.num_to_keep": a.num_to_keep,
        "ray.checkpoint_score_attribute": a.checkpoint_score_attribute,
        "ray.checkpoint_score_order": a.checkpoint_score_order,
    }
    try:
        cfg = with_values(
            load_config(a.config, a.overrides), {k: v for k, v in flags.items() if v is not None}
        )
        result = run_ray_train(
            cfg,
            a.out,
            workers=a.workers,
            gpus_per_worker=a.gpus_per_worker,
            cpus_per_worker=a.cpus_per_worker,
            max_failures=a.max_failures,
            address=a.address,
        )
    except ConfigError as e:
        print(f"ray_jobs/train.py: config error: {e}", file=sys.stderr)
        return 2
    if result.error:
        print(f"ray_jobs/train.py: training failed: {result.error}", file=sys.stderr)
        return 1
    print(f"ray_jobs/train.py: done; metrics {result.metrics}; checkpoint {result.checkpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
