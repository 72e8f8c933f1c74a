"""Loading a trained model: a model folder (weaktok/model/artifact.py, what ``weaktok export`` writes and training
leaves in final/) or a run's ``final/model.pt``.

``final/model.pt`` holds the fp32 weights and the resolved config, nothing else: written by training's export
(``weaktok/train/export.py``), read by ``train.init_from`` and by runs that predate model folders.
``torch.load(weights_only=True)``: a model file can hold tensors and plain containers only, never code. A folder
with both loads from model.safetensors (the same weights). The statistics beside the weights (prior,
surrogate targets) are read and cached by ``weaktok/generate/guidance.py``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from weaktok.audio import SpecFrontEnd
from weaktok.config import Config, ConfigError, build, to_dict, validate
from weaktok.device import resolve_device
from weaktok.model.artifact import WEIGHTS_FILE, is_model_folder, read_weights
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
    path: Path  # the weights file read (model.safetensors or model.pt); its folder holds the statistics
    device: torch.device = torch.device("cpu")  # where model and front end live


def model_path(checkpoint: str | Path) -> Path:
    """A model folder, a run folder (its final/), or a model.pt / model.safetensors file -> the weights file: a
    folder's model.safetensors when it is a model folder, else its model.pt."""
    p = Path(checkpoint)
    if p.is_file():
        return p
    for folder in (p, p / "final"):
        if is_model_folder(folder):
            return folder / WEIGHTS_FILE
        if (folder / MODEL_FILE).is_file():
            return folder / MODEL_FILE
    what = "is not a weaktok model folder" if p.is_dir() else "does not exist"
    raise ModelFileError(
        f"no trained weights at {p} ({what}): expected a model folder (`weaktok export RUN --out DIR`), a run "
        f"folder holding final/, or a model.pt file (train one with `weaktok train --config demo --out {p}`)"
    )


def load_model(checkpoint: str | Path, device: str | torch.device | None = None) -> Loaded:
    """The model and its front end on ``device`` (``resolve_device``: default cuda when available, else cpu)."""
    device = resolve_device(device)
    path = model_path(checkpoint)
    if path.suffix == ".safetensors":
        state, raw = read_weights(path.parent, device)
    else:
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
