"""Grading a class at once: worker processes run student code, the parent alone writes the gradebook.

Grading one submission has two halves.

- Running it (`SubmissionRunner`): staging, nbgrader's sanitizing preprocessors, the student's
  code in its own sandboxed kernel, and the verdicts. It reads the gradebook (the released cells)
  and writes only files of that one submission, so several run side by side, one per worker.
- Recording it (`Recorder`): nbgrader's own `autograde`, given the run notebook and only the
  preprocessors from SaveAutoGrades on (they write grades). The parent process
  does this for every submission, one after another, so SQLite has exactly one writer.

The split follows the order of nbgrader's Autograde exactly (sanitize, execute, then save), so a
submission gets the same grade whether it is graded alone, sequentially or in parallel.

Each runner keeps one kernel started ahead: it boots in its own fresh sandbox while the current
submission runs, imports the modules the released notebook's own cells import, and serves the
next submission. No kernel ever runs two submissions. The parent hands a worker its next
submission before recording the last one, so recording overlaps with running.

Stopping (Ctrl-C): the parent finishes the gradebook write in progress, never a half of it, and
tells each worker to stop; a worker kills its kernels and deletes their scratch folders and its
unfinished output. Workers live in their own session, so a terminal's Ctrl-C reaches the parent
only, which decides.
"""
from __future__ import annotations

import collections
import contextlib
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import threading
import time
from pathlib import Path
from typing import Callable

import nbformat
import sqlalchemy.exc
from jupyter_core.utils import run_sync
from nbgrader.converters import Autograde
from nbgrader.preprocessors import SaveAutoGrades

from . import AutograderError, course, kernel_forks
from .config import ClassPaths, load_course_config
from .kernel_forks import modules_to_preload
from .preprocessors import GuardedExecute
from .sandbox import Sandbox, isolation_status

KERNEL_NAME = "python3"
# nbgrader's Autograde runs these before executing (the released cells are put back, outputs cleared).
SANITIZE = list(Autograde.class_traits()["sanitize_preprocessors"].default())


def split_preprocessors() -> tuple[list, list]:
    """course.grading_preprocessors(), cut where the gradebook writes begin (SaveAutoGrades):
    the first part runs in a worker, the rest in the parent."""
    steps = course.grading_preprocessors()
    cut = next(i for i, step in enumerate(steps) if issubclass(step, SaveAutoGrades))
    return steps[:cut], steps[cut:]
STOP_SIGNAL = signal.SIGUSR1  # nbclient takes over SIGINT and SIGTERM while a notebook runs



@contextlib.contextmanager
def _grading_env():
    """NBGRADER_EXECUTION=autograde, as nbgrader sets it for the kernels it starts; put back as it
    was even after an error. (nbgrader's own `setenv` cannot nest: it forgets the value before.)"""
    before = os.environ.get("NBGRADER_EXECUTION")
    os.environ["NBGRADER_EXECUTION"] = "autograde"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("NBGRADER_EXECUTION", None)
        else:
            os.environ["NBGRADER_EXECUTION"] = before


def _preload_code(modules: list[str]) -> str:
    return ("def _cicd_preload():\n    import importlib\n"
            f"    for name in {modules!r}:\n"
            "        try:\n            importlib.import_module(name)\n"
            "        except BaseException:\n            pass\n"
            "_cicd_preload()\ndel _cicd_preload\n")


def executed_root(paths: ClassPaths) -> Path:
    """Run notebooks waiting to be recorded; nbgrader's `autograde` reads them from here."""
    return paths.class_dir / "executed"


# --- running (any process) ---------------------------------------------------------------------

class SubmissionRunner:
    """Runs submissions of one assignment; built once per worker, used for many submissions."""

    def __init__(self, paths: ClassPaths, assignment: str, prewarm: bool = True, preload: bool = True,
                 fork_address: str | None = None):
        self.paths, self.assignment, self.prewarm = paths, assignment, prewarm
        config = load_course_config(paths)
        config.GuardedExecute.hide_paths = course.hidden_from_students(paths)
        config.DecideVerdicts.reference_dir = str(paths.reference)
        self.db_url = config.CourseDirectory.db_url
        self.sanitize = [cls(config=config) for cls in SANITIZE]
        self.steps = [cls(config=config) for cls in split_preprocessors()[0]]
        self.execute = next(step for step in self.steps if isinstance(step, GuardedExecute))
        self.execute.kernel_name = KERNEL_NAME
        # A kernel that never answers before the first cell is replaced by one of ours, so that
        # `abandon` can find and kill it too.
        self.execute.new_kernel_manager = lambda: self._start_kernel()
        self.kernels: set = set()  # every kernel manager with a live kernel
        self.spare = None
        # Seconds a kernel started ahead has to finish importing the notebook's modules once its
        # submission is due (it usually has, long before): a kernel start and imports on a busy machine.
        self.warm_up_wait = self.execute.startup_timeout + self.execute.kernel_info_wait
        self.unfinished: Path | None = None
        self.kernel_folder = self._build_kernel_folder()
        self.preload = modules_to_preload(paths.release / assignment) if preload else []
        self.execute.fork_preload, self.execute.fork_address = self.preload, fork_address

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
        with _grading_env():
            run_sync(km.start_kernel)(cwd=str(self.kernel_folder),
                                      extra_arguments=["--HistoryManager.hist_file=:memory:"])
        return km

    def _warm_up(self, km) -> None:
        """Ask a kernel started ahead to import the notebook's modules while nobody waits for it.
        The request waits in the socket's queue until the kernel is up; it runs silently (no
        execution count, no history) before any cell of the submission."""
        if not self.preload:
            return
        client = km.client()
        km._cicd_warm_up = (client, None)  # so that _stop_kernel stops its channels whatever happens next
        client.start_channels()
        km._cicd_warm_up = (client, client.execute(_preload_code(self.preload), silent=True, store_history=False))

    def _finish_warm_up(self, km) -> bool:
        """Wait until a kernel started ahead has answered its warm-up, then drop that client: the
        submission's client then meets an idle kernel. With ipykernel 7.4, a client that connects
        while the kernel is busy importing can have a request left unread for good: 58 of 120
        kernels in `python benchmarks/kernel_handover.py`, which connects at once (in grading, about
        1 kernel start in 50 to 150 stalled under load); 0 of 120 once the warm-up had answered.
        False when no answer came within `warm_up_wait` seconds: the kernel is not used."""
        client, msg_id = getattr(km, "_cicd_warm_up", (None, None))
        if client is None:
            return True
        km._cicd_warm_up = (None, None)
        deadline = time.monotonic() + self.warm_up_wait
        try:
            while time.monotonic() < deadline:
                try:
                    reply = run_sync(client.get_shell_msg)(timeout=1)
                except queue.Empty:  # a kernel that died meanwhile never answers: do not wait for it
                    if not run_sync(km.is_alive)():
                        return False
                    continue
                except Exception:
                    return False
                if reply.get("parent_header", {}).get("msg_id") == msg_id:
                    return True
            return False
        finally:
            client.stop_channels()

    def _stop_kernel(self, km) -> None:
        client, _ = getattr(km, "_cicd_warm_up", (None, None))
        if client is not None:
            client.stop_channels()
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
        if km is not None and not self._finish_warm_up(km):
            self.execute.log.warning("The kernel started ahead did not finish its warm-up in %s s; "
                                     "starting another", self.warm_up_wait)
            self._stop_kernel(km)
            km = None
        if km is None:
            km = self._start_kernel()
        if self.prewarm:
            try:
                self.spare = self._start_kernel()  # boots while this submission runs
                self._warm_up(self.spare)
            except Exception:
                self.spare = None
        try:
            with _grading_env():
                return self.execute.preprocess(nb, resources, km=km)
        finally:
            if self.execute.kc is not None:
                self.execute.kc.stop_channels()
                self.execute.kc = None
            for started in [k for k in self.kernels if k is not self.spare]:  # with any replacement
                self._stop_kernel(started)

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
                for step in self.steps:
                    nb, resources = self._execute(nb, resources) if step is self.execute else step(nb, resources)
                incident = nb.metadata.get("cicd_grading", {}).get("incident")
                if incident:
                    outcome["incidents"].append(f"{path.name}: {incident}")
                nbformat.write(nb, target / path.name)
            self.unfinished = None
        except AutograderError as err:
            outcome["error"] = str(err)
        except Exception as err:  # a fault of the grader, not of the student: say which
            outcome["error"] = f"grading failed: {type(err).__name__}: {str(err).strip()[:300]}"
            if "database is locked" in str(err):  # nbgrader's sanitizing reads the gradebook
                outcome["error"] = _locked_failure(self.paths)
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


def _locked_failure(paths: ClassPaths) -> str:
    """A submission's error when the gradebook stayed locked while it was graded or recorded."""
    return f"grading failed: {course.gradebook_locked(paths)}"


# --- recording (the parent process only) -----------------------------------------------------

class Recorder:
    """Writes run submissions into the gradebook through nbgrader's `autograde`; one per run."""

    def __init__(self, paths: ClassPaths, assignment: str):
        self.paths, self.assignment = paths, assignment
        self.api = course.api(paths,
                              CourseDirectory={"submitted_directory": str(executed_root(paths))},
                              Autograde={"sanitize_preprocessors": [],
                                         "autograde_preprocessors": split_preprocessors()[1]})

    def record(self, outcome: dict) -> "course.SubmissionResult":
        result = course.SubmissionResult(outcome["student"], self.assignment, notes=outcome["notes"],
                                         incidents=outcome.get("incidents", []),
                                         isolation=outcome["isolation"], error=outcome["error"])
        executed = executed_root(self.paths) / result.student / self.assignment
        try:
            if not result.error:
                done = self.api.autograde(self.assignment, result.student, force=True, create=True)
                if not done.get("success"):
                    text = (done.get("error") or done.get("log") or "").strip()
                    lines = text.splitlines()
                    result.error = "grading failed: " + (lines[-1] if lines else "no details from nbgrader")
                    if "database is locked" in text:  # nbgrader's own last line blames its schema
                        result.error = _locked_failure(self.paths)
            try:
                course._read_back(self.paths, result)
            except sqlalchemy.exc.OperationalError as err:
                if "database is locked" not in str(err):
                    raise
                result.error = result.error or _locked_failure(self.paths)
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

def _worker_main(conn, paths: ClassPaths, assignment: str, environment: dict, fork_address: str | None) -> None:
    os.setsid()  # a terminal's Ctrl-C goes to the parent, which decides how to stop
    # The fork server was started with the environment of its time; settings read from the
    # environment (CICD_CELL_TIMEOUT, ...) must be the parent's of now.
    os.environ.clear()
    os.environ.update(environment)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    runner = SubmissionRunner(paths, assignment, fork_address=fork_address)

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
    def __init__(self, context, paths, assignment, fork_address):
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_worker_main, daemon=True,
                                       args=(child, paths, assignment, dict(os.environ), fork_address))
        self.process.start()
        child.close()
        self.student: str | None = None
        self.since = 0.0  # when it was handed its submission
        self.ready = False


def _context():
    # Workers fork from a server that has the grader imported already: cheap to start, and
    # no threads or open gradebook of the parent are copied into them.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["autograder.pool"])
    return context


def _fork_address(paths: ClassPaths, assignment: str) -> str | None:
    """The address of this process's kernel fork server for the assignment, shared by its
    workers (and kept for later runs: starting one costs what it saves on a kernel or two)."""
    if isolation_status() != "bubblewrap":
        return None
    try:
        found = kernel_forks.server(modules_to_preload(paths.release / assignment), Sandbox.environment())
    except OSError:  # no server: each kernel starts from nothing, as before
        return None
    return found.address if found else None


class Interrupted(Exception):
    """Grading stopped at the user's request; what was recorded stays recorded."""


def grade_many(paths: ClassPaths, assignment: str, students: list[str], jobs: int,
               on_result: Callable, on_tick: Callable = lambda running: None) -> None:
    """Grade `students` with `jobs` workers; `on_result(result)` is called (in this process) as
    each submission is recorded, `on_tick(running)` about twice a second with the seconds each
    submission being run has taken so far. Raises Interrupted after a clean stop on SIGINT."""
    recorder = Recorder(paths, assignment)
    context = _context()
    queue = collections.deque(students)
    fork_address = _fork_address(paths, assignment)
    workers = [_Worker(context, paths, assignment, fork_address) for _ in range(max(1, min(jobs, len(students))))]
    stop_requested = threading.Event()
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: stop_requested.set()) if in_main_thread else None
    try:
        while queue or any(w.student for w in workers):
            if stop_requested.is_set():
                raise Interrupted()
            on_tick({w.student: time.monotonic() - w.since for w in workers if w.student is not None})
            waitables = [w.conn for w in workers] + [w.process.sentinel for w in workers]
            ready = multiprocessing.connection.wait(waitables, timeout=0.5)
            finished = []
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
                        workers.append(_Worker(context, paths, assignment, fork_address))
                if outcome is not None:
                    worker.student = None
                    finished.append(outcome)
            # Workers get their next submission first, then the parent records: the two overlap.
            for worker in workers:
                if worker.ready and worker.student is None and queue and worker.process.is_alive():
                    worker.student, worker.since = queue.popleft(), time.monotonic()
                    # A kernel started ahead only pays when some submission will still need it.
                    worker.conn.send((worker.student, len(queue) >= len(workers)))
            for outcome in finished:
                if stop_requested.is_set():
                    raise Interrupted()
                on_result(recorder.record(outcome))
    except BaseException:
        _stop_workers(workers, now=True)
        for student in students:  # run but not recorded: graded again on the next run
            shutil.rmtree(executed_root(paths) / student / assignment, ignore_errors=True)
            try:
                (executed_root(paths) / student).rmdir()
            except OSError:
                pass
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
