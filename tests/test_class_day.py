"""An instructor's day, for real: the demo through nbgrader's exchange, regrading, manual grades,
backups and resuming."""
import csv
import io
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from nbgrader.api import Gradebook

from autograder import AutograderError, course, samples
from autograder.cli import grade_table
from autograder.pool import Recorder
from autograder.progress import Progress
from conftest import fixture_notebook, submit_directly, generated_course_copy

REPO = Path(__file__).resolve().parent.parent


def test_demo_runs_the_whole_day_through_the_exchange(tmp_path):
    keep = tmp_path / "demo"
    out = subprocess.run([sys.executable, "-m", "autograder", "demo", "--keep", str(keep)], cwd=REPO,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    # The README's main job prints no warnings: a newcomer would read them as errors.
    assert "warning" not in out.stderr.lower(), out.stderr[-3000:]
    for assignment in ("ex02_data_gate", "ex03_model_gate"):
        assert str(keep / "class" / "reports" / f"{assignment}.html") in out.stdout
    rows = list(csv.DictReader((keep / "grades.csv").open()))
    scores = {(r["student_id"], r["assignment"]): float(r["score"]) for r in rows}
    for assignment in ("ex02_data_gate", "ex03_model_gate"):
        expected = {case: samples.load(assignment, case).expected_points for case in ("correct", "partial")}
        assert scores[("ada", assignment)] == pytest.approx(expected["correct"])
        assert scores[("grace", assignment)] == pytest.approx(expected["partial"])
        assert scores[("alan", assignment)] == 0
        assert scores[("barbara", assignment)] == 0
        for student in ("ada", "grace", "alan", "barbara"):
            fetched = list((keep / "students" / student).rglob(f"feedback/*/{assignment}.html"))
            assert len(fetched) == 1, f"{student} should receive exactly their own feedback for {assignment}: {fetched}"
    assert "not valid notebook JSON" in out.stdout  # the broken notebook's reason is in the table
    assert str(keep / "grades.csv") in out.stdout


def test_demo_refuses_to_overwrite_a_folder(tmp_path):
    (tmp_path / "taken").mkdir()
    out = subprocess.run([sys.executable, "-m", "autograder", "demo", "--keep", str(tmp_path / "taken")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and "already exists" in out.stderr


@pytest.fixture
def small_class(tmp_path):
    paths = generated_course_copy(tmp_path, "ex01_pipeline")
    for case in ("correct", "partial"):
        submit_directly(paths, case, "ex01_pipeline", fixture_notebook(paths, "ex01_pipeline", case))
    return paths


def grade_rows(paths):
    with sqlite3.connect(paths.gradebook) as con:
        return con.execute("SELECT count(*) FROM grade").fetchone()[0]


def test_regrading_is_idempotent_resumes_and_keeps_manual_grades(small_class):
    paths = small_class
    first = {r.student: r.score for r in course.grade(paths, "ex01_pipeline")}
    rows = grade_rows(paths)
    # The instructor grades the written answer in the formgrader: a manual score.
    with Gradebook(f"sqlite:///{paths.gradebook}") as gb:
        manual = [g for g in gb.find_submission("ex01_pipeline", "correct").notebooks[0].grades
                  if g.auto_score is None]
        assert manual, "ex01 has a manually graded answer"
        manual[0].manual_score = 2.5
        gb.db.commit()
    # Nothing changed: nothing is regraded, and the manual score is part of the total.
    again = course.grade(paths, "ex01_pipeline")
    assert all(r.skipped for r in again)
    assert {r.student: r.score for r in again} == {"correct": first["correct"] + 2.5, "partial": first["partial"]}
    # Forced regrade: same autograded points, no duplicate rows, manual score kept.
    forced = {r.student: r.score for r in course.grade(paths, "ex01_pipeline", force=True)}
    assert forced == {"correct": first["correct"] + 2.5, "partial": first["partial"]}
    assert grade_rows(paths) == rows
    # An interrupted run: one student's state is lost; only that student is graded again.
    (paths.class_dir / "state" / "ex01_pipeline" / "partial.json").unlink()
    resumed = {r.student: r for r in course.grade(paths, "ex01_pipeline")}
    assert resumed["correct"].skipped and not resumed["partial"].skipped
    assert resumed["partial"].score == first["partial"]
    # A regrade the grader fails on (here: no kernel answered) keeps the earlier grade and says so.
    failed = Recorder(paths, "ex01_pipeline").record(
        {"student": "partial", "notes": [], "isolation": "", "error": "grading failed: no kernel answered"})
    assert failed.score == first["partial"] and failed.error
    assert f"the gradebook still holds {first['partial']:g} / " in grade_table([failed])
    assert "not graded" in grade_table([failed])
    assert {r.student: r.score for r in course.grade(paths, "ex01_pipeline")}["partial"] == first["partial"]
    # A gradebook put back from an older backup no longer holds a grade the state says was
    # recorded: that submission is graded again, not shown as 0 / 0 "unchanged".
    with Gradebook(f"sqlite:///{paths.gradebook}") as gb:
        gb.remove_submission("ex01_pipeline", "partial")
    restored = {r.student: r for r in course.grade(paths, "ex01_pipeline")}
    assert restored["correct"].skipped and not restored["partial"].skipped
    assert restored["partial"].score == first["partial"] and restored["partial"].max_score > 0


def test_an_interrupted_forced_regrade_resumes_where_it_stopped(small_class):
    """`grade --force` stopped by Ctrl-C, then run again as the message says: it regrades only
    the submissions the stopped run had not reached; a run after a complete one regrades all."""
    paths = small_class
    course.grade(paths, "ex01_pipeline")

    def stop_after_the_first(result):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        course.grade(paths, "ex01_pipeline", force=True, jobs=1, on_result=stop_after_the_first)
    resumed = course.grade(paths, "ex01_pipeline", force=True, jobs=1)
    assert sorted(r.skipped for r in resumed) == [False, True], [(r.student, r.skipped) for r in resumed]
    assert all(not r.error and r.max_score > 0 for r in resumed)
    assert not any(r.skipped for r in course.grade(paths, "ex01_pipeline", force=True, jobs=1))


def test_every_grading_run_that_writes_backs_up_the_gradebook_and_old_backups_are_pruned(small_class):
    """A backup before every run that grades something; a run with nothing to grade writes
    nothing, so it makes none. The newest KEEP_BACKUPS are kept (a term of regrading would
    otherwise fill the disk with copies); files of other names in the folder are left alone."""
    paths = small_class
    course.grade(paths, "ex01_pipeline")
    course.grade(paths, "ex01_pipeline", force=True)
    backups = sorted(paths.backups.glob("gradebook-*.db"))
    assert len(backups) == 2
    with sqlite3.connect(backups[-1]) as con:
        assert con.execute("SELECT count(*) FROM grade").fetchone()[0] > 0
    course.grade(paths, "ex01_pipeline")  # unchanged: nothing graded, nothing written
    assert sorted(paths.backups.glob("gradebook-*.db")) == backups
    old = [paths.backups / f"gradebook-2025{day:04d}-120000-000000.db" for day in range(101, 101 + course.KEEP_BACKUPS)]
    for path in old:
        path.write_bytes(b"an older backup")
    (paths.backups / "before-the-exam.db").write_bytes(b"the instructor's own copy")
    newest = course.backup_gradebook(paths)
    kept = sorted(paths.backups.glob("gradebook-*.db"))
    assert len(kept) == course.KEEP_BACKUPS and kept[-1] == newest
    assert kept == sorted(old[3:] + backups + [newest]), "the oldest backups go first"
    assert (paths.backups / "before-the-exam.db").read_bytes() == b"the instructor's own copy"


def test_grading_waits_for_a_gradebook_that_another_program_is_writing(small_class):
    """A Formgrader saving a manual grade, or a disk slow to flush, holds the gradebook's lock for a
    while; grading waits for it, where SQLite's own 5 s wait failed submissions ('database is locked')."""
    paths = small_class
    held_for = 10  # seconds: twice SQLite's default wait
    other_program = sqlite3.connect(paths.gradebook, isolation_level=None, check_same_thread=False)
    release = threading.Timer(held_for, other_program.execute, ["COMMIT"])

    class LockWhenGradingStarts(Progress):
        def start(self, total, already=0):
            # After the backup (which waits for a lock by itself), before any worker reads or the
            # parent writes: no other connection may read or write until COMMIT.
            other_program.execute("BEGIN EXCLUSIVE")
            release.start()
            super().start(total, already)

    try:
        started = time.monotonic()
        results = {r.student: r for r in course.grade(paths, "ex01_pipeline",
                                                      progress=LockWhenGradingStarts("grading", io.StringIO()))}
        waited = time.monotonic() - started
    finally:
        if release.is_alive():
            release.join()
        other_program.close()
    for case in ("correct", "partial"):
        assert not results[case].error, results[case].error
        assert results[case].score == pytest.approx(samples.load("ex01_pipeline", case).expected_points)
    assert waited >= held_for, "the lock was not held while grading: the test proves nothing"


@pytest.mark.parametrize("lock", ["IMMEDIATE", "EXCLUSIVE"])
def test_a_gradebook_another_program_keeps_locked_stops_grading_with_a_clear_error(small_class, monkeypatch, lock):
    """An sqlite3 shell left inside a transaction, or a stopped nbgrader, keeps the lock: `grade`
    says so before it starts, instead of failing every submission one by one (or, with an
    exclusive lock, hanging in the backup for ever)."""
    paths = small_class
    monkeypatch.setattr(course, "GRADEBOOK_LOCK_WAIT", 2)
    other_program = sqlite3.connect(paths.gradebook, isolation_level=None)
    other_program.execute(f"BEGIN {lock}")
    try:
        started = time.monotonic()
        with pytest.raises(AutograderError, match="stayed locked by another program") as raised:
            course.grade(paths, "ex01_pipeline")
        assert time.monotonic() - started < 30
    finally:
        other_program.execute("ROLLBACK")
        other_program.close()
    assert str(paths.gradebook) in str(raised.value) and "then grade again" in str(raised.value)
    assert not list((paths.class_dir / "state").rglob("*.json")), "nothing may be recorded as graded"
    assert {r.student: r.error for r in course.grade(paths, "ex01_pipeline")} == {"correct": "", "partial": ""}


def test_export_writes_every_student(small_class, tmp_path, capsys, monkeypatch):
    paths = small_class
    course.grade(paths, "ex01_pipeline")
    target = course.export(paths, tmp_path / "out" / "grades.csv")
    rows = list(csv.DictReader(target.open()))
    assert {r["student_id"] for r in rows} == {"correct", "partial"}
    # Without --to, next to the gradebook (not into the folder it is run from, a repository's root).
    from autograder import cli
    monkeypatch.chdir(tmp_path / "out")
    assert cli.main(["export", "--class-dir", str(paths.class_dir)]) == 0
    assert f"grades written to {paths.class_dir / 'grades.csv'}" in capsys.readouterr().out
    assert (paths.class_dir / "grades.csv").read_text() == target.read_text()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grades.csv"]


def test_progress_and_report_count_the_same_submissions_as_not_run(small_class):
    """The progress line's count of submissions that did not run as handed in is the report's:
    an empty file, graded as unanswered, is one of them (the progress line once counted only
    grader errors and stopped kernels)."""
    from autograder import class_report
    paths = small_class
    submit_directly(paths, "empty", "ex01_pipeline", b"")
    out = io.StringIO()
    results = course.grade(paths, "ex01_pipeline", progress=Progress("grading", out, terminal=False))
    assert [r.student for r in results if r.failures_to_run] == ["empty"]
    assert out.getvalue().splitlines()[-1].startswith("grading: 3/3 graded, ")
    assert "1 did not run as handed in" in out.getvalue().splitlines()[-1]
    report = class_report.write_report(paths, "ex01_pipeline", results).read_text()
    assert "did not run as handed in" in report and "empty" in report
