"""Ray at cloud scale (issue 18): storage URIs kept, local paths resolved, checkpoint retention from the config's
``ray:`` section, and the cluster recipes (torchrun, SLURM, KubeRay, ray-cluster.yaml) present and well-formed."""

import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO
from weaktok.config import ConfigError, load_config
from weaktok.launch.storage import checkpoint_config, join_location, storage_location

URIS = ["s3://bucket/runs", "gs://b/x/y", "abfss://c@acct.dfs.core.windows.net/r", "file:///tmp/r"]


@pytest.mark.parametrize("uri", URIS)
def test_uris_are_kept_as_written(uri):
    assert storage_location(uri) == uri
    assert join_location(uri, "tune") == f"{uri}/tune"
    assert join_location(uri + "/", "tune") == f"{uri}/tune"


def test_local_paths_are_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage_location("runs/r") == str(tmp_path / "runs" / "r")
    assert storage_location(Path("a/../b")) == str(tmp_path / "b")
    assert storage_location("s3:/bucket") == str(
        tmp_path / "s3:" / "bucket"
    )  # no scheme://: a folder
    assert join_location(str(tmp_path), "tune") == str(tmp_path / "tune")


def test_ray_train_run_config_takes_storage_and_retention_from_the_config(tmp_path):
    from weaktok.launch.ray_train import ray_run_config

    cfg = load_config(
        "tiny",
        [
            "ray.storage_path=s3://bucket/runs",
            "ray.num_to_keep=2",
            "ray.checkpoint_score_attribute=val_recon",
            "ray.checkpoint_score_order=max",
        ],
    )
    rc = ray_run_config(cfg, tmp_path / "run", max_failures=3)
    assert rc.storage_path == "s3://bucket/runs" and rc.name == "weaktok-run"
    assert rc.failure_config.max_failures == 3
    ck = rc.checkpoint_config
    assert (ck.num_to_keep, ck.checkpoint_score_attribute, ck.checkpoint_score_order) == (
        2,
        "val_recon",
        "max",
    )
    assert ray_run_config(cfg, tmp_path / "run", storage_path="gs://o/p").storage_path == "gs://o/p"
    default = ray_run_config(load_config("tiny"), tmp_path / "run")
    assert default.storage_path == str(tmp_path / "run" / "ray")  # today's default
    local = ray_run_config(load_config("tiny", ["ray.storage_path=rel/store"]), tmp_path / "run")
    assert Path(local.storage_path).is_absolute() and local.storage_path.endswith("rel/store")


@pytest.mark.parametrize("overrides", [[], ["ray.num_to_keep=0"]])
def test_unset_retention_keeps_every_checkpoint(overrides):
    ck = checkpoint_config(load_config("tiny", overrides).ray)
    assert (
        ck.num_to_keep is None and ck.checkpoint_score_attribute is None
    )  # Ray: keep all, newest last


def test_sweep_storage_defaults_to_out_and_keeps_uris(tmp_path):
    from weaktok.launch.sweep import sweep_storage

    base = load_config("tiny")
    assert sweep_storage(tmp_path, base) == (str(tmp_path), str(tmp_path / "tune"))
    assert sweep_storage(tmp_path, base, "s3://b/s") == ("s3://b/s", "s3://b/s/tune")
    configured = load_config("tiny", ["ray.storage_path=gs://c/s"])
    assert sweep_storage(tmp_path, configured) == ("gs://c/s", "gs://c/s/tune")
    assert sweep_storage(tmp_path, configured, "s3://b/s")[0] == "s3://b/s"  # the flag wins


@pytest.mark.parametrize(
    "override, key",
    [
        ("ray.num_to_keep=-1", "ray.num_to_keep"),
        ("ray.num_to_keep=1.5", "ray.num_to_keep"),
        ("ray.checkpoint_score_order=lowest", "ray.checkpoint_score_order"),
        ("ray.checkpoint_score_attribute=' '", "ray.checkpoint_score_attribute"),
        ("ray.storage_path=''", "ray.storage_path"),
        ("ray.storage_path=3", "ray.storage_path"),
        ("ray.num_to_kep=2", "ray.num_to_kep"),
    ],
)
def test_bad_ray_keys_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(f"'{key}'")):
        load_config("tiny", [override])


def test_ray_jobs_train_flags_set_the_ray_keys(monkeypatch):
    """ray_jobs/train.py: --storage-path and the retention flags land in the config the workers get."""
    import runpy

    seen = {}
    monkeypatch.setattr(
        "weaktok.launch.ray_train.run_ray_train",
        lambda cfg, out, **kw: seen.update(cfg=cfg, kw=kw) or (_ for _ in ()).throw(SystemExit(0)),
    )
    argv = ["train.py", "--config", "tiny", "--out", "/tmp/x", "--storage-path", "s3://b/r"]
    argv += ["--num-to-keep", "3", "--checkpoint-score-attribute", "val_recon", "ray.num_to_keep=9"]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit):
        runpy.run_path(str(REPO / "ray_jobs" / "train.py"), run_name="__main__")
    ray_cfg = seen["cfg"].ray
    assert (ray_cfg.storage_path, ray_cfg.num_to_keep, ray_cfg.checkpoint_score_attribute) == (
        "s3://b/r",
        3,
        "val_recon",
    )
    assert "storage_path" not in seen["kw"]


# ----------------------------------------------------------------------------------------------------------
# the recipes

SHELL = ["cluster/torchrun.sh", "cluster/slurm/train.sbatch", "cluster/launch_multinode.sh"]


@pytest.mark.parametrize("path", SHELL)
def test_shell_recipes_exist_and_parse(path):
    assert (REPO / path).is_file()
    subprocess.run(["bash", "-n", str(REPO / path)], check=True)


def test_torchrun_recipe_runs_weaktok_train_and_needs_a_rendezvous_for_many_nodes(tmp_path):
    fake = tmp_path / "torchrun"
    fake.write_text('#!/usr/bin/env bash\necho "$@"\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "TORCHRUN": str(fake), "NPROC": "2"}
    one = subprocess.run(
        [str(REPO / "cluster/torchrun.sh"), "--config", "tiny"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0 and "--standalone" in one.stdout
    assert one.stdout.split()[-4:] == ["-m", "weaktok.train", "--config", "tiny"]
    many = {**env, "NNODES": "2", "NODE_RANK": "1", "RDZV_ENDPOINT": "10.0.0.1:29500"}
    two = subprocess.run(
        [str(REPO / "cluster/torchrun.sh")], env=many, capture_output=True, text=True
    )
    words = two.stdout.split()
    assert words[words.index("--node-rank") + 1] == "1"
    assert words[words.index("--rdzv-endpoint") + 1] == "10.0.0.1:29500"
    missing = {k: v for k, v in many.items() if k != "RDZV_ENDPOINT"}
    bad = subprocess.run(
        [str(REPO / "cluster/torchrun.sh")], env=missing, capture_output=True, text=True
    )
    assert bad.returncode != 0 and "RDZV_ENDPOINT" in bad.stderr


def test_slurm_recipe_is_one_task_per_node_running_the_torchrun_recipe():
    text = (REPO / "cluster/slurm/train.sbatch").read_text()
    assert (
        "#SBATCH --ntasks-per-node=1" in text and "srun" in text and "cluster/torchrun.sh" in text
    )


def test_kuberay_rayjob_parses_and_its_entrypoint_exists():
    job = yaml.safe_load((REPO / "cluster/kuberay/rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    words = shlex.split(job["spec"]["entrypoint"])
    assert words[0] == "python" and (REPO / words[1]).is_file() and words[1] == "ray_jobs/train.py"
    assert job["spec"]["rayClusterSpec"]["authOptions"]["mode"] == "token"  # token auth stays on
    assert shutil.which("bash")


def test_ray_cluster_yaml_installs_weaktok_from_its_pyproject():
    text = (REPO / "cluster/ray-cluster.yaml").read_text()
    spec = yaml.safe_load(text)
    assert "example.invalid" not in text and "git clone" not in text
    assert spec["file_mounts"].get("~/weaktok") == "."
    setup = " ".join(spec["setup_commands"])
    assert "pip install -q -e ~/weaktok" in setup
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[\[<>=!~ ]", d)[0].lower() for d in deps}
    repeated = [
        n for n in names if re.search(rf"(?<![\w/-]){re.escape(n)}(?![\w-])", setup.lower())
    ]
    assert repeated == [], f"ray-cluster.yaml repeats pyproject's dependencies: {repeated}"


def test_tune_gets_tunes_checkpoint_config_which_a_function_trainable_accepts():
    """Tune's RunConfig needs ray.tune.CheckpointConfig: Ray Train's class carries a truthy ``checkpoint_at_end``
    placeholder, and Tune refuses that for function trainables (every weaktok trial is one)."""
    from ray import train, tune

    cfg = load_config("tiny", ["ray.num_to_keep=2"]).ray
    ck = checkpoint_config(cfg, for_tune=True)
    assert type(ck) is tune.CheckpointConfig and not ck.checkpoint_at_end and ck.num_to_keep == 2
    assert type(checkpoint_config(cfg)) is train.CheckpointConfig
