"""Run the training loop on Ray Train workers (``TorchTrainer``), DeepSpeed inside each worker.

Ray Train starts the workers, sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT and initialises the
gloo/NCCL process group; ``weaktok.train.train`` then runs unchanged (DeepSpeed reuses that process group). Each
epoch every worker calls ``ray.train.report`` (Ray requires all to): metrics from rank 0's validation record, and
the epoch's DeepSpeed checkpoint from one worker per node, so Ray's storage holds a complete copy. After a worker
failure Ray restarts the group (``max_failures``) and the loop resumes from the newest checkpoint: the local one in
``<out>/checkpoints`` or, where that is missing (a fresh node), the last one Ray persisted.

GPUs: ``gpus_per_worker`` ``auto`` (default: 1 when the Ray cluster reports GPU resources, else 0), 0 or 1. With a
GPU each worker requests ``{"CPU": cpus_per_worker, "GPU": 1}`` (``use_gpu``) and the process group is NCCL (bf16
under ``train.precision: auto``); without, CPUs only and gloo (``worker_resources``).
"""

from __future__ import annotations

import os
from pathlib import Path

from weaktok.config import Config, load_config, to_dict
from weaktok.launch.objective import sweep_metrics
from weaktok.train.hooks import TrainHooks


class RayReport(TrainHooks):
    """Train-loop hook: report each epoch's validation record and checkpoint to Ray Train.

    ``lscore_weight``: inside a sweep, also report the sweep's objective (see weaktok.launch.objective.sweep_metrics)."""

    def __init__(self, lscore_weight: float | None = None):
        self.lscore_weight = lscore_weight

    def on_epoch_end(self, record: dict, checkpoint: Path) -> None:
        import ray.train

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
    import ray.train

    from weaktok.train import complete_tags

    ckpt = ray.train.get_checkpoint()
    ckpt_dir = out / "checkpoints"
    if ckpt is None or complete_tags(ckpt_dir):
        return
    target = ckpt_dir / Path(ckpt.path).name
    target.mkdir(parents=True, exist_ok=True)
    ckpt.to_directory(str(target))


def train_loop_per_worker(config: dict) -> None:
    """Runs in every Ray Train worker."""
    from weaktok.train import train

    cfg = load_config(config["config"], config["overrides"])
    out = Path(config["out"])
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if config["use_gpu"] else "cpu")
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


def run_ray_train(
    config: str,
    overrides: list[str],
    out: str,
    workers: int = 2,
    use_gpu: bool | None = None,
    cpus_per_worker: float = 1.0,
    max_failures: int = 0,
    storage_path: str | None = None,
    address: str | None = None,
    gpus_per_worker: float | str = "auto",
):
    """Validate the config, connect to Ray, run a TorchTrainer with ``workers`` workers; returns the Result.

    ``gpus_per_worker``: "auto" (1 if the cluster reports GPUs, else 0), 0 or 1; ``use_gpu`` (True/False), when
    given, wins (the older spelling)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from weaktok.device import describe_gpus, gpus_setting, resolve_gpus

    cfg: Config = load_config(config, overrides)  # fail fast, before any worker starts
    setting = gpus_setting(
        int(use_gpu) if use_gpu is not None else gpus_per_worker, "gpus_per_worker", whole=True
    )
    out_path = Path(out).resolve()
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or None)
    cluster = ray.cluster_resources()
    w = worker_resources(cpus_per_worker, resolve_gpus(setting, cluster))
    print(
        f"[weaktok] ray train: {describe_gpus(setting, w['resources_per_worker'].get('GPU', 0), cluster)}; "
        f"{workers} workers x {w['resources_per_worker']}, {w['backend']}",
        flush=True,
    )
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config,
            "overrides": list(overrides),
            "out": str(out_path),
            "use_gpu": w["use_gpu"],
            "resolved": to_dict(cfg),
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=w["use_gpu"],
            resources_per_worker=w["resources_per_worker"],
        ),
        torch_config=TorchConfig(
            backend=w["backend"], init_method="env", timeout_s=int(cfg.train.dist_timeout_s)
        ),  # Ray makes the group: pass the bound
        run_config=RunConfig(
            name=f"weaktok-{out_path.name}",
            storage_path=str(Path(storage_path).resolve())
            if storage_path
            else str(out_path / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()
