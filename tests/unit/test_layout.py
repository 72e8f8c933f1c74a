"""The package's shape, checked from its source: the import graph has no cycle, no module imports a higher layer
of the pipeline than its own, and no module is over the size a reader can hold (docs/README.md, the code map)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "weaktok"
MAX_LINES = 400

# Lowest first. A module may import its own layer and the layers below it, never one above.
LAYERS = [
    {
        "weaktok",
        "weaktok.log",
        "weaktok.config",
        "weaktok.audio",
        "weaktok.plots",
        "weaktok.device",
        "weaktok.ray_cluster",
        "weaktok.procenv",
    },  # small shared pieces
    {"weaktok.lscore"},
    {"weaktok.data", "weaktok.model"},
    {"weaktok.generate"},
    {
        "weaktok.api"
    },  # the Python API over a trained model (WeakTok): generate, model, audio below it
    {"weaktok.train"},
    {"weaktok.launch"},
    {"weaktok.evaluation"},
    {"weaktok.experiments"},
    {"weaktok.bench", "weaktok.cli", "weaktok.__main__"},
]


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def imports(mods) -> dict[str, set[str]]:
    """Module -> the weaktok modules it imports (anywhere in its body, relative imports resolved)."""
    edges = defaultdict(set)
    for name, (path, tree) in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            edges[name].update(t for t in targets if t in mods and t != name)
    return edges


def group(module: str) -> str:
    """weaktok.train.step -> weaktok.train; weaktok.config -> weaktok.config (its own group)."""
    for g in sorted(
        set().union(*LAYERS), key=len, reverse=True
    ):  # the longest match: weaktok.train, not weaktok
        if module == g or module.startswith(g + "."):
            return g
    raise AssertionError(
        f"{module} belongs to no layer: add it to LAYERS in tests/unit/test_layout.py"
    )


def layer(module: str) -> int:
    return next(i for i, lay in enumerate(LAYERS) if group(module) in lay)


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(edges) | {w for ws in edges.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


# The one upward import allowed: weaktok/__init__.py's PEP 562 ``__getattr__`` imports weaktok.api when a user asks
# for ``from weaktok import WeakTok``, so ``import weaktok`` stays light. It is an edge of no layer's graph.
LAZY = {("weaktok", "weaktok.api")}


def lazy_imports(tree: ast.Module) -> set[str]:
    """The weaktok modules imported inside a module-level ``def __getattr__`` (PEP 562)."""
    out = set()
    for fn in tree.body:
        if isinstance(fn, ast.FunctionDef) and fn.name == "__getattr__":
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module == "weaktok":
                    out.update(f"weaktok.{a.name}" for a in node.names)
    return out


MODS = modules()
EDGES = imports(MODS)
for _a, _b in LAZY:
    EDGES[_a].discard(_b)


def test_every_module_has_a_layer():
    for name in MODS:
        group(name)


def test_no_import_cycle_between_modules():
    assert cycles(EDGES) == []


def test_no_import_cycle_between_subpackages():
    coarse = defaultdict(set)
    for a, bs in EDGES.items():
        coarse[group(a)].update(group(b) for b in bs if group(b) != group(a))
    assert cycles(coarse) == []


def test_no_module_imports_a_higher_layer():
    upward = sorted(f"{a} -> {b}" for a, bs in EDGES.items() for b in bs if layer(b) > layer(a))
    assert upward == []


@pytest.mark.parametrize("name", sorted(MODS))
def test_module_size(name):
    path = MODS[name][0]
    assert len(path.read_text().splitlines()) <= MAX_LINES, f"{path.relative_to(REPO)}: split it"


def test_hooks_are_methods_of_a_base_class_not_getattr_defaults():
    offenders = [
        str(p.relative_to(REPO)) for p, _ in MODS.values() if 'getattr(h, "on_' in p.read_text()
    ]
    assert offenders == []


def test_the_lazy_re_export_is_lazy_and_import_weaktok_stays_light():
    assert {("weaktok", m) for m in lazy_imports(MODS["weaktok"][1])} == LAZY
    code = "import sys, weaktok; print(sorted(m for m in ('torch', 'deepspeed', 'ray') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert out.stdout.strip() == "[]"


def test_the_checker_finds_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b"]]
    assert layer("weaktok.train.step") > layer("weaktok.model.unet")
