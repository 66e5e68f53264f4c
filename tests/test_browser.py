"""A learner's first minutes, in a real JupyterLab in a real Chromium.

`jupyter lab` started at the course root opens on the start page (the setting installed from
jupyter-defaults/, not a command-line flag); "Run All Cells" runs lesson 00 without an error and
prints the environment check's OK; an unanswered exercise shows the learner the
NotImplementedError they must replace, and nbgrader's Validate button is in the toolbar.

The server runs on a copy of course/ and data/ in a tmp folder, with its own Jupyter config, data,
settings, workspaces and runtime folders, so nothing is written into the repository or the home
folder and no personal setting changes what is tested. Without a browser (/usr/bin/chromium or
Playwright's own) the browser tests skip, and under CI=true they fail.
"""
import contextlib
import json
import os
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, jupyter_server, skip_or_fail

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
START_PAGE = "/lab/tree/course/00_start_here.ipynb"
TIMEOUT_MS = 60_000  # per wait; a normal run of the whole file takes about 25 s

# The notebook in front (another tab's kernel may already be idle).
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"
IDLE = f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']"
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A `jupyter lab` started at the root of a copy of the course, as a learner starts it."""
    root = tmp_path_factory.mktemp("lab")
    for folder in ("course", "data"):
        shutil.copytree(REPO / folder, root / folder,
                        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", ".scratch"))
    home = root.parent / f"{root.name}-jupyter"  # outside root_dir: not shown in the file browser
    dirs = {name: home / name for name in ("config", "data", "runtime", "settings", "workspaces")}
    for folder in dirs.values():
        folder.mkdir(parents=True)
    # No news or update pop-up over the notebook (the only test-only setting).
    notification = dirs["settings"] / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    notification.parent.mkdir(parents=True)
    notification.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "JUPYTER_CONFIG_DIR": str(dirs["config"]), "JUPYTER_DATA_DIR": str(dirs["data"]),
           "JUPYTER_RUNTIME_DIR": str(dirs["runtime"]), "JUPYTERLAB_SETTINGS_DIR": str(dirs["settings"]),
           "JUPYTERLAB_WORKSPACES_DIR": str(dirs["workspaces"]), "IPYTHONDIR": str(home / "ipython")}
    port = free_port()
    cmd = [sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}",
           "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token=", f"--ServerApp.root_dir={root}"]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    # The server stops within 15 s of SIGTERM, or is killed.
    with jupyter_server(cmd, root, env, home / "server.log", f"http://127.0.0.1:{port}/api/status", stop_within=15):
        yield f"http://127.0.0.1:{port}", root


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        skip_or_fail("playwright is not installed (pip install -r requirements.txt)")
    with sync_api.sync_playwright() as p:
        # Debian's chromium, else the one `python -m playwright install chromium` downloaded.
        executable = CHROMIUM if CHROMIUM.exists() else Path(p.chromium.executable_path)
        if not executable.exists():
            skip_or_fail(f"no browser: neither {CHROMIUM} (apt-get install chromium) nor Playwright's "
                         f"{executable} (python -m playwright install chromium)")
        # Playwright adds --headless and a fresh temporary --user-data-dir itself.
        chromium = p.chromium.launch(executable_path=str(executable), headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser):
    """A page in a fresh browser context."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    try:
        yield context.new_page()
    finally:
        context.close()


@contextlib.contextmanager
def screenshot_on_failure(page, path: Path):
    """On any failure (playwright's TimeoutError included), a screenshot named in the assertion message."""
    try:
        yield
    except Exception as failure:
        try:
            page.screenshot(path=str(path), full_page=True)
            where = f"screenshot: {path}"
        except Exception as err:  # noqa: BLE001 - the original failure matters more
            where = f"no screenshot ({err})"
        raise AssertionError(f"{failure}\n{where}") from failure


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def test_root_redirects_to_the_start_page(lab):
    """The default URL comes from the installed jupyter-defaults setting (nothing on the command line)."""
    base, _ = lab
    with pytest.raises(urllib.error.HTTPError) as redirect:
        urllib.request.build_opener(NoRedirect).open(f"{base}/", timeout=10)
    assert redirect.value.code in (301, 302, 303, 307, 308), f"/ answered {redirect.value.code}"
    location = redirect.value.headers["Location"]
    assert location.split("?")[0].endswith(START_PAGE), (
        f"/ redirects to {location}, not {START_PAGE}: is ./jupyter-defaults installed (requirements.txt)?")


# Ready only when the kernel is connected: before the session starts, the execution indicator
# already says idle while the kernel is "No Kernel", and Run All Cells then asks to select a kernel.
KERNEL_READY_JS = """(panel) => {
  const p = document.querySelector(panel);
  const indicator = p && p.querySelector('.jp-Notebook-ExecutionIndicator');
  const name = p && p.querySelector('.jp-Toolbar-kernelName');
  const status = [...document.querySelectorAll('.jp-StatusBar-Item .jp-StatusBar-TextItem')]
    .map(e => e.textContent.trim()).find(t => t.includes(' | '));
  return !!(indicator && indicator.getAttribute('data-status') === 'idle' && name
            && !/No Kernel/.test(name.textContent) && status && / [|] Idle$/.test(status));
}"""


def run_all_cells(page):
    """Run > Run All Cells, once the kernel of the notebook in front is connected and idle."""
    page.wait_for_function(KERNEL_READY_JS, arg=PANEL, polling=100)
    dialogs = page.locator(".jp-Dialog")
    assert dialogs.count() == 0, f"a dialog is open before running: {dialogs.first.text_content()}"
    page.locator("li.lm-MenuBar-item").filter(has_text=re.compile(r"^\s*Run\s*$")).first.click()
    page.locator("li.lm-Menu-item .lm-Menu-itemLabel").filter(
        has_text=re.compile(r"^\s*Run All Cells\s*$")).first.click()


# Off-screen cells have an empty innerText (windowing): read textContent throughout.
STATE_JS = """([panel, stderr]) => {
  const p = document.querySelector(panel);
  if (!p) return null;
  const indicator = p.querySelector('.jp-Notebook-ExecutionIndicator');
  return {
    status: indicator ? indicator.getAttribute('data-status') : null,
    cells: p.querySelectorAll('.jp-Notebook .jp-Cell').length,
    dialog: [...document.querySelectorAll('.jp-Dialog')].map(e => e.textContent.trim()).join(' | '),
    prompts: [...p.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(e => e.textContent.trim()),
    stderr: [...p.querySelectorAll(stderr)].map(e => e.textContent),
    stdout: [...p.querySelectorAll('.jp-OutputArea-output')].map(e => e.textContent).join('\\n'),
  };
}"""


def wait_until_done(page, done, what: str, timeout_s: float = 60):
    """Poll the notebook in front until `done(state)`, the kernel is idle and no cell shows [*]."""
    deadline = time.monotonic() + timeout_s
    state = None
    while time.monotonic() < deadline:
        state = page.evaluate(STATE_JS, [PANEL, STDERR])
        if state and state["dialog"]:
            raise AssertionError(f"{what}: a dialog opened: {state['dialog'][:300]}")
        if (state and state["status"] == "idle" and "[*]:" not in state["prompts"] and done(state)):
            return state
        time.sleep(0.25)
    raise AssertionError(f"{what} within {timeout_s:.0f} s; last state: "
                         f"{ {k: v for k, v in (state or {}).items() if k != 'stdout'} }")


def errors_in(state) -> list[str]:
    """Tracebacks and error messages (an error output renders as stderr text with its ename)."""
    return [text for text in state["stderr"] if "Traceback" in text or "Error" in text]


def finished(n_code: int):
    """Run All Cells is over: every code cell has a number, or it stopped at an error."""
    return lambda state: bool(errors_in(state)) or (
        len(state["prompts"]) == n_code and all(re.fullmatch(r"\[\d+\]:", p) for p in state["prompts"]))


def code_cell_count(path: Path) -> tuple[int, int]:
    cells = json.loads(path.read_text())["cells"]
    return len(cells), sum(c["cell_type"] == "code" for c in cells)


def test_start_page_opens_and_runs_all_cells_without_errors(lab, page, tmp_path):
    base, root = lab
    n_cells, n_code = code_cell_count(root / "course" / "00_start_here.ipynb")
    with screenshot_on_failure(page, tmp_path / "start_page.png"):
        page.goto(base + "/", wait_until="domcontentloaded")
        page.locator(".lm-DockPanel .lm-TabBar-tab.lm-mod-current").filter(
            has_text="00_start_here.ipynb").first.wait_for()
        assert page.url.split("?")[0].endswith(START_PAGE), f"/ opened {page.url}"
        run_all_cells(page)
        state = wait_until_done(page, finished(n_code), "not every code cell of 00_start_here.ipynb ran")
        errors = errors_in(state)
        assert not errors, f"lesson 00 shows an error when run in JupyterLab:\n{errors[0][:2000]}"
        assert state["cells"] == n_cells, f"{state['cells']} of {n_cells} cells are in the page"
        assert "environment OK" in state["stdout"], (
            "the environment check did not print 'environment OK'; outputs:\n" + state["stdout"][:2000])


def exercise_notebook(root: Path) -> Path | None:
    preferred = root / "course" / "ex02_data_gate" / "ex02_data_gate.ipynb"
    if preferred.exists():
        return preferred
    return next(iter(sorted((root / "course").glob("ex*/ex*.ipynb"))), None)


def test_unanswered_exercise_shows_not_implemented_and_validate_button(lab, page, tmp_path):
    base, root = lab
    notebook = exercise_notebook(root)
    if notebook is None:
        pytest.skip("no released exercise (course/ex*/ex*.ipynb) yet")
    relative = notebook.relative_to(root).as_posix()
    _, n_code = code_cell_count(notebook)
    with screenshot_on_failure(page, tmp_path / "exercise.png"):
        # Its own workspace, so the start page's tab and kernel are not restored next to it.
        page.goto(f"{base}/lab/workspaces/exercise/tree/{relative}", wait_until="domcontentloaded")
        page.locator(".lm-DockPanel .lm-TabBar-tab.lm-mod-current").filter(has_text=notebook.name).first.wait_for()
        validate = page.locator(f"{PANEL} .jp-Toolbar .validate-button")
        validate.first.wait_for()
        assert "Validate" in validate.first.text_content(), "nbgrader's Validate button has no label"
        run_all_cells(page)  # JupyterLab stops at the first error: the stub in an answer cell
        state = wait_until_done(page, finished(n_code), f"Run All Cells did not finish on {notebook.name}")
        traceback = next((t for t in state["stderr"] if "NotImplementedError" in t), None)
        assert traceback, (f"the unanswered {notebook.name} ran without showing a NotImplementedError; "
                           f"errors shown: {[t[:300] for t in errors_in(state)]}")
        assert "raise NotImplementedError" in traceback, (
            "the NotImplementedError should come from an answer cell's stub:\n" + traceback[:2000])
