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
