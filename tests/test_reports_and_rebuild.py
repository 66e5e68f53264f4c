"""Pure parts of the grader: verdicts from reports, and rebuilding a submission from the skeleton."""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from autograder import reports, submission

MIME = reports.REPORT_MIME


def report(check, value):
    return new_output("display_data", data={MIME: {"check": check, "value": value}})


def grade_cell(outputs=(), gid="test_x"):
    cell = new_code_cell('"""Checks x."""\nreport("x", f(1))', id=gid)
    cell.metadata["nbgrader"] = {"grade": True, "solution": False, "locked": True, "grade_id": gid,
                                 "points": 2, "schema_version": 3}
    cell.outputs = list(outputs)
    return cell


EXPECTED = [{"check": "x", "value": True}, {"check": "y", "value": 0.75}]


def test_matching_reports_pass():
    assert reports.decide(grade_cell([report("x", True), report("y", 0.7500000001)]), EXPECTED).passed


def test_a_different_value_fails_and_names_the_check():
    verdict = reports.decide(grade_cell([report("x", True), report("y", 0.74)]), EXPECTED)
    assert not verdict.passed and verdict.failed_checks == ["y"]


def test_bool_and_int_are_not_interchangeable():
    assert not reports.decide(grade_cell([report("x", 1), report("y", 0.75)]), EXPECTED).passed


def test_an_error_fails_even_with_right_reports():
    err = new_output("error", ename="AssertionError", evalue="f(1) should be True", traceback=[])
    verdict = reports.decide(grade_cell([report("x", True), report("y", 0.75), err]), EXPECTED)
    assert not verdict.passed and "should be True" in verdict.reason


def test_missing_or_extra_reports_fail():
    assert not reports.decide(grade_cell([report("x", True)]), EXPECTED).passed
    extra = [report("x", True), report("y", 0.75), report("z", 1)]
    assert not reports.decide(grade_cell(extra), EXPECTED).passed
    assert not reports.decide(grade_cell([]), EXPECTED).passed


def test_reordered_reports_fail():
    assert not reports.decide(grade_cell([report("y", 0.75), report("x", True)]), EXPECTED).passed


def test_a_cell_without_reference_never_passes():
    assert not reports.decide(grade_cell([report("x", True)]), []).passed


def test_stdout_claims_of_success_are_ignored():
    fake = new_output("stream", name="stdout", text='{"check": "x", "value": true}')
    assert not reports.decide(grade_cell([fake]), EXPECTED).passed


# --- rebuild -----------------------------------------------------------------------------

def skeleton():
    nb = new_notebook()
    answer = new_code_cell("def f(x):\n    # YOUR CODE HERE\n    raise NotImplementedError()", id="answer_f")
    answer.metadata["nbgrader"] = {"grade": False, "solution": True, "locked": False, "grade_id": "answer_f",
                                   "schema_version": 3}
    nb.cells = [new_markdown_cell("# Exercise", id="intro"), answer, grade_cell(gid="test_f")]
    return nb


def submitted(answer_source, mutate=None):
    nb = skeleton()
    nb.cells[1].source = answer_source
    if mutate:
        mutate(nb)
    return nbformat.from_dict(nb)


def test_answer_is_taken_and_tests_kept():
    graded, notes = submission.rebuild(skeleton(), submitted("def f(x):\n    return True"))
    assert graded.cells[1].source == "def f(x):\n    return True"
    assert graded.cells[2].source == skeleton().cells[2].source and notes == []


def test_edited_test_is_restored_with_a_note():
    def edit(nb):
        nb.cells[2].source = "pass"
    graded, notes = submission.rebuild(skeleton(), submitted("x", edit))
    assert graded.cells[2].source == skeleton().cells[2].source
    assert any("test cell 'test_f' was edited" in n for n in notes)


def test_deleted_test_is_put_back():
    graded, notes = submission.rebuild(skeleton(), submitted("x", lambda nb: nb.cells.pop(2)))
    assert [c.id for c in graded.cells] == ["intro", "answer_f", "test_f"]
    assert any("was deleted" in n for n in notes)


def test_metadata_stripped_answer_is_matched_by_cell_id():
    def strip(nb):
        for cell in nb.cells:
            cell.metadata = {}
    graded, notes = submission.rebuild(skeleton(), submitted("def f(x):\n    return 1", strip))
    assert graded.cells[1].source == "def f(x):\n    return 1"
    assert graded.cells[2].metadata["nbgrader"]["grade"] is True
    assert any("lost its grading metadata" in n for n in notes)


def test_reordered_cells_are_put_back_and_extra_cells_kept_in_place():
    def reorder(nb):
        helper = new_code_cell("def helper():\n    return 1", id="mine")
        helper.metadata["nbgrader"] = {"grade": True, "points": 100, "grade_id": "fake"}
        nb.cells = [nb.cells[2], helper, nb.cells[1], nb.cells[0]]
    graded, notes = submission.rebuild(skeleton(), submitted("y", reorder))
    ids = [c.id for c in graded.cells]
    assert ids[:3] == ["intro", "answer_f", "test_f"] and len(ids) == 4
    extra = graded.cells[3]
    assert "helper" in extra.source and "nbgrader" not in extra.metadata, "extra cells cannot pose as tests"
    assert any("moved" in n for n in notes)


def test_notebook_of_another_assignment_is_graded_as_unanswered():
    other = new_notebook(cells=[new_code_cell("print('hi')", id="something-else")])
    graded, notes = submission.rebuild(skeleton(), other)
    assert "NotImplementedError" in graded.cells[1].source and "another exercise" in notes[0]


def test_unreadable_files_get_plain_reasons(tmp_path):
    cases = {"empty.ipynb": b"", "binary.ipynb": b"\x89PNG\r\n\x1a\n\x00\x00",
             "cut.ipynb": b'{"cells": [{"cell_type": "code", "sou', "list.ipynb": b"[1, 2]"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        nb, problem = submission.read_submitted(tmp_path / name)
        assert nb is None and name in problem
    assert "empty" in submission.read_submitted(tmp_path / "empty.ipynb")[1]
    assert "truncated" in submission.read_submitted(tmp_path / "cut.ipynb")[1]


def test_metadata_and_source_of_the_wrong_json_type_are_treated_as_absent():
    """A grade id that is a list (unhashable) raised TypeError in rebuild, which stopped the class's
    grading; a source that is a number reached the kernel as an answer."""
    odd = submitted("def f(x):\n    return x")
    odd.cells[1].metadata["nbgrader"]["grade_id"] = ["answer_f"]
    graded, notes = submission.rebuild(skeleton(), odd)
    assert graded.cells[1].source == "def f(x):\n    return x"  # matched by its cell id instead
    numeric = submitted("def f(x):\n    return x")
    numeric.cells[1].source = 5
    numeric.cells[1].id = ["answer_f"]
    numeric.cells.append(nbformat.from_dict({"cell_type": "code", "source": {"a": 1}, "metadata": {},
                                             "outputs": [], "execution_count": None, "id": "mine"}))
    graded, notes = submission.rebuild(skeleton(), numeric)
    assert all(isinstance(c.source, str) for c in graded.cells)
    assert "NotImplementedError" not in graded.cells[1].source and graded.cells[1].source == ""
    nbformat.validate(graded)
