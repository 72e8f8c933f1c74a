"""``weaktok bench train``: what does the training system cost on top of the model?

1. Full training step (DeepSpeed engine + shard loader + metrics, measured inside a real ``train()`` run of the
   ``demo`` config on one rank) vs a bare PyTorch loop (model + the same loss + AdamW) on one fixed batch of the
   same size. Goal: overhead <= 10 %.
2. Model FLOP/s (fwd+bwd FLOPs counted by ``torch.utils.flop_counter``) / measured ``torch.matmul`` FLOP/s on
   this machine. Goal >= 25 %.
3. Data-wait share of step time in the real run. Goal <= 5 %.
4. Host syncs per bare step (dispatched ops that read device data on the host; ``count_syncs_and_ops``). Goal:
   <= 1, the training loop's NaN check (``all_finite``). Reported with the aten ops / kernel-launching ops per step.

Shards: ``--shards``, or a small embedded corpus + shards built once under ``bench_results/``.
The bare step (``bare_parts`` + ``bare_step``) is shared with ``weaktok bench gpu``.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from weaktok.audio import SpecFrontEnd
from weaktok.bench.common import BenchResult, OpCounts, count_syncs_and_ops, timeit
from weaktok.config import load_config
from weaktok.data.corpus import build_corpus
from weaktok.data.loader import eval_loader
from weaktok.data.manifest import load_manifest
from weaktok.data.shards import build_shards
from weaktok.lscore.differentiable import DifferentiableLScore
from weaktok.model.unet import build_model
from weaktok.procenv import set_accelerator, single_process_env
from weaktok.train import Dist, all_finite, compute_loss, train
from weaktok.train.curriculum import weights_at
from weaktok.train.flops import model_flops

BENCH_DIR = Path("bench_results")


def bench_shards(n: int = 48, sr: int = 22050) -> Path:
    """A small shard set from the embedded corpus at sample rate ``sr``, built once and reused. The loader
    loops items shorter than the config's clip length (``data.loop_crop``), so any clip length can use it."""

    suffix = "" if sr == 22050 else f"-{sr}"
    shards = BENCH_DIR / f"shards-train-bench{suffix}"
    if (shards / "manifest.json").is_file():
        return shards
    corpus = BENCH_DIR / f"corpus-train-bench{suffix}"
    build_corpus(corpus, n=n, seed=0, sr=sr, progress=False)
    build_shards(corpus, shards, sr=sr, min_shards=2, num_actors=1, progress=False)
    return shards


def matmul_flops(n: int = 1024, repeat: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timeit(lambda: a @ b, repeat=repeat, warmup=3)


class Autocast(torch.nn.Module):
    """Runs ``model`` under bf16 autocast; its weights stay fp32 (the bare step's stand-in for DeepSpeed's bf16
    module, which keeps bf16 weights and fp32 masters in the optimizer)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, spec):
        with torch.autocast(spec.device.type, dtype=torch.bfloat16):
            return self.model(spec)


def bare_parts(cfg, device: str | torch.device = "cpu", bf16: bool = False):
    """Front end, differentiable L-Score, model (wrapped in :class:`Autocast` when ``bf16``) and AdamW."""
    front = SpecFrontEnd(cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length).to(device)
    lscore_fn = DifferentiableLScore(
        cfg.audio.sample_rate, cfg.audio.n_fft, cfg.audio.hop_length, mode=cfg.lscore.mode
    ).to(device)
    model = build_model(cfg.model, front.n_freqs).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    return front, lscore_fn, Autocast(model) if bf16 else model, opt


def bare_step(cfg, front, lscore_fn, model, opt, audio, target):
    """The training loop's step as plain PyTorch on one fixed batch: front end, ``compute_loss`` (all loss terms
    on, as at the end of the curriculum), the NaN check, backward, clipping, AdamW. ``step(update=False)``
    stops before the optimizer: AdamW's ``.item()`` reads of its step counters are of CPU tensors, which the op
    counter cannot tell from device reads on a CPU-only machine."""
    w = weights_at(1e9, cfg.curriculum)
    dist = Dist(rank=0, world=1, local_rank=0, device=audio.device)

    def step(update: bool = True) -> None:
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            spec = front(audio)
        losses, _ = compute_loss(model, front, lscore_fn, spec, spec, w, target, cfg)
        all_finite(losses.total, dist)
        losses.total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        if update:
            opt.step()

    return step


def step_counts(step) -> tuple[OpCounts, OpCounts]:
    """Ops of a whole bare step, and of the step up to the optimizer (whose counts of host syncs are exact)."""
    return count_syncs_and_ops(step), count_syncs_and_ops(lambda: step(update=False))


def bare_step_time(
    cfg, batch_audio, target, repeat: int
) -> tuple[float, float, tuple[OpCounts, OpCounts]]:
    """Seconds per step of a plain PyTorch loop on one fixed batch, the step's FLOPs and op counts."""
    front, lscore_fn, model, opt = bare_parts(cfg)
    step = bare_step(cfg, front, lscore_fn, model, opt, batch_audio, target)
    t = timeit(step, repeat=repeat, warmup=2)
    return t, model_flops(model, front, lscore_fn, batch_audio, target, cfg), step_counts(step)


def full_run(cfg, out: Path, hooks: list | None = None) -> dict:
    """A real single-rank train() run; step time and data wait from its metrics.jsonl (first window dropped)."""
    os.environ.update(single_process_env(os.environ))
    set_accelerator(os.environ)
    train(cfg, out, hooks)

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r["kind"] == "train"][1:]
    return {
        "step_time": statistics.median(r["step_time_s"] for r in rows),
        "samples_per_s": statistics.median(r["samples_per_s"] for r in rows),
        "audio_s_per_s": statistics.median(r["audio_s_per_s"] for r in rows),
        "data_wait_share": statistics.mean(r["data_wait_share"] for r in rows),
        "windows": len(rows),
    }


def run(quick: bool = False, shards: str | None = None) -> list[BenchResult]:
    shards = shards or bench_shards()
    steps = 12 if quick else 40
    cfg = load_config(
        "demo",
        [
            f"data.shards={shards}",
            "train.epochs=1",
            "lscore.pool_every=0",
            "lscore.val_items=0",
            "data.val_max_items=8",
            "train.log_every=4",
            f"data.samples_per_epoch={steps * 8}",
            "train.checkpoint_every=0",
            "metrics.port=0",
        ],
    )
    target = {k: torch.tensor(load_manifest(shards)["lscore_target"][k]) for k in ("mean", "std")}
    batch = next(
        iter(eval_loader(str(shards), "train", cfg.data.batch_size, cfg.audio.clip_seconds))
    )
    bare, flops, (whole, to_opt) = bare_step_time(
        cfg, batch["audio"], target, repeat=5 if quick else 10
    )
    with tempfile.TemporaryDirectory() as tmp:
        full = full_run(cfg, Path(tmp) / "run")
    peak = matmul_flops()
    achieved = flops / full["step_time"]
    return [
        BenchResult(
            name=f"train step, demo model B={cfg.data.batch_size}: full (engine+loader+metrics) vs bare",
            value=full["step_time"] * 1e3,
            baseline=bare * 1e3,
            units="ms/step",
            goal="ratio <= 1.10",
            passed=full["step_time"] / bare <= 1.10,
            note=f"median over {full['windows']} logging windows of a real train() run, ZeRO "
            f"{cfg.train.zero_stage}, {cfg.data.num_workers} loader worker(s)",
        ),
        BenchResult(
            name="model FLOP/s / torch.matmul FLOP/s",
            value=achieved / 1e9,
            baseline=peak / 1e9,
            units="GFLOP/s",
            goal="ratio >= 0.25",
            passed=achieved / peak >= 0.25,
            note=f"{flops / 1e9:.2f} GFLOP per fwd+bwd step (FlopCounterMode); matmul 1024^2 fp32",
        ),
        BenchResult(
            name="data-wait share of step time",
            value=full["data_wait_share"] * 100,
            baseline=None,
            units="%",
            goal="<= 5 %",
            passed=full["data_wait_share"] <= 0.05,
        ),
        BenchResult(
            name="host syncs per bare step",
            value=to_opt.syncs,
            baseline=None,
            units="syncs",
            goal="<= 1 (the NaN check)",
            passed=to_opt.syncs <= 1,
            note=f"sync ops {to_opt.sync_ops} (front end + compute_loss + all_finite + backward + "
            "clipping; AdamW not counted: its .item() reads are of CPU step counters)",
        ),
        BenchResult(
            name="aten ops per bare step",
            value=whole.ops,
            baseline=None,
            units="ops",
            goal="info",
            note=f"kernel-launching ops (views excluded): {whole.kernels}, of which {to_opt.kernels} before "
            "the optimizer (CPU AdamW runs per parameter; on a GPU it is foreach)",
        ),
    ]
