"""Shared pieces of the benchmark harness: a result row, a timer, and the report.

Every section (``weaktok bench <section>``) returns a list of :class:`BenchResult`. The harness prints them
side by side and writes ``<out>/<section>.json`` so numbers can be compared across machines and commits.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


@dataclass
class BenchResult:
    name: str  # what was measured, e.g. "model fwd+bwd, dynamic vs fixed"
    value: float  # the measured number for the thing under test
    baseline: float | None  # the same number for the reference it is compared with (None: absolute goal)
    units: str  # units of value/baseline, e.g. "ms", "samples/s"
    goal: str  # human-readable goal, e.g. "ratio <= 1.25"
    ratio: float | None = None  # value / baseline (computed when baseline is given)
    passed: bool | None = None  # whether the goal was met (None: informational)
    note: str = ""

    def __post_init__(self) -> None:
        if self.ratio is None and self.baseline not in (None, 0):
            self.ratio = self.value / self.baseline


def timeit(fn: Callable[[], object], repeat: int = 5, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` in seconds, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def _fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x == 0 or 1e-3 <= abs(x) < 1e5:
        return f"{x:.4g}"
    return f"{x:.3e}"


def report(section: str, results: list[BenchResult], out_dir: str | Path) -> Path:
    """Print a side-by-side table and write ``<out_dir>/<section>.json``; returns the JSON path."""
    rows = [("name", "value", "baseline", "ratio", "units", "goal", "met")]
    for r in results:
        met = "-" if r.passed is None else ("yes" if r.passed else "NO")
        rows.append((r.name, _fmt(r.value), _fmt(r.baseline), _fmt(r.ratio), r.units, r.goal, met))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"\n== bench {section} ==")
    for i, row in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    for r in results:
        if r.note:
            print(f"  note [{r.name}]: {r.note}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{section}.json"
    payload = {
        "section": section,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")
    return path
