"""Ray Tune sweeps over any config key (tau, lambda_mu/lambda_sigma, the curriculum, lscore.mode, ...).

    weaktok sweep --config demo --space cluster/sweeps/default.yaml --out runs/sweep [--num-samples N] [--resume]

Each trial is a real training run of the same loop: one process (``resources.workers: 1``) or a Ray Train
``TorchTrainer`` with DeepSpeed workers, nested in Tune through a driver function and ``TuneReportCallback``.
Trials report once per epoch: validation reconstruction loss, the exact L-Score distance of validation's
*generations* to the target (weaktok/train/validation.py: ``lscore.val_items`` unconditional and seed-based outputs,
standardised L1 of the means, per term and total, averaged over the two modes) and
``objective = val_recon + lscore_weight * distance``: its L-Score part judges what a trial generates, not its
reconstructions (which sit near their inputs whatever the model generates). A validation whose L-Score pool failed
scores ``inf`` (when ``lscore_weight`` > 0), never the best. ASHA (time attribute: epoch) stops bad trials early.
Each trial's placement group holds its training CPUs plus the CPUs of its L-Score actors, so trials never starve
each other. An interrupted sweep resumes with ``--resume`` (``Tuner.restore``). At the end: ``results.csv`` (every
trial's config and last metrics), ``best_config.yaml`` (ready for ``weaktok train --config``),
``objective_vs_params.png``.

GPUs: ``resources.gpus_per_worker`` in the space file, ``auto`` (default: 1 when the Ray cluster reports GPU
resources, else 0) or a number (single-process trials: 0 to 1, fractions share a GPU; multi-worker trials: 0 or 1).
A single-process trial requests ``{"CPU": cpus_per_worker, "GPU": g}``; a multi-worker trial's Ray Train workers
request the same each (``use_gpu``, NCCL) or CPUs only (gloo). ``trial_resources`` resolves it, without Ray.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from weaktok.config import ConfigError, load_config, save_config
from weaktok.launch.objective import sweep_metrics

DISTRIBUTIONS = ("loguniform", "uniform", "choice", "grid", "randint")


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
    gpus_per_worker: float | str = (
        "auto"  # "auto": 1 if the Ray cluster has GPUs, else 0 (weaktok.device)
    )
    extra: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------------------
# The search space: YAML -> SweepSpec, checked against the config schema before anything runs


RESOURCE_KEYS = ("workers", "cpus_per_worker", "pool_actors", "gpus_per_worker")


def load_space(path: str | Path, num_samples: int | None = None) -> SweepSpec:
    from weaktok.device import gpus_setting

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


def trial_resources(spec: SweepSpec, cluster: dict[str, float]) -> tuple[list[dict], float]:
    """(placement-group bundles of one trial, GPUs per training worker) on a cluster with these resources
    (``ray.cluster_resources()``). Single-process trials: the first bundle is the training process,
    ``{"CPU": cpus_per_worker, "GPU": g}`` (GPU left out when 0); multi-worker trials: it is the Ray Train driver
    (half a CPU), the workers are placed by Ray Train (``weaktok.launch.ray_train.worker_resources``). Then one CPU per
    L-Score actor."""
    from weaktok.device import resolve_gpus

    gpus = resolve_gpus(spec.gpus_per_worker, cluster)
    if spec.workers == 1:
        first = {"CPU": spec.cpus_per_worker, **({"GPU": gpus} if gpus > 0 else {})}
    else:
        first = {"CPU": 0.5}
    return [first] + [{"CPU": 1.0}] * spec.pool_actors, gpus


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


def override(key: str, value: Any) -> str:
    """A ``key=value`` override whose value parses back (YAML) to the same thing."""
    return f"{key}={value}" if isinstance(value, str) else f"{key}={json.dumps(value)}"


def check_against_config(config: str, overrides: list[str], spec: SweepSpec) -> None:
    """Every swept key and every corner of its range must make a valid config (errors name the key)."""
    load_config(config, overrides)
    for key, dist in spec.space.items():
        for value in _corner_values(dist):
            try:
                load_config(config, overrides + [override(key, value)])
            except ConfigError as e:
                raise ConfigError(f"sweep space '{key}' value {value!r}: {e}") from None


def tune_space(spec: SweepSpec) -> dict:
    from ray import tune

    make = {
        "loguniform": lambda d: tune.loguniform(d["low"], d["high"]),
        "uniform": lambda d: tune.uniform(d["low"], d["high"]),
        "randint": lambda d: tune.randint(d["low"], d["high"]),
        "choice": lambda d: tune.choice(d["values"]),
        "grid": lambda d: tune.grid_search(d["values"]),
    }
    return {key: make[d["type"]](d) for key, d in spec.space.items()}


# ----------------------------------------------------------------------------------------------------------
# What a trial reports


class TuneReport:
    """Train-loop hook for single-process trials: report every epoch (and its checkpoint) to Tune."""

    def __init__(self, lscore_weight: float):
        self.lscore_weight = lscore_weight

    def on_epoch_end(self, record: dict, checkpoint: Path) -> None:
        from ray import tune

        tune.report(
            sweep_metrics(record, self.lscore_weight),
            checkpoint=tune.Checkpoint.from_directory(str(checkpoint)),
        )


def run_trial(
    params: dict,
    config: str,
    overrides: list[str],
    lscore_weight: float,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0.0,
) -> None:
    """The Tune trainable: one real training run with this trial's parameters (``gpus_per_worker``: resolved,
    see trial_resources; a single-process trial trains on the GPU Ray gave it, if any)."""
    from ray import tune

    ctx = tune.get_context()
    # concurrent trials share machines: each serves metrics on a free port, labelled with its trial name
    trial_overrides = (
        overrides
        + ["metrics.port=0", f"metrics.run_name={ctx.get_trial_name()}"]
        + [override(k, v) for k, v in params.items()]
    )
    out = Path(ctx.get_trial_dir()) / "run"
    if workers == 1:
        import torch

        from weaktok.launch.local import free_port
        from weaktok.train import train

        os.environ.update(
            {
                "RANK": "0",
                "WORLD_SIZE": "1",
                "LOCAL_RANK": "0",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(free_port()),
            }
        )
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
        train(load_config(config, trial_overrides), out, hooks=[TuneReport(lscore_weight)])
        return
    _run_trial_on_ray_train(
        config, trial_overrides, out, lscore_weight, workers, cpus_per_worker, gpus_per_worker
    )


def _run_trial_on_ray_train(
    config, overrides, out, lscore_weight, workers, cpus_per_worker, gpus_per_worker: float = 0.0
) -> None:
    """A multi-worker trial: Ray Train nested in Tune (driver function + TuneReportCallback); NCCL on GPUs."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from weaktok.launch.ray_train import train_loop_per_worker, worker_resources

    w = worker_resources(cpus_per_worker, gpus_per_worker)
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config,
            "overrides": overrides,
            "out": str(out),
            "use_gpu": w["use_gpu"],
            "lscore_weight": lscore_weight,
        },
        scaling_config=ScalingConfig(
            num_workers=workers,
            use_gpu=w["use_gpu"],
            resources_per_worker=w["resources_per_worker"],
        ),
        torch_config=TorchConfig(
            backend=w["backend"],
            init_method="env",
            timeout_s=int(load_config(config, overrides).train.dist_timeout_s),
        ),
        run_config=RunConfig(
            name="train", storage_path=str(out / "ray"), callbacks=[TuneReportCallback()]
        ),
    )
    result = trainer.fit()
    if result.error:
        raise result.error


# ----------------------------------------------------------------------------------------------------------
# The sweep


HEAD_GONE_S = 15.0  # the Ray head unreachable this long ends the sweep (Ray itself would wait 60 s, then abort)


def watch_head(
    out: Path, resume_hint: str, gone_after_s: float = HEAD_GONE_S, every_s: float = 1.0
):
    """Watch the Ray head (its GCS port) from a daemon thread; if it stops answering for ``gone_after_s``, say so
    plainly (what died, what is kept, how to go on) and end the process with exit code 3.

    Without this the driver's Ray core waits 60 s for the GCS and then kills the process with a log line about
    `gcs_server.out`; Tune's experiment state in ``<out>/tune`` survives either way, so ``--resume`` continues."""
    import socket
    import sys
    import threading
    import time

    import ray

    address = ray.get_runtime_context().gcs_address
    host, port = address.rsplit(":", 1)
    stop = threading.Event()

    def probe() -> bool:
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return True
        except OSError:
            return False

    def loop() -> None:
        down_since = None
        while not stop.wait(every_s):
            if probe():
                down_since = None
                continue
            down_since = down_since or time.monotonic()
            if time.monotonic() - down_since >= gone_after_s:
                msg = (
                    f"[weaktok] sweep: the Ray cluster at {address} is gone (its head has not answered for "
                    f"{gone_after_s:.0f} s; killed, stopped or unreachable). Trials finished so far and the "
                    f"checkpoints of running ones are kept in {out / 'tune'}. Start the cluster again and "
                    f"continue with: {resume_hint}"
                )
                print(msg, file=sys.stderr, flush=True)
                os._exit(3)

    threading.Thread(target=loop, name="weaktok-ray-head-watch", daemon=True).start()
    return stop


def run_sweep(
    config: str,
    space_path: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    num_samples: int | None = None,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
) -> dict:
    """Run (or resume) a sweep; returns {results_csv, best_config, plot, best: {params, metrics}}."""
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from weaktok.device import describe_gpus

    overrides = list(overrides or [])
    spec = load_space(space_path, num_samples)
    check_against_config(config, overrides, spec)  # fail fast, before Ray starts
    epochs = load_config(config, overrides).train.epochs
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    experiment = out / "tune"
    if not ray.is_initialized():
        addr = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=addr, **({} if addr else {"num_cpus": num_cpus}))
    cluster = ray.cluster_resources()
    bundles, gpus = trial_resources(spec, cluster)
    print(
        f"[weaktok] sweep: {describe_gpus(spec.gpus_per_worker, gpus, cluster)}; trial bundles {bundles}",
        flush=True,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            config=config,
            overrides=overrides,
            lscore_weight=spec.lscore_weight,
            workers=spec.workers,
            cpus_per_worker=spec.cpus_per_worker,
            gpus_per_worker=gpus,
        ),
        tune.PlacementGroupFactory(bundles, strategy="PACK"),
    )
    if resume and tune.Tuner.can_restore(str(experiment)):
        tuner = tune.Tuner.restore(
            str(experiment), trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        if resume:
            print(f"[weaktok] nothing to resume in {experiment}: starting a new sweep", flush=True)
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=epochs,
            grace_period=spec.grace_period,
            reduction_factor=spec.reduction_factor,
        )
        tuner = tune.Tuner(
            trainable,
            param_space=tune_space(spec),
            tune_config=tune.TuneConfig(
                metric="objective",
                mode="min",
                scheduler=scheduler,
                num_samples=spec.num_samples,
                max_concurrent_trials=spec.max_concurrent or None,
            ),
            run_config=tune.RunConfig(name="tune", storage_path=str(out), verbose=1),
        )
    watch = watch_head(
        out,
        f"weaktok sweep --config {config} --space {space_path} --out {out} --resume "
        f"{' '.join(overrides)}".strip(),
    )
    try:
        results = tuner.fit()
    finally:
        watch.set()
    return summarise(results, spec, config, overrides, out)


def summarise(results, spec: SweepSpec, config: str, overrides: list[str], out: Path) -> dict:
    df = results.get_dataframe()
    csv = out / "results.csv"
    df.to_csv(csv, index=False)
    errors = [r for r in results if r.error]
    try:
        best = results.get_best_result(metric="objective", mode="min", scope="all")
    except RuntimeError as e:
        raise RuntimeError(
            f"sweep in {out} produced no usable trial ({len(errors)} errored): {e}"
        ) from None
    params = {k: best.config[k] for k in spec.space}
    cfg = load_config(config, overrides + [override(k, v) for k, v in params.items()])
    cfg.name = f"{cfg.name}-sweep-best"
    best_yaml = out / "best_config.yaml"
    save_config(cfg, best_yaml)
    plot = plot_objective(df, spec, out / "objective_vs_params.png")
    summary = {
        "results_csv": str(csv),
        "best_config": str(best_yaml),
        "plot": str(plot),
        "trials": len(df),
        "errored": len(errors),
        "best": {"params": params, "objective": best.metrics.get("objective"), "path": best.path},
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def plot_objective(df, spec: SweepSpec, path: Path) -> Path:
    """One panel per swept key: each trial's final objective against its value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(spec.space)
    cols = min(4, len(keys))
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        column = f"config/{key}"
        if column not in df:
            ax.set_visible(False)
            continue
        x, y = df[column], df["objective"]
        if spec.space[key]["type"] in ("choice", "grid") and not all(
            isinstance(v, (int, float)) for v in x
        ):
            labels = sorted({str(v) for v in x})
            x = [labels.index(str(v)) for v in x]
            ax.set_xticks(range(len(labels)), labels)
        ax.scatter(x, y, c=df.get("epoch", None), cmap="viridis", s=28)
        if spec.space[key]["type"] == "loguniform":
            ax.set_xscale("log")
        ax.set_xlabel(key, fontsize=8)
        ax.set_ylabel("objective (lower is better)", fontsize=8)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.suptitle("sweep: final objective per trial (colour = epochs reached)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
