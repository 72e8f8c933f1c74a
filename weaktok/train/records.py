"""What a run says about itself as it goes: ``metrics.jsonl`` (``MetricsLog``), the window a train record averages
over (``LogWindow``) and the record built from it (``train_record``), the console line of a train record
(``step_line``, logged by the ``ConsoleLine`` hook) and the one-line epoch summary of a validation record
(``epoch_line``)."""

from __future__ import annotations

import datetime
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from weaktok.config import Config
from weaktok.train.hooks import TrainHooks
from weaktok.train.state import TrainState
from weaktok.train.step import PartsWindow

log = logging.getLogger(__name__)

METRICS_FILE = (
    "metrics.jsonl"  # in the run folder: one JSON object per train / validation / pool record
)


class MetricsLog:
    """metrics.jsonl on rank 0: one JSON object per line, flushed as written."""

    def __init__(self, path: Path, enabled: bool):
        self.enabled = enabled
        self.f = open(path, "a") if enabled else None

    def write(self, record: dict) -> None:
        if self.f:
            self.f.write(json.dumps({"time": time.time(), **record}) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


@dataclass
class LogWindow:
    """What a train record averages over: the steps since the previous log line (or the epoch's start)."""

    t0: float = field(default_factory=time.perf_counter)
    samples: int = 0  # all ranks
    wait: float = 0.0  # seconds waiting for the data loader
    parts: PartsWindow = field(
        default_factory=PartsWindow
    )  # loss parts, on the device until the log line


def train_record(
    cfg: Config, state: TrainState, win: LogWindow, progress: float, w, lr: float, now: float
) -> dict:
    """The ``kind: train`` record of the window ``win`` ending at ``now`` (perf_counter): the loss parts (every
    rank reads them), the curriculum's weights ``w``, throughput and the skip counters."""
    elapsed = max(now - win.t0, 1e-9)
    return {
        "kind": "train",
        "step": state.step,
        "epoch": state.epoch,
        "progress": round(progress, 4),
        **win.parts.read(),
        "w_L": w.w_L,
        "w_recon": w.w_recon,
        "w_ratio": w.w_ratio,
        "phase": w.phase,
        "tau": cfg.model.chunking.tau,
        "lr": lr,
        "samples_per_s": win.samples / elapsed,
        "audio_s_per_s": win.samples * cfg.audio.clip_seconds / elapsed,
        "step_time_s": (now - win.t0) / cfg.train.log_every,
        "data_wait_s": win.wait,
        "data_wait_share": win.wait / elapsed,
        "nan_skipped": state.nan_skipped,
        "corrupt_skipped": state.corrupt_skipped,
    }


def step_line(record: dict, total_steps: int) -> str:
    """The console line of a train record: step of the run, epoch, loss, throughput and the ETA (the steps left
    at the window's step time, h:mm:ss)."""
    left = max(total_steps - record["step"], 0) * record["step_time_s"]
    loss = f"{record['loss']:.4f}" if "loss" in record else "n/a"
    return (
        f"step {record['step']}/{total_steps} epoch {record['epoch']}: loss {loss}, "
        f"{record['samples_per_s']:.1f} samples/s, {record['audio_s_per_s']:.1f} audio s/s, "
        f"ETA {datetime.timedelta(seconds=round(left))}"
    )


class ConsoleLine(TrainHooks):
    """Rank 0's hook that logs ``step_line`` for each train record (every ``train.log_every`` steps)."""

    def __init__(self, total_steps: int):
        self.total_steps = total_steps

    def on_log(self, record: dict) -> None:
        if record.get("kind") == "train":
            log.info(step_line(record, self.total_steps))

    def close(self) -> None:
        pass


def epoch_line(val: dict) -> str:
    """The epoch's summary line of a validation record (launchers and tests grep training logs for it)."""
    dist = val.get("val_gen_std_dist_total")
    flow_loss = f"val flow loss {val['val_flow']:.4f}, " if "val_flow" in val else ""
    return (
        f"epoch {val['epoch']} step {val['step']}: {flow_loss}val recon {val['val_recon']:.4f}, "
        f"boundary rate {val['val_boundary_rate']:.3f}, generated L-Score distance "
        f"{'n/a' if dist is None else f'{dist:.3f}'}"
    )
