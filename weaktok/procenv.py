"""The environment a training process needs, in one place: DeepSpeed's accelerator, a rank's place in its world,
and what a launcher hands its training subprocesses.

The train loop reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain ``python`` process
without them would make DeepSpeed fall into MPI discovery (and fail on a missing mpi4py). DeepSpeed picks its
accelerator from DS_ACCELERATOR when it is imported, so that variable is set before ``import deepspeed``.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping, MutableMapping

RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def set_accelerator(env: MutableMapping[str, str], use_cuda: bool | None = None) -> str:
    """DS_ACCELERATOR's default: ``cuda`` when this process trains on a GPU (``use_cuda``; None: when torch sees
    one), else ``cpu``. A value already set wins. Returns the value in ``env``."""
    if use_cuda is None:
        import torch  # noqa: PLC0415 (heavy: launchers import this module before they start anything)

        use_cuda = torch.cuda.is_available()
    return env.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")


def single_process_env(env: Mapping[str, str]) -> dict[str, str]:
    """Rank 0 of a world of 1 on this machine; keeps whatever the caller already set (``{}``: set them all)."""
    return {
        "RANK": env.get("RANK", "0"),
        "WORLD_SIZE": env.get("WORLD_SIZE", "1"),
        "LOCAL_RANK": env.get("LOCAL_RANK", "0"),
        "MASTER_ADDR": env.get("MASTER_ADDR", "127.0.0.1"),
        "MASTER_PORT": env.get("MASTER_PORT", str(free_port())),
    }


def train_env(ranks: int, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for a training subprocess of ``ranks`` ranks on this machine: the parent's (``os.environ``)
    without its rank variables (the child's launcher sets them), DS_ACCELERATOR as ``set_accelerator``, the cores
    split between the ranks (no thread oversubscription) and no Python warnings. Ray: the child's L-Score pool
    follows weaktok/ray_cluster.py (RAY_ADDRESS if set, else a private local cluster)."""
    out = {k: v for k, v in (os.environ if env is None else env).items() if k not in RANK_VARS}
    set_accelerator(out)
    out.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // ranks)))
    out.setdefault("PYTHONWARNINGS", "ignore")
    return out
