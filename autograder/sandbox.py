"""Run a student's kernel where it can do no harm: bubblewrap, an allow-list of folders, limits per submission.

What the kernel sees (an allow-list, not a list of hidden folders): the operating system's
runtime files (/usr, /bin, /sbin, /lib*, a few files of /etc), the Python environment the
grader runs in (the virtual environment and its base interpreter, nothing else of the folders
around them), read-only; and its own scratch file system at /home/learner, of a fixed size,
holding a copy of its assignment folder and /tmp. Nothing else of the machine exists in there:
no home folders, no /srv, /opt, /work, /mnt, /media or /var, no other clone of the course. There
is no network (a fresh network namespace); it talks to the grader over Unix sockets in a private
folder. When the grader runs as root the kernel also drops to the user `nobody`.

Limits hold for the submission as a whole (the kernel and every process it starts), each
sandbox on its own, so several can run at once:
- memory and processes: a cgroup per submission (a systemd scope, a writable cgroup v2, or
  cgroup v1 as root), whichever this machine offers; without one, RLIMIT_NPROC and a watchdog
  over the resident memory of the kernel's process tree;
- disk written: the size of the scratch file system (and of /dev/shm);
- CPU: a watchdog that sums the CPU time of the submission's processes (the cgroup's account
  where there is one) and kills the sandbox when it passes the budget.
`enforcement()` says what enforces each limit here; `enforcement_report()` lists, in one sentence
each, the limits that are not enforced or only approximately, for `grade` to print.

Where bubblewrap is missing or cannot create namespaces the kernel runs unisolated in a scratch
copy of its folder with the limits that still apply: the grade is still given, and the result
says so (see `isolation_status`).
"""
from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from . import AutograderError
from . import kernel_forks
from .kernel_command import LAUNCHER, GradingKernelManager

NOBODY = 65534
LEARNER_HOME = "/home/learner"
ASSIGNMENT_COPY = "/run/cicd-assignment"  # read-only; copied into the scratch file system at start
IPC_INSIDE = "/run/cicd-ipc"  # the kernel's sockets and connection file, seen by the grader on the host
CGROUP_ROOT = Path("/sys/fs/cgroup")
WATCH_INTERVAL = 0.2  # seconds between two looks of the watchdog
IPC_FOLDER_BYTES = 1024**2  # the connection file and sockets take a few hundred bytes
DISK_BLOCK = 4096  # what an empty file or folder costs the host's disk, at least
FORK_WAIT = 30  # seconds for a sandbox to be ready for a forked kernel, and for the fork
MIN_ADDRESS_SPACE = 1024**3  # a Python kernel with numpy reserves more address space than it uses

# The operating system's runtime files. Whole folders of /etc are not needed: the loader's
# cache, name lookups of users and hosts, the time zone, MIME types and TLS certificates.
SYSTEM_FOLDERS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_ENTRIES = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "nsswitch.conf", "passwd", "group",
               "hosts", "host.conf", "mime.types", "alternatives", "ssl", "ca-certificates", "fonts",
               "matplotlibrc", "debian_version", "os-release")


# --- limits ----------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_size(text: str, what: str) -> int:
    """'512M', '3G', '3GiB' or a number of bytes."""
    match = _SIZE.match(str(text))
    if not match:
        raise AutograderError(f"{what} must be a size such as 512M or 3G, not {text!r}")
    return int(float(match[1]) * 1024 ** "bkmgt".index((match[2] or "b").lower()))


def _positive_int(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise AutograderError(f"{what} must be a positive whole number, not {text!r}")
    return value


@dataclass
class Limits:
    """Per submission: memory (RAM + files in memory), processes, disk written, CPU seconds."""
    memory_bytes: int = 3 * 1024**3
    processes: int = 256
    disk_bytes: int = 512 * 1024**2
    cpu_seconds: int = 300

    @property
    def shm_bytes(self) -> int:  # /dev/shm is a second, smaller scratch file system
        return max(self.disk_bytes // 8, 1024**2)

    @property
    def address_space_bytes(self) -> int:  # per process: turns one huge allocation into MemoryError
        return max(self.memory_bytes, MIN_ADDRESS_SPACE)

    @classmethod
    def from_environment(cls, environ=os.environ) -> "Limits":
        """Defaults, overridden by CICD_MEMORY_LIMIT, CICD_PROCESS_LIMIT, CICD_DISK_LIMIT, CICD_CPU_LIMIT."""
        limits = cls()
        if environ.get("CICD_MEMORY_LIMIT"):
            limits.memory_bytes = parse_size(environ["CICD_MEMORY_LIMIT"], "CICD_MEMORY_LIMIT")
        if environ.get("CICD_DISK_LIMIT"):
            limits.disk_bytes = parse_size(environ["CICD_DISK_LIMIT"], "CICD_DISK_LIMIT")
        if environ.get("CICD_PROCESS_LIMIT"):
            limits.processes = _positive_int(environ["CICD_PROCESS_LIMIT"], "CICD_PROCESS_LIMIT")
        if environ.get("CICD_CPU_LIMIT"):
            limits.cpu_seconds = _positive_int(environ["CICD_CPU_LIMIT"], "CICD_CPU_LIMIT")
        return limits


# --- cgroups: one per submission ---------------------------------------------------------------

def _run_quietly(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _own_cgroup_v1(controller: str) -> Path | None:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return CGROUP_ROOT / controller / path.lstrip("/")
    return None


def _own_cgroup_v2() -> Path | None:
    if not (CGROUP_ROOT / "cgroup.controllers").is_file():
        return None  # /sys/fs/cgroup is not a cgroup v2 file system here
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        if line.startswith("0::"):
            return CGROUP_ROOT / line[3:].lstrip("/")
    return None


class Cgroup:
    """One submission's control group. `wrap` makes a command start inside it, so the kernel's
    whole process tree is in it from its first instruction; `remove` kills what is left and
    deletes it."""

    kind = ""

    def procs_files(self) -> list[Path] | None:
        """The files a process writes its pid into to join the group; None where a process
        cannot join it that way (a systemd scope takes only what systemd-run starts)."""
        return None

    def wrap(self, cmd: list[str]) -> list[str]:
        procs = self.procs_files()
        return cmd if procs is None else _join_and_exec(procs, cmd)

    def cpu_seconds(self) -> float | None:
        return None

    def remove(self) -> None:
        pass


def _join_and_exec(procs_files: list[Path], cmd: list[str]) -> list[str]:
    # A shell writes its own pid into each cgroup, then becomes the command.
    script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 111; shift; done; shift; exec "$@"'
    return ["/bin/sh", "-c", script, "cicd-join", *map(str, procs_files), "--", *cmd]


def _kill_members(procs_file: Path) -> None:
    for _ in range(50):
        try:
            pids = [int(p) for p in procs_file.read_text().split()]
        except OSError:
            return
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)


def _remove_folder(folder: Path) -> None:
    for _ in range(50):
        try:
            folder.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)  # the last processes are still exiting


class CgroupV1(Cgroup):
    """cgroup v1 as root: a group in each of the memory, pids and cpuacct hierarchies."""

    kind = "cgroup v1"

    def __init__(self, limits: Limits):
        name = f"cicd-kernel-{uuid.uuid4().hex[:12]}"
        self.folders = {c: _own_cgroup_v1(c) / name for c in ("memory", "pids", "cpuacct")}
        for folder in self.folders.values():
            folder.mkdir()
        memory = self.folders["memory"]
        (memory / "memory.limit_in_bytes").write_text(str(limits.memory_bytes))
        if (memory / "memory.memsw.limit_in_bytes").exists():  # no escape into swap
            (memory / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_bytes))
        (self.folders["pids"] / "pids.max").write_text(str(limits.processes))

    def procs_files(self):
        return [f / "cgroup.procs" for f in self.folders.values()]

    def cpu_seconds(self):
        try:
            return int((self.folders["cpuacct"] / "cpuacct.usage").read_text()) / 1e9
        except (OSError, ValueError):
            return None

    def remove(self):
        for folder in self.folders.values():
            _kill_members(folder / "cgroup.procs")
            _remove_folder(folder)


class CgroupV2(Cgroup):
    """A writable cgroup v2 (root, or a delegated subtree) with the memory and pids controllers."""

    kind = "cgroup v2"

    def __init__(self, limits: Limits, parent: Path):
        self.folder = parent / f"cicd-kernel-{uuid.uuid4().hex[:12]}"
        self.folder.mkdir()
        try:
            (self.folder / "memory.max").write_text(str(limits.memory_bytes))
            if (self.folder / "memory.swap.max").exists():
                (self.folder / "memory.swap.max").write_text("0")
            (self.folder / "pids.max").write_text(str(limits.processes))
        except OSError:
            self.folder.rmdir()
            raise

    def procs_files(self):
        return [self.folder / "cgroup.procs"]

    def cpu_seconds(self):
        try:
            stat = dict(line.split() for line in (self.folder / "cpu.stat").read_text().splitlines())
            return int(stat["usage_usec"]) / 1e6
        except (OSError, KeyError, ValueError):
            return None

    def remove(self):
        try:
            (self.folder / "cgroup.kill").write_text("1")
        except OSError:
            _kill_members(self.folder / "cgroup.procs")
        _kill_members(self.folder / "cgroup.procs")
        _remove_folder(self.folder)


class SystemdScope(Cgroup):
    """A transient systemd scope (`systemd-run --user --scope` for an unprivileged grader): works
    wherever a user session exists on a cgroup v2 machine. systemd removes it once empty."""

    kind = "systemd scope"

    def __init__(self, limits: Limits):
        self.limits = limits
        self.unit = f"cicd-kernel-{uuid.uuid4().hex[:12]}"

    def wrap(self, cmd):
        return _systemd_run_prefix(self.limits, self.unit) + cmd

    def remove(self):
        user = [] if os.geteuid() == 0 else ["--user"]
        _run_quietly(["systemctl", *user, "kill", "--signal=SIGKILL", f"{self.unit}.scope"], timeout=10)


def _systemd_run_prefix(limits: Limits, unit: str) -> list[str]:
    user = [] if os.geteuid() == 0 else ["--user"]
    return ["systemd-run", *user, "--scope", "--quiet", "--collect", f"--unit={unit}",
            "-p", f"MemoryMax={limits.memory_bytes}", "-p", "MemorySwapMax=0",
            "-p", f"TasksMax={limits.processes}", "--"]


def _writable_cgroup_v2_parent() -> Path | None:
    """A cgroup v2 folder in which a child gets the memory and pids controllers, if any."""
    own = _own_cgroup_v2()
    if own is None or not os.access(own, os.W_OK):
        return None
    candidates = [own] if own == CGROUP_ROOT else [own, own.parent]
    for parent in candidates:
        if not os.access(parent, os.W_OK):
            continue
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        if not {"memory", "pids"} <= set(enabled):
            try:  # only possible where the folder holds no process itself (or is the root)
                (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            except OSError:
                continue
        return parent
    return None


@functools.lru_cache(maxsize=1)
def cgroup_support() -> tuple[str, str]:
    """(kind, detail): which per-submission cgroup this machine gives the grader, found by trying.
    kind is '' when there is none, and detail then says why."""
    tried = []
    if Path("/run/systemd/system").is_dir() and shutil.which("systemd-run"):
        probe = _run_quietly(_systemd_run_prefix(Limits(memory_bytes=256 * 1024**2, processes=16),
                                                 f"cicd-probe-{uuid.uuid4().hex[:12]}") + ["true"])
        if probe is not None and probe.returncode == 0:
            return "systemd scope", "systemd-run" + ("" if os.geteuid() == 0 else " --user") + " --scope"
        tried.append("systemd-run --scope failed (" + ((probe.stderr.strip().splitlines() or ["?"])[-1][:120]
                                                      if probe else "did not run") + ")")
    else:
        tried.append("no systemd")
    parent = _writable_cgroup_v2_parent()
    if parent is not None:
        problem = _try_cgroup(lambda: CgroupV2(Limits(), parent))
        if not problem:
            return "cgroup v2", str(parent)
        tried.append(f"cgroup v2 at {parent}: {problem}")
    else:
        tried.append("no writable cgroup v2")
    if os.geteuid() == 0 and all((p := _own_cgroup_v1(c)) is not None and os.access(p, os.W_OK)
                                 for c in ("memory", "pids", "cpuacct")):
        problem = _try_cgroup(lambda: CgroupV1(Limits()))
        if not problem:
            return "cgroup v1", str(CGROUP_ROOT)
        tried.append(f"cgroup v1: {problem}")
    else:
        tried.append("no writable cgroup v1 (needs root)")
    return "", "; ".join(tried)


def _try_cgroup(make) -> str:
    """'' when a cgroup can be made and a process started inside it; else what went wrong."""
    try:
        group = make()
    except OSError as err:
        return f"could not make a group ({err.strerror})"
    try:
        done = _run_quietly(group.wrap(["true"]))
        if done is None or done.returncode != 0:
            return "could not move a process into it" + (f" ({done.stderr.strip()[:120]})" if done else "")
        return ""
    finally:
        group.remove()


def new_cgroup(limits: Limits) -> Cgroup | None:
    kind, detail = cgroup_support()
    try:
        if kind == "systemd scope":
            return SystemdScope(limits)
        if kind == "cgroup v2":
            return CgroupV2(limits, Path(detail))
        if kind == "cgroup v1":
            return CgroupV1(limits)
    except OSError:
        return None
    return None


# --- what enforces each limit here -------------------------------------------------------------

def enforcement(limits: Limits | None = None) -> dict[str, tuple[bool, str]]:
    """For each limit: (held for the submission as a whole?, by what)."""
    limits = limits or Limits.from_environment()
    kind, detail = cgroup_support()
    isolated = isolation_status() == "bubblewrap"
    gib = limits.memory_bytes / 1024**3
    why_no_cgroup = f"no cgroup for the grader here ({detail})"
    result = {}
    if kind:
        result["memory"] = (True, f"{gib:.2g} GiB for all the submission's processes and its files in memory ({kind})")
        result["processes"] = (True, f"{limits.processes} processes and threads ({kind})")
    else:
        result["memory"] = (False, f"{why_no_cgroup}: each process is capped at {limits.address_space_bytes / 1024**3:.2g} GiB "
                                   f"of address space, and a watchdog kills the submission when its processes' memory "
                                   f"(Pss) passes {gib:.2g} GiB in total, checked every {WATCH_INTERVAL} s")
        result["processes"] = (False, f"{why_no_cgroup}: RLIMIT_NPROC allows {limits.processes} processes and threads more "
                                      f"than the kernel's user already runs, shared by all submissions graded at once")
    if isolated:
        tmp_apart = any(Path(root).is_relative_to("/tmp") for root in python_roots())
        result["disk"] = (True, (f"{limits.disk_bytes / 1024**2:.0f} MiB of scratch file systems, split between the "
                                 f"work folder and /tmp (Python lives under /tmp here)" if tmp_apart else
                                 f"{limits.disk_bytes / 1024**2:.0f} MiB scratch file system for the work folder and /tmp")
                                + f", plus {limits.shm_bytes / 1024**2:.0f} MiB for /dev/shm")
    else:
        result["disk"] = (False, f"no sandbox ({isolation_status()}): only each file is capped, at "
                                 f"{limits.disk_bytes / 1024**2:.0f} MiB; the number of files is not")
    cpu_by = f"the cgroup's CPU account ({kind})" if kind in ("cgroup v1", "cgroup v2") else \
        "the CPU times of the submission's process tree"
    result["cpu"] = (isolated or kind in ("cgroup v1", "cgroup v2"),
                     f"{limits.cpu_seconds} s in total, {cpu_by}, checked every {WATCH_INTERVAL} s"
                     + ("" if isolated or kind in ("cgroup v1", "cgroup v2") else
                        "; without a sandbox a process that leaves the tree escapes it"))
    return result


def enforcement_report(limits: Limits | None = None) -> list[str]:
    """One sentence per limit that does not hold for the submission as a whole here; [] if all do."""
    lines = []
    if isolation_status() != "bubblewrap":
        lines.append(f"isolation is OFF: {isolation_status()}; student code can read this machine's files")
    for name, (held, how) in enforcement(limits).items():
        if not held:
            lines.append(f"{name} limit is not enforced per submission: {how}")
    return lines


# --- the sandbox itself ------------------------------------------------------------------------

@dataclass
class Sandbox:
    """What one kernel may see and use. `hide` are host folders that must stay invisible even if
    they lie inside a folder the kernel needs (a course cloned under /usr/local, say)."""
    hide: list[str] = field(default_factory=list)
    limits: Limits = field(default_factory=Limits.from_environment)
    isolated: bool = True  # False: bubblewrap is unavailable, apply the limits only

    def command(self, kernel_cmd: list[str], workcopy: Path, inside_cwd: str, ipc_dir: Path) -> list[str]:
        start = ["/bin/sh", "-c", 'cp -R "$0"/. . && exec "$@"', ASSIGNMENT_COPY]
        return self._bubblewrap(workcopy, inside_cwd, ipc_dir) + self._rlimits() + ["--"] + start + kernel_cmd

    def limits_only(self, kernel_cmd: list[str]) -> list[str]:
        """Without bubblewrap: the same resource limits, no hiding (run in a scratch copy)."""
        return self._rlimits() + ["--"] + kernel_cmd

    def _bubblewrap(self, workcopy: Path, inside_cwd: str, ipc_dir: Path) -> list[str]:
        as_root = os.geteuid() == 0
        # bubblewrap stays pid 1 of the sandbox, and its /proc/1/environ is readable by a kernel of the
        # same uid (an unprivileged grader): it starts with an empty environment (--clearenv is the child's).
        cmd = ["env", "-i", shutil.which("bwrap") or "/usr/bin/bwrap",
               "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-net",
               "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not as_root:
            cmd.append("--unshare-user")
        made: set[str] = {"/"}

        def folders_up_to(target: str) -> list[str]:
            # Parents made explicitly 0755: `nobody` must be able to cross them.
            args = []
            for parent in reversed(Path(target).parents):
                if str(parent) not in made:
                    made.add(str(parent))
                    args += ["--perms", "0755", "--dir", str(parent)]
            return args

        for folder in SYSTEM_FOLDERS:
            if os.path.islink(folder):
                cmd += ["--symlink", os.readlink(folder), folder]
            elif os.path.isdir(folder):
                cmd += ["--ro-bind", folder, folder]
                made.add(folder)
        cmd += ["--perms", "0755", "--dir", "/etc"]
        made.add("/etc")
        for name in ETC_ENTRIES:
            if os.path.lexists(f"/etc/{name}"):
                cmd += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
        for path in sorted(self._hidden_inside(SYSTEM_FOLDERS), key=len):
            cmd += ["--tmpfs", path]
        # A Python environment inside /tmp needs /tmp to exist before it is bound there: /tmp is
        # then a scratch file system of its own.
        roots = sorted(python_roots(), key=len)
        tmp_holds_python = any(Path(root).is_relative_to("/tmp") for root in roots)
        # The disk limit is then split between the two, so that together they still hold it.
        home_bytes = self.limits.disk_bytes - self.limits.disk_bytes // 2 if tmp_holds_python else self.limits.disk_bytes
        if tmp_holds_python:
            cmd += ["--perms", "1777", "--size", str(self.limits.disk_bytes // 2), "--tmpfs", "/tmp"]
            made.add("/tmp")
        for path in roots:
            cmd += folders_up_to(path) + ["--ro-bind", path, path]
            made.add(path)
        cmd += ["--proc", "/proc", "--dev", "/dev",
                "--perms", "1777", "--size", str(self.limits.shm_bytes), "--tmpfs", "/dev/shm"]
        # One scratch file system of a fixed size holds the work folder and /tmp.
        tmp_inside = f"{LEARNER_HOME}/.tmp"
        cmd += folders_up_to(LEARNER_HOME)
        cmd += ["--perms", "1777", "--size", str(home_bytes), "--tmpfs", LEARNER_HOME]
        if not tmp_holds_python:
            cmd += ["--perms", "1777", "--dir", tmp_inside, "--symlink", tmp_inside, "/tmp"]
        cmd += ["--perms", "0777", "--dir", inside_cwd]
        cmd += folders_up_to(ASSIGNMENT_COPY) + ["--ro-bind", str(workcopy), ASSIGNMENT_COPY]
        cmd += ["--bind", str(ipc_dir), IPC_INSIDE]
        cmd += ["--chdir", inside_cwd, "--clearenv"]
        for name, value in self.environment().items():
            cmd += ["--setenv", name, value]
        if as_root:
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "setpriv",
                    f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--no-new-privs", "--"]
        return cmd

    @staticmethod
    def environment() -> dict[str, str]:
        """A kernel's whole environment in the sandbox."""
        environment = {"HOME": LEARNER_HOME, "PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
                       "MPLBACKEND": "Agg", "TMPDIR": "/tmp", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # keep numpy correct on this CPU
            if name in os.environ:
                environment[name] = os.environ[name]
        return environment

    def _hidden_inside(self, roots) -> list[str]:
        found = []
        for path in self.hide:
            resolved = Path(path).resolve()
            if resolved.exists() and any(resolved.is_relative_to(r) and str(resolved) != r for r in roots
                                         if not os.path.islink(r)):
                found.append(str(resolved))
        return found

    def rlimits(self) -> dict[str, int]:
        """Each process's limits, by prlimit's names: address space, file size, CPU time, and
        processes where no cgroup counts them (a kernel bubblewrap starts, or a forked one)."""
        found = {"as": self.limits.address_space_bytes, "fsize": self.limits.disk_bytes,
                 "cpu": self.limits.cpu_seconds}
        as_root = os.geteuid() == 0
        if not cgroup_support()[0] and not (as_root and not self.isolated):  # RLIMIT_NPROC does not bind root
            found["nproc"] = tasks_of_user(NOBODY if as_root else os.getuid()) + self.limits.processes
        return found

    def _rlimits(self) -> list[str]:
        return ["prlimit", *(f"--{name}={value}" for name, value in self.rlimits().items())]


def python_roots() -> set[str]:
    """Folders the kernel's interpreter needs: the environment and the base installation, no more."""
    roots = {Path(r).resolve() for r in (sys.prefix, sys.base_prefix) if r}
    executable = Path(os.path.realpath(sys.executable))
    if not any(executable.is_relative_to(r) for r in roots):
        roots.add(executable.parent)
    roots = {r for r in roots if not any(r.is_relative_to(s) for s in map(Path, SYSTEM_FOLDERS) if s.is_dir()
                                         and not s.is_symlink())}
    return {str(r) for r in roots if not any(r != other and r.is_relative_to(other) for other in roots)}


def tasks_of_user(uid: int) -> int:
    """Processes and threads running under real uid `uid` now (what RLIMIT_NPROC counts)."""
    count = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        real = re.search(r"^Uid:\s+(\d+)", text, re.MULTILINE)
        threads = re.search(r"^Threads:\s+(\d+)", text, re.MULTILINE)
        if real and int(real[1]) == uid:
            count += int(threads[1]) if threads else 1
    return count


@functools.lru_cache(maxsize=1)
def isolation_status() -> str:
    """'bubblewrap' when sandboxing works here; otherwise a sentence saying why not."""
    if shutil.which("bwrap") is None:
        return "none: bubblewrap (bwrap) is not installed; install the Debian package 'bubblewrap'"
    scratch = Path(tempfile.mkdtemp(prefix="cicd-probe-"))
    try:
        os.chmod(scratch, 0o755)
        probe = Sandbox(limits=Limits()).command(["true"], scratch, f"{LEARNER_HOME}/probe", scratch)
        done = _run_quietly(probe)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if done is None:
        return "none: bubblewrap could not run"
    if done.returncode != 0:
        return f"none: bubblewrap failed here ({done.stderr.strip()[:200] or done.returncode})"
    return "bubblewrap"


# --- the watchdog: CPU (and memory without a cgroup) for the whole process tree ------------------

_TICKS, _PAGE = os.sysconf("SC_CLK_TCK"), os.sysconf("SC_PAGE_SIZE")


def _proc_stat(pid: int) -> tuple[int, float, int] | None:
    """(parent pid, CPU seconds incl. reaped children, resident bytes) of a process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    cpu = sum(int(f) for f in fields[11:15]) / _TICKS  # utime, stime, cutime, cstime
    return int(fields[1]), cpu, int(fields[21]) * _PAGE


def _children(pid: int) -> list[int] | None:
    """Child pids from /proc/PID/task/TID/children; None where the kernel does not offer it."""
    tasks = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if not tasks and Path(f"/proc/{pid}/task").is_dir():
        return None
    found = []
    for task in tasks:
        try:
            found += [int(child) for child in task.read_text().split()]
        except OSError:
            pass
    return found


def process_tree(root: int) -> dict[int, tuple[float, int]]:
    """{pid: (CPU seconds, resident bytes)} of `root` and all its descendants, root first.
    Walks down from `root` where /proc lists children, else scans every process once."""
    if _children(root) is None:
        return _process_tree_by_scan(root)
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop(0)
        found = _proc_stat(pid)
        if found is None or pid in tree:
            continue
        tree[pid] = found[1:]
        frontier += _children(pid) or []
    return tree


def _process_tree_by_scan(root: int) -> dict[int, tuple[float, int]]:
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            found = _proc_stat(int(entry.name))
            if found:
                stats[int(entry.name)] = found
    children: dict[int, list[int]] = {}
    for pid, (parent, *_) in stats.items():
        children.setdefault(parent, []).append(pid)
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop(0)
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid][1:]
            frontier += children.get(pid, [])
    return tree


def _proportional_memory(pid: int, resident: int) -> int:
    """A process's memory with pages shared among several processes split between them (Pss),
    so a fork of a big process is not counted twice; its resident size where Pss is unreadable,
    and nothing once it has exited (a short-lived child, forked from the kernel with all of its
    pages, often ends between the look at the tree and this one: counting its resident size
    stopped submissions that never came near the limit)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        return 0
    except (OSError, ValueError, IndexError):
        pass
    return resident


def _bytes_in(folder: Path, enough: int = IPC_FOLDER_BYTES) -> int:
    """Disk the folder takes, every entry (an empty file or folder too) costing at least a block;
    the walk stops past `enough`, so a folder of millions of entries cannot slow the watchdog."""
    total = 0
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            try:
                total += max(os.lstat(os.path.join(parent, name)).st_size, DISK_BLOCK)
            except OSError:
                pass
            if total > enough:
                return total
    return total


class Watchdog(threading.Thread):
    """Kills a sandbox whose processes together pass the CPU budget (or, without a cgroup, the
    memory budget); `verdict` then says which limit was passed."""

    def __init__(self, root_pid: int, limits: Limits, cgroup: Cgroup | None, kill, ipc_dir: Path | None = None):
        super().__init__(daemon=True, name=f"cicd-watchdog-{root_pid}")
        self.root_pid, self.limits, self.cgroup, self.kill = root_pid, limits, cgroup, kill
        self.ipc_dir = ipc_dir
        self.verdict = ""
        self._stop_event = threading.Event()

    def stop(self):
        self._stop_event.set()

    def run(self):
        memory_by_cgroup = self.cgroup is not None and self.cgroup.kind != ""
        while not self._stop_event.wait(WATCH_INTERVAL):
            tree = process_tree(self.root_pid)
            if not tree:
                return
            cpu = self.cgroup.cpu_seconds() if self.cgroup else None
            if cpu is None:
                cpu = sum(c for c, _ in tree.values())
            resident = 0 if memory_by_cgroup else sum(r for _, r in tree.values())
            if resident > self.limits.memory_bytes:  # resident sizes count shared pages again for each process
                resident = sum(_proportional_memory(pid, r) for pid, (_, r) in tree.items())
            if self.ipc_dir is not None and _bytes_in(self.ipc_dir) > IPC_FOLDER_BYTES:
                self.verdict = ("the submission wrote files into the folder it shares with the grader "
                                "(only the kernel's sockets belong there) and was stopped")
            elif cpu > self.limits.cpu_seconds:
                self.verdict = (f"the submission used more than its {self.limits.cpu_seconds} s of CPU time "
                                f"(all its processes together) and was stopped")
            elif not memory_by_cgroup and resident > self.limits.memory_bytes:
                self.verdict = (f"the submission's processes held more than {self.limits.memory_bytes / 1024**3:.2g} GiB "
                                f"of memory together and were stopped")
            if self.verdict:
                self.kill(tree)
                return


def _host_pid(root: int, inner: int) -> int | None:
    """The pid, as the host sees it, of the process of `root`'s tree whose pid is `inner` in the
    innermost pid namespace it belongs to."""
    for pid in process_tree(root):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        found = re.search(r"^NSpid:\s+(.*)$", status, re.MULTILINE)
        levels = found[1].split() if found else []
        if len(levels) > 1 and int(levels[-1]) == inner:
            return pid
    return None


# --- the kernel manager ------------------------------------------------------------------------

class SandboxedKernelManager(GradingKernelManager):
    """A kernel manager that starts its kernel inside a Sandbox, in its own cgroup, watched."""

    sandbox: Sandbox | None = None
    # Set: fork the kernel from a server (kernel_forks.py), the one at `fork_address` or one of
    # this process's that imports `fork_preload`.
    fork_address: str | None = None
    fork_preload: list[str] | None = None
    limit_exceeded: str = ""  # set when the watchdog stopped the kernel: which limit, in words

    async def _async_pre_start_kernel(self, **kw):
        host_cwd = Path(kw.get("cwd") or os.getcwd())
        self._scratch = Path(tempfile.mkdtemp(prefix="cicd-kernel-"))
        self._ipc_dir = self._scratch / "ipc"
        self._workcopy = self._scratch / "work"
        shutil.copytree(host_cwd, self._workcopy)
        self._ipc_dir.mkdir()
        os.chmod(self._scratch, 0o711)
        os.chmod(self._workcopy, 0o755)
        for path in self._workcopy.rglob("*"):  # readable for the copy into the scratch file system
            if not path.is_symlink():
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
        if os.geteuid() == 0:
            os.chown(self._ipc_dir, NOBODY, NOBODY)
        self._inside_cwd = f"{LEARNER_HOME}/{host_cwd.name}"
        self._cgroup = new_cgroup(self.sandbox.limits)
        self.transport = "ipc"
        self.ip = f"{IPC_INSIDE}/kernel" if self.sandbox.isolated else str(self._ipc_dir / "kernel")
        self.connection_file = str(self._ipc_dir / "connection.json")
        if not self.sandbox.isolated:
            kw["cwd"] = str(self._workcopy)
        # GradingKernelManager drops the kernel process's own output.
        cmd, kw = await super()._async_pre_start_kernel(**kw)
        os.chmod(self.connection_file, 0o644)
        return cmd, kw

    # The kernel binds its sockets where it sees the folder (IPC_INSIDE); the grader reaches
    # the same sockets through the folder's path on the host.
    def _host_path(self, text: str) -> str:
        return text.replace(IPC_INSIDE, str(self._ipc_dir), 1) if self.sandbox.isolated else text

    def _make_url(self, channel):
        return self._host_path(super()._make_url(channel))

    def client(self, **kwargs):
        kernel_client = super().client(**kwargs)
        kernel_client.ip = self._host_path(kernel_client.ip)
        return kernel_client

    def format_kernel_cmd(self, extra_arguments=None):
        cmd = super().format_kernel_cmd(extra_arguments)
        self._forkable_args = None
        if not self.sandbox.isolated:
            cmd = self.sandbox.limits_only(cmd)
        else:
            cmd = [arg.replace(str(self._ipc_dir), IPC_INSIDE) for arg in cmd]
            if cmd[:3] == [sys.executable, "-c", LAUNCHER]:
                self._forkable_args = cmd[3:]  # what the kernel is started with, a fork too
            cmd = self.sandbox.command(cmd, self._workcopy, self._inside_cwd, self._ipc_dir)
        return self._cgroup.wrap(cmd) if self._cgroup else cmd

    # --- kernels forked from a server that has imported their modules (kernel_forks.py) ----------

    def _fork_server(self):
        if getattr(self, "_forkable_args", None) is None or not kernel_forks.enabled():
            return None
        if self._cgroup is not None and self._cgroup.procs_files() is None:
            return None  # the forked kernel could not join the submission's cgroup
        if self.fork_address:
            return kernel_forks.ForkClient(self.fork_address)
        if self.fork_preload is not None:
            return kernel_forks.server(self.fork_preload, self.sandbox.environment())
        return None

    def _fork_request(self, target: int) -> dict:
        as_root = os.geteuid() == 0
        procs = [str(path) for path in self._cgroup.procs_files()] if self._cgroup else []
        return {"target": target, "cgroup_procs": procs,
                "namespaces": ["mnt", "pid", "net", "ipc", "uts"] + ([] if as_root else ["user"]),
                "uid": NOBODY if as_root else None, "gid": NOBODY if as_root else None,
                "rlimits": self.sandbox.rlimits(), "environment": {**self.sandbox.environment(), "PWD": self._inside_cwd},
                "waiter": f"{IPC_INSIDE}/waiter", "argv": self._forkable_args}

    async def _async_launch_kernel(self, kernel_cmd, **kw):
        server = self._fork_server()
        if server is not None:
            try:
                return await self._launch_forked(server, **kw)
            except kernel_forks.ForkFailed as err:
                kernel_forks.give_up(str(err))
                self.log.warning("Kernels start without the fork server from now on: %s", err)
                await self._end_failed_fork()
        return await super()._async_launch_kernel(kernel_cmd, **kw)

    async def _launch_forked(self, server, **kw):
        waiter = [sys.executable, "-I", "-S", "-c", kernel_forks.WAITER, IPC_INSIDE]
        cmd = self.sandbox.command(waiter, self._workcopy, self._inside_cwd, self._ipc_dir)
        await super()._async_launch_kernel(self._cgroup.wrap(cmd) if self._cgroup else cmd, **kw)
        ready, started = self._ipc_dir / "ready", time.monotonic()
        while not ready.exists():
            if self.provisioner.process.poll() is not None:
                raise kernel_forks.ForkFailed(f"the sandbox ended as it started (exit code "
                                              f"{self.provisioner.process.returncode})")
            if time.monotonic() - started > FORK_WAIT:
                raise kernel_forks.ForkFailed(f"the sandbox was not ready within {FORK_WAIT} s")
            await asyncio.sleep(0.005)
        inner = int(ready.read_text())
        ready.unlink()
        target = _host_pid(self.provisioner.pid, inner)
        if target is None:
            raise kernel_forks.ForkFailed("the sandbox's waiting process could not be found")
        try:
            target_fd = os.pidfd_open(target)
        except OSError as err:
            raise kernel_forks.ForkFailed(f"the sandbox's waiting process ended ({err.strerror})") from None
        try:
            # Still the one found in this sandbox's tree: the pidfd holds that very process.
            if _host_pid(self.provisioner.pid, inner) != target:
                raise kernel_forks.ForkFailed("the sandbox's waiting process ended")
            await asyncio.get_running_loop().run_in_executor(
                None, server.fork, self._fork_request(target), target_fd, FORK_WAIT)
        finally:
            os.close(target_fd)

    async def _end_failed_fork(self):
        process = getattr(self.provisioner, "process", None)
        if process is not None:
            with contextlib.suppress(OSError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                process.kill()
                process.wait(timeout=10)
        for name in ("ready", "ready.tmp", "waiter"):
            with contextlib.suppress(OSError):
                (self._ipc_dir / name).unlink()

    async def _async_post_start_kernel(self, **kw):
        await super()._async_post_start_kernel(**kw)
        pid = getattr(self.provisioner, "pid", None)
        if pid:
            # The socket folder is the one place on the host the kernel can write to: watched.
            self._watchdog = Watchdog(pid, self.sandbox.limits, self._cgroup, self._kill_tree,
                                      self._ipc_dir if self.sandbox.isolated else None)
            self._watchdog.start()

    def _kill_tree(self, tree: dict[int, tuple[float, int]]) -> None:
        self.limit_exceeded = self._watchdog.verdict
        for pid in tree:  # the sandbox's first process first: its pid namespace dies with it
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if restart:
            return
        if getattr(self, "_watchdog", None):
            self._watchdog.stop()
            if self._watchdog.verdict:
                self.limit_exceeded = self._watchdog.verdict
        if getattr(self, "_cgroup", None):
            # A kernel that died is not reaped by anyone yet; as a zombie it keeps its cgroup busy.
            process = getattr(getattr(self, "provisioner", None), "process", None)
            if process is not None:
                with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                    process.kill()
                    process.wait(timeout=10)
            self._cgroup.remove()
            self._cgroup = None
        if getattr(self, "_scratch", None):
            shutil.rmtree(self._scratch, ignore_errors=True)

    # AsyncKernelManager binds its public name to the base class's function, which would skip
    # the above when nbclient cleans up after a kernel that died.
    cleanup_resources = _async_cleanup_resources
