"""Tests for weaktok.lscore.pool: the Ray actor pool computing the exact L-Score.

One real local Ray cluster (num_cpus=2) is started for the whole module by the shared pool itself, so start-up
(Ray + actor warm-up) is paid once. Actors ask for 0.5 CPU each here so that a second, short-lived pool fits
beside the shared one on a 2-CPU cluster (production default: 1 CPU per actor).
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import librosa
import numpy as np
import pytest
import ray
import soundfile as sf
from threadpoolctl import threadpool_limits

from weaktok.audio import SONIC_PI_SAMPLES
from weaktok.lscore.exact import exact_lscore
from weaktok.lscore.pool import LScorePool, LScorePoolError
from weaktok.lscore.worker import click_clip

pytestmark = pytest.mark.slow

SR = 22050
SAMPLES = SONIC_PI_SAMPLES
LOOPS = ["loop_amen.flac", "loop_breakbeat.flac", "loop_industrial.flac"]


def load_loop(name: str) -> np.ndarray:
    """A sonic-pi loop as mono float32 at SR (soundfile + librosa.resample)."""
    y, sr = sf.read(SAMPLES / name, dtype="float32", always_2d=True)
    return librosa.resample(y.mean(axis=1), orig_sr=sr, target_sr=SR).astype(np.float32)


def dies_within(actor, seconds: float) -> bool:
    """True once ``actor`` is dead for good (ray.kill is asynchronous: the process may answer for a moment)."""
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            ray.get(actor.pid.remote(), timeout=seconds)
        except ray.exceptions.ActorDiedError:
            return True
        except ray.exceptions.RayActorError:  # unavailable: on its way down (or restarting)
            pass
        time.sleep(0.05)
    return False


def serial(clips) -> np.ndarray:
    """exact_lscore clip by clip in this process, with BLAS on one thread as in a Ray worker (OMP_NUM_THREADS=1).

    With 2 BLAS threads the float32 chroma matmul sums in another order and L_S moves by ~1e-7 relative; on one
    thread each side the pool's numbers are bit-identical to these.
    """
    with threadpool_limits(1):
        return np.stack([exact_lscore(y, SR) for y in clips])


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    """12 clips of varied length: real loops, clicks, noise, near-silence, a sub-frame clip and an empty one."""
    rng = np.random.default_rng(0)
    loops = [load_loop(n) for n in LOOPS if (SAMPLES / n).exists()]
    synth = [
        click_clip(SR, 2.0),
        click_clip(SR, 0.5),
        (0.3 * rng.standard_normal(SR)).astype(np.float32),  # 1 s white noise
        (1e-5 * rng.standard_normal(SR // 3)).astype(
            np.float32
        ),  # near-silence (below the -60 dBFS gate)
        np.sin(2 * np.pi * 440 * np.arange(int(1.5 * SR)) / SR).astype(np.float32),
        (0.5 * rng.standard_normal(1000)).astype(np.float32),  # shorter than one frame
        np.zeros(0, np.float32),
    ]
    out = loops + synth
    while len(out) < 12:  # without sonic-pi samples: more clicks with distinct lengths
        out.append(click_clip(SR, 0.7 + 0.3 * len(out)))
    return out[:12]


@pytest.fixture(scope="module")
def heavy() -> list[np.ndarray]:
    """8 clips of 4 s (a real loop tiled): a batch that takes a few hundred ms to score."""
    base = (
        load_loop("loop_amen_full.flac")
        if (SAMPLES / "loop_amen_full.flac").exists()
        else click_clip(SR, 2.0)
    )
    y = np.tile(base, 1 + 4 * SR // len(base))[: 4 * SR]
    return [np.roll(y, 997 * i) for i in range(8)]


@pytest.fixture(scope="module")
def pool():
    """The shared pool; it starts the module's Ray cluster itself, so its close() must also shut Ray down."""
    was_up = ray.is_initialized()
    for attempt in (1, 2):
        try:
            p = LScorePool(
                num_actors=2,
                max_in_flight=3,
                max_retries=2,
                address="local",
                num_cpus=2,
                num_cpus_per_actor=0.5,
                niceness=0,
                task_timeout_s=60,
                startup_timeout_s=120,
            )
            break
        except Exception as e:  # Ray gives its raylet a fixed 30 s to register; a loaded shared machine can miss it
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
    assert p.started_ray == (not was_up)
    yield p
    p.close()
    assert ray.is_initialized() == was_up  # it shut down exactly what it started


def test_map_equals_serial_in_order(pool, clips):
    lengths = [len(y) for y in clips]
    assert len(set(lengths)) == len(lengths)  # all different, so a reordering cannot go unnoticed
    got = pool.map(clips, SR, batch_size=2)
    want = serial(clips)
    assert got.shape == (12, 4)
    np.testing.assert_array_equal(got, want)  # bit-identical (see serial)
    np.testing.assert_array_equal(pool.map(clips, SR), want)  # default batching
    assert pool.map([], SR).shape == (0, 4)
    batch = np.stack([y[: SR // 2] for y in clips[:2]])  # (N, T) array input
    np.testing.assert_array_equal(pool.map(batch, SR), serial(batch))
    assert pool.latency_s_per_clip > 0
    assert ray.get([a.niceness.remote() for a in pool.actors], timeout=60) == [
        0,
        0,
    ]  # Ray's default would be 15
    with pytest.raises(
        ValueError, match="NaN"
    ):  # a bad clip is the caller's error: raised as is, not retried
        pool.map([clips[0], np.full(3000, np.nan, np.float32)], SR)
    assert pool.replaced == 0


def test_submit_returns_at_once_and_poll_gives_results(pool, heavy, clips):
    want = serial(heavy[:2])
    t0 = time.perf_counter()
    ref = pool.submit(heavy, SR, tag="step-7")
    submit_s = time.perf_counter() - t0
    assert ref is not None
    assert submit_s < 0.1, submit_s
    assert ray.wait([ref], timeout=0)[0] == []  # the work is still running...
    assert pool.poll() == []  # ...and poll does not wait for it
    assert pool.queue_depth == 1
    ((tag, got),) = pool.drain()
    assert tag == "step-7"
    np.testing.assert_allclose(got[:2], want, rtol=1e-12)
    assert pool.queue_depth == 0 and pool.poll() == []
    # a second submit fetched with ray.get directly: same numbers; poll still hands it back once
    ref = pool.submit(clips[:3], SR)
    np.testing.assert_allclose(ray.get(ref, timeout=60), serial(clips[:3]), rtol=1e-12)
    assert [len(r) for _, r in pool.drain()] == [3]
    s = pool.stats()
    assert s["worker_s_per_clip"] > 0 and s["turnaround_s_per_clip"] >= s["worker_s_per_clip"]


def test_backpressure_bounds_in_flight(pool, heavy):
    assert pool.max_in_flight == 3
    dropped0 = pool.dropped
    refs = [
        pool.submit(heavy, SR, tag=i) for i in range(6)
    ]  # each batch takes far longer than a submit
    accepted = [i for i, r in enumerate(refs) if r is not None]
    assert accepted == [0, 1, 2]
    assert pool.dropped - dropped0 == 3
    assert pool.queue_depth <= 3
    t0 = time.perf_counter()
    assert (
        pool.submit(heavy[:1], SR, tag="blocking", block=True) is not None
    )  # waits for a slot instead
    assert time.perf_counter() - t0 > 0.01
    assert pool.queue_depth <= 3
    results = pool.drain()
    assert [t for t, _ in results] == [0, 1, 2, "blocking"]
    want = serial(heavy[:1])
    for _, got in results:
        np.testing.assert_allclose(got[:1], want, rtol=1e-12)


def test_actor_killed_mid_map_still_returns_everything_in_order(pool, heavy, clips):
    work = heavy * 12 + clips  # 108 clips: >= 0.5 s of scoring even on an idle machine
    want = serial(heavy + clips)
    victim = pool.actors[0]
    pid_before = ray.get(victim.pid.remote(), timeout=60)
    with ThreadPoolExecutor(1) as ex:
        fut = ex.submit(pool.map, work, SR, 2)
        time.sleep(0.1)
        assert not fut.done()
        ray.kill(victim, no_restart=False)  # Ray restarts it and re-sends its queued batches
        got = fut.result(timeout=120)
    assert got.shape == (len(work), 4)
    np.testing.assert_allclose(got[:8], want[:8], rtol=1e-12)
    np.testing.assert_allclose(got[-len(clips) :], want[8:], rtol=1e-12)
    np.testing.assert_allclose(got[:96], np.tile(want[:8], (12, 1)), rtol=1e-12)
    assert pool.actors[0] is victim  # the same actor, restarted, not replaced
    assert ray.get(victim.pid.remote(), timeout=60) != pid_before
    assert pool.replaced == 0


@pytest.fixture(scope="module")
def spare(pool):
    """A second, 1-actor pool on the module's Ray (made on first use, made again if a test closed it).

    Shared so its start-up (actor import + JIT) is paid once by the two tests that need a pool of their own.
    """
    box: list[LScorePool] = []

    def get() -> LScorePool:
        if not box or not box[0].actors:
            box[:] = [
                LScorePool(num_actors=1, max_retries=1, num_cpus_per_actor=0.5, task_timeout_s=60)
            ]
        return box[0]

    yield get
    if box:
        box[0].close()


def test_actor_dying_beyond_retries_raises_not_hangs(spare, heavy):
    """The spare pool's one actor is killed max_retries + 1 times during a map: LScorePoolError, then recovery."""
    p = spare()
    assert not p.started_ray and p.max_retries == 1
    victim = p.actors[0]
    replaced0 = p.replaced
    stop = threading.Event()
    killed: list[int] = []  # pids of the incarnations killed so far

    def new_incarnation() -> bool:
        """Wait until the victim answers from a process not yet killed (ray.kill is asynchronous: right after it,
        the old process may still answer). False once it is dead for good."""
        while not stop.is_set():
            try:
                if ray.get(victim.pid.remote(), timeout=60) not in killed:
                    return True
            except ray.exceptions.ActorUnavailableError:  # between death and restart
                pass
            except ray.exceptions.RayActorError:
                return False
            time.sleep(0.05)
        return False

    def keep_killing():
        for _ in range(p.max_retries + 1):
            if not new_incarnation():
                return
            killed.append(ray.get(victim.pid.remote(), timeout=60))
            ray.kill(victim, no_restart=False)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(1) as ex:
        killer = ex.submit(keep_killing)
        with pytest.raises(LScorePoolError, match="died more than max_retries"):
            p.map(heavy * 20, SR, batch_size=4)
        stop.set()
        killer.result(timeout=60)
    assert len(killed) == p.max_retries + 1
    assert time.perf_counter() - t0 < 60
    assert p.replaced == replaced0 + 1 and p.actors[0] is not victim
    np.testing.assert_allclose(
        p.map(heavy[:1], SR), serial(heavy[:1]), rtol=1e-12
    )  # the pool recovered


def test_close_shuts_down_only_what_it_started(pool, spare):
    other = spare()  # a pool that found Ray already running
    actor = other.actors[0]
    assert not other.started_ray
    other.close()
    other.close()  # idempotent
    assert ray.is_initialized()  # the module's cluster is still up...
    assert dies_within(actor, 30)  # ...but the pool's own actor is gone
    assert pool.map([click_clip(SR, 0.5)], SR).shape == (1, 4)  # and the shared pool is untouched
    # the started-Ray case is checked when the `pool` fixture closes: Ray must then be down
