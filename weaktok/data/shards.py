"""Build WebDataset shards from an audio folder: ingest -> filter -> split -> decode -> L-Score -> ShardWriter.

    weaktok shards --source DIR --out shards/NAME [--tags idm,glitch] [--sr 22050]

Sources: the Freesound Loop Dataset layout or any folder of audio files (``weaktok.data.sources`` finds them).

Each item is ``<key>.flac`` (mono, resampled, peak-normalised, PCM16 FLAC) + ``<key>.json`` (id, source path,
tags, license, duration, sample rate, bpm, the exact L-Score). Items are split 70/15/15 by a stable hash of the
track id, so adding tracks never moves old ones. Files longer than ``segment_seconds`` become several items (all
in the track's split). ``--split eval`` puts every item in one split instead: a held-out evaluation set built from a
separate source (``make demo`` builds one from a second corpus seed, so Table 1 has enough items for narrow
intervals; docs/evaluation.md); its manifest's ``lscore_target`` is then that split's mean, not a training target.

Bad input never stops the build: each file that cannot be used is skipped with a reason in the manifest. The build
writes into a temporary folder and swaps it in at the end; ``manifest.json`` goes last, so a manifest that exists
always describes complete shards. Re-running redoes the build cleanly.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import re
import shutil
import sys
import tarfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds
from tqdm import tqdm

from weaktok import __version__
from weaktok.audio import AudioError, load_audio
from weaktok.data.manifest import MANIFEST, SPLITS, sha256_file, write_manifest
from weaktok.data.sources import Track, discover, filter_tags
from weaktok.lscore.exact import LSCORE_NAMES

log = logging.getLogger(__name__)


@dataclass
class Item:
    key: str
    split: str
    audio: np.ndarray  # (N,) float32 at the target sample rate
    meta: dict


def assign_split(track_id: str, fractions: tuple[float, float, float] = (0.70, 0.15, 0.15)) -> str:
    """Stable split from a hash of the id: adding or removing other tracks never moves this one."""
    u = int.from_bytes(hashlib.sha256(track_id.encode()).digest()[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    return "val" if u < fractions[0] + fractions[1] else "test"


# ----------------------------------------------------------------------------------------------------------
# Decoding one track into items


def _safe_key(text: str) -> str:
    # webdataset splits keys from extensions at the first dot: keys carry no dots
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text).strip("_") or "item"


def _describe_repairs(path: Path, sr: int) -> str:
    info = sf.info(str(path))
    parts = []
    if info.channels != 1:
        parts.append(f"downmixed {info.channels} channels")
    if info.samplerate != sr:
        parts.append(f"resampled {info.samplerate} -> {sr} Hz")
    return ", ".join(parts)


def decode_track(
    track: Track, sr: int, segment_seconds: float, min_seconds: float, split: str
) -> list[Item]:
    """Decode, mono, resample, peak-normalise; cut long tracks into segments. Raises AudioError on bad audio."""
    y = load_audio(track.path, sr)
    seg = int(segment_seconds * sr)
    n_segments = max(1, int(np.ceil(len(y) / seg)))
    items = []
    for i in range(n_segments):
        part = y[i * seg : (i + 1) * seg]
        if len(part) < min_seconds * sr:
            if i == 0:
                raise AudioError(track.path, "too-short", f"{len(y) / sr:.3f} s < {min_seconds} s")
            continue  # a short tail of a long file
        peak = float(np.abs(part).max())
        if peak < 1e-3:  # a silent stretch inside a long file
            continue
        key = _safe_key(f"{track.track_id}_{i:03d}" if n_segments > 1 else track.track_id)
        meta = {
            "id": key,
            "track_id": track.track_id,
            "segment": i,
            "source": str(track.path),
            "tags": track.tags,
            "license": track.license,
            "username": track.username,
            "bpm": track.bpm,
            "duration": len(part) / sr,
            "sample_rate": sr,
        }
        items.append(Item(key, split, (part / peak * 0.95).astype(np.float32), meta))
    return items


def encode_flac(y: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, y, sr, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------
# Writing


class SplitWriters:
    """One ``wds.ShardWriter`` per split, opened lazily (ShardWriter creates a file as soon as it exists)."""

    def __init__(self, folder: Path, maxcount: dict[str, int]):
        self.folder, self.maxcount = folder, maxcount
        self.writers: dict[str, wds.ShardWriter] = {}
        self.items = {s: 0 for s in maxcount}
        self.seconds = {s: 0.0 for s in maxcount}

    def write(self, item: Item, flac: bytes) -> None:
        if item.split not in self.writers:
            pattern = str(self.folder / f"{item.split}-%06d.tar")
            self.writers[item.split] = wds.ShardWriter(
                pattern, maxcount=self.maxcount[item.split], verbose=0
            )
        self.writers[item.split].write(
            {"__key__": item.key, "flac": flac, "json": json.dumps(item.meta).encode()}
        )
        self.items[item.split] += 1
        self.seconds[item.split] += item.meta["duration"]

    def close(self) -> None:
        for w in self.writers.values():
            w.close()


def _split_summary(folder: Path, writers: SplitWriters) -> dict:
    splits = {}
    for split in writers.maxcount:
        shards = []
        for path in sorted(folder.glob(f"{split}-*.tar")):
            n = sum(1 for name in _tar_names(path) if name.endswith(".flac"))
            shards.append({"file": path.name, "items": n, "sha256": sha256_file(path)})
        splits[split] = {
            "count": writers.items[split],
            "seconds": round(writers.seconds[split], 3),
            "shards": shards,
        }
    return splits


def _tar_names(path: Path) -> list[str]:
    with tarfile.open(path) as tar:
        return tar.getnames()


def lscore_target(scores: np.ndarray) -> dict:
    if len(scores) == 0:
        k = len(LSCORE_NAMES)
        return {"names": list(LSCORE_NAMES), "mean": [0.0] * k, "std": [0.0] * k, "count": 0}
    return {
        "names": list(LSCORE_NAMES),
        "mean": scores.mean(0).tolist(),
        "std": scores.std(0).tolist(),
        "count": int(len(scores)),
    }


def _maxcount(counts: dict[str, int], shard_size: int, min_shards: int) -> dict[str, int]:
    """Items per shard: at most ``shard_size``, and small enough that each split has >= ``min_shards`` shards
    (so world_size x workers readers all get a shard)."""
    return {s: max(1, min(shard_size, -(-n // min_shards))) for s, n in counts.items()}


def build_shards(
    source: str | Path,
    out: str | Path,
    tags: list[str] | None = None,
    sr: int = 22050,
    shard_size: int = 64,
    min_shards: int = 4,
    segment_seconds: float = 10.0,
    min_seconds: float = 0.5,
    batch_items: int = 64,
    num_actors: int | None = None,
    command: str | None = None,
    progress: bool = True,
    pool=None,
    split: str | None = None,
) -> dict:
    """Build shards in ``out`` and return the manifest (also written to ``out/manifest.json``).

    ``pool``: an open ``LScorePool`` to use; by default one is started (and closed) for this build.
    ``split``: put every item in this one split (e.g. ``eval``) instead of the 70/15/15 hash split.
    """
    if split is not None and not re.fullmatch(r"[a-z][a-z0-9_]*", split):
        raise ValueError(
            f"split name {split!r}: use lower-case letters, digits and '_' (it names shard files)"
        )
    from weaktok.lscore.pool import LScorePool  # noqa: PLC0415 (imports Ray: only a build needs it)

    source, out = Path(source), Path(out)
    t0 = time.time()
    tracks, skipped = discover(source)
    n_found = len(tracks)
    tracks = filter_tags(tracks, tags)
    if not tracks:
        raise ValueError(
            f"no audio to shard in {source}: {n_found} files found, 0 left after tag filter {tags}"
        )
    split_of = {t.track_id: split or assign_split(t.track_id) for t in tracks}
    # estimate per-split counts up front to size shards (one item per track; long files add a few more)
    est = {
        s: sum(1 for t in tracks if split_of[t.track_id] == s)
        for s in ((split,) if split else SPLITS)
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.building"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writers = SplitWriters(tmp, _maxcount(est, shard_size, min_shards))
    repaired, train_scores = [], []
    bar = tqdm(total=len(tracks), desc="shards", unit="file", disable=not progress, file=sys.stderr)
    with nullcontext(pool) if pool is not None else LScorePool(num_actors=num_actors) as pool:
        for start in range(0, len(tracks), batch_items):
            batch: list[Item] = []
            for track in tracks[start : start + batch_items]:
                try:
                    batch += decode_track(
                        track, sr, segment_seconds, min_seconds, split_of[track.track_id]
                    )
                    what = _describe_repairs(track.path, sr)
                    if what:
                        repaired.append({"path": str(track.path), "what": what})
                except AudioError as e:
                    skipped.append({"path": str(track.path), "reason": f"{e.reason}: {e.detail}"})
                except Exception as e:  # never let one file stop the build; record why
                    skipped.append(
                        {"path": str(track.path), "reason": f"error: {type(e).__name__}: {e}"}
                    )
                bar.update(1)
            if not batch:
                continue
            scores = pool.map([it.audio for it in batch], sr)  # (n, 4), input order
            for item, score in zip(batch, scores):
                item.meta["lscore"] = [float(v) for v in score]
                writers.write(item, encode_flac(item.audio, sr))
                if item.split == (split or "train"):
                    train_scores.append(score)
    bar.close()
    writers.close()
    manifest = {
        "version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "command": command or "",
        "source": str(source),
        "tags": tags or [],
        "sample_rate": sr,
        "segment_seconds": segment_seconds,
        "splits": _split_summary(tmp, writers),
        "lscore_target": lscore_target(np.array(train_scores)),
        "skipped": skipped,
        "repaired": repaired,
        "build_seconds": round(time.time() - t0, 2),
    }
    _swap_in(tmp, out, manifest)
    return manifest


def _swap_in(tmp: Path, out: Path, manifest: dict) -> None:
    """Replace ``out``'s shards with the new ones; the manifest disappears first and reappears last."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)
    for old in out.glob("*.tar"):
        old.unlink()
    for new in tmp.glob("*.tar"):
        new.rename(out / new.name)
    shutil.rmtree(tmp, ignore_errors=True)
    write_manifest(out, manifest)


def print_summary(manifest: dict, out: Path) -> None:
    """The per-split counts, the L-Score target, repairs and skips, logged at INFO (the CLI's output)."""
    for split, s in manifest["splits"].items():
        log.info(
            f"  {split:5s} {s['count']:6d} items  {s['seconds'] / 60:7.1f} min  {len(s['shards'])} shards"
        )
    t = manifest["lscore_target"]
    log.info(
        "  L-Score target (train): "
        + ", ".join(f"{n}={m:.3f}±{sd:.3f}" for n, m, sd in zip(t["names"], t["mean"], t["std"]))
    )
    if manifest["repaired"]:
        log.info(f"  repaired {len(manifest['repaired'])} files (resampled/downmixed)")
    skipped = manifest["skipped"]
    log.info(f"  skipped {len(skipped)} files" + (":" if skipped else ""))
    for s in skipped[:20]:
        log.info(f"    {s['path']}: {s['reason']}")
    if len(skipped) > 20:
        log.info(f"    ... {len(skipped) - 20} more in {out / MANIFEST}")
    log.info(f"wrote {out / MANIFEST} in {manifest['build_seconds']} s")
