import pytest
import torch

from weaktok.bench.common import count_syncs_and_ops
from weaktok.model.transformer import RotaryTransformer

B, C, D = 3, 9, 16


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return RotaryTransformer(D, n_layers=2, n_heads=2, ff_mult=2, **kw).eval()


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, D, generator=g)
    positions = torch.cumsum(
        0.5 + 6 * torch.rand(B, C, generator=g), dim=1
    )  # irregular float start times
    return x, positions


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_shape_and_dtype_preserved(dtype):
    model = make().to(dtype)
    x, positions = inputs()
    mask = torch.zeros(B, C, dtype=torch.bool)
    mask[1, 5:] = True
    with torch.no_grad():
        out = model(x.to(dtype), positions, mask)
        out_long = model(x.to(dtype), positions.long())  # integer positions work too
    assert out.shape == (B, C, D) and out.dtype == dtype
    assert out_long.shape == (B, C, D) and out_long.dtype == dtype
    assert torch.isfinite(out.float()).all()


def test_translation_invariant():
    """Only time differences count: shifting every position by the same offset leaves the outputs as they were."""
    model = make()
    x, positions = inputs()
    with torch.no_grad():
        out = model(x, positions)
        shifted = model(x, positions + 37.0)
    torch.testing.assert_close(shifted, out, atol=1e-4, rtol=0)


def test_padded_keys_do_not_change_real_outputs():
    model = make()
    x, positions = inputs()
    mask = torch.zeros(B, C, dtype=torch.bool)
    mask[1, 4:] = True
    mask[2, 1:] = True  # all padded but chunk 0, the extreme the caller allows
    x2, positions2 = x.clone(), positions.clone()
    x2[mask] = 100 * torch.randn(int(mask.sum()), D)
    positions2[mask] = 1000.0
    with torch.no_grad():
        out = model(x, positions, mask)
        out2 = model(x2, positions2, mask)
    assert torch.isfinite(out2).all()  # padded queries too: each still has chunk 0 as a key
    torch.testing.assert_close(out2[~mask], out[~mask], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(
        out2[mask], out[mask], atol=1e-2
    )  # the change did reach the padded chunks


def test_positions_matter():
    """The same chunk values at permuted times give different outputs (no position = a bag of chunks)."""
    model = make()
    x, positions = inputs()
    perm = torch.randperm(C, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x, positions)
        permuted = model(x, positions[:, perm])
    assert (permuted - out).abs().max() > 1e-2


def test_gradient_reaches_every_parameter():
    model = make(dropout=0.1).train()
    x, positions = inputs()
    mask = torch.zeros(B, C, dtype=torch.bool)
    mask[0, 6:] = True
    model(x, positions, mask).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("dim, n_heads", [(12, 4), (10, 4)])  # head size 3 (odd); 10 / 4 not whole
def test_bad_head_size_raises(dim, n_heads):
    with pytest.raises(ValueError, match=r"model\.dim / model\.n_heads"):
        RotaryTransformer(dim, n_layers=1, n_heads=n_heads)


def test_no_host_syncs_and_one_graph():
    model = make()
    x, positions = inputs()
    mask = torch.zeros(B, C, dtype=torch.bool)
    mask[1, 5:] = True
    assert count_syncs_and_ops(lambda: model(x, positions, mask)).syncs == 0
    compiled = torch.compile(
        model, fullgraph=True, backend="eager"
    )  # dynamo only: a graph break raises
    with torch.no_grad():
        torch.testing.assert_close(compiled(x, positions, mask), model(x, positions, mask))
