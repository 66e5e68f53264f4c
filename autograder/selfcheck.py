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
    outcomes = []
    for cell in executed.cells:
        if not reports.is_grade_cell(cell):
            continue
        errors = reports.errors_of(cell)
        message = ""
        if errors:
            message = f"{errors[0].get('ename')}: {errors[0].get('evalue')}".strip()
        elif not reports.reports_of(cell):
            message = "the test did not record a result (did the cell run to the end?)"
        outcomes.append(TestOutcome(reports.grade_id(cell) or "?", first_docstring_line(cell.source),
                                    float(cell.metadata["nbgrader"].get("points", 0)), not message, message))
    return outcomes
