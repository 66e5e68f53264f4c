"""The course on a real multi-user JupyterHub, end to end, on loopback only.

Three throwaway Unix users (one instructor, two learners) log into a real JupyterHub started
from docs/jupyterhub/jupyterhub_config.py, each with their own server spawned through the Hub
API. The instructor releases an exercise with our CLI; each learner fetches it, answers it and
submits it through the Assignment List endpoints of their own server; one learner also plants
a submission under the other's name. The instructor collects, grades and releases feedback;
each learner fetches their own. Then the boundaries are checked: feedback reaches only its
owner, a learner reaches neither another's server nor the Formgrader, the impersonation is
refused, and a learner's server holds no solutions.

Needs root (to create users), JupyterHub and configurable-http-proxy, and a Python that every
user can read. Without them it skips; under CI=true it fails instead. Users and processes are
removed by id afterwards, and every wait is bounded.
"""
from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from autograder import samples
from conftest import free_port, skip_or_fail

REPO = Path(__file__).resolve().parent.parent
HUB_CONFIG = REPO / "docs" / "jupyterhub" / "jupyterhub_config.py"
COURSE_ID = "cicd-for-models"
ASSIGNMENT = "ex02_data_gate"
ENV_BIN = Path(sys.executable).parent


def _preconditions():
    if os.geteuid() != 0:
        skip_or_fail("needs root to create throwaway Unix users")
    if not (ENV_BIN / "jupyterhub").exists():
        skip_or_fail("jupyterhub is not installed in this environment (it is in requirements.txt)")
    if shutil.which("configurable-http-proxy") is None:
        skip_or_fail("configurable-http-proxy is not on PATH (npm install -g configurable-http-proxy)")
    probe = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-c", "pass"],
                           capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        skip_or_fail("this environment's Python cannot be used by other users (build the virtual "
                     "environment from a Python every user can read, e.g. /usr/bin/python3): "
                     + (probe.stderr.strip().splitlines() or ["?"])[-1])


T0 = time.monotonic()


def mark(what):
    print(f'[{time.monotonic() - T0:6.1f}s] {what}', flush=True)


def wait_for(condition, what: str, timeout: float = 90, interval: float = 0.5):
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = condition()
        except (urllib.error.URLError, ConnectionError, OSError) as err:
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last: {last!r})")


class Hub:
    """A running hub, its URL and an admin service token."""

    def __init__(self, url: str, token: str):
        self.url, self.token = url, token

    def request(self, method: str, path: str, token: str | None = None, body=None, timeout: float = 60):
        """(status, parsed JSON or text) of one HTTP request to the hub's public URL."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Authorization", f"token {token or self.token}")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as err:
            status, raw = err.code, err.read()
        try:
            return status, json.loads(raw or b"null")
        except json.JSONDecodeError:
            return status, raw.decode("utf-8", "replace")

    def api(self, method: str, path: str, body=None):
        status, payload = self.request(method, "/hub/api" + path, body=body)
        assert status < 400, f"Hub API {method} {path}: {status} {payload}"
        return payload


def _as_user(user: str, *cmd: str) -> list[str]:
    """`cmd` as `user`, with a clean environment like a login's (and this environment's Python)."""
    home = pwd.getpwnam(user).pw_dir
    environment = {"HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8",
                   "PATH": f"{ENV_BIN}:/usr/local/bin:/usr/bin:/bin"}
    return ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in environment.items()), *cmd]


def _run_as(user: str, *cmd: str, cwd: Path | None = None, timeout: float = 300):
    return subprocess.run(_as_user(user, *cmd), cwd=cwd or pwd.getpwnam(user).pw_dir,
                          capture_output=True, text=True, timeout=timeout)


def _chown_tree(path: Path, user: str) -> None:
    entry = pwd.getpwnam(user)
    for item in [path, *path.rglob("*")]:
        os.chown(item, entry.pw_uid, entry.pw_gid, follow_symlinks=False)


@pytest.fixture(scope="module")
def classroom():
    """Users, folders and a running hub with every user's server spawned; torn down by id."""
    _preconditions()
    mark('preconditions')
    tag = secrets.token_hex(3)
    users = {"instructor": f"ci{tag}teach", "ann": f"ci{tag}ann", "bob": f"ci{tag}bob"}
    base = Path(tempfile.mkdtemp(prefix="cicd-hub-"))
    base.chmod(0o755)
    hub_process = release = None
    created = []
    try:
        for name in users.values():
            subprocess.run(["useradd", "--create-home", "--shell", "/bin/bash", name], check=True,
                           capture_output=True, timeout=30)
            created.append(name)
            Path(pwd.getpwnam(name).pw_dir).chmod(0o700)
        teacher = users["instructor"]
        teacher_home = Path(pwd.getpwnam(teacher).pw_dir)

        # The instructor's private copy of the course repository, and the class folder.
        course_repo = teacher_home / "cicd-course"
        for folder in ("autograder", "solutions", "course"):
            shutil.copytree(REPO / folder, course_repo / folder,
                            ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        shutil.copy2(REPO / "nbgrader_config.py", course_repo / "nbgrader_config.py")
        class_dir = teacher_home / "class"
        class_dir.mkdir()
        _chown_tree(teacher_home, teacher)

        # The shared exchange: the instructor owns it; nbgrader sets up the course folders in it.
        exchange = base / "exchange"
        exchange.mkdir()
        exchange.chmod(0o755)
        _chown_tree(exchange, teacher)
        # The instructor releases the exercise while the hub starts (neither needs the other).
        release = _teacher_process(teacher, course_repo, class_dir, exchange, "release", ASSIGNMENT)

        # What the hub hands every learner: the learner's copy, built by one command.
        handout = base / "handout"
        done = subprocess.run([sys.executable, "-m", "autograder", "handout", str(handout)],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        for who in ("ann", "bob"):
            target = Path(pwd.getpwnam(users[who]).pw_dir) / "cicd-course"
            shutil.copytree(handout, target)
            _chown_tree(target, users[who])

        # Per-kind Jupyter configuration (as docs/deploy-jupyterhub.md shows).
        learner_config = base / "learner-config"
        instructor_config = base / "instructor-config"
        for folder in (learner_config, instructor_config):
            folder.mkdir()
            (folder / "nbgrader_config.py").write_text(
                "c = get_config()\n"
                f"c.CourseDirectory.course_id = {COURSE_ID!r}\n"
                f"c.Exchange.root = {str(exchange)!r}\n"
                "c.Exchange.path_includes_course = True\n")
        (learner_config / "jupyter_server_config.json").write_text(json.dumps({"ServerApp": {"jpserver_extensions": {
            "nbgrader.server_extensions.formgrader": False,
            "nbgrader.server_extensions.create_assignment": False}}}))
        for folder in (base / "learner-config", base / "instructor-config"):
            folder.chmod(0o755)

        # The hub: the documented config file, with a test's ports, password and admin token.
        port, hub_port, proxy_port = free_port(), free_port(), free_port()
        token = secrets.token_hex(24)
        password = secrets.token_hex(12)
        runtime = base / "hub"
        runtime.mkdir()
        (runtime / "test_config.py").write_text(
            f"load_subconfig({str(HUB_CONFIG)!r})\n"
            "c.JupyterHub.authenticator_class = 'shared-password'\n"
            f"c.SharedPasswordAuthenticator.user_password = {password!r}\n"
            f"c.JupyterHub.db_url = 'sqlite:///{runtime / 'jupyterhub.sqlite'}'\n"
            f"c.JupyterHub.cookie_secret_file = {str(runtime / 'cookie_secret')!r}\n"
            f"c.ConfigurableHTTPProxy.pid_file = {str(runtime / 'proxy.pid')!r}\n"
            "c.JupyterHub.services = [{'name': 'e2e', 'api_token': %r}]\n" % token +
            "c.JupyterHub.load_roles = [{'name': 'e2e', 'services': ['e2e'], 'scopes': "
            "['admin:users', 'admin:servers', 'tokens', 'read:users', 'access:servers']}]\n")
        env = {**os.environ,
               "PATH": f"{ENV_BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "CICD_HUB_URL": f"http://127.0.0.1:{port}",
               "CICD_HUB_INTERNAL_URL": f"http://127.0.0.1:{hub_port}",
               "CICD_HUB_PROXY_API_URL": f"http://127.0.0.1:{proxy_port}",
               "CICD_HUB_EXCHANGE": str(exchange),
               "CICD_HUB_INSTRUCTORS": teacher,
               "CICD_HUB_LEARNERS": f"{users['ann']} {users['bob']}",
               "CICD_HUB_LEARNER_CONFIG": str(learner_config),
               "CICD_HUB_INSTRUCTOR_CONFIG": str(instructor_config),
               "CICD_HUB_CLASS_DIR": str(class_dir),
               "CICD_HUB_COURSE_REPO": str(course_repo),
               "CONFIGPROXY_AUTH_TOKEN": secrets.token_hex(16)}
        log = open(runtime / "hub.log", "wb")
        # Its own session, so that SIGINT at the end reaches the hub and it stops its servers.
        hub_process = subprocess.Popen([str(ENV_BIN / "jupyterhub"), "-f", str(runtime / "test_config.py")],
                                       cwd=runtime, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        hub = Hub(f"http://127.0.0.1:{port}", token)

        def hub_up():
            if hub_process.poll() is not None:
                pytest.fail(f"the hub exited ({hub_process.returncode}): "
                            + (runtime / "hub.log").read_text()[-2000:])
            return hub.request("GET", "/hub/api/")[0] == 200
        wait_for(hub_up, "the hub to answer")
        mark('hub up')

        for name in users.values():
            hub.api("POST", f"/users/{name}/server")

        def all_ready():
            return all((hub.api("GET", f"/users/{name}").get("servers", {}).get("", {}) or {}).get("ready")
                       for name in users.values())
        wait_for(all_ready, "every user's server to be ready", timeout=150)
        mark('servers ready')
        tokens = {who: hub.api("POST", f"/users/{name}/tokens", {"expires_in": 900, "note": "e2e"})["token"]
                  for who, name in users.items()}
        yield {"release": release, "hub": hub, "users": users, "tokens": tokens, "exchange": exchange, "class_dir": class_dir,
               "course_repo": course_repo, "base": base, "log": runtime / "hub.log"}
    finally:
        if release is not None and release.poll() is None:
            release.kill()
            release.wait(timeout=10)
        if hub_process is not None and hub_process.poll() is None:
            os.killpg(hub_process.pid, signal.SIGINT)
            try:
                hub_process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(hub_process.pid, signal.SIGKILL)
                hub_process.wait(timeout=10)
        for name in created:
            uid = pwd.getpwnam(name).pw_uid
            subprocess.run(["pkill", "-KILL", "-U", str(uid)], capture_output=True, timeout=10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and subprocess.run(
                    ["pgrep", "-U", str(uid)], capture_output=True).returncode == 0:
                time.sleep(0.2)
            subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=30)
        shutil.rmtree(base, ignore_errors=True)


def _action(room, who: str, action: str) -> object:
    """POST one Assignment List action (fetch, submit, fetch_feedback) to the learner's own server."""
    name = room["users"][who]
    status, payload = room["hub"].request(
        "POST", f"/user/{name}/assignments/{action}", token=room["tokens"][who],
        body={"course_id": COURSE_ID, "assignment_id": ASSIGNMENT}, timeout=120)
    assert status == 200, f"{action} as {who}: {status} {payload}"
    return payload


def _teacher_command(user: str, class_dir: Path, exchange: Path, *args: str) -> list[str]:
    return _as_user(user, str(ENV_BIN / "python"), "-m", "autograder", *args,
                    "--class-dir", str(class_dir), "--exchange", str(exchange))


def _teacher_process(user: str, course_repo: Path, class_dir: Path, exchange: Path, *args: str):
    """The instructor's CLI started in the background, in the instructor's course repository."""
    return subprocess.Popen(_teacher_command(user, class_dir, exchange, *args), cwd=course_repo,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _teacher(room, *args: str):
    """The instructor's CLI, run to the end: `python -m autograder ARGS` as the instructor."""
    return subprocess.run(_teacher_command(room["users"]["instructor"], room["class_dir"], room["exchange"], *args),
                          cwd=room["course_repo"], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def graded(classroom):
    """The whole day: release, fetch, answer, submit (plus one impersonation), collect, grade, feedback."""
    room = classroom
    stdout, stderr = room["release"].communicate(timeout=300)
    assert room["release"].returncode == 0, f"release failed: {stderr}"
    mark('released')

    answers = {"ann": "correct", "bob": "partial"}
    released = room["course_repo"] / "course" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    source = room["course_repo"] / "solutions" / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    for who, case in answers.items():
        name = room["users"][who]
        _action(room, who, "fetch")
        path = f"{COURSE_ID}/{ASSIGNMENT}/{ASSIGNMENT}.ipynb"
        status, model = room["hub"].request("GET", f"/user/{name}/api/contents/{path}", token=room["tokens"][who])
        assert status == 200, f"{who} has no fetched notebook at ~/{path}: {status} {model}"
        answered = samples.build(samples.load(ASSIGNMENT, case), released, source)
        status, saved = room["hub"].request("PUT", f"/user/{name}/api/contents/{path}", token=room["tokens"][who],
                                            body={"type": "notebook", "format": "json", "content": answered})
        assert status in (200, 201), f"saving {who}'s answer: {status} {saved}"
        _action(room, who, "submit")
        mark('submitted')

    # Ann plants a submission under Bob's name, newer than his, straight into the inbound folder.
    inbound = room["exchange"] / COURSE_ID / "inbound"
    planted = f"{room['users']['bob']}+{ASSIGNMENT}+2099-01-01 00:00:00.000000 UTC+forged"
    script = ("import pathlib, shutil, sys\n"
              "target = pathlib.Path(sys.argv[1]) / sys.argv[2]\n"
              "target.mkdir()\n"
              "shutil.copy(sys.argv[3], target / sys.argv[4])\n"
              "(target / 'timestamp.txt').write_text('2099-01-01 00:00:00.000000 UTC')\n")
    ann_home = Path(pwd.getpwnam(room["users"]["ann"]).pw_dir)
    ann_copy = ann_home / COURSE_ID / ASSIGNMENT / f"{ASSIGNMENT}.ipynb"
    done = _run_as(room["users"]["ann"], str(ENV_BIN / "python"), "-c", script, str(inbound), planted,
                   str(ann_copy), f"{ASSIGNMENT}.ipynb")
    assert done.returncode == 0, f"a learner could not write into inbound at all: {done.stderr}"

    collected = _teacher(room, "collect", ASSIGNMENT)
    assert collected.returncode == 0, collected.stderr
    mark('collected')
    grades = _teacher(room, "grade", ASSIGNMENT)
    mark('graded')
    feedback = _teacher(room, "feedback", ASSIGNMENT)
    assert feedback.returncode == 0, feedback.stderr
    mark('feedback')
    for who in answers:
        _action(room, who, "fetch_feedback")
    return {"collect": collected, "grade": grades, "feedback": feedback, "answers": answers, "planted": planted}


def _feedback_files(room, who: str) -> list[Path]:
    home = Path(pwd.getpwnam(room["users"][who]).pw_dir)
    return sorted(home.glob(f"{COURSE_ID}/{ASSIGNMENT}/feedback/*/*.html"))


def test_each_learner_is_graded_on_their_own_work(classroom, graded):
    table = graded["grade"].stdout
    for who, case in graded["answers"].items():
        expected = samples.load(ASSIGNMENT, case).expected_points
        line = next((row for row in table.splitlines() if row.startswith(classroom["users"][who] + " ")), "")
        assert f"{expected:g} / " in line, f"{who} ({case}) should score {expected:g}: {table}"


def test_a_submission_under_another_learners_name_is_refused(classroom, graded):
    report = graded["collect"].stdout + graded["collect"].stderr + graded["grade"].stdout
    assert "forged" in report or classroom["users"]["ann"] in report, \
        f"collect must say it refused the entry Ann planted under Bob's name: {report}"
    bob_submitted = classroom["class_dir"] / "submitted" / classroom["users"]["bob"] / ASSIGNMENT
    assert "2099" not in (bob_submitted / "timestamp.txt").read_text(), "Ann's forged entry was taken as Bob's"


def test_each_learner_receives_only_their_own_feedback(classroom, graded):
    for who in graded["answers"]:
        files = _feedback_files(classroom, who)
        assert len(files) == 1, f"{who} should have exactly one feedback file, found {files}"
        mine = classroom["class_dir"] / "feedback" / classroom["users"][who] / ASSIGNMENT / f"{ASSIGNMENT}.html"
        assert files[0].read_bytes() == mine.read_bytes(), f"{who} received feedback that is not theirs"
    assert _feedback_files(classroom, "ann")[0].read_bytes() != _feedback_files(classroom, "bob")[0].read_bytes()


def test_a_learner_reaches_neither_another_server_nor_the_formgrader(classroom, graded):
    hub, users, tokens = classroom["hub"], classroom["users"], classroom["tokens"]
    status, _ = hub.request("GET", f"/user/{users['bob']}/api/contents/", token=tokens["ann"])
    assert status in (403, 404), f"Ann reached Bob's server: {status}"
    status, _ = hub.request("GET", f"/user/{users['instructor']}/formgrader/", token=tokens["ann"])
    assert status in (403, 404), f"Ann reached the instructor's Formgrader: {status}"
    status, _ = hub.request("GET", f"/user/{users['ann']}/formgrader/", token=tokens["ann"])
    assert status == 404, f"a learner's own server must not run the Formgrader: {status}"
    # The instructor's own Formgrader is there, so the refusals above are not a broken URL.
    status, _ = hub.request("GET", f"/user/{users['instructor']}/formgrader/", token=tokens["instructor"])
    assert status == 200, f"the instructor's Formgrader should answer: {status}"
    peek = _run_as(users["ann"], "ls", str(classroom["course_repo"]))
    assert peek.returncode != 0, "a learner can list the instructor's course repository"
    peek = _run_as(users["ann"], "ls", str(classroom["exchange"] / COURSE_ID / "inbound"))
    assert peek.returncode != 0, "a learner can list everyone's submissions in the inbound folder"


def test_a_learners_server_holds_no_solutions(classroom, graded):
    hub, users, tokens = classroom["hub"], classroom["users"], classroom["tokens"]
    seen, queue = [], [""]
    while queue:
        folder = queue.pop()
        status, listing = hub.request("GET", f"/user/{users['ann']}/api/contents/{folder}", token=tokens["ann"])
        assert status == 200, f"listing {folder!r}: {status}"
        for entry in listing["content"]:
            seen.append(entry["path"])
            if entry["type"] == "directory" and entry["path"].count("/") < 3:
                queue.append(entry["path"])
    assert "cicd-course/course/00_start_here.ipynb" in seen, f"the learner's copy is missing: {seen[:20]}"
    assert not [p for p in seen if "solutions" in p.split("/") or "fixtures" in p.split("/")], seen
    for path in seen:
        if path.endswith(".ipynb"):
            status, model = hub.request("GET", f"/user/{users['ann']}/api/contents/{path}", token=tokens["ann"])
            text = json.dumps(model)
            assert "BEGIN HIDDEN TESTS" not in text and "BEGIN SOLUTION" not in text, path
