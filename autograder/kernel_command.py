"""The command that starts a kernel the grader runs (reference solutions, controls, submissions).

It is `python -m ipykernel_launcher`, minus the debugger. ipykernel imports debugpy in every
kernel it starts, to offer JupyterLab's debugger. Nobody debugs a kernel the grader runs, and
the import costs over a quarter of the CPU time of a kernel's start, one cell and shutdown (0.44
against 0.32 CPU-s on 2 busy cores: `python benchmarks/kernel_start.py`). With debugpy marked
as missing, ipykernel starts without a debugger, as it does wherever debugpy is not installed.
Learners' own kernels, started by JupyterLab from the kernelspec, keep it.

The kernel process's own stdout and stderr are dropped: only noise reaches them (ipykernel's
warning that it has no debugger; rarely, a libzmq assertion as a kernel stops), and the output
of its cells travels over its sockets.

A kernel that runs on the host (a learner's self-check, mutation testing) can also be given its own
temporary folder: exercises make scratch folders with `tempfile`, and on the host's /tmp every
run of them would leave its folders behind (the sandbox's /tmp disappears with the sandbox).
"""
from __future__ import annotations

import os
import subprocess

from jupyter_client.manager import AsyncKernelManager

# What ipykernel_launcher runs (it drops the working folder from sys.path while ipykernel loads;
# IPython puts it back), with debugpy marked as missing first.
LAUNCHER = ("import sys; sys.modules['debugpy'] = None\n"
            "if sys.path and sys.path[0] == '': del sys.path[0]\n"
            "from ipykernel import kernelapp; kernelapp.launch_new_instance()")


def without_debugger(cmd: list[str]) -> list[str]:
    """A kernelspec's `python -m ipykernel_launcher ARGS` as `python -c LAUNCHER ARGS`; any other
    command (another language's kernel) unchanged."""
    for index in range(len(cmd) - 1):
        if cmd[index] == "-m" and cmd[index + 1] == "ipykernel_launcher":
            return cmd[:index] + ["-c", LAUNCHER] + cmd[index + 2:]
    return list(cmd)


class GradingKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose Python kernel starts without the debugger, and with `tmpdir`
    (when set) as its TMPDIR."""

    tmpdir: str | None = None

    async def _async_pre_start_kernel(self, **kw):
        if self.tmpdir:
            kw["env"] = {**kw.get("env", os.environ), "TMPDIR": self.tmpdir}
        # The kernel process's own output is noise on the instructor's terminal (ipykernel's
        # warning that it has no debugger, a libzmq assertion as a kernel stops): what its
        # cells print travels over its sockets. Sandboxed kernels inherit this.
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        return await super()._async_pre_start_kernel(**kw)

    def format_kernel_cmd(self, extra_arguments=None):
        return without_debugger(super().format_kernel_cmd(extra_arguments))
