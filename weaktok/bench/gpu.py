"""``weaktok bench gpu``: does the training step fill the GPU? (issue 14; needs CUDA, skipped cleanly without)

The ``paper`` model on its 8-s clips, synthetic audio generated on the device. The bare step is bench train's
(``bare_step``: front end, ``compute_loss``, the NaN check, backward, clipping, AdamW) with the model under bf16
autocast: fp32 weights, bf16 matmuls. DeepSpeed's bf16 instead casts the module to bf16 and keeps fp32 masters in
the optimizer; the model's matmuls are bf16 in both.

1. Bare step ms at B = 32, 64, 128 (median of N steps, each between ``torch.cuda.synchronize()``). Goal: samples/s
   at B=128 >= 2.5x samples/s at B=32 (step time grows far less than the batch).
2. MFU at B=128: FLOPs per step (FlopCounterMode) / step time / a measured bf16 peak (8192^2 matmuls timed with
   CUDA events). Goal >= 10 %.
3. CUDA kernels per step (torch.profiler's kernel events; the dispatched kernel-launching aten ops as a cross-check)
   and host syncs per step (``torch.cuda.set_sync_debug_mode`` warnings; ``count_syncs_and_ops``). Goal <= 1.
4. The same step with the model ``torch.compile``'d (``--compile-backend``, default inductor; ``--no-compile`` skips).
5. Dynamic vs fixed chunking (``model.chunking.kind=fixed``), bare step at B=32. Goal: ratio <= 1.25.
6. End to end: a real single-rank ``train()`` of the paper config (train.precision=auto: bf16 on the GPU) on
   ``--shards`` or a small built set; ``--set key=value`` overrides it (e.g. data.batch_size=128,
   train.compile=true). Goals: >= 20,000 audio-s/s, data wait <= 5 % of step time, <= 1 host sync per ordinary
   step (CUDA sync-debug warnings counted between batches through a train() hook; the median step).
With ``--quick``: B = 8, 16, fewer repeats and a shorter run (a smoke test; the goals do not apply).
"""

from __future__ import annotations

import contextlib
import copy
import statistics
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile

from weaktok.bench.common import BenchResult
from weaktok.bench.train import (
    bare_parts,
    bare_step,
    bench_shards,
    full_run,
    step_counts,
)
from weaktok.config import load_config
from weaktok.train import use_bf16
from weaktok.train.flops import model_flops
from weaktok.train.hooks import TrainHooks

SKIPPED = "skipped: no CUDA device"


def failed(name: str, e: Exception) -> BenchResult:
    """A line for a measurement that raised (traceback on stderr), so the section still reports the others."""
    traceback.print_exc()
    return BenchResult(
        name=name,
        value=0.0,
        baseline=None,
        units="-",
        goal="runs",
        passed=False,
        note=f"failed: {type(e).__name__}: {str(e)[:300]}",
    )


def synthetic_audio(cfg, batch_size: int, device) -> torch.Tensor:
    n = int(round(cfg.audio.clip_seconds * cfg.audio.sample_rate))
    gen = torch.Generator(device=device).manual_seed(batch_size)
    return 0.1 * torch.randn(batch_size, n, device=device, generator=gen)


def step_ms(step, repeat: int, warmup: int = 3) -> float:
    """Median wall time of ``step()`` in ms, each call between two device synchronisations."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeat):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def bf16_peak(n: int = 8192, repeat: int = 20) -> float:
    """Measured bf16 matmul FLOP/s: ``repeat`` back-to-back n x n products timed with CUDA events."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeat):
        a @ b
    end.record()
    end.synchronize()
    return 2 * n**3 * repeat / (start.elapsed_time(end) / 1e3)


def cuda_kernels(step) -> int:
    """CUDA kernels one ``step()`` launches (profiler device events less memcpy/memset)."""
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        step()
        torch.cuda.synchronize()
    return sum(
        e.device_type == DeviceType.CUDA
        and not e.is_user_annotation
        and not e.name.startswith(("Memcpy", "Memset"))
        for e in prof.events()
    )


@contextlib.contextmanager
def sync_warnings():
    """Yields the list of warnings raised in the block, with the CUDA runtime warning at each host sync."""
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.cuda.set_sync_debug_mode("default")


def n_syncs(caught: list) -> int:
    return sum("synchronizing CUDA operation" in str(w.message) for w in caught)


def cuda_syncs(step) -> int:
    """Host syncs the CUDA runtime reports during one ``step()``."""
    torch.cuda.synchronize()
    with sync_warnings() as caught:
        step()
    return n_syncs(caught)


class BatchMarks(TrainHooks):
    """train() hook: where each batch starts in the list of caught warnings (the syncs of one step lie between)."""

    def __init__(self, caught: list):
        self.caught, self.marks = caught, []

    def on_batch(self, batch: dict, state: dict) -> None:
        self.marks.append(len(self.caught))

    def per_step(self) -> list[int]:
        return [n_syncs(self.caught[a:b]) for a, b in zip(self.marks, self.marks[1:])]


def bare_results(
    cfg,
    sizes: tuple[int, ...],
    repeat: int,
    compile_backend: str | None,
    goals: bool,
    device: str = "cuda",
) -> list[BenchResult]:
    device = torch.device(device)
    target = {"mean": torch.zeros(4, device=device), "std": torch.ones(4, device=device)}
    parts = bare_parts(cfg, device, bf16=True)
    audio = {B: synthetic_audio(cfg, B, device) for B in sizes}
    steps = {B: bare_step(cfg, *parts, audio[B], target) for B in sizes}
    ms = {B: step_ms(steps[B], repeat) for B in sizes}
    small, big = sizes[0], sizes[-1]
    sps = {B: B / ms[B] * 1e3 for B in sizes}
    clip = cfg.audio.clip_seconds
    out = [
        BenchResult(
            name=f"bare step, {cfg.name} model B={B} (bf16 autocast)",
            value=ms[B],
            baseline=None,
            units="ms/step",
            goal="info",
            note=f"{sps[B]:.0f} samples/s, {sps[B] * clip:.0f} audio-s/s ({clip:g}-s clips)",
        )
        for B in sizes
    ]
    scale = sps[big] / sps[small]
    out.append(
        BenchResult(
            name=f"samples/s B={big} / samples/s B={small}",
            value=scale,
            baseline=None,
            units="x",
            goal=">= 2.5x" if goals else "info",
            passed=scale >= 2.5 if goals else None,
            note=f"step time x{ms[big] / ms[small]:.2f} for x{big / small:g} the batch",
        )
    )

    front, lscore_fn, model, _ = parts
    flops = model_flops(model, front, lscore_fn, audio[big], target, cfg)
    peak = bf16_peak()
    mfu = flops / (ms[big] / 1e3) / peak
    out.append(
        BenchResult(
            name=f"MFU, bare step B={big}",
            value=mfu * 100,
            baseline=None,
            units="%",
            goal=">= 10 %" if goals else "info",
            passed=mfu >= 0.10 if goals else None,
            note=f"{flops / 1e12:.3f} TFLOP per fwd+bwd step (FlopCounterMode), "
            f"{flops / ms[big] / 1e9:.1f} TFLOP/s achieved; measured bf16 peak "
            f"{peak / 1e12:.0f} TFLOP/s (8192^2 matmuls)",
        )
    )

    whole, to_opt = step_counts(steps[big])
    out.append(
        BenchResult(
            name=f"CUDA kernels per bare step B={big}",
            value=cuda_kernels(steps[big]),
            baseline=None,
            units="kernels",
            goal="info",
            note=f"torch.profiler kernel events; dispatched kernel-launching aten ops: {whole.kernels} "
            f"({to_opt.kernels} before the optimizer), {whole.ops} ops in all",
        )
    )
    syncs = cuda_syncs(steps[big])
    out.append(
        BenchResult(
            name="host syncs per bare step",
            value=syncs,
            baseline=None,
            units="syncs",
            goal="<= 1 (the NaN check)",
            passed=syncs <= 1,
            note=f"set_sync_debug_mode warnings over the whole step; dispatched sync ops before "
            f"the optimizer: {to_opt.sync_ops}",
        )
    )

    if compile_backend:
        out.append(
            _compiled(cfg, parts, audio[big], target, repeat, compile_backend, ms[big], flops, peak)
        )

    fixed_cfg = copy.deepcopy(cfg)
    fixed_cfg.model.chunking.kind = "fixed"
    fixed = step_ms(
        bare_step(fixed_cfg, *bare_parts(fixed_cfg, device, bf16=True), audio[small], target),
        repeat,
    )
    out.append(
        BenchResult(
            name=f"bare step B={small}: dynamic vs fixed chunking",
            value=ms[small],
            baseline=fixed,
            units="ms/step",
            goal="ratio <= 1.25",
            passed=ms[small] / fixed <= 1.25,
            note=f"fixed stride {fixed_cfg.model.chunking.fixed_stride}, dynamic target ratio "
            f"{cfg.model.chunking.target_ratio:g}",
        )
    )
    return out


def _compiled(cfg, parts, audio, target, repeat, backend, eager_ms, flops, peak) -> BenchResult:
    """The bare step with the (autocast-wrapped) model torch.compile'd, as engine.compile compiles the module."""
    front, lscore_fn, model, opt = parts
    name = f"bare step B={audio.shape[0]}: torch.compile({backend}) vs eager"
    try:
        compiled = torch.compile(model, backend=backend, dynamic=False)
        step = bare_step(cfg, front, lscore_fn, compiled, opt, audio, target)
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        first = time.perf_counter() - t0
        ms = step_ms(step, repeat)
    except (
        Exception
    ) as e:  # a backend that cannot compile this model: reported, the other lines still measured
        return failed(name, e)
    return BenchResult(
        name=name,
        value=ms,
        baseline=eager_ms,
        units="ms/step",
        goal="info",
        note=f"first step (compiling) {first:.1f} s; MFU {flops / (ms / 1e3) / peak * 100:.1f} %",
    )


def end_to_end(
    shards: str | None, steps: int, log_every: int, overrides: list[str]
) -> list[BenchResult]:
    """A real single-rank train() of the paper config; rates from its metrics.jsonl (first window dropped)."""
    shards = shards or str(bench_shards(sr=load_config("paper", list(overrides)).audio.sample_rate))
    cfg = load_config(
        "paper",
        [
            f"data.shards={shards}",
            "train.epochs=1",
            "train.precision=auto",
            "lscore.pool_every=0",
            "lscore.val_items=0",
            "data.val_max_items=32",
            f"train.log_every={log_every}",
            "train.checkpoint_every=0",
            "metrics.port=0",
            *overrides,
        ],
    )
    cfg.data.samples_per_epoch = steps * cfg.data.batch_size
    with tempfile.TemporaryDirectory() as tmp, sync_warnings() as caught:
        marks = BatchMarks(caught)
        full = full_run(cfg, Path(tmp) / "run", hooks=[marks])
    syncs = marks.per_step()
    compiled = cfg.train.compile_backend if cfg.train.compile else "off"
    what = (
        f"paper B={cfg.data.batch_size}, {'bf16' if use_bf16(cfg) else 'fp32'}, "
        f"{cfg.data.num_workers} loader workers, ZeRO {cfg.train.zero_stage}, compile {compiled}"
    )
    return [
        BenchResult(
            name=f"end-to-end train(), {what}",
            value=full["audio_s_per_s"],
            baseline=None,
            units="audio-s/s",
            goal=">= 20000",
            passed=full["audio_s_per_s"] >= 20000,
            note=f"{full['samples_per_s']:.0f} samples/s, {full['step_time'] * 1e3:.1f} ms/step, median "
            f"over {full['windows']} logging windows; shards {shards}",
        ),
        BenchResult(
            name="end-to-end data-wait share of step time",
            value=full["data_wait_share"] * 100,
            baseline=None,
            units="%",
            goal="<= 5 %",
            passed=full["data_wait_share"] <= 0.05,
        ),
        BenchResult(
            name="end-to-end host syncs per ordinary step",
            value=statistics.median(syncs),
            baseline=None,
            units="syncs",
            goal="<= 1",
            passed=statistics.median(syncs) <= 1,
            note=f"median over {len(syncs)} steps (set_sync_debug_mode warnings between batches), mean "
            f"{statistics.mean(syncs):.2f} with the log-line reads, max {max(syncs)}",
        ),
    ]


def run(
    quick: bool = False,
    shards: str | None = None,
    compile_backend: str = "inductor",
    no_compile: bool = False,
    overrides: list[str] | None = None,
) -> list[BenchResult]:
    if not torch.cuda.is_available():
        return [
            BenchResult(
                name="bench gpu",
                value=0.0,
                baseline=None,
                units="-",
                goal=SKIPPED,
                note="torch.cuda.is_available() is False: nothing measured",
            )
        ]
    cfg = load_config("paper", [])
    sizes, repeat = ((8, 16), 3) if quick else ((32, 64, 128), 20)
    try:  # each part reports a failed line rather than losing the other's numbers (e.g. out of memory, bad shards)
        out = bare_results(
            cfg, sizes, repeat, None if no_compile else compile_backend, goals=not quick
        )
    except Exception as e:
        out = [failed("bare steps", e)]
    try:
        return out + end_to_end(
            shards,
            steps=20 if quick else 150,
            log_every=5 if quick else 10,
            overrides=list(overrides or []),
        )
    except Exception as e:
        return out + [failed("end-to-end train()", e)]
