"""Learners' feedback: a summary first (description, points, verdict, reason), written answers
awaiting a grader say so, and the instructor is warned when such feedback is released."""
import html
import json
import re
from pathlib import Path

import pytest

from autograder import course, kernel_forks
from autograder.sandbox import isolation_status
from conftest import skip_or_fail

REPO = Path(__file__).resolve().parent.parent
ASSIGNMENT = "ex01_pipeline"


def _text(page: str) -> str:
    return html.unescape(re.sub(r"<[^>]+>", " ", page))


def _hidden_lines():
    source = json.loads((REPO / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text())
    for cell in source["cells"]:
        text = "".join(cell["source"])
        for block in re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END", text, flags=re.S):
            yield from (line.strip() for line in block.splitlines() if len(line.strip()) > 25)


# Parametrized by the exercise so that these tests run on the worker that grades its fixture
# class (the root conftest.py groups tests by exercise) and reuse that class.
@pytest.mark.parametrize("assignment", [ASSIGNMENT])
def test_feedback_opens_with_a_summary_and_never_calls_a_pending_answer_zero(assignment, graded_fixtures):
    paths, _ = graded_fixtures(assignment)
    _, notes = course.feedback(paths, ASSIGNMENT, "partial")
    page = (paths.feedback / "partial" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    text = _text(page[page.index('id="summary"'):page.index('id="notebook"')])
    assert "PIPELINE is a list that names each of the six stages" in text
    assert "next_stage follows PIPELINE" in text and "failed" in text and "passed" in text
    assert "NotImplementedError" in text, "a failed test's row gives its reason"
    assert "Test cell" not in page, "the stock index of anonymous 'Test cell' links is gone"
    assert not [note for note in notes if note.startswith("WARNING")], "partial left the written answer blank: nothing awaits a grader"

    _, notes = course.feedback(paths, ASSIGNMENT, "correct")
    page = (paths.feedback / "correct" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    text = _text(page[page.index('id="summary"'):page.index('id="notebook"')])
    assert "awaiting a grader" in text and "– / 3" in text
    heading = _text(page[page.index("<h4>"):page.index("</h4>")])
    assert "not final" in heading and "3 more points" in heading and "10 / 13" not in heading, heading
    assert "Written response" not in page and "Score: 0.0 / 3.0" not in page
    body = _text(page)
    for line in _hidden_lines():
        assert line not in body, f"hidden test code reached the feedback: {line}"
    assert any(note.startswith("WARNING: correct's feedback") and "manual grades pending" in note for note in notes), notes


@pytest.mark.parametrize("assignment", [ASSIGNMENT])
def test_the_command_line_warns_about_pending_manual_grades(assignment, graded_fixtures, capsys):
    from autograder import cli
    paths, _ = graded_fixtures(assignment)
    code = cli.main(["feedback", ASSIGNMENT, "--student", "correct", "--class-dir", str(paths.class_dir),
                     "--exchange", str(paths.exchange)])
    err = capsys.readouterr().err
    assert code == 0
    assert "WARNING: correct's feedback for ex01_pipeline was released with manual grades pending (tradeoff_answer)" in err


@pytest.mark.parametrize("assignment", [ASSIGNMENT])
def test_feedback_forks_its_visible_only_run_from_the_assignments_server(assignment, graded_fixtures, monkeypatch):
    """Feedback re-runs a notebook without its hidden tests: that kernel, too, is forked from a
    fork server importing the assignment's own modules (the run is told its assignment)."""
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"feedback shows no outputs without the sandbox: {isolation_status()}")
    paths, _ = graded_fixtures(assignment)
    asked, serve = [], kernel_forks.server
    monkeypatch.setattr(kernel_forks, "server", lambda preload, environment: asked.append(preload) or
                        serve(preload, environment))
    pages, _ = course.feedback(paths, ASSIGNMENT, "correct")
    assert pages and asked == [kernel_forks.modules_to_preload(paths.release / ASSIGNMENT)]
