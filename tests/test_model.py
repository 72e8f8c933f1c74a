import pytest
import torch

from weaktok.config import ModelConfig, ChunkingConfig
from weaktok.model import build_model


def tiny_cfg(**chunking):
    return ModelConfig(channels=[8, 12, 16], dim=16, n_layers=1, n_heads=2, ff_mult=2,
                       chunking=ChunkingConfig(**chunking))


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
    from weaktok.chunking import sinusoidal_positions
    a = sinusoidal_positions(torch.tensor([[0, 3, 7]]), 16)
    b = sinusoidal_positions(torch.tensor([[0, 5, 7]]), 16)
    assert torch.equal(a[0, 0], b[0, 0]) and torch.equal(a[0, 2], b[0, 2])
    assert not torch.allclose(a[0, 1], b[0, 1])
