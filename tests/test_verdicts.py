"""No verdict without the answer: negative controls at release and in `lint`.

A tiny assignment holds one good test cell and test cells that a worthless answer passes; the
real attack of issue 10 (every statement alone, every reported boolean forced to True) is graded
through the real pipeline, and every cell it passes must be one that lint refuses.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from autograder import course, lint, reports
from autograder.config import ClassPaths
from conftest import REPO

SETUP = '''from IPython.display import display


def report(check, value):
    display({"application/vnd.cicd-course.check+json": {"check": check, "value": value}}, raw=True)
'''


def nbgrader_cell(source, grade_id, *, kind, points=0):
    meta = {"grade": kind in ("test", "manual"), "solution": kind in ("answer", "manual"),
            "locked": kind in ("test", "setup"), "grade_id": grade_id, "schema_version": 3, "task": False}
    if meta["grade"]:
        meta["points"] = points
    cell = new_code_cell(source, id=grade_id)
    cell.metadata["nbgrader"] = meta
    return cell


def tiny_assignment(root: Path, name: str, test_cells: dict[str, str]) -> ClassPaths:
    """A one-notebook assignment: add(a, b) and the given test cells (grade id -> source)."""
    answer = "def add(a, b):\n    ### BEGIN SOLUTION\n    return a + b\n    ### END SOLUTION\n"
    cells = [new_markdown_cell("# Add two numbers"), nbgrader_cell(SETUP, "setup", kind="setup"),
             nbgrader_cell(answer, "answer", kind="answer")]
    cells += [nbgrader_cell(src, gid, kind="test", points=1) for gid, src in test_cells.items()]
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    folder = root / "repo" / "solutions" / name
    folder.mkdir(parents=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    (root / "repo" / "course").mkdir(exist_ok=True)
    return ClassPaths(root / "repo", root / "class", root / "exchange")


TINY_TESTS = {
    # Values only a right answer computes: passes no control.
    "test_good": '"""add sums."""\nreport("sums", [add(1, 2), add(-1, 1), add(2.5, 2.5)])',
    # Reports a lone True after an assert: every statement alone + True forges it.
    "test_lone_true": '"""add(1, 2) is 3."""\nassert add(1, 2) == 3\nreport("three", add(1, 2) == 3)',
    # Reports a constant: passes even the blank release.
    "test_constant": '"""The notebook ran."""\nreport("ran", 42)',
    # A list of booleans, all True: forged from the source's shape.
    "test_all_true_list": '"""add is symmetric."""\nreport("symmetric", [add(1, 2) == add(2, 1), add(0, 5) == 5])',
    # The stub's own value (None) is the expected one.
    "test_none_expected": '"""add of nothing."""\nreport("nothing", None if add(1, 1) == 2 else "wrong")',
    # Reports only what the answer computes, but its hidden asserts and its unread `expected`
    # column tell the kernel what to produce (the assert inverter passes it).
    "test_hidden_asserts": ('"""Hidden: add handles negatives."""\n### BEGIN HIDDEN TESTS\n'
                            'for a, b, expected in [(-1, -2, -3), (5, -5, 0)]:\n    got = add(a, b)\n'
                            '    assert got == expected, f"add({a}, {b}) should be {expected}"\n'
                            '    report(f"add({a}, {b})", got)\n### END HIDDEN TESTS'),
}
FORGEABLE = {"test_lone_true", "test_constant", "test_all_true_list", "test_none_expected", "test_hidden_asserts"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    paths = tiny_assignment(tmp_path_factory.mktemp("tiny"), "tiny", TINY_TESTS)
    return paths, lint.lint_assignment(paths, "tiny")


def test_lint_refuses_each_forgeable_cell_and_keeps_the_good_one(tiny):
    _, findings = tiny
    errors = {f.grade_id: f.message for f in findings if f.severity == "error"}
    assert set(errors) == FORGEABLE, errors
    assert "blank release" in errors["test_constant"]
    assert "line 5 asserts `got == expected`" in errors["test_hidden_asserts"]
    assert "forced to True" in errors["test_lone_true"]
    assert "forced to True" in errors["test_all_true_list"]


def test_lint_results_are_cached_until_the_source_changes(tiny):
    paths, findings = tiny
    cache = paths.reference / "tiny" / "tiny.lint.json"
    assert [f.__dict__ for f in findings] == json.loads(cache.read_text())["findings"]
    stored = json.loads(cache.read_text())
    stored["findings"] = []
    cache.write_text(json.dumps(stored))
    assert lint.lint_assignment(paths, "tiny") == []  # the cache is used while the source is unchanged
    source = paths.source / "tiny" / "tiny.ipynb"
    source.write_text(source.read_text().replace("add(2.5, 2.5)", "add(3.5, 2.5)"))
    assert {f.grade_id for f in lint.lint_assignment(paths, "tiny") if f.severity == "error"} == FORGEABLE


def test_hidden_giveaways_name_each_assert_and_each_unread_name():
    cell = ('"""Hidden: cases."""\nfrom math import isclose\n### BEGIN HIDDEN TESTS\n'
            'for name, args, expected in CASES:\n    got = f(*args)\n    assert isclose(got, expected)\n'
            '    report(name, got)\ntry:\n    f(-1)\nexcept ValueError as err:\n    report("raises", str(err)[:5])\n'
            'unused = f(0)\n### END HIDDEN TESTS\nassert True  # outside the hidden block: the learner sees it\n')
    assert lint.hidden_giveaways(cell) == ["line 6 asserts `isclose(got, expected)`",
                                           "line 12 binds `unused`, which nothing reads"]
    # Without its assert, `expected` is read by nothing: the kernel would still see the table.
    without = cell.replace("    assert isclose(got, expected)\n", "")
    assert lint.hidden_giveaways(without) == ["line 4 binds `expected`, which nothing reads",
                                              "line 11 binds `unused`, which nothing reads"]
    assert lint.hidden_giveaways(without, frozenset({"expected", "unused"})) == []
    assert lint.hidden_giveaways(cell.replace("### BEGIN HIDDEN TESTS\n", "").replace("### END HIDDEN TESTS\n", "")) == []


def with_grader(paths: ClassPaths) -> ClassPaths:
    """Put the grader (package and root nbgrader config) into a course copy, so that its command
    line and nbgrader, run from the copy's root, work on the copy."""
    shutil.copytree(REPO / "autograder", paths.repo / "autograder", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "nbgrader_config.py", paths.repo / "nbgrader_config.py")
    return paths


def own_lines(stderr: str) -> list[str]:
    """Every line the command wrote: the kernels it ran write nothing to its terminal (no
    start-up warning, no libzmq assertion as a kernel stops)."""
    return stderr.strip().splitlines()


def run_cli(*args, cwd=REPO):
    env = {k: v for k, v in os.environ.items() if k not in ("CICD_CLASS_DIR", "CICD_EXCHANGE", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "autograder", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_release_refuses_naming_the_cells_and_publishes_nothing(tmp_path):
    """`python -m autograder release` refuses; so does `nbgrader release_assignment` from the
    repository root (and so the Formgrader's Release button)."""
    paths = with_grader(tiny_assignment(tmp_path, "tiny", {k: TINY_TESTS[k] for k in ("test_good", "test_lone_true")}))
    done = run_cli("release", "tiny", "--class-dir", str(paths.class_dir), "--exchange", str(paths.exchange),
                   cwd=paths.repo)
    assert done.returncode == 2, done.stdout + done.stderr
    lines = own_lines(done.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: tiny was not released"), done.stderr
    assert "test_lone_true" in lines[0] and "test_good" not in lines[0]
    assert not list(paths.exchange.rglob("*.ipynb")), "a refused assignment must not reach the exchange"

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CICD_CLASS_DIR=str(paths.class_dir), CICD_EXCHANGE=str(paths.exchange),
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    done = subprocess.run([sys.executable, "-m", "nbgrader", "release_assignment", "tiny"], cwd=paths.repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "test_lone_true" in done.stderr and "was not released" in done.stderr
    assert not list(paths.exchange.rglob("*.ipynb"))


def test_lint_cli_exit_status_and_lines(tmp_path):
    paths = with_grader(tiny_assignment(tmp_path, "tiny", {"test_good": TINY_TESTS["test_good"]}))
    done = run_cli("lint", "tiny", "--class-dir", str(paths.class_dir), cwd=paths.repo)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every test cell tells right from wrong" in done.stdout
    done = run_cli("lint", "no_such_assignment", "--class-dir", str(paths.class_dir), cwd=paths.repo)
    assert done.returncode == 2 and len(own_lines(done.stderr)) == 1 and "unknown assignment" in done.stderr
    source = paths.source / "tiny" / "tiny.ipynb"
    source.write_text(source.read_text()[:200])  # a source notebook cut off mid-save
    done = run_cli("lint", "tiny", "--class-dir", str(paths.class_dir), cwd=paths.repo)
    assert done.returncode == 2 and len(own_lines(done.stderr)) == 1, done.stderr
    assert "not valid notebook JSON" in done.stderr and "restore it from git" in done.stderr


@pytest.mark.parametrize("assignment", course.assignments(ClassPaths.resolve(repo=REPO)))
def test_every_exercise_passes_lint(assignment, graded_fixtures):
    """Every test cell of the six exercises fails the blank release and every forged stub
    (linted in the class of the exercise's graded fixtures, whose reference results it reuses)."""
    paths, _ = graded_fixtures(assignment)
    errors = [str(f) for f in lint.lint_assignment(paths, assignment) if f.severity == "error"]
    assert not errors, "\n".join(errors)


def test_stub_keeps_names_and_signatures_but_does_no_work():
    stub = lint.stub_source("import math\n\n\ndef area(r, *, exact=False):\n    ### BEGIN SOLUTION\n"
                            "    return math.pi * r * r\n    ### END SOLUTION\n\n\nclass Box:\n    size = 3\n\n"
                            "    def volume(self):\n        return self.size ** 3\n\n\nLIMIT = area(2)\nprint(LIMIT)\n")
    namespace = {}
    exec(stub, namespace)
    assert namespace["area"](2, exact=True) is None and namespace["Box"]().volume() is None
    assert namespace["LIMIT"] is None and "print" not in stub and "math.pi" not in stub
    assert lint.stub_source("%%writefile x.py\nprint(1)\n") == "pass"  # not Python: an empty answer


@pytest.mark.parametrize("expected, records, forged", [
    ([{"check": "a", "value": True}], [], True),                                   # a lone True
    ([{"check": "a", "value": [True, True]}], [], True),                           # the shape, all True
    ([{"check": "a", "value": [True, False]}], [], False),                         # a mix needs the answer
    ([{"check": "a", "value": [3, 5]}], [{"check": "a", "value_failed": True}], False),
    ([{"check": "a", "value": [3, 5]}], [{"check": "a", "value": [3, 5]}], True),  # the stub computes it
    ([{"check": "n", "value": 0}, {"check": "ok", "value": True}],
     [{"check": "n", "value": 0}, {"check": "ok", "value": False}], True),        # stub's 0, boolean forced
    ([{"check": "a", "value": ""}, {"check": "b", "value": ""}], [], True),        # one constant for all
    ([{"check": "a", "value": 1.5}], [{"check": "a", "value": 1.5000001}], True),  # floats compare as graded
])
def test_forging_strategies(expected, records, forged):
    assert bool(lint.forged_by(expected, records)) is forged


@pytest.mark.parametrize("got, expected, equal", [
    (10 ** 400, 3, False),        # float(10**400) raised OverflowError and crashed the grader
    (10 ** 400, 3.0, False),
    ([10 ** 400], [1], False),
    (10 ** 400, 10 ** 400, True),
    (1_000_001, 1_000_000, False),  # a count is exact: within 1e-6 of a million is still off by one
    (3, 3.0, True),
    (True, 1, False),
])
def test_values_match_never_raises_and_counts_are_exact(got, expected, equal):
    assert reports.values_match(got, expected) is equal
