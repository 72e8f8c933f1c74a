"""The exact L-Score through the Ray pool during training (rank 0 only): every ``lscore.pool_every`` steps a few
reconstructions are inverted to audio (Griffin-Lim) and submitted; results are logged (``kind: lscore_exact``)
when they arrive, the step never waits. A pool error (an actor died past its retries) is counted in
``TrainState.lscore_pool_errors`` and training goes on. Validation's exact L-Score: validate.py."""

from __future__ import annotations

import logging

import numpy as np
import torch

from weaktok.config import Config
from weaktok.data.loader import eval_loader
from weaktok.generate.sampler import MODES
from weaktok.train.distributed import Dist, broadcast_object

log = logging.getLogger(__name__)


def start_pool(cfg: Config, dist: Dist):
    """The L-Score pool on rank 0 when the config uses it (training submissions or validation items), else None."""
    if not dist.is_main or not (cfg.lscore.pool_every or cfg.lscore.val_items):
        return None
    # here, not at the top: imports Ray, which only the pool needs
    from weaktok.lscore.pool import LScorePool  # noqa: PLC0415

    return LScorePool(num_actors=cfg.lscore.pool_actors or None)


@torch.no_grad()
def lscore_targets(
    cfg: Config, manifest: dict, front, lscore_fn, dist: Dist, pool
) -> tuple[dict, dict]:
    """(the L-Score loss's target, validation's target), each {"mean": (4,), "std": (4,)} on the device.

    ``lscore.loss_target: manifest``: both are the manifest's exact L-Score of whole items. ``surrogate``: the loss
    matches the differentiable L-Score of ``lscore.target_items`` real training crops of the training length, and
    validation compares the exact L-Score of its generations (of that length too) with the exact L-Score of the same
    crops (the pool, rank 0; the manifest's when there is no pool). Rank 0 reads the crops, deterministically, and
    broadcasts."""
    manifest_target = {
        k: torch.tensor(manifest["lscore_target"][k], device=dist.device) for k in ("mean", "std")
    }
    if cfg.lscore.loss_target == "manifest":
        return manifest_target, manifest_target
    stats = None
    if dist.is_main:
        scores, waves = [], []
        for batch in eval_loader(cfg.data.shards, "train", 16, cfg.audio.clip_seconds):
            scores.append(lscore_fn(front.power(front(batch["audio"].to(dist.device)))).cpu())
            waves += list(batch["audio"].numpy())
            if len(waves) >= cfg.lscore.target_items:
                break
        L = torch.cat(scores)[: cfg.lscore.target_items]
        if len(L) < 2:
            raise ValueError(
                f"lscore.loss_target=surrogate: the train split of {cfg.data.shards} has {len(L)} items"
            )
        stats = {"loss": {"mean": L.mean(0), "std": L.std(0)}}
        if pool is not None:
            E = torch.as_tensor(
                pool.map(waves[: len(L)], cfg.audio.sample_rate), dtype=torch.float32
            )  # (n, 4)
            stats["val"] = {"mean": E.mean(0), "std": E.std(0)}
    stats = broadcast_object(stats, dist)
    on = lambda d: {k: v.to(dist.device) for k, v in d.items()}  # noqa: E731
    return on(stats["loss"]), on(stats["val"]) if "val" in stats else manifest_target


def feedback_step(
    correction: list[float],
    val: dict,
    val_target: dict,
    loss_target: dict,
    gain: float,
    clamp: float = 1.0,
    active: bool = True,
) -> list[float]:
    """The closed loop's update (``lscore.feedback``): the surrogate target's correction after a validation whose
    generations the pool scored exactly. Per term k, with d_k = mean over modes of (exact_k - target_k) / std_k:
    correction_k -= gain * d_k * surrogate std_k (a too-high exact score lowers what the loss asks of the surrogate),
    then clamped to +-clamp surrogate std_k (``lscore.feedback_clamp``), so a few noisy validations cannot wind it up.
    Unchanged when the validation has no exact scores, or when the L-Score loss is off (``active`` False: the
    curriculum's reconstruction-only phase, where the loss cannot act on the correction)."""
    modes = [m for m in MODES if f"val_gen_{m}_lscore" in val]
    if not modes or not active:
        return correction
    tm, ts = val_target["mean"].cpu().numpy(), val_target["std"].cpu().numpy()
    d = np.mean(
        [(np.asarray(val[f"val_gen_{m}_lscore"]) - tm) / np.maximum(ts, 1e-6) for m in modes],
        axis=0,
    )
    sd = loss_target["std"].cpu().numpy()
    return [
        float(np.clip(c - gain * dk * s, -clamp * s, clamp * s))
        for c, dk, s in zip(correction, d, sd)
    ]


def submit_outputs(pool, front, recon: torch.Tensor, cfg: Config, step: int) -> None:
    with torch.no_grad():
        waves = front.inverse(recon.clamp_min(0)).cpu().numpy()
    pool.submit(list(waves), cfg.audio.sample_rate, tag=step, block=False)


def poll_pool(pool, state, metrics, hooks) -> None:
    """Write to ``metrics`` (the run's MetricsLog) and pass to ``hooks.on_log`` each result the pool has finished;
    never waits."""
    if pool is None:
        return
    from weaktok.lscore.pool import LScorePoolError  # noqa: PLC0415 (imports Ray: see start_pool)

    try:
        finished = pool.poll()
    except (
        LScorePoolError
    ) as e:  # an actor died past its retries: the pool replaced it; training goes on
        state.lscore_pool_errors += 1
        log.info(f"L-Score pool error (step {state.step}, continuing): {e}")
        return
    for tag, scores in finished:
        record = {
            "kind": "lscore_exact",
            "step": state.step,
            "from_step": tag,
            "lscore_exact": np.asarray(scores).mean(0).tolist(),
            "pool": pool.stats(),
        }
        metrics.write(record)
        hooks.on_log(record)
