"""An instructor's day, one function per step, over nbgrader's API.

release -> (students fetch and submit) -> collect -> grade -> feedback -> export.
`grade_submission` grades one student's one assignment and is self-contained: its inputs
are the raw submission folder and the released skeleton, its outputs the staged notebook,
the autograded notebook, the gradebook rows and a SubmissionResult.
"""
from __future__ import annotations

import collections
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import sqlite3
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import jsonschema
import nbformat
from nbgrader.apps import NbGraderAPI
import nbgrader.api as nbgrader_api
import nbgrader.nbgraderformat.common as nbgrader_metadata_format
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.plugins.export import CsvExportPlugin
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, LimitOutput,
                                    SaveAutoGrades)
from nbconvert.preprocessors import ClearMetadataPreprocessor

from . import AutograderError, inbound, reference, reports, submission
from .config import ClassPaths, ensure_writable, load_course_config
from .preprocessors import CapOutputs, DecideVerdicts, GuardedExecute, VERDICT_ERROR

# nbgrader 0.9.6 iterates over SQLAlchemy relationships while it changes them (api.py, e.g.
# `Submission.score` reading `submission.assignment.notebooks` during autoflush), which SQLAlchemy
# 2.x reports as SAWarning on every grading run. The grades are right; the warning is nbgrader's
# to fix, so exactly these are silenced, here, in the one module that drives nbgrader.
try:
    from sqlalchemy.exc import SAWarning
    warnings.filterwarnings("ignore", category=SAWarning, module=r"nbgrader(\.|$)")
except ImportError:  # pragma: no cover - SQLAlchemy comes with nbgrader
    pass


def _alembic_head() -> str:
    """The newest revision of nbgrader's gradebook schema, read from nbgrader's own migration
    scripts in this process. nbgrader 0.9.6 gets it by running the `alembic` command (a second
    Python, about 2 s, and found only on PATH) every time it creates a gradebook."""
    from alembic.script import ScriptDirectory
    from nbgrader.dbutil import ALEMBIC_DIR
    return ScriptDirectory(ALEMBIC_DIR).get_current_head()


nbgrader_api.get_alembic_version = _alembic_head  # what Gradebook() calls for a new database


_ENGINES: collections.OrderedDict = collections.OrderedDict()  # (url, options) -> engine, newest last
_ENGINES_KEPT = 4  # gradebooks one process works on at once (one, for an instructor)
_ENGINES_LOCK = threading.Lock()
_new_engine = nbgrader_api.create_engine
# How long a gradebook connection waits for another's lock (SQLite's own default: 5 s). Grading
# workers read the gradebook while the parent writes it, and a Formgrader may be saving a manual
# grade; one commit is milliseconds, but a busy disk can take seconds to flush it, and a reader
# that gave up after 5 s failed a submission with "database is locked" (seen in a full test run).
# Not much longer: a program that keeps the lock (an sqlite3 shell inside a transaction, a
# stopped nbgrader) would cost this much per submission; `grade` checks for one before it starts.
GRADEBOOK_LOCK_WAIT = 30


def _shared_engine(url, **options):
    """The SQLAlchemy engine for a gradebook, made once per process. nbgrader 0.9.6 makes a new
    engine for every Gradebook() it opens (eight per autograded submission), and an engine's
    cache of compiled statements dies with it, so every query was compiled again; that was a
    third of recording a submission. Gradebook.close() still closes the connections (dispose()
    empties the engine's pool; the next use opens new ones). A SQLite gradebook's connections
    wait up to GRADEBOOK_LOCK_WAIT seconds for a lock."""
    key = (str(url), tuple(sorted(options.items())))
    if str(url).startswith("sqlite") and "connect_args" not in options:
        options = {**options, "connect_args": {"timeout": GRADEBOOK_LOCK_WAIT}}
    with _ENGINES_LOCK:
        engine = _ENGINES.pop(key, None) or _new_engine(url, **options)
        _ENGINES[key] = engine
        while len(_ENGINES) > _ENGINES_KEPT:
            _, oldest = _ENGINES.popitem(last=False)
            oldest.dispose()
        return engine


nbgrader_api.create_engine = _shared_engine  # what Gradebook() calls to open a gradebook


class _MetadataSchemas:
    """What nbgrader's metadata validation sees as `jsonschema`. nbgrader 0.9.6 checks every
    cell's metadata with jsonschema.validate(), which first checks the schema itself, the same
    fixed file every time: 1.5 ms a cell, four times per submission graded. Here each schema is
    checked once and its validator kept; the errors raised are jsonschema.validate()'s own."""

    def __init__(self):
        self._validators = {}
        self._lock = threading.Lock()

    def validate(self, instance, schema):
        key = json.dumps(schema, sort_keys=True)
        with self._lock:
            validator = self._validators.get(key)
            if validator is None:
                kind = jsonschema.validators.validator_for(schema)
                kind.check_schema(schema)
                validator = self._validators[key] = kind(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(instance))
        if error is not None:
            raise error

    def __getattr__(self, name):  # anything else nbgrader may use, as jsonschema has it
        return getattr(jsonschema, name)


nbgrader_metadata_format.jsonschema = _MetadataSchemas()


# --- what exists -----------------------------------------------------------------------------

def assignments(paths: ClassPaths) -> list[str]:
    return sorted(p.name for p in paths.source.iterdir() if (p / f"{p.name}.ipynb").is_file()) \
        if paths.source.is_dir() else []


def require_assignment(paths: ClassPaths, name: str) -> None:
    known = assignments(paths)
    if name not in known:
        raise AutograderError(f"unknown assignment '{name}'; the assignments are: {', '.join(known) or 'none'}")


def notebooks_of(paths: ClassPaths, assignment: str) -> list[str]:
    return sorted(p.stem for p in (paths.release / assignment).glob("*.ipynb"))


def students_collected(paths: ClassPaths, assignment: str) -> list[str]:
    if not paths.submitted.is_dir():
        return []
    return sorted(p.name for p in paths.submitted.iterdir() if (p / assignment).is_dir())


# --- nbgrader ------------------------------------------------------------------------------

def api(paths: ClassPaths, **overrides) -> NbGraderAPI:
    ensure_writable(paths.class_dir, "class folder", "choose another with --class-dir or CICD_CLASS_DIR")
    config = load_course_config(paths)
    for section, values in overrides.items():
        for key, value in values.items():
            setattr(getattr(config, section), key, value)
    return NbGraderAPI(config=config)


def _checked(result: dict, what: str) -> dict:
    if not result.get("success"):
        detail = (result.get("error") or result.get("log") or "").strip().splitlines()
        raise AutograderError(f"{what} failed: {detail[-1] if detail else 'no details from nbgrader'}")
    return result


def _exchange_ok(paths: ClassPaths) -> None:
    ensure_writable(paths.exchange, "exchange", "choose another with --exchange or CICD_EXCHANGE")


# --- release and collect ---------------------------------------------------------------------

def generate(paths: ClassPaths, assignment: str) -> None:
    """Regenerate the student version in course/ from solutions/ (and record it in the gradebook)."""
    require_assignment(paths, assignment)
    _checked(api(paths).generate_assignment(assignment, force=True), f"generating {assignment}")


def release(paths: ClassPaths, assignment: str) -> list:
    """Generate the student version, compute the reference results, prove with negative controls
    that every test cell tells right from wrong (autograder.lint), publish to the exchange.
    Returns the warnings of the check (forgeable assert-only cells); refuses on its errors."""
    from . import lint
    generate(paths, assignment)
    prepare_reference(paths, assignment)
    findings = lint.lint_assignment(paths, assignment)
    lint.refuse_if_forgeable(findings, assignment)
    _exchange_ok(paths)
    grader = api(paths)
    grader.unrelease(assignment)  # releasing again replaces the old copy instead of failing
    _checked(grader.release_assignment(assignment), f"releasing {assignment}")
    return findings


def collect(paths: ClassPaths, assignment: str) -> list[str]:
    """Copy the newest acceptable submission of each learner from the exchange (autograder.inbound:
    regular files only, owner checked); refusals become notes in the grade table."""
    require_assignment(paths, assignment)
    grader = api(paths)
    _exchange_ok(paths)
    incoming = paths.exchange / grader.coursedir.course_id / "inbound"
    if not incoming.is_dir():
        raise AutograderError(f"nothing has been submitted to the exchange {paths.exchange} yet "
                              f"(no {incoming}); release {assignment} and let learners submit first")
    inbound.collect(incoming, paths.submitted, assignment)
    return students_collected(paths, assignment)


def prepare_reference(paths: ClassPaths, assignment: str) -> None:
    for source in sorted((paths.source / assignment).glob("*.ipynb")):
        reference.ensure(source, paths.reference, assignment)


# --- grading ---------------------------------------------------------------------------------

@dataclass
class CellResult:
    grade_id: str
    points: float
    max_points: float
    reason: str = ""
    manual: bool = False  # graded by a person (a written answer), not by the autograder


@dataclass
class SubmissionResult:
    student: str
    assignment: str
    score: float = 0.0
    max_score: float = 0.0
    needs_manual_grade: bool = False
    cells: list[CellResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str = ""
    isolation: str = ""
    skipped: bool = False  # already graded from these very inputs (see `grade(..., force=False)`)
    incidents: list[str] = field(default_factory=list)  # why a notebook stopped early (kernel died, time limit)

    @property
    def failures_to_run(self) -> list[str]:
        """Why the submission did not run as handed in: a grader error, a stopped kernel, a file
        that could not be read (graded as unanswered). The progress line and the report count these."""
        return ([self.error] if self.error else []) + self.incidents + \
            [n for n in self.notes if "graded as unanswered" in n]

    @property
    def failed_cells(self) -> list[CellResult]:
        return [c for c in self.cells if c.points < c.max_points and c.reason]

    @property
    def reason(self) -> str:
        """One line an instructor can read in a table: notes, then each failed cell and the
        first line of why it failed."""
        if self.error:
            if self.max_score:  # read back from the gradebook: what an earlier grading recorded
                return f"{self.error}; the gradebook still holds {self.score:g} / {self.max_score:g} from an earlier grading"
            return self.error
        by_reason: dict[str, list[str]] = {}  # cells failing for the same reason share it
        for cell in self.failed_cells:
            by_reason.setdefault(first_line(cell.reason), []).append(cell.grade_id)
        tests = [c for c in self.cells if c.max_points and not c.manual]
        failed = [f"{_few_of(cells, len(tests))} ({why})" for why, cells in by_reason.items()]
        parts = self.notes[:2] + ([f"failed: {'; '.join(failed)}"] if failed else [])
        return "; ".join(parts)


def _few_of(names: list[str], tests: int, shown: int = 3) -> str:
    """Test cells failing for one reason, in a few words: a blank notebook fails every one."""
    if len(names) == tests and tests > shown:
        return f"all {tests} tests"
    if len(names) > shown + 1:
        return f"{', '.join(names[:shown])} and {len(names) - shown} more"
    return ", ".join(names)


def first_line(text: str, width: int = 100) -> str:
    line = next((part.strip() for part in str(text).splitlines() if part.strip()), "")
    return line if len(line) <= width else line[: width - 1] + "…"


def grading_preprocessors() -> list:
    return [GuardedExecute, CapOutputs, DecideVerdicts, ClearMetadataPreprocessor, LimitOutput,
            SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]


def hidden_from_students(paths: ClassPaths) -> list[str]:
    """What a student kernel must not read even where it lies inside a folder the sandbox shows
    (the sandbox shows only the system's and Python's own folders, so this matters for a course
    kept under /usr/local, say): the course repository (solutions, .git), the class folder
    (gradebook, references, everyone's submissions) and the exchange."""
    return [str(p) for p in (paths.repo, paths.class_dir, paths.exchange)]


def stage(paths: ClassPaths, assignment: str, student: str) -> list[str]:
    """Rebuild the student's submission into staged/: the notebooks that will actually run."""
    raw = paths.submitted / student / assignment
    target = paths.staged / student / assignment
    if target.exists():
        shutil.rmtree(target)
    # Supporting files (data) come from the release, never from the student.
    shutil.copytree(paths.release / assignment, target, ignore=shutil.ignore_patterns("*.ipynb"))
    for name in ("timestamp.txt", "submission_secret.txt"):
        if (raw / name).is_file():
            shutil.copy2(raw / name, target / name)
    expected = notebooks_of(paths, assignment)
    handed_in = {p.stem: p for p in sorted(raw.glob("*.ipynb"))} if raw.is_dir() else {}
    strays = [stem for stem in handed_in if stem not in expected]
    common: list[str] = inbound.notes_of(raw)  # what collect refused, for the grade table
    if len(expected) == 1 and expected[0] not in handed_in and len(strays) == 1:
        # One notebook under another name (a "Copy1", a rename): it is the answer.
        stem = strays.pop()
        handed_in[expected[0]] = handed_in.pop(stem)
        common.append(f"{expected[0]}.ipynb was handed in as {stem}.ipynb; it was graded as {expected[0]}.ipynb")
    common += [f"{stem}.ipynb is not part of this assignment and was not graded" for stem in strays]
    all_notes = list(common)
    for name in expected:
        skeleton = nbformat.read(paths.release / assignment / f"{name}.ipynb", as_version=4)
        notes = list(common)
        if name in handed_in:
            nb, problem = submission.read_submitted(handed_in[name])
        else:
            nb, problem = None, f"{name}.ipynb was not handed in"
        if problem:
            notes.append(problem + "; it was graded as unanswered")
        graded, repairs = submission.rebuild(skeleton, nb)
        notes += repairs
        if notes:
            graded.cells.insert(0, submission.notes_cell(notes))
        nbformat.write(graded, target / f"{name}.ipynb")
        all_notes += notes[len(common):]
    (target / "grading_notes.json").write_text(json.dumps(all_notes, indent=1))
    return all_notes


def grade_submission(paths: ClassPaths, assignment: str, student: str) -> SubmissionResult:
    """Grade one student's one assignment in this process; never raises for anything the student did.

    The run (autograder.pool.SubmissionRunner) and the gradebook write (autograder.pool.Recorder)
    are the same two halves `grade` uses with its workers."""
    from .pool import grade_here
    try:
        return grade_here(paths, assignment, student)
    except AutograderError as err:
        return SubmissionResult(student, assignment, error=str(err))


def _read_back(paths: ClassPaths, result: SubmissionResult) -> None:
    """Fill a result from the gradebook and the reasons written into the autograded notebooks."""
    reasons = {}
    result.cells = []
    for nb_path in sorted((paths.autograded / result.student / result.assignment).glob("*.ipynb")):
        # Plain JSON: nbgrader wrote and validated this notebook; only outputs are read here.
        nb = json.loads(nb_path.read_text())
        for cell in nb.get("cells", []):
            for output in reports.errors_of(cell):
                if output.get("ename") == VERDICT_ERROR:
                    reasons[reports.grade_id(cell)] = output.get("evalue", "")
    with Gradebook(f"sqlite:///{paths.gradebook}") as gb:
        try:
            sub = gb.find_submission(result.assignment, result.student)
        except MissingEntry:
            return
        result.score, result.max_score = sub.score, sub.max_score
        result.needs_manual_grade = sub.needs_manual_grade
        for nb in sub.notebooks:
            for grade in nb.grades:
                result.cells.append(CellResult(grade.name, grade.score, grade.max_score,
                                               reasons.get(grade.name, ""),
                                               manual=grade.auto_score is None))


def gradebook_locked(paths: ClassPaths) -> str:
    """What to tell an instructor whose gradebook another program keeps locked."""
    return (f"the gradebook {paths.gradebook} stayed locked by another program for over {GRADEBOOK_LOCK_WAIT} s "
            f"(an sqlite3 shell inside a transaction, or a stopped or hung nbgrader or Formgrader?); "
            f"close that program, then grade again")


def _gradebook_error(paths: ClassPaths, err: sqlite3.Error) -> AutograderError:
    if "locked" in str(err) or "busy" in str(err):
        return AutograderError(gradebook_locked(paths))
    if "not a database" in str(err) or "malformed" in str(err):
        return AutograderError(f"the gradebook {paths.gradebook} is damaged ({err}); copy the newest backup from "
                               f"{paths.backups} over it, then grade again (what it lacks is graded again)")
    return AutograderError(f"the gradebook {paths.gradebook} cannot be written ({err}); check the file and its "
                           f"folder's permissions, or restore it from {paths.backups}")


def check_gradebook_writable(paths: ClassPaths) -> None:
    """Fail before grading, with a clear message, when another program keeps the gradebook's write
    lock (waiting up to GRADEBOOK_LOCK_WAIT for it), rather than fail every submission one by one."""
    if not paths.gradebook.is_file():
        return
    try:
        with contextlib.closing(sqlite3.connect(paths.gradebook, timeout=GRADEBOOK_LOCK_WAIT)) as con:
            con.execute("BEGIN IMMEDIATE")  # the write lock, released at once
            con.rollback()
    except sqlite3.Error as err:
        raise _gradebook_error(paths, err) from err


# Backups kept in class/backups/: one per grading run that grades something, so a term of
# regrading six exercises would otherwise keep hundreds of copies of a growing gradebook.
KEEP_BACKUPS = 20
BACKUP_NAME = re.compile(r"gradebook-\d{8}-\d{6}-\d{6}\.db")


def backup_gradebook(paths: ClassPaths) -> Path | None:
    """Copy the gradebook aside, consistent even mid-write, then remove all but the newest
    KEEP_BACKUPS copies this function made. VACUUM INTO, not the backup API: Python's
    Connection.backup retries a locked database for ever, deaf to Ctrl-C; a statement waits
    GRADEBOOK_LOCK_WAIT at most."""
    if not paths.gradebook.is_file():
        return None
    paths.backups.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S-%f")
    target = paths.backups / f"gradebook-{stamp}.db"
    try:
        with contextlib.closing(sqlite3.connect(paths.gradebook, timeout=GRADEBOOK_LOCK_WAIT)) as src:
            src.execute("VACUUM INTO ?", (str(target),))
    except sqlite3.Error as err:
        target.unlink(missing_ok=True)
        raise _gradebook_error(paths, err) from err
    # The names sort by time; files of any other name (an instructor's own copy) are not ours.
    made = sorted(p for p in paths.backups.glob("gradebook-*.db") if BACKUP_NAME.fullmatch(p.name))
    for old in made[:-KEEP_BACKUPS]:
        old.unlink(missing_ok=True)
    return target


def _digest_folders(folders: list[Path]) -> str:
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def _shared_inputs_digest(paths: ClassPaths, assignment: str) -> str:
    """What every student's grade depends on: the released skeleton, the reference results and
    the grader's own code. Hashed once per run, not once per student."""
    return _digest_folders([paths.release / assignment, paths.reference / assignment, Path(__file__).parent])


def inputs_fingerprint(paths: ClassPaths, assignment: str, student: str, shared: str | None = None) -> str:
    """sha256 over everything a grade depends on: the raw submission and the shared inputs.
    Equal fingerprints, equal grades."""
    shared = shared or _shared_inputs_digest(paths, assignment)
    own = _digest_folders([paths.submitted / student / assignment])
    return hashlib.sha256(f"{shared}:{own}".encode()).hexdigest()


def _state_file(paths: ClassPaths, assignment: str, student: str) -> Path:
    return paths.class_dir / "state" / assignment / f"{student}.json"


def default_jobs() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def grade(paths: ClassPaths, assignment: str, student: str | None = None, force: bool = False,
          jobs: int | None = None, progress=None,
          on_result: Callable[[SubmissionResult], None] | None = None) -> list[SubmissionResult]:
    """Grade the class (or one student), `jobs` submissions at a time (default: one per core).

    A submission already graded from identical inputs (and still in the gradebook) is not graded
    again unless `force`, so an interrupted run resumes where it stopped; an interrupted forced
    run, run again with `force`, resumes too. `progress` (autograder.progress.Progress) is told
    about each submission as it is recorded. On Ctrl-C, raises autograder.pool.Interrupted after
    a clean stop; every submission recorded until then stays recorded."""
    from .pool import grade_many
    require_assignment(paths, assignment)
    if not paths.class_dir.is_dir():  # a mistyped --class-dir: `collect` would start a new class there
        raise AutograderError(f"the class folder {paths.class_dir} does not exist; check --class-dir "
                              f"(or CICD_CLASS_DIR)")
    collected = students_collected(paths, assignment)
    if not collected:
        raise AutograderError(f"nothing has been collected for '{assignment}' yet; "
                              f"run `python -m autograder collect {assignment}` first")
    if student is not None and student not in collected:
        raise AutograderError(f"no collected submission of '{assignment}' from student '{student}'; "
                              f"collected: {', '.join(collected)}")
    if jobs is not None and jobs < 1:
        raise AutograderError(f"--jobs must be at least 1 (got {jobs})")
    check_gradebook_writable(paths)
    # The state says what was graded from which inputs; the gradebook must still hold it (one put
    # back from an older backup may not).
    recorded_before = students_in_gradebook(paths, assignment)
    prepare_reference(paths, assignment)
    shared = _shared_inputs_digest(paths, assignment)
    names = [student] if student else collected
    forced_run = _forced_run(paths, assignment, student) if force else None
    results: dict[str, SubmissionResult] = {}
    fingerprints, pending = {}, []
    for name in names:
        state = _state_file(paths, assignment, name)
        fingerprints[name] = inputs_fingerprint(paths, assignment, name, shared)
        saved = json.loads(state.read_text()) if state.is_file() else {}
        if saved.get("inputs") == fingerprints[name] and name in recorded_before \
                and (not force or saved.get("forced_run") == forced_run):
            result = SubmissionResult(name, assignment, skipped=True, notes=saved.get("notes", []),
                                      isolation=saved.get("isolation", ""),
                                      incidents=saved.get("incidents", []))
            _read_back(paths, result)
            results[name] = result
        else:
            pending.append(name)
    if pending:  # a run that grades nothing writes nothing: no backup of it either
        backup_gradebook(paths)
    if progress is not None:
        progress.start(len(pending), already=len(names) - len(pending))

    def recorded(result: SubmissionResult) -> None:
        if not result.error:
            state = _state_file(paths, assignment, result.student)
            state.parent.mkdir(parents=True, exist_ok=True)
            state.write_text(json.dumps({"inputs": fingerprints[result.student], "notes": result.notes,
                                         "isolation": result.isolation, "incidents": result.incidents,
                                         "forced_run": forced_run}))
        results[result.student] = result
        if progress is not None:
            progress.advance(failed=bool(result.failures_to_run))
        if on_result is not None:
            on_result(result)

    if pending:
        tick = progress.tick if progress is not None else (lambda running: None)
        try:
            grade_many(paths, assignment, pending, jobs or default_jobs(), recorded, tick)
        finally:
            if progress is not None:
                progress.finish()
    if force:  # complete: the next forced run regrades everyone again
        _forced_run_file(paths, assignment).unlink(missing_ok=True)
    return [results[name] for name in names if name in results]


def _forced_run_file(paths: ClassPaths, assignment: str) -> Path:
    return paths.class_dir / "state" / f"{assignment}.forced-run.json"


def _forced_run(paths: ClassPaths, assignment: str, student: str | None) -> str:
    """The id of this forced regrade: that of an interrupted one over the same students, which
    this run then resumes (a submission it regraded from the same inputs is not run again), or a
    new one. The file is removed once a forced run completes."""
    marker = _forced_run_file(paths, assignment)
    try:
        previous = json.loads(marker.read_text())
        if previous.get("student") == student and isinstance(previous.get("id"), str):
            return previous["id"]
    except (OSError, ValueError, AttributeError):
        pass
    run_id = os.urandom(8).hex()
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps({"id": run_id, "student": student}))
    return run_id


def students_in_gradebook(paths: ClassPaths, assignment: str) -> set[str]:
    """The students whose submission of `assignment` the gradebook holds. Fails before grading
    when it does not hold the assignment's notebooks (never generated in this class, or an empty
    or older gradebook put back): nbgrader would fail every submission with MissingEntry."""
    released = notebooks_of(paths, assignment)
    held, students = set(), set()
    if paths.gradebook.is_file() and paths.gradebook.stat().st_size:
        with Gradebook(f"sqlite:///{paths.gradebook}") as gb:
            try:
                held = {nb.name for nb in gb.find_assignment(assignment).notebooks}
                students = {sub.student_id for sub in gb.assignment_submissions(assignment)}
            except MissingEntry:
                pass
    if not released or not set(released) <= held:
        raise AutograderError(f"{assignment} is not in the gradebook {paths.gradebook}; record it with "
                              f"`python -m autograder release {assignment}` (with the same --class-dir), "
                              f"then grade again")
    return students


# --- feedback and export ---------------------------------------------------------------------

def feedback(paths: ClassPaths, assignment: str, student: str | None = None) -> tuple[list[Path], list[str]]:
    """Write HTML feedback (test code hidden) and hand it back through the exchange.

    Returns the feedback files and a note for each student whose feedback could not be
    released (a submission that did not come through the exchange has no submission secret)."""
    require_assignment(paths, assignment)
    graded = sorted(p.name for p in paths.autograded.iterdir() if (p / assignment).is_dir()) \
        if paths.autograded.is_dir() else []
    if not graded:
        raise AutograderError(f"nothing has been graded for '{assignment}' yet; "
                              f"run `python -m autograder grade {assignment}` first")
    if student is not None and student not in graded:
        raise AutograderError(f"'{student}' has no graded '{assignment}'; graded: {', '.join(graded)}")
    from . import feedback as learner_feedback  # the summary page and the pending-grade warning
    # Hidden tests never shown: the page is a visible-only run plus the grader's own verdicts.
    grader = api(paths, **learner_feedback.config_sections(),
                 VisibleOnlyFeedback={"staged_dir": str(paths.staged), "reference_dir": str(paths.reference)},
                 GuardedExecute={"hide_paths": hidden_from_students(paths), "release_dir": str(paths.release)})
    _checked(grader.generate_feedback(assignment, student, force=True), f"feedback for {assignment}")
    _exchange_ok(paths)
    notes = []
    for name in [student] if student else graded:
        if not (paths.feedback / name / assignment / "submission_secret.txt").is_file():
            notes.append(f"{name}: feedback written but not released (the submission did not come "
                         f"through the exchange); hand them {paths.feedback / name / assignment}")
            continue
        _checked(grader.release_feedback(assignment, name), f"releasing feedback to {name}")
    who = [student] if student else graded
    notes += learner_feedback.pending_manual_grades(paths.gradebook, assignment, who)
    return sorted(f for s in who for f in (paths.feedback / s / assignment).glob("*.html")), notes


def export(paths: ClassPaths, to: Path) -> Path:
    if not paths.gradebook.is_file():
        raise AutograderError(f"there is no gradebook in {paths.class_dir} yet; release and grade an assignment first")
    to = Path(to)
    ensure_writable(to.parent, "folder for the CSV", "choose another path with --to")
    with Gradebook(f"sqlite:///{paths.gradebook}") as gb:
        CsvExportPlugin(to=str(to)).export(gb)
    return to
