"""Experiment tracking: the ``tracking:`` section's trackers fed from the training hooks, on rank 0.

``Tracker`` is a TrainHooks: ``on_log`` / ``on_validation`` records become scalars (numeric fields only, tags
``train/<key>``, ``val/<key>``, ``lscore/<key>``, a per-term list as ``<tag>/<term>``), the resolved config is
written once per process as hyper-parameters, and ``on_val_clips`` turns validation's generated clips into audio
and spectrogram images with the chunk boundaries of the model's final pass. One small backend per service sits
behind one interface: TensorBoard (``torch.utils.tensorboard``, on by default), Weights & Biases and MLflow
(optional extras, imported only when enabled; weaktok/train/tracking_services.py).

Resume: TensorBoard's writer opens the same folder with ``purge_step`` = the resumed step + 1, so whatever a killed
run wrote past its checkpoint is dropped by TensorBoard's reader and the steps continue without duplicates. W&B and
MLflow resume the same run: their ids are kept in ``<out>/tracking.json``.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from pathlib import Path

import numpy as np

from weaktok.config import Config, ConfigError, to_dict
from weaktok.lscore.exact import LSCORE_NAMES
from weaktok.plots import draw_spectrogram, pyplot
from weaktok.train.hooks import TrainHooks
from weaktok.train.records import ConsoleLine

log = logging.getLogger(__name__)

TENSORBOARD_DIR = "tensorboard"  # <out>/tensorboard unless tracking.dir says otherwise
PREFIX = {"train": "train", "val": "val", "lscore_exact": "lscore"}  # record kind -> tag namespace
SKIP = {"kind", "step", "time", "lscore_names"}  # record fields that are not curves
# hyper-parameter view's metrics: the headline numbers of a run (TensorBoard shows their last values)
HPARAM_METRICS = ("train/loss", "val/val_recon", "val/val_gen_std_dist_total")
EXTRAS = {"wandb": "wandb", "mlflow": "mlflow"}  # backend key -> (module to import, pip extra)


def check_tracking(cfg: Config) -> None:
    """Before any compute, on every rank: each enabled optional backend's package is importable, else a
    ConfigError naming the key and the extra to install."""
    for key, module in EXTRAS.items():
        if getattr(cfg.tracking, key) and importlib.util.find_spec(module) is None:
            raise ConfigError(
                f"config key 'tracking.{key}': the {module} package is not installed "
                f"(pip install 'weaktok[{key}]'), or set tracking.{key}=false"
            )


def tensorboard_dir(cfg: Config, out: Path) -> Path:
    """This run's TensorBoard folder: ``tracking.dir``, else ``<out>/tensorboard``."""
    return Path(cfg.tracking.dir) if cfg.tracking.dir else Path(out) / TENSORBOARD_DIR


def scalars(record: dict) -> dict[str, float]:
    """A record's numeric fields as {tag: value}: ``<namespace>/<key>``, nested dicts and per-term lists (the four
    L-Score terms) one tag per entry; strings, non-finite numbers and the record's step are left out."""
    prefix = PREFIX.get(record.get("kind"), str(record.get("kind")))
    out: dict[str, float] = {}

    def add(tag: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                add(f"{tag}/{k}", v)
        elif isinstance(value, list | tuple):
            names = LSCORE_NAMES if len(value) == len(LSCORE_NAMES) else range(len(value))
            for name, v in zip(names, value):
                add(f"{tag}/{name}", v)
        elif isinstance(value, bool | int | float) and math.isfinite(value):
            out[tag] = float(value)

    for key, value in record.items():
        if key not in SKIP:
            add(f"{prefix}/{key}", value)
    return out


def hyper_parameters(cfg: Config) -> dict[str, float | int | str | bool]:
    """The resolved config flattened to dotted keys; lists and null as strings (what trackers accept)."""
    flat: dict = {}

    def walk(prefix: str, node) -> None:
        for k, v in node.items():
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                walk(f"{key}.", v)
            else:
                flat[key] = v if isinstance(v, bool | int | float | str) else str(v)

    walk("", to_dict(cfg))
    return flat


def spectrogram_image(clip, frame_seconds: float, sample_rate: int, title: str) -> np.ndarray:
    """(H, W, 3) uint8: the clip's spectrogram with its chunk starts (cyan) and, for a seed-based clip, the first
    generated frame (dashed white)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 2.6), dpi=80)
    draw_spectrogram(ax, clip.spec, clip.starts, frame_seconds, sample_rate, title)
    if clip.hole_start:
        ax.axvline(clip.hole_start * frame_seconds, color="white", ls="--", lw=1)
    fig.tight_layout()
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


class TensorBoard:
    """Event files through ``torch.utils.tensorboard.SummaryWriter``; hyper-parameters in the run's own folder
    (SummaryWriter.add_hparams would open a new run per call)."""

    def __init__(self, folder: Path, resumed_step: int):
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415 (only when enabled)

        self.w = SummaryWriter(str(folder), purge_step=resumed_step + 1 if resumed_step else None)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, v in values.items():
            self.w.add_scalar(tag, v, step)

    def hparams(self, params: dict, metrics: tuple[str, ...]) -> None:
        from torch.utils.tensorboard.summary import hparams  # noqa: PLC0415

        exp, ssi, _ = hparams(params, dict.fromkeys(metrics, 0.0))
        self.w.file_writer.add_summary(exp)
        self.w.file_writer.add_summary(ssi)

    def audio(self, tag: str, wave: np.ndarray, sample_rate: int, step: int) -> None:
        self.w.add_audio(tag, wave[None], step, sample_rate=sample_rate)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        self.w.add_image(tag, image, step, dataformats="HWC")

    def close(self) -> None:
        self.w.close()


class Tracker(TrainHooks):
    """Rank 0's trackers as one train hook (see the module docstring); ``close`` ends every backend's run."""

    def __init__(self, cfg: Config, out: Path, backends: list, resumed_step: int = 0):
        self.cfg, self.out, self.backends = cfg, Path(out), backends
        self.frame_seconds = cfg.audio.hop_length / cfg.audio.sample_rate
        for b in backends:
            b.hparams(hyper_parameters(cfg), HPARAM_METRICS)
        log.info(f"tracking from step {resumed_step}: {', '.join(self.names())}")

    def names(self) -> list[str]:
        return [type(b).__name__ for b in self.backends]

    def on_log(self, record: dict) -> None:
        self._scalars(record)

    def on_validation(self, record: dict) -> None:
        self._scalars(record)

    def _scalars(self, record: dict) -> None:
        values = scalars(record)
        for b in self.backends:
            b.scalars(values, record["step"])

    def on_val_clips(self, step: int, clips: list) -> None:
        sr = self.cfg.audio.sample_rate
        for clip in clips:
            tag = f"{clip.mode}/{clip.index}"
            peak = float(np.abs(clip.wave).max()) if clip.wave.size else 0.0
            wave = (clip.wave * (0.99 / peak) if peak > 0.99 else clip.wave).astype(np.float32)
            title = f"{clip.mode} {clip.index}, step {step}"
            image = spectrogram_image(clip, self.frame_seconds, sr, title)
            for b in self.backends:
                b.audio(f"audio/{tag}", wave, sr, step)
                b.image(f"spectrogram/{tag}", image, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()
        self.backends = []


def start_reporting(
    cfg: Config, out: Path, is_main: bool, resumed_step: int, total_steps: int
) -> list[TrainHooks]:
    """Rank 0's hooks that report the run as it goes, each with a ``close``: the console line (records.ConsoleLine)
    and, when a backend is enabled, the Tracker; none on other ranks. Logs the command that shows TensorBoard."""
    t = cfg.tracking
    if not is_main:
        return []
    if not (t.tensorboard or t.wandb or t.mlflow):
        return [ConsoleLine(total_steps)]
    # here, not at the top: wandb and mlflow are optional extras, imported only when enabled
    from weaktok.train.tracking_services import MLflow, WandB  # noqa: PLC0415

    backends: list = []
    if t.tensorboard:
        folder = tensorboard_dir(cfg, out)
        backends.append(TensorBoard(folder, resumed_step))
        log.info(f"TensorBoard: tensorboard --logdir {folder}")
    name = t.run_name or Path(out).resolve().name
    if t.wandb:
        backends.append(WandB(cfg, out, name))
    if t.mlflow:
        backends.append(MLflow(cfg, out, name))
    return [ConsoleLine(total_steps), Tracker(cfg, out, backends, resumed_step)]
