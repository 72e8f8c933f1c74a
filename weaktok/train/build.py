"""What a run is built from, before its first step (``Trainer.setup`` calls these in order): the data checks that
fail before any compute, the seeds, the metrics exporter, the spectrogram front end and the differentiable
L-Score, generation's prior statistics, the model (with a flow model's normaliser or ``train.init_from``'s
weights) and the epoch's size in batches and steps."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from weaktok.audio import SpecFrontEnd
from weaktok.config import Config, ConfigError
from weaktok.data.manifest import load_manifest, shard_paths
from weaktok.data.prior import corpus_spectrum
from weaktok.lscore.differentiable import DifferentiableLScore
from weaktok.model.flow import set_normaliser
from weaktok.model.unet import ChunkedUNet, build_model
from weaktok.train.distributed import Dist, broadcast_object
from weaktok.train.prometheus import MetricsExporter
from weaktok.train.resume import load_init_weights


def check_data(cfg: Config) -> dict:
    """The shards' manifest, after the checks that need no compute: the train split's shards (and, with
    ``data.verify_shards``, the val split's, which validation reads every epoch) and the sample rate."""
    manifest = load_manifest(cfg.data.shards)
    shard_paths(cfg.data.shards, "train", manifest, verify=cfg.data.verify_shards)
    if cfg.data.verify_shards and (manifest["splits"].get("val") or {}).get("shards"):
        shard_paths(cfg.data.shards, "val", manifest, verify=True)
    if manifest["sample_rate"] != cfg.audio.sample_rate:
        raise ConfigError(
            f"config key 'audio.sample_rate': {cfg.audio.sample_rate} differs from the shards' "
            f"{manifest['sample_rate']} ({cfg.data.shards}/manifest.json)"
        )
    return manifest


def seed_everything(seed: int) -> None:
    """torch's, numpy's and Python's global RNGs (each rank passes its own seed)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def start_exporter(cfg: Config, out: Path, dist: Dist, target: dict) -> MetricsExporter | None:
    """The Prometheus exporter when ``metrics.enabled``; created before heavy compute, so a metrics port in use
    fails here (weaktok/train/prometheus/)."""
    if not cfg.metrics.enabled:
        return None
    return MetricsExporter(cfg, out, dist.rank, dist.local_rank, dist.world, target, dist.device)


def build_front(cfg: Config, device: torch.device) -> SpecFrontEnd:
    """The spectrogram front end (log1p STFT magnitude and its Griffin-Lim inverse) on ``device``."""
    return SpecFrontEnd.for_config(cfg).to(device)


def build_lscore(cfg: Config, device: torch.device) -> DifferentiableLScore:
    """The differentiable L-Score on the front end's STFT geometry, in ``lscore.mode``."""
    a = cfg.audio
    return DifferentiableLScore(a.sample_rate, a.n_fft, a.hop_length, mode=cfg.lscore.mode).to(
        device
    )


def load_prior(cfg: Config, front: SpecFrontEnd, dist: Dist) -> dict | None:
    """Generation's prior statistics (corpus_prior) for ``fill: prior`` and for flow models (their normalisation,
    weaktok/model/flow.py), else None."""
    inpaint_prior = cfg.train.corruption.fill == "prior" and cfg.train.corruption.mask_prob
    if cfg.model.objective != "flow" and not inpaint_prior:
        return None
    return corpus_prior(cfg, front, dist)


def corpus_prior(cfg: Config, front: SpecFrontEnd, dist: Dist) -> dict:
    """Generation's prior statistics (weaktok/data/prior.py) from rank 0's share of the training split, computed on
    the CPU and broadcast; on every rank's device."""
    stats = (
        corpus_spectrum(cfg.data.shards, front.cpu(), cfg.audio.clip_seconds)
        if dist.is_main
        else None
    )
    front.to(dist.device)
    stats = broadcast_object(stats, dist)
    return {k: v.to(dist.device) for k, v in stats.items()}


def build_run_model(
    cfg: Config, n_freqs: int, prior: dict | None, resuming: bool, dist: Dist
) -> ChunkedUNet:
    """The model, before DeepSpeed wraps it: a flow model's normaliser from ``prior`` (a resumed run loads its own
    buffers); ``train.init_from``'s weights unless the run resumes its own checkpoint (own checkpoint >
    init_from)."""
    model = build_model(cfg.model, n_freqs)
    if cfg.model.objective == "flow" and not cfg.train.init_from:
        set_normaliser(model, prior)
    if cfg.train.init_from and not resuming:
        load_init_weights(model, cfg, dist)
    return model


def epoch_size(cfg: Config) -> tuple[int, int, int]:
    """(micro-batches per epoch, optimizer steps per epoch, optimizer steps of the whole run)."""
    batches = -(-cfg.data.samples_per_epoch // cfg.data.batch_size)
    steps = max(1, batches // cfg.train.grad_accum)
    return batches, steps, cfg.train.max_steps or steps * cfg.train.epochs
