"""Bring your own nbgrader assignment: nbgrader's own autograde fixtures, graded by our grader.

The fixtures ship inside the installed nbgrader package; they are copied into a throwaway course
at test time. Assert-only test cells are graded the stock way (a cell passes when it raises no
error), so the scores are those nbgrader's own tests expect (tests/apps/test_nbgrader_autograde.py:
test_grade, test_showtraceback_exploit), and `grade` and `lint` flag the cells as forgeable.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbgrader
import pytest

from autograder import course, lint
from autograder.config import ClassPaths
from conftest import REPO

FILES = Path(nbgrader.__file__).parent / "tests" / "apps" / "files"

# student -> (nbgrader fixture, autograded score nbgrader's tests expect, needs a manual grade)
PS1 = {
    "foo": ("submitted-unchanged", 1, False),
    "bar": ("submitted-changed", 2, True),
    "spam": ("submitted-cheat-attempt", 1, True),
    "eggs": ("submitted-cheat-attempt-alternative", 1, True),
    "edits_a_test": ("submitted-grade-cell-changed", 1, False),
    "edits_a_locked_cell": ("submitted-locked-cell-changed", 1, False),
}


def byo_course(root: Path, assignment: str, source: str, submissions: dict[str, str]) -> ClassPaths:
    paths = ClassPaths(root / "repo", root / "class", root / "exchange")
    (paths.source / assignment).mkdir(parents=True)
    paths.release.mkdir()
    shutil.copy(FILES / f"{source}.ipynb", paths.source / assignment / f"{assignment}.ipynb")
    shutil.copy(FILES / "jupyter.png", paths.source / assignment / "jupyter.png")
    course.generate(paths, assignment)
    for student, fixture in submissions.items():
        folder = paths.submitted / student / assignment
        folder.mkdir(parents=True)
        shutil.copy(FILES / f"{fixture}.ipynb", folder / f"{assignment}.ipynb")
        (folder / "timestamp.txt").write_text("2026-11-01 12:00:00.000000 UTC")
    return paths


@pytest.fixture(scope="module")
def ps1(tmp_path_factory):
    paths = byo_course(tmp_path_factory.mktemp("byo"), "ps1", "submitted-unchanged",
                       {student: fixture for student, (fixture, _, _) in PS1.items()})
    return paths, {r.student: r for r in course.grade(paths, "ps1")}


@pytest.mark.parametrize("student", PS1)
def test_nbgrader_fixtures_get_the_scores_nbgrader_expects(ps1, student):
    _, results = ps1
    _, score, manual = PS1[student]
    result = results[student]
    assert not result.error, result.error
    assert (result.score, result.max_score) == (score, 7), result.reason
    assert result.needs_manual_grade == manual


def test_an_edited_test_cell_is_restored_and_noted(ps1):
    _, results = ps1
    assert any("'bar' was edited" in note for note in results["edits_a_test"].notes)
    assert [c.points for c in results["edits_a_test"].cells if c.grade_id == "bar"] == [0]


def test_lint_flags_assert_only_cells_without_refusing_them(ps1):
    paths, _ = ps1
    findings = lint.lint_assignment(paths, "ps1")
    assert all(f.severity == "warning" for f in findings), findings
    flagged = {f.grade_id for f in findings if "assert-only" in f.message}
    assert flagged == {"foo", "bar"}
    assert any(f.grade_id == "foo" and "blank release" in f.message for f in findings)
    assert any(f.grade_id == "bar" and "fails on the reference solution" in f.message for f in findings)
    assert lint.forgeable_stock_cells(paths, "ps1") and "foo, bar" in lint.forgeable_stock_cells(paths, "ps1")[0]


def test_grade_command_warns_that_stock_cells_are_forgeable(ps1):
    paths, _ = ps1
    env = {k: v for k, v in os.environ.items() if k not in ("CICD_CLASS_DIR", "CICD_EXCHANGE")}
    shutil.copytree(REPO / "autograder", paths.repo / "autograder", ignore=shutil.ignore_patterns("__pycache__"),
                    dirs_exist_ok=True)
    done = subprocess.run([sys.executable, "-m", "autograder", "grade", "ps1", "--student", "foo",
                           "--class-dir", str(paths.class_dir)], cwd=paths.repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^foo\s+ps1\s+1 / 7", done.stdout, re.M), done.stdout
    assert "WARNING: ps1/ps1.ipynb: foo, bar are assert-only" in done.stderr


def test_nbgraders_own_example_solution_gets_every_automatic_point(tmp_path):
    """test.ipynb handed in as is (it holds the solutions) earns the 3 automatic points; the blank
    release earns none; the 3 points of written answers wait for a manual grade."""
    paths = byo_course(tmp_path, "squares", "test", {"solved": "test"})
    blank = paths.submitted / "blank" / "squares"
    blank.mkdir(parents=True)
    shutil.copy(paths.release / "squares" / "squares.ipynb", blank / "squares.ipynb")
    results = {r.student: r for r in course.grade(paths, "squares")}
    assert (results["solved"].score, results["solved"].max_score) == (3, 6)
    assert results["blank"].score == 0
    assert results["solved"].needs_manual_grade
