"""Training in a subprocess on this machine (the demo, ablations): one process, or ``ranks`` DeepSpeed ranks.

The launcher resolves the config once; the child gets that resolved config as a file and no overrides:

    python -m weaktok train --config <run>/config.yaml --out <run>                   # ranks == 1
    deepspeed --num_gpus R --module weaktok.train --config <run>/config.yaml --out <run>

so it trains under exactly the parent's config (the trainer writes the same file again at start). The child's
environment: weaktok/procenv.py (train_env).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

from weaktok.config import Config, save_config
from weaktok.procenv import free_port, train_env

log = logging.getLogger(__name__)

RESOLVED_CONFIG = "config.yaml"  # in the run folder: the resolved config the child is started with


class TrainingFailed(RuntimeError):
    """A training subprocess exited non-zero; the message carries its log's tail and the log's path."""


def train_command(config_path: str | Path, out: Path, ranks: int) -> list[str]:
    """The command line training the resolved config file ``config_path`` into ``out`` on ``ranks`` ranks."""
    args = ["--config", str(config_path), "--out", str(out)]
    if ranks <= 1:
        return [sys.executable, "-m", "weaktok", "train", *args]
    deepspeed = Path(sys.executable).parent / "deepspeed"
    return [
        str(deepspeed) if deepspeed.exists() else "deepspeed",
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        "--module",
        "weaktok.train",
        *args,
    ]


def train_subprocess(
    cfg: Config,
    out: str | Path,
    ranks: int = 1,
    prefix: str = "  ",
    on_line=None,
) -> float:
    """Train ``cfg`` in a subprocess: write it to ``<out>/config.yaml`` and start the child on that file; echo its
    ``[weaktok]`` lines (progress, metrics URL), keep the full log in ``<out>/train.log``. ``on_line`` sees every
    line. Returns the wall seconds; raises TrainingFailed on a non-zero exit."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / RESOLVED_CONFIG)
    log_path = out / "train.log"
    cmd = train_command(out / RESOLVED_CONFIG, out, ranks)
    t0 = time.time()
    with open(log_path, "a") as logfile:
        logfile.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=train_env(ranks),
        )
        for line in proc.stdout:
            logfile.write(line)
            # progress, the metrics URL, failures; the rest: the log
            if "[weaktok]" in line or "Error" in line:
                log.info("%s%s", prefix, line[max(0, line.find("[weaktok]")) :].rstrip())
            if on_line is not None:
                on_line(line)
        proc.wait()
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise TrainingFailed(
            f"training exited with {proc.returncode} (full log: {log_path}):\n{tail}"
        )
    return time.time() - t0
