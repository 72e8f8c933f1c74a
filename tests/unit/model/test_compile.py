"""The model is ``torch.compile``-ready: one graph (``fullgraph=True`` raises on any graph break, host sync or
data-dependent shape), compiled once for every batch of the same shape (``error_on_recompile``), and the same
numbers as eager.

Backend ``aot_eager``: dynamo captures the whole forward, AOTAutograd traces the backward, and the captured aten
graphs run eagerly. That is what a graph break, a sync or a recompile would fail; inductor only adds code
generation on top, and its C++ compile of this tiny model took ~150 s on the 2-core CI machine (aot_eager: ~2-5 s
per case). aot_eager also replays the eager RNG calls in order, so training mode (Gumbel sampling) is compared
with eager under the same seed: the same boundaries, outputs and gradients.
"""

import pytest
import torch
import torch._dynamo

from weaktok.config import ChunkingConfig, ModelConfig
from weaktok.model.unet import build_model

pytestmark = pytest.mark.slow  # 6 compiles: ~20-40 s of tracing on the 2-core CI machine

N_FREQS, T = 17, 48
LENGTHS = torch.tensor([48, 30, 5])  # padded rows: padding frames and padded chunks in every batch


def _model(kind="dynamic", n_layers=1):
    torch.manual_seed(0)
    cfg = ModelConfig(
        channels=[8, 12, 16],
        dim=16,
        n_layers=n_layers,
        n_heads=2,
        ff_mult=2,
        chunking=ChunkingConfig(kind=kind, fixed_stride=3),
    )
    model = build_model(cfg, N_FREQS)
    if kind == "dynamic":
        torch.nn.init.normal_(model.chunker.q_proj.weight)  # varied boundaries from batch to batch
    return model


def _step(model, spec, seed):
    """Forward (+ backward when grad is on) with a fixed Gumbel seed -> (recon, chunk ids, {name: grad})."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(spec, lengths=LENGTHS)
    if torch.is_grad_enabled():
        loss = (out.recon - spec).abs().mean() + out.chunk.ratio_loss + out.stats["boundary_rate"]
        loss.backward()
    grads = {
        n.removeprefix("_orig_mod."): p.grad.clone()
        for n, p in model.named_parameters()
        if p.grad is not None
    }
    return out.recon.detach(), out.chunk.chunk_ids, grads


@pytest.mark.parametrize(
    "kind,n_layers,mode,grad,bf16",
    [
        ("dynamic", 1, "train", True, False),
        ("dynamic", 1, "train", True, True),  # bf16 autocast, as training runs on GPUs
        ("dynamic", 1, "eval", True, False),
        (
            "dynamic",
            1,
            "eval",
            False,
            False,
        ),  # no grad: nn.TransformerEncoderLayer's fused fast path
        ("dynamic", 0, "train", True, False),  # chunking-only ablation: no Transformer
        ("fixed", 1, "train", True, False),
    ],
)
def test_compiles_once_without_graph_breaks_and_matches_eager(kind, n_layers, mode, grad, bf16):
    model = getattr(_model(kind, n_layers), mode)()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True, dynamic=False)
    g = torch.Generator().manual_seed(1)
    batches = [torch.rand(len(LENGTHS), N_FREQS, T, generator=g) * 3 for _ in range(3)]
    ids = []
    tol = {"atol": 2e-2, "rtol": 2e-2} if bf16 else {"atol": 1e-5, "rtol": 1e-4}
    with torch.set_grad_enabled(grad), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for i, spec in enumerate(batches):
            with torch._dynamo.config.patch(
                error_on_recompile=i > 0
            ):  # batch 0 compiles, the others reuse it
                recon, chunk_ids, grads = _step(compiled, spec, seed=10 + i)
            ref_recon, ref_ids, ref_grads = _step(model, spec, seed=10 + i)
            assert torch.equal(
                chunk_ids, ref_ids
            )  # the same boundaries (same Gumbel noise in training)
            torch.testing.assert_close(recon, ref_recon, **tol)
            assert grads.keys() == ref_grads.keys() and (len(grads) > 0) == grad
            for name in grads:
                torch.testing.assert_close(grads[name], ref_grads[name], **tol, msg=name)
            ids.append(chunk_ids)
    if kind == "dynamic":
        assert not torch.equal(ids[0], ids[1]), "test needs batches with different boundaries"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not torch._dynamo.utils.counters["graph_break"]
