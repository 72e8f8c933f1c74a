"""Ablations end to end at the smallest scale: three real (tiny, 1-epoch) training runs, each evaluated."""

import json

import pytest
import torch
import yaml

from tests.helpers import make_tiny_shards

pytestmark = pytest.mark.slow
FAST = [
    "lscore.pool_every=0",
    "lscore.val_items=0",
    "data.num_workers=1",
    "train.epochs=1",
    "data.samples_per_epoch=8",
    "metrics.enabled=false",
]


def test_ablation_compares_chunking_and_lscore_mode(tmp_path, monkeypatch):
    from weaktok.experiments.ablate import ablate

    shards = make_tiny_shards(tmp_path / "shards")
    monkeypatch.setenv("DS_ACCELERATOR", "cpu")
    out = tmp_path / "ablate"
    summary = ablate(
        "tiny", out, [f"data.shards={shards}", *FAST], max_items=2, seconds=2.0, target_items=8
    )
    v = summary["variants"]
    assert set(v) == {"dynamic", "fixed", "paper"}
    for name, r in v.items():
        assert (out / name / "final" / "model.pt").is_file() and len(
            r["table1"]["seed"]["pooled"]["mean"]
        ) == 4
    cfgs = {n: yaml.safe_load((out / n / "config.yaml").read_text()) for n in v}
    assert cfgs["fixed"]["model"]["chunking"]["kind"] == "fixed"
    assert cfgs["fixed"]["model"]["chunking"]["fixed_stride"] == 3  # tiny: target_ratio 3
    assert (
        cfgs["paper"]["lscore"]["mode"] == "paper"
        and cfgs["dynamic"]["lscore"]["mode"] == "surrogate"
    )
    for n in v:  # same data and budget
        assert (
            cfgs[n]["data"] == cfgs["dynamic"]["data"]
            and cfgs[n]["train"] == cfgs["dynamic"]["train"]
        )
    # each child trained under exactly the config the parent resolved for it, handed over as a file
    from weaktok.config import load_config, to_dict, with_overrides
    from weaktok.experiments.ablate import variants

    base = load_config("tiny", [f"data.shards={shards}", *FAST])
    for name, variant in variants(base).items():
        trained = torch.load(out / name / "final" / "model.pt", weights_only=True)["config"]
        assert trained == to_dict(with_overrides(base, variant["overrides"])), name
        cmd = (out / name / "train.log").read_text().splitlines()[0]
        assert f"--config {out / name / 'config.yaml'} --out {out / name}" in cmd
        assert cmd.endswith(f"--out {out / name}"), cmd  # no overrides after it
    md = (out / "ablation.md").read_text()
    assert "Dynamic vs fixed-grid chunking" in md and "surrogate vs paper" in md
    assert json.loads((out / "ablation.json").read_text())["variants"].keys() == v.keys()
    # a second call reuses the trained variants (no retraining)
    again = ablate(
        "tiny",
        out,
        [f"data.shards={shards}", *FAST],
        names=["fixed"],
        max_items=2,
        seconds=2.0,
        target_items=8,
    )
    assert again["variants"]["fixed"]["train_seconds"] == 0.0
    assert set(again["variants"]) == {"dynamic", "fixed", "paper"}  # earlier results kept
