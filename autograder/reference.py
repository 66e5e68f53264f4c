"""The reference solution's check results: what every grade cell must report to earn its points.

Computed by running the instructor's source notebook (trusted code) in a scratch copy of its
assignment folder, in a sandboxed kernel as a submission's (so both run in the same place), and
kept in the class folder, which students never see. A result is
recomputed whenever its source notebook changes (its sha256 is stored beside it).
"""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

from . import AutograderError, reports
from .kernel_command import GradingKernelManager
from .kernel_forks import modules_to_preload
from .sandbox import Sandbox, SandboxedKernelManager, isolation_status

RUN_TIMEOUT = 120  # seconds per cell of the reference solution


def execute_in_copy(notebook: Path, timeout: int = RUN_TIMEOUT, nb=None, sandboxed: bool = False) -> nbformat.NotebookNode:
    """Execute a notebook (or `nb`, run as if it were that notebook) in a scratch copy of its
    folder, so that it writes nothing in place. `sandboxed`: in a kernel forked into a sandbox,
    as a submission's (where bubblewrap works): the reference solution and lint's controls then
    run where the learners' code runs, and cost a fork instead of a kernel's imports."""
    with tempfile.TemporaryDirectory(prefix="cicd-run-") as scratch:
        folder = Path(scratch) / notebook.parent.name
        shutil.copytree(notebook.parent, folder)
        nb = nbformat.read(folder / notebook.name, as_version=4) if nb is None else nb
        if sandboxed and isolation_status() == "bubblewrap":
            km = SandboxedKernelManager(kernel_name="python3")
            km.sandbox, km.fork_preload = Sandbox(), modules_to_preload(folder)
        else:
            # Unix sockets in the scratch folder, as the sandbox uses: nothing listens on the network.
            ipc = Path(scratch) / "ipc"
            ipc.mkdir(mode=0o700)
            km = GradingKernelManager(kernel_name="python3", transport="ipc", ip=str(ipc / "kernel"),
                                      connection_file=str(ipc / "connection.json"))
            km.tmpdir = str(Path(scratch) / "tmp")  # what the notebook makes with tempfile goes with the scratch
            Path(km.tmpdir).mkdir()
        client = NotebookClient(nb, km=km, timeout=timeout, allow_errors=True, kernel_name="python3",
                                resources={"metadata": {"path": str(folder)}})
        client.execute(cleanup_kc=True)  # also shuts the kernel down, though it was handed in
        return nb


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compute(source_notebook: Path) -> dict:
    """Run the reference solution and keep what each test cell reports.

    A test cell that calls report() must pass and report something. An assert-only cell (stock
    nbgrader style) is graded the stock way, so it needs no reference values: it is listed in
    "stock_cells", and a failure of it on the reference is a warning, not a refusal."""
    nb = execute_in_copy(source_notebook, sandboxed=True)
    cells = reports.reference_reports(nb)
    problems, warnings, stock = [], [], []
    for cell in nb.cells:
        gid = reports.grade_id(cell)
        if not reports.is_grade_cell(cell):
            continue
        error = reports.errors_of(cell)[0] if reports.errors_of(cell) else None
        failure = f"{gid} fails on the reference solution ({error.get('ename')}: {error.get('evalue')})" if error else ""
        if not reports.calls_report(cell.source):
            stock.append(gid)
            if failure:
                warnings.append(failure)
        elif failure:
            problems.append(failure)
        elif not cells.get(gid):
            problems.append(f"{gid} reports no result, so it could not tell right from wrong")
    if problems:
        raise AutograderError(f"{source_notebook}: the reference solution does not pass its own tests: "
                              + "; ".join(problems) + ". Fix the source notebook, then grade again.")
    return {"source_sha256": sha256_of(source_notebook), "cells": cells, "stock_cells": stock,
            "warnings": warnings}


def ensure(source_notebook: Path, reference_dir: Path, assignment: str) -> Path:
    """Return the path of an up-to-date reference result for one source notebook."""
    target = reference_dir / assignment / f"{source_notebook.stem}.json"
    if target.is_file():
        try:
            stored = json.loads(target.read_text())
            if stored.get("source_sha256") == sha256_of(source_notebook) and "stock_cells" in stored:
                return target
        except (json.JSONDecodeError, OSError):
            pass  # a damaged reference is simply recomputed
    result = compute(source_notebook)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(result, indent=1, sort_keys=True))
    return target
