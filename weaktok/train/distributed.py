"""The distributed context, from the environment whichever launcher set (never from a launcher), and the few
collectives the loop uses. With one rank every collective is a no-op."""

from __future__ import annotations

import fcntl
import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch

from weaktok.config.errors import missing_extra
from weaktok.log import ALL_RANKS
from weaktok.procenv import set_accelerator

log = logging.getLogger(__name__)

# DeepSpeed's CPU backend JIT-loads its shared-memory all-reduce op (``deepspeed_shm_comm``) in every process, and
# torch's loader holds a lock *file* in the op's build folder while it checks or builds (FileBaton: no owner, no
# timeout). A process killed inside that window leaves the file behind, and every later DeepSpeed start on the
# machine waited on it forever (seen here: a sweep SIGKILLed while a trial was starting wedged every later run).
# So weaktok loads the op itself, first, under an flock the kernel releases when its holder dies: holding it, a
# torch lock file can only be a dead process' leftover. (Age is no test: a real rebuild can hold it for minutes.)
FLOCK_NAME = "weaktok.flock"


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
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise RuntimeError(
            f"environment lacks {', '.join(missing)}: start training with `weaktok train`, the "
            "deepspeed launcher, cluster/launch_multinode.sh or ray_jobs/train.py"
        )
    use_cuda = torch.cuda.is_available()
    set_accelerator(os.environ, use_cuda)
    os.environ.setdefault("LOCAL_RANK", "0")
    # here, not at the top: DeepSpeed picks its accelerator from DS_ACCELERATOR when imported
    try:
        import deepspeed  # noqa: PLC0415
    except ImportError as e:
        raise missing_extra("train", "training (the DeepSpeed engine)", e) from e

    if not use_cuda:
        load_cpu_comm_op()
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


def guarded_jit_load(build_dir: str | Path, load):
    """Run ``load()`` (a torch JIT extension load whose build folder is ``build_dir``) holding an exclusive flock on
    ``build_dir/weaktok.flock``; a torch ``lock`` file found while holding it is a killed loader's and is removed.
    Hand-written: torch's FileBaton cannot tell a live holder from a dead one."""
    folder = Path(build_dir)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / FLOCK_NAME, "a") as f:
        fcntl.flock(
            f, fcntl.LOCK_EX
        )  # waits for a live loader; a dead one's flock is gone with its process
        try:
            stale = folder / "lock"
            if stale.exists():
                stale.unlink()
                log.info(
                    f"removed a stale torch extension lock {stale} (left by a process killed while "
                    "loading the op)",
                    extra=ALL_RANKS,
                )
            return load()
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_cpu_comm_op() -> None:
    """Load DeepSpeed's CPU shared-memory comm op before ``init_distributed`` does (it then finds it loaded), under
    ``guarded_jit_load``. Nothing happens where DeepSpeed would not use the op."""
    # here, not at the top: DeepSpeed picks its accelerator from DS_ACCELERATOR when imported (setup_distributed
    # sets it first), and torch's extension builder is only needed for this op
    import deepspeed.ops  # noqa: PLC0415
    from deepspeed.accelerator import get_accelerator  # noqa: PLC0415
    from torch.utils.cpp_extension import _get_build_directory  # noqa: PLC0415

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return
    guarded_jit_load(_get_build_directory(builder.NAME, verbose=False), builder.load)


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
