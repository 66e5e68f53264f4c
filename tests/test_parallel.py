"""Grading a class in parallel: the same grades as one at a time, a consistent gradebook, progress
that says where it is, a clean stop on Ctrl-C and a resume that grades only what is left."""
import contextlib
import io
import os
import signal
import sqlite3
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from autograder import class_report, course, samples
from autograder.pool import executed_root
from autograder.progress import Progress
from conftest import fixture_notebook, submit_directly, generated_course_copy

REPO = Path(__file__).resolve().parent.parent
A = "ex02_data_gate"
ATTACKS_DIR = Path(__file__).parent / "fixtures" / "attacks"
# Misbehaving submissions share the class with honest ones: none may hold up or change the others.
ATTACKS = ["kills_kernel", "many_lines", "memory_blowup"]
# Right, blank, partial and two kinds of wrong: enough to tell grades apart, small enough to grade
# twice (every fixture is graded once more, in parallel, by tests/test_exercises.py).
CASES = ["correct", "blank", "partial", "coerces_in_place", "lesson_gate_only"]
STUDENTS = CASES + ATTACKS


def build_class(root: Path) -> "course.ClassPaths":
    paths = generated_course_copy(root, A)
    for case in CASES:
        submit_directly(paths, case, A, fixture_notebook(paths, A, case))
    for name in ATTACKS:
        sample = samples.load(A, name, root=ATTACKS_DIR)
        submit_directly(paths, name, A, samples.build(sample, paths.release / A / f"{A}.ipynb",
                                                      paths.source / A / f"{A}.ipynb"))
    return paths


def expected_points(student):
    root = ATTACKS_DIR if student in ATTACKS else samples.SAMPLES
    return samples.load(A, student, root=root).expected_points


def gradebook_rows(paths):
    """Every grade and comment row, as comparable tuples (ids differ between gradebooks)."""
    query = """SELECT student.id, notebook.name, base_cell.name, grade.auto_score, grade.needs_manual_grade
               FROM grade JOIN submitted_notebook ON grade.notebook_id = submitted_notebook.id
               JOIN submitted_assignment ON submitted_notebook.assignment_id = submitted_assignment.id
               JOIN student ON submitted_assignment.student_id = student.id
               JOIN notebook ON submitted_notebook.notebook_id = notebook.id
               JOIN base_cell ON grade.cell_id = base_cell.id"""
    with sqlite3.connect(paths.gradebook) as con:
        grades = sorted(con.execute(query).fetchall())
        comments = con.execute("SELECT count(*) FROM comment").fetchone()[0]
        submissions = con.execute("SELECT count(*) FROM submitted_assignment").fetchone()[0]
    return grades, comments, submissions


@pytest.fixture(scope="module")
def graded_both_ways(tmp_path_factory):
    sequential = build_class(tmp_path_factory.mktemp("sequential"))
    parallel = build_class(tmp_path_factory.mktemp("parallel"))
    one = {r.student: r for r in course.grade(sequential, A, jobs=1)}
    two = {r.student: r for r in course.grade(parallel, A, jobs=2)}
    return (sequential, one), (parallel, two)


def test_parallel_grades_equal_sequential_grades(graded_both_ways):
    (_, one), (_, two) = graded_both_ways
    assert sorted(one) == sorted(two) == sorted(STUDENTS)
    for student in one:
        a, b = one[student], two[student]
        assert not a.error and not b.error, (a.error, b.error)
        assert a.score == b.score == pytest.approx(expected_points(student)), student
        assert [(c.grade_id, c.points, c.reason) for c in a.cells] == \
            [(c.grade_id, c.points, c.reason) for c in b.cells], student
        assert a.notes == b.notes and a.incidents == b.incidents


def test_parallel_gradebook_has_every_row_once(graded_both_ways):
    (sequential, one), (parallel, _) = graded_both_ways
    grades, comments, submissions = gradebook_rows(parallel)
    assert (grades, comments, submissions) == gradebook_rows(sequential)
    assert submissions == len(one)
    keys = [row[:3] for row in grades]
    assert len(keys) == len(set(keys)), "a grade row is duplicated"
    assert all(row[3] is not None for row in grades), "a grade was left half-written"


def test_a_crashing_submission_is_reported_and_the_rest_graded(graded_both_ways):
    (_, _), (parallel, two) = graded_both_ways
    assert any("kernel died" in i for i in two["kills_kernel"].incidents)
    assert two["correct"].score == pytest.approx(expected_points("correct"))
    # Nothing is left between the two halves of grading.
    assert not any((parallel.class_dir / "executed").rglob("*.ipynb"))


def test_report_for_instructors(graded_both_ways):
    (_, _), (parallel, two) = graded_both_ways
    target = class_report.write_report(parallel, A, list(two.values()))
    text = target.read_text()
    assert target == parallel.class_dir / "reports" / f"{A}.html"
    assert text.count("data:image/png;base64,") == 2  # distribution and pass rates
    assert "kills_kernel" in text and "kernel died" in text  # failed to run, with its reason
    for gid in {c.grade_id for c in two["correct"].cells}:
        assert gid in text
    # Grading one student still reports on the whole class.
    alone = course.grade(parallel, A, student="correct")
    assert len(class_report.class_results(parallel, A, alone)) == len(two)


def test_flags_for_tests_nobody_or_everybody_passes():
    stats = {"test_broken": {"passed": 0, "total": 5, "max_points": 1},
             "test_weak": {"passed": 5, "total": 5, "max_points": 1},
             "test_fine": {"passed": 3, "total": 5, "max_points": 1},
             "test_few": {"passed": 0, "total": 2, "max_points": 1}}
    found = dict(class_report.flags(stats))
    assert set(found) == {"test_broken", "test_weak"}
    assert "broken" in found["test_broken"] and "too weak" in found["test_weak"]


def test_grade_table_gives_the_first_line_of_each_reason():
    from autograder.cli import grade_table
    result = course.SubmissionResult("ada", A, score=1, max_score=3, cells=[
        course.CellResult("test_a", 0, 1, "CheckFailed: wrong result for: x\nmore detail"),
        course.CellResult("test_b", 1, 1, ""),
        course.CellResult("test_c", 0, 1, "AssertionError: should reject None")])
    table = grade_table([result])
    assert "test_a (CheckFailed: wrong result for: x)" in table
    assert "test_c (AssertionError: should reject None)" in table
    assert "more detail" not in table and "test_b" not in table


def test_grade_table_keeps_a_blank_notebooks_row_short():
    """A blank notebook fails every test for one reason: its row says so in a few words, instead
    of naming a dozen test cells (the feedback and the report name them). A long list for one
    reason names the first three and how many more."""
    from autograder.cli import grade_table
    names = [f"test_{n:02d}" for n in range(12)]
    blank = course.SubmissionResult("alan", A, score=0, max_score=12, cells=[
        course.CellResult(name, 0, 1, "NotImplementedError") for name in names])
    row = grade_table([blank]).splitlines()[1]
    assert row.endswith("failed: all 12 tests (NotImplementedError)") and "test_00" not in row, row
    half = course.SubmissionResult("grace", A, score=5, max_score=12, cells=[
        course.CellResult(name, 0 if i < 6 else 1, 1, "NotImplementedError" if i < 6 else "")
        for i, name in enumerate(names)] + [course.CellResult("test_x", 0, 1, "CheckFailed: wrong")])
    row = grade_table([half]).splitlines()[1]
    assert "failed: test_00, test_01, test_02 and 3 more (NotImplementedError); test_x (CheckFailed: wrong)" in row, row


def test_grade_table_never_shows_a_failed_grading_as_a_score():
    """A submission the grader failed on is 'not graded'; a score the gradebook kept from an
    earlier grading is named as such, not shown as this run's result."""
    from autograder.cli import grade_table
    first_time = course.SubmissionResult("ada", A, error="grading failed: no kernel answered")
    regraded = course.SubmissionResult("alan", A, score=8, max_score=10, error="grading failed: no kernel answered")
    lines = grade_table([first_time, regraded]).splitlines()[1:]
    assert all("not graded" in line and "/ " not in line.split("grading failed")[0] for line in lines), lines
    assert "still holds" not in lines[0]
    assert lines[1].endswith("grading failed: no kernel answered; the gradebook still holds 8 / 10 from an earlier grading")


def test_progress_off_a_terminal_prints_a_plain_line_every_few_seconds():
    now = [0.0]
    out = io.StringIO()
    progress = Progress("grading", stream=out, interval=5, terminal=False, clock=lambda: now[0])
    progress.start(10)
    for step in range(4):
        now[0] += 2
        progress.advance(failed=step == 0)
        progress.tick()
    progress.finish()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # at the start, once after 5 s, at the end: not one per submission
    assert lines[-1].startswith("grading: 4/10 graded") and "1 did not run as handed in" in lines[-1]
    assert "ETA 12s" in lines[-1] and "30.0/min" in lines[-1]
    assert "\r" not in out.getvalue()


def test_progress_on_a_terminal_redraws_a_bar():
    now = [0.0]
    out = io.StringIO()
    progress = Progress("grading", stream=out, terminal=True, width=10, clock=lambda: now[0])
    progress.start(4)
    now[0] += 1
    progress.advance()
    assert out.getvalue().endswith("grading [##........] 1/4 graded, 60.0/min, ETA 3s, no failures")
    assert "\r" in out.getvalue()


def own_processes(marker: str) -> list[str]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in text:
            found.append(text[:200])
    return found


def test_progress_names_a_submission_that_runs_long():
    """A loop running into its time limit stalls the count and the time left: the line says who."""
    now = [0.0]
    out = io.StringIO()
    progress = Progress("grading", stream=out, interval=5, terminal=False, clock=lambda: now[0])
    progress.start(3)
    now[0] += 6
    progress.tick({"ada": 2.0, "alan": 3.0})
    assert "running for" not in out.getvalue()
    now[0] += 6
    progress.tick({"ada": 8.0, "alan": 45.0})
    assert out.getvalue().splitlines()[-1].startswith("grading: 0/3 graded, no failures, alan running for 45s")
    now[0] += 6
    progress.tick({"ada": 14.0})  # alan's was stopped; nothing has run long now
    assert out.getvalue().splitlines()[-1] == "grading: 0/3 graded, no failures (18s elapsed)"


def test_progress_on_a_narrow_terminal_fits_one_line():
    """A bar wider than the terminal wraps, and \\r only redraws its last row: the screen fills
    with stale copies of it."""
    out = io.StringIO()
    progress = Progress("grading ex06_ci_script", stream=out, terminal=True, clock=lambda: 1.0, columns=lambda: 60)
    progress.start(300)
    for _ in range(7):
        progress.advance(failed=True)
    drawn = [line.replace("\x1b[2K", "") for line in out.getvalue().replace("\n", "\r").split("\r") if line]
    assert drawn and all(len(line) < 60 for line in drawn), drawn
    assert "7/300 graded" in drawn[-1]


def test_ctrl_c_stops_cleanly_and_the_rerun_grades_only_what_is_left(tmp_path):
    paths = build_class(tmp_path / "course")
    # The grader's own temporary folder, to see what it leaves behind. A short path: kernels'
    # Unix sockets live under it, and a socket's path may not exceed 107 characters.
    scratch = Path(tempfile.mkdtemp(prefix="cicd-t-", dir="/tmp"))
    try:
        interrupt_and_resume(paths, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def interrupt_and_resume(paths, scratch: Path) -> None:
    env = {**os.environ, "TMPDIR": str(scratch), "CICD_CELL_TIMEOUT": "20"}
    command = [sys.executable, "-m", "autograder", "grade", A, "--jobs", "2", "--class-dir", str(paths.class_dir)]
    # The run grades the course copy's assignment: run it from the copy, as an instructor would.
    shutil_copy_autograder(paths.repo)
    run = subprocess.Popen(command, cwd=paths.repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    states = paths.class_dir / "state" / A
    total = len(STUDENTS)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and len(list(states.glob("*.json"))) < 2 and run.poll() is None:
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=120)
    graded_before = {p.stem for p in states.glob("*.json")}
    assert run.returncode == 130, out[-2000:] + err[-2000:]
    assert "interrupted" in err and "run the same command again" in err
    assert 2 <= len(graded_before) < total, "the interruption should land mid-run"
    # Nothing is left running or lying around.
    time.sleep(1)
    assert own_processes(str(scratch)) == [] and own_processes(str(paths.class_dir)) == []
    assert list(scratch.glob("cicd-kernel-*")) == []
    assert not any((paths.class_dir / "executed").rglob("*.ipynb"))

    again = subprocess.run(command, cwd=paths.repo, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{len(graded_before)} unchanged since the last grading, {total - len(graded_before)} to grade" \
        in again.stderr
    rows = [line.split() for line in again.stdout.splitlines()[1:] if line.split()[:1] and line.split()[0] in
            STUDENTS]
    assert len(rows) == total
    for row in rows:
        student, score = row[0], float(row[2])
        assert score == pytest.approx(expected_points(student)), row
        assert ("[unchanged since last grading]" in " ".join(row)) == (student in graded_before), row
    assert "report for instructors:" in again.stdout
    assert list(scratch.glob("cicd-kernel-*")) == []


def shutil_copy_autograder(repo: Path) -> None:
    """The grader's code beside the course copy, so `python -m autograder` grades that copy."""
    shutil.copytree(REPO / "autograder", repo / "autograder", ignore=shutil.ignore_patterns("__pycache__"))


def _stop_every_process_of(km) -> None:
    """Freeze a kernel (its sandbox and everything in it): alive, never answering. The sandbox
    starts it through a chain of forks, so a process may fork just before it is stopped: the tree
    is stopped again until no new process turns up."""
    import psutil
    root = psutil.Process(km.provisioner.pid)
    stopped: set[int] = set()
    while True:
        tree = {}
        with contextlib.suppress(psutil.Error):
            tree = {root.pid: root, **{p.pid: p for p in root.children(recursive=True)}}
        if set(tree) <= stopped:
            return
        for pid, process in tree.items():
            with contextlib.suppress(psutil.Error):
                process.send_signal(signal.SIGSTOP)
            stopped.add(pid)
        time.sleep(0.05)


def _grade_with_frozen_kernels(tmp_path, how_many):
    """Run the correct answer with the runner's first `how_many` kernels frozen (None: every one);
    returns the class, the closed runner, the outcome and the kernels frozen."""
    from autograder.pool import SubmissionRunner
    paths = generated_course_copy(tmp_path, A)
    submit_directly(paths, "correct", A, fixture_notebook(paths, A, "correct"))
    runner = SubmissionRunner(paths, A, prewarm=False)
    runner.execute.startup_timeout = 3  # how long a kernel may take to answer at all (30 s by default)
    start, frozen = runner._start_kernel, []

    def start_then_freeze():
        km = start()
        if how_many is None or len(frozen) < how_many:
            _stop_every_process_of(km)
            frozen.append(km)
        return km

    runner._start_kernel = start_then_freeze
    try:
        outcome = runner.run("correct")
    finally:
        runner.close()
    return paths, runner, outcome, frozen


def test_a_kernel_that_never_answers_is_replaced_and_not_blamed_on_the_learner(tmp_path):
    """Before the first cell none of the learner's code has run, so a kernel that does not answer
    then (on a loaded machine a kernel now and then leaves a request unread) is the grader's failure: the
    submission must get its real grade from a second kernel, not a zero and an incident."""
    from autograder.pool import Recorder
    paths, runner, outcome, frozen = _grade_with_frozen_kernels(tmp_path, 1)
    assert frozen and not runner.kernels, "both kernels should have been stopped"
    assert outcome["error"] == "" and outcome["incidents"] == [], outcome
    result = Recorder(paths, A).record(outcome)
    assert result.score == pytest.approx(expected_points("correct")), result.reason


def test_a_submission_whose_kernels_never_answer_is_not_graded_and_says_so(tmp_path):
    paths, runner, outcome, _ = _grade_with_frozen_kernels(tmp_path, None)
    assert outcome["error"].startswith("grading failed: no kernel answered"), outcome
    assert f"({runner.execute.kernel_attempts} kernels tried;" in outcome["error"]
    assert "grade this submission again" in outcome["error"]
    assert not runner.kernels and not (executed_root(paths) / "correct" / A).exists()


def test_a_kernel_started_ahead_is_handed_over_only_once_its_warm_up_has_answered(tmp_path, monkeypatch):
    """A kernel started ahead imports the notebook's modules while the previous submission runs.
    The next submission's client connects only once that warm-up has answered: a client that
    connects while the kernel is busy can have its first request left unread for good."""
    from autograder import pool
    warm_up_seconds = 8  # longer than grading the first submission takes
    slow = pool._preload_code
    monkeypatch.setattr(pool, "_preload_code", lambda modules: f"__import__('time').sleep({warm_up_seconds})\n"
                                                               + slow(modules))
    paths = generated_course_copy(tmp_path, A)
    for student in ("first", "second"):
        submit_directly(paths, student, A, fixture_notebook(paths, A, "correct"))
    runner = pool.SubmissionRunner(paths, A)
    warm_up_sent, client_connected = [], []
    warm_up, preprocess = runner._warm_up, runner.execute.preprocess

    def timed_warm_up(km):
        warm_up_sent.append(time.monotonic())
        warm_up(km)

    def timed_preprocess(nb, resources=None, km=None):
        client_connected.append(time.monotonic())
        return preprocess(nb, resources, km=km)

    runner._warm_up, runner.execute.preprocess = timed_warm_up, timed_preprocess
    try:
        outcomes = [runner.run("first"), runner.run("second", prewarm=False)]
    finally:
        runner.close()
    assert [(o["error"], o["incidents"]) for o in outcomes] == [("", []), ("", [])], outcomes
    assert len(warm_up_sent) == 1 and len(client_connected) == 2
    assert client_connected[1] - warm_up_sent[0] >= warm_up_seconds, \
        "the second submission's client connected while its kernel was still warming up"
    assert not runner.kernels


def test_a_kernel_started_ahead_that_dies_while_warming_up_is_replaced_at_once(tmp_path, monkeypatch):
    """Waiting for the warm-up must not mean waiting for a kernel that is gone."""
    from autograder import pool
    slow = pool._preload_code
    monkeypatch.setattr(pool, "_preload_code", lambda modules: "__import__('time').sleep(30)\n" + slow(modules))
    paths = generated_course_copy(tmp_path, A)
    for student in ("first", "second"):
        submit_directly(paths, student, A, fixture_notebook(paths, A, "correct"))
    runner = pool.SubmissionRunner(paths, A)
    try:
        first = runner.run("first")
        assert runner.spare is not None
        runner._kill(runner.spare)  # its whole sandbox, in the middle of its warm-up
        started = time.monotonic()
        second = runner.run("second", prewarm=False)
        took = time.monotonic() - started
    finally:
        runner.close()
    assert [(o["error"], o["incidents"]) for o in (first, second)] == [("", []), ("", [])], (first, second)
    assert took < 25, f"the next submission waited {took:.0f} s for a dead kernel"
    assert not runner.kernels
