"""Fixtures shared by the integration tests."""

import pytest

from tests.helpers import REPO, cpu_env, run, train_cmd, venv_bin


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


FLOW = [
    "model.objective=flow",
    "model.skips=known",
    "model.flow.predict=data",
    "model.positions=rotary",
    "model.chunking.train_boundaries=deterministic",
    "lscore.loss_target=surrogate",
    "lscore.target_items=16",
    "model.flow.steps=3",
]


@pytest.fixture(scope="session")
def flow_run(tmp_path_factory):
    """(shards, out, stdout): a tiny flow model trained once per session (``weaktok train``, one process, the Ray
    pool scoring validation's generations, the closed loop on, tracking as shipped). test_flow_train.py uses the
    model; test_tracking.py reads its TensorBoard run and console lines (no second training)."""
    from tests.unit.generate.test_generate import tiny_model

    shards, _ = tiny_model(tmp_path_factory)
    out = tmp_path_factory.mktemp("flow") / "run"
    r = run(
        train_cmd(
            out,
            shards,
            "train.epochs=2",
            "curriculum.warmup_epochs=0.5",  # the loop moves only while w_L > 0: both validations
            "curriculum.anneal_epochs=1",
            "lscore.pool_every=4",
            "lscore.val_items=2",
            "lscore.feedback=0.5",
            "data.num_workers=1",
            *FLOW,
        ),
        env=cpu_env(),
        cwd=REPO,
        timeout=400,
    )
    return shards, out, r.stdout + r.stderr
