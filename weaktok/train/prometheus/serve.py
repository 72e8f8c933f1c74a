"""Serving a registry on ``/metrics``: the port policy (``metrics.port + local_rank``, ``metrics.port: 0`` for any
free port, ``metrics.port_fallback`` for the next ports), a taken port as a clear ``MetricsPortInUse`` before
training starts, the URL (logged, and on rank 0 written to ``<out>/metrics_url.txt``), and a note when the
configured host is not a loopback address."""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server

from weaktok.config import ConfigError, MetricsConfig
from weaktok.log import ALL_RANKS

log = logging.getLogger(__name__)

FALLBACK_TRIES = 20  # metrics.port_fallback: this many ports from the configured one
URL_FILE = "metrics_url.txt"


class MetricsPortInUse(ConfigError):
    """The metrics port (``metrics.port``) is taken: a clear, user-fixable error raised before training starts."""


def serve(registry: CollectorRegistry, cfg: MetricsConfig, rank: int, local_rank: int, out: Path):
    """Start the HTTP server for ``registry``, log and record its URL; (server, thread, url). A taken port is a
    MetricsPortInUse."""
    base = cfg.port + local_rank if cfg.port else 0
    if base > 65535:
        raise ConfigError(
            f"config key 'metrics.port': {cfg.port} + local rank {local_rank} > 65535"
        )
    ports = range(base, min(base + FALLBACK_TRIES, 65536)) if cfg.port_fallback and base else [base]
    for port in ports:
        started = _bind(registry, cfg.host, port)
        if started is not None:
            server, thread = started
            break
    else:
        raise MetricsPortInUse(_in_use_message(cfg.host, list(ports), cfg.port_fallback))
    port = server.server_port
    host = cfg.host if cfg.host not in ("0.0.0.0", "::") else socket.getfqdn()
    url = f"http://{host}:{port}/metrics" if ":" not in host else f"http://[{host}]:{port}/metrics"
    moved = f" (metrics.port {base} was in use)" if port != base and base else ""
    log.info(f"metrics at {url}{moved}" + (f" (rank {rank})" if rank else ""), extra=ALL_RANKS)
    if not _is_loopback(server.server_address[0]):  # configured on purpose; say what it means
        log.info(
            f"note: metrics.host={cfg.host} serves /metrics (run names, paths, losses) without "
            "authentication to every machine that can reach this one; 127.0.0.1 keeps it local",
            extra=ALL_RANKS,
        )
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        (out / URL_FILE).write_text(url + "\n")
    return server, thread, url


def _bind(registry: CollectorRegistry, host: str, port: int):
    """Try one port: (server, thread) when serving, None when it is in use; other failures are config errors."""
    try:
        return start_http_server(port, addr=host, registry=registry)
    except socket.gaierror as e:
        raise ConfigError(f"config key 'metrics.host': cannot resolve {host!r} ({e})") from None
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            return None
        raise ConfigError(
            f"config key 'metrics.port': cannot serve metrics on {host}:{port} ({e.strerror or e})"
        ) from None


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address.split("%")[0]).is_loopback
    except ValueError:
        return False


def _in_use_message(host: str, ports: list[int], fallback: bool) -> str:
    tried = f"ports {ports[0]}-{ports[-1]} are all" if len(ports) > 1 else f"port {ports[0]} is"
    fix = "" if fallback else ", or metrics.port_fallback=true to try the next ports"
    return (
        f"config key 'metrics.port': {tried} already in use on {host} (another run's exporter?); "
        f"set metrics.port to a free port, metrics.port=0 for any free port{fix}, "
        f"or metrics.enabled=false to train without metrics"
    )
