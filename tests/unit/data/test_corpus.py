"""Tests for weaktok.data.corpus: FSLD layout, audio validity, determinism, tags, fallback, L-Score spread, CLI."""

import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from weaktok.audio import SONIC_PI_SAMPLES
from weaktok.data.corpus import CC0, README_MARKER, build_corpus
from weaktok.data.sounds import REAL_LOOPS
from weaktok.data.sources import discover, filter_tags

needs_samples = pytest.mark.skipif(
    not any(SONIC_PI_SAMPLES.glob("loop_*.flac")), reason="sonic-pi-samples not installed"
)
FSLD_NAME = re.compile(r"^(\d+)_(\d+)\.wav$")
N = 24


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    summary = build_corpus(out, n=N, seed=0, progress=False)
    return out, summary, json.loads((out / "metadata.json").read_text())


def wavs(out: Path) -> list[Path]:
    return sorted((out / "audio" / "wav").glob("*.wav"))


@needs_samples
def test_fsld_layout_and_metadata(corpus):
    out, summary, meta = corpus
    files = wavs(out)
    assert len(files) == len(meta) == N
    assert summary["composed"] + summary["real_loops"] == N and summary["fallback"] is None
    users = {}
    for f in files:
        m = FSLD_NAME.match(f.name)
        assert m, f.name
        sid, uid = m.groups()
        entry = meta[sid]
        assert users.setdefault(entry["username"], uid) == uid  # one user id per username
        assert entry["license"] == CC0
        assert entry["tags"] and all(t == t.lower() and t.strip() == t for t in entry["tags"])
        assert (
            isinstance(entry["annotations"]["bpm"], int)
            and 60 <= entry["annotations"]["bpm"] <= 200
        )
        assert entry["name"] and entry["pack"] and entry["meter"]
        assert entry["source_samples"] and all(
            (SONIC_PI_SAMPLES / s).is_file() for s in entry["source_samples"]
        )
    assert len(users) >= 3
    readme = (out / "README.txt").read_text()
    assert readme.startswith(README_MARKER) and "sonic-pi-samples" in readme and "CC0" in readme
    assert not (out / ".partial").exists() and not list(out.glob("*.tmp"))


@needs_samples
def test_wavs_are_valid_loops(corpus):
    out, _, _ = corpus
    for f in wavs(out):
        info = sf.info(str(f))
        assert info.samplerate == 22050 and info.channels == 1 and info.subtype == "PCM_16"
        y, _ = sf.read(str(f), dtype="float32")
        assert 4.0 <= len(y) / 22050 <= 8.0, (f.name, len(y) / 22050)
        assert np.all(np.isfinite(y)) and np.abs(y).max() > 0.5  # peak-normalised, not silent
        assert np.sqrt(np.mean(y**2)) > 1e-3


@needs_samples
def test_tags_make_a_filter_meaningful(corpus):
    _, summary, meta = corpus
    hit = [sid for sid, m in meta.items() if {"idm", "glitch"} & set(m["tags"])]
    assert 0 < len(hit) < len(meta)
    assert len(summary["families"]) >= 5
    assert any("ambient" in m["tags"] for m in meta.values())


@needs_samples
def test_real_loops_are_items(corpus):
    _, summary, meta = corpus
    real = [m for m in meta.values() if m["generator"]["kind"] in REAL_LOOPS]
    assert summary["real_loops"] == len(real) == N // 6
    assert all(m["source_samples"] == [m["generator"]["kind"] + ".flac"] for m in real)


@needs_samples
def test_corpus_spans_a_range_of_lscores(corpus):
    from weaktok.lscore.exact import exact_lscore

    out, _, _ = corpus
    L = np.array(
        [exact_lscore(sf.read(str(f), dtype="float32")[0], 22050) for f in wavs(out)]
    )  # (N, 4)
    timbral, density, irregularity, structural = L.T
    # measured at seed 0: density 0.59..8.2 /s, irregularity 0.016..0.46 s, structural 0.03..0.28
    assert density.min() < 2.0 and density.max() > 6.0 and np.ptp(density) > 3.0
    assert np.ptp(irregularity) > 0.15 and np.std(irregularity) > 0.03
    assert np.ptp(structural) > 0.1 and np.std(structural) > 0.02
    assert np.ptp(timbral) > 0.2


@needs_samples
def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (
        build_corpus(tmp_path / name, n=8, seed=s, progress=False)
        for name, s in (("a", 3), ("b", 3), ("c", 4))
    )
    fa, fb, fc = wavs(tmp_path / "a"), wavs(tmp_path / "b"), wavs(tmp_path / "c")
    assert [f.name for f in fa] == [f.name for f in fb]
    assert all(x.read_bytes() == y.read_bytes() for x, y in zip(fa, fb))
    assert (tmp_path / "a" / "metadata.json").read_bytes() == (
        tmp_path / "b" / "metadata.json"
    ).read_bytes()
    shared = {f.read_bytes() for f in fa} & {f.read_bytes() for f in fc}
    assert len(shared) <= 1  # at most a real loop tiled the same way; every composed item differs


def test_fallback_synthesis_without_samples(tmp_path, caplog):
    empty = tmp_path / "no-samples"
    empty.mkdir()
    with caplog.at_level(logging.WARNING, logger="weaktok"):
        summary = build_corpus(tmp_path / "out", n=8, seed=0, samples_dir=empty, progress=False)
    assert (
        summary["fallback"] == "synthesis"
        and summary["real_loops"] == 0
        and summary["composed"] == 8
    )
    assert any(
        r.levelno == logging.WARNING and "fallback: synthesis" in r.getMessage()
        for r in caplog.records
    )
    assert "fallback: synthesis" in (tmp_path / "out" / "README.txt").read_text()
    meta = json.loads((tmp_path / "out" / "metadata.json").read_text())
    assert all(m["source_samples"] == [] for m in meta.values())
    for f in wavs(tmp_path / "out"):
        y, sr = sf.read(str(f), dtype="float32")
        assert sr == 22050 and 4.0 <= len(y) / sr <= 8.0 and np.abs(y).max() > 0.5


@needs_samples
def test_rerun_replaces_consistently_and_refuses_foreign_folders(tmp_path):
    out = tmp_path / "c"
    build_corpus(out, n=8, seed=0, progress=False)
    build_corpus(out, n=4, seed=1, progress=False)
    meta = json.loads((out / "metadata.json").read_text())
    assert sorted(FSLD_NAME.match(f.name).group(1) for f in wavs(out)) == sorted(
        meta
    )  # no stale WAVs
    foreign = tmp_path / "fsld"
    foreign.mkdir()
    (foreign / "metadata.json").write_text("{}")
    with pytest.raises(FileExistsError):
        build_corpus(foreign, n=2, progress=False)
    assert (foreign / "metadata.json").read_text() == "{}"


@needs_samples
def test_ingestion_path_reads_it(corpus):
    out, _, meta = corpus
    tracks, skipped = discover(out)
    assert len(tracks) == N and not skipped
    picked = filter_tags(tracks, ["idm", "glitch"])
    assert 0 < len(picked) < N


def test_cli_writes_a_corpus(tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "weaktok", "corpus", "--out", str(out), "--n", "6", "--quiet"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "6 loops" in r.stdout
    assert len(wavs(out)) == 6 and len(json.loads((out / "metadata.json").read_text())) == 6
