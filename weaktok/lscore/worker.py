"""The L-Score actor: one Ray worker process scoring clips with ``exact_lscore``, warmed once at start; the clips
it takes (``as_clips``) and the one-line diagnosis of an actor that died (its warm-up raised, or its process died
outright). The pool that schedules batches over these actors: weaktok/lscore/pool.py."""

from __future__ import annotations

import importlib.util
import os
import re
import time

import numpy as np

from weaktok.config.errors import missing_extra

try:
    import ray
    from ray.exceptions import ObjectLostError, RayActorError, WorkerCrashedError
except ImportError as e:
    raise missing_extra("ray", "the exact L-Score pool", e) from e

WARMUP_SR = 22050
# what an actor's death looks like to its caller (system failures; errors raised by a task pass through)
ACTOR_GONE = (RayActorError, ObjectLostError, WorkerCrashedError)


def click_clip(sr: int = WARMUP_SR, seconds: float = 1.0) -> np.ndarray:
    """A short synthetic clip (4 clicks/s over faint noise) that runs every code path of exact_lscore."""
    y = 0.01 * np.random.default_rng(0).standard_normal(int(sr * seconds))
    y[:: sr // 4] += 1.0
    return y.astype(np.float32)


def as_clips(waveforms: list[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """A list of clips, or one clip (1-D), or a batch (N, T) -> list of contiguous float32 1-D arrays.

    float32 is what exact_lscore computes in anyway, so converting here halves the bytes sent and changes nothing.
    """
    if isinstance(waveforms, np.ndarray):
        if waveforms.ndim > 2:
            raise ValueError(f"expected a clip (T,) or a batch (N, T), got shape {waveforms.shape}")
        waveforms = [waveforms] if waveforms.ndim == 1 else list(waveforms)
    return [np.ascontiguousarray(y, dtype=np.float32).reshape(-1) for y in waveforms]


@ray.remote(num_cpus=1)
class LScoreWorker:
    """One process scoring clips with ``exact_lscore``; warmed once at start so later calls run at full speed."""

    def __init__(self, warmup_sr: int = WARMUP_SR):
        t0 = time.perf_counter()
        # librosa: only the actor needs it (the driver never does), and its import is part of the warm-up timed here
        from weaktok.lscore.exact import exact_lscore  # noqa: PLC0415

        self._score = exact_lscore
        # Importing librosa compiles its numba kernels where numba's on-disk cache is empty (~20 s of CPU) or loads
        # them (~2 s); none of them runs in exact_lscore (weaktok/lscore/peaks.py). One call on a click clip then
        # pays every other first-call cost.
        exact_lscore(click_clip(warmup_sr), warmup_sr)
        self.warmup_s = time.perf_counter() - t0

    def ready(self) -> float:
        """Seconds the import and warm-up took (the call returns only once the actor is warm)."""
        return self.warmup_s

    def pid(self) -> int:
        return os.getpid()

    def niceness(self) -> int:
        return os.nice(0)

    @ray.method(num_returns=2)
    def score(self, clips: list[np.ndarray], sr: int) -> tuple[np.ndarray, tuple[float, float]]:
        """clips -> ((n, 4) float64 scores, (wall seconds, CPU seconds) spent scoring).

        CPU well below wall means the actor is starved of its core (e.g. by the trainer or other jobs).
        """
        t0, c0 = time.perf_counter(), time.thread_time()
        out = np.stack([self._score(y, sr) for y in clips]) if clips else np.zeros((0, 4))
        return out, (time.perf_counter() - t0, time.thread_time() - c0)


def numba_cache_hint() -> str:
    """Where librosa's numba cache files live on this machine (without importing librosa)."""
    if os.environ.get("NUMBA_CACHE_DIR"):
        return f"the *.nbi/*.nbc files under NUMBA_CACHE_DIR={os.environ['NUMBA_CACHE_DIR']}"
    spec = importlib.util.find_spec("librosa")
    where = (
        spec.submodule_search_locations[0]
        if spec and spec.submodule_search_locations
        else "librosa/"
    )
    return f"librosa's numba cache: find {where} -name '*.nb[ic]' -delete"


def describe_actor_death(e: BaseException) -> str:
    """Ray's actor-death error -> one line: what killed the actor's process (the full text stays chained)."""
    msg = str(getattr(e, "error_msg", "") or e)
    pid = re.search(r"\bpid[:=] ?(\d+)", msg)
    where = (
        f" (pid {pid.group(1)}; its stderr: logs/worker-*-{pid.group(1)}.err in Ray's session dir)"
        if pid
        else ""
    )
    if getattr(e, "actor_init_failed", False):
        lines = [line.strip() for line in msg.splitlines() if line.strip()]
        return f"its warm-up raised {lines[-1] if lines else type(e).__name__}{where}"
    return f"its process died without a Python exception (a segfault, os._exit or the OOM killer){where}"


def warmup_death_message(slot: int, e: BaseException) -> str:
    """The LScorePoolError text for actor ``slot`` dying while it imports librosa and scores a click clip."""
    head = (
        f"L-Score actor {slot} died while warming up (importing weaktok.lscore.exact and scoring a click clip): "
        f"{describe_actor_death(e)}."
    )
    if getattr(e, "actor_init_failed", False):
        return f"{head} Fix that error on the node (a missing or broken package?) and start again."
    return (
        f"{head} A segfault there most likely means numba's on-disk cache is poisoned (numba issue #10128: "
        f"cached GUFuncs compiled by several processes at once): delete {numba_cache_hint()} on that node and "
        f"start again."
    )
