"""Streaming loaders: shapes, epochs, loop-aware crops, exact eval coverage across ranks, corrupt items, errors."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import webdataset as wds

from weaktok.data.loader import eval_loader, loop_crop, train_loader
from weaktok.data.manifest import ShardsError, sha256_file, write_manifest

SR = 8000


def _flac(y):
    buf = io.BytesIO()
    sf.write(buf, y, SR, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def make_shards(folder: Path, n_items=24, per_shard=4, corrupt=(), no_audio=()) -> Path:
    """Shards written with webdataset's ShardWriter, one split of items whose audio encodes its index."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for split in ("train", "val"):
        with wds.ShardWriter(str(folder / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as w:
            for i in range(n_items):
                key = f"{split}{i:04d}"
                y = (0.1 * rng.standard_normal(SR // 2 + 37 * i)).astype(np.float32)
                sample = {
                    "__key__": key,
                    "json": json.dumps({"id": key, "lscore": [0.5, 3.0, 0.1, 0.2]}).encode(),
                }
                if key not in no_audio:
                    sample["flac"] = b"garbage, not flac" if key in corrupt else _flac(y)
                w.write(sample)
        shards = [
            {"file": p.name, "items": per_shard, "sha256": sha256_file(p)}
            for p in sorted(folder.glob(f"{split}-*.tar"))
        ]
        entries.append((split, shards))
    manifest = {
        "sample_rate": SR,
        "splits": {s: {"count": n_items, "seconds": 0, "shards": sh} for s, sh in entries},
        "lscore_target": {"mean": [0.5, 3.0, 0.1, 0.2], "std": [0.1, 1.0, 0.05, 0.1]},
    }
    write_manifest(folder, manifest)
    return folder


def test_loop_crop_wraps():
    y = np.arange(5, dtype=np.float32)
    assert loop_crop(y, 7, 3).tolist() == [3, 4, 0, 1, 2, 3, 4]


@pytest.mark.parametrize("workers", [0, 2])
def test_train_loader_fixed_epoch_and_shapes(tmp_path, workers):
    shards = make_shards(tmp_path / "s")
    loader = train_loader(
        str(shards), batch_size=3, clip_seconds=0.75, samples_per_rank=12, num_workers=workers
    )
    batches = list(loader)
    assert len(batches) == 4  # ceil(12/3) = 4 batches per rank (2 per worker when there are 2)
    for b in batches:
        assert b["audio"].shape == (3, int(0.75 * SR)) and b["lscore"].shape == (3, 4)
        assert b["skipped"] == 0
    # a second epoch yields again (resampled source never runs dry)
    assert len(list(loader)) == len(batches)


def test_train_loader_repeats_for_a_seed_and_differs_across_seeds(tmp_path):
    """Same seed and epoch: the same items in the same order with the same crops (a run can be repeated; an
    unseeded shuffle buffer once made CI's trained test model differ from run to run)."""
    shards = make_shards(tmp_path / "s")

    def stream(seed, epoch=0):
        loader = train_loader(
            str(shards),
            batch_size=3,
            clip_seconds=0.25,
            samples_per_rank=12,
            num_workers=0,
            shuffle_buffer=8,
            seed=seed,
            epoch=epoch,
        )
        return [(k, float(a.sum())) for b in loader for k, a in zip(b["keys"], b["audio"])]

    assert stream(3) == stream(3)
    assert stream(3) != stream(4) and stream(3) != stream(3, epoch=1)


def test_eval_every_item_once_across_two_ranks(tmp_path, monkeypatch):
    shards = make_shards(tmp_path / "s", n_items=22, per_shard=3)  # 8 shards, uneven
    seen = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        for b in eval_loader(str(shards), "val", batch_size=4, clip_seconds=0.5):
            seen += b["keys"]
    assert sorted(seen) == [f"val{i:04d}" for i in range(22)]
    assert len(seen) == len(set(seen))


def test_eval_is_deterministic(tmp_path):
    shards = make_shards(tmp_path / "s")
    a = [b["audio"] for b in eval_loader(str(shards), "val", batch_size=5, clip_seconds=0.5)]
    b = [b["audio"] for b in eval_loader(str(shards), "val", batch_size=5, clip_seconds=0.5)]
    assert all((x == y).all() for x, y in zip(a, b)) and len(a) == 5


def test_corrupt_and_audio_less_items_are_skipped_and_counted(tmp_path):
    shards = make_shards(tmp_path / "s", corrupt={"val0003", "val0010"}, no_audio={"val0007"})
    keys, skipped = [], 0
    for b in eval_loader(str(shards), "val", batch_size=4, clip_seconds=0.5):
        keys += b["keys"]
        skipped += b["skipped"]
    assert skipped == 3
    assert len(keys) == 21 and not {"val0003", "val0010", "val0007"} & set(keys)


def test_truncated_shard_is_counted_not_fatal(tmp_path):
    shards = make_shards(tmp_path / "s")
    victim = shards / "val-000002.tar"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2 + 100])
    keys, skipped = [], 0
    for b in eval_loader(str(shards), "val", batch_size=4, clip_seconds=0.5):
        keys += b["keys"]
        skipped += b["skipped"]
    assert 20 <= len(keys) < 24 and skipped >= 1


def test_missing_manifest_shard_and_checksum_errors_name_the_path(tmp_path):
    with pytest.raises(ShardsError, match="shard folder not found: .*nowhere"):
        train_loader(str(tmp_path / "nowhere"), 2, 0.5, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ShardsError, match="no manifest in .*empty"):
        eval_loader(str(tmp_path / "empty"), "val", 2, 0.5)
    shards = make_shards(tmp_path / "s")
    (shards / "train-000001.tar").unlink()
    with pytest.raises(ShardsError, match="shard missing: .*train-000001.tar"):
        train_loader(str(shards), 2, 0.5, 4)
    with open(shards / "val-000000.tar", "r+b") as f:
        f.seek(600)
        f.write(b"flipped bytes")
    eval_loader(str(shards), "val", 2, 0.5)  # not verified by default
    with pytest.raises(ShardsError, match="shard corrupted: .*val-000000.tar"):
        eval_loader(str(shards), "val", 2, 0.5, verify=True)
