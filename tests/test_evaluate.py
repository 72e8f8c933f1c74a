"""Evaluation on a tiny trained model: Table 1 JSON/markdown, the plots, and the CLI's clear errors."""
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.helpers import cpu_env, venv_bin
from tests.test_generate import tiny_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    from weaktok.evaluate import evaluate

    shards, run = tiny_model(tmp_path_factory)
    out = tmp_path_factory.mktemp("eval")
    return evaluate(run, out, split="test", max_items=4, n_uncond=3, steps=2, seconds=3.0,
                    guidance_steps=3, device="cpu"), out


def test_table1_json_has_the_papers_shape(evaluated):
    table, out = evaluated
    t = json.loads((out / "table1.json").read_text())
    assert t["names"] == ["timbral", "density", "irregularity", "structural"]
    for key in ("target", "uncond", "seed", "data", "recon", "uncond_rel_err", "seed_rel_err", "uncond_g", "seed_g"):
        assert len(t[key]) == 4 and all(np.isfinite(t[key])), key
    assert t["uncond_n"] == 3 and t["seed_n"] == 4 and t["data_n"] == 4
    target, uncond = np.array(t["target"]), np.array(t["uncond"])
    assert np.allclose(t["uncond_rel_err"], (uncond - target) / np.abs(target))
    assert t["paper_rel_err"]["density"] == {"uncond": 2.70, "seed": 7.33}
    assert t["clip_seconds"] == 3.0 and t["recon_l1"] > 0
    assert 0 < t["chunks"]["boundary_rate"] <= 1 and t["chunks"]["chunks_per_s"] > 0
    assert t["goal_met"] == all(all(t["within_goal"][k]) for k in ("uncond", "seed"))  # the model alone
    assert t["goal_met_guided"] == all(all(t["within_goal"][k]) for k in ("uncond_g", "seed_g"))
    assert t["uncond_g_n"] == 3 and t["seed_g_n"] == 4 and t["generation"]["guidance_steps"] == 3
    assert t["device"] == "cpu"
    assert t == table


def test_markdown_and_plots_are_written(evaluated):
    _, out = evaluated
    md = (out / "table1.md").read_text()
    assert "| density |" in md and "+270.0 %" in md and "+733.0 %" in md and "Reconstruction L1" in md
    assert "Uncond+G" in md and "Seed+G" in md
    for name in ("lscore_hist.png", "examples_0.png", "training_curves.png"):
        assert (out / name).stat().st_size > 5000, name


def test_cli_missing_checkpoint_names_the_path(tmp_path):
    r = subprocess.run([venv_bin("weaktok"), "evaluate", "--checkpoint", str(tmp_path / "no_run"), "--out",
                        str(tmp_path / "e")], capture_output=True, text=True, env=cpu_env(), cwd=REPO, timeout=120)
    assert r.returncode == 2 and str(tmp_path / "no_run") in r.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_evaluate_on_cuda(tmp_path_factory):
    from weaktok.evaluate import evaluate

    _, run = tiny_model(tmp_path_factory)
    t = evaluate(run, tmp_path_factory.mktemp("eval_cuda"), split="test", max_items=2, n_uncond=2, steps=2,
                 seconds=2.0, guidance_steps=2, device="cuda")
    assert t["device"] == "cuda" and t["seed_n"] == 2 and t["uncond_g_n"] == 2
    assert all(np.isfinite(t[k]).all() for k in ("uncond", "seed", "uncond_g", "seed_g", "recon"))
