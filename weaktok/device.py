"""Where work runs: the torch device of generation and evaluation, and the GPUs Ray Train / Tune workers request.

* ``resolve_device(name)``: ``None``/``"auto"`` -> ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``;
  ``"cpu"``, ``"cuda"`` and ``"cuda:N"`` as given. Asking for CUDA where there is none (or for a GPU index past the
  last one) raises ``DeviceError`` (a ValueError: the CLI prints it and exits 2).
* ``gpus_setting(value, key)`` / ``resolve_gpus(setting, cluster)``: a per-worker GPU count for Ray, ``"auto"``
  (1 when the Ray cluster reports GPU resources, else 0) or a number. Pure functions of the setting and the dict
  ``ray.cluster_resources()`` returns, so they are tested without Ray.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import torch

from weaktok.config import ConfigError

DEVICE_CHOICES = "cpu, cuda or cuda:N"


class DeviceError(ValueError):
    """A device that this machine does not have (or a name that is not one); the message says which and why."""


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` -> cuda if available, else cpu; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` -> that device."""
    if isinstance(name, torch.device):
        name = str(name)
    if name is None or name.strip().lower() in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    text = name.strip().lower()
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", text)
    if not m:
        raise DeviceError(f"unknown device {name!r}: use {DEVICE_CHOICES}")
    if text == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        why = (
            "this torch build has no CUDA"
            if torch.version.cuda is None
            else "no GPU is visible"
            + (f" (CUDA_VISIBLE_DEVICES={visible!r})" if visible is not None else "")
        )
        raise DeviceError(f"device {name!r} requested but CUDA is not available: {why}; use cpu")
    if m.group(1) is None:
        return torch.device("cuda")
    index = int(m.group(1))
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s) "
            f"(cuda:0..cuda:{torch.cuda.device_count() - 1})"
        )
    return torch.device("cuda", index)


# ----------------------------------------------------------------------------------------------------------
# GPUs per Ray worker


def gpus_setting(value, key: str, whole: bool = False) -> float | str:
    """Validate a GPUs-per-worker setting: ``"auto"`` or a number in [0, 1] (``whole``: 0 or 1, as a DeepSpeed rank
    of a multi-worker run uses exactly one GPU or none). Fractions let single-process trials share a GPU.
    Raises ConfigError naming ``key``."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    allowed = "'auto', 0 or 1" if whole else "'auto' or a number from 0 to 1"
    if isinstance(value, bool):  # YAML true/false: say what is meant
        raise ConfigError(f"{key}: got {value!r}; allowed: {allowed} (GPUs per worker)")
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}: got {value!r}; allowed: {allowed} (GPUs per worker)") from None
    if not 0 <= n <= 1 or (whole and n not in (0, 1)):
        raise ConfigError(
            f"{key}: got {value!r}; allowed: {allowed} (GPUs per worker"
            f"{'; a DeepSpeed rank uses one GPU or none' if whole else ''})"
        )
    return n


def resolve_gpus(setting: float | str, cluster: Mapping[str, float]) -> float:
    """GPUs each worker requests: ``"auto"`` -> 1 if ``cluster`` (``ray.cluster_resources()``) has GPUs, else 0;
    a number -> itself."""
    if setting == "auto":
        return 1.0 if float(cluster.get("GPU", 0) or 0) > 0 else 0.0
    return float(setting)


def describe_gpus(setting: float | str, gpus: float, cluster: Mapping[str, float]) -> str:
    """One line for the log: what was asked, what each worker requests, what the cluster has, and a warning where
    that cannot work as asked."""
    have = float(cluster.get("GPU", 0) or 0)
    line = f"gpus_per_worker={setting} -> {gpus:g} GPU per worker (the Ray cluster reports {have:g} GPU)"
    if gpus > 0 and have == 0:
        line += "; WARNING: no GPU node is up, workers wait until an autoscaler adds one"
    elif gpus == 0 and have > 0 and os.environ.get("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO") != "1":
        line += (
            "; WARNING: workers without a GPU still see their node's GPUs (Ray leaves CUDA_VISIBLE_DEVICES "
            "alone) and training takes one; RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1 hides them "
            "(ray_jobs/submit.sh sets it)"
        )
    return line
