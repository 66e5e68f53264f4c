"""Kernels forked from a server that has imported their modules (autograder/kernel_forks.py)
grade exactly as kernels started from nothing, end with their sandbox, and fall back to a
start from nothing when a fork cannot be made. What a forked kernel holds and may do, as root
and unprivileged, is tested with the other attacks in test_sandbox.py."""
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
from jupyter_client.utils import run_sync
from traitlets.config import Config

from autograder import course, kernel_forks
from autograder.nbgrader_hooks import defend
from autograder.preprocessors import GuardedExecute
from autograder.sandbox import Sandbox, SandboxedKernelManager, isolation_status
from conftest import REPO, fixture_notebook, generated_course_copy, skip_or_fail, submit_directly

ASSIGNMENT = "ex03_model_gate"
CASES = ["correct", "partial", "swapped_thresholds", "blank"]


@pytest.fixture
def sandboxed():
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")


def graded(root: Path, forked: bool) -> dict:
    paths = generated_course_copy(root, ASSIGNMENT)
    for case in CASES:
        submit_directly(paths, case, ASSIGNMENT, fixture_notebook(paths, ASSIGNMENT, case))
    before = os.environ.get("CICD_FORK_KERNELS")
    os.environ["CICD_FORK_KERNELS"] = "1" if forked else "0"
    try:
        results = course.grade(paths, ASSIGNMENT, jobs=2)
    finally:
        if before is None:
            os.environ.pop("CICD_FORK_KERNELS")
        else:
            os.environ["CICD_FORK_KERNELS"] = before
    return {r.student: (r.score, r.error, r.incidents, [(c.grade_id, c.points, c.reason) for c in r.cells])
            for r in results}


def test_forked_kernels_give_the_grades_of_kernels_started_from_nothing(tmp_path, sandboxed):
    forked, started = graded(tmp_path / "forked", True), graded(tmp_path / "started", False)
    assert set(forked) == set(CASES)
    assert forked == started
    assert forked["correct"][0] == 10.0 and forked["blank"][0] == 0.0


def _kernel(tmp_path: Path, preload) -> SandboxedKernelManager:
    manager = SandboxedKernelManager(kernel_name="python3")
    manager.sandbox = Sandbox()
    manager.fork_preload = preload
    (tmp_path / "work").mkdir(parents=True)
    run_sync(manager.start_kernel)(cwd=str(tmp_path / "work"))
    return manager


def _run(manager, code: str) -> str:
    client = manager.client()
    client.start_channels()
    try:
        run_sync(client.wait_for_ready)(timeout=60)
        msg_id = client.execute(code)
        text = ""
        while True:
            message = run_sync(client.get_iopub_msg)(timeout=30)
            if message["parent_header"].get("msg_id") != msg_id:
                continue
            if message["msg_type"] == "stream":
                text += message["content"]["text"]
            if message["msg_type"] == "status" and message["content"]["execution_state"] == "idle":
                return text
    finally:
        client.stop_channels()


def test_a_forked_kernel_that_ends_takes_its_sandbox_and_children_along(tmp_path, sandboxed):
    manager = _kernel(tmp_path, [])
    try:
        command = _run(manager, "print(open('/proc/self/cmdline').read().split(chr(0))[2][:18])")
        assert command.startswith('"""The fork server'), command
        client = manager.client()
        client.start_channels()
        # A child that would outlive the kernel, then the kernel's own end.
        client.execute("import subprocess, os; subprocess.Popen(['sleep', '600']); os._exit(0)")
        deadline = time.monotonic() + 15
        while run_sync(manager.is_alive)() and time.monotonic() < deadline:
            time.sleep(0.1)
        client.stop_channels()
        assert not run_sync(manager.is_alive)(), "the sandbox outlived its kernel"
    finally:
        run_sync(manager.shutdown_kernel)(now=True)


class _BrokenServer:
    def fork(self, request, target_fd, timeout):
        raise kernel_forks.ForkFailed("this machine does not allow it (a test)")


def test_a_kernel_that_cannot_be_forked_starts_from_nothing(tmp_path, sandboxed, monkeypatch):
    monkeypatch.setattr(kernel_forks, "server", lambda preload, environment: _BrokenServer())
    monkeypatch.setattr(kernel_forks, "_disabled", "")
    manager = _kernel(tmp_path, ["json"])
    try:
        assert _run(manager, "import sys; print(sys.argv[0], 6 * 7)") == "-c 42\n"
        assert "a test" in kernel_forks._disabled  # later kernels do not try again
        command = _run(manager, "print(open('/proc/self/cmdline').read().split(chr(0))[2][:14])")
        assert command.startswith("import sys;"), command  # kernel_command.LAUNCHER: from nothing
    finally:
        run_sync(manager.shutdown_kernel)(now=True)


def test_a_forked_kernel_has_the_environment_of_one_started_from_nothing(tmp_path, sandboxed, monkeypatch):
    """The server's modules set variables as it imports them (scikit-learn's KMP_*); a kernel that
    imported them itself has them too."""
    code = ("import json, os, sklearn.linear_model\n"
            "print(json.dumps(sorted((k, v) for k, v in os.environ.items() if k != 'PWD')))")
    seen = {}
    for forked in (True, False):
        monkeypatch.setenv("CICD_FORK_KERNELS", "1" if forked else "0")
        manager = _kernel(tmp_path / str(forked), ["sklearn.linear_model"])
        try:
            seen[forked] = json.loads(_run(manager, code))
            command = _run(manager, "print(open('/proc/self/cmdline').read().split(chr(0))[2][:18])")
            assert command.startswith('"""The fork server') == forked, command
        finally:
            run_sync(manager.shutdown_kernel)(now=True)
    assert any(name.startswith("KMP_") for name, _ in seen[False]), seen[False]
    assert seen[True] == seen[False]


def test_the_server_outlives_a_client_that_hangs_up(sandboxed):
    """A worker that gives up waiting (or is killed) mid-request must not end the server that
    the other workers share."""
    client = kernel_forks.server([], Sandbox.environment())
    bogus = {"target": os.getpid(), "cgroup_procs": [], "namespaces": ["mnt"], "uid": None, "gid": None,
             "rlimits": {}, "environment": {}, "waiter": "/nonexistent", "argv": []}
    process = subprocess.Popen(["sleep", "30"])
    try:
        target_fd = os.pidfd_open(process.pid)
        for _ in range(3):  # asks, and hangs up before the answer
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
                connection.connect(client.address)
                socket.send_fds(connection, [(json.dumps(bogus) + "\n").encode()], [target_fd])
        with pytest.raises(kernel_forks.ForkFailed, match="shares these namespaces"):
            client.fork(bogus, target_fd, 30)  # still there, and refusing a target outside a sandbox
        os.close(target_fd)
    finally:
        process.kill()
        process.wait()


def test_a_kernel_outside_the_grading_pool_preloads_its_own_assignments_modules():
    """nbgrader's own autograde and feedback fork their kernels from a server that imports what
    that assignment's released notebooks import: not every exercise's (ex02's kernels would carry
    scikit-learn's address space into their RLIMIT_AS), and never what a submission imports."""
    release = REPO / "course"
    resources = {"nbgrader": {"assignment": "ex02_data_gate"}}
    config = Config()  # what nbgrader_config.py gives nbgrader's own commands
    config.CourseDirectory.root, config.Exchange.root = str(REPO), "/nonexistent/exchange"
    config.CourseDirectory.submitted_directory = "/nonexistent/class/submitted"
    defend(config)
    preload = GuardedExecute(config=config)._preload_for(resources)
    assert preload == kernel_forks.modules_to_preload(release / "ex02_data_gate")
    assert "pandas" in preload and not any(name.startswith("sklearn") for name in preload)
    assert GuardedExecute()._preload_for(resources) is None  # no release: each kernel from nothing
    assert GuardedExecute(release_dir=str(release), fork_preload=["json"])._preload_for(resources) == ["json"]

