"""Grading a class at once: worker processes run student code, the parent alone writes the gradebook.

Grading one submission has two halves.

- Running it (`SubmissionRunner`): staging, nbgrader's sanitizing preprocessors, the student's
  code in its own sandboxed kernel, and the verdicts. It reads the gradebook (the released cells)
  and writes only files of that one submission, so several run side by side, one per worker.
- Recording it (`Recorder`): nbgrader's own `autograde`, given the run notebook and only the
  preprocessors that write grades (SaveAutoGrades, AssignLatePenalties, ...). The parent process
  does this for every submission, one after another, so SQLite has exactly one writer.

The split follows the order of nbgrader's Autograde exactly (sanitize, execute, then save), so a
submission gets the same grade whether it is graded alone, sequentially or in parallel.

Each runner keeps one kernel started ahead: it boots in its own fresh sandbox while the current
submission runs, and serves the next one. No kernel ever runs two submissions.

Stopping (Ctrl-C): the parent finishes the gradebook write in progress, never a half of it, and
tells each worker to stop; a worker kills its kernels and deletes their scratch folders and its
unfinished output. Workers live in their own session, so a terminal's Ctrl-C reaches the parent
only, which decides.
"""
from __future__ import annotations

import collections
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import nbformat
from jupyter_core.utils import run_sync
from nbconvert.preprocessors import ClearMetadataPreprocessor
from nbgrader.converters import Autograde
from nbgrader.preprocessors import AssignLatePenalties, CheckCellMetadata, LimitOutput, SaveAutoGrades
from nbgrader.utils import setenv

from . import AutograderError, course
from .config import ClassPaths, load_course_config
from .preprocessors import CapOutputs, DecideVerdicts, GuardedExecute
from .sandbox import isolation_status

KERNEL_NAME = "python3"
# nbgrader's Autograde runs these before executing (the released cells are put back, outputs cleared).
SANITIZE = list(Autograde.class_traits()["sanitize_preprocessors"].default())
DECIDE = [CapOutputs, DecideVerdicts]
RECORD = [ClearMetadataPreprocessor, LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
STOP_SIGNAL = signal.SIGUSR1  # nbclient takes over SIGINT and SIGTERM while a notebook runs


def executed_root(paths: ClassPaths) -> Path:
    """Run notebooks waiting to be recorded; nbgrader's `autograde` reads them from here."""
    return paths.class_dir / "executed"


# --- running (any process) ---------------------------------------------------------------------

class SubmissionRunner:
    """Runs submissions of one assignment; built once per worker, used for many submissions."""

    def __init__(self, paths: ClassPaths, assignment: str, prewarm: bool = True):
        self.paths, self.assignment, self.prewarm = paths, assignment, prewarm
        config = load_course_config(paths)
        config.GuardedExecute.hide_paths = course.hidden_from_students(paths)
        config.DecideVerdicts.reference_dir = str(paths.reference)
        self.db_url = config.CourseDirectory.db_url
        self.sanitize = [cls(config=config) for cls in SANITIZE]
        self.execute = GuardedExecute(config=config)
        self.execute.kernel_name = KERNEL_NAME
        self.decide = [cls(config=config) for cls in DECIDE]
        self.kernels: set = set()  # every kernel manager with a live kernel
        self.spare = None
        self.unfinished: Path | None = None
        self.kernel_folder = self._build_kernel_folder()

    def _build_kernel_folder(self) -> Path:
        """What a kernel finds in its working folder: the assignment's files as nbgrader lays
        them out for autograding (released files, overwritten by the source's), no notebooks.
        It is the same for every student, so a kernel can be started before its student is known."""
        folder = self.paths.class_dir / "work" / f"kernel-{os.getpid()}" / self.assignment
        shutil.rmtree(folder.parent, ignore_errors=True)
        skip = shutil.ignore_patterns("*.ipynb", ".ipynb_checkpoints", "__pycache__")
        shutil.copytree(self.paths.release / self.assignment, folder, ignore=skip)
        shutil.copytree(self.paths.source / self.assignment, folder, ignore=skip, dirs_exist_ok=True)
        return folder

    def _start_kernel(self):
        km = self.execute.create_kernel_manager()
        self.kernels.add(km)
        with setenv(NBGRADER_EXECUTION="autograde"):
            run_sync(km.start_kernel)(cwd=str(self.kernel_folder),
                                      extra_arguments=["--HistoryManager.hist_file=:memory:"])
        return km

    def _stop_kernel(self, km) -> None:
        try:
            run_sync(km.shutdown_kernel)(now=True)
        except Exception:  # a kernel that is already gone needs no shutdown
            self._kill(km)
        self.kernels.discard(km)

    def _kill(self, km) -> None:
        """Without asyncio: safe from a signal handler, whatever the event loop was doing."""
        pid = getattr(km.provisioner, "pid", None) if getattr(km, "provisioner", None) else None
        if pid:
            try:
                os.killpg(pid, signal.SIGKILL)  # the kernel's own session: bwrap and all inside
            except OSError:
                pass
        scratch = getattr(km, "_scratch", None)
        if scratch:
            for _ in range(3):  # a dying kernel may still be writing into it
                shutil.rmtree(scratch, ignore_errors=True)
                if not Path(scratch).exists():
                    break
                time.sleep(0.1)

    def _execute(self, nb, resources):
        km = self.spare
        self.spare = None
        if km is None:
            km = self._start_kernel()
        if self.prewarm:
            try:
                self.spare = self._start_kernel()  # boots while this submission runs
            except Exception:
                self.spare = None
        try:
            with setenv(NBGRADER_EXECUTION="autograde"):
                return self.execute.preprocess(nb, resources, km=km)
        finally:
            if self.execute.kc is not None:
                self.execute.kc.stop_channels()
                self.execute.kc = None
            self._stop_kernel(km)

    def run(self, student: str, prewarm: bool | None = None) -> dict:
        """Stage, sanitize, execute and decide one submission; write it to executed/<student>/.
        `prewarm`: start the next submission's kernel meanwhile (default: as built)."""
        if prewarm is not None:
            self.prewarm = prewarm
        outcome = {"student": student, "notes": [], "incidents": [], "isolation": "", "error": ""}
        try:
            outcome["notes"] = course.stage(self.paths, self.assignment, student)
            outcome["isolation"] = isolation_status()
            staged = self.paths.staged / student / self.assignment
            target = executed_root(self.paths) / student / self.assignment
            self.unfinished = target
            shutil.rmtree(target, ignore_errors=True)
            shutil.copytree(staged, target, ignore=shutil.ignore_patterns("*.ipynb"))
            for path in sorted(staged.glob("*.ipynb")):
                nb = nbformat.read(path, as_version=4)
                resources = {"unique_key": path.stem, "metadata": {"path": str(target)},
                             "nbgrader": {"student": student, "assignment": self.assignment,
                                          "notebook": path.stem, "db_url": self.db_url}}
                for step in self.sanitize:
                    nb, resources = step(nb, resources)
                nb, resources = self._execute(nb, resources)
                for step in self.decide:
                    nb, resources = step(nb, resources)
                incident = nb.metadata.get("cicd_grading", {}).get("incident")
                if incident:
                    outcome["incidents"].append(f"{path.name}: {incident}")
                nbformat.write(nb, target / path.name)
            self.unfinished = None
        except AutograderError as err:
            outcome["error"] = str(err)
        except Exception as err:  # a fault of the grader, not of the student: say which
            outcome["error"] = f"grading failed: {type(err).__name__}: {str(err).strip()[:300]}"
        return outcome

    def close(self) -> None:
        if self.spare is not None:
            self._stop_kernel(self.spare)
            self.spare = None
        self.abandon()

    def abandon(self) -> None:
        """Kill every kernel, delete every scratch folder and the unfinished output."""
        for km in list(self.kernels):
            self._kill(km)
        self.kernels.clear()
        if self.unfinished is not None:
            shutil.rmtree(self.unfinished, ignore_errors=True)
        shutil.rmtree(self.kernel_folder.parent, ignore_errors=True)


# --- recording (the parent process only) -----------------------------------------------------

class Recorder:
    """Writes run submissions into the gradebook through nbgrader's `autograde`; one per run."""

    def __init__(self, paths: ClassPaths, assignment: str):
        self.paths, self.assignment = paths, assignment
        self.api = course.api(paths,
                              CourseDirectory={"submitted_directory": str(executed_root(paths))},
                              Autograde={"sanitize_preprocessors": [], "autograde_preprocessors": RECORD})

    def record(self, outcome: dict) -> "course.SubmissionResult":
        result = course.SubmissionResult(outcome["student"], self.assignment, notes=outcome["notes"],
                                         incidents=outcome.get("incidents", []),
                                         isolation=outcome["isolation"], error=outcome["error"])
        executed = executed_root(self.paths) / result.student / self.assignment
        try:
            if not result.error:
                done = self.api.autograde(self.assignment, result.student, force=True, create=True)
                if not done.get("success"):
                    lines = (done.get("error") or done.get("log") or "").strip().splitlines()
                    result.error = "grading failed: " + (lines[-1] if lines else "no details from nbgrader")
            course._read_back(self.paths, result)
        finally:
            shutil.rmtree(executed, ignore_errors=True)
            try:
                executed.parent.rmdir()  # the student's folder, now empty
            except OSError:
                pass
        return result


def grade_here(paths: ClassPaths, assignment: str, student: str) -> "course.SubmissionResult":
    """Run and record one submission in this process (no workers, no kernel started ahead)."""
    runner = SubmissionRunner(paths, assignment, prewarm=False)
    try:
        outcome = runner.run(student)
    finally:
        runner.close()
    return Recorder(paths, assignment).record(outcome)


# --- workers ---------------------------------------------------------------------------------

def _worker_main(conn, paths: ClassPaths, assignment: str, environment: dict) -> None:
    os.setsid()  # a terminal's Ctrl-C goes to the parent, which decides how to stop
    # The fork server was started with the environment of its time; settings read from the
    # environment (CICD_CELL_TIMEOUT, ...) must be the parent's of now.
    os.environ.clear()
    os.environ.update(environment)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner = SubmissionRunner(paths, assignment)

    def stop(signum, frame):
        runner.abandon()
        os._exit(1)

    signal.signal(STOP_SIGNAL, stop)
    conn.send("ready")
    try:
        while True:
            task = conn.recv()
            if task is None:
                break
            student, more_to_come = task
            conn.send(runner.run(student, prewarm=more_to_come))
    except (EOFError, OSError):
        pass  # the parent is gone
    finally:
        runner.close()


class _Worker:
    def __init__(self, context, paths, assignment):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, args=(child, paths, assignment, dict(os.environ)),
                                       daemon=True)
        self.process.start()
        child.close()
        self.student: str | None = None
        self.ready = False


def _context():
    # Workers fork from a server that has the grader imported already: cheap to start, and
    # no threads or open gradebook of the parent are copied into them.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["autograder.pool"])
    return context


class Interrupted(Exception):
    """Grading stopped at the user's request; what was recorded stays recorded."""


def grade_many(paths: ClassPaths, assignment: str, students: list[str], jobs: int,
               on_result: Callable, on_tick: Callable = lambda: None) -> None:
    """Grade `students` with `jobs` workers; `on_result(result)` is called (in this process) as
    each submission is recorded. Raises Interrupted after a clean stop on SIGINT."""
    recorder = Recorder(paths, assignment)
    context = _context()
    queue = collections.deque(students)
    workers = [_Worker(context, paths, assignment) for _ in range(max(1, min(jobs, len(students))))]
    stop_requested = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: stop_requested.set()) if in_main_thread else None
    try:
        while queue or any(w.student for w in workers):
            if stop_requested.is_set():
                raise Interrupted()
            on_tick()
            waitables = [w.conn for w in workers] + [w.process.sentinel for w in workers]
            ready = multiprocessing.connection.wait(waitables, timeout=0.5)
            for worker in list(workers):
                outcome, gone = None, False
                if worker.conn in ready:
                    try:
                        message = worker.conn.recv()
                    except (EOFError, OSError):
                        gone = True
                    else:
                        if message == "ready":
                            worker.ready = True
                        elif isinstance(message, dict):
                            outcome = message
                elif worker.process.sentinel in ready:
                    gone = True
                if gone:
                    worker.process.join(5)
                    workers.remove(worker)
                    if not worker.ready:
                        raise AutograderError(f"a grading worker could not start (exit code "
                                              f"{worker.process.exitcode}); try again with --jobs 1")
                    if worker.student is not None:
                        # The worker died (killed, out of memory): its submission gets an error,
                        # the class goes on with a new worker.
                        outcome = {"student": worker.student, "notes": [], "incidents": [], "isolation": "",
                                   "error": f"the grading worker stopped unexpectedly (exit code "
                                            f"{worker.process.exitcode}); grade this student again with "
                                            f"--student {worker.student}"}
                    if queue:
                        workers.append(_Worker(context, paths, assignment))
                if outcome is not None:
                    if stop_requested.is_set():
                        raise Interrupted()
                    worker.student = None
                    on_result(recorder.record(outcome))
            for worker in workers:
                if worker.ready and worker.student is None and queue and worker.process.is_alive():
                    worker.student = queue.popleft()
                    # A kernel started ahead only pays when some submission will still need it.
                    worker.conn.send((worker.student, len(queue) >= len(workers)))
    except BaseException:
        _stop_workers(workers, now=True)
        raise
    else:
        _stop_workers(workers, now=False)
    finally:
        if in_main_thread:
            signal.signal(signal.SIGINT, previous)


def _stop_workers(workers: list[_Worker], now: bool) -> None:
    for worker in workers:
        try:
            if now:
                os.kill(worker.process.pid, STOP_SIGNAL)
            else:
                worker.conn.send(None)
        except (OSError, ValueError):
            pass
    deadline = time.monotonic() + 20
    for worker in workers:
        worker.process.join(max(0.1, deadline - time.monotonic()))
        if worker.process.is_alive():
            worker.process.kill()
            worker.process.join(5)
        worker.conn.close()
