"""Fixtures shared by the integration tests."""

import pytest

from tests.helpers import REPO, cpu_env, run, venv_bin


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """(out, CompletedProcess): `weaktok demo --quick` run once per session; test_demo.py checks the pipeline,
    test_report_page.py opens its listening page in Chromium (no second training)."""
    out = tmp_path_factory.mktemp("quick_demo") / "demo"
    r = run(
        [venv_bin("weaktok"), "demo", "--quick", "--out", str(out)],
        env=cpu_env(),
        cwd=REPO,
        timeout=400,
    )
    return out, r
