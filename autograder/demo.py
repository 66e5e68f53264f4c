"""`python -m autograder demo`: an instructor's whole day on sample submissions, in a throwaway folder.

Four learners hand in the data-gate and model-gate exercises: one correct, one partial, one
blank and one whose notebook is broken (truncated JSON). Everything goes through nbgrader's
real exchange and gradebook: release -> fetch -> submit -> collect -> grade -> feedback ->
fetch feedback -> export.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import nbformat
from nbgrader.auth import Authenticator
from nbgrader.coursedir import CourseDirectory
from nbgrader.exchange.default import ExchangeFetchAssignment, ExchangeFetchFeedback, ExchangeSubmit

from . import AutograderError, course, samples
from .class_report import write_report
from .cli import grade_table
from .config import REPO, ClassPaths, load_course_config

ASSIGNMENTS = ["ex02_data_gate", "ex03_model_gate"]
LEARNERS = {"ada": "correct", "grace": "partial", "alan": "blank", "barbara": "broken"}


def _as_student(paths: ClassPaths, home: Path, student: str, assignment: str, action):
    config = load_course_config(paths)
    config.Exchange.assignment_dir = str(home)
    # Each learner has their own submission cache, as on their own machine; a shared one would
    # let every learner fetch everyone's feedback.
    config.Exchange.cache = str(home / ".nbgrader_cache")
    coursedir = CourseDirectory(config=config)
    coursedir.assignment_id, coursedir.student_id = assignment, student
    app = action(coursedir=coursedir, authenticator=Authenticator(config=config), config=config)
    app.start()


def hand_in(paths: ClassPaths, home: Path, student: str, assignment: str, case: str) -> None:
    """Fetch the assignment as `student`, answer it as the sample says, and submit it."""
    _as_student(paths, home, student, assignment, ExchangeFetchAssignment)
    folder = home / "cicd-for-models" / assignment
    notebook = folder / f"{assignment}.ipynb"
    if case == "broken":
        text = notebook.read_text()
        notebook.write_text(text[: len(text) // 2])  # a notebook cut off mid-save
    elif case != "blank":
        sample = samples.load(assignment, case)
        nb = samples.build(sample, notebook, paths.source / assignment / f"{assignment}.ipynb")
        if isinstance(nb, str):
            notebook.write_text(nb)
        else:
            nbformat.write(nb, notebook)
    _as_student(paths, home, student, assignment, ExchangeSubmit)


def run_demo(keep: Path | None = None) -> int:
    if keep is not None and keep.exists():
        raise AutograderError(f"{keep} already exists; give --keep a new folder so nothing is overwritten")
    workspace = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="cicd-demo-"))
    root = workspace / "course-repo"
    for folder in ("solutions", "course"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    paths = ClassPaths(root, workspace / "class", workspace / "exchange")
    print(f"demo class in {workspace}")
    results, reports = [], []
    for assignment in ASSIGNMENTS:
        print(f"- releasing {assignment}")
        course.release(paths, assignment)
        for student, case in LEARNERS.items():
            hand_in(paths, workspace / "students" / student, student, assignment, case)
        print(f"- collected {', '.join(course.collect(paths, assignment))}; grading")
        graded = course.grade(paths, assignment)
        results += graded
        reports.append(write_report(paths, assignment, graded))
        course.feedback(paths, assignment)
        for student in LEARNERS:
            _as_student(paths, workspace / "students" / student, student, assignment, ExchangeFetchFeedback)
    csv = course.export(paths, workspace / "grades.csv")
    print()
    print(grade_table(results))
    print()
    print(f"grades CSV: {csv}")
    print("reports for instructors:")
    for report in reports:
        print(f"  {report}")
    print("feedback each learner fetched:")
    for student in LEARNERS:
        for html in sorted((workspace / "students" / student).rglob("feedback/*/*.html")):
            print(f"  {html}")
    if keep is None:
        print(f"(the demo folder {workspace} is left for you to look at; delete it when done)")
    return 0
