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
trainer can count them (worker processes cannot share a counter with the main process). In evaluation a batch is
collated only once the next one is full or the stream has ended, so items dropped after a worker's last full batch
are counted in its final batch, not lost.

Faults (tests/unit/data/test_faults_data.py): a truncated or unreadable shard, an item with no ``.flac`` member, an
undecodable or non-finite ``.flac``, a sample rate other than the manifest's, and malformed ``.json`` metadata are
each skipped and counted, with the shard file and item key in the log line. A split in which a worker finds not one
readable item is a :class:`~weaktok.data.manifest.ShardsError` naming its shards — never an empty or endless stream.
A missing shard, or one whose sha256 differs from the manifest when ``verify`` (config ``data.verify_shards``) is
on, is a ShardsError naming the file before anything is read.

Security: shards are opened with the builtin ``open`` on absolute local paths from the manifest, never through
webdataset's ``gopen`` (which would run a ``pipe:`` URL as a shell command or fetch ``http:`` URLs with curl), and
only the ``.flac`` and ``.json`` members of an item are read — nothing in a shard is ever unpickled or
``torch.load``-ed. There is no switch to turn this off: the loaders only read weaktok's own shard format.
"""

from __future__ import annotations

import io
import json
import logging
import os
import random
from functools import partial

import numpy as np
import torch
import webdataset as wds

from weaktok.audio import read_audio
from weaktok.data.manifest import ShardsError, load_manifest, shard_paths

log = logging.getLogger(__name__)

MEMBERS = (
    "flac",
    "json",
)  # the only members of an item that are ever read; .pyd/.pickle/.pth are never touched


class Tally:
    """One loader's bookkeeping, in each process that runs its pipeline (every DataLoader worker gets its own
    copy): corrupt items dropped and not yet reported in a batch, shards opened, and the shard count when an item
    last decoded. Per loader, not per process, so one loader's drops never show up in another's batches."""

    def __init__(self):
        self.pending = 0
        self.opened = 0
        self.last_good_at = 0

    def skip(self, exc: Exception) -> bool:
        """webdataset handler: log the corrupt shard data (the file is in the message), count it, keep going."""
        self.pending += 1
        log.warning("skipping corrupt shard data: %s", _describe(exc))
        return True

    def take(self) -> int:
        n, self.pending = self.pending, 0
        return n


def _describe(exc: Exception) -> str:
    parts = [
        str(a) for a in exc.args if a is not None and not hasattr(a, "read")
    ]  # drop stream objects
    return f"{type(exc).__name__}: {' '.join(parts) or exc}"


def _local_path(url) -> str:
    """Accept only an absolute local path (the loaders pass those); a URL or ``pipe:`` command is refused."""
    if not isinstance(url, str) or not os.path.isabs(url):
        raise ShardsError(
            f"shard {url!r}: not an absolute local path (URLs and pipe: commands are never opened)"
        )
    return url


def open_local_shards(src, tally: Tally, max_barren: int | None = None):
    """{url} -> {url, stream}: builtin ``open`` only (never webdataset's gopen: no pipe:, no curl). Raises
    ShardsError when ``max_barren`` shards in a row were opened without one item decoding (every shard corrupt:
    an error, not an endless loop over a resampled source)."""
    tally.last_good_at = tally.opened  # a new pass starts a new streak
    for sample in src:
        url = _local_path(sample["url"])
        if max_barren is not None and tally.opened - tally.last_good_at >= max_barren:
            raise ShardsError(
                f"no readable item in the last {tally.opened - tally.last_good_at} shards opened "
                f"(last: {url}); every shard of this split looks corrupt: rebuild it with "
                "`weaktok shards`, or find the bad files with data.verify_shards=true"
            )
        try:
            stream = open(url, "rb")
        except OSError as e:
            tally.skip(ShardsError(f"shard {url}: cannot open ({e.strerror or e})"))
            continue
        tally.opened += 1
        try:
            yield dict(sample, url=url, stream=stream)
        finally:
            stream.close()


def _select(fname: str) -> bool:
    return fname.rsplit(".", 1)[-1].lower() in MEMBERS


def tar_samples(src, tally: Tally, max_barren: int | None = None):
    """Local shard urls -> raw samples {__key__, __url__, flac?, json?}; only ``MEMBERS`` are read."""
    streams = open_local_shards(src, tally, max_barren=max_barren)
    files = wds.tariterators.tar_file_expander(streams, handler=tally.skip, select_files=_select)
    return wds.tariterators.group_by_keys(files, handler=tally.skip)


def _check_meta(meta) -> dict:
    if not isinstance(meta, dict):
        raise ValueError(f"metadata is a {type(meta).__name__}, not a mapping")
    if "lscore" in meta:
        ls = meta["lscore"]
        if (
            not isinstance(ls, list)
            or len(ls) != 4
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in ls)
        ):
            raise ValueError(f"metadata 'lscore' must be a list of 4 numbers, got {ls!r:.80}")
    return meta


def decode_samples(src, tally: Tally, sample_rate: int | None = None):
    """{__key__, flac, json} -> {key, audio (N,) float32, meta}; undecodable items are counted and dropped.

    ``sample_rate``: the manifest's; an item at another rate is dropped (its crop would be the wrong length)."""
    for sample in src:
        where = f"shard {sample.get('__url__')}: item {sample.get('__key__')}"
        try:
            if "flac" not in sample:
                raise ValueError("no .flac member")
            audio, sr = read_audio(
                io.BytesIO(sample["flac"]), name=f"{sample.get('__key__')}.flac"
            )  # (C, N)
            meta = _check_meta(json.loads(sample["json"])) if "json" in sample else {}
            if audio.shape[0] != 1:
                raise ValueError(f"audio must be mono, got {audio.shape[0]} channels")
            audio = audio[0]
            if not np.isfinite(audio).all():
                raise ValueError("audio has NaN/Inf samples")
            if sample_rate is not None and sr != sample_rate:
                raise ValueError(f"sample rate {sr} Hz, the manifest says {sample_rate} Hz")
        except Exception as e:  # noqa: BLE001 - any decode failure is a corrupt item
            tally.skip(ValueError(f"{where}: {type(e).__name__}: {e}"))
            continue
        tally.last_good_at = tally.opened
        yield {"key": sample["__key__"], "audio": audio, "meta": meta}


def batched(src, tally: Tally, batch_size: int, partial_last: bool, lookahead: bool):
    """Batches of ``batch_size``. With ``lookahead`` each is collated one step late: its ``skipped`` then includes
    every item dropped before the next batch filled, and the last batch every item dropped up to the end of the
    stream (eval: finite streams whose tail must be counted; training streams are endless, so no need there)."""
    ready, current = None, []
    for s in src:
        current.append(s)
        if len(current) == batch_size:
            if not lookahead:
                yield collate(current, tally.take())
            elif ready is not None:
                yield collate(ready, tally.take())
            ready, current = current, []
    if ready is not None and lookahead:
        yield collate(ready, tally.take())
    if current and partial_last:
        yield collate(current, tally.take())


def require_items(src, tally: Tally, urls: list[str], split: str):
    """Pass samples through; a worker that was given shards but decoded no item at all is an error, not silence."""
    opened_before, n = tally.opened, 0
    for s in src:
        n += 1
        yield s
    if n == 0 and (tally.opened > opened_before or tally.pending):
        raise ShardsError(
            f"split '{split}': no readable item in its shards ({tally.pending} corrupt items "
            f"skipped; shards: {', '.join(urls[:4])}{' ...' if len(urls) > 4 else ''})"
        )


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


def collate(samples: list[dict], skipped: int = 0) -> dict:
    lscore = [s["meta"].get("lscore", [float("nan")] * 4) for s in samples]
    return {
        "audio": torch.from_numpy(np.stack([s["audio"] for s in samples])),  # (B, N)
        "lscore": torch.tensor(
            lscore, dtype=torch.float32
        ),  # (B, 4) exact L-Score from the manifest build
        "keys": [s["key"] for s in samples],
        "skipped": skipped,  # corrupt items this worker dropped since its previous batch
    }


def _loader(pipeline: wds.DataPipeline, num_workers: int) -> wds.WebLoader:
    return wds.WebLoader(
        pipeline,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


def _urls(shards: str, split: str, verify: bool) -> tuple[dict, list[str]]:
    manifest = load_manifest(shards)
    return manifest, [
        os.path.abspath(u) for u in shard_paths(shards, split, manifest, verify=verify)
    ]


def train_loader(
    shards: str,
    batch_size: int,
    clip_seconds: float,
    samples_per_rank: int,
    num_workers: int = 2,
    shuffle_buffer: int = 256,
    seed: int = 0,
    epoch: int = 0,
    verify: bool = False,
):
    """Infinite-source training loader; one epoch = ceil(samples_per_rank / batch_size) batches per rank."""
    manifest, urls = _urls(shards, "train", verify)
    sr = int(manifest["sample_rate"])
    n = int(round(clip_seconds * sr))
    if n < 1:
        raise ValueError(f"clip_seconds={clip_seconds} is less than one sample at {sr} Hz")
    batches = max(1, -(-samples_per_rank // batch_size))
    per_worker = max(1, -(-batches // max(1, num_workers)))
    # items already in the shuffle buffer are decoded later than their shard was opened: allow for them
    max_barren = 20 * len(urls) + shuffle_buffer
    tally = Tally()
    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed + 1_000_003 * epoch, deterministic=True),
        partial(tar_samples, tally=tally, max_barren=max_barren),
        # seeded: without a seed webdataset seeds from pid and time, and a run could not be repeated
        wds.shuffle(shuffle_buffer, initial=min(shuffle_buffer, 64), seed=seed + 7_919 * epoch),
        partial(decode_samples, tally=tally, sample_rate=sr),
        partial(random_crops, n=n, seed=seed + epoch),
        partial(batched, tally=tally, batch_size=batch_size, partial_last=False, lookahead=False),
    ).with_epoch(per_worker)
    return _loader(pipeline, num_workers)


def eval_loader(
    shards: str,
    split: str,
    batch_size: int,
    clip_seconds: float,
    num_workers: int = 0,
    verify: bool = False,
):
    """Deterministic loader: each item exactly once across ranks (split by node, then by worker)."""
    manifest, urls = _urls(shards, split, verify)
    sr = int(manifest["sample_rate"])
    n = int(round(clip_seconds * sr))
    if n < 1:
        raise ValueError(f"clip_seconds={clip_seconds} is less than one sample at {sr} Hz")
    tally = Tally()
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        wds.split_by_node,
        wds.split_by_worker,
        partial(tar_samples, tally=tally),
        partial(decode_samples, tally=tally, sample_rate=sr),
        partial(require_items, tally=tally, urls=urls, split=split),
        partial(start_crops, n=n),
        partial(batched, tally=tally, batch_size=batch_size, partial_last=True, lookahead=True),
    )
    return _loader(pipeline, num_workers)
