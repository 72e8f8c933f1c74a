"""Dynamic chunking: content-driven boundaries, mean-pooled chunks, and the way back to frames.

The paper (eqs 1-7):  Q = X W_q, K = X W_k;  s_t = cos(Q_t, K_{t-1});  p_t = 1 - s_t;  l_t = [p_t, 1 - p_t];
b_t = GumbelSoftmax(l_t, tau);  c_t = cumsum(b_t);  O_i = mean{x_t : c_t = i}.

What the paper leaves out, and what we do (after H-Net's ``dc.py`` and Nawrot's dynamic pooling):

* Range. 1 - cos lies in [0, 2], so 1 - p can be negative. ``routing="cosine"`` (default) uses
  p_t = clamp((1 - cos) / 2, 0, 1) and samples with logits [log p, log(1 - p)], so a hard Gumbel sample is a
  boundary with probability exactly p_t. ``routing="paper"`` keeps the paper's p_t = 1 - cos in [0, 2] and
  uses l_t = [p_t, 1 - p_t] literally as logits; the probability of a boundary is then
  softmax(l_t)_0 = sigmoid(2 p_t - 1), which is what ``boundary_prob`` reports in that mode.
* The first frame always starts a chunk (p_0 = 1), so chunk ids start at 0.
* Router gradient. Hard boundaries, integer ids and a scatter mean give the task loss no path to W_q/W_k.
  Un-chunking gives it two (both from H-Net): each frame's chunk value is multiplied by a straight-through
  confidence (forward 1, backward d/dconf) where conf = p if the frame is a boundary else 1 - p, and chunk
  outputs are smoothed by an EMA over chunks whose rate is the boundary probability of each chunk's start.
* Collapse. ``ratio_loss`` is H-Net's: with F the mean hard boundary rate (no grad) and G the mean p over
  valid frames, L = N/(N-1) * ((N-1) F G + (1-F)(1-G)); it is minimised at one boundary per N frames. F is the
  rate of the *deterministic* boundaries (P(boundary) >= 0.5, as H-Net's hard boundaries and our eval are), not
  of the Gumbel samples: with sampled F the loss only steers mean p, and p can settle below 0.5 everywhere, so
  training samples chunks that evaluation never forms. With deterministic F the eval rate is driven to 1/N.
* Training samples boundaries (hard Gumbel-Softmax, straight-through); eval uses p >= 0.5, no noise. With
  ``train_boundaries="deterministic"`` training uses p >= 0.5 as well (H-Net): the router then learns only through
  the confidence gate and the ratio loss, and training and evaluation form the same chunks from the same input.
* How many. The threshold above lets the count follow the input: a flow model's router sees noisy inputs while
  generating and forms far fewer chunks there than on clean audio. ``select="topk"`` fixes the count instead: each
  row's k = ceil(valid frames / N) highest-p frames start chunks (frame 0 always). The router then decides *where*
  the boundaries go, never how many, so training, evaluation and generation realise the same rate 1/N at every
  noise level, and a fixed grid of stride N is a baseline at exactly equal compression. Sampled training uses the
  Gumbel-top-k trick (k draws without replacement, in proportion to p^(1/tau)); the ratio loss is then 0.

Everything is vectorised over batch and chunks: pooling is one ``index_add_`` over flattened ids, un-chunking
one ``gather``; the EMA is a masked C x C matrix product. ``pool_chunks_reference`` is a per-row Python loop
kept only as the test and benchmark reference.

Shapes are static and nothing reads a tensor on the host: the chunk dimension C is a bound from the frame count
(T by default, ``ceil(T * max_chunk_rate)`` with a cap; ``ceil(T / stride)`` for the fixed grid), not the batch's
largest chunk count. So a step has no device->host sync and the same shapes every batch (``torch.compile`` with
``fullgraph=True, dynamic=False`` compiles once; CUDA graphs can capture it). Padded chunks are zeros, masked.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

Routing = Literal["cosine", "paper"]


class ChunkOutput(
    NamedTuple
):  # a NamedTuple, not a dataclass: ZeRO-3 hooks only see tensors in tuples/dicts
    chunks: torch.Tensor  # (B, C, D) mean of each chunk's frames; zeros past a row's chunk count
    chunk_mask: torch.Tensor  # (B, C) bool, True for real chunks
    chunk_ids: torch.Tensor  # (B, T) long, chunk index of each frame, -1 on padding frames
    boundary_prob: (
        torch.Tensor
    )  # (B, T) probability that frame t starts a chunk; 1 at t=0, 0 on padding
    boundaries: torch.Tensor  # (B, T) hard 0/1 floats (straight-through gradient in training)
    ratio_loss: torch.Tensor  # () H-Net ratio loss over valid frames
    chunk_starts: torch.Tensor  # (B, C) long, first frame of each chunk (0 for padded chunks)
    chunk_prob: (
        torch.Tensor
    )  # (B, C) boundary_prob at each chunk's first frame (0 for padded chunks)
    confidence: torch.Tensor  # (B, T) p where a boundary was taken, 1 - p elsewhere (1 on padding)
    frame_mask: torch.Tensor  # (B, T) bool, True for real frames

    @property
    def num_chunks(self) -> torch.Tensor:  # (B,)
        return self.chunk_mask.sum(1)


# ----------------------------------------------------------------------------------------------------------
# Pooling: frames -> chunks


def pool_chunks(
    x: torch.Tensor, hard: torch.Tensor, mask: torch.Tensor, max_chunks: int | None = None
):
    """Mean-pool frames into chunks that start where ``hard`` is 1.

    x: (B, T, D); hard: (B, T) 0/1 with hard[:, 0] = 1 on every non-empty row; mask: (B, T) bool (valid frames
    form a prefix). Returns chunks (B, C, D), chunk_mask (B, C), chunk_ids (B, T), chunk_starts (B, C).

    C is static, known from the shapes before the data: ``max_chunks`` if given, else T (every chunk holds at least
    one frame, so T chunks never overflow). Chunks past a row's count are zeros, masked out by ``chunk_mask``. A
    data-dependent C (the batch's largest count) would cost a device->host sync every step and a new shape for
    ``torch.compile`` / CUDA graphs on every batch. If a row has more than ``max_chunks`` boundaries, its frames
    past the last chunk's start are pooled into the last chunk (``pool_chunks_reference`` does not cap).
    """
    B, T, D = x.shape
    C = max(1, T if max_chunks is None else min(max_chunks, T))
    hard = hard.long() * mask.long()
    raw = hard.cumsum(1) - 1  # (B, T) chunk index of each frame, uncapped
    ids = torch.where(mask, raw.clamp_max(C - 1), -1)
    n_chunks = hard.sum(1).clamp_max(C)  # (B,)
    # flatten (row, chunk) into one index; padding frames go to a dump slot B*C that is dropped afterwards
    flat = torch.where(
        ids >= 0, ids + C * torch.arange(B, device=x.device)[:, None], B * C
    )  # (B, T)
    sums = x.new_zeros(B * C + 1, D).index_add_(0, flat.reshape(-1), x.reshape(B * T, D))
    counts = x.new_zeros(B * C + 1).index_add_(0, flat.reshape(-1), x.new_ones(B * T))
    chunks = (sums[:-1] / counts[:-1].clamp_min(1).unsqueeze(1)).view(B, C, D)
    chunk_mask = torch.arange(C, device=x.device)[None, :] < n_chunks[:, None]
    # start frame of each chunk: scatter t at every boundary (padding boundaries are already zeroed; boundaries past
    # the cap go to the dump slot, so no slot gets two writes)
    t = torch.arange(T, device=x.device).expand(B, T)
    start_flat = torch.where(hard.bool() & (raw < C), flat, B * C).reshape(-1)
    starts = torch.zeros(B * C + 1, dtype=torch.long, device=x.device).scatter_(
        0, start_flat, t.reshape(-1)
    )
    return chunks, chunk_mask, ids, starts[:-1].view(B, C)


def pool_chunks_reference(
    x: torch.Tensor, hard: torch.Tensor, mask: torch.Tensor
) -> list[torch.Tensor]:
    """Per-row Python loop reference for ``pool_chunks`` (tests and benchmarks only): list of (C_b, D)."""
    out = []
    for b in range(x.shape[0]):
        rows, current = [], []
        for t in range(x.shape[1]):
            if not mask[b, t]:
                break
            if hard[b, t] and current:
                rows.append(torch.stack(current).mean(0))
                current = []
            current.append(x[b, t])
        if current:
            rows.append(torch.stack(current).mean(0))
        out.append(torch.stack(rows) if rows else x.new_zeros(0, x.shape[2]))
    return out


def ratio_loss(
    hard: torch.Tensor, prob: torch.Tensor, mask: torch.Tensor, target_ratio: float
) -> torch.Tensor:
    """H-Net's ratio loss over valid frames: N/(N-1) * ((N-1) F G + (1-F)(1-G)), F = rate of ``hard`` (no grad),
    G = mean ``prob``."""
    m = mask.float()
    denom = m.sum().clamp_min(1)
    f = (hard.detach() * m).sum() / denom
    g = (prob * m).sum() / denom
    n = target_ratio
    return n / (n - 1) * ((n - 1) * f * g + (1 - f) * (1 - g))


def _default_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return mask.bool()


def _chunk_prob(
    prob: torch.Tensor, chunk_starts: torch.Tensor, chunk_mask: torch.Tensor
) -> torch.Tensor:
    return prob.gather(1, chunk_starts) * chunk_mask


# ----------------------------------------------------------------------------------------------------------
# The layers


class DynamicChunkingLayer(nn.Module):
    """Content-driven chunk boundaries from the cosine dissimilarity of neighbouring frames."""

    def __init__(
        self,
        dim: int,
        tau: float = 1.0,
        routing: Routing = "cosine",
        target_ratio: float = 4.0,
        eps: float = 1e-6,
        max_chunk_rate: float = 1.0,
        train_boundaries: str = "sampled",
        select: str = "threshold",
    ):
        super().__init__()
        if select not in ("threshold", "topk"):
            raise ValueError(f"select must be 'threshold' or 'topk', got {select!r}")
        self.topk = select == "topk"
        if train_boundaries not in ("sampled", "deterministic"):
            raise ValueError(
                f"train_boundaries must be 'sampled' or 'deterministic', got {train_boundaries!r}"
            )
        self.sampled = train_boundaries == "sampled"
        if routing not in ("cosine", "paper"):
            raise ValueError(f"routing must be 'cosine' or 'paper', got {routing!r}")
        if not 0 < max_chunk_rate <= 1:
            raise ValueError(f"max_chunk_rate must be in (0, 1], got {max_chunk_rate}")
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        # start as the identity, as H-Net does: boundaries then follow raw feature changes from step 0
        with torch.no_grad():
            self.q_proj.weight.copy_(torch.eye(dim))
            self.k_proj.weight.copy_(torch.eye(dim))
        self.tau, self.routing, self.target_ratio, self.eps = tau, routing, target_ratio, eps
        # chunk slots per frame: C = ceil(T * max_chunk_rate). 1 never overflows (exact); less saves Transformer
        # work on padded chunks, and a row with more boundaries pools its tail into its last chunk (pool_chunks)
        self.max_chunk_rate = max_chunk_rate

    def logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, T, D) -> (boundary_prob (B, T-1), logits (B, T-1, 2)) for frames 1..T-1."""
        q = F.normalize(self.q_proj(x[:, 1:]), dim=-1)  # Q_t
        k = F.normalize(self.k_proj(x[:, :-1]), dim=-1)  # K_{t-1}
        cos = (q * k).sum(-1)  # (B, T-1)
        if self.routing == "paper":
            p_raw = 1.0 - cos  # in [0, 2], used literally as a logit
            logits = torch.stack([p_raw, 1.0 - p_raw], dim=-1)
            return torch.softmax(logits, dim=-1)[..., 0], logits
        prob = ((1.0 - cos) / 2).clamp(0.0, 1.0)
        logits = torch.stack([prob, 1.0 - prob], dim=-1).clamp_min(self.eps).log()
        return prob, logits

    def max_chunks(self, T: int) -> int:
        """C, the static chunk dimension for T frames (a Python int: no tensor is read)."""
        return max(1, math.ceil(T * self.max_chunk_rate))

    def top_k(self, prob_rest: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, T-1) 0/1: each row's k - 1 highest-p frames after frame 0, k = ceil(valid frames / N). Ranks come
        from a double argsort, so shapes stay static and nothing is read on the host."""
        score = prob_rest.float().clamp_min(self.eps).log()  # (B, T-1)
        if (
            self.training and self.sampled
        ):  # Gumbel-top-k: k draws without replacement, in proportion to p^(1/tau)
            u = torch.rand_like(score).clamp(self.eps, 1 - self.eps)
            score = score / self.tau - (-u.log()).log()
        valid = mask[:, 1:]
        score = score.masked_fill(~valid, float("-inf"))
        k = torch.ceil(mask.sum(1, keepdim=True) / self.target_ratio) - 1  # (B, 1) besides frame 0
        rank = score.argsort(1, descending=True).argsort(1)  # (B, T-1) 0 = highest
        return ((rank < k) & valid).to(prob_rest.dtype)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> ChunkOutput:
        mask = _default_mask(x, mask)  # (B, T)
        B, T, _ = x.shape
        prob_rest, logits = self.logits(x)  # (B, T-1), (B, T-1, 2)
        if self.topk:
            sample = self.top_k(prob_rest, mask).to(x.dtype)
        elif self.training and self.sampled:
            sample = F.gumbel_softmax(logits.float(), tau=self.tau, hard=True)[..., 0].to(
                x.dtype
            )  # ST
        else:
            sample = (prob_rest >= 0.5).to(x.dtype)
        ones = x.new_ones(B, 1)
        prob = torch.cat([ones, prob_rest], 1) * mask  # (B, T)
        boundaries = torch.cat([ones, sample], 1) * mask  # (B, T), frame 0 always a boundary
        hard = boundaries.detach() > 0.5
        deterministic = (prob >= 0.5) & mask  # the eval boundaries (frame 0 included)
        chunks, chunk_mask, ids, starts = pool_chunks(x, hard, mask, max_chunks=self.max_chunks(T))
        confidence = torch.where(
            mask, boundaries * prob + (1 - boundaries) * (1 - prob), torch.ones_like(prob)
        )
        return ChunkOutput(
            chunks=chunks,
            chunk_mask=chunk_mask,
            chunk_ids=ids,
            boundary_prob=prob,
            boundaries=boundaries,
            ratio_loss=x.new_zeros(())  # top-k: the count is fixed, nothing for the loss to steer
            if self.topk
            else ratio_loss(deterministic.to(x.dtype), prob, mask, self.target_ratio),
            chunk_starts=starts,
            chunk_prob=_chunk_prob(prob, starts, chunk_mask),
            confidence=confidence,
            frame_mask=mask,
        )


class FixedChunking(nn.Module):
    """Fixed-grid baseline with the same interface: a boundary every ``stride`` frames, no router."""

    def __init__(self, dim: int, stride: int = 4, **_unused):
        super().__init__()
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.dim, self.stride = dim, stride

    def max_chunks(self, T: int) -> int:
        """C = ceil(T / stride): exactly the number of grid chunks of a full row, so it never overflows."""
        return max(1, -(-T // self.stride))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> ChunkOutput:
        mask = _default_mask(x, mask)
        B, T, _ = x.shape
        grid = (torch.arange(T, device=x.device) % self.stride == 0).expand(B, T)
        boundaries = (grid & mask).to(x.dtype)
        chunks, chunk_mask, ids, starts = pool_chunks(
            x, boundaries.bool(), mask, max_chunks=self.max_chunks(T)
        )
        return ChunkOutput(
            chunks=chunks,
            chunk_mask=chunk_mask,
            chunk_ids=ids,
            boundary_prob=boundaries,
            boundaries=boundaries,
            ratio_loss=x.new_zeros(()),
            chunk_starts=starts,
            chunk_prob=chunk_mask.to(x.dtype),
            confidence=torch.ones_like(boundaries),
            frame_mask=mask,
        )


# ----------------------------------------------------------------------------------------------------------
# Un-chunking: chunks -> frames


class _StraightThroughOne(torch.autograd.Function):
    """Forward: ones; backward: identity. Gives the router a gradient without changing the forward pass."""

    @staticmethod
    def forward(ctx, x):
        return torch.ones_like(x)

    @staticmethod
    def backward(ctx, grad):
        return grad


def ema_over_chunks(values: torch.Tensor, rate: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """z_c = P_c v_c + (1 - P_c) z_{c-1}, vectorised: z = W v with W[c, j] = P_j prod_{j<k<=c} (1 - P_k).

    values: (B, C, D); rate P: (B, C) in [0, 1] with P_0 = 1 (so z_{-1} never matters).
    Hand-written: no library offers this scan for CPU and GPU alike; C is small (<= bottleneck frames).
    """
    C = values.shape[1]
    log_keep = (1 - rate.float()).clamp_min(eps).log()  # (B, C)
    acc = log_keep.cumsum(1)  # A_c = sum_{k<=c} log(1 - P_k)
    diff = acc[:, :, None] - acc[:, None, :]  # (B, C, C): A_c - A_j = sum_{j<k<=c} log(1 - P_k)
    causal = torch.ones(C, C, dtype=torch.bool, device=values.device).tril()
    weights = diff.masked_fill(~causal, float("-inf")).exp() * rate.float()[:, None, :]
    return torch.bmm(weights.to(values.dtype), values)


def dechunk(values: torch.Tensor, out: ChunkOutput, smoothing: bool = True) -> torch.Tensor:
    """Map chunk-level values (B, C, D) back to frames (B, T, D); zeros on padding frames.

    The caller adds the residual (frames + dechunk(...)), as the model does.
    """
    if smoothing:
        values = ema_over_chunks(values, out.chunk_prob)
    idx = out.chunk_ids.clamp_min(0).unsqueeze(-1).expand(-1, -1, values.shape[-1])  # (B, T, D)
    frames = values.gather(1, idx)
    gate = _StraightThroughOne.apply(out.confidence)  # (B, T), forward 1
    return frames * (gate * out.frame_mask).unsqueeze(-1)


def build_chunker(
    dim: int,
    kind: str = "dynamic",
    routing: Routing = "cosine",
    tau: float = 1.0,
    target_ratio: float = 4.0,
    fixed_stride: int = 4,
    max_chunk_rate: float = 1.0,
    train_boundaries: str = "sampled",
    select: str = "threshold",
) -> nn.Module:
    """``max_chunk_rate`` caps the dynamic layer's chunk slots (see ``DynamicChunkingLayer``); fixed ignores it."""
    if kind == "dynamic":
        return DynamicChunkingLayer(
            dim,
            tau=tau,
            routing=routing,
            target_ratio=target_ratio,
            max_chunk_rate=max_chunk_rate,
            train_boundaries=train_boundaries,
            select=select,
        )
    if kind == "fixed":
        return FixedChunking(dim, stride=fixed_stride)
    raise ValueError(f"chunking kind must be 'dynamic' or 'fixed', got {kind!r}")


def sinusoidal_positions(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """pos: (B, C) float positions (chunk start times in frames) -> (B, C, dim) sinusoidal embedding."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / half
    )
    angles = pos.float().unsqueeze(-1) * freqs  # (B, C, half)
    emb = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
