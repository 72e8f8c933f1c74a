"""The shipped monitoring files against the real exporter: every metric the Grafana dashboard, the alert rules and
their promtool tests name is one the exporter's registry has, counters (and histogram series) are read only
through rate()/increase(), every name follows Prometheus' naming conventions, and the Grafana provisioning files
load the dashboard (and match the docker command in docs/monitoring.md)."""

import json
import re
import shlex

import pytest
import torch
import yaml

from tests.helpers import REPO
from weaktok.config import load_config
from weaktok.lscore.exact import LSCORE_NAMES
from weaktok.train.prometheus import MetricsExporter
from weaktok.train.prometheus.metrics import (
    LOSS_TERMS,
    POOL_COUNTERS,
    POOL_GAUGES,
    POOL_LATENCY,
    TRAIN_GAUGES,
    VAL_GAUGES,
    VAL_TERMS,
)

GRAFANA = REPO / "cluster" / "grafana"
PROM_DIR = REPO / "cluster" / "prometheus"
NAME = re.compile(r"\bweaktok_[A-Za-z0-9_]+")
READ_AS_RATE = re.compile(r"\b(rate|irate|increase)\(\s*$")


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, str]:
    """{sample name: its family's type} of an exporter on a CUDA device (its memory gauges read torch.cuda at
    scrape time: 0 without CUDA) after every hook fired with every record field the tables name."""
    tmp = tmp_path_factory.mktemp("monitoring")
    cfg = load_config("tiny", ["metrics.enabled=false"])
    e = MetricsExporter(cfg, tmp / "run", target={"mean": [1] * 4}, device=torch.device("cuda"))
    e.on_batch({"audio": [0]}, {"step": 0})
    train = {k: 1.0 for k in [*TRAIN_GAUGES, *LOSS_TERMS, "step_time_s", "nan_skipped"]}
    e.on_log({"kind": "train", **train, "step": 2, **{f"lscore_batch_{i}": 1.0 for i in range(4)}})
    pool = {
        **{k: 1 for k in [*POOL_GAUGES, *POOL_COUNTERS]},
        **dict.fromkeys(POOL_LATENCY.values(), 1),
    }
    e.on_log(
        {"kind": "lscore_exact", "step": 2, "from_step": 2, "lscore_exact": [1] * 4, "pool": pool}
    )
    val = {f"val_gen_{m}_{k}": [1] * 4 for m in ("uncond", "seed") for k in VAL_TERMS}
    e.on_validation({**dict.fromkeys(VAL_GAUGES, 1), **val})
    e.on_checkpoint(tmp / "ck", {})
    e.on_epoch_end({}, tmp / "ck")
    return {s.name: fam.type for fam in e.registry.collect() for s in fam.samples}


def dashboard_exprs() -> list[str]:
    dash = json.loads((GRAFANA / "weaktok.json").read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def is_rate_read(name: str, kind: str) -> bool:
    """Series that only make sense as a rate: counters and a histogram's bucket / sum / count."""
    return kind == "counter" or (
        kind == "histogram" and name.endswith(("_bucket", "_sum", "_count"))
    )


def test_every_queried_metric_is_exported_and_counters_are_read_as_rates(exported):
    dash = json.loads((GRAFANA / "weaktok.json").read_text())
    exprs = dashboard_exprs() + rule_exprs()
    tested = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())
    series = [s["series"] for t in tested["tests"] for s in t["input_series"]]
    used = {
        n for text in [*exprs, *series, json.dumps(dash["templating"])] for n in NAME.findall(text)
    }
    assert not used - set(exported), f"not exported: {sorted(used - set(exported))}"
    for expr in exprs:
        for m in NAME.finditer(expr):
            if is_rate_read(m.group(), exported[m.group()]):
                assert READ_AS_RATE.search(expr[: m.start()]), f"{m.group()} without rate(): {expr}"
    # the new panels: MFU and the GPU memory gauges
    assert {"weaktok_mfu_ratio", "weaktok_gpu_memory_max_allocated_bytes"} <= used


def test_metric_names_follow_the_prometheus_conventions(exported):
    families = {}  # family name -> type, from the samples (a counter's family drops its _total)
    for name, kind in exported.items():
        assert re.fullmatch(r"weaktok_[a-z][a-z0-9_]*", name), (
            f"not lower-case snake weaktok_*: {name}"
        )
        assert "share" not in name, f"{name}: a fraction is a _ratio"
        assert not re.search(
            r"_(ms|milliseconds|minutes|hours|kb|mb|gb|kilobytes|megabytes)(_|$)", name
        ), name
        if kind == "counter":
            assert name.endswith(("_total", "_created")), f"counter without _total: {name}"
        elif kind in ("gauge", "info"):
            assert not name.endswith(("_total", "_count", "_sum", "_bucket")), f"{kind} {name}"
        families[name] = kind
    assert "weaktok_train_steps_total" in families and "weaktok_run_info" in families
    for key in ("data_wait_share", "chunk_boundary_rate", "mfu"):  # fractions: _ratio
        assert TRAIN_GAUGES[key][0].endswith("_ratio")
    assert all(f"weaktok_gpu_memory_{k}_bytes" in families for k in ("allocated", "reserved"))
    assert len(LSCORE_NAMES) == 4


def test_alert_rules_cover_the_failures_we_promise():
    names = {
        r["alert"]
        for g in yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
        for r in g["rules"]
    }
    assert {
        "WeaktokTrainingStalled",
        "WeaktokLossNaN",
        "WeaktokThroughputDrop",
        "WeaktokLScorePoolBacklog",
        "WeaktokCheckpointStale",
    } <= names


def test_grafana_provisioning_loads_the_dashboard_as_documented():
    dash = json.loads((GRAFANA / "weaktok.json").read_text())
    assert dash["uid"] and dash["title"] and dash["panels"]
    ds_vars = [v for v in dash["templating"]["list"] if v["type"] == "datasource"]
    assert (
        ds_vars and ds_vars[0]["query"] == "prometheus"
    )  # any Prometheus datasource, the provisioned one too
    targets = [t for p in dash["panels"] for t in p.get("targets", [])]
    assert all(t["datasource"]["uid"] == f"${{{ds_vars[0]['name']}}}" for t in targets)
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for want in (
        "loss",
        "curriculum",
        "throughput",
        "boundary",
        "chunk length",
        "l-score vs target",
        "data wait",
        "pool queue",
        "mfu",
        "gpu memory",
    ):
        assert want in titles, want

    prov = GRAFANA / "provisioning"
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())
    assert ds["apiVersion"] == 1
    (source,) = ds["datasources"]
    assert source["type"] == "prometheus" and source["access"] == "proxy" and source["isDefault"]
    assert re.fullmatch(r"http://[\w.-]+:9090", source["url"])
    boards = yaml.safe_load((prov / "dashboards" / "weaktok.yaml").read_text())
    assert boards["apiVersion"] == 1
    (provider,) = boards["providers"]
    assert provider["type"] == "file"
    # the documented command mounts cluster/grafana at the provider's path and the two provisioning folders
    doc = (REPO / "docs" / "monitoring.md").read_text()
    (cmd,) = re.findall(r"```bash\n(docker run .*?)```", doc, re.S)
    args = shlex.split(cmd.replace("\\\n", " "))
    assert args[-1].startswith("grafana/grafana")
    mounts = {}
    for flag, value in zip(args, args[1:]):
        if flag == "-v":
            host, container = value.split(":")[:2]
            mounts[container] = host.replace("$PWD/", "").replace('"', "")
    assert mounts[provider["options"]["path"]] == "cluster/grafana"
    assert (
        mounts["/etc/grafana/provisioning/datasources"]
        == "cluster/grafana/provisioning/datasources"
    )
    assert (
        mounts["/etc/grafana/provisioning/dashboards"] == "cluster/grafana/provisioning/dashboards"
    )
    assert (
        "host.docker.internal" in source["url"]
        and "--add-host=host.docker.internal:host-gateway" in args
    )
