import subprocess
import sys
from pathlib import Path

import pytest

from weaktok.config import (
    CONFIG_DIR,
    ConfigError,
    from_dict,
    load_config,
    parse_override,
    save_config,
    shipped_configs,
    to_dict,
    with_overrides,
    with_values,
)
from weaktok.config import schema as config_schema


def test_shipped_configs_load_and_validate():
    assert {"tiny", "demo", "paper"} <= set(shipped_configs())
    for name in shipped_configs():
        cfg = load_config(name)
        assert cfg.name == name


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(
        "tiny",
        [
            "model.dim=96",
            "model.chunking.tau=0.5",
            "model.channels=[8,16,24]",
            "model.chunking.smoothing=false",
            "model.n_heads=4",
        ],
    )
    assert cfg.model.dim == 96 and cfg.model.chunking.tau == 0.5
    assert cfg.model.channels == [8, 16, 24] and cfg.model.chunking.smoothing is False


@pytest.mark.parametrize(
    "override, needle",
    [
        ("model.dmi=3", "unknown config key 'model.dmi' (did you mean 'dim'?)"),
        ("modle.dim=3", "unknown config key 'modle'"),
        ("model.dim=abc", "config key 'model.dim': expected an integer"),
        ("model.dim=1.5", "config key 'model.dim': expected an integer"),
        ("model.chunking.tau=0", "config key 'model.chunking.tau': must be > 0"),
        ("model.chunking.tau=-1", "must be > 0"),
        (
            "model.chunking.routing=sigmoid",
            "config key 'model.chunking.routing': 'sigmoid' is not one of cosine, paper",
        ),
        ("model.n_heads=3", "config key 'model.n_heads': must be >= 1 and divide model.dim"),
        ("model.channels=[1,2]", "config key 'model.channels': must list exactly 3"),
        ("model.chunking.smoothing=3", "expected true/false"),
        ("model.chunking=5", "config key 'model.chunking': expected a mapping"),
        ("audio.n_fft=1000", "config key 'audio.n_fft': must be a power of 2"),
        ("model.dim", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert needle in str(e.value)


def test_missing_and_unknown_config_sources(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="shipped: .*tiny"):
        load_config("no-such-config")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_base_chain_and_save_round_trip(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: tiny\nmodel:\n  dim: 32\n")
    cfg = load_config(child)
    assert cfg.model.dim == 32 and cfg.model.channels == load_config("tiny").model.channels
    save_config(cfg, tmp_path / "resolved.yaml")
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_parse_override_values():
    assert parse_override("a.b=1e-3") == ("a.b", 1e-3)
    assert parse_override("a=[1, 2]") == ("a", [1, 2])
    assert parse_override("a=hello") == ("a", "hello")


def test_cli_reports_config_errors_clearly():
    r = subprocess.run(
        [sys.executable, "-m", "weaktok", "config", "tiny", "model.dmi=3"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2
    assert "model.dmi" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "weaktok", "config", "tiny", "model.dim=32"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "dim: 32" in r.stdout


def test_shipped_configs_live_beside_the_package():
    assert CONFIG_DIR == Path(config_schema.__file__).parents[1] / "configs"
    assert (CONFIG_DIR / "tiny.yaml").is_file()


def test_a_resolved_config_crosses_a_process_boundary_unchanged(tmp_path):
    """What a launcher hands on (a YAML file from save_config, or to_dict's plain data) rebuilds the same Config."""
    cfg = load_config("tiny", ["model.dim=32", "train.lr=1e-3"])
    # "007" stays a string through the YAML file
    cfg = with_values(cfg, {"metrics.run_name": "007", "train.init_from": None})
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert from_dict(to_dict(cfg)) == cfg
    assert from_dict(to_dict(cfg)) is not cfg


def test_from_dict_validates_like_load_config():
    raw = to_dict(load_config("tiny"))
    raw["model"]["chunking"]["tau"] = 0
    with pytest.raises(ConfigError, match="'model.chunking.tau': must be > 0"):
        from_dict(raw)
    raw = to_dict(load_config("tiny"))
    raw["train"]["init_from"] = "/no/such/run/final/model.pt"
    with pytest.raises(ConfigError, match="train.init_from"):
        from_dict(raw)


def test_overrides_and_values_on_a_resolved_config():
    base = load_config("tiny", ["model.dim=32"])
    overrides = ["train.lr=0.002", "model.chunking.kind=fixed", "model.channels=[8,8,8]"]
    assert with_overrides(base, overrides) == load_config("tiny", ["model.dim=32", *overrides])
    assert with_overrides(base, ["train.lr=1", "train.lr=2"]).train.lr == 2.0  # in order, as typed
    v = with_values(base, {"train.lr": 0.0042, "lscore.mode": "paper"})
    assert v.train.lr == 0.0042 and v.lscore.mode == "paper" and v.model.dim == 32
    assert base.train.lr != 0.0042 and base.lscore.mode != "paper"  # the base is not touched
    with pytest.raises(ConfigError, match="unknown config key 'model.chunking.tua'"):
        with_values(base, {"model.chunking.tua": 1.0})
    with pytest.raises(ConfigError, match="'model.chunking.tau': must be > 0"):
        with_values(base, {"model.chunking.tau": 0.0})


def test_relative_paths_become_absolute_for_workers_that_run_elsewhere(tmp_path, monkeypatch):
    """Tune runs each trial in its own folder: the driver hands it absolute paths (with_absolute_paths)."""
    from weaktok.config import with_absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds.json").write_text("{}")
    cfg = load_config("tiny", ["data.shards=shards/x", "train.deepspeed_config=ds.json"])
    out = with_absolute_paths(cfg)
    assert out.data.shards == str(tmp_path / "shards" / "x")
    assert out.train.deepspeed_config == str(tmp_path / "ds.json")
    assert out.train.resume == "auto" and out.train.init_from is None  # not paths: unchanged
    same = load_config("tiny", [f"data.shards={tmp_path}"])
    assert with_absolute_paths(same, base="/elsewhere") == same
