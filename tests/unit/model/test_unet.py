import pytest
import torch

from weaktok.bench.common import count_syncs_and_ops
from weaktok.config import ChunkingConfig, ModelConfig
from weaktok.model.unet import build_model


def tiny_cfg(**chunking):
    return ModelConfig(
        channels=[8, 12, 16],
        dim=16,
        n_layers=1,
        n_heads=2,
        ff_mult=2,
        chunking=ChunkingConfig(**chunking),
    )


@pytest.mark.parametrize("T", [1, 7, 8, 33, 64, 101])
@pytest.mark.parametrize("kind", ["dynamic", "fixed"])
def test_shapes_round_trip_for_any_length(T, kind):
    torch.manual_seed(0)
    model = build_model(tiny_cfg(kind=kind), n_freqs=33)
    spec = torch.rand(3, 33, T)
    out = model(spec)
    assert out.recon.shape == spec.shape
    assert set(out.stats) >= {"boundary_rate", "mean_prob", "mean_chunk_len", "ratio_loss"}
    assert all(torch.isfinite(v) for v in out.stats.values())


def test_padded_chunks_do_not_change_real_chunk_outputs():
    """Transformer outputs of a row's real chunks are the same whatever padding chunks the batch adds."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), n_freqs=17).eval()
    torch.nn.init.normal_(model.chunker.q_proj.weight)  # varied boundaries
    h = torch.randn(2, 24, 16)
    mask = torch.ones(2, 24, dtype=torch.bool)
    with torch.no_grad():
        both, co = model.bottleneck(h, mask)
        alone, co1 = model.bottleneck(h[:1], mask[:1])
    assert co.chunks.shape[1] >= co1.chunks.shape[1]
    torch.testing.assert_close(both[0], alone[0], atol=1e-5, rtol=1e-5)
    # and changing the padded row's content does not move row 0 either
    h2 = h.clone()
    h2[1] = torch.randn(24, 16) * 5
    with torch.no_grad():
        again, _ = model.bottleneck(h2, mask)
    torch.testing.assert_close(again[0], both[0], atol=1e-5, rtol=1e-5)


def test_lengths_mask_padding_frames():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), n_freqs=17).eval()
    spec = torch.rand(2, 17, 64)
    out = model(spec, lengths=torch.tensor([64, 30]))
    assert int(out.chunk.frame_mask[1].sum()) == 4  # ceil(30 / 8)
    assert int(out.chunk.frame_mask[0].sum()) == 8


def test_reconstruction_gradient_reaches_router_and_all_layers():
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), n_freqs=17).train()
    spec = torch.rand(4, 17, 48)
    out = model(spec)
    (out.recon - spec).abs().mean().backward()
    assert model.chunker.q_proj.weight.grad.abs().sum() > 0
    assert model.chunker.k_proj.weight.grad.abs().sum() > 0
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing


def test_positions_come_from_chunk_start_times():
    """Moving a chunk's start frame changes the Transformer input even when the chunk index is unchanged."""
    from weaktok.model.chunking import sinusoidal_positions

    a = sinusoidal_positions(torch.tensor([[0, 3, 7]]), 16)
    b = sinusoidal_positions(torch.tensor([[0, 5, 7]]), 16)
    assert torch.equal(a[0, 0], b[0, 0]) and torch.equal(a[0, 2], b[0, 2])
    assert not torch.allclose(a[0, 1], b[0, 1])


def _pool_chunks_dynamic(x, hard, mask, max_chunks=None):
    """The pooling as it was before C became static (kept here as the reference): C = the batch's largest chunk
    count, read back with ``.item()``."""
    B, T, D = x.shape
    hard = hard.long() * mask.long()
    ids = hard.cumsum(1) - 1
    ids = torch.where(mask, ids, torch.full_like(ids, -1))
    n_chunks = hard.sum(1)
    C = max(int(n_chunks.max().item()), 1)
    flat = torch.where(ids >= 0, ids + C * torch.arange(B)[:, None], B * C).reshape(-1)
    sums = x.new_zeros(B * C + 1, D).index_add_(0, flat, x.reshape(B * T, D))
    counts = x.new_zeros(B * C + 1).index_add_(0, flat, x.new_ones(B * T))
    chunks = (sums[:-1] / counts[:-1].clamp_min(1).unsqueeze(1)).view(B, C, D)
    chunk_mask = torch.arange(C)[None, :] < n_chunks[:, None]
    t = torch.arange(T).expand(B, T)
    start_flat = torch.where(hard.bool(), flat.view(B, T), B * C).reshape(-1)
    starts = torch.zeros(B * C + 1, dtype=torch.long).scatter_(0, start_flat, t.reshape(-1))
    return chunks, chunk_mask, ids, starts[:-1].view(B, C)


def _run(model, spec, lengths, seed):
    """Forward + backward with a fixed Gumbel seed -> (output, {param name: grad})."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    out = model(spec, lengths=lengths)
    ((out.recon - spec).abs().mean() + out.chunk.ratio_loss).backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("kind,n_layers", [("dynamic", 1), ("dynamic", 0), ("fixed", 1)])
def test_static_chunk_dimension_gives_the_dynamic_results(monkeypatch, kind, n_layers, mode):
    """Padded chunks are masked everywhere (attention keys, EMA, un-chunking): outputs and gradients with the static
    C = T8 are those of the old C = largest chunk count, for the same boundaries (same Gumbel noise in training)."""
    torch.manual_seed(0)
    cfg = tiny_cfg(kind=kind, fixed_stride=3)
    cfg.n_layers = n_layers
    model = getattr(build_model(cfg, n_freqs=17), mode)()
    if kind == "dynamic":
        torch.nn.init.normal_(
            model.chunker.q_proj.weight
        )  # varied boundaries, different counts per row
    spec = torch.rand(4, 17, 80)
    lengths = torch.tensor([80, 61, 9, 0])  # padded rows, and one without frames
    static, static_grads = _run(model, spec, lengths, seed=1)
    monkeypatch.setattr("weaktok.model.chunking.pool_chunks", _pool_chunks_dynamic)
    dynamic, dynamic_grads = _run(model, spec, lengths, seed=1)
    C = dynamic.chunk.chunks.shape[1]
    assert static.chunk.chunks.shape[1] == (10 if kind == "dynamic" else 4) and C <= 10
    if kind == "dynamic":
        assert len(set(static.chunk.num_chunks.tolist())) > 2, (
            "test needs rows with different chunk counts"
        )
    assert torch.equal(static.chunk.boundaries, dynamic.chunk.boundaries)
    assert torch.equal(static.chunk.chunk_starts[:, :C], dynamic.chunk.chunk_starts)
    assert not static.chunk.chunk_mask[:, C:].any()
    assert torch.isfinite(static.recon).all()
    torch.testing.assert_close(static.recon, dynamic.recon, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(static.stats, dynamic.stats)
    assert static_grads.keys() == dynamic_grads.keys()
    for name in static_grads:
        assert torch.isfinite(static_grads[name]).all(), name
        torch.testing.assert_close(
            static_grads[name], dynamic_grads[name], atol=1e-5, rtol=1e-4, msg=name
        )


def test_eval_without_grad_matches_eval_with_grad():
    """Without grad, nn.TransformerEncoderLayer takes its fused fast path: same real outputs, padded keys included."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(), n_freqs=17).eval()
    torch.nn.init.normal_(model.chunker.q_proj.weight)
    spec = torch.rand(3, 17, 64)
    lengths = torch.tensor([64, 20, 0])
    with torch.no_grad():
        fast = model(spec, lengths=lengths).recon
    slow = model(spec, lengths=lengths).recon
    assert torch.isfinite(fast).all()
    torch.testing.assert_close(fast, slow.detach(), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind,n_layers", [("dynamic", 1), ("dynamic", 0), ("fixed", 1)])
def test_forward_backward_never_syncs_with_the_host(kind, n_layers):
    """No .item() / nonzero / data-dependent shape anywhere in the model's step: stats stay tensors."""
    torch.manual_seed(0)
    cfg = tiny_cfg(kind=kind)
    cfg.n_layers = n_layers
    model = build_model(cfg, n_freqs=17).train()
    spec = torch.rand(3, 17, 40)

    def step():
        out = model(spec, lengths=torch.tensor([40, 17, 3]))
        loss = (out.recon - spec).abs().mean() + out.chunk.ratio_loss + sum(out.stats.values())
        loss.backward()

    counts = count_syncs_and_ops(step)
    assert counts.syncs == 0, counts.sync_ops
    assert counts.ops > 100


def test_max_chunk_rate_caps_the_chunk_dimension():
    """model.chunking.max_chunk_rate (read with getattr until ChunkingConfig has it) sets C = ceil(T8 * rate)."""
    torch.manual_seed(0)
    cfg = tiny_cfg()
    cfg.chunking.max_chunk_rate = 0.5
    model = build_model(cfg, n_freqs=17).train()
    assert model.chunker.max_chunk_rate == 0.5
    spec = torch.rand(2, 17, 80)
    out = model(spec)
    assert out.chunk.chunks.shape[1] == 5  # T8 = 10
    out.recon.mean().backward()
    assert (
        torch.isfinite(out.recon).all() and torch.isfinite(model.chunker.q_proj.weight.grad).all()
    )
