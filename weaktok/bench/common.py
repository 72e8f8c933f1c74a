"""Shared pieces of the benchmark harness: a result row, a timer, and the report.

Every section (``weaktok bench <section>``) returns a list of :class:`BenchResult`. The harness prints them
side by side and writes ``<out>/<section>.json`` so numbers can be compared across machines and commits.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode


@dataclass
class BenchResult:
    name: str  # what was measured, e.g. "model fwd+bwd, dynamic vs fixed"
    value: float  # the measured number for the thing under test
    baseline: (
        float | None
    )  # the same number for the reference it is compared with (None: absolute goal)
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


# aten ops that read device data back to the host (a device->host sync on an accelerator): ``.item()``,
# ``int()/float()/bool()`` on a tensor dispatch ``_local_scalar_dense``; the others have an output shape that depends
# on the data or compare whole tensors on the host. ``_sync_label`` adds the cases an op name alone does not tell.
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",
        "nonzero",
        "masked_select",
        "is_nonzero",
        "equal",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
    }
)
# ops that only relabel memory (no kernel), beyond those aten marks as views (view, t, expand, detach, ...)
_METADATA_OPS = frozenset({"_unsafe_view", "lift_fresh", "alias"})


def _sync_label(name: str, args: tuple, kwargs: dict) -> str | None:
    """The name to count a host sync under, or None. Boolean-mask indexing (``x[mask]``) dispatches ``index``,
    whose ``nonzero`` runs inside the op where a dispatch mode does not see it; ``repeat_interleave`` without
    ``output_size`` must read its repeats; a copy from an accelerator to the CPU (``.cpu()``, ``.tolist()``) waits."""
    if name in SYNC_OPS:
        return name
    if name in ("index", "index_put", "index_put_", "_index_put_impl_") and len(args) > 1:
        if any(
            isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in args[1]
        ):
            return f"{name} (boolean mask)"
    if (
        name == "repeat_interleave"
        and isinstance(args[0], torch.Tensor)
        and kwargs.get("output_size") is None
    ):
        return "repeat_interleave (no output_size)"
    if name in ("_to_copy", "copy_") and isinstance(args[0], torch.Tensor):
        src = args[1] if name == "copy_" else args[0]
        dst = args[0].device if name == "copy_" else kwargs.get("device")
        if (
            isinstance(src, torch.Tensor)
            and src.device.type != "cpu"
            and dst is not None
            and torch.device(dst).type == "cpu"
        ):
            return f"{name} (to cpu)"
    return None


@dataclass
class OpCounts:
    ops: int  # aten ops dispatched (forward and backward), views and factory calls included
    kernels: (
        int  # of which ops that do work: ops less views; ~ kernel launches on a GPU in eager mode
    )
    syncs: int  # host syncs (see ``count_syncs_and_ops``)
    by_op: dict[str, int]  # op name (e.g. "index_add_") -> count, most frequent first
    sync_ops: dict[
        str, int
    ]  # the syncs by kind, e.g. {"_local_scalar_dense": 1, "index (boolean mask)": 2}


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.by_op: dict[str, int] = {}
        self.sync_ops: dict[str, int] = {}
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name.rpartition(":")[
            2
        ]  # overloads share a name: aten::add.Tensor -> add
        self.by_op[name] = self.by_op.get(name, 0) + 1
        self.kernels += not (func.is_view or name in _METADATA_OPS)
        label = _sync_label(name, args, kwargs)
        if label is not None:
            self.sync_ops[label] = self.sync_ops.get(label, 0) + 1
        return func(*args, **kwargs)


def count_syncs_and_ops(fn: Callable[[], object]) -> OpCounts:
    """Run ``fn()`` once and count the aten ops it dispatches and, among them, the host syncs.

    Works on CPU, where ``torch.cuda.set_sync_debug_mode`` does not: the ops that would sync on a GPU are the same
    ones (``SYNC_OPS`` and ``_sync_label``). Not seen: ``.tolist()`` / ``.numpy()`` of a CPU tensor (nothing is
    dispatched; on a GPU tensor they copy to the CPU and are counted). Backward passes started inside ``fn`` are
    counted too (autograd carries the mode over). On a GPU each of ``kernels`` is roughly one kernel launch in eager
    mode.
    """
    with _CountOps() as mode:
        fn()
    by_op = dict(sorted(mode.by_op.items(), key=lambda kv: -kv[1]))
    return OpCounts(
        ops=sum(by_op.values()),
        kernels=mode.kernels,
        syncs=sum(mode.sync_ops.values()),
        by_op=by_op,
        sync_ops=mode.sync_ops,
    )


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
