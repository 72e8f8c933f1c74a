"""``weaktok`` command line: thin argparse front end; every subcommand calls one library function."""

from __future__ import annotations

import argparse
import sys

from weaktok.config import ConfigError


def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from weaktok.config import load_config, to_dict

    cfg = load_config(args.config, args.overrides)
    print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from weaktok.bench import run_sections

    return run_sections(args.sections, out_dir=args.out, quick=args.quick)


def build_parser() -> argparse.ArgumentParser:
    from weaktok import __version__
    from weaktok.bench import SECTIONS

    parser = argparse.ArgumentParser(prog="weaktok", description="Weak tokenization of audio: train, sweep, "
                                     "evaluate and generate with a dynamically chunked U-Net.")
    parser.add_argument("--version", action="version", version=f"weaktok {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("config", help="print a resolved config (shipped name or YAML path, plus key=value overrides)")
    p.add_argument("config", help="shipped config name (tiny, demo, paper) or path to a YAML file")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted overrides, e.g. model.dim=128")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("bench", help="run benchmarks; prints tables and writes JSON")
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help=f"sections to run (default: all): {', '.join(SECTIONS)}")
    p.add_argument("--out", default="bench_results", help="folder for <section>.json (default: bench_results)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller sizes (smoke test)")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as e:
        print(f"weaktok: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
