"""Rectified flow (weaktok/model/flow.py) and the flow model's wiring (weaktok/model/unet.py): training pairs and
masks, the loss, the ODE sampler, skips that carry only known frames, deterministic training boundaries, and a small
flow that learns a two-mode distribution end to end."""

import pytest
import torch

from weaktok.config import ConfigError, FlowConfig, load_config
from weaktok.model import flow
from weaktok.model.chunking import DynamicChunkingLayer
from weaktok.model.unet import build_model, chunk_path_cut

F_, T_ = 24, 40  # frequency bins and frames of the small test spectrograms


def small_cfg(*overrides):
    return load_config(
        "tiny",
        [
            "model.objective=flow",
            "model.channels=[16,16,32]",
            "model.dim=32",
            "model.n_heads=2",
            *overrides,
        ],
    )


def test_known_masks_follow_the_config():
    cfg = FlowConfig(uncond_prob=0.25, hole_min=0.25, hole_max=0.5, hole_at_end=0.5)
    known = flow.sample_known(4000, 100, cfg, torch.Generator().manual_seed(0), "cpu")  # (n, T)
    uncond = ~known.any(1)
    assert 0.22 < uncond.float().mean() < 0.28
    hole = ~known[~uncond]
    lengths = hole.sum(1)
    assert lengths.min() >= 25 and lengths.max() <= 50
    # one contiguous span per example
    assert (
        ((hole[:, 1:].int() - hole[:, :-1].int()).clamp_min(0).sum(1) + hole[:, 0].int())
        .eq(1)
        .all()
    )
    assert (
        0.45 < hole[:, -1].float().mean() < 0.6
    )  # about half end the clip (plus random spans that reach it)


def test_flow_batch_holds_the_data_where_known_and_the_path_elsewhere():
    m = build_model(small_cfg().model, F_)
    spec = torch.rand(6, F_, T_) * 3
    b = flow.flow_batch(m, spec, m.cfg.flow, torch.Generator().manual_seed(1))
    x1 = flow.normalise(m, spec)
    k = b["known"][:, None].expand_as(x1)
    assert torch.equal(b["x"][k], x1[k])
    x0 = x1 - b["v"]
    t = b["t"][:, None, None]
    assert torch.allclose(b["x"][~k], ((1 - t) * x0 + t * x1)[~k], atol=1e-6)
    assert ((b["t"] > 0) & (b["t"] < 1)).all()


def test_flow_loss_counts_only_the_frames_to_generate():
    b = {"v": torch.zeros(2, 3, 4), "known": torch.tensor([[True, True, False, False]] * 2)}
    v_hat = torch.zeros(2, 3, 4)
    v_hat[..., :2] = 100.0  # errors in known frames do not count
    assert flow.flow_loss(v_hat, b) == 0
    v_hat[..., 2] = 2.0
    assert flow.flow_loss(v_hat, b).item() == pytest.approx(
        2.0
    )  # 4 on half of the generated frames


class PointMass(torch.nn.Module):
    """The exact flow of a dataset with one item x*: it predicts x* (data) or v(x, t) = (x* - x) / (1 - t)."""

    flow = True

    def __init__(self, target, predict):
        super().__init__()
        self.target, self.predict = target, predict
        self.w = torch.nn.Parameter(torch.zeros(()))  # a dtype for the sampler
        self.spec_mean, self.spec_std = torch.zeros(target.shape[1]), torch.ones(target.shape[1])

    def forward(self, x, t=None, known=None):
        out = (
            self.target
            if self.predict == "data"
            else (self.target - x) / (1 - t[:, None, None]).clamp_min(1e-3)
        )
        return type(
            "Out", (), {"recon": out.expand_as(x), "stats": {"boundary_rate": torch.tensor(0.0)}}
        )


@pytest.mark.parametrize("predict", ["data", "velocity"])
@pytest.mark.parametrize("solver", ["euler", "midpoint"])
def test_sampler_integrates_to_the_data_and_keeps_known_frames(solver, predict):
    x_star = torch.randn(1, F_, T_)
    model = PointMass(x_star, predict)
    known = torch.zeros(T_, dtype=torch.bool)
    known[:10] = True
    seed = torch.rand(3, F_, T_) * 2
    cfg = FlowConfig(solver=solver, steps=8, predict=predict)
    y, _ = flow.sample(model, seed, known, cfg, torch.Generator().manual_seed(0))
    assert torch.equal(y[..., :10], seed[..., :10])  # known frames are the seed's
    assert torch.allclose(y[..., 10:], x_star.expand(3, -1, -1)[..., 10:].clamp_min(0), atol=1e-4)


def test_skips_known_route_generated_frames_through_the_bottleneck_only():
    def silence_bottleneck(
        model,
    ):  # the bottleneck's output zeroed (its chunking still runs, for the stats)
        real = model.bottleneck
        model.bottleneck = lambda h, mask, temb=None, residual=None: (
            torch.zeros_like(h),
            real(h, mask, temb)[1],
        )
        return model

    torch.manual_seed(0)
    known_skips = silence_bottleneck(build_model(small_cfg("model.skips=known").model, F_).eval())
    all_skips = silence_bottleneck(build_model(small_cfg().model, F_).eval())
    t = torch.full((2,), 0.5)
    nothing = torch.zeros(2, T_, dtype=torch.bool)
    a, b = torch.randn(2, F_, T_), torch.randn(2, F_, T_)
    out_a, out_b = (known_skips(x, t=t, known=nothing).recon for x in (a, b))
    assert torch.allclose(
        out_a, out_b
    )  # nothing known: the input reaches the output only through the bottleneck
    out_a, out_b = (all_skips(x, t=t, known=nothing).recon for x in (a, b))
    assert not torch.allclose(out_a, out_b)  # full skips carry it past
    some = nothing.clone()
    some[:, :16] = True
    out_a, out_b = (known_skips(x, t=t, known=some).recon for x in (a, b))
    assert not torch.allclose(out_a[..., :16], out_b[..., :16])  # known frames do pass the skips


def test_residual_known_leaves_generated_frames_only_their_chunks():
    def bottleneck_output(
        *overrides,
    ):  # one fixed chunk over all 5 bottleneck frames of a 40-frame clip
        torch.manual_seed(0)
        m = build_model(
            small_cfg(
                "model.skips=known",
                "model.chunking.kind=fixed",
                "model.chunking.fixed_stride=5",
                *overrides,
            ).model,
            F_,
        ).eval()
        real, seen = m.bottleneck, {}
        m.bottleneck = lambda *a: seen.setdefault("out", real(*a))
        known = torch.zeros(1, T_, dtype=torch.bool)
        known[:, :16] = True  # bottleneck frames 0-1 known, 2-4 generated
        m(torch.randn(1, F_, T_), t=torch.full((1,), 0.5), known=known)
        return seen["out"][0][0]  # (T8, D)

    chunk_only = bottleneck_output("model.residual=known")
    assert torch.allclose(chunk_only[2], chunk_only[3]) and torch.allclose(
        chunk_only[3], chunk_only[4]
    )
    assert not torch.allclose(chunk_only[0], chunk_only[2])  # known frames keep their own features
    with_residual = bottleneck_output()
    assert not torch.allclose(with_residual[2], with_residual[3])
    with pytest.raises(ConfigError, match="model.residual"):
        load_config("tiny", ["model.residual=known"])


def test_flow_model_needs_t_and_skips_known_needs_flow():
    m = build_model(small_cfg().model, F_)
    with pytest.raises(ValueError, match="time t"):
        m(torch.randn(1, F_, T_))
    with pytest.raises(ConfigError, match="model.skips"):
        load_config("tiny", ["model.skips=known"])


def test_deterministic_training_boundaries_are_the_eval_boundaries():
    torch.manual_seed(0)
    layer = DynamicChunkingLayer(16, train_boundaries="deterministic")
    x = torch.randn(3, 50, 16, requires_grad=True)
    train = layer.train()(x)
    ev = layer.eval()(x)
    assert torch.equal(train.boundaries, ev.boundaries)
    sampled = DynamicChunkingLayer(16).train()
    sampled.load_state_dict(layer.state_dict())
    assert not torch.equal(sampled(x).boundaries, ev.boundaries)  # Gumbel samples differ
    # the router still learns: through the confidence gate of un-chunking
    from weaktok.model.chunking import dechunk

    out = layer.train()(x)
    dechunk(out.chunks, out).sum().backward()
    assert layer.q_proj.weight.grad.abs().sum() > 0


def test_cutting_the_chunk_path_changes_a_flow_model_with_known_skips():
    torch.manual_seed(0)
    m = build_model(small_cfg("model.skips=known", "model.positions=rotary").model, F_).eval()
    spec = torch.rand(2, F_, T_) * 2
    nothing = torch.zeros(T_, dtype=torch.bool)
    intact = flow.eval_loss(m, spec, nothing, torch.Generator().manual_seed(3))[0]
    with chunk_path_cut(m):
        cut = flow.eval_loss(m, spec, nothing, torch.Generator().manual_seed(3))[0]
    again = flow.eval_loss(m, spec, nothing, torch.Generator().manual_seed(3))[0]
    assert torch.equal(intact, again) and not torch.allclose(intact, cut)


def test_a_small_flow_learns_a_two_mode_distribution():
    """End to end on a toy corpus: two spectrogram patterns (a low band, a high band). After training, unconditional
    samples land near one pattern or the other (not their average), both modes appear, and seed-based samples
    continue the seed's pattern. Fails if the loss, the conditioning or the sampler is wrong."""
    torch.manual_seed(0)
    cfg = small_cfg(
        "model.skips=known",
        "model.positions=rotary",
        "model.chunking.train_boundaries=deterministic",
        "model.flow.uncond_prob=0.5",
        "model.flow.steps=12",
        "model.flow.predict=data",
    )
    low, high = torch.zeros(F_, T_), torch.zeros(F_, T_)
    low[: F_ // 2] = 2.0
    high[F_ // 2 :] = 2.0
    m = build_model(cfg.model, F_)
    flow.set_normaliser(
        m,
        {
            "mean": torch.full((F_,), 1.0),
            "components": torch.zeros(0, F_),
            "comp_std": torch.zeros(0),
            "resid_std": torch.ones(F_),
        },
    )
    opt = torch.optim.Adam(m.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(400):
        pick = torch.rand(16, generator=g) < 0.5
        spec = torch.where(pick[:, None, None], low, high)
        b = flow.flow_batch(m, spec, cfg.model.flow, g)
        out = m(b["x"], t=b["t"], known=b["known"]).recon
        loss = flow.flow_loss(flow.to_velocity(out, b["x"], b["t"], cfg.model.flow), b)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    y, _ = flow.sample(
        m,
        torch.zeros(32, F_, T_),
        torch.zeros(T_, dtype=torch.bool),
        cfg.model.flow,
        torch.Generator().manual_seed(1),
    )
    d_low, d_high = ((y - low).abs().mean((1, 2)), (y - high).abs().mean((1, 2)))
    nearest = torch.minimum(d_low, d_high)
    assert nearest.mean() < 0.15, nearest  # the average of the two patterns is 1.0 away from each
    frac_low = (d_low < d_high).float().mean()
    assert 0.15 < frac_low < 0.85, frac_low
    known = torch.zeros(T_, dtype=torch.bool)
    known[: T_ // 2] = True
    seeds = torch.stack([low, high] * 4)
    y, _ = flow.sample(m, seeds, known, cfg.model.flow, torch.Generator().manual_seed(2))
    err = (y[..., T_ // 2 :] - seeds[..., T_ // 2 :]).abs().mean((1, 2))
    assert err.max() < 0.15, err


def test_feedback_moves_the_surrogate_target_against_the_exact_error():
    from weaktok.train.lscore_glue import feedback_step

    val_t = {"mean": torch.tensor([1.0, 4.0, 0.2, 0.5]), "std": torch.tensor([0.5, 2.0, 0.1, 0.1])}
    loss_t = {
        "mean": torch.tensor([1.0, 3.0, 0.1, 0.4]),
        "std": torch.tensor([0.2, 1.0, 0.05, 0.1]),
    }
    val = {
        "val_gen_uncond_lscore": [1.0, 8.0, 0.2, 0.3],
        "val_gen_seed_lscore": [1.0, 6.0, 0.2, 0.5],
    }
    c = feedback_step([0.0] * 4, val, val_t, loss_t, gain=0.5)
    # density 1.5 std too high on average -> its surrogate target drops by 0.5 * 1.5 * 1.0; structural 2 std low
    # in one mode, on target in the other (1 std low on average) -> up by 0.5 * 1 * 0.1; the others unchanged
    assert c == pytest.approx([0.0, -0.75, 0.0, 0.05], abs=1e-6)
    assert feedback_step(c, {"val_gen_error": "pool died"}, val_t, loss_t, 0.5) == c
    # no move while the L-Score loss is off (w_L = 0); the clamp holds each term within +-clamp surrogate stds
    assert feedback_step(c, val, val_t, loss_t, 0.5, active=False) == c
    clamped = feedback_step([0.0] * 4, val, val_t, loss_t, gain=1.0, clamp=0.5)
    assert clamped == pytest.approx(
        [0.0, -0.5, 0.0, 0.05], abs=1e-6
    )  # density -1.5 -> -0.5 x std 1.0
    with pytest.raises(ConfigError, match="lscore.feedback_clamp"):
        load_config("tiny", ["lscore.feedback_clamp=0"])
    with pytest.raises(ConfigError, match="lscore.feedback"):
        load_config("tiny", ["lscore.feedback=0.5"])
