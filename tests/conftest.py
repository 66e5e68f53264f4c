"""Shared fixtures: a throwaway copy of the course with a class folder, and graded fixture classes."""
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autograder import course, samples  # noqa: E402
from autograder.config import ClassPaths  # noqa: E402


def make_course_copy(root: Path) -> ClassPaths:
    """A copy of solutions/ and course/ with its own class folder and exchange."""
    for folder in ("solutions", "course"):
        shutil.copytree(REPO / folder, root / "repo" / folder)
    return ClassPaths(root / "repo", root / "class", root / "exchange")


def submit_directly(paths: ClassPaths, student: str, assignment: str, nb) -> Path:
    """Put a notebook where `collect` would have put it (the exchange itself is tested by the demo)."""
    folder = paths.submitted / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{assignment}.ipynb"
    if isinstance(nb, (bytes, str)):
        target.write_bytes(nb if isinstance(nb, bytes) else nb.encode())
    else:
        nbformat.write(nb, target)
    (folder / "timestamp.txt").write_text("2026-11-01 12:00:00.000000 UTC")
    return target


def fixture_notebook(paths: ClassPaths, assignment: str, case: str):
    sample = samples.load(assignment, case)
    return samples.build(sample, paths.release / assignment / f"{assignment}.ipynb",
                         paths.source / assignment / f"{assignment}.ipynb")


class GradedFixtures:
    """Grades every fixture submission of an assignment once, as one class, through nbgrader,
    on every core (`course.grade`'s default): the tests of one assignment share one grading run."""

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory
        self.cache = {}

    def __call__(self, assignment):
        if assignment not in self.cache:
            paths = make_course_copy(self.factory.mktemp(assignment))
            course.generate(paths, assignment)
            for case in samples.cases(assignment):
                submit_directly(paths, case, assignment, fixture_notebook(paths, assignment, case))
            results = {r.student: r for r in course.grade(paths, assignment, jobs=course.default_jobs())}
            self.cache[assignment] = (paths, results)
        return self.cache[assignment]


@pytest.fixture(scope="session")
def graded_fixtures(tmp_path_factory):
    return GradedFixtures(tmp_path_factory)


@pytest.fixture
def course_copy(tmp_path):
    return make_course_copy(tmp_path)
