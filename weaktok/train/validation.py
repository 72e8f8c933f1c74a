"""Validation at each epoch's end: reconstruction loss and chunk statistics over the val split (every rank its
share, summed), and the exact L-Score (librosa, through the Ray pool on rank 0) of a few *generations* against the
corpus target.

Why generations: a reconstruction is nearly its input, so its L-Score sits near the target whatever the model
makes of noise; what weaktok is for (and what ``weaktok evaluate`` reports) is generation. Each validation therefore
generates, with the procedure of ``weaktok generate`` (weaktok/generate/sampler.py: ``STEPS`` refinement passes from the
prior noise, or a flow model's ODE), ``lscore.val_items`` outputs per mode:

* ``uncond``: unconditional outputs of the training clip length, scored whole;
* ``seed``: seed-based outputs from the first val items, their last ``MASK_FRACTION`` in-painted, scored on the
  in-painted samples only (the waveform of the whole output, cropped to the hole after Griffin-Lim): the known part
  is the model's rendering of the seed, a reconstruction again. The target is the train split's, of whole clips.

Per mode the record holds the mean exact L-Score, its relative error and its standardised distance to the target
per term (|mean - target| / target std); ``val_gen_std_dist_total`` (the sum over terms, averaged over the modes) is
what sweeps optimise (weaktok/launch/objective.py).

Repeatable: the prior noise comes from a generator seeded from ``cfg.seed`` and the rank, and Griffin-Lim's random
phases from the global RNG seeded the same way inside ``torch.random.fork_rng`` (training's RNG streams are left as
they were), so the same weights give the same record. Ranks: each generates ceil(n / world) outputs per mode with
the unwrapped model in its own dtype (every rank runs the same passes, which ZeRO-3's parameter gathering needs);
rank 0 gathers the waveforms, keeps the first n per mode and scores them in one pool call.

For the experiment trackers (weaktok/train/tracking.py) rank 0 also keeps its first ``tracking.audio_clips``
generations per mode whole, as ``ValClip``: waveform, spectrogram and the chunk starts of the model's last pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from weaktok.data.loader import eval_loader
from weaktok.generate.sampler import (
    MASK_FRACTION,
    MODES,
    STEPS,
    chunk_start_frames,
    seed_based,
    seed_hole_start,
    unconditional,
)
from weaktok.lscore.exact import LSCORE_NAMES
from weaktok.model import flow
from weaktok.train.distributed import all_reduce_sum, gather_objects
from weaktok.train.step import model_dtype

log = logging.getLogger(__name__)

GEN_SEED = 7907  # validation's generator seed: cfg.seed * 1000 + GEN_SEED + rank (apart from training's streams)


@dataclass
class ValClip:
    """One validation generation, whole, for the trackers."""

    mode: str  # uncond or seed
    index: int  # its place among this rank's outputs of the mode
    wave: np.ndarray  # (N,) Griffin-Lim waveform (seed: the seed's rendering, then the hole)
    spec: np.ndarray  # (F, T) log1p magnitude
    starts: np.ndarray  # (C,) chunk starts of the last pass, spectrogram frames
    hole_start: int  # the first generated frame (0: all of it)


@torch.no_grad()
def validate(
    cfg,
    dist,
    engine,
    front,
    target,
    state,
    pool,
    prior: dict | None = None,
    clips: list | None = None,
) -> dict:
    """The ``kind: val`` record (on every rank; the exact L-Score keys only on rank 0, when the pool scored).

    ``state``: the TrainState (its step and epoch are recorded; a pool error is counted there). ``prior``: the
    prior statistics (weaktok/data/prior.py) on the device, needed to generate; None generates nothing.
    ``clips``: a list to which this rank's first ``tracking.audio_clips`` generations per mode are appended
    (ValClip), or None.
    Keys: val_items, val_recon, val_boundary_rate, val_mean_chunk_len; with scores, per mode m in MODES
    val_gen_<m>_items, val_gen_<m>_lscore (4 means), val_gen_<m>_rel_err, val_gen_<m>_std_dist (4 each), and
    val_gen_std_dist_total, val_gen_rel_err_mean, val_gen_target, val_gen_target_std, val_gen_steps, lscore_names;
    on a pool error val_gen_error instead."""
    n_gen = cfg.lscore.val_items if prior is not None else 0
    share = -(-n_gen // dist.world)  # outputs per mode on this rank
    engine.eval()
    sums = [
        0.0,
        0.0,
        0.0,
        0.0,
        0.0,
    ]  # recon L1 sum, items, boundary rate sum, chunk length sum, flow loss sum
    flow_model = cfg.model.objective == "flow"
    vgen = torch.Generator(device=dist.device).manual_seed(
        cfg.seed * 1000 + GEN_SEED + 17 + dist.rank
    )
    seeds: list[
        torch.Tensor
    ] = []  # (F, T) this rank's first val spectrograms, the seed-based outputs' seeds
    budget = cfg.data.val_max_items or float("inf")
    seen = 0
    for batch in eval_loader(
        cfg.data.shards, "val", cfg.data.val_batch_size, cfg.audio.clip_seconds
    ):
        if seen >= budget / dist.world:
            break
        spec = front(batch["audio"].to(dist.device))
        # flow: fixed noise, times and masks (weaktok/model/flow.py eval_loss): the same weights, the same number
        if flow_model:
            known = flow.sample_known(
                spec.shape[0], spec.shape[-1], cfg.model.flow, vgen, dist.device
            )
            loss, l1, out = flow.eval_loss(engine.module, spec, known, vgen)
            sums[4] += loss.sum().item()
        else:
            out = engine(spec.to(model_dtype(engine)))
            l1 = (out.recon.float() - spec).abs().mean(dim=(1, 2))
        n = spec.shape[0]
        seen += n
        sums[0] += l1.sum().item()
        sums[1] += n
        sums[2] += float(out.stats["boundary_rate"]) * n
        sums[3] += float(out.stats["mean_chunk_len"]) * n
        seeds += list(spec[: share - len(seeds)])
    if dist.world > 1:  # every rank in-paints as many seeds (ZeRO-3: the same passes on every rank)
        seeds = seeds[: min(gather_objects([len(seeds)], dist))]
    waves = (
        generated_waves(cfg, dist, engine.module, front, prior, share, seeds, clips)
        if share
        else {}
    )
    engine.train()
    total = all_reduce_sum(sums, dist)
    n = max(total[1], 1)
    record = {
        "kind": "val",
        "step": state.step,
        "epoch": state.epoch,
        "val_items": int(total[1]),
        "val_recon": total[0] / n,
        "val_boundary_rate": total[2] / n,
        "val_mean_chunk_len": total[3] / n,
    }
    if flow_model:
        record["val_flow"] = total[4] / n
    gathered = {mode: gather_objects(waves[mode], dist)[:n_gen] for mode in MODES} if share else {}
    if dist.is_main and pool is not None and gathered:
        record.update(score_generations(gathered, cfg.audio.sample_rate, target, state, pool))
        if flow_model and "val_gen_steps" in record:
            record["val_gen_steps"] = cfg.model.flow.steps
    return record


def generated_waves(
    cfg,
    dist,
    model,
    front,
    prior: dict,
    n: int,
    seeds: list[torch.Tensor],
    clips: list | None = None,
) -> dict:
    """This rank's validation generations as waveforms: ``{"uncond": n (N,) arrays, "seed": one (N_hole,) array per
    seed}``. ``model``: the unwrapped model (engine.module), in eval mode; ``seeds``: (F, T) spectrograms of the
    training clip length. One batched Griffin-Lim call for both modes; seed-based outputs cropped to the hole.
    ``clips``: as for validate."""
    gen_seed = cfg.seed * 1000 + GEN_SEED + dist.rank
    gen = torch.Generator(device=dist.device).manual_seed(gen_seed)
    frames = front.num_frames(round(cfg.audio.clip_seconds * cfg.audio.sample_rate))
    with torch.random.fork_rng(devices=[dist.device] if dist.device.type == "cuda" else []):
        torch.manual_seed(
            gen_seed
        )  # Griffin-Lim's random phase init draws from the global generator
        passes = [unconditional(model, prior, n, frames, None, gen)]  # (n, F, T), last pass
        if seeds:
            passes.append(seed_based(model, torch.stack(seeds), prior, MASK_FRACTION, None, gen))
        specs = torch.cat([p[0] for p in passes])  # (n + S, F, T)
        wav = front.inverse(specs).cpu().numpy()  # (n + S, (T - 1) * hop)
    hole = seed_hole_start(frames, MASK_FRACTION)
    start = hole * front.hop_length  # the hole's first sample (frame t is centred on t * hop)
    if clips is not None:
        keep = cfg.tracking.audio_clips
        for (spec, out), mode, first, hole_start in zip(passes, MODES, (0, n), (0, hole)):
            for i in range(min(keep, spec.shape[0])):
                starts = chunk_start_frames(out, i)
                clips.append(
                    ValClip(mode, i, wav[first + i], spec[i].cpu().numpy(), starts, hole_start)
                )
    return {"uncond": list(wav[:n]), "seed": [w[start:] for w in wav[n:]]}


def score_generations(waves: dict, sr: int, target: dict, state, pool) -> dict:
    """Rank 0: the exact L-Score of ``waves`` ({mode: list of (N,) arrays}) in one pool call -> the generation keys
    of the record (see validate), or ``val_gen_error`` when the pool failed (counted in ``state``)."""
    # here, not at the top: imports Ray, which only the pool needs
    from weaktok.lscore.pool import LScorePoolError  # noqa: PLC0415

    clips = [w for mode in MODES for w in waves[mode]]
    if not clips:
        return {}
    try:
        scores = pool.map(clips, sr)  # (N, 4) exact, librosa, in input order
    except (
        LScorePoolError
    ) as e:  # actors died past their retries: this validation goes without exact scores
        state.lscore_pool_errors += 1
        log.info(
            f"L-Score pool error in validation (step {state.step}, continuing without exact "
            f"L-Scores): {e}"
        )
        return {"val_gen_error": str(e)}
    tmean = target["mean"].cpu().numpy()
    tstd = target["std"].cpu().numpy()
    out = {
        "val_gen_target": tmean.tolist(),
        "val_gen_target_std": tstd.tolist(),
        "val_gen_steps": STEPS,
        "lscore_names": list(LSCORE_NAMES),
    }
    totals, rels, first = [], [], 0
    for mode in MODES:
        part, first = (
            scores[first : first + len(waves[mode])],
            first + len(waves[mode]),
        )  # (n_mode, 4)
        if not len(part):
            continue
        mean = part.mean(0)
        rel = np.abs(mean - tmean) / np.maximum(np.abs(tmean), 1e-6)
        std_dist = np.abs(mean - tmean) / np.maximum(
            tstd, 1e-6
        )  # standardised L1 distance of the means
        out.update(
            {
                f"val_gen_{mode}_items": len(part),
                f"val_gen_{mode}_lscore": mean.tolist(),
                f"val_gen_{mode}_rel_err": rel.tolist(),
                f"val_gen_{mode}_std_dist": std_dist.tolist(),
            }
        )
        totals.append(float(std_dist.sum()))
        rels.append(rel)
    out["val_gen_std_dist_total"] = float(
        np.mean(totals)
    )  # sum over terms, averaged over the modes
    out["val_gen_rel_err_mean"] = float(np.mean(rels))
    return out
