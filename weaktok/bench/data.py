"""``weaktok bench data``: audio-seconds per second delivered by the shard loader vs a per-file loader.

Baseline: what per-file loaders do: for every sample, open the original file with soundfile, mix to mono,
resample to the project rate and crop (``weaktok.audio.load_audio`` + crop), single process. The sources are
the real sonic-pi-samples FLACs (44.1/48 kHz). The shard loader reads the same audio from WebDataset shards
(already mono, resampled, FLAC-compressed) with 0, 1 and 2 DataLoader workers. Goal: >= 5x.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from weaktok.audio import SONIC_PI_SAMPLES, load_audio
from weaktok.bench.common import BenchResult
from weaktok.data.loader import loop_crop, train_loader
from weaktok.data.shards import build_shards

BENCH_DIR = Path("bench_results")
SOURCE = SONIC_PI_SAMPLES
CLIP_SECONDS = 4.0
SR = 22050


def bench_shards() -> Path:
    shards = BENCH_DIR / "shards-data-bench"
    if not (shards / "manifest.json").is_file():
        build_shards(SOURCE, shards, min_shards=4, num_actors=1, progress=False)
    return shards


def per_file(sources: list[str], n: int) -> float:
    """Audio-seconds/s of the per-file baseline over ``n`` random draws."""
    rng = random.Random(0)
    t0 = time.perf_counter()
    for _ in range(n):
        y = load_audio(rng.choice(sources), SR)
        loop_crop(y, int(CLIP_SECONDS * SR), rng.randrange(len(y)))
    return n * CLIP_SECONDS / (time.perf_counter() - t0)


def shard_loader(shards: Path, n: int, workers: int, batch: int = 8) -> float:
    loader = train_loader(
        str(shards), batch, CLIP_SECONDS, samples_per_rank=n, num_workers=workers, seed=0
    )
    t0 = time.perf_counter()
    got = sum(b["audio"].shape[0] for b in loader)
    return got * CLIP_SECONDS / (time.perf_counter() - t0)


def run(quick: bool = False) -> list[BenchResult]:
    shards = bench_shards()
    manifest = json.loads((shards / "manifest.json").read_text())
    skipped = {s["path"] for s in manifest["skipped"]}
    sources = [str(p) for p in sorted(SOURCE.glob("*.flac")) if str(p) not in skipped]
    n = 64 if quick else 256
    base = per_file(sources, n // 2)
    results = []
    for workers in (0, 1, 2):
        rate = shard_loader(shards, n, workers)
        results.append(
            BenchResult(
                name=f"shard loader, {workers} worker(s) vs per-file soundfile+resample",
                value=rate,
                baseline=base,
                units="audio-s/s",
                goal="ratio >= 5" if workers == 2 else "info",
                passed=(rate / base >= 5) if workers == 2 else None,
                note=f"{n} clips of {CLIP_SECONDS:.0f} s, batch 8; includes DataLoader start-up"
                if workers
                else "",
            )
        )
    return results
