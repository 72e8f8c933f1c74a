"""The exact L-Score through the Ray pool during training (rank 0 only): every ``lscore.pool_every`` steps a few
reconstructions are inverted to audio (Griffin-Lim) and submitted; results are logged (``kind: lscore_exact``)
when they arrive, the step never waits. A pool error (an actor died past its retries) is counted in
``TrainState.lscore_pool_errors`` and training goes on. Validation's exact L-Score: validate.py."""

from __future__ import annotations

import numpy as np
import torch

from weaktok.config import Config
from weaktok.train.distributed import Dist


def start_pool(cfg: Config, dist: Dist):
    """The L-Score pool on rank 0 when the config uses it (training submissions or validation items), else None."""
    if not dist.is_main or not (cfg.lscore.pool_every or cfg.lscore.val_items):
        return None
    # here, not at the top: imports Ray, which only the pool needs
    from weaktok.lscore.pool import LScorePool

    return LScorePool(num_actors=cfg.lscore.pool_actors or None)


def submit_outputs(pool, front, recon: torch.Tensor, cfg: Config, step: int) -> None:
    with torch.no_grad():
        waves = front.inverse(recon.clamp_min(0)).cpu().numpy()
    pool.submit(list(waves), cfg.audio.sample_rate, tag=step, block=False)


def poll_pool(pool, state, log, hooks) -> None:
    """Log (and pass to ``hooks.on_log``) each result the pool has finished; never waits."""
    if pool is None:
        return
    from weaktok.lscore.pool import LScorePoolError  # Ray: see start_pool

    try:
        finished = pool.poll()
    except LScorePoolError as e:  # an actor died past its retries: the pool replaced it; training goes on
        state.lscore_pool_errors += 1
        print(f"[weaktok] L-Score pool error (step {state.step}, continuing): {e}", flush=True)
        return
    for tag, scores in finished:
        record = {"kind": "lscore_exact", "step": state.step, "from_step": tag,
                  "lscore_exact": np.asarray(scores).mean(0).tolist(), "pool": pool.stats()}
        log.write(record)
        hooks.on_log(record)
