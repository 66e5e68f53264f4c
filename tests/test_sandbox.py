"""The sandbox holds per submission, as root and as an unprivileged instructor.

Each attack is a real submission (a correct answer plus cells of the attacker's own, run after
every test cell), graded by `course.grade` as one class. Limits are set small for the test through
the environment (CICD_MEMORY_LIMIT and friends, the same knobs an instructor has). The class is
graded twice: by the suite's own user (root here), and by a throwaway unprivileged user that the
suite creates with useradd (or by the suite itself when it already runs unprivileged).
"""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from autograder import AutograderError, course, sandbox
from autograder.config import ClassPaths
from autograder.sandbox import Limits, Sandbox, SandboxedKernelManager, isolation_status
from conftest import REPO, fixture_notebook, skip_or_fail, submit_directly, generated_course_copy

ASSIGNMENT = "ex02_data_gate"
FULL = 10.0
MiB = 1024**2
# CPU: a correct ex02 uses about 2 s with its kernel's start; the burners pass 5 s within seconds.
LIMITS = Limits(memory_bytes=512 * MiB, processes=64, disk_bytes=64 * MiB, cpu_seconds=5)
LIMITS_ENV = {"CICD_MEMORY_LIMIT": "512M", "CICD_PROCESS_LIMIT": "64", "CICD_DISK_LIMIT": "64M",
              "CICD_CPU_LIMIT": "5", "CICD_CELL_TIMEOUT": "20"}
# Built at run time, so the submission's own notebook (in its work folder) does not contain it.
MARKER_PARTS = ("CICD-SOLUTION-", uuid.uuid4().hex)
MARKER = "".join(MARKER_PARTS)

ATTACKS = {
    # Five processes that each hold 40% of the memory limit: 200% together.
    "memory": '''
import subprocess, sys, time
chunk = int(LIMIT * 0.4)
hog = "import time; b = b'x' * %d; print('holding', flush=True); time.sleep(60)" % chunk
children = [subprocess.Popen([sys.executable, "-c", hog], stdout=subprocess.PIPE, text=True) for _ in range(5)]
for child in children:
    child.stdout.readline()  # 'holding', or '' once it was killed
time.sleep(0.5)
print("HELD", sum(child.poll() is None for child in children) * chunk)
for child in children:
    child.kill()
'''.replace("LIMIT", str(LIMITS.memory_bytes)),
    # 3.2 GB of files in 200 MB pieces, in the work folder, /tmp and /dev/shm.
    "disk": '''
import os
piece = b"x" * (200 * 1024**2)
written = 0
for folder in (".", "/tmp", "/dev/shm"):
    for i in range(16):
        path = os.path.join(folder, f"fill-{i}.bin")
        try:
            with open(path, "wb") as out:
                out.write(piece)
            written += len(piece)
        except OSError:
            written += os.path.getsize(path) if os.path.exists(path) else 0
            break
print("WROTE", written)
''',
    # 420 processes.
    "processes": '''
import subprocess
started = []
for _ in range(420):
    try:
        started.append(subprocess.Popen(["sleep", "30"]))
    except OSError:
        break
print("STARTED", len(started))
for p in started:
    p.kill()
''',
    # Four processes burning CPU; the cell reports what they have used so far.
    "cpu": '''
import os, subprocess, sys, time
burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(4)]
def burned():
    total = 0.0
    for p in burners:
        try:
            fields = open(f"/proc/{p.pid}/stat").read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            pass
    return total
start = time.time()
while time.time() - start < 30:  # the cell's time limit (20 s) stops it before that
    print("CPU", round(burned(), 2), flush=True)
    time.sleep(0.25)
''',
    # Search every readable file for a string from the solutions: all of them, except the
    # operating system's and Python's own files (8 GB here; the sandbox shares those on purpose).
    "walk": '''
import os, sys
marker = "".join(PARTS).encode()
found, searched = [], 0
shared = {"/proc", "/sys", "/dev", "/usr", os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
for top in sorted(os.listdir("/")):
    for folder, dirs, files in os.walk("/" + top):
        real = os.path.realpath(folder)
        if any(real == s or real.startswith(s + "/") for s in shared):
            dirs[:] = []
            continue
        for name in files:
            path = os.path.join(folder, name)
            try:
                if os.path.islink(path) or os.path.getsize(path) > 4_000_000:
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            searched += 1
            if marker in data:
                found.append(path)
print("SEARCHED", searched)
print("FOUND", json.dumps(found))
print("VISIBLE", json.dumps(sorted(p for p in ("/srv", "/opt", "/var", "/mnt", "/media") if os.path.exists(p))))
print("TOP", json.dumps(sorted(os.listdir("/"))))
print("LISTING", json.dumps({p: sorted(os.listdir(p)) for p in ("/home", "/root", "/work") if os.path.isdir(p)}))
'''.replace("PARTS", repr(MARKER_PARTS)).replace("import os, sys", "import json, os, sys"),
    # What the kernel holds of the process it was forked from (autograder/kernel_forks.py).
    "forked": '''
import json, os, re, socket
status = open("/proc/self/status").read()
field = lambda name: re.search(rf"^{name}:\\s+(.*)$", status, re.MULTILINE)[1]
print("COMMAND", json.dumps(open("/proc/self/cmdline").read().split("\\0")[2][:20]))
print("CAPABILITIES", json.dumps([field(name) for name in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")]))
print("NO_NEW_PRIVS", field("NoNewPrivs"))
print("PARENT", os.getppid())
paths, sockets = set(), set()
for fd in os.listdir("/proc/self/fd"):
    try:
        target = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        continue
    if target.startswith("/"):
        paths.add(target)
    elif target.startswith("socket:"):
        try:
            with socket.socket(fileno=os.dup(int(fd))) as held:
                if held.family == socket.AF_UNIX:  # the server listens on one
                    sockets.add(held.getsockname())
        except OSError:
            pass
print("FILES", json.dumps(sorted(paths)))
print("SOCKETS", json.dumps(sorted(sockets)))
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
traced = []
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]:
    if libc.ptrace(16, pid, None, None) == 0:  # PTRACE_ATTACH
        traced.append(pid)
        libc.ptrace(17, pid, None, None)  # PTRACE_DETACH
print("TRACED", json.dumps(traced))
''',
}


# --- the class, graded as root and as an unprivileged user ---------------------------------------

# Attacks that may cost the kernel its life run alone; the others share one submission.
SUBMISSIONS = {"memory": ["memory"], "cpu": ["cpu"], "disk_processes_walk": ["disk", "processes", "walk"],
               "forked": ["forked"]}
WHERE = {attack: student for student, attacks in SUBMISSIONS.items() for attack in attacks}


def build_class(root: Path):
    paths = generated_course_copy(root, ASSIGNMENT)
    correct = fixture_notebook(paths, ASSIGNMENT, "correct")
    for student, attacks in SUBMISSIONS.items():
        nb = nbformat.from_dict(json.loads(nbformat.writes(correct)))
        nb.cells += [nbformat.v4.new_code_cell(ATTACKS[name]) for name in attacks]
        submit_directly(paths, student, ASSIGNMENT, nb)
    return paths


def plant_solution_clones(extra_roots):
    """Second clones of the course with the marker in their solutions, outside the class folder."""
    planted = []
    for base in extra_roots:
        if not (base.is_dir() and os.access(base, os.W_OK)):
            continue
        clone = Path(tempfile.mkdtemp(prefix="cicd-clone-", dir=base))
        shutil.copytree(REPO / "solutions" / ASSIGNMENT, clone / "solutions" / ASSIGNMENT)
        notebook = clone / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
        notebook.write_text(notebook.read_text().replace("### BEGIN HIDDEN TESTS", f"### BEGIN HIDDEN TESTS\\n# {MARKER}", 1))
        assert MARKER in notebook.read_text()
        for path in [clone, *clone.rglob("*")]:  # readable by anyone: only the sandbox may stop a reader
            path.chmod(0o755 if path.is_dir() else 0o644)
        planted.append(clone)
    return planted


DRIVER = """
import json, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from autograder import course
from autograder.config import ClassPaths
root = Path(sys.argv[2])
results = course.grade(ClassPaths(root / "repo", root / "class", root / "exchange"), sys.argv[3])
print(json.dumps({r.student: {"score": r.score, "error": r.error, "isolation": r.isolation} for r in results}))
"""


def grade_in_process(paths):
    saved = {k: os.environ.get(k) for k in LIMITS_ENV}
    os.environ.update(LIMITS_ENV)
    try:
        results = course.grade(paths, ASSIGNMENT)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return {r.student: {"score": r.score, "error": r.error, "isolation": r.isolation} for r in results}


def grade_as(user, root: Path):
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin", "HOME": str(root),
           "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1", **LIMITS_ENV}
    for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if name in os.environ:
            env[name] = os.environ[name]
    cmd = user.command([sys.executable, "-c", DRIVER, str(REPO), str(root), ASSIGNMENT], env)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"grading as {user.name} failed:\n{done.stderr[-3000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def class_template(tmp_path_factory):
    """The class, released and with its reference results, built once for both runs."""
    root = tmp_path_factory.mktemp("sandbox-class")
    course.prepare_reference(build_class(root), ASSIGNMENT)
    return root


@pytest.fixture(scope="module", params=["root", "unprivileged"])
def attacked_class(request, throwaway_user, class_template):
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    mode = request.param
    root = Path(tempfile.mkdtemp(prefix=f"cicd-sandbox-{mode}-"))
    clones = plant_solution_clones([Path(tempfile.gettempdir()), Path("/var/tmp"), Path("/srv"), Path("/opt")])
    try:
        shutil.copytree(class_template, root, dirs_exist_ok=True)
        paths = ClassPaths(root / "repo", root / "class", root / "exchange")
        clones += plant_solution_clones([paths.class_dir])  # inside the class folder too
        if mode == "root":
            if os.geteuid() != 0:
                pytest.skip("the suite runs unprivileged; the root path is tested where it runs as root")
            results = grade_in_process(paths)
        elif throwaway_user is None:  # the suite itself is unprivileged
            results = grade_in_process(paths)
        else:
            throwaway_user.own(root)
            results = grade_as(throwaway_user, root)
            # A killed kernel may take a moment to vanish; one that is still there after 10 s leaked.
            deadline = time.monotonic() + 10
            while throwaway_user.processes() and time.monotonic() < deadline:
                time.sleep(0.2)
            assert not throwaway_user.processes(), "the submissions left processes running"
        yield mode, paths, results
    finally:
        shutil.rmtree(root, ignore_errors=True)
        for clone in clones:
            shutil.rmtree(clone, ignore_errors=True)


def attack_output(paths, attack):
    """(text printed by the attacker's own cells, the incident the grader recorded or '')."""
    nb = nbformat.read(paths.autograded / WHERE[attack] / ASSIGNMENT / f"{ASSIGNMENT}.ipynb", as_version=4)
    text = "".join(o.get("text", "") for cell in nb.cells if cell.get("id", "").startswith("learner-cell")
                   for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    return text, nb.metadata.get("cicd_grading", {}).get("incident", "")


def printed(text, key):
    values = re.findall(rf"^{key} (.+)$", text, re.MULTILINE)
    return values[-1] if values else None


def test_every_submission_is_graded_after_the_attacks(attacked_class):
    mode, paths, results = attacked_class
    assert set(results) == set(SUBMISSIONS)
    for name, result in results.items():
        assert not result["error"], f"{mode}/{name}: {result['error']}"
        assert result["isolation"] == "bubblewrap"
        # The attack runs after every test cell: a grader that stayed in charge kept the points.
        assert result["score"] == pytest.approx(FULL), f"{mode}/{name} got {result['score']}"


def test_memory_is_capped_for_the_submission_as_a_whole(attacked_class):
    mode, paths, _ = attacked_class
    text, incident = attack_output(paths, "memory")
    held = printed(text, "HELD")
    if held is None:  # the whole submission was stopped: it must say why
        assert "memory" in incident or "died" in incident, f"{mode}: no output and no reason ({incident!r})"
    else:
        assert int(held) <= LIMITS.memory_bytes, f"{mode}: five processes held {int(held) / MiB:.0f} MiB at once"


def test_disk_written_is_capped_in_total(attacked_class):
    mode, paths, _ = attacked_class
    text, incident = attack_output(paths, "disk")
    wrote = printed(text, "WROTE")
    assert wrote is not None, f"{mode}: the disk attack did not finish ({incident})"
    assert int(wrote) <= LIMITS.disk_bytes + LIMITS.shm_bytes, f"{mode}: wrote {int(wrote) / MiB:.0f} MiB"
    assert int(wrote) >= LIMITS.disk_bytes // 2, f"{mode}: the attack could not write at all ({wrote})"


def test_processes_are_capped(attacked_class):
    mode, paths, _ = attacked_class
    text, incident = attack_output(paths, "processes")
    started = printed(text, "STARTED")
    assert started is not None, f"{mode}: the process attack did not finish ({incident})"
    # Without a cgroup (unprivileged here) RLIMIT_NPROC counts every process and thread of the
    # user: the cap is the limit on top of what the grader itself ran when the kernel started, and
    # the grader's own threads that end later leave room. Still bounded: 420 got through before.
    bound = LIMITS.processes if mode == "root" else 2 * LIMITS.processes
    assert 0 < int(started) < bound, f"{mode}: started {started} processes"


def test_cpu_is_capped_for_all_processes_together(attacked_class):
    mode, paths, _ = attacked_class
    text, incident = attack_output(paths, "cpu")
    used = [float(v) for v in re.findall(r"^CPU (\S+)$", text, re.MULTILINE)]
    assert used, f"{mode}: the CPU attack printed nothing ({incident})"
    assert incident and "time limit" not in incident, f"{mode}: the burners used {used[-1]} s of CPU ({incident})"
    assert "CPU" in incident, f"{mode}: the grade must say which limit stopped the kernel ({incident})"
    assert used[-1] <= LIMITS.cpu_seconds + 2, f"{mode}: the burners used {used[-1]} s of CPU"


def test_a_walk_of_every_readable_file_finds_no_solutions(attacked_class):
    mode, paths, _ = attacked_class
    text, incident = attack_output(paths, "walk")
    assert printed(text, "FOUND") is not None, f"{mode}: the walk did not finish ({incident})"
    assert json.loads(printed(text, "FOUND")) == [], f"{mode}: found the solutions"
    assert int(printed(text, "SEARCHED")) > 5, "the walk read too few files to mean anything"
    allowed = {"bin", "sbin", "lib", "lib32", "lib64", "libx32", "usr", "etc", "proc", "dev", "tmp", "home", "run"} | \
        {Path(r).parts[1] for r in sandbox.python_roots()}
    assert set(json.loads(printed(text, "TOP"))) <= allowed, f"{mode}: unexpected folders at /"
    # Such a folder may exist only as the way to the Python environment (a venv under /var/tmp).
    python_tops = {"/" + Path(r).parts[1] for r in sandbox.python_roots()}
    assert set(json.loads(printed(text, "VISIBLE"))) <= python_tops, f"{mode}: folders outside the allow-list are visible"
    listing = json.loads(printed(text, "LISTING"))
    assert listing.get("home") in (None, ["learner"])
    for folder in ("/root", "/work"):  # only the Python installation, nothing around it
        for entry in listing.get(folder, []):
            assert any(r.startswith(f"{folder}/{entry}") for r in sandbox.python_roots()), f"{folder}/{entry} visible"


# --- the machinery, one part at a time ----------------------------------------------------------

def test_limits_come_from_the_environment_and_bad_values_say_what_to_do():
    limits = Limits.from_environment(LIMITS_ENV)
    assert (limits.memory_bytes, limits.processes, limits.disk_bytes, limits.cpu_seconds) == \
        (512 * MiB, 64, 64 * MiB, 5)
    assert Limits.from_environment({}).memory_bytes == 3 * 1024**3
    with pytest.raises(AutograderError, match="CICD_MEMORY_LIMIT must be a size such as 512M"):
        Limits.from_environment({"CICD_MEMORY_LIMIT": "lots"})
    with pytest.raises(AutograderError, match="CICD_PROCESS_LIMIT must be a positive whole number"):
        Limits.from_environment({"CICD_PROCESS_LIMIT": "-3"})


def test_the_sandbox_works_here_or_ci_fails():
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    assert sandbox.enforcement()["disk"][0]


def test_enforcement_report_names_what_is_not_held(throwaway_user):
    """As root here: cgroup v1 holds everything. Unprivileged without cgroups: memory and
    processes are named, each once, with the reason."""
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    kind, _ = sandbox.cgroup_support()
    report = sandbox.enforcement_report()
    assert (report == []) == bool(kind), report
    if throwaway_user is None:
        return
    probe = "import json, sys; sys.path.insert(0, sys.argv[1]); from autograder import sandbox; " \
            "print(json.dumps([sandbox.cgroup_support(), sandbox.enforcement_report()]))"
    cmd = throwaway_user.command([sys.executable, "-c", probe, str(REPO)], {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    (their_kind, why), their_report = json.loads(done.stdout.splitlines()[-1])
    if their_kind:
        assert their_report == []
    else:
        limits = sorted(line.split()[0] for line in their_report)
        assert limits == ["memory", "processes"], their_report
        assert all(why in line for line in their_report)


def run_in_sandbox(code: str, limits: Limits, folder: Path):
    """One cell in a sandboxed kernel, straight through nbclient: (outputs, kernel manager)."""
    class Manager(SandboxedKernelManager):
        sandbox = Sandbox(limits=limits)
        made_cgroup = None

        def format_kernel_cmd(self, extra_arguments=None):
            self.made_cgroup = self._cgroup  # to check afterwards that it was removed
            return super().format_kernel_cmd(extra_arguments)
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    client = NotebookClient(nb, kernel_manager_class=Manager, timeout=30, allow_errors=True,
                            resources={"metadata": {"path": str(folder)}})
    km = client.create_kernel_manager()
    try:
        client.execute()
    except Exception as err:  # the kernel was stopped; the manager says why
        return [repr(err)], km
    return [o["text"] for o in nb.cells[0].outputs if o.get("output_type") == "stream"], km


def test_the_watchdog_stops_a_cpu_burner_and_says_which_limit(tmp_path):
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    limits = Limits(memory_bytes=LIMITS.memory_bytes, processes=64, disk_bytes=LIMITS.disk_bytes, cpu_seconds=2)
    outputs, km = run_in_sandbox(
        "import subprocess, sys, time\n"
        "burners = [subprocess.Popen([sys.executable, '-c', 'while True: pass']) for _ in range(3)]\n"
        "time.sleep(20)\nprint('survived')", limits, tmp_path)
    assert "survived" not in "".join(outputs)
    assert "CPU time" in km.limit_exceeded and "2 s" in km.limit_exceeded, km.limit_exceeded


def assert_nothing_left(km):
    assert not km._scratch.exists(), "the scratch folder was left behind"
    kind, _ = sandbox.cgroup_support()
    assert (km.made_cgroup is not None) == bool(kind)
    folders = list(getattr(km.made_cgroup, "folders", {}).values()) + [getattr(km.made_cgroup, "folder", None)]
    assert not [f for f in folders if f is not None and f.exists()], "the submission's cgroup was left behind"


def test_a_kernel_that_kills_itself_leaves_nothing_behind(tmp_path):
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    outputs, km = run_in_sandbox("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", LIMITS, tmp_path)
    assert "DeadKernelError" in "".join(outputs)
    assert_nothing_left(km)


def test_the_kernel_works_in_a_copy_and_leaves_nothing_behind(tmp_path):
    """It sees its assignment files in a scratch copy; what it writes never reaches the host,
    and its cgroup and scratch folder are gone afterwards."""
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    (tmp_path / "data.csv").write_text("a,b\n1,2\n")
    (tmp_path / "helper_module.py").write_text("VALUE = 7\n")
    outputs, km = run_in_sandbox(
        "import os, sys, pandas, helper_module\n"
        "print(len(pandas.read_csv('data.csv')), os.getcwd(), helper_module.VALUE, sys.modules.get('debugpy'))\n"
        "open('data.csv', 'w').write('gone')\nopen('new.txt', 'w').write('x')", LIMITS, tmp_path)
    # A module beside the notebook imports (as under ipykernel_launcher); no debugger was loaded.
    assert outputs == [f"1 /home/learner/{tmp_path.name} 7 None\n"], outputs
    assert (tmp_path / "data.csv").read_text() == "a,b\n1,2\n" and not (tmp_path / "new.txt").exists()
    assert_nothing_left(km)


def test_writing_into_the_socket_folder_stops_the_kernel(tmp_path):
    """The socket folder is on the host's disk, so the kernel must not fill it (it knows our source)."""
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    outputs, km = run_in_sandbox(
        "import time\npiece = b'x' * (8 * 1024**2)\n"
        "for i in range(400):\n    open(f'/run/cicd-ipc/fill-{i}', 'wb').write(piece)\n    time.sleep(0.01)\n"
        "print('wrote 3.2 GB')", LIMITS, tmp_path)
    assert "wrote 3.2 GB" not in "".join(outputs)
    assert "folder it shares with the grader" in km.limit_exceeded, km.limit_exceeded


def test_empty_folders_in_the_socket_folder_stop_the_kernel_too(tmp_path):
    """Only file sizes were counted: empty folders (a block and an inode of the host's disk each)
    could be made without end, and walking them slowed every later look of the watchdog."""
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    outputs, km = run_in_sandbox(
        "import os\nfor i in range(20000):\n    os.mkdir(f'/run/cicd-ipc/d{i}')\n"
        "import time\ntime.sleep(2)\nprint('made 20000 folders')", LIMITS, tmp_path)
    assert "made 20000 folders" not in "".join(outputs)
    assert "folder it shares with the grader" in km.limit_exceeded, km.limit_exceeded


def test_what_ci_needs_is_a_failure_there_and_a_skip_elsewhere(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true, so this is a failure"):
        skip_or_fail("bubblewrap is missing")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        skip_or_fail("bubblewrap is missing")


def test_a_course_kept_inside_a_shared_system_folder_stays_hidden(tmp_path):
    """The allow-list shows /usr; a clone kept under /usr/local is still hidden when the grader
    names it (course.hidden_from_students names the repository, class folder and exchange)."""
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    if not os.access("/usr/local/share", os.W_OK):
        pytest.skip("/usr/local/share is not writable by this user")
    clone = Path(tempfile.mkdtemp(prefix="cicd-clone-", dir="/usr/local/share"))
    try:
        (clone / "solution.ipynb").write_text(MARKER)
        clone.chmod(0o755)
        (clone / "solution.ipynb").chmod(0o644)
        probe = ["/bin/sh", "-c", f"cat {clone}/solution.ipynb; ls /usr/local/share | grep -c cicd-clone || true"]
        (tmp_path / "work").mkdir()
        shown = subprocess.run(Sandbox(limits=LIMITS).command(probe, tmp_path / "work", "/home/learner/w", tmp_path),
                               capture_output=True, text=True, timeout=60)
        hidden = subprocess.run(Sandbox(hide=[str(clone)], limits=LIMITS).command(
            probe, tmp_path / "work", "/home/learner/w", tmp_path), capture_output=True, text=True, timeout=60)
        assert MARKER in shown.stdout  # the attack works when the clone is not named
        assert MARKER not in hidden.stdout and hidden.returncode == 0, hidden.stderr
    finally:
        shutil.rmtree(clone, ignore_errors=True)


def test_a_cell_time_limit_says_which_cell_and_how_long():
    """The instructor and the learner read which cell was stopped and after how long, not only
    that a limit was hit."""
    from nbclient.exceptions import CellTimeoutError
    from autograder.preprocessors import _incident
    message = _incident(CellTimeoutError("A cell timed out while it was being executed, after 60 seconds."),
                        60, "train-model")
    assert "time limit of 60 s per cell" in message and "cell 'train-model'" in message
    assert "later cells did not run" in message
    assert "a cell was still running" in _incident(TimeoutError("timed out"), None, None)


def test_cells_that_sleep_cannot_add_up_past_the_notebooks_total_time(tmp_path):
    """Sleeping costs no CPU, and each cell stayed under the cell timeout: a learner's extra cells
    could hold the grader (and the class queued behind it) for as long as they liked."""
    from nbformat.v4 import new_code_cell, new_notebook
    from autograder.preprocessors import GuardedExecute
    nb = new_notebook(cells=[new_code_cell(f"import time\ntime.sleep(3)\nprint('cell {i}')") for i in range(4)])
    runner = GuardedExecute(timeout=5, total_timeout=7, isolate=isolation_status() == "bubblewrap")
    runner.preprocess(nb, {"metadata": {"path": str(tmp_path)}})
    printed = [o.get("text", "") for c in nb.cells for o in c.outputs]
    assert "cell 0\n" in printed and "cell 3\n" not in printed, printed
    assert "total time limit of 7 s" in nb.metadata["cicd_grading"]["incident"], nb.metadata


def test_the_sandbox_init_holds_none_of_the_graders_environment(tmp_path):
    """--clearenv empties the kernel's environment, not bubblewrap's own: bubblewrap stays as pid 1
    of the sandbox, and as an unprivileged instructor (same uid) the kernel read the grader's whole
    environment, tokens included, from /proc/1/environ."""
    if isolation_status() != "bubblewrap":
        skip_or_fail(f"the sandbox is unusable here: {isolation_status()}")
    (tmp_path / "work").mkdir()
    probe = ["/bin/sh", "-c", "sleep 3"]
    started = subprocess.Popen(Sandbox(limits=LIMITS).command(probe, tmp_path / "work", "/home/learner/w", tmp_path),
                               env={**os.environ, "CICD_PROBE_SECRET": "s3cr3t"})
    try:
        for _ in range(100):  # until `env -i` (if any) has become bubblewrap
            if Path(f"/proc/{started.pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"bwrap"):
                break
            subprocess.run(["sleep", "0.05"])
        assert b"CICD_PROBE_SECRET" not in Path(f"/proc/{started.pid}/environ").read_bytes()
    finally:
        started.wait(timeout=60)


def test_a_process_that_has_exited_holds_no_memory():
    """The watchdog sums the memory of a sandbox's processes; one that ended between two looks
    (a `sleep` forked from the kernel) must count for nothing, not for its last resident size."""
    from autograder.sandbox import _proportional_memory
    gone = subprocess.Popen(["true"])
    gone.wait()
    assert _proportional_memory(gone.pid, 10**9) == 0
    assert 0 < _proportional_memory(os.getpid(), 10**9) < 10**9  # a live process: its own Pss


def test_a_forked_kernel_keeps_nothing_of_the_server_and_no_privilege(attacked_class):
    """Kernels are forked from a server that imported their modules (kernel_forks.py): the kernel
    has no capability, no file or socket of the server, the sandbox's init for a parent, and
    cannot trace the sandbox's other processes."""
    mode, paths, _ = attacked_class
    text, incident = attack_output(paths, "forked")
    assert printed(text, "SOCKETS") is not None, f"{mode}: the probe did not finish ({incident})"
    # Forked, not started from nothing: the process is the server's (python -c <its source>).
    assert json.loads(printed(text, "COMMAND")).startswith('"""The fork server'), f"{mode}: not forked"
    assert json.loads(printed(text, "CAPABILITIES")) == ["0000000000000000"] * 5, mode
    assert printed(text, "NO_NEW_PRIVS") == "1", mode
    assert printed(text, "PARENT") == "1", f"{mode}: the kernel is not a child of the sandbox's init"
    files = json.loads(printed(text, "FILES"))
    assert all(f == "/dev/null" or f.startswith("/home/learner/") for f in files), f"{mode}: {files}"
    named = [name for name in json.loads(printed(text, "SOCKETS")) if name]  # socketpairs have none
    assert named and all(name.startswith(f"{sandbox.IPC_INSIDE}/") for name in named), f"{mode}: {named}"
    # Its sandbox holds bubblewrap's init (pid 1) and the waiting program. The waiting program
    # cannot be traced. Bubblewrap's init, under an unprivileged grader, can, whichever way the
    # kernel started: it runs as the kernel's user, without capabilities or files of the grader.
    traced = json.loads(printed(text, "TRACED"))
    assert set(traced) <= (set() if mode == "root" else {1}), f"{mode}: traced {traced}"
