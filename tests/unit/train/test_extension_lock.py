"""DeepSpeed's CPU op is JIT-loaded under torch's lock file; a process killed meanwhile left the file, and every
later DeepSpeed start waited on it forever. weaktok loads the op itself under an flock the kernel releases when
its holder dies (weaktok/train/distributed.py): a torch lock found while holding it is removed."""

import logging
import subprocess
import sys
import time

from weaktok.train.distributed import FLOCK_NAME, guarded_jit_load

HOLDER = f"""
import fcntl, pathlib, sys, time
folder = pathlib.Path(sys.argv[1])
f = open(folder / "{FLOCK_NAME}", "a")
fcntl.flock(f, fcntl.LOCK_EX)
(folder / "lock").touch()   # torch's FileBaton file, as a loader has it mid-load
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
(folder / "lock").unlink()
"""


def _holder(folder, seconds):
    p = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert p.stdout.readline().strip() == "holding"
    return p


def test_a_killed_loaders_lock_is_removed_and_the_load_runs(tmp_path, caplog):
    p = _holder(tmp_path, 60)
    p.kill()  # SIGKILL mid-load: torch's lock file stays, the flock goes with the process
    p.wait()
    assert (tmp_path / "lock").exists()
    with caplog.at_level(logging.INFO, logger="weaktok.train.distributed"):
        assert guarded_jit_load(tmp_path, lambda: "loaded") == "loaded"
    assert not (tmp_path / "lock").exists() and "stale torch extension lock" in caplog.text


def test_a_live_loader_is_waited_for_and_its_lock_left_alone(tmp_path, caplog):
    p = _holder(tmp_path, 1.0)
    t0 = time.time()
    with caplog.at_level(logging.INFO, logger="weaktok.train.distributed"):
        seen = guarded_jit_load(tmp_path, lambda: (tmp_path / "lock").exists())
    p.wait()
    # it waited until the live loader finished and unlocked
    assert time.time() - t0 > 0.5 and seen is False
    assert "stale" not in caplog.text


def test_no_lock_loads_at_once(tmp_path):
    t0 = time.time()
    assert guarded_jit_load(tmp_path / "new", lambda: 7) == 7 and time.time() - t0 < 1
