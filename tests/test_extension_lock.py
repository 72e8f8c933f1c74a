"""DeepSpeed's CPU op is JIT-loaded under torch's lock file; a process killed meanwhile leaves the file, and every
later start waited on it forever. setup_distributed clears such stale locks (weaktok/train/distributed.py)."""
import os
import threading
import time

import pytest

from weaktok.train import distributed as D


@pytest.fixture
def build_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    monkeypatch.setattr(D, "STALE_LOCK_S", {"built": 2.0, "building": 4.0})
    folder = tmp_path / "fake_op"
    folder.mkdir()
    return folder


def _age(path, seconds):
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_no_lock_returns_at_once(build_dir):
    assert D.clear_stale_extension_lock("fake_op") is False


def test_stale_lock_of_a_built_op_is_removed(build_dir, capsys):
    (build_dir / "fake_op.so").write_bytes(b"")
    lock = build_dir / "lock"
    lock.touch()
    _age(lock, 3.0)  # older than "built" (2 s), younger than "building" (4 s)
    assert D.clear_stale_extension_lock("fake_op", poll_s=0.05) is True
    assert not lock.exists() and "stale torch extension lock" in capsys.readouterr().out


def test_a_live_holder_is_waited_for_not_broken(build_dir):
    """A first build (no .so yet) holding the lock for 1 s: we wait until it lets go and remove nothing."""
    lock = build_dir / "lock"
    lock.touch()
    threading.Timer(1.0, lock.unlink).start()
    t0 = time.time()
    assert D.clear_stale_extension_lock("fake_op", poll_s=0.05) is False
    assert 0.9 < time.time() - t0 < 3.5


def test_an_unfinished_first_build_gets_the_long_grace(build_dir):
    lock = build_dir / "lock"
    lock.touch()
    _age(lock, 3.0)  # no .so: a first build may take minutes, so 3 s is not stale yet; 4 s is
    t0 = time.time()
    assert D.clear_stale_extension_lock("fake_op", poll_s=0.05) is True
    assert time.time() - t0 > 0.8 and not lock.exists()
