import math

import pytest
import torch

from weaktok.bench.common import count_syncs_and_ops
from weaktok.model.chunking import (
    DynamicChunkingLayer,
    FixedChunking,
    dechunk,
    ema_over_chunks,
    pool_chunks,
    pool_chunks_reference,
)


def _random_boundaries(B, T, rate, seed):
    g = torch.Generator().manual_seed(seed)
    hard = torch.rand(B, T, generator=g) < rate
    hard[:, 0] = True
    return hard


@pytest.mark.parametrize("cap", [None, "max"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pooling_matches_loop_reference_with_different_chunk_counts(seed, cap):
    B, T, D = 5, 37, 8
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed))
    hard = _random_boundaries(B, T, rate=[0.1, 0.3, 0.5, 0.9][seed % 4], seed=seed)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 20:] = False  # a shorter row: padding frames must not count
    mask[3, 5:] = False
    hard = hard & mask
    ref = pool_chunks_reference(x, hard, mask)
    counts = [r.shape[0] for r in ref]
    assert len(set(counts)) > 1, "test needs rows with different chunk counts"
    # C is static: T by default (never overflows), or a cap; "max" = the batch's largest count, the old dynamic C
    max_chunks = max(counts) if cap == "max" else None
    chunks, chunk_mask, ids, starts = pool_chunks(x, hard, mask, max_chunks=max_chunks)
    assert chunks.shape == (B, max_chunks or T, D)
    for b in range(B):
        n = counts[b]
        assert chunk_mask[b].sum() == n and chunk_mask[b, :n].all()
        torch.testing.assert_close(chunks[b, :n], ref[b])
        assert torch.all(chunks[b, n:] == 0) and torch.all(starts[b, n:] == 0)
        assert torch.all(ids[b, ~mask[b]] == -1)
        assert ids[b, 0] == 0
        # starts are exactly the boundary positions
        assert starts[b, :n].tolist() == torch.nonzero(hard[b]).flatten().tolist()


def test_pooling_cap_pools_overflowing_tail_into_last_chunk():
    """Past ``max_chunks`` boundaries a row's remaining frames join its last chunk: the same as dropping the
    boundaries after the C-th."""
    B, T, D, C = 4, 30, 6, 7
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(0))
    hard = _random_boundaries(B, T, rate=0.5, seed=3)
    hard[0] = False
    hard[0, ::10] = True  # 3 chunks: under the cap
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[2, 9:] = False
    hard = hard & mask
    kept = hard & (hard.long().cumsum(1) <= C)  # the first C boundaries of each row
    assert (hard.sum(1) > C).sum() >= 2, "test needs rows over the cap"
    chunks, chunk_mask, ids, starts = pool_chunks(x, hard, mask, max_chunks=C)
    ref_chunks, ref_mask, ref_ids, ref_starts = pool_chunks(x, kept, mask, max_chunks=C)
    ref = pool_chunks_reference(x, kept, mask)
    assert chunks.shape == (B, C, D)
    torch.testing.assert_close(chunks, ref_chunks)
    assert (
        torch.equal(chunk_mask, ref_mask)
        and torch.equal(ids, ref_ids)
        and torch.equal(starts, ref_starts)
    )
    for b in range(B):
        torch.testing.assert_close(chunks[b, : ref[b].shape[0]], ref[b])
    assert ids.max() == C - 1


@pytest.mark.parametrize("rate", [1.0, 0.5, 0.1])
def test_chunk_dimension_is_static(rate):
    """C depends on T (and the cap) only, never on the boundaries drawn: one shape for every batch."""
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(8, max_chunk_rate=rate).train()
    for T, scale in [(40, 1.0), (40, 0.0), (13, 1.0)]:
        out = layer(
            torch.randn(3, T, 8) * scale + 1
        )  # scale 0: identical frames, a single chunk per row
        assert out.chunks.shape == (3, math.ceil(T * rate), 8)
        assert (
            out.chunk_starts.shape
            == out.chunk_mask.shape
            == out.chunk_prob.shape
            == (3, math.ceil(T * rate))
        )
    assert FixedChunking(8, stride=4)(torch.randn(2, 13, 8)).chunks.shape == (2, 4, 8)
    with pytest.raises(ValueError, match="max_chunk_rate"):
        DynamicChunkingLayer(8, max_chunk_rate=0)


def test_sync_counter_sees_host_syncs():
    x = torch.randn(10)
    counts = count_syncs_and_ops(
        lambda: (x.sum().item(), bool(x[0] > 0), x[x > 0], x.nonzero(), x.clone() * 2)
    )
    assert counts.sync_ops == {"_local_scalar_dense": 2, "index (boolean mask)": 1, "nonzero": 1}
    assert counts.syncs == 4 and counts.by_op["clone"] == 1 and counts.kernels < counts.ops


@pytest.mark.parametrize("kind", ["dynamic", "topk", "fixed"])
def test_layer_forward_backward_never_syncs_with_the_host(kind):
    """No .item(), nonzero or data-dependent shape: each would be a device->host sync per step on a GPU."""
    torch.manual_seed(0)
    layer = {
        "dynamic": lambda: DynamicChunkingLayer(8),
        "topk": lambda: DynamicChunkingLayer(8, select="topk"),
        "fixed": lambda: FixedChunking(8, stride=3),
    }[kind]().train()
    x = torch.randn(3, 20, 8, requires_grad=True)
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[1, 7:] = False
    mask[2] = False  # a row without frames

    def step():
        out = layer(x, mask)
        (dechunk(out.chunks * 2, out).square().mean() + out.ratio_loss).backward()

    counts = count_syncs_and_ops(step)
    assert counts.syncs == 0, counts.sync_ops
    assert counts.ops > 20  # the counter did see the layer


def test_first_frame_always_boundary_and_probabilities_in_range():
    torch.manual_seed(0)
    for routing in ("cosine", "paper"):
        layer = DynamicChunkingLayer(16, routing=routing)
        layer.train()
        x = torch.randn(4, 30, 16)
        out = layer(x)
        assert torch.all(out.boundaries[:, 0] == 1)
        assert torch.all(out.boundary_prob[:, 0] == 1)
        assert torch.all(out.chunk_ids[:, 0] == 0)
        assert out.boundary_prob.min() >= 0 and out.boundary_prob.max() <= 1
        assert set(out.boundaries.unique().tolist()) <= {0.0, 1.0}


def test_cosine_routing_matches_definition():
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(8)
    torch.nn.init.normal_(layer.q_proj.weight)
    torch.nn.init.normal_(layer.k_proj.weight)
    x = torch.randn(2, 10, 8)
    out = layer.eval()(x)
    q, k = layer.q_proj(x[:, 1:]), layer.k_proj(x[:, :-1])
    cos = torch.nn.functional.cosine_similarity(q, k, dim=-1)
    torch.testing.assert_close(out.boundary_prob[:, 1:], ((1 - cos) / 2).clamp(0, 1))


def test_eval_is_deterministic_and_thresholded():
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(16).eval()
    torch.nn.init.normal_(layer.q_proj.weight)
    x = torch.randn(3, 40, 16)
    a, b = layer(x), layer(x)
    assert torch.equal(a.boundaries, b.boundaries)
    assert torch.equal(a.boundaries[:, 1:], (a.boundary_prob[:, 1:] >= 0.5).float())
    layer.train()
    draws = torch.stack([layer(x).boundaries for _ in range(5)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:]), (
        "training must sample (Gumbel noise)"
    )


def test_padding_frames_are_ignored():
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(8).eval()
    x = torch.randn(2, 20, 8)
    mask = torch.ones(2, 20, dtype=torch.bool)
    mask[1, 12:] = False
    out = layer(x, mask)
    short = layer(x[1:, :12])
    n = int(short.num_chunks[0])
    assert int(out.num_chunks[1]) == n
    torch.testing.assert_close(out.chunks[1, :n], short.chunks[0, :n])
    assert torch.all(out.boundary_prob[1, 12:] == 0) and torch.all(out.chunk_ids[1, 12:] == -1)


def test_router_gets_gradient_from_reconstruction_alone():
    torch.manual_seed(0)
    for smoothing in (True, False):
        layer = DynamicChunkingLayer(16).train()
        x = torch.randn(4, 32, 16, requires_grad=True)
        target = torch.randn(4, 32, 16)
        out = layer(x)
        y = x + dechunk(out.chunks * 2.0, out, smoothing=smoothing)
        ((y - target) ** 2).mean().backward()  # no ratio loss
        assert layer.q_proj.weight.grad is not None and layer.q_proj.weight.grad.abs().sum() > 0
        assert layer.k_proj.weight.grad.abs().sum() > 0


def test_dechunk_forward_is_exact_gather_without_smoothing():
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(8).train()
    x = torch.randn(3, 25, 8)
    out = layer(x)
    values = torch.randn(out.chunks.shape)
    frames = dechunk(values, out, smoothing=False)
    for b in range(3):
        for t in range(25):
            torch.testing.assert_close(frames[b, t], values[b, out.chunk_ids[b, t]])


def test_ema_over_chunks_matches_recurrence():
    torch.manual_seed(0)
    B, C, D = 3, 9, 4
    v = torch.randn(B, C, D)
    rate = torch.rand(B, C)
    rate[:, 0] = 1.0
    z = ema_over_chunks(v, rate)
    prev = torch.zeros(B, D)
    for c in range(C):
        prev = rate[:, c : c + 1] * v[:, c] + (1 - rate[:, c : c + 1]) * prev
        torch.testing.assert_close(z[:, c], prev, atol=1e-5, rtol=1e-4)


def test_ratio_loss_alone_moves_boundary_rate_toward_target():
    """Under the ratio loss alone the eval (deterministic) boundary rate goes from ~0.5 to 1/N, and the sampled
    training rate (expectation: mean p) moves toward it too."""
    torch.manual_seed(0)
    N = 4.0
    layer = DynamicChunkingLayer(32, target_ratio=N)
    x = torch.randn(
        8, 64, 32
    )  # features that change every frame: the identity-initialised router starts near 0.5

    def rates():
        with torch.no_grad():
            sampled = float(
                torch.stack([layer.train()(x).boundaries.mean() for _ in range(5)]).mean()
            )
            return sampled, float(layer.eval()(x).boundaries.mean())

    start_sampled, start_eval = rates()
    opt = torch.optim.Adam(layer.parameters(), lr=3e-3)
    layer.train()
    for _ in range(300):
        opt.zero_grad()
        layer(x).ratio_loss.backward()
        opt.step()
    end_sampled, end_eval = rates()
    assert abs(start_eval - 0.5) < 0.05 and abs(start_sampled - 0.5) < 0.05
    assert abs(end_eval - 1 / N) < 0.03, end_eval
    assert end_sampled < start_sampled - 0.03, (start_sampled, end_sampled)


def test_fixed_chunking_interface():
    x = torch.randn(2, 10, 4)
    out = FixedChunking(4, stride=3)(x)
    assert out.boundaries[0].tolist() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    assert out.chunks.shape == (2, 4, 4)
    torch.testing.assert_close(out.chunks[0, 0], x[0, :3].mean(0))
    torch.testing.assert_close(out.chunks[0, 3], x[0, 9])
    assert float(out.ratio_loss) == 0.0
    torch.testing.assert_close(dechunk(out.chunks, out, smoothing=False)[0, 4], x[0, 3:6].mean(0))


def test_paper_routing_uses_raw_logits():
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(8, routing="paper").eval()
    x = torch.randn(2, 12, 8)
    out = layer(x)
    cos = torch.nn.functional.cosine_similarity(
        layer.q_proj(x[:, 1:]), layer.k_proj(x[:, :-1]), dim=-1
    )
    p = 1 - cos  # in [0, 2]
    torch.testing.assert_close(out.boundary_prob[:, 1:], torch.sigmoid(2 * p - 1))
    with pytest.raises(ValueError, match="routing"):
        DynamicChunkingLayer(8, routing="nope")


@pytest.mark.parametrize("train_boundaries", ["sampled", "deterministic"])
def test_topk_realises_one_rate_at_every_noise_level_in_training_and_eval(train_boundaries):
    """select=topk: each row gets exactly ceil(valid / N) chunks, whatever the input's noise level, in training
    (sampled or not) and in eval; the threshold rule's count follows the input instead."""
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(
        16, target_ratio=4, select="topk", train_boundaries=train_boundaries
    )
    clean = torch.randn(2, 1, 16).expand(2, 40, 16) + 0.05 * torch.randn(2, 40, 16)  # few changes
    noisy = torch.randn(2, 40, 16)  # a change at every frame
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 21:] = False  # 21 valid frames -> ceil(21 / 4) = 6 chunks
    for mode in (layer.train, layer.eval):
        mode()
        for x in (clean, noisy):
            out = layer(x, mask)
            assert out.num_chunks.tolist() == [10, 6]
            assert torch.all(out.boundaries[:, 0] == 1) and torch.all(out.boundaries[1, 21:] == 0)
            assert out.ratio_loss.item() == 0
    threshold = DynamicChunkingLayer(16, target_ratio=4).eval()
    threshold.load_state_dict(layer.state_dict())
    assert threshold(clean).num_chunks.sum() < threshold(noisy).num_chunks.sum()


def test_topk_eval_takes_the_highest_probabilities_and_training_samples_others():
    torch.manual_seed(1)
    layer = DynamicChunkingLayer(16, target_ratio=5, select="topk").eval()
    torch.nn.init.normal_(layer.q_proj.weight)
    x = torch.randn(3, 30, 16)
    out = layer(x)
    for row in range(3):
        chosen = out.boundaries[row, 1:].bool()
        p = out.boundary_prob[row, 1:]
        assert int(chosen.sum()) == 5  # ceil(30 / 5) - 1 after frame 0
        assert p[chosen].min() >= p[~chosen].max()
    layer.train()
    draws = torch.stack([layer(x).boundaries for _ in range(5)])
    assert not all(torch.equal(draws[0], d) for d in draws[1:]), (
        "sampled top-k must vary (Gumbel-top-k)"
    )
    assert torch.all(draws.sum(-1) == 6)


def test_topk_router_gets_gradient_from_reconstruction_alone():
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(16, select="topk", train_boundaries="deterministic").train()
    x = torch.randn(4, 32, 16, requires_grad=True)
    out = layer(x)
    ((x + dechunk(out.chunks * 2.0, out) - torch.randn(4, 32, 16)) ** 2).mean().backward()
    assert layer.q_proj.weight.grad is not None and layer.q_proj.weight.grad.abs().sum() > 0
