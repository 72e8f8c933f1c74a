"""What Table 1 scores, and how: the exact L-Score of waveform batches, offline features of clips, and the region
of a clip each generation mode is scored on.

    score = Scorer(sr, workers=0, onset="paper")       # score(waves) -> (B, 4) exact L-Scores
    F = clip_features(waves, sr)                         # (B, d) features of peak-normalised clips
    regions = make_regions(front, sr, seconds, mask_fraction)
    regions.crop("seed", waves)                          # (B, n) -> B waves of the in-painted region only

Unconditional outputs are scored whole. Seed-based outputs are scored *only on the in-painted region* (the last
``mask_fraction`` of the clip; the first part is the model's rendering of the seed). Real data and every baseline
are scored on the same region of the same length (docs/evaluation.md, "What is scored").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from weaktok.evaluation import features as FT
from weaktok.generate.sampler import seed_hole_start
from weaktok.lscore.exact import LSCORE_NAMES, exact_lscore


class Scorer:
    """Exact L-Score of waveform batches: serial, or on ``workers`` Ray actors (a private local cluster, started
    once). Scores are computed batch by batch, so no waveform outlives its batch (bounded memory on big splits)."""

    def __init__(self, sr: int, workers: int = 0, onset: str = "paper"):
        self.sr, self.pool, self.onset = sr, None, onset
        if onset != "paper" and workers > 1:
            raise ValueError(
                f"--onset {onset} is scored serially: the Ray pool runs the paper's preset "
                "(drop --workers)"
            )
        if workers > 1:
            from weaktok.lscore.pool import LScorePool  # noqa: PLC0415 (imports Ray: only a pool needs it)

            self.pool = LScorePool(num_actors=workers, address="local", niceness=0)

    def __call__(self, waves) -> np.ndarray:  # list of (N_i,) -> (B, 4)
        waves = list(waves)
        if not waves:
            return np.zeros((0, len(LSCORE_NAMES)))
        if self.pool is not None:
            return self.pool.map(waves, self.sr)
        return np.stack([exact_lscore(w, self.sr, onset=self.onset) for w in waves])

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()


def clip_features(waves, sr: int) -> np.ndarray:
    """(n, d) offline features of peak-normalised clips: Griffin-Lim's output level is arbitrary (model outputs
    can be many times louder than the peak-normalised corpus; measured in docs/results.md), so loudness is left
    out of every distance."""
    return FT.features([w / max(float(np.abs(w).max()), 1e-9) for w in waves], sr)


@dataclass(frozen=True)
class Regions:
    """Where each mode is scored, in samples and spectrogram frames of an ``n``-sample clip."""

    n: int  # samples per clip
    frames: int  # spectrogram frames per clip
    hole_frame: int  # first in-painted frame (seed mode)
    hole_sample: int  # first scored sample (seed mode): hole_frame x hop
    sr: int

    def crop(
        self, mode: str, waves: np.ndarray
    ) -> list[np.ndarray]:  # (B, n) -> B waves of the mode's region
        return list(waves if mode == "uncond" else waves[:, self.hole_sample :])

    def seconds(self, mode: str) -> float:
        return (self.n - (0 if mode == "uncond" else self.hole_sample)) / self.sr

    def describe(self) -> dict:
        return {
            "uncond": {
                "start_s": 0.0,
                "start_sample": 0,
                "seconds": round(self.seconds("uncond"), 3),
                "what": "the whole output",
            },
            "seed": {
                "start_s": round(self.hole_sample / self.sr, 3),
                "start_sample": self.hole_sample,
                "seconds": round(self.seconds("seed"), 3),
                "what": "the in-painted region only (the seed's part is not scored)",
            },
        }


def make_regions(front, sr: int, seconds: float, mask_fraction: float) -> Regions:
    n = int(round(seconds * sr))
    frames = front.num_frames(n)
    hole = seed_hole_start(frames, mask_fraction)
    return Regions(n, frames, hole, min(hole * front.hop_length, n - 1), sr)
