"""Test helpers: small real-audio shard sets built without Ray (exact L-Scores computed serially)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import soundfile as sf
import webdataset as wds

from weaktok.audio import SONIC_PI_SAMPLES
from weaktok.data.manifest import sha256_file, write_manifest

SAMPLES = SONIC_PI_SAMPLES
REPO = Path(__file__).resolve().parents[1]


def _clips(n: int, sr: int, seconds: float, seed: int) -> list[np.ndarray]:
    """Real CC0 loops (tiled/cropped) mixed with sparse and dense click patterns, so L-Scores vary."""
    import librosa

    rng = np.random.default_rng(seed)
    loops = sorted(SAMPLES.glob("loop_*.flac"))
    out = []
    for i in range(n):
        if loops and i % 2 == 0:
            y, file_sr = sf.read(loops[(i // 2) % len(loops)], dtype="float32", always_2d=True)
            y = librosa.resample(y.mean(1), orig_sr=file_sr, target_sr=sr)
            y = np.resize(y, int(seconds * sr))
        else:
            y = 0.01 * rng.standard_normal(int(seconds * sr)).astype(np.float32)
            for t in np.cumsum(rng.uniform(0.05, 0.6, size=40)):
                k = int(t * sr)
                if k < len(y) - 200:
                    y[k : k + 200] += np.hanning(200).astype(np.float32) * rng.uniform(0.3, 1.0)
        out.append((y / max(1e-6, np.abs(y).max()) * 0.9).astype(np.float32))
    return out


def make_tiny_shards(
    folder: Path,
    n_train: int = 24,
    n_val: int = 8,
    sr: int = 22050,
    seconds: float = 2.5,
    per_shard: int = 4,
    seed: int = 0,
) -> Path:
    """A real shard folder (webdataset ShardWriter + manifest) in the layout `weaktok shards` writes."""
    import io

    from weaktok.data.shards import lscore_target
    from weaktok.lscore.exact import exact_lscore

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    splits, train_scores = {}, []
    for split, n in (("train", n_train), ("val", n_val), ("test", n_val)):
        clips = _clips(n, sr, seconds, seed + {"train": 0, "val": 101, "test": 202}[split])
        with wds.ShardWriter(str(folder / f"{split}-%06d.tar"), maxcount=per_shard, verbose=0) as w:
            for i, y in enumerate(clips):
                score = exact_lscore(y, sr)
                if split == "train":
                    train_scores.append(score)
                buf = io.BytesIO()
                sf.write(buf, y, sr, format="FLAC", subtype="PCM_16")
                key = f"{split}{i:04d}"
                meta = {
                    "id": key,
                    "track_id": key,
                    "duration": len(y) / sr,
                    "sample_rate": sr,
                    "lscore": score.tolist(),
                    "tags": [],
                    "license": "cc0",
                    "bpm": None,
                    "source": "synthetic",
                }
                w.write({"__key__": key, "flac": buf.getvalue(), "json": json.dumps(meta).encode()})
        shards = [
            {"file": p.name, "items": per_shard, "sha256": sha256_file(p)}
            for p in sorted(folder.glob(f"{split}-*.tar"))
        ]
        splits[split] = {"count": n, "seconds": n * seconds, "shards": shards}
    write_manifest(
        folder,
        {
            "version": "test",
            "sample_rate": sr,
            "splits": splits,
            "lscore_target": lscore_target(np.array(train_scores)),
            "skipped": [],
            "repaired": [],
        },
    )
    return folder


def cpu_env(**extra) -> dict:
    """Environment for child processes: CPU DeepSpeed, the repo importable, quiet warnings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
    }
    env.update(
        {
            "DS_ACCELERATOR": "cpu",
            "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(REPO),
        }
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def read_metrics(run: Path) -> list[dict]:
    path = Path(run) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def venv_bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def train_cmd(out, shards, *overrides: str, config: str = "tiny") -> list[str]:
    """``weaktok train --config CONFIG --out OUT data.shards=SHARDS [overrides]``: one training process."""
    cmd = [venv_bin("weaktok"), "train", "--config", config, "--out", str(out)]
    return [*cmd, f"data.shards={shards}", *overrides]


def run(cmd: list[str], timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
    if r.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-5000:]}"
        )
    return r


@contextmanager
def deadline(seconds: int, what: str = "the block"):
    """Fail with TimeoutError (rather than hang the suite) when the block runs longer than ``seconds``."""

    def boom(*_):
        raise TimeoutError(f"{what} still running after {seconds} s: a hang")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def examples(n: int) -> int:
    """Hypothesis example count: ``n`` in CI (the derandomized ``ci`` profile, tests/conftest.py), 5x that under
    ``make test-explore`` (HYPOTHESIS_PROFILE=explore), where fresh random draws hunt for new failures."""
    return n * 5 if os.environ.get("HYPOTHESIS_PROFILE") == "explore" else n
