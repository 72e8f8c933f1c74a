"""The ``model:`` section of a config: the network (ModelConfig), its dynamic chunking and its flow objective.

Each section validates its own ranges in ``check`` (cross-key rules name the key they blame); types are checked
generically when the config is built (weaktok/config/load.py). Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from weaktok.config.errors import require


@dataclass
class ChunkingConfig:
    kind: Literal["dynamic", "fixed"] = "dynamic"  # fixed = fixed-grid baseline (ablations)
    routing: Literal["cosine", "paper"] = (
        "cosine"  # see weaktok/model/chunking.py for the difference
    )
    tau: float = 1.0  # Gumbel-Softmax temperature
    target_ratio: float = 4.0  # N: aim for one boundary every N frames (ratio loss)
    fixed_stride: int = 4  # stride of the fixed-grid baseline
    smoothing: bool = True  # H-Net EMA smoothing of chunk outputs when un-chunking
    # static chunk dimension C = ceil(bottleneck frames * max_chunk_rate) (no host sync, one compiled graph);
    # 1.0 never merges anything; below 1, a row with more boundaries pools its last frames into its last chunk
    max_chunk_rate: float = 1.0
    # boundaries while training: "sampled" = hard Gumbel-Softmax samples (the paper); "deterministic" = p >= 0.5, the
    # rule evaluation uses, with the router trained through the straight-through confidence (H-Net): training and
    # evaluation then form the same chunks from the same input
    train_boundaries: Literal["sampled", "deterministic"] = "sampled"
    # how many boundaries: "threshold" = every frame with p >= 0.5 (the count follows the input, steered by the ratio
    # loss); "topk" = each row's ceil(frames / target_ratio) highest-p frames: the same rate 1/N in training,
    # evaluation and generation at every noise level (the router decides where, not how many)
    select: Literal["threshold", "topk"] = "threshold"

    def check(self) -> None:
        require(self.tau > 0, "model.chunking.tau", "must be > 0")
        require(self.target_ratio > 1, "model.chunking.target_ratio", "must be > 1")
        require(self.fixed_stride >= 1, "model.chunking.fixed_stride", "must be >= 1")
        require(0 < self.max_chunk_rate <= 1, "model.chunking.max_chunk_rate", "must be in (0, 1]")


@dataclass
class FlowConfig:
    """Rectified flow (``model.objective: flow``, weaktok/model/flow.py): training masks and the sampler."""

    uncond_prob: float = (
        0.3  # share of training examples with nothing known (unconditional; also guidance's "off")
    )
    hole_min: float = (
        0.2  # the generated span of a conditional example, as a fraction of the clip: U(min, max)
    )
    hole_max: float = 0.8
    hole_at_end: float = (
        0.5  # share of conditional examples whose span ends the clip (seed-based generation's hole)
    )
    # what the network outputs: "data" = the clean x1 (velocity (x1_hat - x_t) / (1 - t), the loss still on the
    # velocity: JiT, Li & He 2025), which a coarse path can carry; "velocity" = x1 - x0 itself, whose noise part
    # x0 no bottleneck can carry (with model.skips=known it never leaves the output: measured in docs/results.md)
    predict: Literal["data", "velocity"] = "data"
    t_dist: Literal["uniform", "logit_normal"] = (
        "logit_normal"  # training times t (logit-normal: SD3, Esser 2024)
    )
    lscore_frac: float = (
        0.5  # the L-Score loss sees this share of the batch: the rows with the largest t
    )
    steps: int = 8  # ODE steps at generation
    solver: Literal["euler", "midpoint"] = "midpoint"  # midpoint: 2 model calls per step
    guidance: float = (
        1.0  # classifier-free guidance scale on the known context (1 = off, 2 calls per step)
    )

    def check(self) -> None:
        require(0 <= self.uncond_prob <= 1, "model.flow.uncond_prob", "must be in [0, 1]")
        require(
            0 < self.hole_min <= 1,
            "model.flow.hole_min",
            "must be in (0, 1] (a fraction of the clip)",
        )
        require(
            self.hole_min <= self.hole_max <= 1,
            "model.flow.hole_max",
            f"must be in [model.flow.hole_min={self.hole_min:g}, 1]",
        )
        require(0 <= self.hole_at_end <= 1, "model.flow.hole_at_end", "must be in [0, 1]")
        require(0 < self.lscore_frac <= 1, "model.flow.lscore_frac", "must be in (0, 1]")
        require(1 <= self.steps <= 1000, "model.flow.steps", "must be in [1, 1000]")
        require(self.guidance >= 0, "model.flow.guidance", "must be >= 0 (1 = off)")


@dataclass
class ModelConfig:
    channels: list[int] = field(
        default_factory=lambda: [96, 160, 224]
    )  # encoder widths, 3 strided levels
    dim: int = 256  # bottleneck width D
    n_layers: int = 4  # Transformer layers over chunks; 0 = chunking-only ablation (no Transformer)
    n_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.0
    # inpaint: an L1 denoiser / in-painter refined from prior noise (weaktok/generate/sampler.py: refine);
    # flow: rectified flow, the model predicts a velocity and generation integrates an ODE from Gaussian noise
    # (weaktok/model/flow.py)
    objective: Literal["inpaint", "flow"] = "inpaint"
    # all: every U-Net skip; known: skips carry only known (conditioning) frames, so whatever is generated reaches
    # the decoder only through the T/8 bottleneck and its chunk path (flow only: the model is told what is known)
    # local: the full-resolution skip (in_conv: 3 frames wide, so it sees each frame's own noisy value, which a
    # flow's velocity needs) everywhere, the deeper two only where known
    skips: Literal["all", "known", "local"] = "all"
    # the bottleneck's residual (frames + un-chunked chunk outputs): "all" frames, or only "known" ones, so generated
    # frames get nothing but their chunk's output: with skips=known, all generated content passes through the chunks
    residual: Literal["all", "known"] = "all"
    # positions of the chunks in the Transformer: absolute sinusoidal of the start time, added to the chunk; or
    # rotary on the start time (weaktok/model/transformer.py): attention sees time differences only, any clip length
    positions: Literal["absolute", "rotary"] = "absolute"
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)

    def check(self) -> None:
        require(
            len(self.channels) == 3,
            "model.channels",
            "must list exactly 3 widths (one per U-Net level)",
        )
        require(
            all(1 <= c <= 8192 for c in self.channels),
            "model.channels",
            "widths must be in [1, 8192]",
        )
        require(8 <= self.dim <= 8192, "model.dim", "must be in [8, 8192]")
        require(
            self.n_heads >= 1 and self.dim % self.n_heads == 0,
            "model.n_heads",
            f"must be >= 1 and divide model.dim={self.dim}",
        )
        require(0 <= self.n_layers <= 256, "model.n_layers", "must be in [0, 256]")
        require(1 <= self.ff_mult <= 64, "model.ff_mult", "must be in [1, 64]")
        require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")
        require(
            self.residual == "all" or self.objective == "flow",
            "model.residual",
            "'known' needs model.objective=flow (only a flow model is told which frames are known)",
        )
        require(
            self.skips == "all" or self.objective == "flow",
            "model.skips",
            "'known' and 'local' need model.objective=flow (only a flow model is told which frames are known)",
        )
        require(
            self.positions == "absolute" or (self.dim // self.n_heads) % 2 == 0,
            "model.positions",
            f"rotary needs an even head width (model.dim / model.n_heads = {self.dim / self.n_heads:g})",
        )
