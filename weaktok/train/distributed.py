"""The distributed context, from the environment whichever launcher set (never from a launcher), and the few
collectives the loop uses. With one rank every collective is a no-op."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

# DeepSpeed's CPU backend JIT-loads its shared-memory all-reduce op (``deepspeed_shm_comm``) in every process, and
# torch's loader holds a lock *file* in the op's build folder while it checks or builds (FileBaton: no owner pid, no
# timeout). A process killed inside that window leaves the file behind, and every later DeepSpeed start on the
# machine waits on it forever (seen here: a sweep SIGKILLed while a trial was starting wedged every later run).
# A check of an already built op takes ~1 s, a first build under a minute on 2 cores; older locks are stale.
STALE_LOCK_S = {"built": 30.0, "building": 900.0}


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(timeout_s: float | None = None) -> Dist:
    """Initialise torch.distributed through DeepSpeed from the launcher's environment variables.

    ``timeout_s`` bounds every collective (``train.dist_timeout_s``): a rank whose peer died or hangs raises after
    at most this long instead of waiting forever (gloo usually notices a dead peer's closed socket at once; a peer
    that is alive but stuck is only caught by the timeout). Where a launcher (Ray Train) already initialised the
    process group, that group and its timeout are kept."""
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise RuntimeError(f"environment lacks {', '.join(missing)}: start training with `weaktok train`, the "
                           "deepspeed launcher, cluster/launch_multinode.sh or ray_jobs/train.py")
    use_cuda = torch.cuda.is_available()
    os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_cuda else "cpu")
    os.environ.setdefault("LOCAL_RANK", "0")
    import deepspeed  # here, not at the top: DeepSpeed picks its accelerator from DS_ACCELERATOR when imported

    if not use_cuda:
        clear_stale_extension_lock("deepspeed_shm_comm")
    kwargs = {"timeout": timedelta(seconds=timeout_s)} if timeout_s else {}
    deepspeed.init_distributed(dist_backend="nccl" if use_cuda else "gloo", verbose=False, **kwargs)
    local_rank = int(os.environ["LOCAL_RANK"])
    if not use_cuda and "OMP_NUM_THREADS" not in os.environ:
        # ranks sharing a CPU node split its cores: oversubscribed OpenMP regions spin-wait on busy cores and
        # slow small kernels down by 10-100x (measured here: an AdamW step 0.01 s -> 1 s)
        per_node = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "1")))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, per_node)))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return Dist(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), local_rank, device)


def clear_stale_extension_lock(name: str, poll_s: float = 0.5) -> bool:
    """Wait out a live holder of torch's JIT build lock for extension ``name``; remove the lock once it is older
    than ``STALE_LOCK_S`` (no live process holds a lock that long). Returns whether a stale lock was removed.
    Hand-written: torch's FileBaton has neither an owner nor a timeout."""
    from torch.utils.cpp_extension import _get_build_directory

    folder = Path(_get_build_directory(name, verbose=False))
    lock = folder / "lock"
    while True:
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            return False
        built = any(folder.glob(f"{name}*.so"))
        if age > STALE_LOCK_S["built" if built else "building"]:
            try:
                lock.unlink()
            except FileNotFoundError:
                return False
            print(f"[weaktok] removed a stale torch extension lock {lock} ({age:.0f} s old: a process was killed "
                  "while loading DeepSpeed's CPU op)", flush=True)
            return True
        time.sleep(poll_s)


def all_reduce_sum(values: list[float], dist: Dist) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=dist.device)
    if dist.world > 1:
        torch.distributed.all_reduce(t)
    return t.tolist()


def broadcast_object(obj, dist: Dist):
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    if dist.world == 1:
        return obj
    box = [obj if dist.is_main else None]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def gather_objects(items: list, dist: Dist) -> list:
    """Every rank's ``items``, concatenated in rank order, on every rank."""
    if dist.world == 1:
        return items
    out: list = [None] * dist.world
    torch.distributed.all_gather_object(out, items)
    return [x for part in out for x in part]
