"""What starting a kernel costs, with ipykernel's debugger (the kernelspec's command) and without it
(autograder.kernel_command, which every kernel the grader starts uses).

Each run starts a kernel over IPC, runs `1 + 1` and shuts it down, as the grader does for a
submission, minus the submission. The two commands alternate, so load changes hit both alike.
The figure is the kernels' own CPU time (user + system, read from the reaped child processes),
which load on the machine changes far less than wall time; wall time is printed too.

    python benchmarks/kernel_start.py            # 10 kernels each way (about half a minute)
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autograder.kernel_command import GradingKernelManager  # noqa: E402


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_kernel(manager_class) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of one kernel's start, one cell and shutdown."""
    with tempfile.TemporaryDirectory(prefix="cicd-kernel-start-") as scratch:
        ipc = Path(scratch)
        km = manager_class(kernel_name="python3", transport="ipc", ip=str(ipc / "kernel"),
                           connection_file=str(ipc / "connection.json"))
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1 + 1")])
        cpu, wall = children_cpu(), time.perf_counter()
        NotebookClient(nb, km=km, timeout=60, kernel_name="python3").execute(cleanup_kc=True)
        return children_cpu() - cpu, time.perf_counter() - wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10, help="kernels started each way (default 10)")
    args = parser.parse_args(argv)
    one_kernel(AsyncKernelManager)  # warm the file cache for both
    measured = {"with the debugger (kernelspec)": [], "without (grader)": []}
    for _ in range(args.runs):
        for name, manager in zip(measured, (AsyncKernelManager, GradingKernelManager)):
            measured[name].append(one_kernel(manager))
    for name, runs in measured.items():
        cpu = sum(c for c, _ in runs) / len(runs)
        wall = sum(w for _, w in runs) / len(runs)
        print(f"{name:32} {cpu:.3f} CPU-s  {wall:.2f} s wall  per kernel ({len(runs)} runs)")
    baseline, ours = ([sum(c for c, _ in runs) for runs in measured.values()])
    print(f"ratio (grader / kernelspec), CPU: {ours / baseline:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
