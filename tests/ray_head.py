"""Ray clusters of one test alone, and how to stop them without touching any other Ray on the machine.

    head = RayHead(port, env)              # `ray start --head` with its own temp dir and port
    head.start(); ...; head.kill()         # SIGKILL its daemons and everything under them
    kill_tree(proc)                        # a driver and the local cluster its ray.init() started

`ray stop --force` or `pkill raylet` would stop every Ray of the user: a developer's evaluation or sweep running
beside the suite died that way (docs/results.md, 2026-12-02). Nothing here does that.
"""

from __future__ import annotations

import signal
import subprocess
import tempfile

import psutil

from tests.helpers import run, venv_bin


def descendants(root: psutil.Process) -> list[psutil.Process]:
    try:
        return root.children(recursive=True)
    except psutil.Error:
        return []


def _sigkill(procs: list[psutil.Process]) -> int:
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=30)
    return len(procs)


def kill_tree(proc: subprocess.Popen) -> int:
    """SIGKILL ``proc`` and every process under it: a driver's ray.init() starts its GCS and raylet as children,
    and they would outlive the driver as orphans. Returns how many processes were killed."""
    try:
        root = psutil.Process(proc.pid)
    except psutil.Error:
        return 0
    # snapshot the tree first: once the driver dies, its orphans lose their parent
    n = _sigkill([root, *descendants(root)])
    proc.wait()
    return n


class RayHead:
    """A `ray start --head` cluster of this test alone: its own temp dir and port (and dashboard port, when
    given), so no other cluster on the machine is touched."""

    def __init__(self, port: int, env: dict, dashboard_port: int | None = None):
        self.port, self.env, self.dashboard_port = port, env, dashboard_port
        self.tmp = tempfile.mkdtemp(
            prefix="rh", dir="/tmp"
        )  # AF_UNIX socket paths must stay under 107 bytes

    def start(self) -> None:
        dashboard = ["--include-dashboard=false"]
        if self.dashboard_port is not None:
            dashboard = [
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
            ]
        run(
            [
                venv_bin("ray"),
                "start",
                "--head",
                "--node-ip-address=127.0.0.1",
                f"--port={self.port}",
                "--num-cpus=2",
                *dashboard,
                f"--temp-dir={self.tmp}",
            ],
            env=self.env,
            timeout=180,
        )

    def processes(self) -> list[psutil.Process]:
        """The cluster's daemons (their command lines name its temp dir or port) and everything under them."""
        roots = []
        for p in psutil.process_iter(["cmdline"]):
            cmd = " ".join(p.info["cmdline"] or [])
            if (
                self.tmp in cmd
                or (f"--gcs_server_port={self.port}" in cmd)
                or (f"gcs-address=127.0.0.1:{self.port}" in cmd)
            ):
                roots.append(p)
        found = {p.pid: p for p in roots}
        for p in roots:
            found.update({c.pid: c for c in descendants(p)})
        return list(found.values())

    def kill(self) -> int:
        """SIGKILL every process of this cluster (what `ray stop --force` does to every cluster)."""
        return _sigkill(self.processes())
