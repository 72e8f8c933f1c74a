"""weaktok.lscore.peaks: bit-for-bit equal to librosa's peak picking, and why it exists (numba issue #10128).

The reference is librosa itself, with one precaution: its ``__peak_pick`` kernel is compiled afresh in this
process (``cache=False``, same Python source, same signatures) and put in place of the one loaded from numba's
on-disk cache. The cached one may itself be poisoned on this machine (the very bug this module works around) and
would take the whole test process down with a segfault. ``test_exact_lscore_survives_a_poisoned_numba_cache``
compares against the untouched librosa, in a subprocess with a fresh cache.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import librosa
import numpy as np
import pytest
import ray

from tests.helpers import REPO
from weaktok.lscore.calibrate import SAMPLES_DIR, real_loops
from weaktok.lscore.exact import HOP, N_FFT, onset_times, power_spectrogram
from weaktok.lscore.peaks import onset_detect, peak_pick
from weaktok.lscore.pool import LScorePool, LScorePoolError

SR = 22050


def envelopes() -> list[tuple[np.ndarray, dict]]:
    """2700 (x, peak_pick kwargs) cases from a seeded rng: random, quantised (ties and exact mean + delta
    near-ties), rounded (plateaus), constant and step envelopes; lengths 1..1000; float32 and float64; windows
    from 0 to wider than the array, wait 0..5, fractional parameters (librosa rounds them up).
    """
    rng = np.random.default_rng(0)
    cases = []
    for i in range(2700):
        T = int(rng.choice([1, 2, 3, 4, 5, 7, 10, 31, 100, 1000]))
        kind = i % 5
        if kind == 0:
            x = rng.random(T)
        elif kind == 1:
            x = rng.integers(0, 5, T) * 0.1
        elif kind == 2:
            x = np.round(rng.random(T), 1)
        elif kind == 3:
            x = np.full(T, rng.integers(0, 3) * 0.5)
        else:
            x = np.repeat(rng.random(T), rng.integers(1, 4))[:T]
        x = x.astype([np.float32, np.float64][(i // 5) % 2])
        kw = dict(
            pre_max=int(rng.integers(0, 7)),
            post_max=int(rng.integers(1, 7)),
            pre_avg=int(rng.integers(0, 13)),
            post_avg=int(rng.integers(1, 13)),
            delta=float(rng.choice([0.0, 0.07, 0.1, 0.2, 0.3])),
            wait=int(rng.integers(0, 6)),
        )
        if i % 97 == 0:
            kw.update(pre_max=1.5, post_avg=2.2, wait=0.5)  # fractional: both round up
        if i % 89 == 0:
            kw.update(pre_avg=2 * T, post_avg=2 * T + 1)  # windows wider than the array
        cases.append((x, kw))
    return cases


def test_peak_pick_equals_librosa(librosa_reference):
    cases = envelopes()
    ref = librosa_reference.util.peak_pick
    bad = [(x, kw) for x, kw in cases if not np.array_equal(peak_pick(x, **kw), ref(x, **kw))]
    assert not bad, f"{len(bad)} of {len(cases)} differ, e.g. {bad[0]}"
    assert {x.dtype for x, _ in cases} == {np.dtype(np.float32), np.dtype(np.float64)}
    assert (
        sum(len(peak_pick(x, **kw)) for x, kw in cases) > 10_000
    )  # not trivially equal (no peaks at all)


def test_peak_pick_edge_cases(librosa_reference):
    kw = dict(pre_max=2, post_max=2, pre_avg=3, post_avg=3, delta=0.0, wait=0)
    for x in [
        np.zeros(0),
        np.zeros(0, np.float32),
    ]:  # librosa's kernel fails on np.max of the empty window
        with pytest.raises(ValueError, match="zero-size"):
            librosa_reference.util.peak_pick(x, **kw)
        with pytest.raises(ValueError, match="zero-size"):
            peak_pick(x, **kw)
    plateau = np.array(
        [0, 1, 1, 1, 0, 2, 2, 0, 0, 3], np.float32
    )  # every frame of a plateau ties for the max
    for wait in range(4):
        want = librosa_reference.util.peak_pick(plateau, **{**kw, "wait": wait})
        np.testing.assert_array_equal(peak_pick(plateau, **{**kw, "wait": wait}), want)
    np.testing.assert_array_equal(
        peak_pick(plateau, **kw), [1, 2, 3, 5, 6, 9]
    )  # wait=0: every tied frame
    np.testing.assert_array_equal(
        peak_pick(plateau, **{**kw, "wait": 1}), [1, 3, 5, 9]
    )  # wait keeps the first
    for bad in [
        dict(pre_max=-1),
        dict(post_max=0),
        dict(pre_avg=-1),
        dict(post_avg=0),
        dict(delta=-0.1),
        dict(wait=-1),
    ]:
        with pytest.raises(ValueError):
            peak_pick(plateau, **{**kw, **bad})
    with pytest.raises(ValueError):
        peak_pick(np.ones((2, 3)), **kw)
    for x in [
        np.arange(10, dtype=np.int32),
        np.arange(10),
    ]:  # librosa's int loops are unreachable: TypeError
        with pytest.raises(TypeError):
            librosa_reference.util.peak_pick(x, **kw)
        with pytest.raises(TypeError):
            peak_pick(x, **kw)


@pytest.fixture(scope="module")
def loop_envelopes() -> list[np.ndarray]:
    """Onset envelopes (float32) of the 17 real sonic-pi loops, as exact.onset_times computes them."""
    out = []
    for _, y in real_loops(SR):
        mel_db = librosa.power_to_db(
            librosa.feature.melspectrogram(S=power_spectrogram(y), sr=SR, fmax=0.5 * SR)
        )
        out.append(librosa.onset.onset_strength(S=mel_db, sr=SR, hop_length=HOP, n_fft=N_FFT))
    return out


@pytest.mark.skipif(not SAMPLES_DIR.exists(), reason="sonic-pi samples not installed")
def test_onset_detect_equals_librosa_on_real_loops(librosa_reference, loop_envelopes):
    """17 loops x 2 dtypes x 4 (sr, hop) pairs (each changes every window length), then one loop end to end."""
    assert len(loop_envelopes) == 17 and loop_envelopes[0].dtype == np.float32
    n_onsets = 0
    for env in loop_envelopes:
        for e in (env, env.astype(np.float64)):
            for sr, hop in [(SR, 512), (44100, 512), (16000, 256), (8000, 128)]:
                want = librosa_reference.onset.onset_detect(
                    onset_envelope=e, sr=sr, hop_length=hop, units="time"
                )
                got = onset_detect(e, sr=sr, hop_length=hop)
                np.testing.assert_array_equal(got, want)
                assert got.dtype == want.dtype
                n_onsets += len(got)
    assert n_onsets > 1000
    y = real_loops(SR)[0][1]  # the whole exact path, envelope included, against onset_detect(y=...)
    want = librosa_reference.onset.onset_detect(y=y, sr=SR, hop_length=HOP, units="time")
    np.testing.assert_array_equal(onset_times(y, SR), want)


def test_onset_detect_degenerate_envelopes(librosa_reference):
    rng = np.random.default_rng(1)
    envs = [
        np.zeros(50, np.float32),
        np.full(50, 3.0),
        np.ones(1, np.float32),
        rng.random(2),
        np.where(np.arange(40) == 7, np.inf, 1.0),
        np.where(np.arange(40) == 7, np.nan, rng.random(40)),
    ]
    for e in envs:
        with np.errstate(invalid="ignore"):  # inf / inf while normalising, in both
            want = librosa_reference.onset.onset_detect(
                onset_envelope=e, sr=SR, hop_length=HOP, units="time"
            )
            np.testing.assert_array_equal(onset_detect(e, sr=SR, hop_length=HOP), want)


# ----------------------------------------------------------------------------------------------------------------
# the bug itself: a poisoned numba cache, built for real

CLEAN_RUN = """
import json, sys, numpy as np, librosa
from pathlib import Path
from weaktok.audio import load_audio
from weaktok.lscore.exact import exact_lscore, onset_times
from weaktok.lscore.worker import click_clip
path = Path(sys.argv[1])
y = load_audio(path, 22050) if path.exists() else click_clip(22050, 3.0)
out = {"lscore": exact_lscore(y, 22050).tolist(), "onsets": onset_times(y, 22050).tolist()}
if sys.argv[2] == "with-librosa-onsets":
    out["librosa_onsets"] = librosa.onset.onset_detect(y=y, sr=22050, hop_length=512, units="time").tolist()
print(json.dumps(out))
"""
SHIFTED_COMPILE = """
import numba
for i in range(5):  # advance numba's per-process function counter: peak_pick gets other symbol names (ABI tags)
    numba.njit(lambda v, i=i: v + i)(1.0)
import librosa.util.utils  # compiles the GUFuncs missing from the cache: here only __peak_pick
"""
CALL_PEAK_PICK = """
import numpy as np, librosa
print(librosa.util.peak_pick(np.arange(10.0), pre_max=1, post_max=1, pre_avg=1, post_avg=1, delta=0.0, wait=0))
"""


def python(code: str, cache_dir: Path, *args: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "NUMBA_CACHE_DIR": str(cache_dir),
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_exact_lscore_survives_a_poisoned_numba_cache(tmp_path):
    """Build a cache whose __peak_pick kernel and wrapper come from two processes (what two actors warming up at
    once can leave behind), check librosa's peak_pick segfaults on it, and that exact_lscore does not.

    clean: a fresh process fills cache W (all GUFuncs librosa compiles on import; none poisoned) and gives the
    reference numbers, including librosa's own onset_detect. shifted: W minus the peak_pick files, recompiled by a
    process whose function counter is ahead (cache X). poisoned Z = W with X's kernel files ``utils.__peak_pick*``.
    """
    clip = SAMPLES_DIR / "loop_amen.flac"
    W, X, Z = tmp_path / "W", tmp_path / "X", tmp_path / "Z"
    r = python(CLEAN_RUN, W, str(clip), "with-librosa-onsets")
    assert r.returncode == 0, r.stderr[-3000:]
    clean = json.loads(r.stdout)
    assert clean["onsets"] == clean["librosa_onsets"] and len(clean["onsets"]) > 3

    shutil.copytree(W, X)
    for f in X.rglob("*__peak_pick*"):
        f.unlink()
    r = python(SHIFTED_COMPILE, X)
    assert r.returncode == 0, r.stderr[-3000:]
    shutil.copytree(W, Z)
    kernels = list(
        X.rglob("utils.__peak_pick*")
    )  # the kernel, not its wrapper (guf-utils.__peak_pick*)
    assert kernels
    for f in kernels:
        shutil.copy(f, Z / f.parent.name / f.name)

    r = python(CLEAN_RUN, Z, str(clip), "ours-only")
    assert r.returncode == 0, (
        f"exact_lscore died on the poisoned cache ({r.returncode}): {r.stderr[-3000:]}"
    )
    poisoned = json.loads(r.stdout)
    assert poisoned["lscore"] == clean["lscore"] and poisoned["onsets"] == clean["onsets"]

    r = python(CALL_PEAK_PICK, Z)
    if r.returncode == 0:
        pytest.skip(
            "the recipe did not poison numba's cache with this numba/librosa (peak_pick ran fine on Z); "
            "exact_lscore's equality on Z was still checked"
        )
    assert r.returncode in (-signal.SIGSEGV, 139), (r.returncode, r.stderr[-3000:])


# ----------------------------------------------------------------------------------------------------------------
# a pool actor dying at warm-up

FAKE_LIBROSA = """
import os, signal
from pathlib import Path
if Path(__file__).with_name("mode").read_text() == "segfault":
    os.kill(os.getpid(), signal.SIGSEGV)
raise ImportError("fake librosa for tests/unit/lscore/test_peaks.py")
"""


@pytest.mark.slow
def test_actor_dying_at_warmup_is_reported_with_cause_and_fix(tmp_path, monkeypatch):
    """The actors see a ``librosa`` that segfaults (then one that raises) on import, via PYTHONPATH set before
    ray.init (Ray's processes inherit it; this process already has the real librosa). Real actors, real deaths."""
    if ray.is_initialized():
        pytest.skip(
            "needs a Ray cluster of its own: the actors' environment is fixed when Ray starts"
        )
    fake = tmp_path / "fake" / "librosa"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(FAKE_LIBROSA)
    monkeypatch.setenv(
        "PYTHONPATH",
        os.pathsep.join([str(fake.parent), str(REPO), os.environ.get("PYTHONPATH", "")]),
    )
    for attempt in (
        1,
        2,
    ):  # Ray gives its raylet a fixed 30 s to register; a loaded machine can miss it
        try:
            ray.init(
                num_cpus=1, include_dashboard=False, logging_level="ERROR", log_to_driver=False
            )
            break
        except Exception as e:
            if attempt == 2 or "timed out during startup" not in str(e):
                raise
    try:
        (fake / "mode").write_text("segfault")
        with pytest.raises(LScorePoolError) as err:
            LScorePool(num_actors=1, max_retries=0, num_cpus_per_actor=0.5, startup_timeout_s=120)
        msg = str(err.value)
        assert "L-Score actor 0 died while warming up" in msg
        assert "without a Python exception" in msg and "segfault" in msg
        assert "numba" in msg and "#10128" in msg and ".nb" in msg and "delete" in msg
        assert len(msg) < 1200 and "Traceback" not in msg  # one readable paragraph, not Ray's dump

        (fake / "mode").write_text("raise")
        with pytest.raises(LScorePoolError) as err:
            LScorePool(num_actors=1, max_retries=0, num_cpus_per_actor=0.5, startup_timeout_s=120)
        msg = str(err.value)
        assert "L-Score actor 0 died while warming up" in msg
        assert (
            "raised ImportError: fake librosa for tests/unit/lscore/test_peaks.py" in msg
            and "numba" not in msg
        )
        assert len(msg) < 1200 and "Traceback" not in msg
    finally:
        ray.shutdown()
