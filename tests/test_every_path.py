"""Every path that autogrades is defended: nbgrader's own command line run from the repository
root, and the Formgrader's Autograde and Collect buttons through a real Jupyter server's HTTP API,
give the same grades as `python -m autograder grade` (tests/test_trust.py), attacks included.
"""
import html
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

from autograder import samples
from autograder.sandbox import isolation_status
from conftest import skip_or_fail, REPO, fixture_notebook, free_port, jupyter_server, make_course_copy, submit_directly

ASSIGNMENT = "ex02_data_gate"
ATTACKS = REPO / "tests" / "fixtures" / "attacks"
# student -> (attack or fixture case, points): stock nbgrader gives try_wrapper and only_when_graded 10.
CASES = {"honest": ("correct", 10), "try_wrapper": ("try_wrapper", 0), "only_when_graded": ("only_when_graded", 0),
         "deletes_tests": ("deletes_tests", 10)}


def course_with_grader(root: Path):
    paths = make_course_copy(root)
    shutil.copytree(REPO / "autograder", paths.repo / "autograder", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "nbgrader_config.py", paths.repo / "nbgrader_config.py")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(CICD_CLASS_DIR=str(paths.class_dir), CICD_EXCHANGE=str(paths.exchange), CICD_CELL_TIMEOUT="30",
               PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}")
    return paths, env


def nbgrader(paths, env, *args):
    done = subprocess.run([sys.executable, "-m", "nbgrader", *args], cwd=paths.repo, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return done


def submission(paths, case):
    root = ATTACKS if (ATTACKS / ASSIGNMENT / f"{case}.json").is_file() else None
    if root is None:
        return fixture_notebook(paths, ASSIGNMENT, case)
    return samples.build(samples.load(ASSIGNMENT, case, root=root), paths.release / ASSIGNMENT / f"{ASSIGNMENT}.ipynb",
                         paths.source / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")


def scores(paths):
    with sqlite3.connect(paths.class_dir / "gradebook.db") as db:
        rows = db.execute("SELECT student.id, SUM(COALESCE(grade.manual_score, grade.auto_score, 0)) FROM grade "
                          "JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id "
                          "JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id "
                          "JOIN student ON submitted_assignment.student_id = student.id GROUP BY student.id").fetchall()
    return dict(rows)


def test_nbgrader_autograde_from_the_repository_root_uses_our_pipeline(tmp_path):
    paths, env = course_with_grader(tmp_path)
    nbgrader(paths, env, "generate_assignment", ASSIGNMENT, "--force")
    for student, (case, _) in CASES.items():
        submit_directly(paths, student, ASSIGNMENT, submission(paths, case))
    nbgrader(paths, env, "autograde", ASSIGNMENT, "--force")
    assert scores(paths) == {student: points for student, (_, points) in CASES.items()}
    restored = (paths.autograded / "deletes_tests" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").read_text()
    assert "was deleted; the original was put back" in restored
    assert (paths.reference / ASSIGNMENT / f"{ASSIGNMENT}.json").is_file(), "reference computed on demand"
    # nbgrader's own feedback: built from a visible-only run, never from the graded (hidden-test) run.
    nbgrader(paths, env, "generate_feedback", ASSIGNMENT, "--student", "honest", "--force")
    text = html.unescape((paths.feedback / "honest" / ASSIGNMENT / f"{ASSIGNMENT}.html").read_text())
    assert "Grader: passed" in text and "### BEGIN HIDDEN TESTS" not in text
    hidden = [line.strip() for cell in nbformat.read(paths.source / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4).cells
              if "### BEGIN HIDDEN TESTS" in cell.source
              for line in cell.source.split("### BEGIN HIDDEN TESTS")[1].split("### END HIDDEN TESTS")[0].splitlines()
              if len(line.strip()) > 20]
    assert hidden and not [line for line in hidden if line in text]
    if isolation_status() == "bubblewrap":
        assert "label_leak" in text and "accepted" in text  # the visible run's own outputs


@pytest.fixture
def formgrader(tmp_path):
    """A real Jupyter server at the course copy's root, with the formgrader extension."""
    paths, env = course_with_grader(tmp_path / "course")
    port, token = free_port(), uuid.uuid4().hex
    home = tmp_path / "home"
    for folder in ("config", "data", "runtime"):
        (home / folder).mkdir(parents=True)
    env.update(HOME=str(home), JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_DATA_DIR=str(home / "data"))
    cmd = [sys.executable, "-m", "jupyter", "server", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", "--allow-root", f"--ServerApp.root_dir={paths.repo}"]
    base, auth = f"http://127.0.0.1:{port}", {"Authorization": f"token {token}"}

    def call(method, path, timeout=600):
        request = urllib.request.Request(base + path, method=method, data=b"" if method == "POST" else None,
                                         headers=auth)
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return json.loads(reply.read() or b"null")

    with jupyter_server(cmd, paths.repo, env, tmp_path / "server.log", f"{base}/api/status", headers=auth):
        yield paths, env, call


def test_formgrader_collect_and_autograde_buttons_use_our_pipeline(formgrader):
    if isolation_status() != "bubblewrap":
        skip_or_fail("needs bubblewrap: " + isolation_status())
    paths, env, call = formgrader
    nbgrader(paths, env, "generate_assignment", ASSIGNMENT, "--force")
    inbound = paths.exchange / "cicd-for-models" / "inbound"
    stamp = "2026-11-30 12:00:00.000000 UTC"
    for student in ("honest", "try_wrapper"):
        folder = inbound / f"{student}+{ASSIGNMENT}+{stamp}+{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        nbformat.write(submission(paths, CASES[student][0]), folder / f"{ASSIGNMENT}.ipynb")
        (folder / "timestamp.txt").write_text(stamp)
    linked = inbound / f"mallory+{ASSIGNMENT}+{stamp}+{uuid.uuid4().hex}"
    linked.mkdir()
    (linked / f"{ASSIGNMENT}.ipynb").symlink_to(paths.source / ASSIGNMENT / f"{ASSIGNMENT}.ipynb")

    assert call("POST", f"/formgrader/api/assignment/{ASSIGNMENT}/collect")["success"]
    assert not (paths.submitted / "mallory" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb").exists(), "read through a link"
    assert "is a link" in (paths.submitted / "mallory" / ASSIGNMENT / "collect_notes.json").read_text()
    for student in ("honest", "try_wrapper"):
        outcome = call("POST", f"/formgrader/api/submission/{ASSIGNMENT}/{student}/autograde")
        assert outcome["success"], outcome.get("error") or outcome.get("log")
    assert scores(paths) == {"honest": 10, "try_wrapper": 0}
