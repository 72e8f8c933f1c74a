"""Shard builder: FSLD and plain folders, tag filter, stable split, bad input, manifest, re-runs.

Starts a real local Ray cluster (through LScorePool) once for the module.
"""

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from weaktok.audio import SONIC_PI_SAMPLES
from weaktok.data.manifest import load_manifest, sha256_file
from weaktok.data.shards import assign_split, build_shards
from weaktok.data.sources import discover, filter_tags

pytestmark = pytest.mark.slow
SAMPLES = SONIC_PI_SAMPLES
SR = 22050


def _real_loop(name: str, seconds: float = 3.0, sr: int = SR) -> np.ndarray:
    y, file_sr = sf.read(SAMPLES / name, dtype="float32", always_2d=True)
    y = y.mean(1)
    idx = np.arange(int(seconds * file_sr)) % len(y)
    import librosa

    return librosa.resample(y[idx], orig_sr=file_sr, target_sr=sr)


def _make_fsld(root: Path) -> Path:
    """A small FSLD-layout folder from real CC0 loops, with tags and a `.wav.wav` name as in the real dataset."""
    wav = root / "audio" / "wav"
    wav.mkdir(parents=True)
    loops = sorted(p.name for p in SAMPLES.glob("loop_*.flac"))[:8]
    meta = {}
    for i, name in enumerate(loops):
        sid = str(1000 + i)
        suffix = ".wav.wav" if i == 0 else ".wav"
        sf.write(wav / f"{sid}_77{suffix}", _real_loop(name, 2.0 + i % 3), SR)
        tags = ["IDM", "loop"] if i % 2 == 0 else ["techno", "loop"]
        meta[sid] = {
            "tags": tags,
            "license": "cc0",
            "username": "u77",
            "annotations": {"bpm": 120 + i},
        }
    sf.write(wav / "9999_77.wav", _real_loop(loops[0], 1.0), SR)  # no metadata entry -> skipped
    (root / "metadata.json").write_text(json.dumps(meta))
    return root


def _make_bad_folder(root: Path) -> dict[str, str]:
    """A plain folder of good and bad files; returns {file name: expected outcome}."""
    root.mkdir(parents=True)
    good = _real_loop("loop_amen_full.flac", 3.0)
    sf.write(root / "good.wav", good, SR)
    sf.write(root / "good.flac", good, SR)
    sf.write(root / "six_channel.wav", np.tile(good[:, None], (1, 6)) * 0.5, SR)
    sf.write(root / "hi_rate.wav", _real_loop("loop_amen_full.flac", 2.0, sr=96000), 96000)
    sf.write(root / "lo_rate.wav", _real_loop("loop_amen_full.flac", 2.0, sr=8000), 8000)
    sf.write(
        root / "long.wav", _real_loop("loop_amen_full.flac", 25.0), SR
    )  # -> 3 segments of <= 10 s
    (root / "zero.wav").write_bytes(b"")
    (root / "text.flac").write_text("this is not audio\n" * 50)
    full = (root / "good.flac").read_bytes()
    (root / "truncated.flac").write_bytes(full[: len(full) // 3])
    nan = good.copy()
    nan[1000:2000] = np.nan
    sf.write(root / "nan.wav", nan, SR, subtype="FLOAT")
    inf = good.copy()
    inf[5] = np.inf
    sf.write(root / "inf.wav", inf, SR, subtype="FLOAT")
    sf.write(root / "silent.wav", np.zeros(SR * 2, np.float32), SR)
    sf.write(root / "blip.wav", good[:1000], SR)  # 45 ms: too short
    return {
        "good.wav": "ok",
        "good.flac": "ok",
        "six_channel.wav": "repaired",
        "hi_rate.wav": "repaired",
        "lo_rate.wav": "repaired",
        "long.wav": "ok",
        "zero.wav": "unreadable",
        "text.flac": "unreadable",
        "truncated.flac": "unreadable",
        "nan.wav": "non-finite",
        "inf.wav": "non-finite",
        "silent.wav": "silent",
        "blip.wav": "too-short",
    }


@pytest.fixture(scope="module")
def pool():
    from weaktok.lscore.pool import LScorePool

    with LScorePool(num_actors=2) as p:
        yield p


@pytest.fixture(scope="module")
def built(tmp_path_factory, pool):
    root = tmp_path_factory.mktemp("shards")
    fsld = _make_fsld(root / "fsld")
    bad = root / "bad"
    expected = _make_bad_folder(bad)
    m_fsld = build_shards(
        fsld, root / "out_fsld", shard_size=2, min_shards=2, pool=pool, progress=False
    )
    m_idm = build_shards(fsld, root / "out_idm", tags=["idm"], pool=pool, progress=False)
    m_bad = build_shards(bad, root / "out_bad", pool=pool, progress=False)
    return {
        "pool": pool,
        "root": root,
        "fsld": fsld,
        "bad": bad,
        "expected": expected,
        "m_fsld": m_fsld,
        "m_idm": m_idm,
        "m_bad": m_bad,
    }


def test_fsld_layout_items_and_manifest(built):
    m = built["m_fsld"]
    out = built["root"] / "out_fsld"
    assert load_manifest(out) == m
    total = sum(s["count"] for s in m["splits"].values())
    assert total == 8  # 8 tracks with metadata, the `.wav.wav` one included
    assert any("9999_77.wav" in s["path"] and "metadata" in s["reason"] for s in m["skipped"])
    for split, s in m["splits"].items():
        assert sum(sh["items"] for sh in s["shards"]) == s["count"]
        for sh in s["shards"]:
            path = out / sh["file"]
            assert path.name.startswith(split) and sha256_file(path) == sh["sha256"]
            with tarfile.open(path) as tar:
                names = tar.getnames()
                for name in [n for n in names if n.endswith(".json")]:
                    meta = json.loads(tar.extractfile(name).read())
                    assert set(meta) >= {
                        "id",
                        "source",
                        "tags",
                        "license",
                        "duration",
                        "sample_rate",
                        "bpm",
                        "lscore",
                    }
                    assert len(meta["lscore"]) == 4 and meta["sample_rate"] == SR
                    assert assign_split(meta["track_id"]) == split
    t = m["lscore_target"]
    assert (
        t["count"] == m["splits"]["train"]["count"] and len(t["mean"]) == 4 and len(t["std"]) == 4
    )
    assert 0 < t["mean"][0] < 1 and t["mean"][1] > 0  # timbral in (0, 1), some onsets


def test_tag_filter_is_case_insensitive(built):
    m = built["m_idm"]
    assert sum(s["count"] for s in m["splits"].values()) == 4  # the 4 tracks tagged "IDM"
    tracks, _ = discover(built["fsld"])
    assert len(filter_tags(tracks, ["Idm", "TECHNO"])) == 8
    assert filter_tags(tracks, ["jazz"]) == []
    with pytest.raises(ValueError, match="0 left after tag filter"):
        build_shards(
            built["fsld"], built["root"] / "none", tags=["jazz"], progress=False, pool=built["pool"]
        )


def test_split_is_stable_hash_with_expected_fractions():
    ids = [str(i) for i in range(20000)]
    splits = [assign_split(i) for i in ids]
    frac = {s: splits.count(s) / len(ids) for s in ("train", "val", "test")}
    assert abs(frac["train"] - 0.70) < 0.015 and abs(frac["val"] - 0.15) < 0.015
    assert [assign_split(i) for i in ids[:100]] == splits[
        :100
    ]  # deterministic, independent of other ids


def test_bad_input_is_skipped_or_repaired_never_crashes(built):
    m = built["m_bad"]
    reasons = {Path(s["path"]).name: s["reason"] for s in m["skipped"]}
    repaired = {Path(r["path"]).name: r["what"] for r in m["repaired"]}
    for name, outcome in built["expected"].items():
        if outcome == "ok":
            assert name not in reasons
        elif outcome == "repaired":
            assert name in repaired and name not in reasons, (name, reasons.get(name))
        else:
            assert name in reasons and reasons[name].startswith(outcome), (name, reasons.get(name))
    assert "downmixed 6 channels" in repaired["six_channel.wav"]
    assert "96000" in repaired["hi_rate.wav"] and "8000" in repaired["lo_rate.wav"]
    total = sum(s["count"] for s in m["splits"].values())
    assert total == 2 + 3 + 3  # good.wav, good.flac, 3 repaired, long.wav -> 3 segments


def test_rerun_replaces_cleanly_and_no_lying_manifest(built, pool, tmp_path):
    out = tmp_path / "again"
    m1 = build_shards(built["fsld"], out, tags=["idm"], shard_size=1, pool=pool, progress=False)
    n1 = len(list(out.glob("*.tar")))
    m2 = build_shards(built["fsld"], out, tags=["idm"], shard_size=64, pool=pool, progress=False)
    files = sorted(p.name for p in out.glob("*.tar"))
    listed = sorted(sh["file"] for s in m2["splits"].values() for sh in s["shards"])
    assert files == listed and len(files) <= n1  # old shards gone, nothing unlisted left behind
    assert [s["count"] for s in m1["splits"].values()] == [
        s["count"] for s in m2["splits"].values()
    ]
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # temp build folder removed


def test_cli_builds_and_reports(built, tmp_path):
    import subprocess
    import sys

    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "weaktok",
            "shards",
            "--source",
            str(built["bad"]),
            "--out",
            str(tmp_path / "cli"),
            "--quiet",
            "--num-actors",
            "1",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "skipped 7 files" in r.stdout and "manifest.json" in r.stdout
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "weaktok",
            "shards",
            "--source",
            str(tmp_path / "nowhere"),
            "--out",
            str(tmp_path / "x"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "nowhere" in r.stderr and "Traceback" not in r.stderr


def test_single_split_build_for_a_held_out_eval_set(built, pool, tmp_path):
    """--split eval: every item in one split (read by the eval loader), the manifest's target is that split's
    mean; a split name that cannot name shard files is refused before any work."""
    from weaktok.data.loader import eval_loader

    out = tmp_path / "eval"
    m = build_shards(
        built["fsld"], out, split="eval", shard_size=2, min_shards=2, pool=pool, progress=False
    )
    total = sum(s["count"] for s in built["m_fsld"]["splits"].values())
    assert list(m["splits"]) == ["eval"] and m["splits"]["eval"]["count"] == total
    assert all(p.name.startswith("eval-") for p in out.glob("*.tar"))
    keys = [k for b in eval_loader(str(out), "eval", 4, 1.0) for k in b["keys"]]
    assert len(keys) == total
    assert m["lscore_target"]["count"] == total
    with pytest.raises(ValueError, match="split name"):
        build_shards(built["fsld"], tmp_path / "bad", split="../x", pool=pool, progress=False)
    assert not (tmp_path / "bad").exists()
