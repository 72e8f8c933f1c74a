"""One sweep trial: its config (the driver's resolved base + the trial's params, ``trial_config``) trained by the
same loop, reporting each epoch to Tune.

A trial is one process (``resources.workers: 1``: ``train`` in the Tune trainable itself, ``TuneReport``) or a Ray
Train ``TorchTrainer`` with DeepSpeed workers nested in Tune through a driver function and ``TuneReportCallback``
(the workers get the trial's config as plain data, weaktok/launch/ray_train.py). Nothing here re-reads a YAML
file: the base arrives resolved from the driver (weaktok/launch/sweep.py).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from weaktok.config import Config, with_values
from weaktok.config.errors import missing_extra

try:
    from ray import tune
    from ray.train import RunConfig
    from ray.tune.integration.ray_train import TuneReportCallback
except ImportError as e:
    raise missing_extra("ray", "a sweep (Ray Tune)", e) from e
from weaktok.launch.objective import sweep_metrics
from weaktok.launch.ray_train import torch_trainer, worker_resources
from weaktok.launch.storage import checkpoint_config
from weaktok.log import setup_logging
from weaktok.procenv import set_accelerator, single_process_env
from weaktok.train import train
from weaktok.train.hooks import TrainHooks


def trial_config(base: Config, params: dict[str, Any], trial_name: str | None = None) -> Config:
    """The trial's config: ``base`` with its sampled ``params`` (dotted key -> value) applied once, validated.
    With a ``trial_name`` (a running trial) it also serves metrics on a free port labelled with that name:
    concurrent trials share machines. The params win over those two."""
    extra = {} if trial_name is None else {"metrics.port": 0, "metrics.run_name": trial_name}
    return with_values(base, {**extra, **params})


class TuneReport(TrainHooks):
    """Train-loop hook for single-process trials: report every epoch (and its checkpoint) to Tune."""

    def __init__(self, lscore_weight: float):
        self.lscore_weight = lscore_weight

    def on_epoch_end(self, record: dict, checkpoint: Path) -> None:
        tune.report(
            sweep_metrics(record, self.lscore_weight),
            checkpoint=tune.Checkpoint.from_directory(str(checkpoint)),
        )


def run_trial(
    params: dict,
    base: Config,
    lscore_weight: float,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0.0,
) -> None:
    """The Tune trainable: one real training run of ``trial_config(base, params)`` (``gpus_per_worker``:
    resolved, see weaktok.launch.sweep_space.trial_resources; a single-process trial trains on the GPU Ray gave
    it, if any)."""
    ctx = tune.get_context()
    cfg = trial_config(base, params, ctx.get_trial_name())
    out = Path(ctx.get_trial_dir()) / "run"
    if workers == 1:
        setup_logging(
            "[weaktok] "
        )  # this trial's own process: training's lines, as `weaktok train` prints
        os.environ.update(
            single_process_env({})
        )  # rank 0 of 1, a fresh port: trials share machines
        set_accelerator(os.environ)
        train(cfg, out, hooks=[TuneReport(lscore_weight)])
        return
    trainer = torch_trainer(
        cfg,
        out,
        workers,
        worker_resources(cpus_per_worker, gpus_per_worker),
        RunConfig(
            name="train",
            storage_path=str(out / "ray"),
            callbacks=[TuneReportCallback()],
            checkpoint_config=checkpoint_config(cfg.ray),
        ),
        lscore_weight=lscore_weight,
    )
    result = trainer.fit()
    if result.error:
        raise result.error
