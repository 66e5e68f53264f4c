"""Sandboxed kernels forked from a process that has imported their modules already.

A kernel that starts from nothing spends most of its CPU time importing: ipykernel, then the
assignment's numpy, pandas and scikit-learn (about 1.5 CPU-s of an exercise's 2). A fork server
(kernel_fork_server.py) imports them once, and for each kernel forks a copy of itself into the
submission's own sandbox:

1. bubblewrap builds the sandbox exactly as for any kernel (sandbox.Sandbox: its namespaces, its
   file systems, its cgroup), but its command is WAITER: it says it is ready, learns the
   kernel's pid, and waits for that process to end; bubblewrap, and everything in the sandbox,
   ends with it.
2. The server forks; the child joins the sandbox's cgroup and every one of its namespaces (user,
   mount, pid, network, IPC, UTS, cgroup) and its root, then forks the kernel inside, which
   gives up every privilege (the user `nobody` under a root grader, no capabilities,
   no_new_privs), takes the submission's limits, closes every file of the server, and runs
   ipykernel. The child ends, so the kernel's parent is the sandbox's own init.

The kernel sees what a kernel started by bubblewrap sees, and the grader treats both alike
(the watchdog, the cgroup, killing bubblewrap's session). Only memory differs: pages the server
filled while importing stay shared with it and are counted to the grader, not the submission.
The server holds no grading data: started with the sandbox's environment and no file of the
grader open, it only imports libraries. Where anything of this is not possible (no bubblewrap,
a systemd scope for a cgroup, a kernel that will not enter its sandbox) kernels start as before.
"""
from __future__ import annotations

import ast
import atexit
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

SERVER_SOURCE = (Path(__file__).with_name("kernel_fork_server.py")).read_text()

# Run by bubblewrap as the sandbox's command (from sandbox.IPC_INSIDE): "ready" holds its pid,
# "waiter" (a pipe) gets the kernel's pid; it then waits for that process to end. Not dumpable,
# so the kernel, running as the same user, can neither trace it nor take its files.
WAITER = """
import ctypes, os, select, sys
ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: the kernel (same user) cannot trace it
folder = sys.argv[1]
os.mkfifo(folder + "/waiter", 0o600)
with open(folder + "/ready.tmp", "w") as ready:
    ready.write(str(os.getpid()))
os.rename(folder + "/ready.tmp", folder + "/ready")
with open(folder + "/waiter") as told:
    text = told.read()
try:
    pid = int(text)
    watched = os.pidfd_open(pid)
except (ValueError, OSError):
    sys.exit(3)
select.select([watched], [], [])
"""


def modules_to_preload(release_folder: Path) -> list[str]:
    """Installed modules that the released notebook's own cells import (its setup and test
    cells, never an answer): every submission imports them anyway, so a fork server imports
    them once, and a kernel started ahead while it waits. A learner's code still has to import
    what it uses."""
    names: set[str] = set()
    for path in sorted(release_folder.glob("*.ipynb")):
        for cell in json.loads(path.read_text()).get("cells", []):
            if cell.get("cell_type") != "code" or cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
                continue
            try:
                tree = ast.parse("".join(cell.get("source", "")))
            except SyntaxError:  # cell magics and the like
                continue
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    names.add(node.module)
    installed = [Path(p).resolve() for p in {sys.prefix, sys.base_prefix}]

    def is_installed(name: str) -> bool:
        spec = importlib.util.find_spec(name.split(".")[0])
        origin = getattr(spec, "origin", None) if spec else None
        if spec is None or origin in (None, "built-in", "frozen"):
            return spec is not None
        return any(Path(origin).resolve().is_relative_to(root) for root in installed)

    return sorted(name for name in names if is_installed(name))


class ForkFailed(Exception):
    """The server could not put a kernel into its sandbox: the kernel is started the usual way."""


class ForkClient:
    """Asks a server, at its socket's address, for kernels. Any process of the grader's user may
    hold one: the grading workers use their parent's server."""

    def __init__(self, address: str):
        self.address = address

    def fork(self, request: dict, target_fd: int, timeout: float) -> None:
        """Ask for a kernel in the sandbox described by `request`, whose waiting process
        `target_fd` (a pidfd) is; ForkFailed says why not."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.settimeout(timeout)
                connection.connect(self.address)
                socket.send_fds(connection, [(json.dumps(request) + "\n").encode()], [target_fd])
                answer = json.loads(connection.makefile("r").readline() or "{}")
        except (OSError, ValueError) as err:
            raise ForkFailed(f"no answer from the fork server ({err})") from None
        if not answer.get("ok"):
            raise ForkFailed(answer.get("error") or "the fork server gave no reason")


class ForkServer:
    """One server process, for kernels that preload the same modules; it ends with this process."""

    def __init__(self, preload: list[str], environment: dict[str, str]):
        self.folder = Path(tempfile.mkdtemp(prefix="cicd-forks-"))  # 0700: the grader's own
        self.address = str(self.folder / "server")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(self.address)
            listener.listen(16)
            # The sandbox's environment, nothing of the grader's; the root folder as working folder.
            self.process = subprocess.Popen(
                [sys.executable, "-c", SERVER_SOURCE, str(listener.fileno()), json.dumps(preload), str(self.folder)],
                pass_fds=[listener.fileno()], env=environment, cwd="/", stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        except BaseException:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        finally:
            listener.close()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


_servers: dict[tuple, ForkServer] = {}
_servers_lock = threading.Lock()
_disabled = ""  # why forking was given up in this process, once it was


def enabled() -> bool:
    """Whether kernels are forked here: not after a fork failed in this process, nor when the
    instructor set CICD_FORK_KERNELS=0 (every kernel then starts from nothing)."""
    return not _disabled and os.environ.get("CICD_FORK_KERNELS", "1") != "0"


def server(preload: list[str], environment: dict[str, str]) -> ForkClient | None:
    """A client of this process's server for `preload` (started on first use and kept until this
    process ends), or None where kernels are not forked. The environment must be the
    sandbox's: the server imports with it, and the kernels keep what their modules read of it."""
    if not enabled():
        return None
    key = (tuple(preload), tuple(sorted(environment.items())))
    with _servers_lock:
        found = _servers.get(key)
        if found is None or found.process.poll() is not None:
            found = _servers[key] = ForkServer(list(preload), environment)
        return ForkClient(found.address)


def give_up(reason: str) -> None:
    """Start kernels the usual way from now on, in this process (a fork failed: `reason`)."""
    global _disabled
    _disabled = reason or "unknown"


def close_all() -> None:
    with _servers_lock:
        for found in _servers.values():
            found.close()
        _servers.clear()


def _forget_in_child() -> None:
    # A forked process does not own its parent's servers: it must not stop them as it ends.
    _servers.clear()


os.register_at_fork(after_in_child=_forget_in_child)
atexit.register(close_all)
