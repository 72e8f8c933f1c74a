"""The DeepSpeed engine from the YAML config: precision, the DeepSpeed JSON config, AdamW with warm-up and cosine
decay, and the optional ``torch.compile`` of the model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from weaktok.config import Config, ConfigError


def use_bf16(cfg: Config) -> bool:
    return cfg.train.precision == "bf16" or (
        cfg.train.precision == "auto" and torch.cuda.is_available()
    )


def check_precision(cfg: Config) -> None:
    """bf16 needs a ZeRO optimizer (stage >= 1): those keep the fp32 master weights in checkpoints that
    ``zero_to_fp32`` consolidates. Under stage 0 DeepSpeed keeps them in a wrapper no public API reads, and the
    export would hold bf16-rounded weights. Checked before any compute (``auto`` is bf16 only on a GPU)."""
    if use_bf16(cfg) and cfg.train.zero_stage == 0:
        raise ConfigError(
            f"config key 'train.zero_stage': 0 cannot train in bf16 (train.precision="
            f"{cfg.train.precision}{' on a GPU' if cfg.train.precision == 'auto' else ''}): use "
            "train.zero_stage=1 (same memory as 0 for one rank, fp32 master weights exported) or "
            "train.precision=fp32"
        )


def deepspeed_config(cfg: Config) -> dict:
    """The DeepSpeed JSON config: an optional template (train.deepspeed_config) overridden by the YAML keys."""
    ds: dict = {}
    if cfg.train.deepspeed_config:
        ds = json.loads(Path(cfg.train.deepspeed_config).read_text())
    ds.update(
        {
            "train_micro_batch_size_per_gpu": cfg.data.batch_size,
            "gradient_accumulation_steps": cfg.train.grad_accum,
            "gradient_clipping": cfg.train.grad_clip,
            "bf16": {"enabled": use_bf16(cfg)},
            "fp16": {"enabled": False},  # fp16 is unsupported on CPU; bf16 needs no loss scaling
            "zero_allow_untested_optimizer": True,  # torch AdamW (works on CPU and GPU alike)
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }
    )
    ds.pop("train_batch_size", None)  # derived by DeepSpeed from micro batch x accumulation x world
    zero = dict(ds.get("zero_optimization", {}))
    zero["stage"] = cfg.train.zero_stage
    ds["zero_optimization"] = zero
    return ds


def lr_lambda(cfg: Config, total_steps: int):
    """Linear warm-up then cosine decay to lr * min_lr_ratio over ``total_steps`` optimizer steps."""
    warm, floor = cfg.train.warmup_steps, cfg.train.min_lr_ratio

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        progress = min(1.0, (step - warm) / max(1, total_steps - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def build_engine(cfg: Config, model: torch.nn.Module, total_steps: int):
    """(engine, optimizer, scheduler): AdamW (weight decay on matrices only) under ``lr_lambda``, wrapped by
    ``deepspeed.initialize``; with ``train.compile`` the engine compiles the model."""
    # here, not at the top: heavy, and setup_distributed must set DS_ACCELERATOR before it loads
    import deepspeed  # noqa: PLC0415

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg.train.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg.train.lr,
        betas=tuple(cfg.train.betas),
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg, total_steps))
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(cfg)
    )
    if (
        cfg.train.compile
    ):  # shapes are static (chunking.py): one graph per clip length, no recompiles per batch
        engine.compile(backend=cfg.train.compile_backend, compile_kwargs={"dynamic": False})
    return engine, optimizer, scheduler
