"""Ray Tune sweeps: a tiny real sweep with ASHA, resume after kill -9, and submission as a Ray job."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.helpers import REPO, cpu_env, make_tiny_shards, run, venv_bin
from tests.ray_head import RayHead, kill_tree
from weaktok.config import ConfigError, load_config, to_dict
from weaktok.launch.sweep_space import check_against_config, load_space
from weaktok.procenv import free_port

TRIAL = [
    "train.epochs=2",
    "data.samples_per_epoch=16",
    "lscore.pool_every=0",
    "lscore.val_items=1",
    "data.num_workers=0",
]


def _space(path: Path, lrs, lscore_weight=0.0) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "num_samples": 1,
                "objective": {"lscore_weight": lscore_weight},
                "asha": {"grace_period": 1, "reduction_factor": 2},
                "resources": {"workers": 1, "cpus_per_worker": 1, "pool_actors": 1},
                "space": {
                    "train.lr": {"type": "grid", "values": lrs},
                    "model.chunking.tau": {"type": "loguniform", "low": 0.5, "high": 2.0},
                },
            }
        )
    )
    return path


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("sweep_shards"), n_train=16, n_val=4)


def test_space_errors_name_the_key(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("space:\n  model.chunking.tua: {type: uniform, low: 0.1, high: 1}\n")
    with pytest.raises(ConfigError, match="sweep space 'model.chunking.tua'.*unknown config key"):
        check_against_config(load_config("tiny"), load_space(bad))
    bad.write_text("space:\n  model.chunking.tau: {type: uniform, low: 0.0, high: 1}\n")
    with pytest.raises(ConfigError, match="model.chunking.tau.*must be > 0"):
        check_against_config(load_config("tiny"), load_space(bad))
    bad.write_text("space:\n  train.lr: {type: gaussian}\n")
    with pytest.raises(ConfigError, match="space.train.lr: needs 'type'"):
        load_space(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_space(tmp_path / "nope.yaml")
    spec = load_space(REPO / "cluster" / "sweeps" / "default.yaml")
    check_against_config(
        load_config("demo"), spec
    )  # the shipped space is valid for the shipped config
    assert spec.gpus_per_worker == "auto"


def _resources(tmp_path, **resources):
    path = tmp_path / "r.yaml"
    path.write_text(
        yaml.safe_dump(
            {"resources": resources, "space": {"train.lr": {"type": "choice", "values": [0.001]}}}
        )
    )
    return load_space(path)


def test_gpus_per_worker_is_validated_naming_the_key(tmp_path):
    assert _resources(tmp_path).gpus_per_worker == "auto"
    assert _resources(tmp_path, gpus_per_worker="AUTO").gpus_per_worker == "auto"
    assert _resources(tmp_path, gpus_per_worker=0.5).gpus_per_worker == 0.5
    assert _resources(tmp_path, workers=2, gpus_per_worker=1).gpus_per_worker == 1
    for bad in ("many", -1, 2, True, [1]):
        with pytest.raises(
            ConfigError, match=r"resources\.gpus_per_worker: got .*allowed: 'auto' or a number"
        ):
            _resources(tmp_path, gpus_per_worker=bad)
    with pytest.raises(
        ConfigError, match=r"resources\.gpus_per_worker: got 0\.5; allowed: 'auto', 0 or 1"
    ):
        _resources(
            tmp_path, workers=2, gpus_per_worker=0.5
        )  # a DeepSpeed rank uses one GPU or none
    with pytest.raises(ConfigError, match="unknown resources key.*gpu_per_worker"):
        _resources(tmp_path, gpu_per_worker=1)  # a typo is not silently ignored


def test_trial_resources_follow_the_cluster(tmp_path):
    from weaktok.launch.ray_train import worker_resources
    from weaktok.launch.sweep_space import trial_resources

    cpu_only, gpus = {"CPU": 16.0, "memory": 1e10}, {"CPU": 16.0, "GPU": 8.0}
    one = _resources(tmp_path, cpus_per_worker=2, pool_actors=1)
    assert trial_resources(one, cpu_only) == ([{"CPU": 2.0}, {"CPU": 1.0}], 0.0)
    assert trial_resources(one, gpus) == ([{"CPU": 2.0, "GPU": 1.0}, {"CPU": 1.0}], 1.0)
    assert trial_resources(one, {"CPU": 4.0, "GPU": 0.0}) == ([{"CPU": 2.0}, {"CPU": 1.0}], 0.0)
    half = _resources(tmp_path, gpus_per_worker=0.5, pool_actors=0)
    assert trial_resources(half, gpus) == ([{"CPU": 1.0, "GPU": 0.5}], 0.5)
    off = _resources(tmp_path, gpus_per_worker=0)
    assert trial_resources(off, gpus)[1] == 0.0
    # multi-worker trials: the driver takes half a CPU, Ray Train places each worker with CPU (+ GPU)
    multi = _resources(tmp_path, workers=4, cpus_per_worker=2, pool_actors=2)
    bundles, g = trial_resources(multi, gpus)
    assert bundles == [{"CPU": 0.5}, {"CPU": 1.0}, {"CPU": 1.0}] and g == 1.0
    assert worker_resources(2, g) == {
        "use_gpu": True,
        "backend": "nccl",
        "resources_per_worker": {"CPU": 2, "GPU": 1.0},
    }
    assert worker_resources(2, trial_resources(multi, cpu_only)[1]) == {
        "use_gpu": False,
        "backend": "gloo",
        "resources_per_worker": {"CPU": 2},
    }


def test_a_trials_config_is_the_resolved_base_plus_its_params():
    """The driver resolves --config + overrides once; a trial applies its params (and its metrics port and run
    name) to that base, and nothing else: the same config a user would get from those overrides."""
    from weaktok.launch.trial import trial_config

    user = ["data.samples_per_epoch=16", "model.dim=32"]
    base = load_config("tiny", user)
    params = {"train.lr": 0.0042, "model.chunking.tau": 0.7, "lscore.mode": "paper"}
    cfg = trial_config(base, params, "run_fn_00001")
    want = load_config(
        "tiny",
        [*user, "metrics.port=0", "metrics.run_name=run_fn_00001"]
        + [f"{k}={v}" for k, v in params.items()],
    )
    assert to_dict(cfg) == to_dict(want)
    assert trial_config(base, params) == load_config(
        "tiny", [*user, *(f"{k}={v}" for k, v in params.items())]
    )  # the best config: no metrics port of its own
    assert trial_config(base, {"metrics.port": 9999}, "t").metrics.port == 9999  # params win
    assert to_dict(base) == to_dict(load_config("tiny", user))  # the base is left as it was
    with pytest.raises(ConfigError, match="must be > 0"):
        trial_config(base, {"model.chunking.tau": 0.0}, "t")


def test_gpu_resolution_and_log_line():
    from weaktok.device import describe_gpus, gpus_setting, resolve_gpus

    assert resolve_gpus("auto", {}) == 0.0 and resolve_gpus("auto", {"GPU": 0.5}) == 1.0
    assert resolve_gpus(0, {"GPU": 8}) == 0.0 and resolve_gpus(0.25, {}) == 0.25
    assert gpus_setting(None, "k") == "auto" and gpus_setting("1", "k", whole=True) == 1.0
    assert "WARNING: no GPU node is up" in describe_gpus(1.0, 1.0, {"CPU": 2})
    assert "WARNING" not in describe_gpus(
        "auto", 1.0, {"GPU": 2}
    ) and "reports 2 GPU" in describe_gpus("auto", 1.0, {"GPU": 2})


@pytest.mark.slow
def test_tiny_sweep_asha_results_and_best_config(shards, tmp_path):
    out = tmp_path / "sweep"
    r = run(
        [
            venv_bin("weaktok"),
            "sweep",
            "--config",
            "tiny",
            "--space",
            str(_space(tmp_path / "s.yaml", [0.003, 1e-6, 1e-6])),
            "--out",
            str(out),
            f"data.shards={shards}",
            *TRIAL,
        ],
        env=cpu_env(),
        cwd=REPO,
        timeout=600,
    )
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 3 and {"objective", "val_recon", "epoch", "config/train.lr"} <= set(
        df.columns
    )
    assert (df["epoch"] < 2).sum() >= 1, "ASHA should stop at least one bad trial at its first rung"
    assert df.loc[df["config/train.lr"] == 0.003, "epoch"].item() == 2
    best = load_config(out / "best_config.yaml")
    assert best.train.lr == 0.003 and best.train.epochs == 2
    assert (out / "objective_vs_params.png").stat().st_size > 5000
    assert "best config" in r.stdout


@pytest.mark.slow
def test_killed_sweep_resumes_and_completes(shards, tmp_path):
    out = tmp_path / "sweep"
    args = [
        venv_bin("weaktok"),
        "sweep",
        "--config",
        "tiny",
        "--space",
        str(
            _space(tmp_path / "s.yaml", [0.003, 0.002])
        ),  # killed after the first: one done, one to go
        "--out",
        str(out),
        f"data.shards={shards}",
        *TRIAL,
    ]
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        env=cpu_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    # a trial's epoch-2 checkpoint: written into <out>/tune/<trial>/ by the trial itself as it reports (result.json
    # is written by the driver into a staging folder and copied there only now and then, possibly after the end)
    done = lambda: list((out / "tune").glob("*/checkpoint_000001"))  # noqa: E731
    while time.time() < deadline and not done():
        assert proc.poll() is None
        time.sleep(0.5)
    kill_tree(proc)  # the driver and the local cluster it started: no other Ray on the machine
    assert not (out / "results.csv").exists()
    run(args + ["--resume"], env=cpu_env(), cwd=REPO, timeout=600)
    df = pd.read_csv(out / "results.csv")
    assert len(df) == 2 and (df["epoch"] >= 1).all()
    assert (out / "best_config.yaml").is_file()


@pytest.mark.slow
def test_sweep_as_ray_job_on_a_local_head(shards, tmp_path):
    port, dash = free_port(), free_port()
    env = cpu_env(
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        RAY_ADDRESS=f"http://127.0.0.1:{dash}",
    )
    ray = venv_bin("ray")
    head = RayHead(port, env, dashboard_port=dash)  # this test's cluster alone (tests/ray_head.py)
    head.start()
    try:
        assert (Path.home() / ".ray" / "auth_token").is_file(), "token auth stays on"
        r = run(
            [
                "bash",
                str(REPO / "ray_jobs" / "submit.sh"),
                "sweep",
                "--config",
                "tiny",
                "--space",
                str(_space(tmp_path / "s.yaml", [0.003])),
                "--out",
                str(tmp_path / "sweep"),
                f"data.shards={shards}",
                *TRIAL,
                "train.epochs=1",  # one trial of one epoch: this test is about the job path, not the search
            ],
            env={**env, "RAY": ray, "DS_ACCELERATOR": "cpu"},
            cwd=REPO,
        )
        job = re.search(r"raysubmit_[A-Za-z0-9]+", r.stdout + r.stderr).group(0)
        deadline, status = time.time() + 400, ""
        while time.time() < deadline:
            status = run(
                ["bash", str(REPO / "ray_jobs" / "submit.sh"), "status", job],
                env={**env, "RAY": ray},
                cwd=REPO,
            ).stdout
            if any(s in status.lower() for s in ("succeeded", "failed", "stopped")):
                break
            time.sleep(2)
        logs = run(
            ["bash", str(REPO / "ray_jobs" / "submit.sh"), "logs", job],
            env={**env, "RAY": ray},
            cwd=REPO,
        ).stdout
        assert "succeeded" in status.lower(), status + logs[-3000:]
        assert "best config" in logs
        assert json.loads((tmp_path / "sweep" / "summary.json").read_text())["trials"] == 1
    finally:
        head.kill()
        import shutil

        shutil.rmtree(head.tmp, ignore_errors=True)
