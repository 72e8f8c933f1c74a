"""`weaktok demo --quick`: the whole pipeline (corpus, shards, 2 DeepSpeed ranks, evaluation, generation, report,
listening page) at smoke-test scale, then a re-run that reuses what exists. The first run is the session fixture
``quick_demo`` (conftest.py), shared with test_report_page.py."""

import json
import re

import pytest

from tests.helpers import REPO, cpu_env, run, venv_bin

pytestmark = pytest.mark.slow


def test_quick_demo_end_to_end_then_reuse(quick_demo):
    out, r = quick_demo  # tests/integration/conftest.py
    assert "Prometheus metrics live at http://127.0.0.1:" in r.stdout
    assert f"Report: {out / 'report.md'}" in r.stdout
    last = r.stdout.strip().splitlines()[-1]  # the listening page's path comes last
    assert last.endswith(str((out / "index.html").resolve())) and "Listening page" in last
    for k in range(1, 7):
        assert f"=== [{k}/6]" in r.stdout
    report = (out / "report.md").read_text()
    links = re.findall(r"\]\(([^)]+)\)", report)
    assert len(links) >= 10
    for link in links:  # every image, WAV and spectrogram the report links exists
        assert (out / link).is_file(), link
    assert "## Table 1" in report and "| density |" in report and "Research goal" in report
    # the 2-rank child was started on the resolved config file, with no overrides of its own
    cmd = (out / "train" / "train.log").read_text().splitlines()[0]
    assert "--module weaktok.train" in cmd and "=" not in cmd
    assert cmd.endswith(f"--config {out / 'train' / 'config.yaml'} --out {out / 'train'}"), cmd
    timings = json.loads((out / "timings.json").read_text())["timings"]
    assert set(timings) >= {"corpus", "shards", "train", "evaluate", "generate", "report", "total"}
    table = json.loads((out / "eval" / "table1.json").read_text())
    for mode in ("uncond", "seed"):  # Table 1 on the held-out eval split, with its baselines
        assert len(table[mode]["pooled"]["mean"]) == len(table["target"][mode]["mean"]) == 4
        assert (
            table["baselines"]["data"][mode]["n"] == 24
        )  # the quick demo's eval corpus: every item scored
    assert table["split"] == "eval" and table["eval_shards"].endswith("shards-eval")
    assert len(list((out / "generate" / "unconditional").glob("*.wav"))) == 2
    assert len(list((out / "generate" / "seed").glob("*.png"))) == 1

    again = run(
        [venv_bin("weaktok"), "demo", "--quick", "--out", str(out)],
        env=cpu_env(),
        cwd=REPO,
        timeout=300,
    )
    for what in ("the corpus", "the shards", "the finished run"):
        assert f"reusing {what}" in again.stdout
    assert (
        again.stdout.count("reusing the corpus") == again.stdout.count("reusing the shards") == 2
    )  # train + eval
    assert "DeepSpeed ranks" not in again.stdout  # no training the second time
