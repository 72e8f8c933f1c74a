"""Where Ray persists a run and which checkpoints it keeps: shared by Ray Train (weaktok/launch/ray_train.py) and
Tune sweeps (weaktok/launch/sweep.py, weaktok/launch/trial.py).

``storage_location``: a URI (``s3://bucket/runs``, ``gs://...``, any ``scheme://``) is handed to Ray as written (Ray
reads and writes it through pyarrow's filesystems); anything else is a local folder, resolved to an absolute path.
``checkpoint_config``: the config's ``ray:`` section as ``ray.train.CheckpointConfig`` (``num_to_keep: 0`` = keep
every checkpoint, Ray's own default).
"""

from __future__ import annotations

import re
from pathlib import Path

from weaktok.config import RayConfig

URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(path: str | Path) -> bool:
    return isinstance(path, str) and bool(URI.match(path))


def storage_location(path: str | Path) -> str:
    """``path`` as Ray's ``storage_path``: a URI unchanged, a local path resolved."""
    return path if is_uri(path) else str(Path(path).resolve())


def join_location(base: str, *parts: str) -> str:
    """``base``/``parts`` for a URI or a local path (``Path`` would fold ``s3://`` into ``s3:/``)."""
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else str(Path(base, *parts))


def checkpoint_config(ray_cfg: RayConfig, for_tune: bool = False):
    """The ``ray:`` section as ``ray.train.CheckpointConfig`` (Ray Train's RunConfig) or, ``for_tune``, as
    ``ray.tune.CheckpointConfig`` (Tune's RunConfig). Not interchangeable: Ray Train's class carries a
    ``checkpoint_at_end`` placeholder that Tune rejects for function trainables."""
    from ray import train, tune  # noqa: PLC0415 (ray is heavy; this module is imported without it)

    cls = tune.CheckpointConfig if for_tune else train.CheckpointConfig
    return cls(
        num_to_keep=ray_cfg.num_to_keep or None,
        checkpoint_score_attribute=ray_cfg.checkpoint_score_attribute,
        checkpoint_score_order=ray_cfg.checkpoint_score_order,
    )
