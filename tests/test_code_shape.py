"""The code's measured shape (docs/development.md, "Code shape"): small modules, a thin
cs231n Solver, and functions short enough to do one job each."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = sorted([*ROOT.glob("jcnn/**/*.py"), *ROOT.glob("experiments/**/*.py")])


def _docstring_lines(node: ast.AST) -> int:
    body = getattr(node, "body", [])
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            return body[0].end_lineno - body[0].lineno + 1
    return 0


def test_no_module_is_over_500_lines_and_the_solver_is_at_most_300():
    lengths = {p.relative_to(ROOT).as_posix(): len(p.read_text().splitlines()) for p in MODULES}
    assert {p: n for p, n in lengths.items() if n > 500} == {}
    assert lengths["jcnn/solver.py"] <= 300


def test_no_function_has_over_60_lines_besides_its_docstring():
    long = {}
    for path in MODULES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                code = node.end_lineno - node.lineno + 1 - _docstring_lines(node)
                if code > 60:
                    long[f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}"] = code
    assert long == {}
