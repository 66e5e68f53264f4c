"""Shared fixtures: a throwaway copy of the course with a class folder, and graded fixture classes."""
import atexit
import contextlib
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autograder import course, samples  # noqa: E402
from autograder.sandbox import python_roots  # noqa: E402
from autograder.config import ClassPaths  # noqa: E402


def _course_copy_paths(root: Path) -> ClassPaths:
    return ClassPaths(root / "repo", root / "class", root / "exchange")


def make_course_copy(root: Path) -> ClassPaths:
    """A copy of solutions/ and course/ with its own class folder and exchange."""
    for folder in ("solutions", "course"):
        shutil.copytree(REPO / folder, root / "repo" / folder)
    return _course_copy_paths(root)


_GENERATED_TEMPLATES: dict[str, Path] = {}  # assignment -> a generated class, once per worker process


def generated_course_copy(root: Path, assignment: str) -> ClassPaths:
    """make_course_copy, then `course.generate` and the reference results of one assignment, as
    set-up for tests that grade: copied from a template this worker made once (generating and
    running the reference solution take seconds; copying them takes milliseconds). Tests of
    generation itself call course.generate on a make_course_copy instead."""
    template = _GENERATED_TEMPLATES.get(assignment)
    if template is None:
        template = Path(tempfile.mkdtemp(prefix=f"cicd-template-{assignment}-"))
        atexit.register(shutil.rmtree, template, True)
        paths = make_course_copy(template)
        course.generate(paths, assignment)
        course.prepare_reference(paths, assignment)
        _GENERATED_TEMPLATES[assignment] = template
    shutil.copytree(template, root, symlinks=True, dirs_exist_ok=True)
    return _course_copy_paths(root)


def submit_directly(paths: ClassPaths, student: str, assignment: str, nb) -> Path:
    """Put a notebook where `collect` would have put it (the exchange itself is tested by the demo)."""
    folder = paths.submitted / student / assignment
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{assignment}.ipynb"
    if isinstance(nb, (bytes, str)):
        target.write_bytes(nb if isinstance(nb, bytes) else nb.encode())
    else:
        nbformat.write(nb, target)
    (folder / "timestamp.txt").write_text("2026-11-01 12:00:00.000000 UTC")
    return target


def block_lines(paths: ClassPaths, assignment: str, block: str, longer_than: int) -> list[str]:
    """Stripped lines longer than `longer_than` inside the first `### BEGIN {block}` ... `### END
    {block}` of each cell of an assignment's source notebook (block: "SOLUTION" or "HIDDEN TESTS")."""
    source = nbformat.read(paths.source / assignment / f"{assignment}.ipynb", as_version=4)
    lines = []
    for cell in source.cells:
        for part in cell.source.split(f"### BEGIN {block}")[1:2]:
            lines += [line.strip() for line in part.split(f"### END {block}")[0].splitlines()
                      if len(line.strip()) > longer_than]
    return lines


def fixture_notebook(paths: ClassPaths, assignment: str, case: str):
    sample = samples.load(assignment, case)
    return samples.build(sample, paths.release / assignment / f"{assignment}.ipynb",
                         paths.source / assignment / f"{assignment}.ipynb")


class GradedFixtures:
    """Grades every fixture submission of an assignment once, as one class, through nbgrader,
    on every core (`course.grade`'s default): the tests of one assignment share one grading run,
    and with it the student version it generated and the reference results it computed (the
    root conftest.py keeps an exercise's tests on one worker)."""

    def __init__(self, tmp_path_factory):
        self.factory = tmp_path_factory
        self.cache = {}

    def __call__(self, assignment):
        if assignment not in self.cache:
            paths = make_course_copy(self.factory.mktemp(assignment))
            # Generated from nothing, so that a file generation failed to write cannot be
            # mistaken for the committed copy of it.
            shutil.rmtree(paths.release / assignment)
            course.generate(paths, assignment)
            for case in samples.cases(assignment):
                submit_directly(paths, case, assignment, fixture_notebook(paths, assignment, case))
            results = {r.student: r for r in course.grade(paths, assignment, jobs=course.default_jobs())}
            self.cache[assignment] = (paths, results)
        return self.cache[assignment]


@pytest.fixture(scope="session")
def graded_fixtures(tmp_path_factory):
    return GradedFixtures(tmp_path_factory)


@pytest.fixture
def course_copy(tmp_path):
    return make_course_copy(tmp_path)


# --- a real Jupyter server --------------------------------------------------------------------

_PORTS_TAKEN = iter(range(1000))


def free_port() -> int:
    """A port for a server a test starts, that no other test is given meanwhile. A port from
    bind(0) is free only until it is closed: a concurrent test's server (or proxy) could take it
    before ours binds it, as a JupyterHub start once found its proxy's port answered by another
    test's server. Each pytest-xdist worker takes ports from its own slice of 20000-31999, below
    Linux's ephemeral range (32768-60999), which bind(0) and outgoing connections use."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    base = 20000 + 1000 * (int(worker[2:]) % 12 if worker[2:].isdigit() else 0)
    for offset in _PORTS_TAKEN:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", base + offset))
            except OSError:  # a program outside the tests holds it
                continue
            return base + offset
    raise RuntimeError(f"no free port left in {base}-{base + 999} for this test worker")


@contextlib.contextmanager
def jupyter_server(cmd: list[str], cwd: Path, env: dict, log_path: Path, status_url: str,
                   headers: dict | None = None, stop_within: float = 20):
    """Run a Jupyter server command until the block ends: it is up once `status_url` answers
    (60 s at most, else the test fails with the end of its log), and it is stopped with SIGTERM
    (the server shuts its kernels down), SIGKILL after `stop_within` seconds."""
    with log_path.open("w") as log:
        server = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(urllib.request.Request(status_url, headers=headers or {}), timeout=5):
                        break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(f"the Jupyter server did not start (exit code {server.poll()}):\n"
                                    + log_path.read_text()[-3000:])
                    time.sleep(0.25)
            yield server
        finally:
            server.terminate()
            try:
                server.wait(timeout=stop_within)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=10)


# --- what CI must not skip ---------------------------------------------------------------------

def skip_or_fail(reason: str) -> None:
    """Skip on a developer's machine; under CI=true a missing capability is a failure, so a run
    can never go green with the sandbox, the browser or the unprivileged path untested."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true, so this is a failure, not a skip: {reason}")
    pytest.skip(reason)


# --- a throwaway unprivileged user (when the suite runs as root) --------------------------------

class ThrowawayUser:
    """A user created for the test run with useradd and removed with userdel at the end."""

    def __init__(self, name: str):
        self.name = name
        self.uid = pwd.getpwnam(name).pw_uid
        self.gid = pwd.getpwnam(name).pw_gid

    def own(self, folder: Path) -> None:
        for path in [folder, *folder.rglob("*")]:
            os.chown(path, self.uid, self.gid, follow_symlinks=False)

    def command(self, argv: list[str], env: dict[str, str]) -> list[str]:
        """argv run as this user, in a private mount namespace where the Python installation and
        the repository are reachable even if they live under a folder the user cannot enter
        (pyenv under /root, a checkout under a 0750 home, a venv under a 0700 mktemp folder)."""
        needed = sorted(r for r in {*python_roots(), str(REPO)} if _first_blocked_parent(Path(r)))
        blocked = sorted({str(_first_blocked_parent(Path(r))) for r in needed}, key=len)
        blocked = [b for b in blocked if not any(b != o and b.startswith(o + "/") for o in blocked)]
        quote = shlex.quote
        steps = ["mount -t tmpfs -o mode=0700 tmpfs /mnt"] if needed else []  # the stash, private
        steps += [f"mkdir /mnt/{i} && mount --bind {quote(r)} /mnt/{i}" for i, r in enumerate(needed)]
        steps += [f"mount -t tmpfs -o mode=0755 tmpfs {quote(b)}" for b in blocked]
        steps += [f"mkdir -p {quote(r)} && mount --bind /mnt/{i} {quote(r)}" for i, r in enumerate(needed)]
        env_args = [f"{k}={v}" for k, v in env.items()]
        run = " ".join(quote(a) for a in ["runuser", "-u", self.name, "--", "env", "-i", *env_args, *argv])
        return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-ec", "; ".join(steps + [f"exec {run}"])]

    def processes(self) -> list[int]:
        """The user's live processes. A zombie (state Z) is already dead: it waits only for its
        new parent, which here may be an init that reaps late, to collect its exit status."""
        found = []
        for status in Path("/proc").glob("[0-9]*/status"):
            try:
                text = status.read_text()
                if re.search(rf"^Uid:\s+{self.uid}\s", text, re.MULTILINE) and \
                        not re.search(r"^State:\s+Z", text, re.MULTILINE):
                    found.append(int(status.parent.name))
            except OSError:
                pass
        return found


def _first_blocked_parent(path: Path) -> Path | None:
    for parent in reversed(path.parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return parent
    return None


@pytest.fixture(scope="session")
def throwaway_user():
    """A fresh unprivileged user when the suite runs as root (removed at the end); None when
    the suite already runs unprivileged. Skips (fails under CI=true) when it cannot be made."""
    if os.geteuid() != 0:
        yield None
        return
    missing = [tool for tool in ("useradd", "userdel", "runuser", "unshare") if shutil.which(tool) is None]
    if missing:
        skip_or_fail(f"cannot create a throwaway user: {', '.join(missing)} missing")
    name = f"cicd-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                          capture_output=True, text=True)
    if made.returncode != 0:
        skip_or_fail(f"useradd failed: {made.stderr.strip()}")
    user = ThrowawayUser(name)
    try:
        yield user
    finally:
        for pid in user.processes():  # only the throwaway user's own processes, by id
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["userdel", name], capture_output=True)
