"""The learner's self-check: run a notebook's visible tests and say plainly what fails.

Runs in a scratch copy of the notebook's folder, so it changes nothing. It can only run the
tests the learner can see; hidden tests and the comparison with the reference solution
happen when the instructor grades.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import AutograderError, reports, submission
from .preprocessors import first_docstring_line
from .reference import execute_in_copy


@dataclass
class TestOutcome:
    grade_id: str
    description: str
    points: float
    passed: bool
    message: str = ""


def check_notebook(path: Path) -> list[TestOutcome]:
    path = Path(path)
    if not path.is_file():
        raise AutograderError(f"{path} does not exist; give the path of an exercise notebook, "
                              f"e.g. course/ex02_data_gate/ex02_data_gate.ipynb")
    nb, problem = submission.read_submitted(path)
    if problem:
        raise AutograderError(f"{problem}. Restore it from your last good copy, or fetch the exercise again.")
    if not any(reports.is_grade_cell(c) for c in nb.cells):
        raise AutograderError(f"{path.name} has no test cells; is it an exercise notebook?")
    executed = execute_in_copy(path)
    outcomes = setup_failures(executed)
    for cell in executed.cells:
        if not reports.is_grade_cell(cell):
            continue
        if _hidden_only(cell.source):
            continue  # its tests are hidden: they run when the instructor grades
        errors = reports.errors_of(cell)
        message = ""
        if errors:
            message = f"{errors[0].get('ename')}: {errors[0].get('evalue')}".strip()
        elif not reports.reports_of(cell):
            message = "the test did not record a result (did the cell run to the end?)"
        outcomes.append(TestOutcome(reports.grade_id(cell) or "?", first_docstring_line(cell.source),
                                    float(cell.metadata["nbgrader"].get("points", 0)), not message, message))
    return outcomes


def setup_failures(executed) -> list[TestOutcome]:
    """The first locked, ungraded cell (setup, helpers, data loading) that failed, as an outcome to
    show before the tests: when it fails, every test after it fails with a NameError that hides
    the real cause."""
    for cell in executed.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.get("cell_type") != "code" or reports.is_grade_cell(cell) or meta.get("solution"):
            continue
        if not meta.get("locked"):
            continue
        errors = reports.errors_of(cell)
        if not errors:
            continue
        ename, evalue = errors[0].get("ename", "Error"), errors[0].get("evalue", "")
        hint = ("the exercise's data/ folder must sit next to the notebook: fetch the exercise again, "
                "or run the notebook from its own folder" if ename in ("FileNotFoundError", "OSError") else
                "this cell is part of the exercise, not your answer: fetch the exercise again if you changed it")
        cell_id = meta.get("grade_id") or cell.get("id") or "setup"
        return [TestOutcome(cell_id, "the exercise's own setup cell (the tests below need it)", 0.0, False,
                            f"{ename}: {evalue}. The tests after it cannot run until it works; {hint}.")]
    return []


def _hidden_only(source: str) -> bool:
    """True for a test cell whose learner's copy holds nothing but its docstring (all its tests are hidden)."""
    import ast
    try:
        body = ast.parse(source).body
    except SyntaxError:
        return False
    return len(body) == 1 and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant)
