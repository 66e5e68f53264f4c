"""A learner's first minutes, in a real JupyterLab in a real Chromium.

`jupyter lab` started at the course root opens on the start page (the setting installed from
jupyter-defaults/); "Run All Cells" runs lesson 00 without an error; an unanswered exercise
shows the learner the NotImplementedError they must replace, and nbgrader's Validate button is
there. The server runs on a copy of course/ and data/, so nothing is written into the repository.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (CI installs it)")
START_PAGE = "/lab/tree/course/00_start_here.ipynb"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    for folder in ("course", "data"):
        shutil.copytree(REPO / folder, root / folder)
    port = free_port()
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(root / ".runtime"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", "--ServerApp.password=",
           f"--ServerApp.root_dir={root}", "--ServerApp.disable_check_xsrf=True",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (root / "server.log").open("w")
    server = subprocess.Popen(cmd, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    pytest.fail("JupyterLab did not start:\n" + (root / "server.log").read_text()[-3000:])
                time.sleep(0.5)
        yield base, root
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield chromium
        chromium.close()


def test_root_redirects_to_the_start_page(lab):
    base, _ = lab
    request = urllib.request.Request(f"{base}/")
    opener = urllib.request.build_opener(NoRedirect)
    with pytest.raises(urllib.error.HTTPError) as redirect:
        opener.open(request, timeout=10)
    location = redirect.value.headers["Location"]
    assert location.split("?")[0].endswith(START_PAGE), f"/ redirects to {location}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def run_all(page):
    # The kernel of the notebook in front (another tab's kernel may already be idle).
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook-ExecutionIndicator[data-status='idle']") \
        .first.wait_for(state="attached", timeout=60_000)
    time.sleep(1)
    page.keyboard.press("Escape")
    page.locator("li.lm-MenuBar-item", has_text="Run").first.click()
    page.locator("li.lm-Menu-item", has_text="Run All Cells").first.click()


def saved_after_running(page, path: Path, done, timeout_s=120):
    """Save the notebook from the browser until the saved file satisfies `done` (what the learner
    would see, read from disk rather than from a windowed DOM)."""
    import json
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1.5)
        page.keyboard.press("Control+s")
        time.sleep(0.5)
        try:
            nb = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if done(nb):
            return nb
    raise AssertionError(f"{path.name} did not reach the expected state within {timeout_s} s")


def all_ran(nb) -> bool:
    return all(c.get("execution_count") for c in nb["cells"] if c["cell_type"] == "code")


def output_texts(nb) -> str:
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")) + out.get("ename", "") + out.get("evalue", "")
                         + "".join(out.get("data", {}).get("text/plain", "")))
    return "\n".join(parts)


def test_lesson_00_opens_and_runs_without_errors(lab, browser, tmp_path):
    base, root = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(base + "/", wait_until="domcontentloaded")
        page.locator(".jp-mod-current .lm-TabBar-tabLabel", has_text="00_start_here.ipynb") \
            .or_(page.locator(".lm-TabBar-tab.jp-mod-current", has_text="00_start_here")).first \
            .wait_for(timeout=60_000)
        run_all(page)
        nb = saved_after_running(page, root / "course" / "00_start_here.ipynb", all_ran)
        errors = [o for c in nb["cells"] for o in c.get("outputs", [])
                  if o["output_type"] == "error" or o.get("name") == "stderr"]
        assert not errors, f"lesson 00 produced errors or warnings: {errors[:2]}"
        assert "OK" in output_texts(nb), "the environment check should say OK"
    except Exception:
        page.screenshot(path=str(tmp_path / "lesson00.png"), full_page=True)
        raise
    finally:
        page.close()


def test_unanswered_exercise_shows_what_to_do_and_validate_exists(lab, browser, tmp_path):
    base, root = lab
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto(base + "/lab/tree/course/ex02_data_gate/ex02_data_gate.ipynb", wait_until="domcontentloaded")
        page.locator(".lm-TabBar-tab", has_text="ex02_data_gate.ipynb").first.wait_for(timeout=60_000)
        run_all(page)  # JupyterLab stops at the first error: the learner's unanswered cell
        saved_after_running(page, root / "course" / "ex02_data_gate" / "ex02_data_gate.ipynb",
                            lambda nb: "NotImplementedError" in output_texts(nb))
        assert page.locator("button:has-text('Validate'), [title*='Validate' i]").count() > 0, \
            "nbgrader's Validate button is missing: is the lab extension enabled?"
    except Exception:
        page.screenshot(path=str(tmp_path / "ex02.png"), full_page=True)
        raise
    finally:
        page.close()
