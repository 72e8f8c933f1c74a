"""A pre-norm Transformer encoder whose attention sees chunk positions through rotary embeddings (RoPE).

Why rotary: the dynamic chunks sit at irregular times, so a chunk's position is its start time in frames (a
float), not its index. Absolute sinusoids added to the input tie the model to the times it was trained on: a
model trained on 4-s clips never saw the sinusoids of times past 4 s, so an 8-s clip is out of distribution.
Rotary embeddings (RoFormer, Su et al. 2021, arXiv:2104.09864) rotate each query and key pair of channels by an
angle proportional to its position, so the score q_i . k_j depends on positions only through t_i - t_j: attention
sees time differences between chunks, which an 8-s clip draws from the same range as a 4-s one.

Written by hand because torch's nn.TransformerEncoder has no rotary option. Blocks as in nanoGPT:
x = x + attn(ln1(x)); x = x + mlp(ln2(x)). No final LayerNorm: the caller has one. No host syncs and no
data-dependent shapes, so it runs under torch.compile(fullgraph=True).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """x (B, H, C, h), positions (B, C) -> x with channel pairs (i, i + h/2) rotated by positions * base^(-2i/h).

    In float32 whatever x's dtype (a bf16 angle of a few hundred radians is off by whole turns), cast back after.
    The frequencies are made here rather than kept as a buffer, which model.to(bfloat16) would round.
    """
    h = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, h, 2, device=x.device, dtype=torch.float32) / h)  # (h/2,)
    angle = positions[:, None, :, None].float() * inv_freq  # (B, 1, C, h/2), shared by the heads
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float().chunk(2, dim=-1)  # the "split halves" convention: (B, H, C, h/2) each
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, dim: int, n_heads: int, dropout: float, base: float):
        super().__init__()
        self.n_heads, self.dropout, self.base = n_heads, dropout, base
        self.qkv = nn.Linear(dim, 3 * dim)  # q, k, v of all heads in one matmul
        self.proj = nn.Linear(dim, dim)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        B, C, D = x.shape
        qkv = self.qkv(x).view(B, C, 3, self.n_heads, D // self.n_heads)  # (B, C, 3, H, h)
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # each (B, H, C, h)
        q, k = rotate(q, positions, self.base), rotate(k, positions, self.base)
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=dropout_p
        )  # (B, H, C, h)
        y = y.transpose(1, 2).reshape(B, C, D)  # heads side by side again
        return self.resid_dropout(self.proj(y))


class Block(nn.Module):
    def __init__(self, dim: int, n_heads: int, ff_mult: int, dropout: float, base: float):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, n_heads, dropout, base)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, ff_mult * dim),
            nn.GELU(),
            nn.Linear(ff_mult * dim, dim),
            nn.Dropout(dropout),
        )

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, attn_mask: torch.Tensor | None
    ) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), positions, attn_mask)
        return x + self.mlp(self.ln2(x))


class RotaryTransformer(nn.Module):
    def __init__(
        self,
        dim: int,
        n_layers: int,
        n_heads: int,
        ff_mult: int = 4,
        dropout: float = 0.0,
        base: float = 10000.0,
    ):
        super().__init__()
        if dim % n_heads or (dim // n_heads) % 2:
            raise ValueError(
                f"rotary positions need an even head size model.dim / model.n_heads, "
                f"got {dim} / {n_heads}"
            )
        self.dim, self.n_heads = dim, n_heads
        self.blocks = nn.ModuleList(
            Block(dim, n_heads, ff_mult, dropout, base) for _ in range(n_layers)
        )

    def forward(
        self, x: torch.Tensor, positions: torch.Tensor, key_padding_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """x (B, C, D), positions (B, C) float (or long) chunk start times,
        key_padding_mask (B, C) bool True = padded key (ignored as a key) -> (B, C, D)."""
        attn_mask = None
        if key_padding_mask is not None:
            # (B, 1, 1, C), True = may attend. Chunk 0 is never padded, so every query has a key: no all -inf row
            attn_mask = ~key_padding_mask[:, None, None, :]
        for block in self.blocks:
            x = block(x, positions, attn_mask)
        return x
