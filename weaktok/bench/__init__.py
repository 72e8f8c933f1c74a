"""``weaktok bench``: one module per section; each exposes ``run(quick: bool) -> list[BenchResult]``."""

from __future__ import annotations

import importlib

from weaktok.bench.common import BenchResult, report, timeit

# section name -> module under weaktok.bench
SECTIONS = {"chunking": "weaktok.bench.chunking", "lscore": "weaktok.bench.lscore", "data": "weaktok.bench.data",
            "train": "weaktok.bench.train"}

__all__ = ["BenchResult", "SECTIONS", "report", "run_sections", "timeit"]


def run_sections(names: list[str] | None, out_dir: str = "bench_results", quick: bool = False) -> int:
    names = names or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise SystemExit(f"weaktok bench: unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    for name in names:
        module = importlib.import_module(SECTIONS[name])
        report(name, module.run(quick=quick), out_dir)
    return 0
