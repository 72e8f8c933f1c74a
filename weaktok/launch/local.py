"""Environment helpers shared by the thin launchers (``weaktok train``, Ray Train, tests).

The train loop reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain ``python`` process
without them would make DeepSpeed fall into MPI discovery (and fail on a missing mpi4py).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def single_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """Rank 0 of a world of 1 on this machine; keeps whatever the caller already set."""
    return {
        "RANK": env.get("RANK", "0"),
        "WORLD_SIZE": env.get("WORLD_SIZE", "1"),
        "LOCAL_RANK": env.get("LOCAL_RANK", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": env.get("MASTER_PORT", str(free_port())),
    }


# ----------------------------------------------------------------------------------------------------------
# Training in a subprocess (the demo, ablations, sweeps' tests)


class TrainingFailed(RuntimeError):
    """A training subprocess exited non-zero; the message carries its log's tail and the log's path."""


# ----------------------------------------------------------------------------------------------------------
# Training in a subprocess (shared with the demo)


def train_env(ranks: int) -> dict[str, str]:
    """Environment for training subprocesses: CPU DeepSpeed without a GPU, a private Ray cluster for the trainer's
    L-Score pool unless RAY_ADDRESS says otherwise (``auto`` would attach to any cluster on the machine), and
    no thread oversubscription."""
    import torch

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")
    env.setdefault("RAY_ADDRESS", "local")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    env.setdefault("PYTHONWARNINGS", "ignore")
    return env


def train_command(config: str, out: Path, overrides: list[str], ranks: int) -> list[str]:
    if ranks <= 1:
        return [
            sys.executable,
            "-m",
            "weaktok",
            "train",
            "--config",
            config,
            "--out",
            str(out),
            *overrides,
        ]
    deepspeed = Path(sys.executable).parent / "deepspeed"
    return [
        str(deepspeed) if deepspeed.exists() else "deepspeed",
        "--num_gpus",
        str(ranks),
        "--master_port",
        str(free_port()),
        "--module",
        "weaktok.train",
        "--config",
        config,
        "--out",
        str(out),
        *overrides,
    ]


def train_subprocess(
    config: str,
    out: str | Path,
    overrides: list[str],
    ranks: int = 1,
    prefix: str = "  ",
    on_line=None,
) -> float:
    """Train in a subprocess; echo its ``[weaktok]`` lines (progress, metrics URL), keep the full log in
    ``<out>/train.log``. Returns the wall seconds; raises TrainingFailed on a non-zero exit."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "train.log"
    cmd = train_command(config, out, overrides, ranks)
    t0 = time.time()
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=train_env(ranks),
        )
        for line in proc.stdout:
            log.write(line)
            if (
                "[weaktok]" in line or "Error" in line
            ):  # progress, the metrics URL, failures; the rest: the log
                print(prefix + line[max(0, line.find("[weaktok]")) :].rstrip(), flush=True)
            if on_line is not None:
                on_line(line)
        proc.wait()
    if proc.returncode != 0:
        tail = "".join(log_path.read_text().splitlines(keepends=True)[-40:])
        raise TrainingFailed(
            f"training exited with {proc.returncode} (full log: {log_path}):\n{tail}"
        )
    return time.time() - t0
