"""No import runs back up the stages (design.md): every import in the package, lazy ones inside
functions included, goes from a stage to one below it or to the shared base (utils, errors, config,
scoring). The registries' self-registration stays inside one stage."""

import ast
from pathlib import Path

import unlearn_audit

ROOT = Path(unlearn_audit.__file__).parent
BASE = {"utils", "errors", "config", "scoring", "__init__"}
# each stage and the stages (besides the base) it may import
ALLOWED = {
    "data": set(),
    "models": {"data"},
    "quantize": {"data", "models"},
    "training": {"data", "models"},
    "evaluate": {"data", "models", "quantize"},
    "unlearn": {"data", "models", "training", "quantize", "evaluate"},
    "attacks": {"data", "models", "training", "quantize", "evaluate"},
    "experiment": {"data", "models", "training", "quantize", "evaluate", "unlearn", "attacks"},
    "cli": {"data", "models", "training", "quantize", "evaluate", "unlearn", "attacks", "experiment"},
}


def stage(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_stages(path: Path) -> set[str]:
    """The package's top-level modules a file imports (relative or absolute, at any depth)."""
    here = path.relative_to(ROOT).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = list(here[: len(here) - (node.level - 1)]) + (node.module.split(".") if node.module else [])
                names = [parts] if parts else [[]]  # names from the package root: its __init__
            elif node.module and node.module.startswith("unlearn_audit."):
                names = [node.module.split(".")[1:]]
            else:
                continue
            found.update(n[0] if n else "__init__" for n in names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("unlearn_audit."))
    return found


def test_no_import_runs_back_up_the_stages():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        own = stage(path)
        if own in BASE:
            allowed = BASE
        else:
            allowed = BASE | ALLOWED[own] | {own}
        upward += [f"{path.relative_to(ROOT)} imports {s}" for s in imported_stages(path) - allowed]
    assert not upward, upward


def test_the_check_sees_lazy_and_relative_imports(tmp_path):
    probe = ROOT / "models" / "__probe_layers__.py"
    probe.write_text("def f():\n    from ..unlearn.trainer import unlearn\n    from . import loading\n")
    try:
        assert imported_stages(probe) == {"unlearn", "models"}
    finally:
        probe.unlink()


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules a file imports (lazy ones too), by their names below the package root."""
    here = path.relative_to(ROOT).parent.parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if not (isinstance(node, ast.ImportFrom) and node.level):
            continue
        parts = list(here[: len(here) - (node.level - 1)]) + (node.module.split(".") if node.module else [])
        for candidate in [parts] + [parts + [a.name] for a in node.names]:
            name = ".".join(candidate)
            if name in modules:
                found.add(name)
    return found


def circles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(group)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(p): p for p in ROOT.rglob("*.py") if p.name != "__init__.py"}
    return {m: imported_modules(p, set(paths)) - {m} for m, p in paths.items()}


def test_no_import_circle_between_files():
    """Two files that import each other (lazily or not) are one job split in two. Plug-ins import their
    registry and the registry finds them without importing them by name (utils/registry.py), so not even
    plug-in registration closes a circle."""
    assert not circles(import_graph())


def test_the_circle_check_finds_a_lazy_circle():
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [{"a", "b"}]
    graph = import_graph()
    assert "models.spec" in graph["models.loading"] and "models.loading" not in graph["models.spec"]
