"""Validation at each epoch's end: reconstruction loss and chunk statistics over the val split (every rank its
share, summed), and the exact L-Score (librosa, through the Ray pool on rank 0) of a few reconstructions against
the corpus target."""

from __future__ import annotations

import numpy as np
import torch

from weaktok.data import eval_loader
from weaktok.lscore.exact import LSCORE_NAMES
from weaktok.train.distributed import all_reduce_sum, gather_objects
from weaktok.train.step import model_dtype


@torch.no_grad()
def validate(cfg, dist, engine, front, lscore_fn, target, state, pool) -> dict:
    """The ``kind: val`` record (on every rank; the exact L-Score keys only on rank 0, when the pool scored).
    ``state``: the TrainState (its step and epoch are recorded; a pool error is counted there)."""
    engine.eval()
    sums = [0.0, 0.0, 0.0, 0.0]  # recon L1 sum, items, boundary rate sum, chunk length sum
    waves: list[np.ndarray] = []
    budget = cfg.data.val_max_items or float("inf")
    seen = 0
    for batch in eval_loader(cfg.data.shards, "val", cfg.data.val_batch_size, cfg.audio.clip_seconds):
        if seen >= budget / dist.world:
            break
        spec = front(batch["audio"].to(dist.device))
        out = engine(spec.to(model_dtype(engine)))
        n = spec.shape[0]
        seen += n
        sums[0] += (out.recon.float() - spec).abs().mean(dim=(1, 2)).sum().item()
        sums[1] += n
        sums[2] += float(out.stats["boundary_rate"]) * n
        sums[3] += float(out.stats["mean_chunk_len"]) * n
        if len(waves) < cfg.lscore.val_items:
            take = out.recon.float()[: cfg.lscore.val_items - len(waves)]
            waves += list(front.inverse(take.clamp_min(0)).cpu().numpy())
    engine.train()
    total = all_reduce_sum(sums, dist)
    n = max(total[1], 1)
    record = {"kind": "val", "step": state.step, "epoch": state.epoch, "val_items": int(total[1]),
              "val_recon": total[0] / n, "val_boundary_rate": total[2] / n, "val_mean_chunk_len": total[3] / n}
    gathered = gather_objects(waves, dist)
    scores = None
    if dist.is_main and pool is not None and gathered:
        # here, not at the top: imports Ray, which only the pool needs
        from weaktok.lscore.pool import LScorePoolError

        try:
            scores = pool.map(gathered, cfg.audio.sample_rate)  # (N, 4) exact, librosa
        except LScorePoolError as e:  # actors died past their retries: this validation goes without exact scores
            state.lscore_pool_errors += 1
            record["val_lscore_error"] = str(e)
            print(f"[weaktok] L-Score pool error in validation (step {state.step}, continuing without exact "
                  f"L-Scores): {e}", flush=True)
    if scores is not None:
        mean = scores.mean(0)
        tmean = target["mean"].cpu().numpy()
        tstd = target["std"].cpu().numpy()
        rel = np.abs(mean - tmean) / np.maximum(np.abs(tmean), 1e-6)
        std_dist = np.abs(mean - tmean) / np.maximum(tstd, 1e-6)  # standardised L1 distance of the means
        record.update({"val_lscore_exact": mean.tolist(), "val_lscore_target": tmean.tolist(),
                       "val_lscore_target_std": tstd.tolist(), "val_lscore_rel_err": rel.tolist(),
                       "val_lscore_rel_err_mean": float(rel.mean()), "val_lscore_std_dist": std_dist.tolist(),
                       "val_lscore_std_dist_total": float(std_dist.sum()), "lscore_names": list(LSCORE_NAMES)})
    return record
