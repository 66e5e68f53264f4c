"""What a sandboxed kernel costs started from nothing, and forked from a server that has imported
its modules (autograder/kernel_forks.py).

Each run starts a kernel in its own bubblewrap sandbox, as the grader does, runs one cell that
imports what the assignment's released notebook imports (what every submission does first) and
stops it. The two ways alternate, so load changes hit both alike. The figure is the CPU time of
the submission's own cgroup (everything that ran in its sandbox), read before the kernel stops;
the server's own start, paid once per assignment and grading process, is printed apart. It needs
bubblewrap and a cgroup the grader writes itself (root on cgroup v1 or v2).

    python benchmarks/kernel_forks.py                        # ex03_model_gate, 8 kernels each way
    python benchmarks/kernel_forks.py --assignment ex02_data_gate --runs 12
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from jupyter_client.utils import run_sync  # noqa: E402

from autograder import kernel_forks  # noqa: E402
from autograder.kernel_forks import modules_to_preload  # noqa: E402
from autograder.sandbox import Sandbox, SandboxedKernelManager, cgroup_support, isolation_status  # noqa: E402


def one_kernel(preload: list[str], forked: bool) -> tuple[float, float]:
    """(CPU seconds of the sandbox, wall seconds) of one kernel's start, imports and stop."""
    os.environ["CICD_FORK_KERNELS"] = "1" if forked else "0"
    with tempfile.TemporaryDirectory(prefix="cicd-fork-bench-") as scratch:
        km = SandboxedKernelManager(kernel_name="python3")
        km.sandbox, km.fork_preload = Sandbox(), preload
        wall = time.perf_counter()
        run_sync(km.start_kernel)(cwd=scratch)
        client = km.client()
        client.start_channels()
        try:
            run_sync(client.wait_for_ready)(timeout=120)
            reply = run_sync(client.execute_interactive)(
                "import importlib\nfor name in %r:\n    importlib.import_module(name)" % preload, timeout=120)
            assert reply["content"]["status"] == "ok", reply["content"]
            cpu = km._cgroup.cpu_seconds()
        finally:
            client.stop_channels()
            run_sync(km.shutdown_kernel)(now=True)
        return cpu, time.perf_counter() - wall


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--assignment", default="ex03_model_gate")
    parser.add_argument("--runs", type=int, default=8, help="kernels started each way (default 8)")
    args = parser.parse_args(argv)
    if isolation_status() != "bubblewrap" or cgroup_support()[0] not in ("cgroup v1", "cgroup v2"):
        print(f"needs bubblewrap and a cgroup v1 or v2 the grader writes: {isolation_status()}; "
              f"{cgroup_support()}", file=sys.stderr)
        return 2
    preload = modules_to_preload(REPO / "course" / args.assignment)
    started = time.perf_counter()
    kernel_forks.server(preload, Sandbox.environment())
    one_kernel(preload, True)  # the server's imports, and the file cache for both ways
    server = next(iter(kernel_forks._servers.values())).process.pid
    fields = Path(f"/proc/{server}/stat").read_text().rsplit(")", 1)[1].split()
    server_cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    print(f"fork server: {server_cpu:.2f} CPU-s to start and import {len(preload)} modules "
          f"({time.perf_counter() - started:.1f} s with the first kernel)")
    measured = {"from nothing": [], "forked": []}
    for _ in range(args.runs):
        for name in measured:
            measured[name].append(one_kernel(preload, name == "forked"))
    for name, runs in measured.items():
        cpu = sum(c for c, _ in runs) / len(runs)
        wall = sum(w for _, w in runs) / len(runs)
        print(f"{name:14} {cpu:.3f} CPU-s  {wall:.2f} s wall  per kernel ({len(runs)} runs, {args.assignment})")
    baseline, ours = (sum(c for c, _ in runs) for runs in measured.values())
    print(f"ratio (forked / from nothing), CPU: {ours / baseline:.2f}")
    print(f"the server pays for itself after {server_cpu / ((baseline - ours) / args.runs):.1f} kernels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
