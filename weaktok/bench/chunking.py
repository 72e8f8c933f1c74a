"""``weaktok bench chunking``: is weak tokenization nearly free?

1. Whole model forward+backward, DynamicChunkingLayer vs FixedChunking at the same compression
   (the fixed stride is set to the dynamic layer's measured mean chunk length). Goal: ratio <= 1.25.
2. Host syncs in one model forward+backward (``.item()``, ``nonzero``, ... counted on CPU by a dispatch mode;
   each is a device->host sync per step on a GPU). Goal: 0 for both chunkers. Reported with the aten ops and
   the kernel-launching ops among them (the eager GPU step is launch-bound), dynamic vs fixed.
3. The layer's vectorised pooling vs a per-row Python loop over the same boundaries. Goal: >= 20x faster.
Sizes: B=16, T=512 spectrogram frames (model) / T=512 frames (layer), D=256.
"""

from __future__ import annotations

import copy

import torch

from weaktok.bench.common import BenchResult, count_syncs_and_ops, timeit
from weaktok.config import ModelConfig
from weaktok.model.chunking import DynamicChunkingLayer, pool_chunks, pool_chunks_reference
from weaktok.model.unet import DOWNSAMPLE, build_model

N_FREQS = 513  # n_fft 1024


def _fwd_bwd(model, spec):
    def step():
        model.zero_grad(set_to_none=True)
        out = model(spec)
        ((out.recon - spec).abs().mean() + out.chunk.ratio_loss).backward()

    return step


def bench_model(B: int, T: int, D: int, repeat: int) -> list[BenchResult]:
    torch.manual_seed(0)
    cfg = ModelConfig(dim=D)
    dyn = build_model(cfg, N_FREQS).train()
    spec = torch.randn(B, N_FREQS, T).abs()
    with torch.no_grad():
        chunk_len = float(dyn(spec).stats["mean_chunk_len"])
    fixed_cfg = copy.deepcopy(cfg)
    fixed_cfg.chunking.kind = "fixed"
    fixed_cfg.chunking.fixed_stride = max(1, round(chunk_len))
    fix = build_model(fixed_cfg, N_FREQS).train()
    fix.load_state_dict(dyn.state_dict(), strict=False)  # same weights everywhere but the router
    t_dyn = timeit(_fwd_bwd(dyn, spec), repeat=repeat)
    t_fix = timeit(_fwd_bwd(fix, spec), repeat=repeat)
    n_dyn, n_fix = (
        count_syncs_and_ops(_fwd_bwd(dyn, spec)),
        count_syncs_and_ops(_fwd_bwd(fix, spec)),
    )
    t8 = -(-T // DOWNSAMPLE)
    syncs = {"dynamic": n_dyn.sync_ops, "fixed": n_fix.sync_ops}
    return [
        BenchResult(
            name=f"model fwd+bwd B={B} T={T} D={D}: dynamic vs fixed",
            value=t_dyn * 1e3,
            baseline=t_fix * 1e3,
            units="ms",
            goal="ratio <= 1.25",
            passed=t_dyn / t_fix <= 1.25,
            note=f"dynamic mean chunk length {chunk_len:.2f} bottleneck frames; fixed stride "
            f"{fixed_cfg.chunking.fixed_stride}; chunk slots C: dynamic {dyn.chunker.max_chunks(t8)}, "
            f"fixed {fix.chunker.max_chunks(t8)} (of {t8} bottleneck frames)",
        ),
        BenchResult(
            name="host syncs per model fwd+bwd: dynamic vs fixed",
            value=n_dyn.syncs,
            baseline=n_fix.syncs,
            units="syncs",
            goal="0",
            passed=n_dyn.syncs == n_fix.syncs == 0,
            note=f"sync ops {syncs}",
        ),
        BenchResult(
            name="aten ops per model fwd+bwd: dynamic vs fixed",
            value=n_dyn.ops,
            baseline=n_fix.ops,
            units="ops",
            goal="info",
            note=f"ops that launch a kernel (views excluded): dynamic {n_dyn.kernels}, fixed "
            f"{n_fix.kernels}",
        ),
    ]


def bench_layer(B: int, T: int, D: int, repeat: int) -> list[BenchResult]:
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(D, target_ratio=4.0).eval()
    x = torch.randn(B, T, D)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[B // 2 :, T - T // 4 :] = False  # some rows shorter, as in a real padded batch
    with torch.no_grad():
        hard = layer(x, mask).boundaries.bool()

    def pool_vec():
        pool_chunks(x, hard, mask)

    def pool_loop():
        pool_chunks_reference(x, hard, mask)

    def layer_vec():
        layer(x, mask)

    def layer_loop():  # the same routing matmuls, then the per-row loop pooling
        layer.logits(x)
        pool_chunks_reference(x, hard, mask)

    with torch.no_grad():
        t_pool, t_pool_ref = (
            timeit(pool_vec, repeat=repeat),
            timeit(pool_loop, repeat=max(1, repeat // 2)),
        )
        t_layer, t_layer_ref = (
            timeit(layer_vec, repeat=repeat),
            timeit(layer_loop, repeat=max(1, repeat // 2)),
        )
    chunks = f"{int(hard.sum())} chunks in the batch"
    return [
        BenchResult(
            name=f"chunk pooling B={B} T={T} D={D}: per-row loop / vectorised",
            value=t_pool_ref / t_pool,
            baseline=None,
            units="x faster",
            goal=">= 20x",
            passed=t_pool_ref / t_pool >= 20,
            note=f"vectorised {t_pool * 1e3:.2f} ms, loop {t_pool_ref * 1e3:.1f} ms, {chunks}",
        ),
        BenchResult(
            name="whole layer (routing + pooling): loop / vectorised",
            value=t_layer_ref / t_layer,
            baseline=None,
            units="x faster",
            goal="info",
            note=f"vectorised {t_layer * 1e3:.2f} ms, loop {t_layer_ref * 1e3:.1f} ms; the q/k projection "
            "matmuls are the same in both and bound the ratio",
        ),
    ]


def run(quick: bool = False) -> list[BenchResult]:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if quick:
        return bench_model(4, 128, 64, repeat=2) + bench_layer(4, 128, 64, repeat=2)
    return bench_model(16, 512, 256, repeat=5) + bench_layer(16, 512, 256, repeat=5)
