"""Ray Tune sweeps over any config key (tau, lambda_mu/lambda_sigma, the curriculum, lscore.mode, ...).

    weaktok sweep --config demo --space cluster/sweeps/default.yaml --out runs/sweep [--num-samples N] [--resume]

The driver resolves the config (``--config`` + overrides) once and checks every corner of the search space against
it (weaktok/launch/sweep_space.py); each trial trains that resolved base with its params applied
(weaktok/launch/trial.py): one process, or a Ray Train ``TorchTrainer`` with DeepSpeed workers.
Trials report once per epoch: validation reconstruction loss, the exact L-Score distance of validation's
*generations* to the target (weaktok/train/validation.py: ``lscore.val_items`` unconditional and seed-based outputs,
standardised L1 of the means, per term and total, averaged over the two modes) and
``objective = val_recon + lscore_weight * distance``: its L-Score part judges what a trial generates, not its
reconstructions (which sit near their inputs whatever the model generates). A validation whose L-Score pool failed
scores ``inf`` (when ``lscore_weight`` > 0), never the best. ASHA (time attribute: epoch) stops bad trials early.
Each trial's placement group holds its training CPUs plus the CPUs of its L-Score actors, so trials never starve
each other. An interrupted sweep resumes with ``--resume`` (``Tuner.restore``); a Ray head that stops answering
ends the sweep with exit code 3 and says how to resume (``watch_head``). At the end: ``results.csv`` (every
trial's config and last metrics), ``best_config.yaml`` (ready for ``weaktok train --config``),
``objective_vs_params.png``.

GPUs: ``resources.gpus_per_worker`` in the space file, ``auto`` (default: 1 when the Ray cluster reports GPU
resources, else 0) or a number (single-process trials: 0 to 1, fractions share a GPU; multi-worker trials: 0 or 1).
A single-process trial requests ``{"CPU": cpus_per_worker, "GPU": g}``; a multi-worker trial's Ray Train workers
request the same each (``use_gpu``, NCCL) or CPUs only (gloo). ``trial_resources`` resolves it, without Ray.
Ray itself: weaktok/ray_cluster.py (``--address`` or RAY_ADDRESS, else a private local cluster).
Ray's storage: ``--storage-path``, else the config's ``ray.storage_path``, else ``--out`` (a local folder resolved, a
URI such as ``s3://bucket/sweeps`` kept as written: weaktok/launch/storage.py); Tune's state is ``<storage>/tune``.
Trials keep ``ray.num_to_keep`` checkpoints (0: all), ranked by ``ray.checkpoint_score_attribute`` (null: newest).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from pathlib import Path

from weaktok.config import Config, load_config, save_config, with_absolute_paths
from weaktok.config.errors import missing_extra

try:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
except ImportError as e:
    raise missing_extra("ray", "weaktok sweep (Ray Tune)", e) from e
from weaktok.device import describe_gpus
from weaktok.launch.storage import checkpoint_config, join_location, storage_location
from weaktok.launch.sweep_space import SweepSpec, check_against_config, load_space, trial_resources
from weaktok.launch.trial import run_trial, trial_config
from weaktok.plots import pyplot
from weaktok.ray_cluster import connect_ray

log = logging.getLogger(__name__)

HEAD_GONE_S = 15.0  # the Ray head unreachable this long ends the sweep (Ray itself would wait 60 s, then abort)


def tune_space(spec: SweepSpec) -> dict:
    make = {
        "loguniform": lambda d: tune.loguniform(d["low"], d["high"]),
        "uniform": lambda d: tune.uniform(d["low"], d["high"]),
        "randint": lambda d: tune.randint(d["low"], d["high"]),
        "choice": lambda d: tune.choice(d["values"]),
        "grid": lambda d: tune.grid_search(d["values"]),
    }
    return {key: make[d["type"]](d) for key, d in spec.space.items()}


def watch_head(
    experiment: str | Path,
    resume_hint: str,
    gone_after_s: float = HEAD_GONE_S,
    every_s: float = 1.0,
):
    """Watch the Ray head (its GCS port) from a daemon thread; if it stops answering for ``gone_after_s``, say so
    plainly (what died, what is kept, how to go on) and end the process with exit code 3.

    Without this the driver's Ray core waits 60 s for the GCS and then kills the process with a log line about
    `gcs_server.out`; Tune's experiment state in ``experiment`` (``<storage>/tune``) survives either way, so
    ``--resume`` continues."""
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
                log.error(
                    "sweep: the Ray cluster at %s is gone (its head has not answered for %.0f s; killed, "
                    "stopped or unreachable). Trials finished so far and the checkpoints of running ones are "
                    "kept in %s. Start the cluster again and continue with: %s",
                    address,
                    gone_after_s,
                    experiment,
                    resume_hint,
                )
                os._exit(3)

    threading.Thread(target=loop, name="weaktok-ray-head-watch", daemon=True).start()
    return stop


def sweep_storage(out: Path, base: Config, storage_path: str | None = None) -> tuple[str, str]:
    """Ray's storage for a sweep and Tune's experiment in it: ``storage_path``, else ``base.ray.storage_path``,
    else ``out`` (a URI as written, a local path resolved), and ``<storage>/tune``."""
    storage = storage_location(storage_path or base.ray.storage_path or out)
    return storage, join_location(storage, "tune")


def run_sweep(
    config: str,
    space_path: str | Path,
    out: str | Path,
    overrides: list[str] | None = None,
    num_samples: int | None = None,
    resume: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    storage_path: str | None = None,
) -> dict:
    """Run (or resume) a sweep; returns {results_csv, best_config, plot, best: {params, metrics}}.

    ``storage_path``: Ray's storage (a local folder or a URI); default the config's ``ray.storage_path``, else
    ``out``. The summary files are written to ``out`` (local) either way."""
    overrides = list(overrides or [])
    spec = load_space(space_path, num_samples)
    # resolved once: every trial starts from this; relative paths made absolute here, since Tune runs each
    # trial in its own folder
    base = with_absolute_paths(load_config(config, overrides))
    check_against_config(base, spec)  # fail fast, before Ray starts
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    storage, experiment = sweep_storage(out, base, storage_path)
    # Tune's own TensorBoard files (one run per trial) and each trial's training run (<trial>/run/tensorboard)
    log.info("sweep: tensorboard --logdir %s", experiment)
    connect_ray(address, num_cpus)
    cluster = ray.cluster_resources()
    bundles, gpus = trial_resources(spec, cluster)
    log.info(
        "sweep: %s; trial bundles %s", describe_gpus(spec.gpus_per_worker, gpus, cluster), bundles
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial,
            base=base,
            lscore_weight=spec.lscore_weight,
            workers=spec.workers,
            cpus_per_worker=spec.cpus_per_worker,
            gpus_per_worker=gpus,
        ),
        tune.PlacementGroupFactory(bundles, strategy="PACK"),
    )
    if resume and tune.Tuner.can_restore(experiment):
        tuner = tune.Tuner.restore(
            experiment, trainable=trainable, resume_unfinished=True, resume_errored=True
        )
    else:
        if resume:
            log.info("nothing to resume in %s: starting a new sweep", experiment)
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=base.train.epochs,
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
            run_config=tune.RunConfig(
                name="tune",
                storage_path=storage,
                verbose=1,
                checkpoint_config=checkpoint_config(base.ray, for_tune=True),
            ),
        )
    storage_flag = f"--storage-path {storage_path} " if storage_path else ""
    watch = watch_head(
        experiment,
        f"weaktok sweep --config {config} --space {space_path} --out {out} {storage_flag}--resume "
        f"{' '.join(overrides)}".strip(),
    )
    try:
        results = tuner.fit()
    finally:
        watch.set()
    return summarise(results, spec, base, out)


# ----------------------------------------------------------------------------------------------------------
# The summary: results.csv, best_config.yaml, the plot


def summarise(results, spec: SweepSpec, base: Config, out: Path) -> dict:
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
    cfg = trial_config(
        base, params
    )  # the best trial's config, as it trained (less its metrics port)
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
    plt = pyplot()
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
