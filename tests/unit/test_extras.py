"""The optional dependency groups of pyproject.toml are optional: with Ray and DeepSpeed made unimportable (a
``sys.meta_path`` finder, as if not installed), ``weaktok config`` and a real ``weaktok generate`` run, the Python
API and the training package import, and neither package gets loaded; the features that need them stop with
MissingExtra, a one-line "pip install 'weaktok[GROUP]'" (exit 2 from the CLI)."""

import json
import re
import subprocess
import sys
import tomllib

from tests.helpers import REPO, cpu_env

SCRIPT = r"""
import importlib.abc, json, os, sys

BLOCKED = {"ray", "deepspeed"}


class Absent(importlib.abc.MetaPathFinder):  # what Python raises for a package that is not installed
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)


sys.meta_path.insert(0, Absent())
out = sys.argv[1]
got = {}

import torch
import weaktok.api  # the Python API
from weaktok.cli import main
from weaktok.config import load_config
from weaktok.config.errors import MissingExtra
from weaktok.procenv import single_process_env
from weaktok.train import Dist, setup_distributed, start_pool

got["config"] = main(["config", "tiny"])
cfg = load_config("tiny")
# the session's trained tiny model (tests/unit/generate/test_generate.py), whose final/ holds its prior
got["generate"] = main(["generate", "--checkpoint", sys.argv[2], "--unconditional", "--n", "1",
                        "--seconds", "0.5", "--steps", "1", "--out", f"{out}/gen"])
got["loaded"] = sorted(m for m in sys.modules if m.partition(".")[0] in BLOCKED)


def error(fn):
    try:
        fn()
    except MissingExtra as e:
        return str(e)
    return None


cpu = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
got["pool"] = error(lambda: start_pool(cfg, cpu))
os.environ.update(single_process_env(os.environ))
got["train"] = error(lambda: setup_distributed(0))
got["sweep"] = main(["sweep", "--config", "tiny", "--space", "x.yaml", "--out", f"{out}/sweep"])
print("RESULT " + json.dumps(got))
"""


def test_core_paths_run_without_ray_and_deepspeed(tmp_path, tmp_path_factory):
    from tests.unit.generate.test_generate import tiny_model

    _, trained = tiny_model(
        tmp_path_factory
    )  # a real run, not the shards of a checkout (a clean clone has none)
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(trained)],
        env=cpu_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [line for line in r.stdout.splitlines() if line.startswith("RESULT ")]
    assert r.returncode == 0 and lines, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(lines[0].removeprefix("RESULT "))
    assert got["config"] == 0 and "name: tiny" in r.stdout
    assert got["generate"] == 0 and (tmp_path / "gen" / "uncond_00.wav").is_file()
    assert got["loaded"] == []
    assert "L-Score pool" in got["pool"] and "pip install 'weaktok[ray]'" in got["pool"]
    assert "training" in got["train"] and "pip install 'weaktok[train]'" in got["train"]
    assert got["sweep"] == 2
    (line,) = [x for x in r.stderr.splitlines() if "weaktok[ray]" in x]
    assert line.startswith("weaktok: ") and "weaktok sweep" in line


def test_the_groups_are_declared_and_make_setup_installs_them():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert extras["ray"][0].startswith("ray[") and extras["train"][0].startswith("deepspeed")
    assert sorted(extras["all"]) == sorted(
        extras["train"] + extras["ray"]
    )  # spelled out, no self-reference
    core = {re.split(r"[<>=\[ ;]", d)[0] for d in project["dependencies"]}
    assert "torch" in core and not core & {"ray", "deepspeed"}
    assert "'.[all,dev]'" in (REPO / "Makefile").read_text()
