"""Prometheus monitoring: the exporter (fed records, scraped over HTTP), its port and bind policy, the shipped
Prometheus config / alert rules (promtool), and a real Prometheus server scraping a real run (every dashboard
query parses there). The dashboard's and the rules' metric names against the exporter: tests/unit/test_monitoring.py."""

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import REPO, cpu_env, make_tiny_shards, read_metrics, train_cmd
from weaktok.config import ConfigError, load_config
from weaktok.procenv import free_port
from weaktok.train.prometheus import URL_FILE, MetricsExporter, MetricsPortInUse

PROM_DIR = REPO / "cluster" / "prometheus"
DASHBOARD = REPO / "cluster" / "grafana" / "weaktok.json"
TERMS = ("timbral", "density", "irregularity", "structural")
needs_prometheus = pytest.mark.skipif(
    not shutil.which("prometheus") or not shutil.which("promtool"),
    reason="Debian prometheus not installed (make setup installs it)",
)


# ----------------------------------------------------------------------------------------------------------
# helpers


def scrape(url: str) -> dict:
    """{(sample name, sorted labels): value} from an exporter's /metrics."""
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def value(samples: dict, name: str, **labels):
    """The one sample called ``name`` whose labels include ``labels``."""
    hits = [
        v for (n, lab), v in samples.items() if n == name and labels.items() <= dict(lab).items()
    ]
    assert len(hits) == 1, (name, labels, hits)
    return hits[0]


def exporter_for(tmp_path, *overrides, rank=0, local_rank=0, target=None) -> MetricsExporter:
    cfg = load_config("tiny", list(overrides))
    return MetricsExporter(cfg, tmp_path / "run", rank=rank, local_rank=local_rank, target=target)


def train_record(step: int, **kw) -> dict:
    rec = {
        "kind": "train",
        "step": step,
        "epoch": 0,
        "progress": step / 8,
        "loss": 1.5,
        "recon": 1.0,
        "lscore_dist": 0.25,
        "ratio_loss": 0.125,
        "chunk_boundary_rate": 0.3,
        "chunk_mean_prob": 0.4,
        "chunk_mean_chunk_len": 3.5,
        "w_L": 0.0,
        "w_recon": 1.0,
        "w_ratio": 0.03,
        "phase": 1,
        "tau": 1.0,
        "lr": 1e-3,
        "samples_per_s": 40.0,
        "audio_s_per_s": 80.0,
        "step_time_s": 0.2,
        "data_wait_s": 0.5,
        "data_wait_share": 0.1,
        "nan_skipped": 0,
        "corrupt_skipped": 0,
        **{f"lscore_batch_{i}": float(i) for i in range(4)},
    }
    rec.update(kw)
    return rec


def occupied_port() -> socket.socket:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


# ----------------------------------------------------------------------------------------------------------
# the exporter


def test_exporter_serves_what_the_hooks_feed(tmp_path):
    e = exporter_for(tmp_path, target={"mean": [0.5, 2.0, 0.3, 0.7], "std": [1, 1, 1, 1]})
    try:
        assert (tmp_path / "run" / URL_FILE).read_text().strip() == e.url
        before = scrape(e.url)
        lab = {"run": "run", "rank": "0"}
        assert (
            value(before, "weaktok_train_steps_total", **lab) == 0
        )  # counters exist from the first scrape
        assert not [
            k for k in before if k[0] == "weaktok_loss"
        ]  # gauges only once they have a value
        e.on_batch(
            {"audio": [0] * 4, "skipped": 1}, {"step": 0, "nan_skipped": 0, "corrupt_skipped": 0}
        )
        e.on_log(train_record(2, nan_skipped=1, corrupt_skipped=1))
        e.on_log(train_record(4, recon=0.75, nan_skipped=3, corrupt_skipped=1, step_time_s=0.3))
        e.on_log(
            {
                "kind": "lscore_exact",
                "step": 5,
                "from_step": 4,
                "lscore_exact": [0.1, 0.2, 0.3, 0.4],
                "pool": {
                    "queue_depth": 2,
                    "max_in_flight": 4,
                    "num_actors": 2,
                    "submitted": 3,
                    "dropped": 1,
                    "clips_scored": 4,
                    "turnaround_s_per_clip": 1.5,
                    "worker_s_per_clip": 0.5,
                },
            }
        )
        e.on_validation(
            {
                "kind": "val",
                "step": 4,
                "epoch": 1,
                "val_recon": 0.9,
                "val_boundary_rate": 0.25,
                "val_mean_chunk_len": 4.0,
                "val_items": 8,
                "val_gen_uncond_lscore": [1, 2, 3, 4],
                "val_gen_seed_lscore": [5, 6, 7, 8],
                "val_gen_target": [0.5, 2.0, 0.3, 0.7],
                "val_gen_uncond_rel_err": [1, 0, 9, 4.7],
                "val_gen_seed_rel_err": [2, 1, 3, 0.5],
                "val_gen_std_dist_total": 2.5,
                "val_gen_rel_err_mean": 2.65,
            }
        )
        e.on_checkpoint(tmp_path / "ck", {"step": 4})
        e.on_epoch_end({}, tmp_path / "ck")
        s = scrape(e.url)
    finally:
        e.close()
    assert value(s, "weaktok_train_steps_total", **lab) == 4
    assert value(s, "weaktok_step", **lab) == 4
    assert time.time() - value(s, "weaktok_last_step_timestamp_seconds", **lab) < 10
    assert (
        value(s, "weaktok_loss", term="recon") == 0.75
        and value(s, "weaktok_loss", term="total") == 1.5
    )
    assert value(s, "weaktok_loss", term="ratio") == 0.125
    assert value(s, "weaktok_w_lscore", **lab) == 0.0 and value(s, "weaktok_w_recon", **lab) == 1.0
    assert value(s, "weaktok_lr", **lab) == 1e-3 and value(s, "weaktok_tau", **lab) == 1.0
    assert (
        value(s, "weaktok_samples_per_second", **lab) == 40
        and value(s, "weaktok_audio_seconds_per_second") == 80
    )
    assert value(s, "weaktok_step_time_seconds_count", **lab) == 2
    assert value(s, "weaktok_step_time_seconds_sum", **lab) == pytest.approx(0.5)
    assert value(s, "weaktok_step_time_seconds_bucket", le="0.25") == 1
    assert value(s, "weaktok_data_wait_seconds_total", **lab) == 1.0
    assert value(s, "weaktok_nan_skipped_steps_total", **lab) == 3
    assert value(s, "weaktok_corrupt_skipped_total", **lab) == 1
    assert (
        value(s, "weaktok_chunk_boundary_ratio") == 0.3
        and value(s, "weaktok_chunk_mean_boundary_prob") == 0.4
    )
    assert value(s, "weaktok_chunk_mean_length") == 3.5
    assert [value(s, "weaktok_lscore_batch", term=t) for t in TERMS] == [0, 1, 2, 3]
    assert [value(s, "weaktok_lscore_exact", term=t) for t in TERMS] == [0.1, 0.2, 0.3, 0.4]
    assert [value(s, "weaktok_lscore_target", term=t) for t in TERMS] == [0.5, 2.0, 0.3, 0.7]
    assert value(s, "weaktok_lscore_exact_lag_steps") == 1
    assert (
        value(s, "weaktok_lscore_pool_queue_depth") == 2
        and value(s, "weaktok_lscore_pool_max_in_flight") == 4
    )
    assert (
        value(s, "weaktok_lscore_pool_dropped_total") == 1
        and value(s, "weaktok_lscore_pool_submitted_total") == 3
    )
    assert value(s, "weaktok_lscore_pool_seconds_per_clip", kind="turnaround") == 1.5
    assert value(s, "weaktok_val_recon") == 0.9 and value(s, "weaktok_val_mean_chunk_length") == 4.0
    assert value(s, "weaktok_val_gen_rel_err", mode="uncond", term="irregularity") == 9
    assert value(s, "weaktok_val_gen_rel_err", mode="seed", term="irregularity") == 3
    assert [value(s, "weaktok_val_gen_lscore", mode="seed", term=t) for t in TERMS] == [5, 6, 7, 8]
    assert (
        value(s, "weaktok_val_gen_std_dist_all_terms") == 2.5
        and value(s, "weaktok_val_gen_rel_err_mean") == 2.65
    )
    assert value(s, "weaktok_validations_total") == 1 and value(s, "weaktok_checkpoints_total") == 1
    assert 0 <= value(s, "weaktok_checkpoint_age_seconds") < 10
    assert (
        value(s, "weaktok_rank_batches_total") == 1 and value(s, "weaktok_rank_samples_total") == 4
    )
    assert (
        value(s, "weaktok_rank_corrupt_skipped_total") == 1
        and value(s, "weaktok_rank_epochs_total") == 1
    )
    assert value(s, "weaktok_run_info", config="tiny", world="1") == 1
    assert all(
        dict(lab)["run"] == "run" and dict(lab)["rank"] == "0"
        for (n, lab) in s
        if n.startswith("weaktok_")
    )


def test_resumed_run_counts_from_its_resumed_totals(tmp_path):
    e = exporter_for(tmp_path, "metrics.run_name=resumed")
    try:
        e.on_batch({"audio": [0, 0]}, {"step": 100, "nan_skipped": 5, "corrupt_skipped": 7})
        e.on_log(train_record(102, nan_skipped=5, corrupt_skipped=8))
        s = scrape(e.url)
    finally:
        e.close()
    lab = {"run": "resumed", "rank": "0"}
    assert (
        value(s, "weaktok_train_steps_total", **lab) == 2 and value(s, "weaktok_step", **lab) == 102
    )
    assert (
        value(s, "weaktok_nan_skipped_steps_total", **lab) == 0
    )  # no false NaN alert after a resume
    assert value(s, "weaktok_corrupt_skipped_total", **lab) == 1


def test_binds_loopback_by_default_and_close_stops_the_server(tmp_path):
    assert (
        load_config("paper").metrics.host == "127.0.0.1"
        and load_config("paper").metrics.port == 9400
    )
    assert load_config("demo").metrics.port == 9400 and load_config("tiny").metrics.port == 0
    e = exporter_for(tmp_path)
    host, port = e.server.socket.getsockname()[:2]
    assert (host, e.server.server_address[0]) == ("127.0.0.1", "127.0.0.1")
    assert e.url == f"http://127.0.0.1:{port}/metrics"
    e.close()
    e.close()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2)


def test_port_in_use_is_a_clear_error_naming_the_key(tmp_path, caplog):
    with occupied_port() as s:
        port = s.getsockname()[1]
        with pytest.raises(MetricsPortInUse) as err:
            exporter_for(tmp_path, f"metrics.port={port}")
        assert isinstance(err.value, ConfigError)
        msg = str(err.value)
        assert (
            f"port {port} is already in use" in msg
            and "metrics.port" in msg
            and "port_fallback" in msg
        )
        assert not (tmp_path / "run" / URL_FILE).exists()
        # the documented fallback
        with caplog.at_level(logging.INFO, logger="weaktok.train.prometheus"):
            e = exporter_for(tmp_path, f"metrics.port={port}", "metrics.port_fallback=true")
        try:
            served = e.server.server_port
            assert port < served < port + 20 and e.url.endswith(f":{served}/metrics")
            assert f"(metrics.port {port} was in use)" in caplog.text
            assert scrape(e.url)
        finally:
            e.close()


def test_rank_policy_rank0_only_unless_per_rank(tmp_path):
    quiet = exporter_for(tmp_path, rank=1, local_rank=1)
    assert quiet.server is None and quiet.url is None
    quiet.on_batch({"audio": [0]}, {"step": 3})  # records, serves nothing
    while True:  # a base port whose neighbour is free too
        base = free_port()
        try:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", base + 1))
            break
        except OSError:
            continue
    e = exporter_for(
        tmp_path, f"metrics.port={base}", "metrics.per_rank=true", rank=3, local_rank=1
    )
    try:
        assert e.server.server_port == base + 1
        e.on_batch({"audio": [0, 0, 0]}, {"step": 7})
        s = scrape(e.url)
        assert (
            value(s, "weaktok_rank_samples_total", rank="3") == 3
            and value(s, "weaktok_step", rank="3") == 7
        )
        assert not (tmp_path / "run" / URL_FILE).exists()  # rank 0 writes the URL file
    finally:
        e.close()


def test_metrics_config_ranges():
    with pytest.raises(ConfigError, match="metrics.port"):
        load_config("tiny", ["metrics.port=70000"])
    with pytest.raises(ConfigError, match="metrics.host"):
        load_config("tiny", ["metrics.host="])
    with pytest.raises(ConfigError, match="metrics.per_rank"):
        load_config("tiny", ["metrics.per_rank=3"])


def test_disabled_serves_nothing(tmp_path):
    e = exporter_for(tmp_path, "metrics.enabled=false")
    assert e.server is None and not (tmp_path / "run" / URL_FILE).exists()


# ----------------------------------------------------------------------------------------------------------
# shipped Prometheus config, rules, Grafana dashboard


@needs_prometheus
def test_promtool_checks_config_and_rules():
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        r = subprocess.run(
            ["promtool", *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60
        )
        assert r.returncode == 0 and "SUCCESS" in r.stdout + r.stderr, r.stdout + r.stderr
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert jobs["weaktok"]["static_configs"][0]["targets"] == ["127.0.0.1:9400"]
    assert jobs["weaktok"]["file_sd_configs"][0]["files"] == ["trainers.json"]
    assert jobs["ray"]["file_sd_configs"][0]["files"] == [
        "/tmp/ray/prom_metrics_service_discovery.json"
    ]
    assert all("targets" in group for group in json.loads((PROM_DIR / "trainers.json").read_text()))


@needs_prometheus
def test_promtool_unit_tests_stall_and_nan_alerts_fire():
    r = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=PROM_DIR,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr
    tested = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())
    fired = {
        a["alertname"] for t in tested["tests"] for a in t["alert_rule_test"] if a["exp_alerts"]
    }
    assert {"WeaktokTrainingStalled", "WeaktokLossNaN"} <= fired


# ----------------------------------------------------------------------------------------------------------
# real runs


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("metrics_shards"))


def _train_cmd(out: Path, shards: Path, *extra: str) -> list[str]:
    return train_cmd(
        out,
        shards,
        "train.epochs=3",
        "lscore.pool_every=0",
        "lscore.val_items=0",
        "data.num_workers=1",
        *extra,
    )


@pytest.mark.slow
def test_train_with_busy_metrics_port_fails_before_training(shards, tmp_path):
    with occupied_port() as s:
        port = s.getsockname()[1]
        r = subprocess.run(
            _train_cmd(tmp_path / "run", shards, f"metrics.port={port}"),
            cwd=REPO,
            env=cpu_env(),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    assert f"config key 'metrics.port': port {port} is already in use" in r.stderr
    assert (
        not (tmp_path / "run" / "checkpoints").exists()
        and not (tmp_path / "run" / "metrics.jsonl").exists()
    )


def _prom_query(base: str, expr: str) -> dict:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        return json.loads(urllib.request.urlopen(url, timeout=10).read())
    except urllib.error.HTTPError as e:  # 400 = the expression does not parse
        return json.loads(e.read())


def _wait_for(cond, timeout: float, what: str, proc=None, log: Path | None = None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            raise AssertionError(
                f"process ended while waiting for {what}:\n{log.read_text()[-4000:] if log else ''}"
            )
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()[-4000:] if log else ''}")


def _ready(url: str) -> bool:
    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


def _logged(url: str) -> dict | None:
    """The exporter's samples once a step was logged (None before)."""
    samples = scrape(url)
    return samples if any(name == "weaktok_loss" for name, _ in samples) else None


def _stop(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.slow
@needs_prometheus
def test_real_prometheus_scrapes_a_real_training_run(shards, tmp_path):
    run_dir, train_log, prom_log = (
        tmp_path / "run",
        tmp_path / "train.log",
        tmp_path / "prometheus.log",
    )
    trainer = prom = None
    try:
        # Prometheus first, scraping the port the trainer will serve on: it sees the whole run, however fast the
        # run is (started after the trainer, it could miss a short run on an idle machine: a race, not a test)
        metrics_port, prom_port = free_port(), free_port()
        target = f"127.0.0.1:{metrics_port}"
        (tmp_path / "prometheus.yml").write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "500ms", "evaluation_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "weaktok", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        with open(prom_log, "w") as f:
            prom = subprocess.Popen(
                [
                    "prometheus",
                    f"--config.file={tmp_path / 'prometheus.yml'}",
                    f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{prom_port}",
                ],
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        base = f"http://127.0.0.1:{prom_port}"
        _wait_for(lambda: _ready(f"{base}/-/ready"), 60, "prometheus ready", prom, prom_log)

        with open(train_log, "w") as f:
            trainer = subprocess.Popen(
                # a configured peak: the MFU path runs on a CPU too (1 TFLOP/s: above any 2-core CPU's)
                _train_cmd(
                    run_dir, shards, f"metrics.port={metrics_port}", "metrics.peak_tflops=1"
                ),
                cwd=REPO,
                env=cpu_env(),
                stdout=f,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        url_file = run_dir / URL_FILE
        metrics_url = _wait_for(
            lambda: url_file.is_file() and url_file.read_text().strip(),
            120,
            URL_FILE,
            trainer,
            train_log,
        )
        assert (
            metrics_url == f"http://{target}/metrics"
            and f"metrics at {metrics_url}" in train_log.read_text()
        )

        live = _wait_for(lambda: _logged(metrics_url), 240, "a logged step", trainer, train_log)
        assert (
            value(live, "weaktok_loss", term="recon") > 0
        )  # the live endpoint of the running trainer
        assert value(live, "weaktok_train_steps_total") >= 2
        assert 0 < value(live, "weaktok_mfu_ratio") < 1
        assert value(live, "weaktok_peak_flops_per_second") == 1e12
        assert trainer.wait(timeout=240) == 0, train_log.read_text()[-4000:]

        steps = read_metrics(run_dir)
        last_step = [r for r in steps if r["kind"] == "train"][-1]["step"]
        flops = {r["model_flops_per_step"] for r in steps if r["kind"] == "train"}
        assert len(flops) == 1 and flops.pop() > 0  # counted once, in every train record
        window = "[10m]"
        mfu = _prom_query(base, f"max_over_time(weaktok_mfu_ratio{window})")["data"]["result"]
        assert 0 < float(mfu[0]["value"][1]) < 1
        up = _prom_query(base, f'max_over_time(up{{job="weaktok"}}{window})')["data"]["result"]
        assert up and float(up[0]["value"][1]) == 1
        lo = _prom_query(base, f"min_over_time(weaktok_train_steps_total{window})")["data"][
            "result"
        ]
        hi = _prom_query(base, f"max_over_time(weaktok_train_steps_total{window})")["data"][
            "result"
        ]
        assert len(hi) == 1 and hi[0]["metric"]["run"] == "run" and hi[0]["metric"]["rank"] == "0"
        lo, hi = float(lo[0]["value"][1]), float(hi[0]["value"][1])
        assert 0 <= lo < hi <= last_step and hi >= last_step / 2, (
            lo,
            hi,
            last_step,
        )  # it increased while scraped
        n = _prom_query(base, f"count_over_time(weaktok_train_steps_total{window})")["data"][
            "result"
        ]
        assert float(n[0]["value"][1]) >= 3
        losses = _prom_query(base, f"last_over_time(weaktok_loss{window})")["data"]["result"]
        assert {r["metric"]["term"] for r in losses} == {"total", "recon", "lscore_dist", "ratio"}
        assert all(0 <= float(r["value"][1]) < 1e6 for r in losses)
        vals = _prom_query(base, f"max_over_time(weaktok_validations_total{window})")["data"][
            "result"
        ]
        assert float(vals[0]["value"][1]) >= 2

        dash = json.loads(DASHBOARD.read_text())  # every dashboard query parses on a real server
        for t in (t for p in dash["panels"] for t in p.get("targets", [])):
            expr = (
                t["expr"]
                .replace("$__rate_interval", "1m")
                .replace("$__range", "10m")
                .replace("$run", ".*")
                .replace("$term", ".*")
            )
            answer = _prom_query(base, expr)
            assert answer["status"] == "success", (expr, answer)
    finally:
        _stop(trainer)
        _stop(prom)
