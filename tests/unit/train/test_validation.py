"""Validation scores generations, not reconstructions (weaktok/train/validation.py), without DeepSpeed: a tiny
untrained model behind a stand-in engine, real shards and front end, and a serial stand-in for the Ray pool that
records the waveforms it is given. The sweep objective comes from the generations' distance
(weaktok/launch/objective.py)."""

import math

import numpy as np
import pytest
import torch

from tests.helpers import make_tiny_shards
from weaktok.audio import SpecFrontEnd
from weaktok.config import load_config
from weaktok.data.manifest import load_manifest
from weaktok.data.prior import corpus_spectrum
from weaktok.generate import MASK_FRACTION, MODES, seed_hole
from weaktok.launch.objective import sweep_metrics
from weaktok.model.unet import build_model
from weaktok.train.distributed import Dist
from weaktok.train.state import TrainState
from weaktok.train.trainer import Trainer
from weaktok.train.validation import validate

N = 2  # lscore.val_items: outputs per mode


class RecordingPool:
    """Stands in for the Ray L-Score pool: scores serially with librosa, keeps the waveforms' lengths."""

    def __init__(self):
        self.lengths: list[list[int]] = []

    def map(self, waves, sr):
        from weaktok.lscore.exact import exact_lscore

        self.lengths.append([len(w) for w in waves])
        return np.stack([exact_lscore(w, sr) for w in waves])


class FailingPool:
    def map(self, waves, sr):
        from weaktok.lscore.pool import LScorePoolError

        raise LScorePoolError("L-Score actor 0 died more than max_retries=3 times")


class Engine(torch.nn.Module):
    """What validate needs of a DeepSpeed engine: called on a batch, ``eval``/``train``, the model as ``module``."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    shards = make_tiny_shards(
        tmp_path_factory.mktemp("val_shards"), n_train=8, n_val=4, seconds=2.0
    )
    cfg = load_config("tiny", [f"data.shards={shards}", f"lscore.val_items={N}"])
    front = SpecFrontEnd(
        cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length, cfg.lscore.griffin_lim_iters
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, front.n_freqs)
    target = {k: torch.tensor(load_manifest(shards)["lscore_target"][k]) for k in ("mean", "std")}
    prior = corpus_spectrum(shards, front, cfg.audio.clip_seconds)
    return cfg, front, model, target, prior


def run_validation(tiny, pool, model=None, generate=True):
    cfg, front, base, target, prior = tiny
    state = TrainState(step=3, epoch=1)
    dist = Dist(0, 1, 0, torch.device("cpu"))
    return validate(
        cfg, dist, Engine(model or base), front, target, state, pool, prior if generate else None
    ), state


def test_validation_scores_generations_seed_based_on_the_hole_only(tiny):
    cfg, front, *_ = tiny
    pool = RecordingPool()
    torch.manual_seed(1)
    run_validation(
        tiny, pool, generate=False
    )  # (the val loader draws its base seed from the global RNG)
    rng = torch.get_rng_state()
    torch.manual_seed(1)
    record, state = run_validation(tiny, pool)
    assert torch.equal(
        torch.get_rng_state(), rng
    )  # generating leaves training's RNG stream as it was (fork_rng)
    frames = front.num_frames(round(cfg.audio.clip_seconds * cfg.audio.sample_rate))
    first = frames - round(MASK_FRACTION * frames)
    assert first == int(seed_hole(frames).int().argmax())
    whole, hole = (frames - 1) * cfg.audio.hop_length, (frames - 1 - first) * cfg.audio.hop_length
    assert pool.lengths == [
        [whole] * N + [hole] * N
    ]  # one pool call: uncond whole, seed-based cropped to the hole
    assert record["val_items"] == 4 and math.isfinite(record["val_recon"])
    for mode in MODES:
        assert record[f"val_gen_{mode}_items"] == N
        for key in ("lscore", "rel_err", "std_dist"):
            values = record[f"val_gen_{mode}_{key}"]
            assert len(values) == 4 and all(math.isfinite(v) for v in values), (mode, key, values)
    total = np.mean([sum(record[f"val_gen_{m}_std_dist"]) for m in MODES])
    assert record["val_gen_std_dist_total"] == pytest.approx(total)
    assert math.isfinite(record["val_gen_rel_err_mean"]) and record["val_gen_steps"] >= 1
    assert not [
        k for k in record if k.startswith("val_lscore")
    ]  # the reconstruction-based keys are gone
    assert state.lscore_pool_errors == 0

    again, _ = run_validation(tiny, RecordingPool())
    assert again == record  # seeded: the same weights give the same record

    metrics = sweep_metrics(record, 0.5)
    assert metrics["lscore_dist"] == record["val_gen_std_dist_total"]
    assert metrics["objective"] == pytest.approx(
        record["val_recon"] + 0.5 * record["val_gen_std_dist_total"]
    )
    per_term = [
        metrics[f"lscore_dist_{t}"] for t in ("timbral", "density", "irregularity", "structural")
    ]
    assert sum(per_term) == pytest.approx(
        record["val_gen_std_dist_total"]
    )  # per term: mean over the modes


def test_pool_error_is_recorded_and_makes_the_objective_inf(tiny):
    record, state = run_validation(tiny, FailingPool())
    assert "max_retries" in record["val_gen_error"] and state.lscore_pool_errors == 1
    assert "val_gen_std_dist_total" not in record
    assert sweep_metrics(record, 0.1)["objective"] == float("inf")
    assert sweep_metrics(record, 0.0)["objective"] == pytest.approx(
        record["val_recon"]
    )  # L-Score not weighed


def test_bf16_model_generates_in_its_own_dtype(tiny):
    """A bf16 engine (DeepSpeed's bf16 casts the module): generation feeds it bf16 and reads its output as fp32."""
    bf16 = build_model(tiny[0].model, tiny[1].n_freqs)
    bf16.load_state_dict(tiny[2].state_dict())
    record, _ = run_validation(tiny, RecordingPool(), bf16.to(torch.bfloat16))
    assert all(math.isfinite(v) for m in MODES for v in record[f"val_gen_{m}_lscore"])


def test_no_prior_or_no_items_generates_nothing(tiny):
    cfg, front, model, target, _ = tiny
    pool = RecordingPool()
    dist = Dist(0, 1, 0, torch.device("cpu"))
    record = validate(cfg, dist, Engine(model), front, target, TrainState(), pool, None)
    assert pool.lengths == [] and not [k for k in record if k.startswith("val_gen")]


def test_trainer_computes_the_validation_prior_once(tiny, monkeypatch, tmp_path):
    """Without ``fill: prior`` the trainer computes the prior at the first validation and keeps it; with it,
    validation reuses training's."""
    import weaktok.train.trainer as trainer_module

    cfg, front, _, _, prior = tiny
    calls = []
    monkeypatch.setattr(trainer_module, "corpus_prior", lambda *a: calls.append(a) or prior)
    t = Trainer(cfg, tmp_path)
    t.front, t.dist = front, Dist(0, 1, 0, torch.device("cpu"))
    assert t.validation_prior() is prior and t.validation_prior() is prior and len(calls) == 1
    t.prior = {"mean": torch.zeros(3)}  # training's own (fill: prior) wins
    assert t.validation_prior() is t.prior
    off = Trainer(load_config("tiny", ["lscore.val_items=0"]), tmp_path)
    assert off.validation_prior() is None
