"""Run a Python script the way `python SCRIPT ARG...` runs it in a CI job, but without paying for
its imports every time.

Exercise 06's tests, lesson 05 and this repository's own tests run ci_model.py dozens of times.
Most of each run would go to importing pandas and scikit-learn (about 1 s), so each run is
instead a fresh process forked from a helper process that has imported them once. Apart from
that head start, a run behaves as `python SCRIPT ARG...` does: its own process and working folder, `__name__ == "__main__"`,
`sys.argv`, the exit code (`sys.exit(n)`; an uncaught exception prints its traceback to stderr
and gives 1; a signal gives minus its number), and stdout and stderr captured separately.
Where forking is not safe (not Linux), or the helper cannot start, it falls back to a plain
subprocess.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading

PRELOADED = ("numpy", "pandas", "sklearn.linear_model", "sklearn.metrics", "sklearn.model_selection")

# The helper: reads one JSON request per line on stdin, forks a child per request, answers with
# one JSON line. Its only other threads are BLAS's idle workers, which BLAS itself stops and
# restarts around a fork, so forking it is safe.
HELPER = r'''
import atexit, builtins, importlib, json, os, signal, sys, tempfile, threading, time, traceback, types, warnings

script_filters = list(warnings.filters)
# Python 3.12+ warns when a process with threads forks; BLAS starts threads on import, and the
# child runs only the script, so the warning says nothing here.
warnings.filterwarnings("ignore", message=".*fork", category=DeprecationWarning)
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception:  # a module that cannot be imported is imported (and fails) in the script instead
        pass
try:  # no other process of this user may open this helper's pipes or memory through /proc
    import ctypes
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
except (OSError, AttributeError):
    pass
answers = os.fdopen(os.dup(1), "w")
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def exit_code(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return (code if -2**63 <= code < 2**63 else -1) & 0xFF  # python's C long, -1 on overflow
    print(code, file=sys.stderr)
    return 1


def run_child(request, out, err):
    code = 1
    try:
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        answers.close()
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        sys.stdin = open(0, closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", closefd=False)
        sys.argv = [request["script"], *request["args"]]
        path = os.path.abspath(request["script"])
        sys.path[0] = os.path.dirname(path)
        warnings.filters[:] = script_filters
        try:
            with open(path, "rb") as file:
                source = file.read()
        except OSError as error:  # python's own words and exit code for a script it cannot open
            print(f"{sys.executable}: can't open file {path!r}: [Errno {error.errno}] {error.strerror}", file=sys.stderr)
            code = 2
            return
        # What python does with a script: compile it under its absolute path, run it as __main__.
        main = types.ModuleType("__main__")
        main.__file__, main.__builtins__, main.__spec__, main.__loader__ = path, builtins, None, None
        sys.modules["__main__"] = main
        try:
            exec(compile(source, path, "exec"), main.__dict__)
            code = 0
        except SystemExit as stop:
            code = exit_code(stop.code)
        except BaseException as error:
            # As python prints it: from the script's own frames on, none of this helper's (none at
            # all for a SyntaxError, which happens before the script runs).
            tb = error.__traceback__
            while tb is not None and tb.tb_frame.f_code.co_filename != path:
                tb = tb.tb_next
            traceback.print_exception(type(error), error, tb)
            code = -2 if isinstance(error, KeyboardInterrupt) else 1
        # What python does at exit: wait for the threads the script started (a script whose
        # thread never ends never ends either), then run its atexit functions.
        threading._shutdown()
        atexit._run_exitfuncs()
    finally:  # os._exit flushes nothing
        sys.stdout.flush()
        sys.stderr.flush()
        if code == -2:  # an uncaught KeyboardInterrupt: python dies of SIGINT, as here
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code)


for line in sys.stdin:
    request = json.loads(line)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:
            run_child(request, out, err)
        deadline = time.monotonic() + request["timeout"]
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                timed_out = True
                break
            time.sleep(0.005)
        texts = []
        for stream in (out, err):
            stream.seek(0)
            texts.append(stream.read().decode("utf-8", errors="replace"))
    answer = {"timed_out": timed_out, "returncode": None if timed_out else os.waitstatus_to_exitcode(status),
              "stdout": texts[0], "stderr": texts[1]}
    answers.write(json.dumps(answer) + "\n")
    answers.flush()
'''

_helper: subprocess.Popen | None = None
_one_run_at_a_time = threading.Lock()  # one helper answers one request at a time


def _plain_run(command: list[str], timeout: float, env, cwd) -> tuple[int, str, str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    return result.returncode, result.stdout, result.stderr


def _started_helper() -> subprocess.Popen:
    global _helper
    if _helper is None or _helper.poll() is not None:
        # In a session of its own: a Jupyter kernel, when asked to shut down, signals every process
        # of its own process group and waits in growing steps until none is left, and the helper,
        # a child nobody reaps, kept each shutdown waiting over 2 s. Out of that group it is spared;
        # it ends by itself when its stdin closes, which the kernel's exit does.
        _helper = subprocess.Popen([sys.executable, "-c", HELPER, *PRELOADED], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                   encoding="utf-8", start_new_session=True)
    return _helper


def run_script(script: str, args: list[str], timeout: float = 60, env: dict | None = None,
               cwd: str | os.PathLike | None = None) -> tuple[int, str, str]:
    """Run `python script *args` in `cwd` (default: the current folder); return (exit code, stdout, stderr).
    `env` replaces the environment the script reads (os.environ), not what Python itself reads
    when it starts (PYTHONPATH and the like: for those, use a plain subprocess).
    Raises subprocess.TimeoutExpired when the script runs longer than `timeout` seconds."""
    args = [str(a) for a in args]
    command = [sys.executable, script, *args]
    if not sys.platform.startswith("linux"):
        return _plain_run(command, timeout, env, cwd)
    with _one_run_at_a_time:
        return _forked_run(script, args, command, timeout, env, cwd)


def _stop(helper: subprocess.Popen) -> None:
    """Kill the helper and the run it forked: they are the only processes of its session's group."""
    try:
        os.killpg(helper.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    helper.wait()


def _forked_run(script, args, command, timeout, env, cwd):
    global _helper
    try:
        helper = _started_helper()
    except OSError:
        return _plain_run(command, timeout, env, cwd)
    try:
        request = {"script": script, "args": args, "cwd": os.path.abspath(cwd or os.getcwd()), "timeout": timeout,
                   "env": dict(os.environ if env is None else env)}  # as subprocess would, at call time
        helper.stdin.write(json.dumps(request) + "\n")
        helper.stdin.flush()
        line = helper.stdout.readline()
        if not line:
            raise ChildProcessError(f"the process running {script} was killed while it ran (did the script "
                                    "kill its parent process?)")
        answer = json.loads(line)
    except BaseException:  # also an interrupted run: a half-answered helper would hand its answer to the next run
        _stop(helper)
        _helper = None
        raise
    if answer["timed_out"]:
        raise subprocess.TimeoutExpired(command, timeout)
    return answer["returncode"], answer["stdout"], answer["stderr"]
