"""MFU on a CPU with a configured peak (weaktok/train/flops.py): the FLOPs per step are FlopCounterMode's count of
one forward + backward of the model and its loss, the count leaves the model and the RNG streams untouched, and
the exporter's weaktok_mfu_ratio from a real step time lies in (0, 1). Off on a CPU without a peak."""

import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from weaktok.audio import SpecFrontEnd
from weaktok.config import load_config
from weaktok.model.unet import build_model
from weaktok.train.build import build_lscore
from weaktok.train.curriculum import weights_at
from weaktok.train.distributed import Dist
from weaktok.train.flops import StepFlops, known_peak
from weaktok.train.prometheus import MetricsExporter
from weaktok.train.step import compute_loss

CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
MANIFEST = {"lscore_target": {"mean": [0.5, 2.0, 0.3, 0.7], "std": [1.0, 1.0, 1.0, 1.0]}}


def fwd_bwd(cfg, model, front, lscore_fn, audio):
    spec = front(audio)
    target = {k: torch.tensor(v) for k, v in MANIFEST["lscore_target"].items()}
    w = weights_at(1e9, cfg.curriculum)
    losses, _ = compute_loss(model, front, lscore_fn, spec, spec, w, target, cfg)
    losses.total.backward()


def test_step_flops_are_flop_counter_modes_and_mfu_is_a_fraction(tmp_path):
    cfg = load_config("tiny", ["metrics.peak_tflops=1", "train.grad_accum=2"])
    front, lscore_fn = SpecFrontEnd.for_config(cfg), build_lscore(cfg, CPU.device)
    model = build_model(cfg.model, front.n_freqs).train()
    rng = torch.get_rng_state()
    flops = StepFlops.count(cfg, model, front, lscore_fn, MANIFEST, CPU)
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random stream is as it was
    assert all(p.grad is None for p in model.parameters())  # counted on a copy

    n = int(cfg.audio.clip_seconds * cfg.audio.sample_rate)
    audio = 0.1 * torch.randn(cfg.data.batch_size, n)
    with FlopCounterMode(display=False) as counter:
        fwd_bwd(cfg, model, front, lscore_fn, audio)
    assert counter.get_total_flops() > 0
    assert flops.per_step == 2 * counter.get_total_flops()  # grad_accum micro-batches
    assert flops.peak == 1e12

    t0 = time.perf_counter()
    for _ in range(cfg.train.grad_accum):  # a real (micro-)step time on this CPU
        fwd_bwd(cfg, model, front, lscore_fn, audio)
    record = {"kind": "train", "step": 1, **flops.fields(time.perf_counter() - t0)}
    e = MetricsExporter(load_config("tiny", ["metrics.enabled=false"]), tmp_path / "run")
    e.on_log(record)
    got = {s.name: s.value for f in e.registry.collect() for s in f.samples}
    assert 0 < got["weaktok_mfu_ratio"] < 1
    assert got["weaktok_model_flops_per_step"] == flops.per_step
    assert got["weaktok_peak_flops_per_second"] == 1e12


def test_no_mfu_on_a_cpu_without_a_peak_and_the_gpu_table():
    cfg = load_config("tiny")
    front, lscore_fn = SpecFrontEnd.for_config(cfg), build_lscore(cfg, CPU.device)
    model = build_model(cfg.model, front.n_freqs)
    assert StepFlops.count(cfg, model, front, lscore_fn, MANIFEST, CPU) is None
    assert known_peak("NVIDIA H200") == known_peak("NVIDIA H100 80GB HBM3") == 989e12
    assert (
        known_peak("NVIDIA H100 PCIe") == 756e12 and known_peak("NVIDIA A100-SXM4-80GB") == 312e12
    )
    assert known_peak("NVIDIA L40S") == 362e12 and known_peak("NVIDIA L4") == 121e12
    assert known_peak("Tesla T4") is None
