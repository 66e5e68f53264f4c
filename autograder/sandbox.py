"""Run a student's kernel where it can do no harm: bubblewrap, an unprivileged user, hard limits.

Inside the sandbox the kernel sees the operating system and the Python installation read-only,
a scratch copy of its own assignment folder as /home/learner/<assignment>, and an empty /tmp.
The repository (solutions, source notebooks, .git), the class folder (gradebook, exchange,
submissions of everyone else, reference results) and home folders are hidden behind empty
mounts; there is no network (a fresh network namespace) and talks to the grader over Unix
sockets in a private folder. When the grader runs as root the kernel also drops to the user
`nobody`. Anything it writes disappears with the scratch copy.

Limits (prlimit): address space, CPU seconds, file size and, as nobody, the number of processes.
Where bubblewrap is missing or cannot create namespaces the kernel runs unisolated, in a scratch
copy of its folder and with the same limits: the grade is still given, and the result says so
(see `isolation_status`).
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from jupyter_client.manager import AsyncKernelManager

NOBODY = 65534
LEARNER_HOME = "/home/learner"


@dataclass
class Limits:
    memory_bytes: int = 3 * 1024**3
    cpu_seconds: int = 300
    file_bytes: int = 200 * 1024**2
    processes: int = 256
    scratch_bytes: int = 512 * 1024**2  # each of /tmp and /dev/shm, which live in memory


@dataclass
class Sandbox:
    """What one kernel may see; `hide` are host paths replaced by empty folders inside."""
    hide: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits)
    isolated: bool = True  # False: bubblewrap is unavailable, apply the limits only

    def command(self, kernel_cmd: list[str], workcopy: Path, inside_cwd: str, ipc_dir: Path) -> list[str]:
        return self._bubblewrap(workcopy, inside_cwd, ipc_dir) + self._limits() + ["--"] + kernel_cmd

    def limits_only(self, kernel_cmd: list[str]) -> list[str]:
        """Without bubblewrap: the same resource limits, no hiding (run in a scratch copy)."""
        return self._limits() + ["--"] + kernel_cmd

    def _bubblewrap(self, workcopy: Path, inside_cwd: str, ipc_dir: Path) -> list[str]:
        as_root = os.geteuid() == 0
        cmd = ["bwrap", "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
               "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not as_root:
            cmd.append("--unshare-user")
        cmd += ["--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--size", str(self.limits.scratch_bytes), "--tmpfs", "/tmp",
                "--perms", "1777", "--size", str(self.limits.scratch_bytes), "--tmpfs", "/dev/shm"]
        hidden = sorted({str(Path(p).resolve()) for p in [*self.hide, "/root", "/home"] if Path(p).exists()}, key=len)
        for path in hidden:
            cmd += ["--tmpfs", path]
        empty_mounts = [*hidden, "/tmp"]

        def open_parents(target: str) -> list[str]:
            # bwrap creates missing folders on an empty mount as 0700, which `nobody` cannot cross.
            return [arg for parent in reversed(Path(target).parents)
                    if any(parent.is_relative_to(m) and str(parent) != m for m in empty_mounts)
                    for arg in ("--perms", "0755", "--dir", str(parent))]

        for path in sorted(_python_roots(), key=len):
            cmd += open_parents(path) + ["--ro-bind", path, path]  # the interpreter, back in view
        cmd += open_parents(inside_cwd) + open_parents(str(ipc_dir))
        cmd += ["--bind", str(workcopy), inside_cwd, "--bind", str(ipc_dir), str(ipc_dir),
                "--chdir", inside_cwd, "--clearenv",
                "--setenv", "HOME", LEARNER_HOME, "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin",
                "--setenv", "LANG", "C.UTF-8", "--setenv", "MPLBACKEND", "Agg",
                "--setenv", "OPENBLAS_NUM_THREADS", "1", "--setenv", "OMP_NUM_THREADS", "1"]
        for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # keep numpy correct on this CPU
            if name in os.environ:
                cmd += ["--setenv", name, os.environ[name]]
        if as_root:
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "setpriv",
                    f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs", "--"]
        return cmd

    def _limits(self) -> list[str]:
        cmd = ["prlimit", f"--as={self.limits.memory_bytes}", f"--cpu={self.limits.cpu_seconds}",
               f"--fsize={self.limits.file_bytes}"]
        if os.geteuid() == 0 and self.isolated:
            cmd.append(f"--nproc={self.limits.processes}")  # counts nobody's processes, not the grader's
        return cmd


def _python_roots() -> set[str]:
    """Folders the kernel's interpreter needs: the environment and the base installation."""
    roots = {Path(r).resolve() for r in (sys.prefix, sys.base_prefix, Path(os.path.realpath(sys.executable)).parent) if r}
    return {str(r) for r in roots if not any(r != other and r.is_relative_to(other) for other in roots)}


@functools.lru_cache(maxsize=1)
def isolation_status() -> str:
    """'bubblewrap' when sandboxing works here; otherwise a sentence saying why not."""
    if shutil.which("bwrap") is None:
        return "none: bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap'"
    probe = Sandbox().command(["true"], Path(tempfile.gettempdir()), "/mnt", Path(tempfile.gettempdir()))
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"none: bubblewrap could not run ({err})"
    if done.returncode != 0:
        return f"none: bubblewrap failed here ({done.stderr.strip()[:200] or done.returncode})"
    return "bubblewrap"


class SandboxedKernelManager(AsyncKernelManager):
    """A kernel manager that starts its kernel inside a Sandbox, talking over Unix sockets."""

    sandbox: Sandbox | None = None

    async def _async_pre_start_kernel(self, **kw):
        host_cwd = Path(kw.get("cwd") or os.getcwd())
        self._scratch = Path(tempfile.mkdtemp(prefix="cicd-kernel-"))
        self._ipc_dir = self._scratch / "ipc"
        self._workcopy = self._scratch / "work"
        shutil.copytree(host_cwd, self._workcopy)
        self._ipc_dir.mkdir()
        os.chmod(self._scratch, 0o711)
        if os.geteuid() == 0:
            for folder in (self._ipc_dir, self._workcopy):
                for path in [folder, *folder.rglob("*")]:
                    os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
        self._inside_cwd = f"{LEARNER_HOME}/{host_cwd.name}"
        self.transport = "ipc"
        self.ip = str(self._ipc_dir / "kernel")
        self.connection_file = str(self._ipc_dir / "connection.json")
        if not self.sandbox.isolated:
            kw["cwd"] = str(self._workcopy)
        # The kernel's own process output is noise (its cells' output travels over the sockets).
        kw.setdefault("stdout", subprocess.DEVNULL)
        kw.setdefault("stderr", subprocess.DEVNULL)
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        os.chmod(self.connection_file, 0o644)
        return cmd, kw

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        if not self.sandbox.isolated:
            return self.sandbox.limits_only(cmd)
        return self.sandbox.command(cmd, self._workcopy, self._inside_cwd, self._ipc_dir)

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and getattr(self, "_scratch", None):
            shutil.rmtree(self._scratch, ignore_errors=True)
