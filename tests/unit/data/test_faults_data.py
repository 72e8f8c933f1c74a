"""Data faults (issue #9): each one ends in a skip that is counted (with the shard file and item key in the log) or
in a ShardsError naming the file — never a crash of another kind, a hang, or silently wrong data. Both the
training loader (resampled, shuffled, DataLoader workers) and the evaluation loader (exact) are exercised.

Already covered elsewhere and not repeated here (tests/unit/data/test_loader.py): corrupt / audio-less items in the eval
loader, a truncated val shard in the eval loader, a missing train shard and a checksum mismatch via the
``verify=`` argument.
"""

import io
import json
import logging
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from tests.helpers import deadline
from tests.unit.data.test_loader import make_shards
from weaktok.config import load_config
from weaktok.data.loader import eval_loader, train_loader
from weaktok.data.manifest import MANIFEST, ShardsError, load_manifest, write_manifest


def originals(folder: Path, split: str) -> dict[str, np.ndarray]:
    """key -> decoded audio of every item, read with tarfile + soundfile (independent of the loaders)."""
    out = {}
    for p in sorted(folder.glob(f"{split}-*.tar")):
        with tarfile.open(p, "r|") as t:
            try:
                for m in t:
                    if m.name.endswith(".flac"):
                        out[m.name[:-5]] = sf.read(
                            io.BytesIO(t.extractfile(m).read()), dtype="float32"
                        )[0]
            except (
                tarfile.ReadError,
                sf.LibsndfileError,
            ):  # a truncated shard: what precedes the cut
                pass
    return out


def read_eval(folder, split="val", workers=0, batch=4, seconds=0.5):
    keys, skipped, audio = [], 0, {}
    with deadline(120, "loader"):
        for b in eval_loader(str(folder), split, batch, seconds, num_workers=workers):
            keys += b["keys"]
            skipped += b["skipped"]
            audio.update(zip(b["keys"], b["audio"].numpy()))
    return keys, skipped, audio


def read_train(folder, workers=0, samples=96, batch=4, seconds=0.5, epochs=1):
    keys, skipped, audio = [], 0, []
    with deadline(180, "loader"):
        loader = train_loader(
            str(folder), batch, seconds, samples, num_workers=workers, shuffle_buffer=8
        )
        for _ in range(epochs):
            for b in loader:
                keys += b["keys"]
                skipped += b["skipped"]
                audio += list(zip(b["keys"], b["audio"].numpy()))
    return keys, skipped, audio


def assert_is_loop_crop(crop: np.ndarray, full: np.ndarray):
    """``crop`` must be ``len(crop)`` consecutive samples of ``full`` tiled: the data is intact, not corrupted."""
    tiled = np.concatenate([full] * (len(crop) // len(full) + 2))
    starts = np.flatnonzero(tiled[: len(full)] == crop[0])
    assert any(np.array_equal(tiled[s : s + len(crop)], crop) for s in starts), (
        "crop is not a slice of its item"
    )


def truncate(path: Path, keep: float = 0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep) + 100])


# ----------------------------------------------------------------------------------------------------------
# a shard truncated mid-file


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shards_train_loader_skips_counts_and_keeps_data_intact(
    tmp_path, workers, caplog
):
    shards = make_shards(tmp_path / "s")  # 6 train shards x 4 items
    full = originals(shards, "train")
    for i in (1, 3, 5):  # half the shards: every resampled stream meets one
        truncate(shards / f"train-{i:06d}.tar")
    with caplog.at_level(logging.WARNING, logger="weaktok.data.loader"):
        keys, skipped, audio = read_train(shards, workers=workers)
    assert len(keys) == 96  # the epoch is still full: ranks never run short
    assert skipped >= 1
    for key, crop in audio:
        assert_is_loop_crop(crop, full[key])
    if workers == 0:  # worker processes log in their own process
        assert (
            "train-000001.tar" in caplog.text
            or "train-000003.tar" in caplog.text
            or "train-000005.tar" in caplog.text
        )


@pytest.mark.parametrize("workers", [0, 2])
def test_truncated_shard_eval_loader_loses_only_the_cut_items(tmp_path, workers, caplog):
    shards = make_shards(tmp_path / "s")
    full = originals(shards, "val")
    victim = shards / "val-000004.tar"  # items val0016..val0019
    truncate(victim)
    survivors = set(originals(shards, "val"))  # what tarfile itself can still read before the cut
    with caplog.at_level(logging.WARNING, logger="weaktok.data.loader"):
        keys, skipped, audio = read_eval(shards, workers=workers)
    others = {k for k in full if not "val0016" <= k <= "val0019"}
    assert others <= set(keys) and len(keys) == len(
        set(keys)
    )  # nothing outside the cut is lost or repeated
    assert set(keys) - others <= survivors
    assert skipped >= 1 and len(keys) + skipped >= len(full) - 4
    for k in keys:  # deterministic crop from the start: exactly the original samples
        assert np.array_equal(audio[k], np.resize(full[k], len(audio[k])))
    if workers == 0:
        assert "val-000004.tar" in caplog.text


# ----------------------------------------------------------------------------------------------------------
# sha256 mismatch: the user-facing switch is the config key data.verify_shards


def test_checksum_mismatch_is_caught_by_the_config_switch(tmp_path):
    shards = make_shards(tmp_path / "s")
    victim = shards / "train-000002.tar"
    data = bytearray(victim.read_bytes())
    # change one digit of an item's json L-Score: the tar stays valid, the audio decodes, only the sha256 knows
    at = data.index(b'"lscore": [0.5')
    data[at + 13] = ord("9")  # 0.5 -> 0.9
    victim.write_bytes(bytes(data))
    cfg = load_config("tiny", [f"data.shards={shards}", "data.verify_shards=true"])
    with pytest.raises(
        ShardsError, match=r"shard corrupted: .*train-000002.tar does not match the sha256"
    ):
        train_loader(cfg.data.shards, 2, 0.5, 4, num_workers=0, verify=cfg.data.verify_shards)
    val = shards / "val-000001.tar"
    data = bytearray(val.read_bytes())
    at = data.index(b'"lscore": [0.5')
    data[at + 13] = ord("9")  # 0.5 -> 0.9
    val.write_bytes(bytes(data))
    with pytest.raises(ShardsError, match=r"shard corrupted: .*val-000001.tar"):
        eval_loader(cfg.data.shards, "val", 2, 0.5, verify=cfg.data.verify_shards)
    # default off (hashing every shard at start-up costs time on big datasets): the changed value then goes
    # through unnoticed, which is exactly what the switch is for
    assert load_config("tiny").data.verify_shards is False
    lscores = {
        k: ls
        for b in eval_loader(str(shards), "val", 2, 0.5)
        for k, ls in zip(b["keys"], b["lscore"])
    }
    assert float(lscores["val0004"][0]) == pytest.approx(0.9)


def test_train_verifies_before_any_compute(tmp_path):
    """weaktok.train checks the train and val splits with data.verify_shards before it starts ranks or the model."""
    from weaktok.train import train

    shards = make_shards(tmp_path / "s")
    victim = shards / "train-000000.tar"
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    cfg = load_config(
        "tiny", [f"data.shards={shards}", "data.verify_shards=true", "audio.sample_rate=8000"]
    )
    with pytest.raises(ShardsError, match="train-000000.tar"):
        train(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing written
    shards = make_shards(tmp_path / "s2")  # the validation split too: it is read every epoch
    victim = next(iter(sorted(shards.glob("val-*.tar"))))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    cfg = load_config(
        "tiny", [f"data.shards={shards}", "data.verify_shards=true", "audio.sample_rate=8000"]
    )
    with pytest.raises(ShardsError, match=victim.name):
        train(cfg, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()


# ----------------------------------------------------------------------------------------------------------
# a missing shard


def test_missing_shard_is_an_error_naming_it_in_both_loaders(tmp_path):
    shards = make_shards(tmp_path / "s")
    (shards / "val-000003.tar").unlink()
    with pytest.raises(
        ShardsError, match=r"shard missing: .*val-000003.tar \(listed in .*manifest.json\)"
    ):
        eval_loader(str(shards), "val", 2, 0.5)
    (shards / "train-000005.tar").unlink()
    with pytest.raises(ShardsError, match=r"shard missing: .*train-000005.tar"):
        train_loader(str(shards), 2, 0.5, 4, num_workers=0)


@pytest.mark.parametrize("kind", ["train", "eval"])
def test_shard_deleted_after_the_loader_started_is_skipped_and_counted(tmp_path, kind, caplog):
    shards = make_shards(tmp_path / "s")
    split = "train" if kind == "train" else "val"
    if kind == "train":
        loader = train_loader(str(shards), 4, 0.5, 96, num_workers=0, shuffle_buffer=8)
    else:
        loader = eval_loader(str(shards), "val", 4, 0.5)
    for i in (0, 2, 4):
        (
            shards / f"{split}-{i:06d}.tar"
        ).unlink()  # gone between listing and reading (e.g. a cleanup job)
    keys, skipped = [], 0
    with caplog.at_level(logging.WARNING, logger="weaktok.data.loader"), deadline(120, "loader"):
        for b in loader:
            keys += b["keys"]
            skipped += b["skipped"]
    assert skipped >= 1 and "cannot open" in caplog.text
    assert any(f"{split}-00000{i}.tar: cannot open" in caplog.text for i in (0, 2, 4))
    if kind == "eval":
        assert sorted(keys) == sorted(
            k for k in originals(shards, "val")
        )  # the 3 shards still there, whole
        assert skipped == 3
    else:
        assert len(keys) == 96 and all(int(k[5:]) // 4 in (1, 3, 5) for k in keys)


# ----------------------------------------------------------------------------------------------------------
# an item with no audio member, bad metadata, another sample rate


def _rewrite_item(folder: Path, split: str, key: str, change):
    """Rebuild the shard holding ``key`` with ``change(members) -> members`` applied to that item; fix the sha256."""
    from weaktok.data.manifest import sha256_file

    manifest = load_manifest(folder)
    for entry in manifest["splits"][split]["shards"]:
        path = folder / entry["file"]
        with tarfile.open(path) as t:
            members = [(m, t.extractfile(m).read()) for m in t.getmembers()]
        if not any(m.name.startswith(key + ".") for m, _ in members):
            continue
        item = {m.name.split(".", 1)[1]: d for m, d in members if m.name.startswith(key + ".")}
        item = change(item)
        with tarfile.open(path, "w") as t:
            done = False
            for m, d in members:
                if m.name.startswith(key + "."):
                    if not done:
                        for ext, data in item.items():
                            info = tarfile.TarInfo(f"{key}.{ext}")
                            info.size = len(data)
                            t.addfile(info, io.BytesIO(data))
                        done = True
                    continue
                t.addfile(m, io.BytesIO(d))
        entry["sha256"] = sha256_file(path)
        write_manifest(folder, manifest)
        return
    raise AssertionError(f"{key} not found")


def _bad_items(shards: Path, split: str):
    """Five different bad items in one split; returns their keys."""
    _rewrite_item(shards, split, f"{split}0001", lambda it: {"json": it["json"]})  # no audio member
    _rewrite_item(
        shards, split, f"{split}0005", lambda it: {**it, "json": b"[1, 2, 3]"}
    )  # meta not a mapping
    _rewrite_item(
        shards,
        split,
        f"{split}0009",
        lambda it: {**it, "json": json.dumps({"lscore": [0.1, "x"]}).encode()},
    )  # lscore malformed
    _rewrite_item(
        shards,
        split,
        f"{split}0013",  # another sample rate than the manifest's 8000 Hz
        lambda it: {**it, "flac": _flac_at(np.full(4000, 0.1, np.float32), 16000)},
    )
    _rewrite_item(
        shards, split, f"{split}0017", lambda it: {**it, "json": b"{not json"}
    )  # json does not parse
    return {f"{split}{i:04d}" for i in (1, 5, 9, 13, 17)}


def _flac_at(y, sr):
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_items_are_skipped_and_counted_in_eval(tmp_path, workers, caplog):
    shards = make_shards(tmp_path / "s")
    bad = _bad_items(shards, "val")
    with caplog.at_level(logging.WARNING, logger="weaktok.data.loader"):
        keys, skipped, _ = read_eval(shards, workers=workers)
    assert skipped == 5  # the old loader crashed in collate on the malformed metadata
    assert sorted(keys) == sorted(f"val{i:04d}" for i in range(24) if f"val{i:04d}" not in bad)
    if workers == 0:
        for key, why in (
            ("val0001", "no .flac member"),
            ("val0005", "not a mapping"),
            ("val0009", "'lscore' must be a list of 4 numbers"),
            ("val0013", "sample rate 16000 Hz"),
            ("val0017", "JSONDecodeError"),
        ):
            line = next(line for line in caplog.text.splitlines() if f"item {key}" in line)
            assert (
                why in line and "val-00000" in line and ".tar" in line
            )  # the file and the item are named


@pytest.mark.parametrize("workers", [0, 2])
def test_bad_items_are_skipped_and_counted_in_train(tmp_path, workers):
    shards = make_shards(tmp_path / "s")
    bad = _bad_items(shards, "train")
    keys, skipped, audio = read_train(shards, workers=workers, samples=120)
    assert len(keys) == 120 and not bad & set(keys)
    assert skipped >= 1
    full = originals(shards, "train")
    for key, crop in audio:
        assert_is_loop_crop(crop, full[key])


# ----------------------------------------------------------------------------------------------------------
# the skip count is not lost at the end of a stream, and an all-corrupt split is an error, not silence or a hang


def test_items_dropped_after_the_last_full_batch_are_still_counted(tmp_path):
    shards = make_shards(tmp_path / "s", corrupt={"val0020", "val0021", "val0022", "val0023"})
    keys, skipped, _ = read_eval(shards, batch=4)
    assert (
        len(keys) == 20 and skipped == 4
    )  # the old loader reported 0: no batch came after the drops


@pytest.mark.parametrize("workers", [0, 2])
def test_all_corrupt_train_split_is_an_error_not_a_hang(tmp_path, workers):
    shards = make_shards(tmp_path / "s")
    for p in shards.glob("train-*.tar"):
        p.write_bytes(b"\x00garbage" * 500)  # not a tar at all
    with pytest.raises(ShardsError, match="no readable item in the last .* shards opened"):
        read_train(shards, workers=workers)


def test_all_items_corrupt_train_split_is_an_error_not_a_hang(tmp_path):
    shards = make_shards(tmp_path / "s", corrupt={f"train{i:04d}" for i in range(24)})
    with pytest.raises(ShardsError, match="every shard of this split looks corrupt"):
        read_train(shards)


@pytest.mark.parametrize("workers", [0, 2])
def test_all_corrupt_eval_split_is_an_error_naming_the_shards(tmp_path, workers):
    shards = make_shards(tmp_path / "s")
    for p in shards.glob("val-*.tar"):
        p.write_bytes(b"\x00garbage" * 500)
    with pytest.raises(
        ShardsError, match=r"split 'val': no readable item in its shards .*val-000000.tar"
    ):
        read_eval(shards, workers=workers)


# ----------------------------------------------------------------------------------------------------------
# malformed manifests are errors naming the manifest, not KeyErrors deep in a worker


@pytest.mark.parametrize(
    "change, needle",
    [
        (
            lambda m: m["splits"]["val"]["shards"][0].update(file="../../etc/passwd"),
            "entries must be plain file names",
        ),
        (
            lambda m: m["splits"]["val"]["shards"][0].update(file="/etc/passwd"),
            "entries must be plain file names",
        ),
        (lambda m: m["splits"]["val"]["shards"][0].pop("file"), "lists None as a shard"),
        (lambda m: m["splits"]["val"].pop("shards"), "split 'val' has no 'shards' list"),
        (lambda m: m.update(splits=[1, 2]), "no 'splits' mapping"),
        (lambda m: m.pop("sample_rate"), "'sample_rate' must be a positive integer"),
        (lambda m: m.update(sample_rate="22050"), "'sample_rate' must be a positive integer"),
    ],
)
def test_malformed_manifest_is_a_clear_error(tmp_path, change, needle):
    shards = make_shards(tmp_path / "s")
    manifest = json.loads((shards / MANIFEST).read_text())
    change(manifest)
    write_manifest(shards, manifest)
    with pytest.raises(ShardsError, match="manifest.json") as e:
        eval_loader(str(shards), "val", 2, 0.5)
    assert needle in str(e.value)


def test_empty_manifest_file_and_json_list(tmp_path):
    shards = make_shards(tmp_path / "s")
    (shards / MANIFEST).write_text("")
    with pytest.raises(ShardsError, match="not valid JSON"):
        train_loader(str(shards), 2, 0.5, 4)
    (shards / MANIFEST).write_text("[]")
    with pytest.raises(ShardsError, match="not a weaktok shard manifest"):
        train_loader(str(shards), 2, 0.5, 4)


def test_copied_folder_still_loads(tmp_path):
    """Shard paths are resolved from the manifest's folder, so a moved/copied dataset works unchanged."""
    shards = make_shards(tmp_path / "s")
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(shards, moved)
    keys, skipped, _ = read_eval(moved)
    assert len(keys) == 24 and skipped == 0


def test_one_loaders_drops_never_show_up_in_another_loaders_batches(tmp_path):
    """The skip count is per loader: the old per-process counter handed an aborted loader's drops to the next
    loader in the same process (e.g. validation after training with num_workers=0)."""
    bad = make_shards(tmp_path / "bad", corrupt={f"val{i:04d}" for i in range(24)})
    with pytest.raises(ShardsError):
        read_eval(bad)
    keys, skipped, _ = read_eval(make_shards(tmp_path / "good"))
    assert len(keys) == 24 and skipped == 0
