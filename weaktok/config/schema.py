"""The root :class:`Config` and every section outside ``model:`` (weaktok/config/model.py): audio front end, data,
training (with input corruption), the L-Score loss and pool, the curriculum, the Prometheus exporter, the experiment
trackers (``tracking:``) and Ray's storage and checkpoint retention (``ray:``).

Each section validates its own ranges in ``check``; types are checked generically when the config is built
(weaktok/config/load.py). Nothing here imports torch.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from weaktok.config.errors import require
from weaktok.config.model import ModelConfig


@dataclass
class AudioConfig:
    sample_rate: int = 22050
    n_fft: int = 1024  # model front end; the exact L-Score uses its own STFT (lscore/exact.py)
    hop_length: int = 256
    clip_seconds: float = 4.0  # training crop length

    def check(self) -> None:
        require(
            4000 <= self.sample_rate <= 192_000, "audio.sample_rate", "must be in [4000, 192000] Hz"
        )
        require(
            64 <= self.n_fft <= 16384 and self.n_fft & (self.n_fft - 1) == 0,
            "audio.n_fft",
            "must be a power of 2 in [64, 16384]",
        )
        require(
            0 < self.hop_length <= self.n_fft, "audio.hop_length", "must be in (0, audio.n_fft]"
        )
        require(0 < self.clip_seconds <= 600, "audio.clip_seconds", "must be in (0, 600] seconds")
        # the STFT (center=True, reflect padding) needs more than n_fft/2 samples; ask for a whole window
        require(
            self.clip_seconds * self.sample_rate >= self.n_fft,
            "audio.clip_seconds",
            f"must hold at least audio.n_fft={self.n_fft} samples at audio.sample_rate={self.sample_rate} "
            f"(>= {self.n_fft / self.sample_rate:.4f} s)",
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
        require(bool(self.shards), "data.shards", "must name a shard folder")
        require(
            not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", self.shards),
            "data.shards",
            f"must be a local folder, not a URL or pipe: command ({self.shards!r}; a local folder: ./name)",
        )
        for key in ("batch_size", "val_batch_size"):
            require(1 <= getattr(self, key) <= 65536, f"data.{key}", "must be in [1, 65536]")
        require(self.samples_per_epoch >= 1, "data.samples_per_epoch", "must be >= 1")
        require(0 <= self.num_workers <= 256, "data.num_workers", "must be in [0, 256]")
        require(
            1 <= self.shuffle_buffer <= 1_000_000, "data.shuffle_buffer", "must be in [1, 1000000]"
        )
        require(self.val_max_items >= 0, "data.val_max_items", "must be >= 0 (0 = all)")


@dataclass
class CorruptionConfig:
    """Input corruption during training (makes seed-based in-painting and generation from noise meaningful)."""

    noise_std: float = 0.1  # gaussian noise on the log1p spectrogram
    mask_prob: float = 0.3  # probability that a training example gets a masked time span
    mask_max_fraction: float = (
        0.25  # longest masked span, as a fraction of the clip (1: the whole clip)
    )
    fill: str = "zeros"  # masked span: "zeros", or "prior" = (1 - s) x + s z with z generation's prior noise
    #                      (weaktok/data/prior.py) and a per-example level s ~ U(0, 1): what generation feeds the model

    def check(self) -> None:
        require(self.noise_std >= 0, "train.corruption.noise_std", "must be >= 0")
        require(0 <= self.mask_prob <= 1, "train.corruption.mask_prob", "must be in [0, 1]")
        require(
            0 <= self.mask_max_fraction <= 1,
            "train.corruption.mask_max_fraction",
            "must be in [0, 1]",
        )
        require(
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
        require(self.epochs >= 1, "train.epochs", "must be >= 1")
        require(0 < self.lr <= 10, "train.lr", "must be in (0, 10]")
        require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "must be in [0, 1]")
        require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "train.betas",
            "must be two numbers in [0, 1)",
        )
        require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 = off)")
        require(self.grad_accum >= 1, "train.grad_accum", "must be >= 1")
        require(self.zero_stage in (0, 1, 2, 3), "train.zero_stage", "must be 0, 1, 2 or 3")
        require(
            not (self.precision == "bf16" and self.zero_stage == 0),
            "train.zero_stage",
            "0 cannot train in bf16 (train.precision=bf16): use 1 or more (fp32 master weights exported) or "
            "train.precision=fp32",
        )  # precision 'auto' on a GPU: checked in train.check_precision
        require(self.log_every >= 1, "train.log_every", "must be >= 1")
        require(
            self.compile_backend in ("inductor", "aot_eager", "eager", "cudagraphs"),
            "train.compile_backend",
            "must be inductor, aot_eager, eager or cudagraphs",
        )
        require(self.checkpoint_every >= 0, "train.checkpoint_every", "must be >= 0")
        require(self.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
        require(self.max_steps >= 0, "train.max_steps", "must be >= 0")
        require(self.dist_timeout_s > 0, "train.dist_timeout_s", "must be > 0 (seconds)")
        require(bool(self.resume), "train.resume", "must be auto, never or a checkpoint path")
        require(
            self.init_from is None or bool(self.init_from.strip()),
            "train.init_from",
            "must name a checkpoint folder or a weights file (or be null)",
        )
        if self.deepspeed_config is not None:
            require(
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
    # the correction stays within +-feedback_clamp surrogate stds per term, and is not updated while w_L = 0
    feedback_clamp: float = 1.0

    def check(self) -> None:
        require(
            self.target_items >= 2, "lscore.target_items", "must be >= 2 (a std needs two items)"
        )
        require(0 <= self.feedback <= 1, "lscore.feedback", "must be in [0, 1] (0 = off)")
        require(self.feedback_clamp > 0, "lscore.feedback_clamp", "must be > 0")
        require(
            not self.feedback or self.loss_target == "surrogate",
            "lscore.feedback",
            "corrects the surrogate target: needs lscore.loss_target=surrogate",
        )
        require(self.lambda_mu >= 0, "lscore.lambda_mu", "must be >= 0")
        require(self.lambda_sigma >= 0, "lscore.lambda_sigma", "must be >= 0")
        for key in ("pool_every", "pool_items", "pool_actors", "val_items"):
            require(getattr(self, key) >= 0, f"lscore.{key}", "must be >= 0")
        require(self.griffin_lim_iters >= 1, "lscore.griffin_lim_iters", "must be >= 1")


@dataclass
class CurriculumConfig:
    """The paper's two phases: reconstruction only, then anneal the L-Score weight in."""

    warmup_epochs: float = 10  # phase 1: w_L = 0, w_recon = 1
    anneal_epochs: float = 40  # phase 2: w_L 0 -> final_w_L linearly, w_recon 1 -> final_w_recon
    final_w_L: float = 1.0
    final_w_recon: float = 0.1
    ratio_weight: float = 0.03  # weight of the chunking ratio loss (all phases)

    def check(self) -> None:
        require(self.warmup_epochs >= 0, "curriculum.warmup_epochs", "must be >= 0")
        require(self.anneal_epochs >= 0, "curriculum.anneal_epochs", "must be >= 0")
        require(self.final_w_L >= 0, "curriculum.final_w_L", "must be >= 0")
        require(self.final_w_recon >= 0, "curriculum.final_w_recon", "must be >= 0")
        require(self.ratio_weight >= 0, "curriculum.ratio_weight", "must be >= 0")


@dataclass
class MetricsConfig:
    """Prometheus exporter (weaktok/train/prometheus/). Rank 0 serves by default; per_rank: every rank on
    port + local_rank."""

    enabled: bool = True
    host: str = "127.0.0.1"  # bind address; 0.0.0.0 to let a Prometheus on another machine scrape
    port: int = 9400  # 0 = any free port (the URL is printed and written to <out>/metrics_url.txt)
    per_rank: bool = (
        False  # serve every rank's registry (each on port + local_rank) instead of rank 0 only
    )
    port_fallback: bool = False  # port in use: try the next ports instead of failing
    run_name: str = ""  # the `run` label; "" = the name of the --out folder
    # the device's peak TFLOP/s for weaktok_mfu_ratio; 0 = a known GPU's dense bf16 peak (weaktok/train/flops.py),
    # none on a CPU. Set it for another GPU, or to see MFU on a CPU
    peak_tflops: float = 0.0

    def check(self) -> None:
        require(self.peak_tflops >= 0, "metrics.peak_tflops", "must be >= 0 (0 = look the GPU up)")
        require(
            bool(self.host),
            "metrics.host",
            "must be an address to bind (127.0.0.1, 0.0.0.0, a host name)",
        )
        require(
            0 <= self.port <= 65535, "metrics.port", "must be in [0, 65535] (0 = any free port)"
        )


@dataclass
class TrackingConfig:
    """Experiment trackers, fed by rank 0 from the training hooks (weaktok/train/tracking.py): scalars, the resolved
    config as hyper-parameters, and at each validation a few generated clips with their spectrograms."""

    tensorboard: bool = True  # event files in ``dir``: local, no account (docs/tracking.md)
    dir: str | None = None  # TensorBoard's folder for this run; null = <out>/tensorboard
    wandb: bool = False  # Weights & Biases: pip install 'weaktok[wandb]'
    mlflow: bool = False  # MLflow: pip install 'weaktok[mlflow]'
    mlflow_tracking_uri: str | None = None  # null: $MLFLOW_TRACKING_URI, else MLflow's default
    project: str = "weaktok"  # the W&B project and the MLflow experiment
    run_name: str = ""  # the run's name in W&B and MLflow; "" = the --out folder's name
    audio_clips: int = 2  # generated clips per mode (uncond, seed) per validation; 0 = none

    def check(self) -> None:
        require(
            self.dir is None or bool(self.dir.strip()),
            "tracking.dir",
            "must name a folder (or be null: <out>/tensorboard)",
        )
        require(bool(self.project.strip()), "tracking.project", "must name a project")
        require(0 <= self.audio_clips <= 64, "tracking.audio_clips", "must be in [0, 64]")


@dataclass
class RayConfig:
    """Ray Train and Tune runs (weaktok/launch/ray_train.py, weaktok/launch/sweep.py): where Ray persists
    checkpoints and which it keeps (``ray.train.CheckpointConfig``). Changes no parameter shape."""

    # a local folder (resolved to an absolute path) or a URI kept as written (s3://bucket/runs, gs://..., any
    # scheme://); null: <out>/ray for Ray Train, the sweep's --out for Tune
    storage_path: str | None = None
    num_to_keep: int = 0  # checkpoints Ray keeps per run/trial; 0 = every one (each epoch's)
    # the reported metric that ranks checkpoints for num_to_keep (val_recon; objective in a sweep); null = newest
    checkpoint_score_attribute: str | None = None
    checkpoint_score_order: Literal["min", "max"] = "min"  # min: lower is better

    def check(self) -> None:
        require(
            self.storage_path is None or bool(self.storage_path.strip()),
            "ray.storage_path",
            "must name a folder or a URI such as s3://bucket/runs (or be null)",
        )
        require(
            0 <= self.num_to_keep <= 1_000_000,
            "ray.num_to_keep",
            "must be in [0, 1000000] (0 = keep every checkpoint)",
        )
        require(
            self.checkpoint_score_attribute is None
            or bool(self.checkpoint_score_attribute.strip()),
            "ray.checkpoint_score_attribute",
            "must name a reported metric such as val_recon or objective (or be null: the newest)",
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
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    ray: RayConfig = field(default_factory=RayConfig)

    def check(self) -> None:
        require(
            0 <= self.seed < 2**31,
            "seed",
            "must be in [0, 2^31) (numpy seeds are 32-bit; ranks add to it)",
        )
