"""The chunked U-Net: spectrogram -> 3 strided conv levels -> [dynamic chunks -> Transformer -> frames] -> decoder.

    spec (B, F, T) --in_conv--> (B, c0, T) ------------------------------------------------ skip0 --.
        --down1--> (B, c1, T/2) ------------------------------------------------ skip1 --.         |
        --down2--> (B, c2, T/4) --------------------------------------- skip2 --.        |         |
        --down3--> (B, D, T/8) -> chunker -> (B, C, D) + pos(start) -> Transformer   |        |         |
                                  -> dechunk (B, T/8, D) + residual --up3--> cat --up2--> cat --up1--> cat -> out
    recon (B, F, T)

Time is padded to a multiple of 8 internally and cropped back, so any length works. Positions given to the
Transformer are each chunk's start time (in bottleneck frames), not its index, so irregular chunks keep their
place on the time axis.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from weaktok.chunking import ChunkOutput, build_chunker, dechunk, sinusoidal_positions
from weaktok.config import ModelConfig

DOWNSAMPLE = 8  # 3 stride-2 levels


def _groups(channels: int) -> int:
    for g in (8, 4, 2):
        if channels % g == 0:
            return g
    return 1


class ConvBlock(nn.Module):
    """Residual conv: x + conv(gelu(norm(x)))."""

    def __init__(self, ch: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.conv = nn.Conv1d(ch, ch, kernel_size=3, padding=1)

    def forward(self, x):  # (B, ch, T)
        return x + self.conv(F.gelu(self.norm(x)))


class Down(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size=4, stride=2, padding=1)  # T -> T/2
        self.block = ConvBlock(cout)

    def forward(self, x):
        return self.block(self.conv(x))


class Up(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel_size=4, stride=2, padding=1)  # T -> 2T
        self.merge = nn.Conv1d(2 * cout, cout, kernel_size=1)
        self.block = ConvBlock(cout)

    def forward(self, x, skip):
        return self.block(self.merge(torch.cat([self.conv(x), skip], dim=1)))


class ModelOutput(NamedTuple):  # NamedTuple so ZeRO-3's module hooks reach every output tensor
    recon: torch.Tensor  # (B, F, T) reconstructed log1p-magnitude spectrogram
    chunk: ChunkOutput  # bottleneck chunking (frames at T/8 resolution)
    stats: dict[str, torch.Tensor]  # boundary_rate, mean_prob, mean_chunk_len (bottleneck frames), ratio_loss


class ChunkedUNet(nn.Module):
    def __init__(self, n_freqs: int, cfg: ModelConfig):
        super().__init__()
        c0, c1, c2 = cfg.channels
        d = cfg.dim
        self.cfg = cfg
        self.in_conv = nn.Conv1d(n_freqs, c0, kernel_size=3, padding=1)
        self.down1, self.down2, self.down3 = Down(c0, c1), Down(c1, c2), Down(c2, d)
        ck = cfg.chunking
        # max_chunk_rate: static chunk slots per bottleneck frame (chunking.py); 1 = exact, no cap
        self.chunker = build_chunker(d, kind=ck.kind, routing=ck.routing, tau=ck.tau,
                                     target_ratio=ck.target_ratio, fixed_stride=ck.fixed_stride,
                                     max_chunk_rate=ck.max_chunk_rate)
        # n_layers = 0 is the chunking-only ablation: chunks are pooled, normed and spread back with no mixing
        # between them (nn.TransformerEncoder cannot be built with zero layers, so there is no module at all)
        self.transformer = None
        if cfg.n_layers > 0:
            layer = nn.TransformerEncoderLayer(d, cfg.n_heads, dim_feedforward=cfg.ff_mult * d,
                                               dropout=cfg.dropout, activation="gelu", batch_first=True,
                                               norm_first=True)
            self.transformer = nn.TransformerEncoder(layer, cfg.n_layers, enable_nested_tensor=False)
        self.chunk_norm = nn.LayerNorm(d)
        self.up3, self.up2, self.up1 = Up(d, c2), Up(c2, c1), Up(c1, c0)
        self.out_conv = nn.Conv1d(c0, n_freqs, kernel_size=3, padding=1)
        # the bypass ablation (evaluate.py): when True the bottleneck returns its input, so nothing passes through
        # chunking -> Transformer -> un-chunking; the chunker still runs so chunk statistics stay comparable
        self.cut_chunk_path = False

    def set_tau(self, tau: float) -> None:
        if hasattr(self.chunker, "tau"):
            self.chunker.tau = tau

    def bottleneck(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, ChunkOutput]:
        """h: (B, T8, D), mask (B, T8) -> (B, T8, D) with chunk context added, and the chunking.

        C is static (a bound from T8, see ``pool_chunks``), so most rows have padded chunks: they are keys nobody
        attends to, get EMA weight 0 (their chunk_prob is 0) and no frame gathers them, so real chunks' outputs do
        not depend on C. A row without valid frames has no real chunk at all; chunk 0 (zeros + position 0) stays
        a key there: softmax over no keys is NaN on some attention kernels, and 0 * NaN would reach the frames.
        """
        co = self.chunker(h, mask)
        if self.cut_chunk_path:
            return h, co
        C = co.chunks.shape[1]
        z = co.chunks + sinusoidal_positions(co.chunk_starts, h.shape[-1]).to(h.dtype)  # (B, C, D)
        if self.transformer is not None:
            key_padding = ~co.chunk_mask & (torch.arange(C, device=h.device) > 0)  # (B, C), chunk 0 never padded
            z = self.transformer(z, src_key_padding_mask=key_padding)
        z = self.chunk_norm(z)
        smoothing = self.cfg.chunking.smoothing and self.cfg.chunking.kind == "dynamic"
        return h + dechunk(z, co, smoothing=smoothing), co

    def forward(self, spec: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        B, _, T = spec.shape
        pad = (-T) % DOWNSAMPLE
        x = F.pad(spec, (0, pad))  # (B, F, Tp)
        Tp = T + pad
        if lengths is None:
            lengths = torch.full((B,), T, device=spec.device)
        t8 = torch.arange(Tp // DOWNSAMPLE, device=spec.device)
        mask8 = t8[None, :] < (lengths[:, None] + DOWNSAMPLE - 1) // DOWNSAMPLE  # (B, T8)

        s0 = self.in_conv(x)  # (B, c0, Tp)
        s1 = self.down1(s0)  # (B, c1, Tp/2)
        s2 = self.down2(s1)  # (B, c2, Tp/4)
        h = self.down3(s2)  # (B, D, Tp/8)
        h, co = self.bottleneck(h.transpose(1, 2), mask8)
        y = self.up3(h.transpose(1, 2), s2)
        y = self.up2(y, s1)
        y = self.up1(y, s0)
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
