"""How long each lesson takes to execute, and (with --suite) the whole test suite's wall time.

Each lesson runs top to bottom in a fresh kernel from course/, as a learner's "Run All" would.
The baseline, measured in the same run, is an empty notebook: starting a kernel and stopping
it. Ratios against it make figures comparable across machines.

    python benchmarks/lesson_times.py            # lessons only (about a minute)
    python benchmarks/lesson_times.py --suite    # also `python -m pytest` (a few minutes)

Targets on a 2-core machine: every lesson <= 15 s, the test suite <= 5 minutes.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parent.parent
COURSE = REPO / "course"
LESSON_TARGET_S = 15.0
SUITE_TARGET_S = 300.0


def execute_seconds(nb) -> float:
    start = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(COURSE)}}).execute()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="store_true", help="also time `python -m pytest`")
    args = parser.parse_args(argv)

    empty = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("1")])
    execute_seconds(empty)  # warm-up: the first kernel start also loads everything from disk
    baseline = min(execute_seconds(empty) for _ in range(3))
    print(f"baseline (empty notebook: kernel start and stop): {baseline:.2f} s")
    print(f"{'lesson':45} {'seconds':>8} {'x baseline':>10}  target {LESSON_TARGET_S:.0f} s")
    worst = 0.0
    for lesson in sorted(COURSE.glob("[0-9][0-9]_*.ipynb")):
        seconds = execute_seconds(nbformat.read(lesson, as_version=4))
        worst = max(worst, seconds)
        flag = "" if seconds <= LESSON_TARGET_S else "  OVER TARGET"
        print(f"{lesson.name:45} {seconds:8.2f} {seconds / baseline:10.1f}{flag}")
    print(f"slowest lesson: {worst:.2f} s")

    if args.suite:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pytest", "-q"], cwd=REPO,
                              capture_output=True, text=True)
        wall = time.perf_counter() - start
        summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
        print(f"test suite: {wall:.1f} s wall ({wall / baseline:.0f} x baseline), target "
              f"{SUITE_TARGET_S:.0f} s; exit {done.returncode}: {summary}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
