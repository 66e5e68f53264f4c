"""ex06's script_runner: a run forked from a pre-imported helper must look exactly like
`python SCRIPT ARGS` (the tests of ex06 grade exit codes, streams and messages)."""
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
RUNNER = REPO / "course" / "pipeline" / "script_runner.py"

SCRIPTS = {
    "passes.py": "import sys\nprint('metrics f1=0.8')\nprint('a note', file=sys.stderr)\n",
    "exits_1.py": "import sys\nsys.exit(1)\n",
    "exits_300.py": "raise SystemExit(300)\n",
    "exits_with_text.py": "import sys\nsys.exit('gate FAILED: f1')\n",
    "crashes.py": "print('before')\n\ndef train():\n    raise ValueError('no rows')\n\ntrain()\n",
    "syntax_error.py": "def f(:\n    pass\n",
    "argparse_usage.py": "import argparse\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)\np.parse_args()\n",
    "signalled.py": "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n",
    "at_exit.py": "import atexit\natexit.register(lambda: print('bye'))\nprint('hi')\n",
    "sees_itself.py": ("import os, sys\nprint(sys.argv, __name__, __file__ == os.path.abspath('sees_itself.py'), "
                       "sys.path[0] == os.getcwd(), os.getcwd() == os.path.dirname(__file__))\n"),
    "reads_stdin.py": "import sys\nprint(repr(sys.stdin.read()))\n",
    # python waits for a script's threads before it exits, and only then runs atexit functions
    "waits_for_its_thread.py": ("import atexit, os, threading, time\natexit.register(lambda: print('atexit'))\n"
                                "threading.Timer(0.5, lambda: (print('thread done', flush=True), os._exit(3))).start()\n"
                                "print('main done')\n"),
    "interrupted.py": "raise KeyboardInterrupt\n",
    "exits_huge.py": "raise SystemExit(2**64 + 2)\n",
}


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    folder = tmp_path_factory.mktemp("scripts")
    for name, text in SCRIPTS.items():
        (folder / name).write_text(text)
    spec = importlib.util.spec_from_file_location("script_runner_under_test", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module, folder
    if module._helper is not None:
        module._helper.kill()


@pytest.mark.parametrize("script", [*SCRIPTS, "does_not_exist.py"])
def test_a_forked_run_is_indistinguishable_from_python_script(runner, script, monkeypatch):
    module, folder = runner
    monkeypatch.chdir(folder)
    args = ["--data", "a b.csv"]
    plain = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    forked = module.run_script(script, args)
    assert forked == (plain.returncode, plain.stdout, plain.stderr)
    assert module._helper is not None and module._helper.poll() is None, "the run should use the helper"


def test_a_run_past_its_timeout_is_killed_and_raises(runner, monkeypatch):
    module, folder = runner
    monkeypatch.chdir(folder)
    (folder / "sleeps.py").write_text("import time\ntime.sleep(30)\n")
    with pytest.raises(subprocess.TimeoutExpired):
        module.run_script("sleeps.py", [], timeout=1)
    assert module.run_script("passes.py", [])[0] == 0, "the helper keeps serving after a timeout"


def test_a_script_that_kills_the_helper_is_an_error_and_the_next_run_still_works(runner, monkeypatch):
    module, folder = runner
    monkeypatch.chdir(folder)
    (folder / "kills_parent.py").write_text("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    with pytest.raises(ChildProcessError, match="killed while it ran"):
        module.run_script("kills_parent.py", [])
    assert module.run_script("exits_1.py", [])[0] == 1


def test_env_replaces_what_the_script_reads_and_threads_take_turns(runner, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor
    module, folder = runner
    monkeypatch.chdir(folder)
    (folder / "prints_env.py").write_text("import os, sys\nprint(os.environ.get('COLUMNS'), sys.argv[1])\n")
    env = {"COLUMNS": "77", "PATH": "/usr/bin:/bin"}
    with ThreadPoolExecutor(max_workers=4) as pool:
        outs = list(pool.map(lambda i: module.run_script("prints_env.py", [i], env=env), range(8)))
    assert outs == [(0, f"77 {i}\n", "") for i in range(8)]
    assert module.run_script("prints_env.py", ["x"])[1] == f"{__import__('os').environ.get('COLUMNS')} x\n"


def test_exercise_06_ships_the_same_runner():
    for copy in (REPO / "solutions" / "ex06_ci_script" / "script_runner.py",
                 REPO / "course" / "ex06_ci_script" / "script_runner.py"):
        assert copy.read_bytes() == RUNNER.read_bytes(), f"{copy} differs from {RUNNER}: copy it over"


def _gone(pid: int, within: float = 10) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_kernel_shuts_down_without_waiting_on_the_helper_and_leaves_none_behind(tmp_path):
    """ipykernel's shutdown signals its process group and waits until it is empty: the helper
    must be outside that group, and must end by itself once the kernel has gone."""
    from jupyter_client.manager import start_new_kernel
    (tmp_path / "passes.py").write_text(SCRIPTS["passes.py"])
    km, kc = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    try:
        code = (f"import os, sys; sys.path.insert(0, {str(RUNNER.parent)!r}); import script_runner\n"
                "print(script_runner.run_script('passes.py', [])[0], script_runner._helper.pid,\n"
                "      os.getpgid(script_runner._helper.pid) == os.getpgrp())")
        lines = []
        reply = kc.execute_interactive(code, timeout=60, output_hook=lambda msg: lines.append(
            msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None)
        assert reply["content"]["status"] == "ok", reply["content"]
        code, pid, in_kernels_group = "".join(lines).split()
        assert (code, in_kernels_group) == ("0", "False")
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)
    assert _gone(int(pid)), "the helper outlived its kernel"


def test_an_interrupted_run_kills_the_script_too(tmp_path):
    """Ctrl-C (a kernel interrupt) while a script runs: the caller gets KeyboardInterrupt and the
    script's process dies with the helper, instead of running on unwatched."""
    (tmp_path / "sleeps.py").write_text("import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n")
    caller = (f"import os, signal, sys, threading, time; sys.path.insert(0, {str(RUNNER.parent)!r}); import script_runner\n"
              "def interrupt():\n"
              "    while not os.path.exists('pid') or not open('pid').read(): time.sleep(0.02)\n"
              "    os.kill(os.getpid(), signal.SIGINT)\n"
              "threading.Thread(target=interrupt, daemon=True).start()\n"
              "try:\n    script_runner.run_script('sleeps.py', [])\nexcept KeyboardInterrupt:\n"
              "    print('interrupted', script_runner._helper)\n")
    done = subprocess.run([sys.executable, "-c", caller], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "interrupted None", done.stderr
    assert _gone(int((tmp_path / "pid").read_text())), "the interrupted script is still running"
