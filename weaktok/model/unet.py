"""The chunked U-Net: spectrogram -> 3 strided conv levels -> [dynamic chunks -> Transformer -> frames] -> decoder.

    spec (B, F, T) --in_conv--> (B, c0, T) ------------------------------------------------ skip0 --.
        --down1--> (B, c1, T/2) ------------------------------------------------ skip1 --.         |
        --down2--> (B, c2, T/4) --------------------------------------- skip2 --.        |         |
        --down3--> (B, D, T/8) -> chunker -> (B, C, D) + pos(start) -> Transformer   |        |         |
                                  -> dechunk (B, T/8, D) + residual --up3--> cat --up2--> cat --up1--> cat -> out
    recon (B, F, T)

Time is padded to a multiple of 8 internally and cropped back, so any length works. Positions given to the
Transformer are each chunk's start time (in bottleneck frames), not its index, so irregular chunks keep their
place on the time axis: added as sinusoids (``model.positions: absolute``) or rotary in attention (``rotary``,
weaktok/model/transformer.py: only time differences count, so a model trained on 4-s clips sees nothing new at 8 s).

Two objectives (``model.objective``):
* ``inpaint``: spec in, spec out (an L1 denoiser / in-painter, generate.refine).
* ``flow``: rectified flow (weaktok/model/flow.py). In: x (B, F, T) normalised spectrogram, the noisy sample x_t in the
  frames to generate and the clean data in the known ones, the known mask (B, T) as one more input channel, and
  the time t (B,) as FiLM on every conv block and an embedding added to every chunk. Out: the velocity (B, F, T).
  With ``model.skips: known`` the U-Net skips are zeroed wherever a frame to generate is (min-pooled per level),
  so generated content reaches the decoder only through the T/8 bottleneck, whose long-range part is the chunk
  path; with ``model.residual: known`` the bottleneck's own residual is dropped there too, and generated frames
  get only their chunk's output: everything generated passes through the chunks.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from weaktok.config import ModelConfig
from weaktok.model.chunking import ChunkOutput, build_chunker, dechunk, sinusoidal_positions
from weaktok.model.transformer import RotaryTransformer

DOWNSAMPLE = 8  # 3 stride-2 levels


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ConvBlock(nn.Module):
    """Residual conv: x + conv(gelu(norm(x))); with a condition c (flow: the time embedding), FiLM on the norm:
    x + conv(gelu(norm(x) * (1 + scale(c)) + shift(c))), zero-initialised so it starts as the plain block."""

    def __init__(self, ch: int, cond_dim: int = 0):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.conv = nn.Conv1d(ch, ch, kernel_size=3, padding=1)
        self.film = None
        if cond_dim:
            self.film = nn.Linear(cond_dim, 2 * ch)
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)

    def forward(self, x, cond=None):  # x (B, ch, T), cond (B, cond_dim) or None
        h = self.norm(x)
        if self.film is not None:
            scale, shift = self.film(cond).unsqueeze(-1).chunk(2, dim=1)  # (B, ch, 1) each
            h = h * (1 + scale) + shift
        return x + self.conv(F.gelu(h))


class Down(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int = 0):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size=4, stride=2, padding=1)  # T -> T/2
        self.block = ConvBlock(cout, cond_dim)

    def forward(self, x, cond=None):
        return self.block(self.conv(x), cond)


class Up(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int = 0):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel_size=4, stride=2, padding=1)  # T -> 2T
        self.merge = nn.Conv1d(2 * cout, cout, kernel_size=1)
        self.block = ConvBlock(cout, cond_dim)

    def forward(self, x, skip, cond=None):
        return self.block(self.merge(torch.cat([self.conv(x), skip], dim=1)), cond)


def keep_mask(known: torch.Tensor, factor: int) -> torch.Tensor:
    """known (B, T) float 0/1 -> (B, 1, T // factor): 1 where every one of the factor frames is known (min-pool)."""
    return 1 - F.max_pool1d(1 - known[:, None], factor, factor)


class ModelOutput(NamedTuple):  # NamedTuple so ZeRO-3's module hooks reach every output tensor
    recon: (
        torch.Tensor
    )  # (B, F, T) inpaint: the reconstructed log1p spectrogram; flow: the predicted velocity
    chunk: ChunkOutput  # bottleneck chunking (frames at T/8 resolution)
    stats: dict[
        str, torch.Tensor
    ]  # boundary_rate, mean_prob, mean_chunk_len (bottleneck frames), ratio_loss


class ChunkedUNet(nn.Module):
    def __init__(self, n_freqs: int, cfg: ModelConfig):
        super().__init__()
        c0, c1, c2 = cfg.channels
        d = cfg.dim
        self.cfg = cfg
        self.flow = cfg.objective == "flow"
        e = d if self.flow else 0  # width of the time embedding (flow), 0 = none
        self.in_conv = nn.Conv1d(
            n_freqs + self.flow, c0, kernel_size=3, padding=1
        )  # flow: + the known mask
        self.down1, self.down2, self.down3 = Down(c0, c1, e), Down(c1, c2, e), Down(c2, d, e)
        if self.flow:
            self.time_mlp = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d))
            # the data normalisation of the flow (per-frequency mean and std of the log1p spectrogram frames, set by
            # training from the corpus; weaktok/model/flow.py): saved with the weights, so a model.pt is self-contained
            self.register_buffer("spec_mean", torch.zeros(n_freqs))
            self.register_buffer("spec_std", torch.ones(n_freqs))
        ck = cfg.chunking
        # max_chunk_rate: static chunk slots per bottleneck frame (chunking.py); 1 = exact, no cap
        self.chunker = build_chunker(
            d,
            kind=ck.kind,
            routing=ck.routing,
            tau=ck.tau,
            target_ratio=ck.target_ratio,
            fixed_stride=ck.fixed_stride,
            max_chunk_rate=ck.max_chunk_rate,
            train_boundaries=ck.train_boundaries,
            select=ck.select,
        )
        # n_layers = 0 is the chunking-only ablation: chunks are pooled, normed and spread back with no mixing
        # between them (nn.TransformerEncoder cannot be built with zero layers, so there is no module at all)
        self.transformer = None
        if cfg.n_layers > 0 and cfg.positions == "rotary":
            self.transformer = RotaryTransformer(
                d, cfg.n_layers, cfg.n_heads, cfg.ff_mult, cfg.dropout
            )
        elif cfg.n_layers > 0:
            layer = nn.TransformerEncoderLayer(
                d,
                cfg.n_heads,
                dim_feedforward=cfg.ff_mult * d,
                dropout=cfg.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.transformer = nn.TransformerEncoder(
                layer, cfg.n_layers, enable_nested_tensor=False
            )
        self.chunk_norm = nn.LayerNorm(d)
        self.up3, self.up2, self.up1 = Up(d, c2, e), Up(c2, c1, e), Up(c1, c0, e)
        self.out_conv = nn.Conv1d(c0, n_freqs, kernel_size=3, padding=1)
        # the bypass ablation (evaluate.py): when True the bottleneck returns its input, so nothing passes through
        # chunking -> Transformer -> un-chunking; the chunker still runs so chunk statistics stay comparable
        self.cut_chunk_path = False

    def set_tau(self, tau: float) -> None:
        if hasattr(self.chunker, "tau"):
            self.chunker.tau = tau

    def bottleneck(
        self,
        h: torch.Tensor,
        mask: torch.Tensor,
        temb: torch.Tensor | None = None,
        residual: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ChunkOutput]:
        """h: (B, T8, D), mask (B, T8), temb (B, D) or None, residual (B, T8, 1) or None (= 1: every frame keeps
        its own features) -> (B, T8, D) = h * residual + the un-chunked chunk outputs, and the chunking.

        C is static (a bound from T8, see ``pool_chunks``), so most rows have padded chunks: they are keys nobody
        attends to, get EMA weight 0 (their chunk_prob is 0) and no frame gathers them, so real chunks' outputs do
        not depend on C. A row without valid frames has no real chunk at all; chunk 0 (zeros + position 0) stays
        a key there: softmax over no keys is NaN on some attention kernels, and 0 * NaN would reach the frames.
        """
        co = self.chunker(h, mask)
        if self.cut_chunk_path:
            return h, co
        C = co.chunks.shape[1]
        z = co.chunks  # (B, C, D)
        if temb is not None:
            z = z + temb[:, None, :]
        if self.cfg.positions == "absolute":
            z = z + sinusoidal_positions(co.chunk_starts, h.shape[-1]).to(h.dtype)
        if self.transformer is not None:
            key_padding = ~co.chunk_mask & (
                torch.arange(C, device=h.device) > 0
            )  # (B, C), chunk 0 never padded
            if self.cfg.positions == "rotary":
                z = self.transformer(z, co.chunk_starts, key_padding_mask=key_padding)
            else:
                z = self.transformer(z, src_key_padding_mask=key_padding)
        z = self.chunk_norm(z)
        smoothing = self.cfg.chunking.smoothing and self.cfg.chunking.kind == "dynamic"
        return (h if residual is None else h * residual) + dechunk(z, co, smoothing=smoothing), co

    def forward(
        self,
        spec: torch.Tensor,
        lengths: torch.Tensor | None = None,
        t: torch.Tensor | None = None,
        known: torch.Tensor | None = None,
    ) -> ModelOutput:
        """spec (B, F, T); flow models also take t (B,) in [0, 1] and known (B, T) (bool or 0/1; None = nothing
        known)."""
        B, _, T = spec.shape
        pad = (-T) % DOWNSAMPLE
        x = F.pad(spec, (0, pad))  # (B, F, Tp)
        Tp = T + pad
        if lengths is None:
            lengths = torch.full((B,), T, device=spec.device)
        t8 = torch.arange(Tp // DOWNSAMPLE, device=spec.device)
        mask8 = t8[None, :] < (lengths[:, None] + DOWNSAMPLE - 1) // DOWNSAMPLE  # (B, T8)

        temb, keep, residual = None, None, None
        if self.flow:
            if t is None:
                raise ValueError("a flow model needs the time t (B,) of its input")
            kn = (
                x.new_zeros(B, Tp) if known is None else F.pad(known.to(x.dtype), (0, pad))
            )  # (B, Tp)
            x = torch.cat([x, kn[:, None]], dim=1)  # (B, F + 1, Tp)
            temb = self.time_mlp(
                sinusoidal_positions(1000 * t[:, None], self.cfg.dim)[:, 0].to(x.dtype)
            )  # (B, D)
            if self.cfg.skips == "known":
                keep = [keep_mask(kn, f) for f in (1, 2, 4)]  # (B, 1, Tp / f) per level
            elif (
                self.cfg.skips == "local"
            ):  # the full-resolution skip (3-frame receptive field) stays everywhere
                keep = [torch.ones_like(kn[:, None])] + [keep_mask(kn, f) for f in (2, 4)]
            if self.cfg.residual == "known":
                residual = keep_mask(kn, DOWNSAMPLE).transpose(1, 2)  # (B, T8, 1)
        s0 = self.in_conv(x)  # (B, c0, Tp)
        s1 = self.down1(s0, temb)  # (B, c1, Tp/2)
        s2 = self.down2(s1, temb)  # (B, c2, Tp/4)
        h = self.down3(s2, temb)  # (B, D, Tp/8)
        h, co = self.bottleneck(h.transpose(1, 2), mask8, temb, residual)
        if (
            keep is not None
        ):  # skips only where the frames are known: generated content comes from the bottleneck
            s0, s1, s2 = s0 * keep[0], s1 * keep[1], s2 * keep[2]
        y = self.up3(h.transpose(1, 2), s2, temb)
        y = self.up2(y, s1, temb)
        y = self.up1(y, s0, temb)
        recon = self.out_conv(y)[..., :T]  # (B, F, T)
        return ModelOutput(recon=recon, chunk=co, stats=chunk_stats(co))


def chunk_stats(co: ChunkOutput) -> dict[str, torch.Tensor]:
    """Diagnostics over valid frames (detached): boundary rate, mean p, mean chunk length, ratio loss."""
    m = co.frame_mask.float()
    n_frames = m.sum().clamp_min(1)
    return {
        "boundary_rate": ((co.boundaries.detach() * m).sum() / n_frames),
        "mean_prob": ((co.boundary_prob.detach() * m).sum() / n_frames),
        "mean_chunk_len": n_frames / co.num_chunks.sum().clamp_min(1),
        "ratio_loss": co.ratio_loss,
    }


@contextmanager
def chunk_path_cut(model: ChunkedUNet):
    """Within the block the model's bottleneck is the identity (the bypass ablation): what the model does without
    its chunk path, with the same weights."""
    model.cut_chunk_path = True
    try:
        yield model
    finally:
        model.cut_chunk_path = False


def build_model(cfg: ModelConfig, n_freqs: int) -> ChunkedUNet:
    return ChunkedUNet(n_freqs, cfg)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
