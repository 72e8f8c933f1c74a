"""The distributed context, from the environment whichever launcher set (never from a launcher), and the few
collectives the loop uses. With one rank every collective is a no-op."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch


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
