"""A sweep's search space: the YAML file (``cluster/sweeps/default.yaml``) -> :class:`SweepSpec`, checked against
the config schema before anything runs, and the Ray resources one trial asks for (``trial_resources``, no Ray).

    space:                                 # dotted config key -> distribution
      model.chunking.tau: {type: loguniform, low: 0.25, high: 2.0}
      lscore.mode: {type: choice, values: [paper, surrogate]}
    num_samples: 8                         # trials (grid values multiply them)
    max_concurrent: 0                      # 0 = as many as fit
    objective: {lscore_weight: 0.1}        # objective = val_recon + lscore_weight * L-Score distance
    asha: {grace_period: 1, reduction_factor: 2}
    resources: {workers: 1, cpus_per_worker: 1, pool_actors: 1, gpus_per_worker: auto}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weaktok.config import Config, ConfigError, with_values
from weaktok.device import gpus_setting, resolve_gpus

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")
RESOURCE_KEYS = ("workers", "cpus_per_worker", "pool_actors", "gpus_per_worker")


@dataclass
class SweepSpec:
    space: dict[str, dict]
    num_samples: int = 8
    max_concurrent: int = 0
    lscore_weight: float = 0.1
    grace_period: int = 1
    reduction_factor: int = 2
    workers: int = 1
    cpus_per_worker: float = 1.0
    pool_actors: int = 1
    # "auto": 1 if the Ray cluster has GPUs, else 0 (weaktok.device)
    gpus_per_worker: float | str = "auto"
    extra: dict = field(default_factory=dict)


def load_space(path: str | Path, num_samples: int | None = None) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from None
    known = {"space", "num_samples", "max_concurrent", "objective", "asha", "resources"}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(
            f"{path}: unknown sweep key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(known))}"
        )
    space = raw.get("space") or {}
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{path}: 'space' must map config keys to distributions")
    for key, dist in space.items():
        _check_distribution(path, key, dist)
    res, asha, obj = raw.get("resources") or {}, raw.get("asha") or {}, raw.get("objective") or {}
    unknown = set(res) - set(RESOURCE_KEYS) if isinstance(res, dict) else {"(not a mapping)"}
    if unknown:
        raise ConfigError(
            f"{path}: unknown resources key(s) {', '.join(sorted(unknown))}; allowed: "
            f"{', '.join(RESOURCE_KEYS)}"
        )
    spec = SweepSpec(
        space=space,
        num_samples=int(num_samples or raw.get("num_samples", 8)),
        max_concurrent=int(raw.get("max_concurrent", 0)),
        lscore_weight=float(obj.get("lscore_weight", 0.1)),
        grace_period=int(asha.get("grace_period", 1)),
        reduction_factor=int(asha.get("reduction_factor", 2)),
        workers=int(res.get("workers", 1)),
        cpus_per_worker=float(res.get("cpus_per_worker", 1)),
        pool_actors=int(res.get("pool_actors", 1)),
    )
    if (
        spec.num_samples < 1
        or spec.workers < 1
        or spec.grace_period < 1
        or spec.reduction_factor < 2
    ):
        raise ConfigError(
            f"{path}: need num_samples >= 1, resources.workers >= 1, asha.grace_period >= 1, "
            "asha.reduction_factor >= 2"
        )
    spec.gpus_per_worker = gpus_setting(
        res.get("gpus_per_worker", "auto"),
        f"{path}: resources.gpus_per_worker",
        whole=spec.workers > 1,
    )
    return spec


def _check_distribution(path: Path, key: str, dist: Any) -> None:
    where = f"{path}: space.{key}"
    if not isinstance(dist, dict) or dist.get("type") not in DISTRIBUTIONS:
        raise ConfigError(f"{where}: needs 'type' in {', '.join(DISTRIBUTIONS)}")
    if dist["type"] in ("choice", "grid"):
        if not isinstance(dist.get("values"), list) or not dist["values"]:
            raise ConfigError(f"{where}: '{dist['type']}' needs a non-empty list 'values'")
        return
    if "low" not in dist or "high" not in dist or not dist["low"] < dist["high"]:
        raise ConfigError(f"{where}: '{dist['type']}' needs numbers low < high")
    if dist["type"] == "loguniform" and dist["low"] <= 0:
        raise ConfigError(f"{where}: loguniform needs low > 0")


def _corner_values(dist: dict) -> list:
    if dist["type"] in ("choice", "grid"):
        return list(dist["values"])
    if dist["type"] == "randint":
        return [dist["low"], dist["high"] - 1]
    return [dist["low"], dist["high"]]


def check_against_config(base: Config, spec: SweepSpec) -> None:
    """Every swept key and every corner of its range must make a valid config from the resolved ``base``, the
    way a trial makes its own (``with_values``); errors name the key."""
    for key, dist in spec.space.items():
        for value in _corner_values(dist):
            try:
                with_values(base, {key: value})
            except ConfigError as e:
                raise ConfigError(f"sweep space '{key}' value {value!r}: {e}") from None


def trial_resources(spec: SweepSpec, cluster: dict[str, float]) -> tuple[list[dict], float]:
    """(placement-group bundles of one trial, GPUs per training worker) on a cluster with these resources
    (``ray.cluster_resources()``). Single-process trials: the first bundle is the training process,
    ``{"CPU": cpus_per_worker, "GPU": g}`` (GPU left out when 0); multi-worker trials: it is the Ray Train driver
    (half a CPU), the workers are placed by Ray Train (``weaktok.launch.ray_train.worker_resources``). Then one
    CPU per L-Score actor."""
    gpus = resolve_gpus(spec.gpus_per_worker, cluster)
    if spec.workers == 1:
        first = {"CPU": spec.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})}
    else:
        first = {"CPU": 0.5}
    return [first] + [{"CPU": 1.0}] * spec.pool_actors, gpus
