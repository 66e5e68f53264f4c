"""Every bad submission is graded with a reason, and the rest of the class is graded too."""
import json

import nbformat
import pytest

from autograder import course
from conftest import fixture_notebook, submit_directly, generated_course_copy

A = "ex02_data_gate"
FULL = 10.0


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    paths = generated_course_copy(tmp_path_factory.mktemp("bad"), A)
    correct = fixture_notebook(paths, A, "correct")
    wrong = fixture_notebook(paths, A, "blank")
    text = nbformat.writes(correct)

    submit_directly(paths, "good", A, correct)
    submit_directly(paths, "truncated", A, text[: len(text) // 3])
    submit_directly(paths, "binary", A, b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    submit_directly(paths, "empty", A, b"")
    submit_directly(paths, "not_a_notebook", A, '{"hello": "world"}')
    # Deeper than Python's JSON parser recurses: it raised RecursionError, which stopped the whole class.
    submit_directly(paths, "deeply_nested", A, '{"cells": [], "metadata": ' + "[" * 100_000 + "]" * 100_000 + "}")

    missing = paths.submitted / "missing" / A
    missing.mkdir(parents=True)
    (missing / "notes.txt").write_text("I forgot the notebook")

    misnamed = submit_directly(paths, "misnamed", A, correct)
    misnamed.rename(misnamed.with_name(f"{A}-Copy1.ipynb"))

    submit_directly(paths, "extra", A, correct)
    nbformat.write(wrong, paths.submitted / "extra" / A / "scratch.ipynb")

    edited = fixture_notebook(paths, A, "blank")
    for cell in edited.cells:
        if cell.id.startswith("test_"):
            cell.source = "pass"
    submit_directly(paths, "edited_tests", A, edited)

    reordered = fixture_notebook(paths, A, "correct")
    tests = [c for c in reordered.cells if c.id.startswith("test_")]
    reordered.cells = tests + [c for c in reordered.cells if not c.id.startswith("test_")]
    submit_directly(paths, "reordered", A, reordered)

    stripped = fixture_notebook(paths, A, "correct")
    for cell in stripped.cells:
        cell.metadata = {}
    submit_directly(paths, "stripped", A, stripped)

    # Grade ids of the wrong JSON type: a list is unhashable, and rebuild's TypeError stopped the class.
    odd_ids = fixture_notebook(paths, A, "correct")
    for cell in odd_ids.cells:
        if "nbgrader" in cell.metadata:
            cell.metadata["nbgrader"]["grade_id"] = [cell.metadata["nbgrader"]["grade_id"]]
    submit_directly(paths, "grade_ids_as_lists", A, json.dumps(odd_ids))

    other = nbformat.read(paths.release / "ex03_model_gate" / "ex03_model_gate.ipynb", as_version=4)
    submit_directly(paths, "other_assignment", A, other)

    return paths, {r.student: r for r in course.grade(paths, A)}


@pytest.mark.parametrize("student, points, says", [
    ("good", FULL, None),
    ("truncated", 0, "not valid notebook JSON"),
    ("binary", 0, "not a text file"),
    ("empty", 0, "is empty"),
    ("not_a_notebook", 0, "not a notebook"),
    ("deeply_nested", 0, "nested too deeply"),
    ("missing", 0, "was not handed in"),
    ("misnamed", FULL, "was handed in as ex02_data_gate-Copy1.ipynb"),
    ("extra", FULL, "scratch.ipynb is not part of this assignment"),
    ("edited_tests", 0, "was edited; the original was put back"),
    ("reordered", FULL, "cells were moved"),
    ("grade_ids_as_lists", FULL, None),  # matched by cell id
    ("stripped", FULL, "lost its grading metadata"),
    ("other_assignment", 0, "another exercise"),
])
def test_bad_submission_is_graded_with_a_reason(graded, student, points, says):
    paths, results = graded
    result = results[student]
    assert not result.error, result.error
    assert result.score == pytest.approx(points), result.reason
    if says:
        assert any(says in note for note in result.notes), result.notes
        staged = nbformat.read(paths.autograded / student / A / f"{A}.ipynb", as_version=4)
        assert staged.cells[0].id == "grader-notes" and says in staged.cells[0].source


def test_raw_submissions_are_never_modified(graded):
    paths, _ = graded
    assert (paths.submitted / "truncated" / A / f"{A}.ipynb").stat().st_size > 0
    assert (paths.submitted / "misnamed" / A / f"{A}-Copy1.ipynb").exists()
    assert not (paths.submitted / "misnamed" / A / f"{A}.ipynb").exists()
