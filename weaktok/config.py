"""One config system: typed dataclasses, YAML files, dotted CLI overrides, validated before any compute.

    cfg = load_config("tiny", ["model.dim=128", "model.chunking.tau=0.5"])

``load_config`` accepts a path to a YAML file or the name of a shipped config (``weaktok/configs/<name>.yaml``).
A YAML file may name a parent with ``base: <name or path>``; its keys override the parent's. Every key is
checked against the dataclass schema: an unknown key, a value of the wrong type or one outside its allowed
range raises :class:`ConfigError` naming the dotted key and what is allowed. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

CONFIG_DIR = Path(__file__).parent / "configs"


class ConfigError(ValueError):
    """A user-caused config problem; the message names the dotted key."""


# ----------------------------------------------------------------------------------------------------------
# The schema. Each section validates its own ranges in ``check``; types are checked generically.


@dataclass
class AudioConfig:
    sample_rate: int = 22050
    n_fft: int = 1024  # model front end; the exact L-Score uses its own STFT (lscore/exact.py)
    hop_length: int = 256
    clip_seconds: float = 4.0  # training crop length

    def check(self) -> None:
        _require(
            4000 <= self.sample_rate <= 192_000, "audio.sample_rate", "must be in [4000, 192000] Hz"
        )
        _require(
            64 <= self.n_fft <= 16384 and self.n_fft & (self.n_fft - 1) == 0,
            "audio.n_fft",
            "must be a power of 2 in [64, 16384]",
        )
        _require(
            0 < self.hop_length <= self.n_fft, "audio.hop_length", "must be in (0, audio.n_fft]"
        )
        _require(0 < self.clip_seconds <= 600, "audio.clip_seconds", "must be in (0, 600] seconds")
        # the STFT (center=True, reflect padding) needs more than n_fft/2 samples; ask for a whole window
        _require(
            self.clip_seconds * self.sample_rate >= self.n_fft,
            "audio.clip_seconds",
            f"must hold at least audio.n_fft={self.n_fft} samples at audio.sample_rate={self.sample_rate} "
            f"(>= {self.n_fft / self.sample_rate:.4f} s)",
        )


@dataclass
class ChunkingConfig:
    kind: Literal["dynamic", "fixed"] = "dynamic"  # fixed = fixed-grid baseline (ablations)
    routing: Literal["cosine", "paper"] = "cosine"  # see chunking.py for the difference
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

    def check(self) -> None:
        _require(self.tau > 0, "model.chunking.tau", "must be > 0")
        _require(self.target_ratio > 1, "model.chunking.target_ratio", "must be > 1")
        _require(self.fixed_stride >= 1, "model.chunking.fixed_stride", "must be >= 1")
        _require(0 < self.max_chunk_rate <= 1, "model.chunking.max_chunk_rate", "must be in (0, 1]")


@dataclass
class FlowConfig:
    """Rectified flow (``model.objective: flow``, weaktok/flow.py): training masks and the sampler."""

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
    # x0 no bottleneck can carry (measured: with model.skips=known it never leaves the output)
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
        _require(0 <= self.uncond_prob <= 1, "model.flow.uncond_prob", "must be in [0, 1]")
        _require(
            0 < self.hole_min <= 1,
            "model.flow.hole_min",
            "must be in (0, 1] (a fraction of the clip)",
        )
        _require(
            self.hole_min <= self.hole_max <= 1,
            "model.flow.hole_max",
            f"must be in [model.flow.hole_min={self.hole_min:g}, 1]",
        )
        _require(0 <= self.hole_at_end <= 1, "model.flow.hole_at_end", "must be in [0, 1]")
        _require(0 < self.lscore_frac <= 1, "model.flow.lscore_frac", "must be in (0, 1]")
        _require(1 <= self.steps <= 1000, "model.flow.steps", "must be in [1, 1000]")
        _require(self.guidance >= 0, "model.flow.guidance", "must be >= 0 (1 = off)")


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
    # inpaint: an L1 denoiser / in-painter refined from prior noise (generate.refine); flow: rectified flow, the
    # model predicts a velocity and generation integrates an ODE from Gaussian noise (weaktok/flow.py)
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
    # rotary on the start time (weaktok/transformer.py): attention sees time differences only, any clip length
    positions: Literal["absolute", "rotary"] = "absolute"
    chunking: ChunkingConfig = field(default_factory=ChunkingConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)

    def check(self) -> None:
        _require(
            len(self.channels) == 3,
            "model.channels",
            "must list exactly 3 widths (one per U-Net level)",
        )
        _require(
            all(1 <= c <= 8192 for c in self.channels),
            "model.channels",
            "widths must be in [1, 8192]",
        )
        _require(8 <= self.dim <= 8192, "model.dim", "must be in [8, 8192]")
        _require(
            self.n_heads >= 1 and self.dim % self.n_heads == 0,
            "model.n_heads",
            f"must be >= 1 and divide model.dim={self.dim}",
        )
        _require(0 <= self.n_layers <= 256, "model.n_layers", "must be in [0, 256]")
        _require(1 <= self.ff_mult <= 64, "model.ff_mult", "must be in [1, 64]")
        _require(0 <= self.dropout < 1, "model.dropout", "must be in [0, 1)")
        _require(
            self.residual == "all" or self.objective == "flow",
            "model.residual",
            "'known' needs model.objective=flow (only a flow model is told which frames are known)",
        )
        _require(
            self.skips == "all" or self.objective == "flow",
            "model.skips",
            "'known' and 'local' need model.objective=flow (only a flow model is told which frames are known)",
        )
        _require(
            self.positions == "absolute" or (self.dim // self.n_heads) % 2 == 0,
            "model.positions",
            f"rotary needs an even head width (model.dim / model.n_heads = {self.dim / self.n_heads:g})",
        )


@dataclass
class DataConfig:
    shards: str = "shards/demo"  # folder with manifest.json (weaktok shards --out ...)
    batch_size: int = 8  # micro-batch per rank
    num_workers: int = 2  # DataLoader workers per rank (decoding happens there)
    shuffle_buffer: int = 256
    samples_per_epoch: int = 256  # per rank: an epoch is a fixed number of samples on every rank
    val_batch_size: int = 8
    val_max_items: int = 0  # 0 = the whole val split
    verify_shards: bool = False  # sha256 every shard against the manifest before reading
    log_keys: bool = (
        False  # audit: each rank appends the keys it trains on to <out>/samples/rank<r>.txt
    )

    def check(self) -> None:
        _require(bool(self.shards), "data.shards", "must name a shard folder")
        _require(
            not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", self.shards),
            "data.shards",
            f"must be a local folder, not a URL or pipe: command ({self.shards!r}; a local folder: ./name)",
        )
        for key in ("batch_size", "val_batch_size"):
            _require(1 <= getattr(self, key) <= 65536, f"data.{key}", "must be in [1, 65536]")
        _require(self.samples_per_epoch >= 1, "data.samples_per_epoch", "must be >= 1")
        _require(0 <= self.num_workers <= 256, "data.num_workers", "must be in [0, 256]")
        _require(
            1 <= self.shuffle_buffer <= 1_000_000, "data.shuffle_buffer", "must be in [1, 1000000]"
        )
        _require(self.val_max_items >= 0, "data.val_max_items", "must be >= 0 (0 = all)")


@dataclass
class CorruptionConfig:
    """Input corruption during training (makes seed-based in-painting and generation from noise meaningful)."""

    noise_std: float = 0.1  # gaussian noise on the log1p spectrogram
    mask_prob: float = 0.3  # probability that a training example gets a masked time span
    mask_max_fraction: float = (
        0.25  # longest masked span, as a fraction of the clip (1: the whole clip)
    )
    fill: str = "zeros"  # masked span: "zeros", or "prior" = (1 - s) x + s z with z generation's prior noise
    #                      (weaktok/prior.py) and a per-example level s ~ U(0, 1): what generation feeds the model

    def check(self) -> None:
        _require(self.noise_std >= 0, "train.corruption.noise_std", "must be >= 0")
        _require(0 <= self.mask_prob <= 1, "train.corruption.mask_prob", "must be in [0, 1]")
        _require(
            0 <= self.mask_max_fraction <= 1,
            "train.corruption.mask_max_fraction",
            "must be in [0, 1]",
        )
        _require(
            self.fill in ("zeros", "prior"), "train.corruption.fill", "must be 'zeros' or 'prior'"
        )


@dataclass
class TrainConfig:
    epochs: int = 50
    lr: float = 3e-4
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100  # linear LR warm-up (optimizer steps)
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    zero_stage: int = 2
    compile: bool = False  # torch.compile the model through DeepSpeed's engine.compile (one static graph per shape)
    compile_backend: str = (
        "inductor"  # torch.compile backend: inductor (fused kernels), aot_eager (checks, CPU tests)
    )
    deepspeed_config: str | None = (
        None  # JSON template (cluster/deepspeed/zero*.json); YAML keys win
    )
    log_every: int = 10  # steps between metrics.jsonl lines
    checkpoint_every: int = 0  # steps; 0 = only at epoch end
    keep_checkpoints: int = 3
    resume: str = (
        "auto"  # auto: newest complete checkpoint in <out>/checkpoints; never; or a checkpoint path
    )
    init_from: str | None = (
        None  # a new run (step 0, fresh optimizer) from these weights, when there is nothing
    )
    #                               to resume: a checkpoint folder, a run's checkpoints/ folder or a final/model.pt
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)
    dist_timeout_s: float = (
        600.0  # bound on any collective: a rank whose peer died or hangs fails after this long
    )
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)

    def check(self) -> None:
        _require(self.epochs >= 1, "train.epochs", "must be >= 1")
        _require(0 < self.lr <= 10, "train.lr", "must be in (0, 10]")
        _require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas",
            "must be two numbers in [0, 1)",
        )
        _require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)")
        _require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        _require(self.zero_stage in (0, 1, 2, 3), "train.zero_stage", "must be 0, 1, 2 or 3")
        _require(
            not (self.precision == "bf16" and self.zero_stage == 0),
            "train.zero_stage",
            "0 cannot train in bf16 (train.precision=bf16): use 1 or more (fp32 master weights exported) or "
            "train.precision=fp32",
        )  # precision 'auto' on a GPU: checked in train.check_precision
        _require(self.log_every >= 1, "train.log_every", "must be >= 1")
        _require(
            self.compile_backend in ("inductor", "aot_eager", "eager", "cudagraphs"),
            "train.compile_backend",
            "must be inductor, aot_eager, eager or cudagraphs",
        )
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        _require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        _require(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        _require(self.dist_timeout_s > 0, "train.dist_timeout_s", "must be > 0 (seconds)")
        _require(bool(self.resume), "train.resume", "must be auto, never or a checkpoint path")
        _require(
            self.init_from is None or bool(self.init_from.strip()),
            "train.init_from",
            "must name a checkpoint folder or a weights file (or be null)",
        )
        if self.deepspeed_config is not None:
            _require(
                Path(self.deepspeed_config).is_file(),
                "train.deepspeed_config",
                f"file not found: {self.deepspeed_config}",
            )


@dataclass
class LScoreConfig:
    mode: Literal["paper", "surrogate"] = (
        "surrogate"  # paper: only the timbral term carries gradient
    )
    lambda_mu: float = 1.0
    lambda_sigma: float = 0.5
    standardise: bool = (
        True  # divide each term's error by the target sigma (terms have different scales)
    )
    pool_every: int = 50  # steps between async exact L-Score checks of generated outputs (0 = off)
    pool_items: int = 2  # outputs sent to the pool each time
    pool_actors: int = 0  # 0 = one per free CPU
    val_items: int = (
        16  # validation: generated outputs per mode (unconditional, seed-based) scored exactly
    )
    #                      (weaktok/train/validation.py; 0 = off, sweeps then optimise val_recon only)
    griffin_lim_iters: int = 32
    # what the L-Score loss matches: "manifest" = the exact L-Score of whole training items (shards' manifest);
    # "surrogate" = the differentiable L-Score of real training crops of audio.clip_seconds, computed at start
    # (train/lscore_glue.loss_target): the same function on the same length as the outputs, so its biases cancel
    loss_target: Literal["manifest", "surrogate"] = "manifest"
    target_items: int = 128  # training crops behind the surrogate target
    # closed loop (loss_target: surrogate): after each validation, the exact L-Score of its generations (the Ray
    # pool) moves the surrogate target by -feedback * (exact - target) / target std, in surrogate std units, so the
    # surrogate's bias on the model's own outputs is corrected where the exact score sees it; 0 = off
    feedback: float = 0.0

    def check(self) -> None:
        _require(
            self.target_items >= 2, "lscore.target_items", "must be >= 2 (a std needs two items)"
        )
        _require(0 <= self.feedback <= 1, "lscore.feedback", "must be in [0, 1] (0 = off)")
        _require(
            not self.feedback or self.loss_target == "surrogate",
            "lscore.feedback",
            "corrects the surrogate target: needs lscore.loss_target=surrogate",
        )
        _require(self.lambda_mu >= 0, "lscore.lambda_mu", "must be >= 0")
        _require(self.lambda_sigma >= 0, "lscore.lambda_sigma", "must be >= 0")
        for key in ("pool_every", "pool_items", "pool_actors", "val_items"):
            _require(getattr(self, key) >= 0, f"lscore.{key}", "must be >= 0")
        _require(self.griffin_lim_iters >= 1, "lscore.griffin_lim_iters", "must be >= 1")


@dataclass
class CurriculumConfig:
    """The paper's two phases: reconstruction only, then anneal the L-Score weight in."""

    warmup_epochs: float = 10  # phase 1: w_L = 0, w_recon = 1
    anneal_epochs: float = 40  # phase 2: w_L 0 -> final_w_L linearly, w_recon 1 -> final_w_recon
    final_w_L: float = 1.0
    final_w_recon: float = 0.1
    ratio_weight: float = 0.03  # weight of the chunking ratio loss (all phases)

    def check(self) -> None:
        _require(self.warmup_epochs >= 0, "curriculum.warmup_epochs", "must be >= 0")
        _require(self.anneal_epochs >= 0, "curriculum.anneal_epochs", "must be >= 0")
        _require(self.final_w_L >= 0, "curriculum.final_w_L", "must be >= 0")
        _require(self.final_w_recon >= 0, "curriculum.final_w_recon", "must be >= 0")
        _require(self.ratio_weight >= 0, "curriculum.ratio_weight", "must be >= 0")


@dataclass
class MetricsConfig:
    """Prometheus exporter (weaktok/metrics.py). Rank 0 serves by default; per_rank: every rank on port + local_rank."""

    enabled: bool = True
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 to let a Prometheus on another machine scrape
    port: int = 9400  # 0 = any free port (the URL is printed and written to <out>/metrics_url.txt)
    per_rank: bool = (
        False  # serve every rank's registry (each on port + local_rank) instead of rank 0 only
    )
    port_fallback: bool = False  # port in use: try the next ports instead of failing
    run_name: str = ""  # the `run` label; "" = the name of the --out folder

    def check(self) -> None:
        _require(
            bool(self.host),
            "metrics.host",
            "must be an address to bind (127.0.0.1, 0.0.0.0, a host name)",
        )
        _require(
            0 <= self.port <= 65535, "metrics.port", "must be in [0, 65535] (0 = any free port)"
        )


@dataclass
class Config:
    name: str = "default"
    seed: int = 0
    audio: AudioConfig = field(default_factory=AudioConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    lscore: LScoreConfig = field(default_factory=LScoreConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)

    def check(self) -> None:
        _require(
            0 <= self.seed < 2**31,
            "seed",
            "must be in [0, 2^31) (numpy seeds are 32-bit; ranks add to it)",
        )


# ----------------------------------------------------------------------------------------------------------
# Loading, overriding, building, validating.


def _require(ok: bool, key: str, what: str) -> None:
    if not ok:
        raise ConfigError(f"config key '{key}': {what}")


def load_config(source: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a shipped config by name or a YAML path, apply ``key=value`` overrides, validate, return it."""
    raw = _read_yaml_chain(source) if source is not None else {}
    for item in overrides or []:
        key, value = parse_override(item)
        _set_dotted(raw, key, value)
    cfg = build(Config, raw, prefix="")
    validate(cfg)
    check_init_from(cfg.train.init_from)
    return cfg


INIT_FROM_FORMS = (
    "a checkpoint folder holding COMPLETE (runs/x/checkpoints/step00000100), a run's checkpoints/ "
    "folder (its newest complete checkpoint) or exported weights (runs/x/final/model.pt)"
)


def check_init_from(path: str | None) -> None:
    """``train.init_from`` must name one of ``INIT_FROM_FORMS``. Checked when a config is loaded to run, not in
    ``TrainConfig.check``: generation rebuilds the config stored with the weights, whose source may be gone."""
    if path is None:
        return
    p = Path(path)
    ok = (
        p.is_file()
        or (p / "COMPLETE").is_file()
        or (
            p.is_dir()
            and any((d / "COMPLETE").is_file() and ".corrupt" not in d.name for d in p.iterdir())
        )
    )
    _require(
        ok,
        "train.init_from",
        f"{path} is not {INIT_FROM_FORMS}"
        if p.exists()
        else f"{path} does not exist; give {INIT_FROM_FORMS}",
    )


def parse_override(item: str) -> tuple[str, Any]:
    """``"model.dim=128"`` -> ("model.dim", 128); the value is parsed as YAML (numbers, lists, bools)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. model.dim=128)")
    key, text = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from None
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string; people mean the number
        try:
            value = (
                float(value)
                if value.strip().lower() not in ("nan", "inf", "-inf", "infinity")
                else value
            )
        except ValueError:
            pass
    return key, value


def resolve_config_path(source: str | Path) -> Path:
    path = Path(source)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise ConfigError(f"config file not found: {path}")
        return path
    shipped = CONFIG_DIR / f"{source}.yaml"
    if not shipped.exists():
        names = ", ".join(shipped_configs())
        raise ConfigError(
            f"no config file '{source}' and no shipped config of that name (shipped: {names})"
        )
    return shipped


def shipped_configs() -> list[str]:
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _read_yaml_chain(source: str | Path, seen: tuple[Path, ...] = ()) -> dict:
    path = resolve_config_path(source).resolve()
    if path in seen:
        raise ConfigError(f"config 'base' chain loops at {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of config keys")
    base = data.pop("base", None)
    if base is None:
        return data
    parent_source = base if not str(base).endswith((".yaml", ".yml")) else path.parent / base
    parent = _read_yaml_chain(parent_source, seen + (path,))
    return _deep_merge(parent, data)


def _deep_merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{key}': '{part}' is a value, not a section")
    node[parts[-1]] = value


def build(cls: type, raw: Any, prefix: str) -> Any:
    """Build dataclass ``cls`` from a dict, checking keys and types; ``prefix`` is the dotted path so far."""
    where = prefix.rstrip(".") or "<top level>"
    if not isinstance(raw, dict):
        raise ConfigError(f"config key '{where}': expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        if key not in fields:
            allowed = ", ".join(fields)
            close = difflib.get_close_matches(str(key), fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{prefix}{key}'{hint}; allowed here: {allowed}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, key + ".")
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(
                f"config key '{key}': {value!r} is not one of {', '.join(map(str, choices))}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        return [_coerce(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}': expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}': expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}': expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an int beyond float range
            value = math.inf
        if not math.isfinite(value):
            raise ConfigError(f"config key '{key}': must be a finite number, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}': expected a string, got {value!r}")
        return value
    if tp is Any:
        return value
    raise TypeError(
        f"config schema type {tp} of '{key}' is not supported"
    )  # a bug in the schema, not user input


def validate(cfg: Any) -> None:
    """Run every section's ``check`` (depth first) so range errors surface before any compute."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value)
    if hasattr(cfg, "check"):
        cfg.check()


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
