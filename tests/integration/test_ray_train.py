"""Ray Train runs the same loop: 2 workers on a local Ray cluster of 2 simulated nodes (ray.cluster_utils)."""

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import REPO, cpu_env, make_tiny_shards, read_metrics


def test_gpus_per_worker_is_validated_before_ray_starts(tmp_path):
    for bad in ("2", "yes", "0.5"):
        r = subprocess.run(
            [
                sys.executable,
                str(REPO / "ray_jobs" / "train.py"),
                "--config",
                "tiny",
                "--out",
                str(tmp_path / "run"),
                "--gpus-per-worker",
                bad,
            ],
            capture_output=True,
            text=True,
            env=cpu_env(),
            cwd=REPO,
            timeout=120,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert (
            f"gpus_per_worker: got '{bad}'; allowed: 'auto', 0 or 1" in r.stderr
            and "Traceback" not in r.stderr
        )


def test_workers_get_the_resolved_config_not_a_name_and_overrides(tmp_path):
    """What crosses to a Ray Train worker is the driver's resolved config as plain data; the worker rebuilds the
    same Config from it (with the same validation) and reads no YAML file."""
    from weaktok.config import from_dict, load_config, to_dict
    from weaktok.launch.ray_train import loop_config

    cfg = load_config("tiny", ["model.dim=32", "train.lr=0.0042"])
    sent = loop_config(cfg, tmp_path / "run", use_gpu=False, lscore_weight=0.5)
    assert set(sent) == {"config", "out", "use_gpu", "lscore_weight"}
    assert sent["config"] == to_dict(cfg) and from_dict(sent["config"]) == cfg
    assert sent["out"] == str(tmp_path / "run") and sent["use_gpu"] is False


@pytest.mark.slow
def test_ray_train_two_workers_two_nodes(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    from weaktok.config import load_config, to_dict
    from weaktok.launch.ray_train import run_ray_train

    shards = make_tiny_shards(tmp_path / "shards", n_train=16, n_val=4)
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    try:
        ray.init(address=cluster.address)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        assert len(nodes) == 2
        out = tmp_path / "run"
        cfg = load_config(
            "tiny",
            [
                f"data.shards={shards}",
                "train.epochs=2",
                "data.samples_per_epoch=16",
                "lscore.pool_every=0",
                "lscore.val_items=0",
                "data.num_workers=0",
                "data.log_keys=true",
                "ray.num_to_keep=1",  # retention from the config: Ray keeps only the newest of the two
            ],
        )
        result = run_ray_train(
            cfg, str(out), workers=2, cpus_per_worker=1
        )  # gpus_per_worker auto: no GPU -> gloo
        assert result.error is None
        assert result.metrics["epoch"] == 2 and result.metrics["step"] == 8
        assert result.checkpoint is not None and os.path.isdir(result.checkpoint.path)
        assert "COMPLETE" in os.listdir(result.checkpoint.path)
        kept = sorted(p.name for p in (out / "ray" / "weaktok-run").glob("step*"))
        assert kept == [os.path.basename(result.checkpoint.path)] == ["step00000008"]
        assert (out / "samples" / "rank1.txt").is_file()  # both ranks trained
        assert [r["epoch"] for r in read_metrics(out) if r["kind"] == "val"] == [1, 2]
        final = torch.load(out / "final" / "model.pt", weights_only=True)
        assert "model" in final
        assert final["config"] == to_dict(
            cfg
        )  # the workers trained under exactly the driver's config
    finally:
        ray.shutdown()
        cluster.shutdown()
