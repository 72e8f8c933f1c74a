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


@pytest.mark.slow
def test_ray_train_two_workers_two_nodes(tmp_path, monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

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
        result = run_ray_train(
            "tiny",
            [
                f"data.shards={shards}",
                "train.epochs=2",
                "data.samples_per_epoch=16",
                "lscore.pool_every=0",
                "lscore.val_items=0",
                "data.num_workers=0",
                "data.log_keys=true",
            ],
            str(out),
            workers=2,
            cpus_per_worker=1,
        )  # gpus_per_worker auto: no GPU -> gloo
        assert result.error is None
        assert result.metrics["epoch"] == 2 and result.metrics["step"] == 8
        assert result.checkpoint is not None and os.path.isdir(result.checkpoint.path)
        assert "COMPLETE" in os.listdir(result.checkpoint.path)
        assert (out / "samples" / "rank1.txt").is_file()  # both ranks trained
        assert [r["epoch"] for r in read_metrics(out) if r["kind"] == "val"] == [1, 2]
        assert "model" in torch.load(out / "final" / "model.pt", weights_only=True)
    finally:
        ray.shutdown()
        cluster.shutdown()
