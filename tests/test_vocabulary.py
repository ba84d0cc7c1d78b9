"""One definition per quantity: no module outside scoring.py divides a score by a target's or a control's
score, inline or through `scoring.ratio` (retained, relative, recovery, control gain and utility kept are
scoring's named functions), except where a metric itself is defined that way (PrivLeak's normalisation by
the retrained model's AUC)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "unlearn_audit"
ALLOWED = {"scoring.py", "evaluate/privleak.py"}
# names a target's or control's scores go by in this code base (t, t_full, c, rt, start, base["target"], ...)
REFERENCE_NAMES = {"t", "t_full", "t_a", "t_q", "tq", "c", "c_full", "c_a", "rt", "rt_a", "target", "control",
                   "retrained", "reference", "start", "base"}
REFERENCE_KEYS = {"target", "control", "retrained"}


def refers_to_reference(node: ast.AST) -> bool:
    """Whether an expression reads a target's or control's score: `t[k]`, `t.get(k)`, `base["target"][k]`."""
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id in REFERENCE_NAMES:
            return True
        if isinstance(sub, ast.Constant) and sub.value in REFERENCE_KEYS:
            return True
    return False


def divides_by_reference(node: ast.AST) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        return refers_to_reference(node.right)
    if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", None)) == "ratio":
        return len(node.args) == 2 and refers_to_reference(node.args[1])
    return False


def score_divisions(path: Path) -> list[str]:
    return [f"{path.name}:{node.lineno}: {ast.unparse(node)}" for node in ast.walk(ast.parse(path.read_text()))
            if divides_by_reference(node)]


def test_no_module_outside_scoring_divides_by_a_target_or_control_score():
    found = [hit for p in sorted(SRC.rglob("*.py")) if str(p.relative_to(SRC)) not in ALLOWED
             for hit in score_divisions(p)]
    assert not found, "compute shares through scoring.py:\n" + "\n".join(found)


def test_the_check_finds_a_division_by_the_target(tmp_path):
    """The check itself can fail: it finds the forms a share takes when written inline."""
    (tmp_path / "m.py").write_text("kept = u['knowmem_r'] / t['knowmem_r']\nr = a / base['target'].get(k)\n"
                                   "k = ratio(u.get(m), t.get(m))\nx = 1 / n\ny = ratio(a, b)\n")
    hits = [h.split(": ", 1)[1] for h in score_divisions(tmp_path / "m.py")]
    assert hits == ["u['knowmem_r'] / t['knowmem_r']", "a / base['target'].get(k)", "ratio(u.get(m), t.get(m))"]


def percent_specs(path: Path) -> list[str]:
    """f-string fields formatted as a percentage (`{x:.0%}`) instead of through `scoring.percent`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FormattedValue) and node.format_spec is not None:
            spec = "".join(v.value for v in node.format_spec.values if isinstance(v, ast.Constant))
            if spec.endswith("%"):
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.value)}:{spec}")
    return found


def test_percentages_have_one_formatter():
    """Every share is printed by `scoring.percent` ('-' for a missing value, never '-0%')."""
    offenders = [hit for path in sorted(SRC.rglob("*.py")) if path.name != "scoring.py" for hit in percent_specs(path)]
    assert not offenders, offenders


def test_the_percent_check_finds_format_specs(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('x = 0.5\nprint(f"{x:.0%} and {x * 2:.1%} but not {x:.2f}")\n')
    assert [h.split(": ")[1] for h in percent_specs(probe)] == ["x:.0%", "x * 2:.1%"]
