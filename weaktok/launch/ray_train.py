"""Run the training loop on Ray Train workers (``TorchTrainer``), DeepSpeed inside each worker.

The driver resolves the config once; each worker gets it as plain data (``to_dict``) in ``train_loop_config`` and
rebuilds the typed Config with the same validation (``from_dict``: no YAML file is read on a worker). Ray Train
starts the workers, sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and initialises the gloo/NCCL
process group; ``weaktok.train.train`` then runs unchanged (DeepSpeed reuses that process group). Each epoch every
worker calls ``ray.train.report`` (Ray requires all to): metrics from rank 0's validation record, and the epoch's
DeepSpeed checkpoint from one worker per node, so Ray's storage holds a complete copy. After a worker failure Ray
restarts the group (``max_failures``) and the loop resumes from the newest checkpoint: the local one in
``<out>/checkpoints`` or, where that is missing (a fresh node), the last one Ray persisted.

GPUs: ``gpus_per_worker`` ``auto`` (default: 1 when the Ray cluster reports GPU resources, else 0), 0 or 1. With a
GPU each worker requests ``{"CPU": cpus_per_worker, "GPU": 1}`` (``use_gpu``) and the process group is NCCL (bf16
under ``train.precision: auto``); without, CPUs only and gloo (``worker_resources``).

Storage and retention: the config's ``ray:`` section (weaktok/launch/storage.py). ``ray.storage_path`` a local folder
(resolved) or a URI kept as written (``s3://bucket/runs``; null: ``<out>/ray``); ``ray.num_to_keep`` (0: every
epoch's checkpoint), ranked by ``ray.checkpoint_score_attribute`` / ``ray.checkpoint_score_order`` (null: newest).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from weaktok.config import Config, from_dict, to_dict, with_absolute_paths
from weaktok.config.errors import missing_extra

try:
    import ray
    import ray.train
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
except ImportError as e:
    raise missing_extra("ray", "Ray Train (ray_jobs/train.py, sweeps)", e) from e
from weaktok.device import describe_gpus, gpus_setting, resolve_gpus
from weaktok.launch.objective import sweep_metrics
from weaktok.launch.storage import checkpoint_config, storage_location
from weaktok.log import setup_logging
from weaktok.procenv import set_accelerator
from weaktok.ray_cluster import connect_ray
from weaktok.train import complete_tags, train
from weaktok.train.hooks import TrainHooks

log = logging.getLogger(__name__)


class RayReport(TrainHooks):
    """Train-loop hook: report each epoch's validation record and checkpoint to Ray Train.

    ``lscore_weight``: inside a sweep, also report the sweep's objective (see weaktok.launch.objective.sweep_metrics).
    """

    def __init__(self, lscore_weight: float | None = None):
        self.lscore_weight = lscore_weight

    def on_epoch_end(self, record: dict, checkpoint: Path) -> None:
        ctx = ray.train.get_context()
        ckpt = (
            ray.train.Checkpoint.from_directory(str(checkpoint))
            if ctx.get_local_rank() == 0
            else None
        )
        if self.lscore_weight is not None:
            metrics = sweep_metrics(record, self.lscore_weight)
        else:
            metrics = {k: v for k, v in record.items() if isinstance(v, (int, float, str, bool))}
        ray.train.report(metrics, checkpoint=ckpt, checkpoint_dir_name=checkpoint.name)


def restore_ray_checkpoint(out: Path) -> None:
    """On a restarted worker with no local checkpoint, fetch the last one Ray persisted into <out>/checkpoints."""
    ckpt = ray.train.get_checkpoint()
    ckpt_dir = out / "checkpoints"
    if ckpt is None or complete_tags(ckpt_dir):
        return
    target = ckpt_dir / Path(ckpt.path).name
    target.mkdir(parents=True, exist_ok=True)
    ckpt.to_directory(str(target))


def loop_config(cfg: Config, out: Path, use_gpu: bool, lscore_weight: float | None = None) -> dict:
    """What every worker receives: the resolved config as plain data, the run folder, whether it trains on a GPU
    and (inside a sweep) the objective's L-Score weight."""
    return {
        "config": to_dict(cfg),
        "out": str(out),
        "use_gpu": use_gpu,
        "lscore_weight": lscore_weight,
    }


def train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker: the driver's config, rebuilt and validated (``from_dict``), trained."""
    setup_logging(
        "[weaktok] "
    )  # this worker's own process: training's lines, as `weaktok train` prints them
    cfg = from_dict(config["config"])
    out = Path(config["out"])
    set_accelerator(os.environ, config["use_gpu"])
    restore_ray_checkpoint(out)
    train(cfg, out, hooks=[RayReport(config.get("lscore_weight"))])


def worker_resources(cpus_per_worker: float, gpus_per_worker: float) -> dict:
    """Ray Train settings for workers with these resources: ``use_gpu``, ``resources_per_worker`` (GPU left out
    when 0) and the process-group ``backend`` (nccl with GPUs, gloo without)."""
    use_gpu = gpus_per_worker > 0
    return {
        "use_gpu": use_gpu,
        "backend": "nccl" if use_gpu else "gloo",
        "resources_per_worker": {
            "CPU": cpus_per_worker,
            **({"GPU": gpus_per_worker} if use_gpu else {}),
        },
    }


def torch_trainer(
    cfg: Config,
    out: Path,
    workers: int,
    resources: dict,
    run_config: RunConfig,
    lscore_weight: float | None = None,
) -> TorchTrainer:
    """A TorchTrainer training ``cfg`` into ``out`` on ``workers`` workers with ``resources``
    (``worker_resources``); used by ``run_ray_train`` and by a sweep's multi-worker trials."""
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, out, resources["use_gpu"], lscore_weight),
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=resources["use_gpu"],
            resources_per_worker=resources["resources_per_worker"],
        ),
        # Ray makes the process group: pass it the bound on every collective
        torch_config=TorchConfig(
            backend=resources["backend"], init_method="env", timeout_s=int(cfg.train.dist_timeout_s)
        ),
        run_config=run_config,
    )


def run_ray_train(
    cfg: Config,
    out: str,
    workers: int = 2,
    use_gpu: bool | None = None,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    storage_path: str | None = None,
    address: str | None = None,
    gpus_per_worker: float | str = "auto",
):
    """Connect to Ray (weaktok/ray_cluster.py) and train the resolved ``cfg`` on a TorchTrainer with ``workers``
    workers; returns the Result.

    ``storage_path``, when given, wins over ``cfg.ray.storage_path`` (``ray_run_config``).

    ``gpus_per_worker``: "auto" (1 if the cluster reports GPUs, else 0), 0 or 1; ``use_gpu`` (True/False), when
    given, wins (the older spelling)."""
    setting = gpus_setting(
        int(use_gpu) if use_gpu is not None else gpus_per_worker, "gpus_per_worker", whole=True
    )
    out_path = Path(out).resolve()
    cfg = with_absolute_paths(cfg)  # workers need not share the driver's working directory
    connect_ray(address)
    cluster = ray.cluster_resources()
    w = worker_resources(cpus_per_worker, resolve_gpus(setting, cluster))
    log.info(
        "ray train: %s; %d workers x %s, %s",
        describe_gpus(setting, w["resources_per_worker"].get("GPU", 0), cluster),
        workers,
        w["resources_per_worker"],
        w["backend"],
    )
    run_config = ray_run_config(cfg, out_path, max_failures, storage_path)
    log.info(
        "ray train: storage %s, keeping %s checkpoints",
        run_config.storage_path,
        cfg.ray.num_to_keep or "all",
    )
    return torch_trainer(cfg, out_path, workers, w, run_config).fit()


def ray_run_config(
    cfg: Config, out: Path, max_failures: int = 0, storage_path: str | None = None
) -> RunConfig:
    """Ray Train's RunConfig for a run into ``out``: storage ``storage_path`` or ``cfg.ray.storage_path`` (a URI
    unchanged, a local path resolved; neither: ``<out>/ray``) and the config's checkpoint retention."""
    storage = storage_path or cfg.ray.storage_path
    return RunConfig(
        name=f"weaktok-{out.name}",
        storage_path=storage_location(storage) if storage else str(out / "ray"),
        failure_config=FailureConfig(max_failures=max_failures),
        checkpoint_config=checkpoint_config(cfg.ray),
    )
