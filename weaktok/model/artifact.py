"""The model folder: what ``weaktok export`` writes and training leaves in ``final/``. Loading it needs nothing else.

    model.safetensors         the fp32 master weights (safetensors: tensors only, never code); its header metadata
                              names the format (``FORMAT``), which is how a folder is recognised as an export
    config.yaml, config.json  the resolved config the model was trained under (the same content twice)
    prior.safetensors         generation's prior statistics (weaktok/data/prior.py)
    surrogate_<s>s.safetensors  L-Score guidance targets for outputs of <s> seconds (weaktok/generate/guidance.py)
    README.md                 the model card (weaktok/model/card.py)

Every file is written to a temporary name and renamed, the weights last: a folder whose model.safetensors
carries ``FORMAT`` is complete. ``write_folder`` refuses a folder that holds anything but an export (or a run's
final/, whose model.pt it leaves in place), so an export never overwrites a user's files.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from weaktok.config import Config, to_dict

WEIGHTS_FILE = "model.safetensors"
CONFIG_YAML, CONFIG_JSON, CARD_FILE = "config.yaml", "config.json", "README.md"
PRIOR = "prior"  # prior.safetensors
FORMAT = "weaktok-model/1"  # model.safetensors metadata "format"
# files of a training run's final/ that may sit beside an export (the torch.save weights, older caches)
LEGACY = ("model.pt", "spectrum.pt")


class ArtifactError(FileNotFoundError):
    """A folder that is not a weaktok model folder, or one an export would overwrite; the message names it."""


def surrogate_name(seconds: float) -> str:
    return f"surrogate_{seconds:g}s"


def is_model_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a complete export (model.safetensors with weaktok's format tag)."""
    path = Path(folder) / WEIGHTS_FILE
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), "pt") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except (SafetensorError, OSError, ValueError):
        return False


def check_writable(folder: str | Path) -> Path:
    """``folder`` may receive an export: absent, empty, an export already, or a run's final/. Else ArtifactError
    (nothing is written)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ArtifactError(f"{folder} is a file, not a folder: choose another --out")
    if folder.is_dir() and not is_model_folder(folder):
        foreign = sorted(
            p.name for p in folder.iterdir() if p.name not in LEGACY and not p.name.endswith(".pt")
        )
        if foreign:
            raise ArtifactError(
                f"{folder} exists and is not a weaktok model folder (it holds {', '.join(foreign[:5])}): "
                "nothing was written; choose a new or empty --out"
            )
    return folder


def _atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_tensors(path: Path, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata=meta)
        except SafetensorError as e:  # its I/O errors are not OSErrors
            raise OSError(f"{tmp}: {e}") from None
        os.chmod(tmp, 0o644)  # safetensors creates its file private; a model folder is for sharing

    _atomic(path, write)


def write_folder(
    folder: str | Path,
    state: dict[str, torch.Tensor],
    cfg: Config,
    stats: dict[str, dict[str, torch.Tensor]],
    card: str,
) -> Path:
    """Write the model folder: ``stats`` maps a file stem (``PRIOR``, ``surrogate_name(s)``) to its tensors."""
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and v.dtype != torch.float32)
    if bad:
        raise ValueError(f"weights must be fp32 (the masters); {', '.join(bad[:3])} are not")
    folder = check_writable(folder)
    folder.mkdir(parents=True, exist_ok=True)
    raw = to_dict(cfg)
    _atomic(folder / CONFIG_YAML, lambda t: t.write_text(yaml.safe_dump(raw, sort_keys=False)))
    _atomic(folder / CONFIG_JSON, lambda t: t.write_text(json.dumps(raw, indent=2)))
    for name, tensors in stats.items():
        write_tensors(folder / f"{name}.safetensors", tensors)
    _atomic(folder / CARD_FILE, lambda t: t.write_text(card))
    write_tensors(folder / WEIGHTS_FILE, state, {"format": FORMAT})  # last: its presence = complete
    return folder


def replace_folder(build, out: str | Path) -> Path:
    """``build(tmp)`` writes a model folder at a temporary sibling of ``out``, which then replaces ``out``
    (checked first with ``check_writable``): a failed export leaves ``out`` as it was."""
    out = check_writable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp, old = out.with_name(f".{out.name}.export-tmp"), out.with_name(f".{out.name}.export-old")
    for p in (tmp, old):
        shutil.rmtree(p, ignore_errors=True)
    try:
        build(tmp)
        if out.exists():
            os.replace(out, old)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


# ----------------------------------------------------------------------------------------------------------
# Reading


def read_weights(folder: str | Path, device: str | torch.device = "cpu") -> tuple[dict, dict]:
    """(state dict, config dict) of a model folder."""
    folder = Path(folder)
    if not is_model_folder(folder):
        raise ArtifactError(
            f"{folder} is not a weaktok model folder (no {WEIGHTS_FILE} with format {FORMAT}); "
            "make one with `weaktok export RUN --out DIR`"
        )
    try:
        raw = json.loads((folder / CONFIG_JSON).read_text())
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{folder / CONFIG_JSON}: unreadable ({e})") from None
    return load_file(str(folder / WEIGHTS_FILE), device=str(device)), raw


def read_stats(folder: str | Path, name: str) -> dict[str, torch.Tensor] | None:
    """The statistics ``name`` (a file stem) of a model folder, on the CPU; None when absent."""
    path = Path(folder) / f"{name}.safetensors"
    return load_file(str(path)) if path.is_file() else None
