"""Streaming loaders over the shards: webdataset pipelines for training (resampled) and evaluation (exact).

Training (``train_loader``): ``ResampledShards`` draws shards with replacement from a seed that webdataset derives
from (rank, DataLoader worker, epoch, our seed) — every rank and worker reads its own stream and every rank gets
the same number of batches, so collectives never wait on a rank that ran out (webdataset issue #434; open_clip
does the same). Then: tar -> samples (corrupt members skipped and counted) -> shuffle buffer -> decode FLAC ->
random loop-aware crop (the crop wraps around: these are loops) -> batches. ``with_epoch`` makes an epoch a fixed
number of batches per worker, so a fixed number of samples per rank.

Evaluation (``eval_loader``): the shard list split by node then by worker, no shuffling, deterministic crop from
the item's start, so across R ranks every item is seen exactly once.

Every batch carries ``skipped``: how many corrupt items its worker dropped since its previous batch, so the
trainer can count them (worker processes cannot share a counter with the main process).
"""

from __future__ import annotations

import io
import json
import logging
import random
from functools import partial

import numpy as np
import soundfile as sf
import torch
import webdataset as wds

from weaktok.manifest import load_manifest, shard_paths

log = logging.getLogger(__name__)

# Per-process count of corrupt items dropped and not yet reported in a batch (each DataLoader worker has its own).
_pending_skipped = 0


def _count_and_continue(exc: Exception) -> bool:
    """webdataset handler: log the corrupt shard member, count it, keep going."""
    global _pending_skipped
    _pending_skipped += 1
    log.warning("skipping corrupt shard data: %s", exc)
    return True


def _take_skipped() -> int:
    global _pending_skipped
    n, _pending_skipped = _pending_skipped, 0
    return n


def decode_samples(src):
    """{__key__, flac, json} -> {key, audio (N,) float32, meta}; undecodable items are counted and dropped."""
    for sample in src:
        try:
            if "flac" not in sample:
                raise ValueError(f"item {sample.get('__key__')} in {sample.get('__url__')} has no .flac member")
            audio, _sr = sf.read(io.BytesIO(sample["flac"]), dtype="float32", always_2d=False)
            meta = json.loads(sample["json"]) if "json" in sample else {}
            if audio.ndim != 1 or len(audio) == 0 or not np.isfinite(audio).all():
                raise ValueError(f"item {sample['__key__']}: bad audio shape or values")
        except Exception as e:  # noqa: BLE001 - any decode failure is a corrupt item
            _count_and_continue(e)
            continue
        yield {"key": sample["__key__"], "audio": audio, "meta": meta}


def loop_crop(audio: np.ndarray, n: int, start: int) -> np.ndarray:
    """``n`` samples from ``start``, wrapping around the end (tiles items shorter than ``n``)."""
    return np.take(audio, np.arange(start, start + n), mode="wrap")


def random_crops(src, n: int, seed: int):
    rank, _world, worker, _workers = wds.utils.pytorch_worker_info()
    rng = random.Random(f"{seed}-{rank}-{worker}")
    for s in src:
        s["audio"] = loop_crop(s["audio"], n, rng.randrange(len(s["audio"])))
        yield s


def start_crops(src, n: int):
    for s in src:
        s["audio"] = loop_crop(s["audio"], n, 0)
        yield s


def collate(samples: list[dict]) -> dict:
    lscore = [s["meta"].get("lscore", [float("nan")] * 4) for s in samples]
    return {
        "audio": torch.from_numpy(np.stack([s["audio"] for s in samples])),  # (B, N)
        "lscore": torch.tensor(lscore, dtype=torch.float32),  # (B, 4) exact L-Score from the manifest build
        "keys": [s["key"] for s in samples],
        "skipped": _take_skipped(),
    }


def _loader(pipeline: wds.DataPipeline, num_workers: int) -> wds.WebLoader:
    return wds.WebLoader(pipeline, batch_size=None, shuffle=False, num_workers=num_workers,
                         persistent_workers=num_workers > 0)


def train_loader(shards: str, batch_size: int, clip_seconds: float, samples_per_rank: int, num_workers: int = 2,
                 shuffle_buffer: int = 256, seed: int = 0, epoch: int = 0, verify: bool = False):
    """Infinite-source training loader; one epoch = ceil(samples_per_rank / batch_size) batches per rank."""
    manifest = load_manifest(shards)
    urls = shard_paths(shards, "train", manifest, verify=verify)
    n = int(round(clip_seconds * manifest["sample_rate"]))
    batches = max(1, -(-samples_per_rank // batch_size))
    per_worker = max(1, -(-batches // max(1, num_workers)))
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed + 1_000_003 * epoch, deterministic=True),
        wds.tarfile_to_samples(handler=_count_and_continue),
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 64)),
        decode_samples,
        partial(random_crops, n=n, seed=seed + epoch),
        wds.batched(batch_size, collation_fn=collate, partial=False),
    ).with_epoch(per_worker)
    return _loader(pipeline, num_workers)


def eval_loader(shards: str, split: str, batch_size: int, clip_seconds: float, num_workers: int = 0,
                verify: bool = False):
    """Deterministic loader: each item exactly once across ranks (split by node, then by worker)."""
    manifest = load_manifest(shards)
    urls = shard_paths(shards, split, manifest, verify=verify)
    n = int(round(clip_seconds * manifest["sample_rate"]))
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_node,
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=_count_and_continue),
        decode_samples,
        partial(start_crops, n=n),
        wds.batched(batch_size, collation_fn=collate, partial=True),
    )
    return _loader(pipeline, num_workers)
