"""weaktok/launch/local.py: a training subprocess gets the parent's resolved config as a file and no overrides."""

import json
import sys

from weaktok.config import load_config, to_dict
from weaktok.launch import local
from weaktok.launch.local import train_command, train_subprocess


def test_the_command_line_names_the_resolved_file_and_carries_no_overrides(tmp_path):
    resolved = tmp_path / "run" / "config.yaml"
    one = train_command(resolved, tmp_path / "run", ranks=1)
    assert one[1:] == [
        "-m",
        "weaktok",
        "train",
        "--config",
        str(resolved),
        "--out",
        str(tmp_path / "run"),
    ]
    two = train_command(resolved, tmp_path / "run", ranks=2)
    assert (
        two[two.index("--module") + 1] == "weaktok.train"
        and two[two.index("--num_gpus") + 1] == "2"
    )
    assert two[-4:] == ["--config", str(resolved), "--out", str(tmp_path / "run")]
    assert not [a for a in one + two if "=" in a]  # no key=value anywhere


def test_the_child_reads_exactly_the_parents_config(tmp_path, monkeypatch):
    """The child (here a stand-in that loads --config the way `weaktok train` does and prints it) sees the
    parent's Config, field for field."""
    cfg = load_config("tiny", ["model.dim=32", "train.lr=0.0042", "data.shards=/somewhere/shards"])
    child = (
        "import json, sys; from weaktok.config import load_config, to_dict; "
        "a = sys.argv[1:]; assert not [x for x in a if '=' in x], a; "
        "print('[weaktok] CONFIG ' + json.dumps(to_dict(load_config(a[a.index('--config') + 1]))))"
    )
    sent = {}

    def stand_in(config_path, out, ranks):
        sent["cmd"] = train_command(config_path, out, ranks)
        return [sys.executable, "-c", child, *sent["cmd"][sent["cmd"].index("--config") :]]

    monkeypatch.setattr(local, "train_command", stand_in)
    lines = []
    train_subprocess(cfg, tmp_path / "run", on_line=lines.append)
    (line,) = [x for x in lines if x.startswith("[weaktok] CONFIG ")]
    assert json.loads(line.split(" ", 2)[2]) == to_dict(cfg)
    assert load_config(tmp_path / "run" / "config.yaml") == cfg
    assert sent["cmd"][sent["cmd"].index("--config") + 1] == str(tmp_path / "run" / "config.yaml")
    assert (tmp_path / "run" / "train.log").read_text().startswith("$ ")
