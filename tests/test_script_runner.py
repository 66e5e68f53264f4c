"""ex06's script_runner: a run forked from a pre-imported helper must look exactly like
`python SCRIPT ARGS` (the tests of ex06 grade exit codes, streams and messages)."""
import importlib.util
import subprocess
import sys
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
