"""The learner's copy (`python -m autograder handout DEST`): everything a learner needs, nothing
an instructor must keep, and a refusal instead of a copy that would leak a hidden test."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import AutograderError, handout

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def learner_copy(tmp_path_factory):
    destination = tmp_path_factory.mktemp("handout") / "learner-copy"
    done = subprocess.run([sys.executable, "-m", "autograder", "handout", str(destination)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "9 lessons, 6 exercises" in done.stdout, done.stdout
    return destination


def test_the_copy_holds_lessons_data_exercises_and_the_self_check(learner_copy):
    assert sorted(p.name for p in learner_copy.iterdir()) == ["README.md", "autograder", "course", "data"]
    lessons = sorted(p.name for p in (learner_copy / "course").glob("0*.ipynb"))
    assert lessons == sorted(p.name for p in (REPO / "course").glob("0*.ipynb"))
    for exercise in (REPO / "course").glob("ex*/ex*.ipynb"):
        copied = learner_copy / exercise.relative_to(REPO)
        assert copied.read_bytes() == exercise.read_bytes(), f"{copied} differs from the released exercise"
    assert (learner_copy / "data" / "snapshots" / "learners_2026-03-31.csv").is_file()


def test_the_copy_holds_no_solutions_hidden_tests_or_fixtures(learner_copy):
    names = {part for p in learner_copy.rglob("*") for part in p.relative_to(learner_copy).parts}
    assert not names & {"solutions", "tests", "fixtures", "class", ".git", "generate.py"}, names
    lines, windows = handout.hidden_test_lines(REPO), handout.hidden_test_windows(REPO)
    assert len(lines) > 100 and len(windows) > 100, "hidden tests were not found, so the checks below prove nothing"
    for notebook in learner_copy.rglob("*.ipynb"):
        text = "\n".join("".join(c["source"]) for c in json.loads(notebook.read_text())["cells"])
        assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text, notebook
    for exercise in learner_copy.glob("course/ex*/*.ipynb"):
        text = "\n".join("".join(c["source"]) for c in json.loads(exercise.read_text())["cells"])
        assert not {line.strip() for line in text.splitlines()} & lines, f"{exercise} holds a hidden-test line"
    assert handout.leaks_in(learner_copy, REPO) == []


def _append_cell(notebook: Path, source: str) -> None:
    nb = json.loads(notebook.read_text())
    nb["cells"].append({"cell_type": "code", "id": "planted", "metadata": {}, "outputs": [],
                        "execution_count": None, "source": source})
    notebook.write_text(json.dumps(nb))


@pytest.mark.parametrize("where", ["lesson", "exercise"])
def test_a_copy_that_would_leak_a_hidden_test_is_refused_and_not_left_behind(tmp_path, where):
    repo = tmp_path / "repo"
    for folder in handout.INCLUDED + ("solutions",):
        shutil.copytree(REPO / folder, repo / folder, ignore=shutil.ignore_patterns("__pycache__"))
    if where == "lesson":  # a run of hidden-test lines pasted into a lesson
        target = repo / "course" / "00_start_here.ipynb"
        _append_cell(target, "\n".join(sorted(handout.hidden_test_windows(REPO))[0]))
    else:  # one hidden-test line that reached a released exercise
        target = repo / "course" / "ex02_data_gate" / "ex02_data_gate.ipynb"
        _append_cell(target, sorted(handout.hidden_test_lines(REPO))[0])
    destination = tmp_path / "copy"
    with pytest.raises(AutograderError, match="would leak") as refused:
        handout.build(destination, repo)
    assert target.name in str(refused.value)
    assert not destination.exists(), "a refused copy must not be left half-written"


def test_an_existing_folder_is_never_overwritten(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    done = subprocess.run([sys.executable, "-m", "autograder", "handout", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "not empty" in done.stderr and "new folder" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.txt"]


def test_the_self_check_runs_inside_the_copy(learner_copy):
    done = subprocess.run([sys.executable, "-m", "autograder", "check",
                           "course/ex03_model_gate/ex03_model_gate.ipynb"],
                          cwd=learner_copy, capture_output=True, text=True, timeout=180)
    # Unanswered: every visible test fails, with a message, and no traceback from the checker.
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL" in done.stdout and "Traceback" not in done.stderr, done.stdout + done.stderr
