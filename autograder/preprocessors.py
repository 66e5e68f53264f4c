"""nbgrader preprocessors that keep the grader in charge of a run of student code.

- GuardedExecute: nbgrader's Execute, but a kernel that dies, hangs or cannot start is
  recorded in the notebook (the affected cell gets an error saying what happened) instead
  of aborting the student's grading.
- RebuildSubmission: nbgrader's own `autograde` (command line, Formgrader) rebuilds each
  submission from the released notebook, as `python -m autograder grade` does when staging.
- CapOutputs: long outputs are cut to a fixed size, so one line of 20 MB is not kept whole.
- DecideVerdicts: replaces what the kernel said about each grade cell with the verdict of
  autograder.reports, decided against the reference solution's results.
- HideTestSource: in feedback, a test cell shows its docstring, never its code.
- VisibleOnlyFeedback: feedback built from grader-authored verdicts and from a run of the
  submission into which no hidden test code was ever sent, so no line of a hidden test can
  reach the learner, whatever the submission prints, raises or writes.
"""
from __future__ import annotations

import copy
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

import nbformat
from nbformat import NotebookNode
from nbgrader.preprocessors import Execute, NbGraderPreprocessor
from traitlets import Any, Bool, Enum, Integer, List, Unicode

from . import AutograderError, reference, reports, submission
from .kernel_forks import modules_to_preload
from .sandbox import Sandbox, SandboxedKernelManager, isolation_status

VERDICT_ERROR = "CheckFailed"
GRADER_PREFIX = "Grader: "  # how feedback marks the grader's own verdict on a test cell
_FLOOD_NOTE = "\n… [the rest of this cell's output was dropped by the grader: too much output]\n"


def _error_output(ename: str, evalue: str) -> NotebookNode:
    return NotebookNode(output_type="error", ename=ename, evalue=evalue, traceback=[f"{ename}: {evalue}"])


class GuardedExecute(Execute):
    """Execute in a sandboxed kernel (autograder.sandbox), surviving whatever the kernel does:
    death, a hang past the timeout, a failed start."""

    isolate = Bool(True, help="Run the kernel in a bubblewrap sandbox when this machine allows it").tag(config=True)
    # A cell past its timeout ends the run (a kernel that ignores interrupts would otherwise
    # cost the timeout again for every later cell); the kernel is killed, not asked to stop.
    interrupt_on_timeout = Bool(False).tag(config=True)
    shutdown_kernel = Enum(["graceful", "immediate"], default_value="immediate").tag(config=True)
    hide_paths = List(Unicode(), help="Host folders the kernel must not see").tag(config=True)
    # Kernels are forked from a server that has imported their modules (autograder.kernel_forks):
    # the grading pool's own at `fork_address` if given, else one of this process's, importing
    # `fork_preload` or, without it, what the assignment's released notebooks import (never what
    # a submission imports); with neither, each kernel starts from nothing.
    fork_preload = List(Unicode(), default_value=None, allow_none=True,
                        help="Modules the kernels' fork server imports").tag(config=True)
    release_dir = Unicode("", help="The released assignments, whose imports a fork server makes").tag(config=True)
    fork_address = None

    def _preload_for(self, resources) -> list[str] | None:
        if self.fork_preload is not None:
            return self.fork_preload
        assignment = (resources or {}).get("nbgrader", {}).get("assignment")
        if self.release_dir and assignment:
            return modules_to_preload(Path(self.release_dir) / assignment)
        return None

    def create_kernel_manager(self):
        self.kernel_manager_class = SandboxedKernelManager
        manager = super().create_kernel_manager()
        isolated = self.isolate and isolation_status() == "bubblewrap"
        manager.sandbox = Sandbox(hide=list(self.hide_paths), isolated=isolated)
        manager.fork_preload = getattr(self, "_preload", self.fork_preload)
        manager.fork_address = self.fork_address
        self._sandboxed_manager = manager  # nbclient drops self.km at cleanup; its verdict on limits stays
        return manager

    total_timeout = Integer(600, help="Wall-clock seconds for the whole notebook: a learner's own cells "
                                      "that each sleep just under the cell timeout cannot add up").tag(config=True)

    # Before the first cell none of the learner's code has run, so a kernel that does not answer
    # by then is the grader's failure, never the learner's. A kernel can leave a request unread
    # and sit idle in epoll_wait for good (ipykernel 7.4 and 6.31 alike; ipython/ipykernel#1554
    # describes one such window): on a loaded machine about 1 kernel start in 50 to 150 did, when
    # the grading client connected while the kernel was busy with its warm-up. The grading pool no
    # longer hands over a busy kernel (SubmissionRunner._finish_warm_up), and a kernel that still
    # does not answer is replaced, twice at most; when every kernel fails, the
    # submission's grading stops with a grader's error (it is graded again next time), never a
    # zero. `new_kernel_manager`, when set, starts the replacements (the grading pool's, so it can
    # stop them); else nbclient does.
    new_kernel_manager = Any(None, allow_none=True)
    kernel_attempts = Integer(3, help="Kernels tried before a submission's grading fails (none answered)").tag(config=True)
    kernel_info_wait = Integer(30, help="Seconds a started kernel has to answer before the first cell").tag(config=True)
    # nbclient waits 60 s for a new kernel's first answer; one that starts at all answers in a few
    # seconds even on a loaded machine, and a stranded one is better replaced sooner.
    startup_timeout = Integer(30, help="Seconds a new kernel has to answer its first request").tag(config=True)

    def preprocess(self, nb, resources=None, km=None):
        self._preload = self._preload_for(resources)
        for attempt in range(1, max(1, self.kernel_attempts) + 1):
            self._running_cell = None
            self._deadline = time.monotonic() + self.total_timeout
            try:
                return super().preprocess(nb, resources, km=km)
            except Exception as err:
                if self._running_cell is not None:
                    return self._stopped(nb, resources, km, err)
                self._drop_client()
                if attempt >= self.kernel_attempts:
                    raise AutograderError(
                        f"grading failed: no kernel answered before the notebook's first cell ({attempt} kernels "
                        f"tried; the last: {type(err).__name__}: {str(err).strip()[:200]}); none of the submission's "
                        "code ran, so this is the grading machine's fault: grade this submission again") from err
                self.log.warning("The kernel did not answer before the first cell (%s: %s); starting another",
                                 type(err).__name__, err)
                km = self.new_kernel_manager() if self.new_kernel_manager is not None else None

    def _drop_client(self) -> None:
        """The client of a kernel given up on (nbclient stops it only for kernels it owns)."""
        if getattr(self, "kc", None) is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
            self.kc = None

    def _stopped(self, nb, resources, km, err):
        """The submission's kernel misbehaved and its run ended early: say why in the notebook,
        grade what ran, and let the class go on."""
        # A kernel the sandbox's watchdog stopped says which per-submission limit it crossed.
        # The manager is ours, or one the grading pool started ahead and handed in.
        manager = km if km is not None else getattr(self, "_sandboxed_manager", None)
        stopped = getattr(manager, "limit_exceeded", "")
        if not stopped and time.monotonic() >= self._deadline - 1:
            stopped = (f"the notebook ran past its total time limit of {self.total_timeout} s "
                       f"(all cells together) and was stopped")
        index = self._running_cell
        target = nb.cells[index] if index is not None and index < len(nb.cells) else None
        message = f"{stopped}; later cells did not run" if stopped else \
            _incident(err, self.timeout, target.get("id") if target is not None else None)
        self.log.warning("Execution stopped: %s", message)
        if target is not None and target.get("cell_type") == "code":
            target.outputs.append(_error_output("ExecutionStopped", message))
        nb.metadata.setdefault("cicd_grading", {})["incident"] = message
        return nb, resources

    def _get_timeout(self, cell):
        # Sleeping uses no CPU, so the CPU limit never sees it: the notebook's clock is what bounds it.
        per_cell = super()._get_timeout(cell)
        if cell is None:  # the kernel_info request before the first cell, no learner code in sight
            per_cell = self.kernel_info_wait if per_cell is None else min(per_cell, self.kernel_info_wait)
        if getattr(self, "_deadline", None) is None:
            return per_cell
        remaining = max(1, int(self._deadline - time.monotonic()))
        return remaining if per_cell is None else min(per_cell, remaining)

    max_output_bytes = Integer(2_000_000, help="Output kept per cell while it runs; the rest is dropped").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        self._running_cell = index
        self._output_bytes = 0
        return super().preprocess_cell(cell, resources, index)

    max_error_outputs = Integer(3, help="Error outputs kept per cell (one fails it)").tag(config=True)

    def output(self, outs, msg, display_id, cell_index):
        # A flood of output must not fill the grader's memory (outside the sandbox's limits) nor,
        # through the graded notebook, its disk: nothing is kept past the cap, and errors, which
        # always count, are kept few and short (one already fails the cell).
        if msg["msg_type"] == "error":
            if sum(o.get("output_type") == "error" for o in outs) >= self.max_error_outputs:
                return None
            msg["content"] = _bounded_error(msg.get("content"))
            return super().output(outs, msg, display_id, cell_index)
        self._output_bytes += len(json.dumps(msg.get("content", {}), default=str))
        if self._output_bytes > self.max_output_bytes:
            if not outs or outs[-1].get("text") != _FLOOD_NOTE:
                outs.append(NotebookNode(output_type="stream", name="stdout", text=_FLOOD_NOTE))
            return None
        return super().output(outs, msg, display_id, cell_index)

    def handle_comm_msg(self, outs, msg, cell_index):
        """Widgets' messages are not kept: grading shows no widget, and nbclient would hold every
        state a kernel sends (25 MB each, without end) in the grader's memory."""
        return None


def _bounded_error(content) -> dict:
    """An error message's content, cut to what a verdict or a reader needs (the kernel chooses
    its size and shape)."""
    content = content if isinstance(content, dict) else {}
    traceback = content.get("traceback")
    lines = traceback[:30] if isinstance(traceback, list) else []
    return {"ename": str(content.get("ename", "Error"))[:200], "evalue": str(content.get("evalue", ""))[:2_000],
            "traceback": [str(line)[:2_000] for line in lines]}


def _incident(err: Exception, cell_timeout=None, cell_id=None) -> str:
    name = type(err).__name__
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    if "DeadKernel" in name or "died" in text.lower():
        return "the notebook's kernel died (it crashed, was killed or ran out of memory); later cells did not run"
    if "Timeout" in name or "timed out" in text.lower():
        which = f"cell '{cell_id}'" if isinstance(cell_id, str) and cell_id else "a cell"
        limit = f" of {cell_timeout} s per cell" if cell_timeout else ""
        return f"the notebook ran past its time limit{limit} ({which} was still running) and was stopped; later cells did not run"
    return f"the notebook could not be run to the end ({name}: {text[:200]})"


class CapOutputs(NbGraderPreprocessor):
    """Cut every text output to max_chars and keep at most max_outputs outputs per cell."""

    max_chars = Integer(10_000, help="Characters kept of each text output").tag(config=True)
    max_outputs = Integer(50, help="Outputs kept per cell").tag(config=True)

    def _cut(self, text):
        if isinstance(text, list):
            text = "".join(text)
        if not isinstance(text, str) or len(text) <= self.max_chars:
            return text
        dropped = len(text) - self.max_chars
        return text[: self.max_chars] + f"\n… [{dropped} more characters cut by the grader]"

    def preprocess_cell(self, cell, resources, index):
        if cell.get("cell_type") != "code":
            return cell, resources
        outputs = cell.get("outputs", [])
        kept = outputs[: self.max_outputs]
        # Error outputs decide grades: past the cap, the first of them is still kept.
        kept += [o for o in outputs[self.max_outputs:] if o.get("output_type") == "error"][:1]
        for output in kept:
            if "text" in output:
                output["text"] = self._cut(output["text"])
            if "evalue" in output:
                output["evalue"] = self._cut(output["evalue"])[:2_000]
            if "traceback" in output:
                output["traceback"] = [self._cut(line) for line in output["traceback"][:100]]
            for mime, value in list(output.get("data", {}).items()):
                if mime == reports.REPORT_MIME:
                    if len(json.dumps(value)) > self.max_chars:
                        output["data"][mime] = {"check": "?", "value": "result too large"}
                elif isinstance(value, (str, list)):
                    output["data"][mime] = self._cut(value)
        cell.outputs = kept
        return cell, resources


class RebuildSubmission(NbGraderPreprocessor):
    """The notebook that runs is the released one with only the learner's answers copied in
    (autograder.submission), so nbgrader's own autograde also restores deleted, edited or
    reordered tests and drops forged metadata; the notes go into the notebook's first cell."""

    release_dir = Unicode("", help="Folder of released notebooks: <assignment>/<notebook>.ipynb").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        skeleton = Path(self.release_dir) / info["assignment"] / f"{info['notebook']}.ipynb"
        if not skeleton.is_file():
            raise AutograderError(f"no released notebook {skeleton}; run `python -m autograder release "
                                  f"{info['assignment']}` (or nbgrader generate_assignment) first")
        rebuilt, notes = submission.rebuild(nbformat.read(skeleton, as_version=4), nb)
        if notes:
            rebuilt.cells.insert(0, submission.notes_cell(notes))
        return rebuilt, resources


class DecideVerdicts(NbGraderPreprocessor):
    """Make each grade cell's outputs say exactly what autograder.reports decided."""

    reference_dir = Unicode("", help="Folder of reference results: <assignment>/<notebook>.json").tag(config=True)
    source_dir = Unicode("", help="Folder of source notebooks, to compute a missing or stale reference result "
                                  "(empty: the reference must exist already)").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        path = Path(self.reference_dir) / info["assignment"] / f"{info['notebook']}.json"
        if self.source_dir:  # nbgrader's own autograde: nobody ran `python -m autograder grade` first
            source = Path(self.source_dir) / info["assignment"] / f"{info['notebook']}.ipynb"
            path = reference.ensure(source, Path(self.reference_dir), info["assignment"])
        stored = json.loads(path.read_text())
        expected, stock = stored["cells"], set(stored.get("stock_cells", []))
        incident = nb.metadata.get("cicd_grading", {}).get("incident", "")
        for cell in nb.cells:
            if not reports.is_grade_cell(cell):
                continue
            if reports.grade_id(cell) in stock:
                verdict = reports.decide_stock(cell, incident)
            else:
                verdict = reports.decide(cell, expected.get(reports.grade_id(cell)), incident)
            # Only displays survive: stderr (warnings) costs nothing, and an execute_result can no
            # longer claim partial credit. A failure becomes the one error nbgrader will see.
            cell.outputs = [o for o in cell.outputs
                            if o.get("output_type") == "display_data"
                            or (o.get("output_type") == "stream" and o.get("name") == "stdout")]
            if not verdict.passed:
                cell.outputs.append(_error_output(VERDICT_ERROR, verdict.reason))
        return nb, resources


class HideTestSource(NbGraderPreprocessor):
    """Replace each test cell's code by its docstring, for feedback that does not leak tests."""

    def preprocess_cell(self, cell, resources, index):
        if reports.is_grade_cell(cell):
            cell.source = "# Test: " + first_docstring_line(cell.get("source", "")) + \
                "\n# (the test's code is not shown)"
            cell.outputs = [o for o in cell.outputs if o.get("output_type") != "display_data"]
            for output in cell.outputs:
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename')}: {output.get('evalue')}"]
        return cell, resources


def first_docstring_line(source: str) -> str:
    match = re.match(r'\s*(?:"""|\'\'\')\s*(.*?)\s*(?:"""|\'\'\'|\n)', source, re.S)
    return match.group(1).strip() if match else "(no description)"


class VisibleOnlyFeedback(NbGraderPreprocessor):
    """Replace the autograded notebook by one that cannot hold hidden test code.

    Anything a kernel produced after hidden test code entered it may contain that code (a
    submission can print each cell's source, raise it as an error message, or encode it), so none
    of it is shown. The feedback is instead the rebuilt submission as staged for grading (released
    test cells: no hidden code), run again in the sandbox, plus for each test cell what the grader
    itself decided: passed or not, and which of the reference's checks were not met. Without a
    sandbox the run could read the solutions from disk, so its outputs are left out."""

    staged_dir = Unicode("", help="Folder of rebuilt submissions: <student>/<assignment>/<notebook>.ipynb").tag(config=True)
    reference_dir = Unicode("", help="Folder of reference results: <assignment>/<notebook>.json").tag(config=True)
    submitted_dir = Unicode("", help="Without a staged copy (nbgrader's own autograde), rebuild it from the "
                                     "raw submission in this folder...").tag(config=True)
    release_dir = Unicode("", help="...and the released notebook and files in this one").tag(config=True)

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        staged = Path(self.staged_dir) / info["student"] / info["assignment"] / f"{info['notebook']}.ipynb"
        verdicts = self._verdicts(nb, info)
        released = Path(self.release_dir) / info["assignment"]
        if not staged.is_file() and self.submitted_dir and (released / f"{info['notebook']}.ipynb").is_file():
            with tempfile.TemporaryDirectory(prefix="cicd-feedback-") as scratch:
                folder = Path(scratch) / info["assignment"]
                shutil.copytree(released, folder, ignore=shutil.ignore_patterns("*.ipynb"))
                raw = Path(self.submitted_dir) / info["student"] / info["assignment"] / f"{info['notebook']}.ipynb"
                learner, problem = submission.read_submitted(raw) if raw.is_file() else (None, "not handed in")
                shown, notes = submission.rebuild(nbformat.read(released / f"{info['notebook']}.ipynb", as_version=4),
                                                  learner)
                notes = ([f"{raw.name}: {problem}; it was graded as unanswered"] if problem else []) + notes
                if notes:
                    shown.cells.insert(0, submission.notes_cell(notes))
                note = self._run_visible(shown, folder, info)
        elif not staged.is_file():
            shown = copy.deepcopy(nb)
            for cell in shown.cells:
                if cell.get("cell_type") == "code":
                    cell.outputs = []
            shown.metadata.pop("cicd_grading", None)
            note = "the graded copy of your notebook is no longer available, so only the grader's verdicts are shown"
        else:
            shown = nbformat.read(staged, as_version=4)
            note = self._run_visible(shown, staged.parent, info)
        for cell in shown.cells:
            if cell.get("cell_type") != "code":
                continue
            if reports.is_grade_cell(cell):
                cell.source = "# Test: " + first_docstring_line(cell.get("source", "")) + \
                    "\n# (the test's code is not shown)"
                kept = [o for o in cell.get("outputs", []) if o.get("output_type") != "display_data"]
                for output in kept:
                    if output.get("output_type") == "error":
                        output["traceback"] = [f"{output.get('ename')}: {output.get('evalue')}"]
                verdict = verdicts.get(reports.grade_id(cell), "the grader has no verdict for this test")
                cell.outputs = [NotebookNode(output_type="stream", name="stdout", text=f"{GRADER_PREFIX}{verdict}\n")] + kept
        if note:
            shown.cells.insert(0, nbformat.v4.new_markdown_cell(f"**Note from the grader:** {note}."))
        nb.cells = shown.cells
        nb.metadata = shown.metadata  # the graded run's metadata (its incident text) is not shown either
        return nb, resources

    def _run_visible(self, visible, folder: Path, info: dict) -> str:
        """Execute the visible-only notebook in the sandbox; '' or a note saying why outputs are missing."""
        for cell in visible.cells:
            if cell.get("cell_type") == "code":
                cell.outputs, cell.execution_count = [], None
        runner = GuardedExecute(parent=self)
        if not (runner.isolate and isolation_status() == "bubblewrap"):
            return ("outputs are not shown: this grader runs without a sandbox, so a run of your notebook "
                    "could have read the hidden tests from disk")
        # The assignment tells GuardedExecute what its fork server imports (release_dir).
        runner.preprocess(visible, {"metadata": {"path": str(folder)}, "nbgrader": {"assignment": info["assignment"]}})
        CapOutputs(parent=self).preprocess(visible, {})
        return ""

    def _verdicts(self, graded, info) -> dict[str, str]:
        """Grader-authored words per test cell, from the graded notebook's reports and the reference;
        no text the student's kernel produced is used."""
        path = Path(self.reference_dir) / info["assignment"] / f"{info['notebook']}.json"
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {"cells": {}, "stock_cells": []}
        words = {}
        for cell in graded.cells:
            if not reports.is_grade_cell(cell):
                continue
            gid = reports.grade_id(cell)
            if not any(o.get("ename") == VERDICT_ERROR for o in reports.errors_of(cell)):
                words[gid] = "passed"
                continue
            expected = stored["cells"].get(gid) or []
            got = reports.reports_of(cell)
            missed = [e.get("check", f"#{i + 1}") for i, e in enumerate(expected)
                      if not (i < len(got) and isinstance(got[i], dict) and got[i].get("check") == e.get("check")
                              and "value" in got[i] and reports.values_match(got[i]["value"], e.get("value")))]
            if gid in stored.get("stock_cells", []) or not missed:
                words[gid] = "not passed (the test raised an error or did not run to the end)"
            else:
                words[gid] = "not passed; checks without the expected result: " + ", ".join(missed)
        return words
