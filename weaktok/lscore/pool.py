"""Exact L-Score on a pool of Ray actors: ordered ``map`` for evaluation, non-blocking ``submit``/``poll`` for training.

    with LScorePool() as pool:                      # attach to a running Ray cluster, or start one sized to the machine
        L = pool.map(clips, sr=22050)                # (N, 4) in input order, equal to exact_lscore on each clip
        ref = pool.submit(batch, 22050, tag=step)    # returns at once; None (and counted in .dropped) when full
        for tag, L in pool.poll():                   # finished batches only, never waits
            ...

What Ray gives us, used as is:
  * actors: one process per core, each importing librosa once (warm-up at start-up);
  * fault tolerance: ``max_restarts`` restarts a dead actor (re-running its warm-up) and ``max_task_retries``
    re-sends the batches it held, so a killed actor costs time, not results;
  * the object store: each batch is ``ray.put`` once; a retried task reuses the same object;
  * ``ray.wait``/``ray.get`` with timeouts, so nothing here can hang.

What is hand-written, and why:
  * scheduling: least-loaded dispatch keeping up to ``window`` batches queued per actor. ``ray.util.ActorPool``
    runs one task per actor (the actor idles while each result travels back and the next batch is sent), its
    ``get_next(timeout=...)`` drops a timed-out task but returns its actor as if idle (a TODO in
    ray/util/actor_pool.py), and it has no tags or bound for a training loop;
  * backpressure: Ray queues actor calls without limit, so ``submit`` bounds unfinished batches at ``max_in_flight``;
  * give-up policy: an actor that dies more than ``max_retries`` times stays dead (Ray's ``max_restarts``); the call
    that meets it raises :class:`LScorePoolError` and the pool spawns a replacement, so a long run keeps scoring;
  * latency stats: the worker times each batch (wall and CPU, a second return value); the pool keeps a window;
  * start-up errors: an actor that dies while warming up (a segfault, an import error) is reported as one
    LScorePoolError naming the cause and the fix, not as Ray's raw actor-death text.

Not thread-safe: drive one pool from one thread (the trainer's).
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from weaktok.config.errors import missing_extra

try:
    import ray
    from ray.exceptions import GetTimeoutError
except ImportError as e:
    raise missing_extra("ray", "the exact L-Score pool", e) from e

from weaktok.lscore.worker import (
    ACTOR_GONE,
    LScoreWorker,
    as_clips,
    describe_actor_death,
    warmup_death_message,
)
from weaktok.ray_cluster import connect_ray


class LScorePoolError(RuntimeError):
    """The pool gave up: an actor died more than ``max_retries`` times, or nothing finished within the timeout."""


@dataclass
class _Batch:
    tag: Any  # the caller's tag (submit) or the index of the batch's first clip (map)
    stats_ref: ray.ObjectRef  # the worker's (wall, CPU) seconds for this batch
    actor: Any  # the actor handle it was sent to (to replace exactly that one if it died)
    slot: int  # its index in the pool
    n: int  # clips in the batch
    t0: float  # perf_counter at dispatch


class LScorePool:
    """Exact L-Score on ``num_actors`` warm Ray actors.

    num_actors: default = CPUs currently available to Ray (at least 1); one actor per core is the sweet spot.
    max_in_flight: bound on unfinished ``submit`` batches (default 2 per actor).
    max_retries: restarts allowed per actor, and re-sends per batch, before LScorePoolError.
    address: None = RAY_ADDRESS if set, else start a local cluster; "local" = always start one; "auto" or
             "host:port" = attach (weaktok/ray_cluster.py).
    num_cpus: size of a cluster we start (default os.cpu_count()); ignored when attaching.
    num_cpus_per_actor: Ray CPU request per actor (1 by default; lower only to pack actors, e.g. in tests).
    niceness: the actors' Unix niceness. None keeps Ray's default (RAY_worker_niceness = 15: the actors yield the
        CPU to the trainer and other nice-0 processes, right for training beside the model); 0 competes as an
        equal (evaluation, benchmarks against a nice-0 baseline). Set through Ray's runtime_env.
    window: batches queued per actor during ``map`` (2 keeps each actor busy while a result travels back).
    task_timeout_s: the longest we wait for any batch to finish (covers an actor restart + warm-up).
    startup_timeout_s: the longest we wait for the actors to be scheduled and warm.
    ray_init_kwargs: extra ``ray.init`` arguments (e.g. ``logging_level``), used only if we connect or start Ray.

    After construction: ``started_ray`` (close() shuts Ray down only if True), ``connect_s`` (ray.init),
    ``warmup_s`` (per actor: import + first call) and ``startup_s`` (the whole constructor, actors warm).
    """

    def __init__(
        self,
        num_actors: int | None = None,
        max_in_flight: int | None = None,
        max_retries: int = 3,
        address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_cpus_per_actor: float = 1.0,
        niceness: int | None = None,
        window: int = 2,
        task_timeout_s: float = 120.0,
        startup_timeout_s: float = 300.0,
        stats_window: int = 100,
        ray_init_kwargs: dict | None = None,
    ):
        t0 = time.perf_counter()
        self.started_ray = connect_ray(address, num_cpus, **(ray_init_kwargs or {}))
        self.connect_s = time.perf_counter() - t0
        self.max_retries, self.window = max_retries, window
        self.task_timeout_s, self.num_cpus_per_actor = task_timeout_s, num_cpus_per_actor
        self._env = (
            None if niceness is None else {"env_vars": {"RAY_worker_niceness": str(niceness)}}
        )
        self._actors: list = []
        self._pending: dict[ray.ObjectRef, _Batch] = {}  # submitted, not yet returned by poll
        self._finished: set[ray.ObjectRef] = set()  # the subset of _pending known to be done
        self._carry: list[
            tuple[Any, np.ndarray]
        ] = []  # results a failing poll() could not hand back
        self._recent: deque = deque(
            maxlen=stats_window
        )  # (worker wall s, CPU s, turnaround s, clips)
        self._next_tag = 0
        self.submitted = self.dropped = self.replaced = self.clips_scored = 0
        self._closed = False
        try:
            n = num_actors or max(1, int(ray.available_resources().get("CPU", 1)))
            self.max_in_flight = max_in_flight or 2 * n
            self._actors = [self._spawn() for _ in range(n)]
            self.warmup_s = self._wait_ready(startup_timeout_s)
        except BaseException:
            self.close()
            raise
        self.startup_s = time.perf_counter() - t0

    # ----------------------------------------------------------------------------------------------------------
    # actors

    def _spawn(self):
        return LScoreWorker.options(
            num_cpus=self.num_cpus_per_actor,
            max_restarts=self.max_retries,
            max_task_retries=self.max_retries,
            runtime_env=self._env,
        ).remote()

    def _wait_ready(self, timeout: float) -> list[float]:
        """Block until every actor is warm; returns each one's warm-up seconds.

        LScorePoolError if one dies while warming up (the first death is reported as soon as it is known, with its
        cause and the fix: see warmup_death_message) or if they are not all warm within ``timeout`` (no room).
        """
        slot_of = {a.ready.remote(): i for i, a in enumerate(self._actors)}
        warm = [0.0] * len(self._actors)
        deadline = time.perf_counter() + timeout
        while slot_of:
            done, _ = ray.wait(
                list(slot_of), num_returns=1, timeout=max(0.0, deadline - time.perf_counter())
            )
            if not done:
                raise LScorePoolError(
                    f"{len(slot_of)} of {len(self._actors)} L-Score actors not warm after "
                    f"{timeout:.0f} s; free Ray resources: {ray.available_resources()}"
                )
            for ref in done:
                slot = slot_of.pop(ref)
                try:
                    warm[slot] = ray.get(ref)
                except ACTOR_GONE as e:
                    raise LScorePoolError(warmup_death_message(slot, e)) from e
        return warm

    def _replace(self, b: _Batch) -> None:
        """Swap in a fresh actor for one that is dead for good (once, however many of its batches report it)."""
        if b.slot < len(self._actors) and self._actors[b.slot] is b.actor:
            ray.kill(b.actor, no_restart=True)
            self._actors[b.slot] = self._spawn()
            self.replaced += 1

    @property
    def actors(self) -> list:
        """The actor handles (for monitoring, and for tests that kill them)."""
        return list(self._actors)

    @property
    def num_actors(self) -> int:
        return len(self._actors)

    # ----------------------------------------------------------------------------------------------------------
    # dispatch and collection, shared by map and submit

    def _dispatch(
        self, slot: int, clips: list[np.ndarray], sr: int, tag: Any
    ) -> tuple[ray.ObjectRef, _Batch]:
        actor = self._actors[slot]
        ref, stats_ref = actor.score.remote(
            ray.put(clips), sr
        )  # put once: a retried task reuses the object
        return ref, _Batch(tag, stats_ref, actor, slot, len(clips), time.perf_counter())

    def _collect(self, ref: ray.ObjectRef, b: _Batch) -> np.ndarray:
        """The (n, 4) scores of a finished batch; LScorePoolError if its actor is dead for good."""
        try:
            scores, secs = ray.get([ref, b.stats_ref], timeout=self.task_timeout_s)
        except ACTOR_GONE as e:
            self._replace(b)
            raise LScorePoolError(
                f"L-Score actor {b.slot} died more than max_retries={self.max_retries} times "
                f"(batch tag {b.tag!r}, {b.n} clips); it has been replaced. Last death: "
                f"{describe_actor_death(e)}"
            ) from e
        except GetTimeoutError as e:
            raise LScorePoolError(
                f"batch tag {b.tag!r} not back after {self.task_timeout_s:.0f} s"
            ) from e
        self._recent.append((*secs, time.perf_counter() - b.t0, b.n))
        self.clips_scored += b.n
        return scores

    def _wait_any(
        self, refs: list[ray.ObjectRef], timeout: float | None = None
    ) -> list[ray.ObjectRef]:
        """At least one finished ref among ``refs``; LScorePoolError instead of waiting forever."""
        timeout = self.task_timeout_s if timeout is None else timeout
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout, fetch_local=False)
        if not ready:
            raise LScorePoolError(
                f"none of {len(refs)} L-Score batches finished within {timeout:.0f} s"
            )
        return ready

    # ----------------------------------------------------------------------------------------------------------
    # ordered, blocking: evaluation

    def map(
        self, waveforms: list[np.ndarray] | np.ndarray, sr: int, batch_size: int | None = None
    ) -> np.ndarray:
        """Score every clip; (N, 4) float64 in input order, equal to ``exact_lscore`` clip by clip.

        Clips go out in batches (default: about 4 per actor, so unequal lengths still balance), each to the actor
        with the fewest queued batches, at most ``window`` queued per actor. A batch lost to an actor restart is
        re-sent by Ray; an actor dead for good raises LScorePoolError.
        """
        clips = as_clips(waveforms)
        out = np.zeros((len(clips), 4))
        if not clips:
            return out
        bs = batch_size or max(1, math.ceil(len(clips) / (4 * self.num_actors)))
        todo = deque(range(0, len(clips), bs))  # first clip index of each batch not yet sent
        inflight: dict[ray.ObjectRef, _Batch] = {}
        load = [0] * self.num_actors
        while todo or inflight:
            while todo and min(load) < self.window:
                slot = load.index(min(load))
                start = todo.popleft()
                ref, b = self._dispatch(slot, clips[start : start + bs], sr, tag=start)
                inflight[ref], load[slot] = b, load[slot] + 1
            for ref in self._wait_any(list(inflight)):
                b = inflight.pop(ref)
                load[b.slot] -= 1
                out[b.tag : b.tag + b.n] = self._collect(ref, b)
        return out

    # ----------------------------------------------------------------------------------------------------------
    # non-blocking with backpressure: training

    def submit(
        self,
        waveforms: list[np.ndarray] | np.ndarray,
        sr: int,
        tag: Any = None,
        *,
        block: bool = False,
    ) -> ray.ObjectRef | None:
        """Send one batch to the least-busy actor and return its ObjectRef at once ((n, 4) scores when done).

        At most ``max_in_flight`` submitted batches may be unfinished. When full: ``block=False`` (the training
        default) returns None and counts it in ``dropped`` (the step goes on without that L-Score sample);
        ``block=True`` waits for a batch to finish, at most ``task_timeout_s``, then raises LScorePoolError.
        ``tag`` (default: a running number) comes back with the result from ``poll``. Fetch results either with
        ``poll``/``drain`` or with ``ray.get(ref)``; ``poll`` hands each batch back once whichever you use.
        """
        unfinished = self._unfinished()
        if len(unfinished) >= self.max_in_flight:
            if not block:
                self.dropped += 1
                return None
            self._wait_any(unfinished)
        if tag is None:
            tag = self._next_tag
        self._next_tag += 1
        busy = [0] * self.num_actors
        for r, b in self._pending.items():
            busy[b.slot] += r not in self._finished
        ref, b = self._dispatch(busy.index(min(busy)), as_clips(waveforms), sr, tag)
        self._pending[ref] = b
        self.submitted += 1
        return ref

    def _unfinished(self) -> list[ray.ObjectRef]:
        """Submitted refs not yet done (asks Ray without waiting, then remembers what it learnt)."""
        todo = [r for r in self._pending if r not in self._finished]
        if todo:
            ready, _ = ray.wait(todo, num_returns=len(todo), timeout=0, fetch_local=False)
            self._finished.update(ready)
        return [r for r in todo if r not in self._finished]

    def poll(self) -> list[tuple[Any, np.ndarray]]:
        """Finished submitted batches as (tag, (n, 4) scores), in submission order; never waits.

        A batch whose actor died for good raises LScorePoolError (the actor is replaced); results already
        collected in that call are kept and returned by the next poll.
        """
        self._unfinished()
        out, self._carry = self._carry, []
        for ref in [r for r in self._pending if r in self._finished]:
            b = self._pending.pop(ref)
            self._finished.discard(ref)
            try:
                out.append((b.tag, self._collect(ref, b)))
            except BaseException:
                self._carry = out
                raise
        return out

    def drain(self, timeout: float | None = None) -> list[tuple[Any, np.ndarray]]:
        """Wait (at most ``timeout``, default ``task_timeout_s`` per batch) for every submitted batch; poll them all."""
        while todo := self._unfinished():
            self._wait_any(todo, timeout)
        return self.poll()

    # ----------------------------------------------------------------------------------------------------------
    # metrics

    @property
    def queue_depth(self) -> int:
        """Submitted batches not finished yet (finished-but-unpolled ones do not count: they hold no work)."""
        return len(self._unfinished())

    def _per_clip(self, field: int) -> float:
        """Mean of one ``_recent`` field per clip over the recent batches (nan before the first)."""
        n = sum(r[-1] for r in self._recent)
        return sum(r[field] for r in self._recent) / n if n else float("nan")

    @property
    def latency_s_per_clip(self) -> float:
        """Mean worker wall seconds per clip over the last ``stats_window`` batches (nan before the first)."""
        return self._per_clip(0)

    def stats(self) -> dict[str, float]:
        """Numbers for the metrics endpoint: queue, drops, replacements and recent per-clip latency.

        worker_s_per_clip: wall time inside the actor; worker_cpu_s_per_clip: its CPU time (much lower: the actors
        are starved of cores); turnaround_s_per_clip: dispatch to collection, queueing and polling delay included.
        """
        return {
            "num_actors": self.num_actors,
            "queue_depth": self.queue_depth,
            "max_in_flight": self.max_in_flight,
            "submitted": self.submitted,
            "dropped": self.dropped,
            "replaced_actors": self.replaced,
            "clips_scored": self.clips_scored,
            "worker_s_per_clip": self._per_clip(0),
            "worker_cpu_s_per_clip": self._per_clip(1),
            "turnaround_s_per_clip": self._per_clip(2),
        }

    # ----------------------------------------------------------------------------------------------------------
    # lifetime

    def close(self) -> None:
        """Kill our actors; shut Ray down only if this pool started it. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if ray.is_initialized():
            for a in self._actors:
                try:
                    ray.kill(a, no_restart=True)
                except Exception:  # already gone
                    pass
        self._actors, self._pending, self._finished = [], {}, set()
        if self.started_ray and ray.is_initialized():
            ray.shutdown()

    def __enter__(self) -> LScorePool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
