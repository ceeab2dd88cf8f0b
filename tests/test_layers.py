"""The package's layers: imports flow one way and never in a circle.

    cli -> main -> bench -> engine -> models -> runners -> errors

Every ``import`` / ``from ... import`` of a specdec module in the package is read from the
source (module level and inside functions alike: a lazy import is still a dependency), and
each module is ranked by its folder. A module may import its own layer or a lower one; no set
of modules may import each other in a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "specdec"

#: Layer ranks, highest first: a module may import modules of its own rank or lower.
LAYERS = [
    ("specdec.__main__", 7),
    ("specdec.cli", 6),
    ("specdec.main", 5),
    ("specdec.bench", 4),
    ("specdec.engine", 3),
    ("specdec.models", 2),
    ("specdec.runners", 1),
    ("specdec.errors", 0),
]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def rank(module: str) -> int | None:
    for prefix, value in LAYERS:
        if module == prefix or module.startswith(prefix + "."):
            return value
    return None  # the package's own __init__


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The specdec modules ``path`` imports (``from a.b import c`` counts a.b.c when that is a
    module, else a.b)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # a name inside a module: its module
                target = target.rpartition(".")[0]
            if target.startswith("specdec") and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def test_every_module_has_a_layer(graph):
    unranked = sorted(m for m in graph if rank(m) is None and m != "specdec")
    assert not unranked, f"modules outside every layer folder: {unranked}"


def test_imports_flow_down(graph):
    upward = []
    for module, targets in graph.items():
        if module == "specdec":
            continue
        for target in targets:
            if target != "specdec" and rank(target) > rank(module):
                upward.append(f"{module} -> {target}")
    assert not upward, "imports against the layer order:\n" + "\n".join(sorted(upward))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(node):
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles(graph):
    # A package's __init__ re-exporting its own modules is not a circle of dependencies.
    edges = {m: {t for t in ts if not (m.startswith(t + ".") and t in graph)} for m, ts in graph.items()}
    found = circles(edges)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_checker_finds_a_circle_and_an_upward_import():
    """The checks above can fail: a made-up graph with both faults is caught."""
    made_up = {"specdec.engine.a": {"specdec.engine.b"}, "specdec.engine.b": {"specdec.engine.a", "specdec.bench.x"},
               "specdec.bench.x": set()}
    assert circles(made_up) == [["specdec.engine.a", "specdec.engine.b"]]
    assert rank("specdec.bench.x") > rank("specdec.engine.b")


def test_published_names_still_import():
    """The published faces, and old module paths users may have imported (they warn)."""
    from specdec.main import SpeculativeDecoder  # noqa: F401
    from specdec.engine import Engine, GenerationConfig  # noqa: F401
    from specdec.cli import entry, main  # noqa: F401

    with pytest.warns(DeprecationWarning, match="specdec.engine.drafters"):
        import importlib
        import sys

        sys.modules.pop("specdec.drafters", None)
        old = importlib.import_module("specdec.drafters")
    from specdec.engine import drafters

    assert old is drafters and hasattr(old, "ModelDraft")


def test_rowwise_widths_cover_every_verification_width():
    """A verification forward feeds the last token and up to MAX_DRAFT_WINDOW drafts: every such
    width must take the batch-invariant row-by-row path of quantized models."""
    from specdec.engine.loop import MAX_DRAFT_WINDOW
    from specdec.runners.rowwise_attention import MAX_ROWWISE

    assert MAX_ROWWISE >= MAX_DRAFT_WINDOW + 1
