"""The hosted trackers behind tracking.py's backend interface (scalars, hparams, audio, image, close): Weights &
Biases and MLflow. Each is an optional extra (``pip install 'weaktok[wandb]'``, ``'weaktok[mlflow]'``), imported
when its object is built, so weaktok never needs either to train; tracking.check_tracking refuses a config that
enables one whose package is missing, before any compute.

Resume: the run ids live in ``<out>/tracking.json``; a resumed run logs into the same W&B / MLflow run.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from weaktok.audio import write_wav
from weaktok.config import Config

IDS_FILE = "tracking.json"  # in the run folder: {"wandb": run id, "mlflow": run id}
MLFLOW_BATCH = 100  # MLflow's log_batch takes at most 100 params per call


def read_ids(out: Path) -> dict:
    path = Path(out) / IDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def write_id(out: Path, service: str, run_id: str) -> None:
    ids = read_ids(out)
    ids[service] = run_id
    (Path(out) / IDS_FILE).write_text(json.dumps(ids, indent=1) + "\n")


class WandB:
    """A W&B run (``tracking.project``, named ``name``), resumed by its id when the run folder has one; its local
    files under ``<out>/wandb``. Credentials are W&B's own (``wandb login``, ``WANDB_API_KEY``, ``WANDB_MODE``)."""

    def __init__(self, cfg: Config, out: Path, name: str):
        import wandb  # noqa: PLC0415 (an optional extra)

        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.tracking.project,
            name=name,
            dir=str(out),
            id=read_ids(out).get("wandb"),
            resume="allow",
        )
        write_id(out, "wandb", self.run.id)

    def scalars(self, values: dict[str, float], step: int) -> None:
        self.run.log(values, step=step)

    def hparams(self, params: dict, metrics: tuple[str, ...]) -> None:
        self.run.config.update(params, allow_val_change=True)

    def audio(self, tag: str, wave: np.ndarray, sample_rate: int, step: int) -> None:
        self.run.log({tag: self.wandb.Audio(wave, sample_rate=sample_rate)}, step=step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.run.log({tag: self.wandb.Image(image)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MLflow:
    """An MLflow run in experiment ``tracking.project`` at ``tracking.mlflow_tracking_uri`` (null: MLflow's own
    default, ``$MLFLOW_TRACKING_URI``), through ``MlflowClient`` (no global active run). Audio and spectrograms
    are artifacts under ``val/step<step>/``."""

    def __init__(self, cfg: Config, out: Path, name: str):
        from mlflow.entities import Metric, Param  # noqa: PLC0415 (an optional extra)
        from mlflow.tracking import MlflowClient  # noqa: PLC0415

        self.Metric, self.Param = Metric, Param
        self.client = MlflowClient(tracking_uri=cfg.tracking.mlflow_tracking_uri)
        self.run_id = read_ids(out).get("mlflow")
        self.resumed = self.run_id is not None
        if not self.resumed:
            exp = self.client.get_experiment_by_name(cfg.tracking.project)
            exp_id = (
                exp.experiment_id if exp else self.client.create_experiment(cfg.tracking.project)
            )
            self.run_id = self.client.create_run(exp_id, run_name=name).info.run_id
            write_id(out, "mlflow", self.run_id)

    def scalars(self, values: dict[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [self.Metric(k, v, now, step) for k, v in values.items()]
        for first in range(0, len(metrics), 1000):  # log_batch's limit on metrics
            self.client.log_batch(self.run_id, metrics=metrics[first : first + 1000])

    def hparams(self, params: dict, metrics: tuple[str, ...]) -> None:
        if self.resumed:  # MLflow params are immutable: the run keeps those it started with
            return
        items = [self.Param(k, str(v)) for k, v in params.items()]
        for first in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[first : first + MLFLOW_BATCH])

    def audio(self, tag: str, wave: np.ndarray, sample_rate: int, step: int) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{tag.replace('/', '_')}.wav"
            write_wav(path, wave, sample_rate)
            self.client.log_artifact(self.run_id, str(path), f"val/step{step:08d}")

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        name = f"val/step{step:08d}/{tag.replace('/', '_')}.png"
        self.client.log_image(self.run_id, image, artifact_file=name)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)
