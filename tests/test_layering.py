"""Every import runs down the layers, and no modules import each other (even inside functions).

The layers, lowest first (docs/architecture.md); a module may import from its own layer or any
layer below it, never from one above:

  0. foundation: the package root, errors, safe_text, atomic, locking, threads, lazy, allocator,
     config, device, distributed, op_counts, parent_death, std_streams
  1. models, data, checkpoint (the package: format, compact, paths, metadata, export, convert;
     shrink.program: the shrunk network's file format, which export recognises)
  2. pruning, restore (a checkpoint's model, its declared shapes checked before anything is read;
     it checks masks with pruning.masks, and pruning's ablation reads checkpoints through it)
  3. evaluation, report, inspection, export (it validates its input
     against the model, as every reader does), shrink (it rebuilds a checkpoint's model to rewrite
     it; evaluation and inspection read its files), shrink_report
  4. training (it evaluates every epoch, so it sits on evaluation)
  5. sweep (the package: plan, cell, results, pool, job, report)
  6. cli, and the entry point (__main__)

Read with ``ast`` only (nothing is imported), so every ``force_cli`` import counts: at the top of
a module, inside a function, under ``TYPE_CHECKING``. ``from force_cli.pkg import name`` counts as
an import of the submodule that defines ``name`` (the packages load their exports lazily).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_ROOT = Path(__file__).resolve().parent.parent / "force_cli"

LAYERS: list[tuple[str, list[str]]] = [
    ("foundation", ["force_cli", "force_cli.errors", "force_cli.safe_text", "force_cli.atomic", "force_cli.locking",
                    "force_cli.threads", "force_cli.lazy", "force_cli.allocator", "force_cli.config", "force_cli.device",
                    "force_cli.distributed", "force_cli.op_counts", "force_cli.parent_death",
                    "force_cli.std_streams"]),
    ("models, data, checkpoint", ["force_cli.models", "force_cli.data", "force_cli.checkpoint",
                                  "force_cli.shrink.program"]),
    ("pruning", ["force_cli.pruning", "force_cli.restore"]),
    ("evaluation, report", ["force_cli.evaluation", "force_cli.report", "force_cli.inspection",
                            "force_cli.export", "force_cli.shrink", "force_cli.shrink_report"]),
    ("training", ["force_cli.training"]),
    ("sweep", ["force_cli.sweep"]),
    ("cli", ["force_cli.cli", "force_cli.__main__"]),
]

# Known today (issue 18, phase 2 removes them); any other import up the layers fails the test,
# and so does an entry here that no longer happens (delete it then).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()
KNOWN_CYCLES: set[frozenset[str]] = set()


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_ROOT.rglob("*.py"))}


def is_package(name: str, paths: dict[str, Path]) -> bool:
    return paths[name].name == "__init__.py"


def definers(package: str, name: str, paths: dict[str, Path], trees: dict[str, ast.Module]) -> set[str]:
    """The submodules of ``package`` that define ``name`` at their top level."""
    found = set()
    for module, tree in trees.items():
        if module.rpartition(".")[0] != package or module == package:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
                found.add(module)
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                    found.add(module)
    return found


def imported(module: str, tree: ast.Module, paths: dict[str, Path], trees: dict[str, ast.Module]) -> set[str]:
    """Every force_cli module that ``module`` imports, anywhere in its code."""
    here = module if is_package(module, paths) else module.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "force_cli":
                    name = alias.name
                    while name not in paths:  # `import force_cli.x.y` where y is not a module
                        name = name.rpartition(".")[0]
                    targets.add(name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            if base.split(".")[0] != "force_cli":
                continue
            for alias in node.names:
                if f"{base}.{alias.name}" in paths:
                    targets.add(f"{base}.{alias.name}")
                elif is_package(base, paths) and (found := definers(base, alias.name, paths, trees)):
                    targets |= found
                else:
                    targets.add(base)
    targets.discard(module)
    return targets


def import_graph() -> dict[str, set[str]]:
    paths = modules()
    trees = {name: ast.parse(path.read_text(encoding="utf-8"), str(path)) for name, path in paths.items()}
    return {name: imported(name, tree, paths, trees) for name, tree in trees.items()}


def layer_of(module: str) -> int:
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or (prefix != "force_cli" and module.startswith(prefix + ".")):
                return index
    raise AssertionError(f"{module} is in no layer; add it to LAYERS in tests/test_layering.py "
                         f"and to docs/architecture.md")


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(frozenset(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_module_has_a_layer(graph):
    for module in graph:
        layer_of(module)


def test_imports_run_down_the_layers(graph):
    upward = {(a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a)}
    new = sorted(upward - KNOWN_VIOLATIONS)
    assert not new, "imports from a lower layer to a higher one: " + "; ".join(
        f"{a} ({LAYERS[layer_of(a)][0]}) -> {b} ({LAYERS[layer_of(b)][0]})" for a, b in new)
    gone = sorted(KNOWN_VIOLATIONS - upward)
    assert not gone, f"no longer imported, remove from KNOWN_VIOLATIONS: {gone}"


def test_no_import_cycles(graph):
    found = set(cycles(graph))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    assert not new, f"modules that import each other (directly or through others): {new}"
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert not gone, f"no longer a cycle, remove from KNOWN_CYCLES: {gone}"


def test_the_checker_sees_imports_inside_functions_and_lazy_package_exports():
    """The reader itself: an import inside a function, a relative one, and a name a package
    exports lazily each count as an import of the module that defines the name."""
    paths = modules()
    trees = {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in paths.items()}
    code = ast.parse("def f():\n    from force_cli.pruning import prune\n    from .checks import validate\n"
                     "    import force_cli.data.names\n")
    got = imported("force_cli.pruning.fake", code, paths | {"force_cli.pruning.fake": Path("fake.py")}, trees)
    assert got == {"force_cli.pruning.loop", "force_cli.pruning.checks", "force_cli.data.names"}
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset({"a", "b", "c"})]
