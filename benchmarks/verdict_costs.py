"""What the trust defences cost, as ratios against grading in the same run.

- grade: `course.grade` of N fixture submissions of ex02 (one sandboxed run each): the baseline;
- feedback: `course.feedback` for the same class, which runs each submission again, visible
  tests only (VisibleOnlyFeedback), so that no hidden test line can reach a learner;
- lint: the negative controls `release` runs once per assignment (blank release and forged stub),
  uncached, plus the reference run they need.

    python benchmarks/verdict_costs.py [--students 4]

Expected: feedback about 1x grade (one run per submission each), lint about the cost of grading
two or three submissions, once per release. Grading itself is not made slower by any of them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from autograder import course, lint  # noqa: E402
from conftest import fixture_notebook, make_course_copy, submit_directly  # noqa: E402

ASSIGNMENT = "ex02_data_gate"
CASES = ["correct", "partial", "blank", "correct_alt", "exclusive_ranges", "lesson_gate_only"]


def timed(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=int, default=4, help="submissions to grade (default 4)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="cicd-verdict-costs-"))
    try:
        paths = make_course_copy(root)
        course.generate(paths, ASSIGNMENT)
        course.prepare_reference(paths, ASSIGNMENT)  # computed before timing: release and grade share it
        for index in range(args.students):
            case = CASES[index % len(CASES)]
            submit_directly(paths, f"learner{index:02d}_{case}", ASSIGNMENT, fixture_notebook(paths, ASSIGNMENT, case))
        grade_s = timed(lambda: course.grade(paths, ASSIGNMENT, force=True))
        feedback_s = timed(lambda: course.feedback(paths, ASSIGNMENT))
        lint_s = timed(lambda: lint.lint_assignment(paths, ASSIGNMENT))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"{args.students} submissions of {ASSIGNMENT}")
    print(f"grade     {grade_s:7.1f} s   1.00x (baseline)")
    print(f"feedback  {feedback_s:7.1f} s   {feedback_s / grade_s:.2f}x grade (visible-only run per submission)")
    print(f"lint      {lint_s:7.1f} s   {lint_s / grade_s:.2f}x grade (once per release: blank + forged stub)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
