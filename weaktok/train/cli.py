"""Entry point for launchers: python -m weaktok.train --config C --out DIR [key=value ...] (also what
``deepspeed --module weaktok.train`` runs on every rank). Exit 2 on a config error, 1 on a checkpoint error.

weaktok's own launchers (weaktok/launch/local.py) resolve the config once and pass it as a file, ``--config
<run>/config.yaml``, with no overrides; a person typing the command may add ``key=value`` overrides."""

from __future__ import annotations

import argparse
import sys

from weaktok.config import ConfigError, load_config
from weaktok.data.manifest import ShardsError
from weaktok.log import setup_logging
from weaktok.train.checkpoint import CheckpointError
from weaktok.train.trainer import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    # the description: the package docstring's first line, as before the split
    package_doc = sys.modules[__package__].__doc__
    p = argparse.ArgumentParser(
        prog="python -m weaktok.train", description=package_doc.split("\n")[0]
    )
    p.add_argument(
        "--config", required=True, help="shipped config name (tiny, demo, paper) or a YAML path"
    )
    p.add_argument(
        "--out", required=True, help="run folder (config, metrics, checkpoints, final weights)"
    )
    # the deepspeed launcher passes --local_rank to every rank
    p.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # launchers and the demo pick training's lines out of its log by this prefix
    setup_logging("[weaktok] ")
    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, args.out)
    except ConfigError as e:
        print(f"weaktok train: config error: {e}", file=sys.stderr)
        return 2
    except CheckpointError as e:
        print(f"weaktok train: checkpoint error: {e}", file=sys.stderr, flush=True)
        return 1
    except ShardsError as e:
        print(f"weaktok train: shards error: {e}", file=sys.stderr, flush=True)
        return 1
    return 0
