"""The model file: ``final/model.pt`` holds the fp32 weights and the resolved config, nothing else.

One format, written by training's export (``weaktok/train/export.py``) and by nothing else, read by generation,
evaluation and ``train.init_from``. ``torch.load(weights_only=True)``: a model file can hold tensors and plain
containers only, never code. The statistics cached beside it (``spectrum.pt``, ``surrogate_<s>s.pt``) are written by
``weaktok/generate/guidance.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from weaktok.audio import SpecFrontEnd
from weaktok.config import Config, ConfigError, build, to_dict, validate
from weaktok.device import resolve_device
from weaktok.model.unet import build_model

MODEL_FILE = "model.pt"


class ModelFileError(FileNotFoundError):
    """A path that does not hold weaktok weights; the message names the file."""


def save_model(path: str | Path, state: dict[str, torch.Tensor], cfg: Config) -> Path:
    """Write ``{"model": state, "config": cfg as a dict}`` to ``path`` atomically (a temporary file, then a rename:
    a crash never leaves half a model file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"model": state, "config": to_dict(cfg)}, tmp)
    os.replace(tmp, path)
    return path


def read_model_file(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[dict, dict | None]:
    """(state dict, config dict or None) of a model file; a bare state dict (no config) is accepted too."""
    path = Path(path)
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except (
        Exception
    ) as e:  # truncated / garbage / not a zip: UnpicklingError, RuntimeError, EOFError ...
        raise ModelFileError(
            f"{path}: not a weaktok model file ({type(e).__name__}: {e})"
        ) from None
    if isinstance(blob, dict) and isinstance(blob.get("model"), dict):
        return blob["model"], blob.get("config")
    if isinstance(blob, dict) and blob and all(isinstance(v, torch.Tensor) for v in blob.values()):
        return blob, None
    raise ModelFileError(
        f"{path} holds no model weights (expected weaktok's final/model.pt or a state dict)"
    )


# ----------------------------------------------------------------------------------------------------------
# Loading a trained model


@dataclass
class Loaded:
    model: torch.nn.Module
    cfg: Config
    front: torch.nn.Module  # SpecFrontEnd
    path: Path  # the model.pt read
    device: torch.device = torch.device("cpu")  # where model and front end live


def model_path(checkpoint: str | Path) -> Path:
    """A run folder (-> run/final/model.pt), a final/ folder, or a model.pt file -> the model.pt path."""
    p = Path(checkpoint)
    for cand in (p, p / MODEL_FILE, p / "final" / MODEL_FILE):
        if cand.is_file():
            return cand
    raise ModelFileError(
        f"no trained weights at {p}: expected a model.pt file or a run folder holding "
        f"final/model.pt (train one with `weaktok train --config demo --out {p}`)"
    )


def load_model(checkpoint: str | Path, device: str | torch.device | None = None) -> Loaded:
    """The model and its front end on ``device`` (``resolve_device``: default cuda when available, else cpu)."""
    device = resolve_device(device)
    path = model_path(checkpoint)
    state, raw = read_model_file(path, device)
    if raw is None:
        raise ModelFileError(f"{path}: a bare state dict, without the config a model file carries")
    try:
        cfg = build(Config, raw, prefix="")
    except (KeyError, TypeError, ConfigError) as e:
        raise ModelFileError(
            f"{path}: not a weaktok model file ({type(e).__name__}: {e})"
        ) from None
    validate(cfg)
    front = SpecFrontEnd.for_config(cfg).to(device)
    model = build_model(cfg.model, front.n_freqs).to(device)
    model.load_state_dict(state)
    model.eval()
    return Loaded(model, cfg, front, path, device)
