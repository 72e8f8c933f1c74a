"""``weaktok bench``: one module per section; each exposes ``run(quick: bool, ...) -> list[BenchResult]``.

Options beyond ``quick`` (``--shards``, ``--compile-backend``, ...) reach the sections whose ``run`` takes them."""

from __future__ import annotations

import importlib
import inspect

from weaktok.bench.common import BenchResult, report, timeit

# section name -> module under weaktok.bench
SECTIONS = {
    "chunking": "weaktok.bench.chunking",
    "lscore": "weaktok.bench.lscore",
    "data": "weaktok.bench.data",
    "train": "weaktok.bench.train",
    "gpu": "weaktok.bench.gpu",
}

__all__ = ["BenchResult", "SECTIONS", "report", "run_sections", "timeit"]


def run_sections(
    names: list[str] | None, out_dir: str = "bench_results", quick: bool = False, **options
) -> int:
    names = names or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(
            f"weaktok bench: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}"
        )
    for name in names:
        module = importlib.import_module(SECTIONS[name])
        accepted = inspect.signature(module.run).parameters
        report(
            name,
            module.run(quick=quick, **{k: v for k, v in options.items() if k in accepted}),
            out_dir,
        )
    return 0
