"""The one rule for connecting to Ray, used by every caller (the L-Score pool, Ray Train, Tune sweeps, benchmarks).

    started = connect_ray()          # RAY_ADDRESS or an explicit address: attach; else a private local cluster

Order: reuse an already initialised Ray; else attach to the cluster named by ``address`` or, when that is None,
by the RAY_ADDRESS environment variable (``ray job submit`` sets it for jobs; ``RAY_ADDRESS=auto`` means "the
cluster `ray start` left on this machine"); else start a private local cluster with ``num_cpus`` (default: every
core). ``address="local"`` always starts our own.

Why not ``ray.init(address="auto")`` (or a bare ``ray.init()``, which does the same when a cluster was started on
this machine): "auto" also finds any cluster another process on this machine started (a test, another training
run), whose CPUs may all be taken and which disappears with that process, taking every driver attached to it down
too.

Security: token authentication stays at Ray's default (on for local clusters since 2.59; a client reads the token
from RAY_AUTH_TOKEN or ~/.ray/auth_token); nothing here turns it off. A local cluster we start serves no dashboard
(nothing listens for HTTP); a named cluster's dashboard is its operator's (cluster/ray-cluster.yaml).
"""

from __future__ import annotations

import os
from typing import Any

LOCAL = "local"  # the address that always starts a private cluster


def ray_address(address: str | None = None) -> str:
    """The address ``connect_ray`` will use: ``address``, else RAY_ADDRESS, else ``"local"``."""
    return address or os.environ.get("RAY_ADDRESS") or LOCAL


def connect_ray(
    address: str | None = None, num_cpus: int | None = None, **init_kwargs: Any
) -> bool:
    """Make sure this process is connected to Ray (the rule above); returns True only if this call started a
    local cluster (its caller then owns it: ``ray.shutdown()`` when done). ``num_cpus`` sizes a cluster we start
    and is ignored when attaching; ``init_kwargs`` go to ``ray.init`` as given."""
    import ray  # noqa: PLC0415 (heavy: launchers import this module before they validate their config)

    if ray.is_initialized():
        return False
    address = ray_address(address)
    if address != LOCAL:
        ray.init(address=address, **init_kwargs)  # a named cluster that does not answer is an error
        return False
    ray.init(
        **{"num_cpus": num_cpus or os.cpu_count() or 1, "include_dashboard": False, **init_kwargs}
    )
    return True
