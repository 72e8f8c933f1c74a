"""Training under faults (issue #9), with real processes: DeepSpeed over gloo on CPU, real files, a real full disk.

Each case ends in a clear error or a recovery, never in lost or corrupted data:
  * one rank SIGKILLed (not its launcher) -> the surviving rank exits within a bounded time; resume: auto loses at
    most one checkpoint interval;
  * a checkpoint folder cut short mid-write (no COMPLETE marker) is never resumed from;
  * a COMPLETE checkpoint with a garbage file -> a warning naming the folder, fallback to the previous one; none
    loadable -> a clear error;
  * the disk fills up while checkpointing (a real tmpfs) -> a loud error naming the checkpoint, the previous one
    intact and resumed from.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.helpers import REPO, cpu_env, make_tiny_shards, read_metrics, run, train_cmd, venv_bin
from weaktok.procenv import free_port

FAST = ["lscore.pool_every=0", "lscore.val_items=0", "data.num_workers=1", "metrics.enabled=false"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return make_tiny_shards(tmp_path_factory.mktemp("fault_shards"), n_train=16, n_val=4)


def _complete(run_dir: Path) -> list[int]:
    names = [p.parent.name for p in (run_dir / "checkpoints").glob("step*/COMPLETE")]
    return sorted(
        int(n[4:]) for n in names if n[4:].isdigit()
    )  # not the ones set aside as <tag>.corrupt


def _train_cmd(out: Path, shards: Path, *extra: str) -> list[str]:
    return train_cmd(out, shards, *FAST, *extra)


def _rank_processes(launcher: psutil.Process) -> dict[int, psutil.Process]:
    """The training processes under one deepspeed launcher, by their RANK."""
    out = {}
    for p in launcher.children(recursive=True):
        try:
            env = p.environ()
            if "RANK" in env and "weaktok.train" in " ".join(p.cmdline()):
                out[int(env["RANK"])] = p
        except psutil.Error:
            continue
    return out


@pytest.mark.slow
def test_sigkill_one_rank_survivor_exits_and_resume_loses_at_most_one_interval(shards, tmp_path):
    """Two simulated nodes (one deepspeed launcher each, as cluster/launch_multinode.sh runs them): SIGKILL the
    rank on node b. Node a's launcher knows nothing of it, so only the collective timeout / gloo's error can
    stop its rank: the whole job must still exit, non-zero, within a bounded time."""
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    out = tmp_path / "run"
    every = 2
    env = cpu_env(
        HOSTFILE=hostfile,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=free_port(),
        DEEPSPEED=venv_bin("deepspeed"),
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    )
    args = [
        "--config",
        "tiny",
        "--out",
        str(out),
        f"data.shards={shards}",
        "train.epochs=2",
        "data.samples_per_epoch=48",
        f"train.checkpoint_every={every}",
        "train.keep_checkpoints=10",
        "train.log_every=1",
        "train.dist_timeout_s=60",
        *FAST,
    ]
    launch = lambda node, e: subprocess.Popen(  # noqa: E731
        ["bash", str(REPO / "cluster" / "launch_multinode.sh"), *args],
        cwd=REPO,
        env={**e, "NODE_RANK": str(node)},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    procs = [launch(0, env), launch(1, env)]
    try:
        deadline = time.time() + 400
        while time.time() < deadline and not [s for s in _complete(out) if s >= 2 * every]:
            assert all(p.poll() is None for p in procs), "\n".join(
                p.stdout.read()[-3000:] for p in procs
            )
            time.sleep(0.2)
        victim = _rank_processes(psutil.Process(procs[1].pid))[1]
        survivor = _rank_processes(psutil.Process(procs[0].pid))[0]
        progress = max(r["step"] for r in read_metrics(out) if r["kind"] == "train")
        victim.send_signal(signal.SIGKILL)
        t_kill = time.time()
        codes = [p.wait(timeout=180) for p in procs]
        exit_s = time.time() - t_kill
        logs = [p.stdout.read() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert all(c != 0 for c in codes), (codes, logs[0][-3000:])
    assert not survivor.is_running() or survivor.status() == psutil.STATUS_ZOMBIE
    assert exit_s < 90, f"job took {exit_s:.0f} s to exit after one rank was killed"
    why = [line for line in logs[0].splitlines() if "Error" in line or "error" in line][-3:]
    print(
        f"\n[faults] rank 1 SIGKILLed at step >= {progress}: node-b exit {codes[1]}, node-a exit {codes[0]}, "
        f"whole job gone {exit_s:.1f} s after the kill; survivor said: {why}"
    )
    before = max(r["step"] for r in read_metrics(out) if r["kind"] == "train")
    newest = max(_complete(out))
    assert before - newest <= every, (before, newest)  # at most one checkpoint interval lost

    r = run(
        [
            venv_bin("deepspeed"),
            "--num_gpus",
            "2",
            "--master_port",
            str(free_port()),
            "--module",
            "weaktok.train",
            *args,
        ],
        env=cpu_env(),
        cwd=REPO,
        timeout=400,
    )
    assert f"resumed from {out / 'checkpoints' / f'step{newest:08d}'}" in r.stdout, r.stdout[-3000:]
    vals = [v for v in read_metrics(out) if v["kind"] == "val"]
    assert (
        vals[-1]["epoch"] == 2 and vals[-1]["step"] == 24
    )  # 2 epochs x 12 steps: the run completed exactly


@pytest.mark.slow
def test_truncated_and_corrupt_checkpoints_fall_back_then_fail_clearly(shards, tmp_path):
    out = tmp_path / "run"
    base = ["train.checkpoint_every=2", "train.keep_checkpoints=5", "data.samples_per_epoch=16"]
    run(_train_cmd(out, shards, "train.epochs=1", *base), env=cpu_env(), cwd=REPO)
    ckpts = out / "checkpoints"
    assert _complete(out) == [2, 4]
    # a write cut short: a newer folder with a truncated file and no COMPLETE marker (what a kill mid-save leaves)
    partial = ckpts / "step00000006"
    shutil.copytree(ckpts / "step00000004", partial)
    (partial / "COMPLETE").unlink()
    optim = next(partial.glob("*optim_states.pt"))
    optim.write_bytes(optim.read_bytes()[: optim.stat().st_size // 2])
    # the newest COMPLETE checkpoint holds a garbage model-states file (bit rot, a bad copy)
    model_states = ckpts / "step00000004" / "mp_rank_00_model_states.pt"
    model_states.write_bytes(os.urandom(model_states.stat().st_size))

    r = run(_train_cmd(out, shards, "train.epochs=2", *base), env=cpu_env(), cwd=REPO)
    assert (
        f"WARNING: checkpoint {ckpts / 'step00000004'} is COMPLETE but failed to load" in r.stdout
    ), r.stdout[-3000:]
    assert f"resumed from {ckpts / 'step00000002'}: step 2" in r.stdout
    assert "step00000006" not in "".join(
        line for line in r.stdout.splitlines() if "resumed" in line or "WARNING" in line
    )
    assert (
        ckpts / "step00000004.corrupt" / "COMPLETE"
    ).is_file()  # kept for inspection, never resumed again
    vals = [v for v in read_metrics(out) if v["kind"] == "val"]
    assert vals[-1]["step"] == 8 and vals[-1]["epoch"] == 2  # steps 3-4 redone, nothing else lost
    assert (
        json.loads((ckpts / "step00000006" / "COMPLETE").read_text())["step"] == 6
    )  # rewritten whole

    for tag in _complete(
        out
    ):  # now every complete checkpoint is garbage: a clear error, no silent fresh start
        f = ckpts / f"step{tag:08d}" / "mp_rank_00_model_states.pt"
        f.write_bytes(f.read_bytes()[:100])
    p = subprocess.run(
        _train_cmd(out, shards, "train.epochs=3", *base),
        env=cpu_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode != 0
    assert f"no checkpoint in {ckpts} loads" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]


@pytest.fixture
def full_disk(tmp_path):
    """Makes <run>/checkpoints run out of room after its first checkpoint; yields (how, arm, free).

    As root: a real 5.5 MB tmpfs there (one tiny checkpoint, 3.7 MB, fits; a second does not: ENOSPC); ``free``
    grows it, keeping its files, as an operator freeing space would. Without root (no mount): once the first
    checkpoint is complete, ``arm(pid)`` lowers the running trainer's file-size limit (RLIMIT_FSIZE, through
    prlimit) below the size of a checkpoint file, so the next write fails in the kernel (EFBIG); the rerun has no
    limit. WEAKTOK_TEST_NO_TMPFS=1 forces the second way."""
    target = tmp_path / "run" / "checkpoints"
    target.mkdir(parents=True)
    mounted = (
        not os.environ.get("WEAKTOK_TEST_NO_TMPFS")
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=5632k", "tmpfs", str(target)], capture_output=True
        ).returncode
        == 0
    )
    if mounted:
        yield (
            "tmpfs",
            lambda pid: None,
            lambda: subprocess.run(["mount", "-o", "remount,size=64m", str(target)], check=True),
        )
        subprocess.run(["umount", "-l", str(target)], check=False)
    else:
        limit = (
            512 * 1024
        )  # a tiny checkpoint's files are 0.95 and 2.8 MB; metrics lines are far smaller
        yield (
            "rlimit",
            lambda pid: psutil.Process(pid).rlimit(psutil.RLIMIT_FSIZE, (limit, limit)),
            lambda: None,
        )


@pytest.mark.slow
def test_disk_full_while_checkpointing_fails_loudly_and_keeps_the_previous(
    shards, tmp_path, full_disk
):
    how, arm, free = full_disk
    out = tmp_path / "run"
    ckpts = out / "checkpoints"
    cmd = _train_cmd(
        out,
        shards,
        "train.epochs=1",
        "data.samples_per_epoch=32",
        "train.checkpoint_every=2",
        "train.keep_checkpoints=1",
    )
    proc = subprocess.Popen(
        cmd, env=cpu_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.time() + 300
    while time.time() < deadline and not _complete(out) and proc.poll() is None:
        time.sleep(0.02)
    arm(proc.pid)
    log = proc.communicate(timeout=300)[0]
    assert proc.returncode != 0, log[-3000:]
    m = re.search(
        r"writing checkpoint (\S+)/step(\d{8}) failed on rank 0 \((.*?)\); the previous complete "
        r"checkpoint (\S+)/step(\d{8}) is intact and `resume: auto` will pick it",
        log,
    )
    assert m, log[-3000:]
    failed, kept = int(m.group(2)), int(m.group(5))
    assert m.group(1) == m.group(4) == str(ckpts) and kept == failed - 2 and kept >= 2
    print(
        f"\n[faults] disk full ({how}): checkpoint step {failed} failed with {m.group(3)[:120]!r}"
    )
    assert _complete(out) == [kept]
    assert not (ckpts / f"step{failed:08d}").exists()  # the partial write was removed (space back)
    assert not (out / "final").exists()
    free()
    r = run(cmd, env=cpu_env(), cwd=REPO)
    assert f"resumed from {ckpts / f'step{kept:08d}'}: step {kept}" in r.stdout, r.stdout[-3000:]
    assert [v["step"] for v in read_metrics(out) if v["kind"] == "val"] == [8]
    assert (out / "final" / "model.pt").is_file()


def test_checkpoint_listing_and_timeout_config(tmp_path):
    """Fast checks of the pieces above: what counts as a complete checkpoint, and the collective bound's key."""
    from weaktok.config import ConfigError, load_config
    from weaktok.train import complete_tags, resume_candidates

    ckpts = tmp_path / "checkpoints"
    for name, marker in [
        ("step00000002", '{"step": 2, "epoch": 0}'),
        ("step00000010", '{"step": 10, "epoch": 1}'),
        ("step00000012", None),
        ("step00000014", '{"st'),  # cut short: no / half a marker
        ("step00000016.corrupt", '{"step": 16, "epoch": 1}'),
    ]:  # set aside after a failed load
        (ckpts / name).mkdir(parents=True)
        if marker is not None:
            (ckpts / name / "COMPLETE").write_text(marker)
    assert complete_tags(ckpts) == ["step00000002", "step00000010"]  # by step, not by name
    cfg = load_config("tiny", ["train.dist_timeout_s=30"])
    assert cfg.train.dist_timeout_s == 30.0
    assert [t for _, t in resume_candidates(cfg, ckpts)] == [
        "step00000010",
        "step00000002",
    ]  # newest first
    with pytest.raises(ConfigError, match="train.dist_timeout_s"):
        load_config("tiny", ["train.dist_timeout_s=0"])
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        resume_candidates(load_config("tiny", [f"train.resume={ckpts / 'step00000012'}"]), ckpts)
