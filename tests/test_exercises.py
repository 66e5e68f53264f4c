"""The exercises: generated from solutions/ by nbgrader, leak nothing, and grade as expected.

Every fixture submission under tests/fixtures/submissions goes through real nbgrader (staging,
autograde with our preprocessors, gradebook) and must get exactly its expected points.
"""
import json
import re
from pathlib import Path

import pytest

from autograder import course, reference, reports, samples
from autograder.config import ClassPaths

REPO = Path(__file__).resolve().parent.parent
PATHS = ClassPaths.resolve(repo=REPO)
ASSIGNMENTS = course.assignments(PATHS)
EXPECTED = ["ex01_pipeline", "ex02_data_gate", "ex03_model_gate", "ex04_metadata", "ex05_registry",
            "ex06_ci_script"]
CASES = [(a, c) for a in ASSIGNMENTS for c in samples.cases(a)]
# Worthless answers behind an attack on the grader: every exercise has each of them.
FORGERIES = ("forged_stub", "forged_blank", "inverts_asserts")


def test_all_six_assignments_exist():
    assert ASSIGNMENTS == EXPECTED


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_regenerating_the_student_version_changes_nothing(assignment, graded_fixtures):
    paths, _ = graded_fixtures(assignment)  # generated afresh into an empty folder, then graded
    fresh = sorted(p.relative_to(paths.release / assignment)
                   for p in (paths.release / assignment).rglob("*") if p.is_file())
    committed = sorted(p.relative_to(REPO / "course" / assignment)
                       for p in (REPO / "course" / assignment).rglob("*") if p.is_file())
    assert fresh == committed
    for rel in fresh:
        assert (paths.release / assignment / rel).read_bytes() == \
            (REPO / "course" / assignment / rel).read_bytes(), \
            f"course/{assignment}/{rel} is stale: run `python -m autograder release {assignment}`"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_student_version_contains_no_solutions_or_hidden_tests(assignment):
    released = (REPO / "course" / assignment / f"{assignment}.ipynb").read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in released
    source = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    for cell in source["cells"]:
        text = "".join(cell["source"])
        for block in re.findall(r"### BEGIN (?:SOLUTION|HIDDEN TESTS)\n(.*?)### END", text, flags=re.S):
            for line in block.splitlines():
                if len(line.strip()) > 25:  # short lines (return None, pass) may legitimately recur
                    assert line.strip() not in released, f"solution or hidden test leaked: {line.strip()!r}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_grade_cell_is_described_and_reports(assignment):
    source = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    grade_cells = [c for c in source["cells"] if reports.is_grade_cell(c)]
    assert grade_cells
    for cell in grade_cells:
        text = "".join(cell["source"])
        gid = cell["metadata"]["nbgrader"]["grade_id"]
        assert cell["id"] == gid and gid.startswith("test_"), f"grade cell id should be descriptive: {gid}"
        assert re.match(r'\s*"""[^\n]+"""', text), f"{gid} should start with a one-line docstring"
        assert "report(" in text, f"{gid} reports nothing, so a wrong answer could pass it"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_grade_cell_mixes_visible_and_hidden_checks(assignment):
    """A hidden edge case must not cost the points of visible behaviour a learner already got
    right: a grade cell is either all visible or, past its docstring, all hidden."""
    source = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    mixed = []
    for cell in source["cells"]:
        if not reports.is_grade_cell(cell) or "### BEGIN HIDDEN TESTS" not in "".join(cell["source"]):
            continue
        before = "".join(cell["source"]).split("### BEGIN HIDDEN TESTS")[0]
        if re.sub(r'^\s*"""[^\n]*"""\s*', "", before).strip():
            mixed.append(cell["metadata"]["nbgrader"]["grade_id"])
    assert not mixed, f"{mixed} run visible checks before hidden ones: split each into two grade cells"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_every_hidden_cell_catches_a_plausible_wrong_answer(assignment):
    """For each hidden test, a fixture that is neither blank nor forged loses its points there."""
    source = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    hidden = [c["metadata"]["nbgrader"]["grade_id"] for c in source["cells"]
              if reports.is_grade_cell(c) and "### BEGIN HIDDEN TESTS" in "".join(c["source"])]
    caught = set()
    for case in samples.cases(assignment):
        if case not in ("blank", "partial") + FORGERIES:
            caught.update(samples.load(assignment, case).expected_failed)
    assert hidden, "every exercise has hidden tests"
    uncaught = sorted(set(hidden) - caught)
    assert not uncaught, f"no wrong-answer fixture in tests/fixtures/submissions/{assignment}/ fails {uncaught}"


def _guessable(value) -> bool:
    """A value a forger could produce without the answer: booleans, None, 0, 1, 2, "", and
    containers of nothing else (issue 10: no verdict without the answer)."""
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, (int, float)):
        return value in (0, 1, 2)
    if isinstance(value, str):
        return value == ""
    if isinstance(value, list):
        return all(_guessable(v) for v in value)
    if isinstance(value, dict):
        return all(_guessable(v) for v in value.values())
    return False


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_reference_solution_passes_all_its_tests(assignment, graded_fixtures):
    paths, _ = graded_fixtures(assignment)  # grading ran the reference solution (reference.compute)
    source = paths.source / assignment / f"{assignment}.ipynb"
    result = json.loads((paths.reference / assignment / f"{assignment}.json").read_text())
    assert result["source_sha256"] == reference.sha256_of(REPO / "solutions" / assignment / f"{assignment}.ipynb")
    assert result["source_sha256"] == reference.sha256_of(source)
    assert all(result["cells"].values())
    forgeable = [gid for gid, reported in result["cells"].items()
                 if all(_guessable(r.get("value")) for r in reported)]
    assert not forgeable, (f"{forgeable} report only guessable values (booleans, None, 0, empty): a forged "
                           "answer could pass them; report at least one value only a right answer produces")


@pytest.mark.parametrize("assignment, case", CASES)
def test_fixture_submission_gets_its_expected_points(assignment, case, graded_fixtures):
    paths, results = graded_fixtures(assignment)
    sample = samples.load(assignment, case)
    result = results[case]
    assert not result.error, result.error
    failed = sorted(c.grade_id for c in result.cells if c.max_points and c.points < c.max_points
                    and c.reason)
    assert failed == sorted(sample.expected_failed), f"{case}: {sample.description}\n{result.reason}"
    assert result.score == pytest.approx(sample.expected_points), f"{case}: {sample.description}"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_fixture_corpus_covers_right_blank_partial_and_wrong(assignment, graded_fixtures):
    cases = samples.cases(assignment)
    assert {"correct", "blank", "partial", *FORGERIES} <= set(cases)
    # correct and correct_* are right answers written in different styles: each must get full marks.
    right = [c for c in cases if c == "correct" or c.startswith("correct_")]
    wrong = [c for c in cases if c not in right and c not in ("blank", "partial") + FORGERIES]
    assert len(wrong) >= 3, "at least three plausible wrong answers per assignment"
    paths, results = graded_fixtures(assignment)
    assert results["correct"].score > 0 and results["blank"].score == 0
    for forged in ("forged_stub", "forged_blank"):
        assert results[forged].score == 0, f"{forged}: a forged verdict earned {results[forged].score} points"
    for case in right:
        assert results[case].score == pytest.approx(results["correct"].score), (
            f"{case} is a right answer and should get full marks, like correct")
    for case in wrong + ["partial"]:
        assert results[case].score < results["correct"].score, f"{case} should lose points"


@pytest.mark.parametrize("assignment", ASSIGNMENTS)
def test_no_hidden_test_gives_the_assert_inverter_a_point(assignment, graded_fixtures):
    """The measured attack on hidden tests: a blank answer behind a transformer that turns each
    assert of a reporting cell into the values it demands. Visible tests may fall to it (their
    expected values are in the learner's copy anyway); no hidden test may."""
    source = json.loads((REPO / "solutions" / assignment / f"{assignment}.ipynb").read_text())
    hidden = {c["metadata"]["nbgrader"]["grade_id"] for c in source["cells"]
              if reports.is_grade_cell(c) and "### BEGIN HIDDEN TESTS" in "".join(c["source"])}
    _, results = graded_fixtures(assignment)
    earned = sorted(c.grade_id for c in results["inverts_asserts"].cells if c.grade_id in hidden and c.points)
    assert hidden and not earned, f"the assert inverter earned points in hidden tests {earned}"
