"""Grading stays correct and in charge whatever a submission does.

Each attack in tests/fixtures/attacks/ is a real submission. It is graded twice: by stock
nbgrader 0.9.6 (plain `autograde` on the raw submission, default settings), to show the attack
really works there, and by our pipeline, which must give exactly the expected points.
"""
import base64
import html as html_lib
import json
import os
import re
import sqlite3
from pathlib import Path

import nbformat
import pytest
from nbgrader.api import Gradebook
from nbgrader.apps import NbGraderAPI
from traitlets.config import Config

from autograder import course, lint, samples
from autograder.preprocessors import GuardedExecute
from autograder.sandbox import isolation_status
from conftest import block_lines, fixture_notebook, skip_or_fail, submit_directly, generated_course_copy

ASSIGNMENT = "ex02_data_gate"
ATTACKS_DIR = Path(__file__).parent / "fixtures" / "attacks"
ATTACKS = samples.cases(ASSIGNMENT, root=ATTACKS_DIR)
FULL = 10.0
VICTIM = "aaa_victim"  # graded first, so a later attacker could tamper with its grade


def attack(name):
    return samples.load(ASSIGNMENT, name, root=ATTACKS_DIR)


def attack_notebook(paths, name):
    return samples.build(attack(name), paths.release / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
                         paths.source / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")


@pytest.fixture(scope="module")
def classroom(tmp_path_factory):
    """One class: a victim with a correct answer, and one student per attack."""
    os.environ["CICD_CELL_TIMEOUT"] = "15"  # the infinite loop costs this once, not per cell; 10 s flaked under load
    paths = generated_course_copy(tmp_path_factory.mktemp("trust"), ASSIGNMENT)
    submit_directly(paths, VICTIM, ASSIGNMENT, fixture_notebook(paths, ASSIGNMENT, "correct"))
    for name in ATTACKS:
        submit_directly(paths, name, ASSIGNMENT, attack_notebook(paths, name))
    ours = {r.student: r for r in course.grade(paths, ASSIGNMENT)}
    os.environ.pop("CICD_CELL_TIMEOUT")
    return paths, ours


def stock_nbgrader(paths, students):
    """Stock nbgrader: its own class folder and gradebook (out of reach of ours, which its
    attackers would otherwise find), default preprocessors and settings."""
    stock_class = paths.repo.parent / "stock" / "class"
    stock_class.mkdir(parents=True, exist_ok=True)
    c = Config()
    c.CourseDirectory.root = str(paths.repo)
    c.CourseDirectory.source_directory = "solutions"
    c.CourseDirectory.release_directory = "stock-release"
    c.CourseDirectory.submitted_directory = str(paths.submitted)
    c.CourseDirectory.autograded_directory = str(stock_class / "autograded")
    c.CourseDirectory.db_url = f"sqlite:///{stock_class / 'gradebook.db'}"
    api = NbGraderAPI(config=c)
    assert api.generate_assignment(ASSIGNMENT, force=True)["success"]
    outcomes, scores = {}, {}
    for s in students:  # each score is read right away: a later attacker may rewrite it
        outcomes[s] = api.autograde(ASSIGNMENT, s, force=True, create=True)
        with Gradebook(c.CourseDirectory.db_url) as gb:
            try:
                scores[s] = gb.find_submission(ASSIGNMENT, s).score
            except Exception:
                scores[s] = None
    return outcomes, scores, stock_class / "autograded"


def test_the_corpus_covers_every_attack_the_issue_names():
    assert {"input_transformer", "try_wrapper", "swallow_exceptions", "forged_reports", "only_when_graded",
            "equal_to_everything", "kills_kernel", "tampers_gradebook", "reads_hidden_tests",
            "warns_on_stderr", "huge_output_line", "deletes_tests", "infinite_loop",
            "memory_blowup"} <= set(ATTACKS)


@pytest.mark.parametrize("name", ATTACKS)
def test_our_grade_for_each_attack(name, classroom):
    paths, ours = classroom
    result = ours[name]
    assert not result.error, result.error
    assert result.score == pytest.approx(attack(name).expected_points), f"{name}: {result.reason}"
    assert ours[VICTIM].score == pytest.approx(FULL), "the victim's grade was changed"


def test_stock_nbgrader_falls_for_the_attacks(classroom):
    """Each cheating case is a real attack: stock nbgrader gets it wrong in the documented way."""
    paths, _ = classroom
    stock = {n: attack(n).data["stock"] for n in ATTACKS if attack(n).data["stock"] != "n/a"}
    outcomes, scores, autograded = stock_nbgrader(paths, [VICTIM] + sorted(stock))
    assert scores[VICTIM] is not None
    wrong = [f"{name} ({kind}): {why}" for name, kind in stock.items()
             if (why := _stock_fell_for(kind, name, outcomes, scores, autograded))]
    assert not wrong, "stock nbgrader did not fall for: " + "; ".join(wrong)


def _stock_fell_for(kind, name, outcomes, scores, autograded):
    """'' when stock nbgrader got `name` wrong in the way `kind` says, else what it did instead."""
    graded = autograded / name / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    if kind == "full_marks":
        return "" if scores[name] == pytest.approx(FULL) else f"gave {scores[name]}"
    if kind == "also_zero":
        return "" if not scores[name] else f"gave {scores[name]}"
    if kind == "some_marks":  # a worthless answer earns points from stock nbgrader
        return "" if scores[name] else "gave 0"
    if kind == "crashes":
        return "" if not outcomes[name]["success"] else "survived"
    if kind == "tampers_gradebook":
        with Gradebook(f"sqlite:///{autograded.parent / 'gradebook.db'}") as gb:
            victim = gb.find_submission(ASSIGNMENT, VICTIM).score
        return "" if victim > FULL else f"victim still has {victim}"
    if kind == "leaks_hidden_tests":
        text = graded.read_text()
        return "" if "LEAKED" in text and "LEAKED 0" not in text else "found no hidden tests"
    if kind == "correct_loses_points":
        return "" if scores[name] < FULL else f"gave {scores[name]}"
    if kind == "keeps_huge_output":
        return "" if graded.stat().st_size > 20_000_000 else f"notebook is {graded.stat().st_size} bytes"
    if kind == "ungraded":
        return "" if not scores[name] else f"gave {scores[name]}"
    return f"unknown stock outcome {kind!r}"


def test_lint_refused_every_cell_the_forger_passes(classroom):
    """The forger of issue 10 (every statement alone, booleans forced to True), graded for real:
    every cell it passes is one that lint refuses at release (after the exercises report
    answer-derived values, it passes none: test_our_grade_for_each_attack)."""
    paths, ours = classroom
    passed = {c.grade_id for c in ours["forges_every_statement"].cells if c.max_points and c.points == c.max_points}
    refused = {f.grade_id for f in lint.lint_assignment(paths, ASSIGNMENT) if f.severity == "error"}
    assert passed <= refused, f"the forger passed {passed - refused}, which lint let through"


def test_reasons_say_what_happened(classroom):
    paths, ours = classroom
    assert "time limit" in ours["infinite_loop"].reason or any(
        "time limit" in c.reason for c in ours["infinite_loop"].cells)
    assert any("kernel died" in c.reason for c in ours["kills_kernel"].cells)
    assert any("deleted" in n for n in ours["deletes_tests"].notes)


def test_sandbox_hides_the_gradebook_and_the_solutions(classroom):
    if isolation_status() != "bubblewrap":
        skip_or_fail("needs bubblewrap: " + isolation_status())
    paths, ours = classroom
    leak = (paths.autograded / "reads_hidden_tests" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text()
    assert "LEAKED 0 hidden tests" in leak
    tamper = (paths.autograded / "tampers_gradebook" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text()
    assert "TAMPERED gradebook" not in tamper and "TAMPERED" in tamper  # the attack ran, found nothing
    with sqlite3.connect(paths.gradebook) as con:
        assert con.execute("SELECT count(*) FROM grade WHERE manual_score = 99").fetchone()[0] == 0
    assert all(r.isolation == "bubblewrap" for r in ours.values())


@pytest.mark.parametrize("name", ["huge_output_line", "many_lines"])
def test_huge_output_is_cut(classroom, name):
    paths, _ = classroom
    graded = paths.autograded / name / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert graded.stat().st_size < 1_000_000
    text = graded.read_text()
    assert "cut by the grader" in text or "dropped by the grader" in text or "truncated" in text


def test_a_flood_of_errors_and_widgets_is_not_kept(classroom):
    """100 error messages and 100 widget states of 1 MB each: three short errors are kept."""
    paths, ours = classroom
    graded = paths.autograded / "floods_errors_and_widgets" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    assert graded.stat().st_size < 1_000_000
    cell = next(c for c in nbformat.read(graded, as_version=4).cells if c.get("id") == "find_problems")
    errors = [o for o in cell.outputs if o.get("output_type") == "error"]
    assert [e.ename for e in errors] == ["Flood"] * 3, [e.get("ename") for e in errors]
    assert all(len(e.evalue) <= 2_000 and len(e.traceback) <= 30 for e in errors)


def test_output_and_widget_messages_past_the_caps_are_dropped_as_they_arrive():
    """What GuardedExecute keeps while a cell runs: the grader's memory must not grow with the flood."""
    execute = GuardedExecute()
    execute.reset_execution_trackers()  # what nbclient sets up before a notebook and a cell runs
    execute.clear_before_next_output, execute._output_bytes = False, 0
    outs = []
    big = "x" * 1024**2
    for i in range(50):
        execute.output(outs, {"msg_type": "error", "header": {"msg_type": "error"}, "parent_header": {},
                              "content": {"ename": "Flood", "evalue": big, "traceback": [big] * 50}}, None, 0)
        execute.output(outs, {"msg_type": "stream", "header": {"msg_type": "stream"}, "parent_header": {},
                              "content": {"name": "stdout", "text": big}}, None, 0)
        execute.handle_comm_msg(outs, {"msg_type": "comm_open", "content": {
            "comm_id": f"c{i}", "target_name": "jupyter.widget", "data": {"state": {"blob": big}}}}, 0)
    assert sum(len(json.dumps(o)) for o in outs) < 3 * 1024**2
    assert [o.output_type for o in outs].count("error") == 3
    assert not execute.widget_state and not getattr(execute, "comm_objects", {})


def hidden_test_lines(paths):
    lines = block_lines(paths, ASSIGNMENT, "HIDDEN TESTS", 20)
    assert lines, f"{ASSIGNMENT} should have hidden tests"
    return lines


def test_feedback_shows_names_docstrings_and_messages_never_hidden_test_code(classroom):
    paths, ours = classroom
    course.feedback(paths, ASSIGNMENT, "input_transformer")
    html = (paths.feedback / "input_transformer" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text()
    text = html_lib.unescape(html)
    for line in hidden_test_lines(paths):
        assert line not in text, f"hidden test code leaked into feedback: {line}"
    assert "test_rejects_bad_ids" in text or "rejects missing and duplicated learner ids" in text
    assert "The gate rejects missing and duplicated learner ids" in text  # the docstring


LEAKERS = ["prints_test_source", "raises_test_source", "only_when_graded"]


def feedback_text(paths, student, folder="feedback"):
    return html_lib.unescape((paths.class_dir / folder / student / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())


def hidden_lines_found(paths, text):
    """Hidden test lines in a text: plain, reversed, or inside any base64 blob."""
    decoded = []
    for blob in re.findall(r"[A-Za-z0-9+/]{40,}={0,2}", text):
        try:
            decoded.append(base64.b64decode(blob + "=" * (-len(blob) % 4)).decode("utf-8", "replace"))
        except ValueError:
            pass
    haystacks = [text, text[::-1], *decoded]
    return [line for line in hidden_test_lines(paths) if any(line in h for h in haystacks)]


@pytest.fixture(scope="module")
def leak_feedback(classroom):
    paths, _ = classroom
    for student in LEAKERS:
        course.feedback(paths, ASSIGNMENT, student)
    return paths


@pytest.mark.parametrize("student", LEAKERS)
def test_no_hidden_test_line_reaches_the_learner(leak_feedback, student):
    text = feedback_text(leak_feedback, student)
    assert not hidden_lines_found(leak_feedback, text), f"{student}'s feedback shows hidden test code"
    assert "Grader: " in text  # the grader's own verdict per test is there


def test_the_leaking_attacks_are_real(classroom):
    """Shown the graded notebook's outputs (today's feedback before this guarantee, code hidden
    but outputs kept), the printing and raising attacks do read the hidden tests."""
    paths, _ = classroom
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades
    from autograder.preprocessors import HideTestSource
    grader = course.api(paths, GenerateFeedback={"preprocessors": [GetGrades, HideTestSource, CSSHTMLHeaderPreprocessor]},
                        CourseDirectory={"feedback_directory": str(paths.class_dir / "old-feedback")})
    for student in ("prints_test_source", "raises_test_source"):
        assert grader.generate_feedback(ASSIGNMENT, student, force=True)["success"]
        assert len(hidden_lines_found(paths, feedback_text(paths, student, "old-feedback"))) > 10, student


def test_feedback_keeps_visible_failure_messages(leak_feedback):
    """A wrong answer that hid itself only while graded fails its visible tests in the feedback run,
    and the learner reads their messages."""
    if isolation_status() != "bubblewrap":
        skip_or_fail("needs bubblewrap: " + isolation_status())
    text = feedback_text(leak_feedback, "only_when_graded")
    assert "AssertionError: validate_training_data" in text
    assert "checks without the expected result" in text


def test_stock_feedback_does_leak_hidden_tests(classroom):
    """Why VisibleOnlyFeedback exists: nbgrader's own feedback prints the hidden tests."""
    paths, _ = classroom
    c = Config()
    c.CourseDirectory.root = str(paths.repo)
    c.CourseDirectory.source_directory = "solutions"
    c.CourseDirectory.autograded_directory = str(paths.autograded)
    c.CourseDirectory.feedback_directory = str(paths.class_dir / "stock-feedback")
    c.CourseDirectory.db_url = f"sqlite:///{paths.gradebook}"
    assert NbGraderAPI(config=c).generate_feedback(ASSIGNMENT, VICTIM)["success"]
    html = html_lib.unescape(
        (paths.class_dir / "stock-feedback" / VICTIM / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())
    assert any(line in html for line in hidden_test_lines(paths))
