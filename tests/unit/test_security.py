"""Security defaults (issue #9).

* Every server weaktok starts binds 127.0.0.1 unless configured: the Prometheus exporter (behaviour tested in
  tests/integration/test_metrics.py::test_binds_loopback_by_default_and_close_stops_the_server; here: the default
  and a scan for hard-coded wildcard binds), the documented Prometheus command, Ray's dashboard (off in every local
  cluster weaktok starts: weaktok/ray_cluster.py, the one place that calls ray.init; the multi-node cluster head is
  the one documented exception and keeps token auth).
* Every ``torch.load`` in the code passes ``weights_only=True``; nothing unpickles (AST scan).
* Ray token authentication is never switched off (scan of code and scripts).
* Shards: a ``pipe:`` or URL shard folder is refused with a clear error; a malicious ``.pyd``/``.pickle``/``.pth``
  member is never unpickled by either loader; shard files are opened as local files even when their names look
  like commands.
"""

import ast
import io
import json
import logging
import pickle
import re
import tarfile
from pathlib import Path

import pytest
import torch

from tests.helpers import REPO
from tests.unit.data.test_loader import make_shards
from weaktok.config import ConfigError, MetricsConfig, load_config
from weaktok.data.loader import eval_loader, train_loader
from weaktok.data.manifest import MANIFEST, ShardsError, sha256_file, write_manifest

PY = sorted((REPO / "weaktok").rglob("*.py")) + sorted((REPO / "ray_jobs").glob("*.py"))
SCRIPTS = sorted(
    p
    for p in [*(REPO / "cluster").rglob("*"), *(REPO / "ray_jobs").rglob("*"), REPO / "Makefile"]
    if p.is_file() and p.suffix in ("", ".sh", ".yaml", ".yml", ".json", ".py")
)


def _calls(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.AST) -> str:
    """Dotted name of a call's function: torch.load, pickle.loads, np.load, ..."""
    parts = []
    while isinstance(func, ast.Attribute):
        parts.append(func.attr)
        func = func.value
    if isinstance(func, ast.Name):
        parts.append(func.id)
    return ".".join(reversed(parts))


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


# ----------------------------------------------------------------------------------------------------------
# deserialisation


def test_scan_finds_the_files():
    # the training package's files too (weaktok/train/: its torch.load calls are in resume.py)
    assert len(PY) > 20 and any(p.parts[-2:] == ("train", "resume.py") for p in PY)
    assert any(p.name == "submit.sh" for p in SCRIPTS)


def scan_torch_load(paths) -> tuple[int, list[str]]:
    """(torch.load calls seen, those without weights_only=True)."""
    found, bad = 0, []
    for path in paths:
        for call in _calls(path):
            if _name(call.func) == "torch.load":
                found += 1
                wo = _kw(call, "weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    bad.append(f"{path.name}:{call.lineno}")
    return found, bad


def scan_unsafe_loads(paths) -> list[str]:
    bad = []
    for path in paths:
        for call in _calls(path):
            name = _name(call.func)
            where = f"{path.name}:{call.lineno} {name}"
            if re.fullmatch(
                r"(c?[Pp]ickle|dill|joblib|cloudpickle|marshal|shelve)\.(loads?|Unpickler|open)",
                name,
            ):
                bad.append(where)
            if name in ("np.load", "numpy.load"):
                ap = _kw(call, "allow_pickle")
                if isinstance(ap, ast.Constant) and ap.value is True:
                    bad.append(where + " allow_pickle=True")
            if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
                bad.append(where)
            if re.fullmatch(
                r"(wds|webdataset)\.(decode|WebDataset|torch_loads|autodecode\..*)", name
            ):
                bad.append(where + " (webdataset decoders unpickle .pyd/.pickle/.pth members)")
    return bad


def scan_wildcard_binds(paths) -> list[str]:
    """A wildcard address literal anywhere but in a comparison (the exporter compares to print a reachable URL),
    or any bind/serve call given "" or a wildcard."""
    bad = []
    for path in paths:
        tree = ast.parse(path.read_text())
        compared = {
            id(c)
            for node in ast.walk(tree)
            if isinstance(node, ast.Compare)
            for c in ast.walk(node)
        }
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and node.value in ("0.0.0.0", "::")
                and id(node) not in compared
            ):
                bad.append(f"{path.name}:{node.lineno} {node.value!r}")
        for call in _calls(path):
            if re.search(
                r"(^|\.)(bind|start_http_server|start_wsgi_server|serve|run_simple|make_server)$",
                _name(call.func),
            ):
                for arg in [*call.args, *(k.value for k in call.keywords)]:
                    for c in ast.walk(arg):
                        if isinstance(c, ast.Constant) and c.value in ("0.0.0.0", "::", ""):
                            bad.append(f"{path.name}:{call.lineno} binds {c.value!r}")
    return bad


def test_every_torch_load_uses_weights_only_true():
    found, bad = scan_torch_load(PY)
    assert not bad, f"torch.load without weights_only=True: {bad}"
    assert (
        found >= 2
    )  # the scan sees the real call sites (generate.py loads checkpoints and cached stats)


def test_nothing_unpickles_or_loads_unsafely():
    bad = scan_unsafe_loads(PY)
    assert not bad, f"unsafe deserialisation: {bad}"


def test_security_scans_would_catch_a_violation(tmp_path):
    """The scanners are not vacuous: each flags a planted violation."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch, pickle, numpy as np, webdataset as wds\n"
        "torch.load('x.pt')\n"
        "torch.load('y.pt', weights_only=False)\n"
        "torch.load('z.pt', weights_only=True)\n"
        "pickle.loads(b'')\n"
        "np.load('a.npy', allow_pickle=True)\n"
        "ds = wds.WebDataset('x.tar')\n"
        "HOST = '0.0.0.0'\n"
        "server.bind(('', 80))\n"
    )
    assert scan_torch_load([bad]) == (3, ["bad.py:2", "bad.py:3"])
    assert len(scan_unsafe_loads([bad])) == 3
    assert scan_wildcard_binds([bad]) == ["bad.py:8 '0.0.0.0'", "bad.py:9 binds ''"]


class _Exploit:
    """Unpickling this creates ``marker``: the proof that something unpickled shard data."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _add_members(shard: Path, members: dict[str, bytes]):
    with tarfile.open(shard) as t:
        old = [(m, t.extractfile(m).read()) for m in t.getmembers()]
    with tarfile.open(shard, "w") as t:
        for m, data in old:
            t.addfile(m, io.BytesIO(data))
            key = m.name.split(".", 1)[0]
            if m.name.endswith(".json"):  # after each item's last member: same key, new extensions
                for ext, payload in members.items():
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    t.addfile(info, io.BytesIO(payload))


def _poison(shards: Path, marker: Path):
    payload = pickle.dumps(_Exploit(str(marker)))
    pth = io.BytesIO()
    torch.save({"x": _Exploit(str(marker))}, pth)
    manifest = json.loads((shards / MANIFEST).read_text())
    for split in ("train", "val"):
        for entry in manifest["splits"][split]["shards"]:
            _add_members(
                shards / entry["file"],
                {
                    "pyd": payload,
                    "pickle": payload,
                    "pth": pth.getvalue(),
                    "cls": payload,
                    "npy": payload,
                },
            )
            entry["sha256"] = sha256_file(shards / entry["file"])
    write_manifest(shards, manifest)
    assert pickle.loads(payload) is None and marker.exists()  # the payload really works...
    marker.unlink()  # ...and is armed again


@pytest.mark.parametrize("workers", [0, 2])
def test_malicious_pickle_members_are_never_unpickled(tmp_path, workers):
    shards = make_shards(tmp_path / "s")
    marker = tmp_path / "PWNED"
    _poison(shards, marker)
    keys = [
        k for b in eval_loader(str(shards), "val", 4, 0.5, num_workers=workers) for k in b["keys"]
    ]
    assert len(keys) == 24  # the items themselves still load (their .flac and .json are fine)
    batches = list(train_loader(str(shards), 4, 0.5, 16, num_workers=workers, shuffle_buffer=4))
    assert len(batches) == 4 and set(batches[0]) == {"audio", "lscore", "keys", "skipped"}
    assert sum(b["skipped"] for b in batches) == 0
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# pipe: and URL shard locations


@pytest.mark.parametrize(
    "url",
    [
        "pipe:touch {marker}",
        "pipe:curl -s http://127.0.0.1:9/x.tar",
        "http://127.0.0.1:9/shards",
        "s3://bucket/shards",
        "file:///etc",
    ],
)
def test_url_and_pipe_shard_folders_are_refused(tmp_path, url):
    marker = tmp_path / "PWNED"
    url = url.format(marker=marker)
    with pytest.raises(
        ShardsError, match="looks like a URL or a pipe: command; weaktok reads local shard folders"
    ):
        train_loader(url, 2, 0.5, 4, num_workers=0)
    with pytest.raises(ShardsError, match="looks like a URL or a pipe: command"):
        eval_loader(url, "val", 2, 0.5)
    with pytest.raises(
        ConfigError, match="config key 'data.shards': must be a local folder, not a URL or pipe:"
    ):
        load_config("tiny", [f"data.shards={url}"])
    assert not marker.exists()


def test_a_local_folder_named_like_a_pipe_command_is_read_as_files(tmp_path, monkeypatch):
    """The old loader passed "pipe:touch PWNED;true/train-000000.tar" to webdataset's gopen, which ran it in a
    shell. Now the bare name is refused and ./name reads the folder's files (absolute paths, builtin open)."""
    monkeypatch.chdir(tmp_path)
    name = "pipe:touch PWNED;true"
    make_shards(tmp_path / name)
    with pytest.raises(ShardsError, match="looks like a URL"):
        eval_loader(name, "val", 4, 0.5)
    keys = [k for b in eval_loader(f"./{name}", "val", 4, 0.5) for k in b["keys"]]
    keys += [k for b in train_loader(f"./{name}", 4, 0.5, 8, num_workers=0) for k in b["keys"]]
    assert len(keys) == 32
    assert not (tmp_path / "PWNED").exists() and not list(tmp_path.rglob("PWNED"))


def test_manifest_entries_that_look_like_commands_are_opened_as_files(tmp_path):
    shards = make_shards(tmp_path / "s")
    marker = tmp_path / "PWNED"
    manifest = json.loads((shards / MANIFEST).read_text())
    entry = manifest["splits"]["val"]["shards"][0]
    evil = f"pipe:touch {marker.name}"
    (shards / entry["file"]).rename(shards / evil)  # a shard file with that name really exists
    entry["file"] = evil
    write_manifest(shards, manifest)
    keys = [k for b in eval_loader(str(shards), "val", 4, 0.5) for k in b["keys"]]
    assert len(keys) == 24 and not marker.exists() and not (shards / marker.name).exists()
    entry["file"] = f"pipe:touch {marker}"  # with a path separator: not a plain file name
    write_manifest(shards, manifest)
    with pytest.raises(ShardsError, match="entries must be plain file names"):
        eval_loader(str(shards), "val", 4, 0.5)
    assert not marker.exists()


# ----------------------------------------------------------------------------------------------------------
# servers bind loopback unless configured


def test_exporter_default_bind_is_loopback_in_every_shipped_config():
    assert MetricsConfig().host == "127.0.0.1"
    from weaktok.config import shipped_configs

    for name in shipped_configs():
        assert load_config(name).metrics.host == "127.0.0.1", name


def test_no_code_binds_a_wildcard_address_by_default():
    bad = scan_wildcard_binds(PY)
    assert not bad, f"wildcard binds: {bad}"


def test_ray_dashboard_is_off_or_loopback_in_code():
    for path in PY:
        for call in _calls(path):
            if _name(call.func) in ("ray.init",):
                host = _kw(call, "dashboard_host")
                assert host is None or (
                    isinstance(host, ast.Constant) and host.value == "127.0.0.1"
                ), f"{path}:{call.lineno}"
    policy = (REPO / "weaktok/ray_cluster.py").read_text()
    assert (
        '"include_dashboard": False' in policy
    )  # a local cluster we start serves no dashboard at all


def test_every_ray_connection_goes_through_the_one_policy():
    """weaktok/ray_cluster.py's connect_ray is the only ray.init in the code: nothing attaches with a bare
    ``ray.init()`` / ``address="auto"`` (any cluster on the machine) or starts a cluster with a dashboard."""
    calls = [
        f"{path.relative_to(REPO)}:{call.lineno}"
        for path in PY
        for call in _calls(path)
        if _name(call.func) == "ray.init"
    ]
    assert calls and all(c.startswith("weaktok/ray_cluster.py:") for c in calls), calls


def test_scripts_bind_loopback_except_the_documented_cluster_head():
    """0.0.0.0 in cluster/ and ray_jobs/ only where a remote client must reach the service: the multi-node Ray
    head's dashboard/job server (token auth on, see the next test)."""
    allowed = {
        ("cluster/ray-cluster.yaml", "ray start --head --port=6379 --dashboard-host=0.0.0.0")
    }
    hits = set()
    for path in SCRIPTS:
        for line in path.read_text(errors="replace").splitlines():
            if "0.0.0.0" in line and not line.lstrip().startswith("#"):
                hits.add(
                    (str(path.relative_to(REPO)), line.strip().split(" --metrics")[0].lstrip("- "))
                )
    assert hits <= allowed, hits - allowed
    prom = (REPO / "cluster/prometheus/prometheus.yml").read_text()
    assert "--web.listen-address=127.0.0.1:" in prom  # the documented way to start Prometheus
    submit = (REPO / "ray_jobs/submit.sh").read_text()
    assert "RAY_ADDRESS=${RAY_ADDRESS:-http://127.0.0.1:8265}" in submit


AUTH_SET = re.compile(
    r"RAY_AUTH_MODE['\"]?\]?\s*(?:[:=]|,)\s*['\"]?(?:\$\{RAY_AUTH_MODE:-)?([A-Za-z_]*)"
)


def scan_ray_auth(paths) -> list[str]:
    """Any place that sets RAY_AUTH_MODE to anything but token, or otherwise turns Ray auth off."""
    bad = []
    for path in paths:
        text = path.read_text(errors="replace")
        for m in AUTH_SET.finditer(text):
            if m.group(1) != "token":
                bad.append(f"{path.name}: {m.group(0)}")
        if re.search(
            r"auth_mode\s*=\s*['\"](?!token)|--disable-auth|RAY_AUTH_MODE\s+disabled", text
        ):
            bad.append(path.name)
    return bad


def test_ray_token_auth_is_never_switched_off(tmp_path):
    assert not scan_ray_auth([*PY, *SCRIPTS])
    submit = (REPO / "ray_jobs/submit.sh").read_text()
    assert (
        "export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}" in submit
    )  # the job client asks for token auth
    planted = []
    for i, line in enumerate(
        [
            'os.environ["RAY_AUTH_MODE"] = "disabled"',
            "export RAY_AUTH_MODE=disabled",
            'env = {"RAY_AUTH_MODE": "none"}',
            "RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled} ray start",
        ]
    ):
        planted.append(tmp_path / f"planted{i}.sh")
        planted[-1].write_text(line + "\n")
    assert len(scan_ray_auth(planted)) == 4  # the scanner catches each way of switching it off


def test_exporter_binds_loopback_unless_configured_and_says_so_when_not(tmp_path, caplog):
    from weaktok.train.prometheus import MetricsExporter

    caplog.set_level(logging.INFO, logger="weaktok")
    e = MetricsExporter(load_config("tiny"), tmp_path / "a", rank=0, local_rank=0)
    try:
        assert e.server.server_address[0] == "127.0.0.1"
        assert "note: metrics.host" not in caplog.text
    finally:
        e.close()
    caplog.clear()
    e = MetricsExporter(
        load_config("tiny", ["metrics.host=0.0.0.0"]), tmp_path / "b", rank=0, local_rank=0
    )
    try:
        assert e.server.server_address[0] == "0.0.0.0"  # configured: honoured...
        assert "note: metrics.host=0.0.0.0 serves /metrics" in caplog.text  # ...and said out loud
    finally:
        e.close()
