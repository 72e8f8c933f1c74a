"""Environment helpers shared by the thin launchers (``weaktok train``, Ray Train, tests).

The train loop reads RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT; a plain ``python`` process
without them would make DeepSpeed fall into MPI discovery (and fail on a missing mpi4py).
"""

from __future__ import annotations

import socket
from collections.abc import Mapping


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
