"""Command line: `python -m autograder VERB ...`. Each verb is a thin wrapper over autograder.course."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import AutograderError

DESCRIPTION = """\
Grade the CI/CD for Models course with nbgrader. An instructor's day:

  release ASSIGNMENT     generate the student version and publish it to the exchange
  collect ASSIGNMENT     gather the class's submissions from the exchange
  grade ASSIGNMENT       autograde the class (or one --student), with reasons per student
  feedback ASSIGNMENT    write feedback (tests hidden) and hand it back through the exchange
  export                 write every grade to a CSV file
  lint ASSIGNMENT        prove every test cell tells right from wrong (release does it too)
  mutate ASSIGNMENT      mutation-test the hidden tests: which small bugs in the solution survive them
  handout DEST           write the learner's copy (lessons, data, released exercises; no solutions)

and for learners and newcomers:

  check NOTEBOOK         run a notebook's visible tests; exits 1 if any fails
  demo                   run the whole day on sample submissions in a throwaway folder
"""


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--class-dir", type=Path, help="the class folder (default: $CICD_CLASS_DIR or class/)")
    parser.add_argument("--exchange", type=Path, help="nbgrader's exchange root (default: $CICD_EXCHANGE or CLASS_DIR/exchange)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m autograder", description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = parser.add_subparsers(dest="verb", metavar="VERB")

    p = verbs.add_parser("release", help="generate the student version and publish it to the exchange")
    p.add_argument("assignment")
    _common(p)
    p = verbs.add_parser("collect", help="gather submissions from the exchange into the class folder")
    p.add_argument("assignment")
    _common(p)
    p = verbs.add_parser("grade", help="autograde collected submissions; prints a table with reasons")
    p.add_argument("assignment")
    p.add_argument("--student", help="grade only this student")
    p.add_argument("--force", action="store_true",
                   help="regrade even submissions already graded from identical inputs (run again "
                        "after an interruption, it resumes)")
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="grade N submissions at a time, each in its own sandbox (default: one per core)")
    _common(p)
    p = verbs.add_parser("feedback", help="write feedback HTML and release it to students")
    p.add_argument("assignment")
    p.add_argument("--student", help="only this student")
    _common(p)
    p = verbs.add_parser("export", help="write all grades to a CSV file")
    p.add_argument("--to", type=Path, default=None,
                   help="CSV path (default: grades.csv in the class folder, next to the gradebook)")
    _common(p)
    p = verbs.add_parser("lint", help="run negative controls: refuse test cells a worthless answer passes")
    p.add_argument("assignment")
    _common(p)
    p = verbs.add_parser("mutate", help="mutation-test an assignment's hidden tests and list the surviving mutants")
    p.add_argument("assignment")
    p.add_argument("--max-mutants", type=int, default=60, help="mutants to run, sampled with --seed (0: all); default 60")
    p.add_argument("--seed", type=int, default=2026, help="seed of the deterministic sample (default 2026)")
    p.add_argument("--jobs", type=int, default=2, help="kernels run in parallel (default 2)")
    p.add_argument("--killed", action="store_true", help="also list the killed mutants and what caught them")
    _common(p)
    p = verbs.add_parser("handout", help="write the learner's copy of the course: lessons, data, released "
                         "exercises and the self-check; no solutions, hidden tests or fixtures")
    p.add_argument("destination", type=Path, help="a new folder (it must not exist, or be empty)")
    p = verbs.add_parser("check", help="learner's self-check: run the visible tests of a notebook")
    p.add_argument("notebook", type=Path)
    p = verbs.add_parser("demo", help="release, submit, collect, grade, feedback and export sample submissions")
    p.add_argument("--keep", type=Path, help="build the demo class here (must not exist) and keep it")
    return parser


def grade_table(results) -> str:
    rows = [("student", "assignment", "score", "notes")]
    for r in results:
        score = "not graded" if r.error else \
            f"{r.score:g} / {r.max_score:g}" + (" (+manual)" if r.needs_manual_grade else "")
        rows.append((r.student, r.assignment, score, r.reason + ("  [unchanged since last grading]" if r.skipped else "")))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join("  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.verb:
        parser.print_help()
        return 2
    try:
        return _run(args)
    except AutograderError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    from . import course
    from .config import ClassPaths

    if args.verb == "check":
        from .selfcheck import check_notebook
        outcomes = check_notebook(args.notebook)
        for o in outcomes:
            mark = "PASS" if o.passed else "FAIL"
            print(f"{mark}  {o.grade_id} ({o.points:g} pt): {o.description}")
            if not o.passed:
                print(f"      {o.message}")
        failed = sum(not o.passed for o in outcomes)
        print(f"{len(outcomes) - failed} passed, {failed} failed")
        if not failed:
            print("The visible tests pass. Hidden tests will probe edge cases when your work is graded.")
        return 1 if failed else 0
    if args.verb == "handout":
        from .handout import build
        held = build(args.destination)
        print(f"learner's copy written to {args.destination}: "
              + ", ".join(f"{count} {what}" for what, count in held.items())
              + "; no solutions, hidden tests, sample submissions or class folder")
        return 0
    if args.verb == "demo":
        from .demo import run_demo
        return run_demo(args.keep)

    paths = ClassPaths.resolve(args.class_dir, args.exchange)
    if args.verb == "release":
        for finding in course.release(paths, args.assignment):
            print(finding, file=sys.stderr)
        print(f"released {args.assignment}: course/{args.assignment}/ regenerated, published to {paths.exchange}")
    elif args.verb == "collect":
        students = course.collect(paths, args.assignment)
        print(f"collected {args.assignment} from {len(students)} student(s): {', '.join(students)}")
        from .inbound import notes_of
        for student in students:
            for note in notes_of(paths.submitted / student / args.assignment):
                print(f"note: {student}: {note}", file=sys.stderr)
    elif args.verb == "grade":
        from . import sandbox
        # Said once, before grading: a limit this machine cannot hold per submission (or a bad CICD_*_LIMIT).
        for line in sandbox.enforcement_report():
            print(f"WARNING: {line}", file=sys.stderr)
        if args.jobs is not None and args.jobs > course.default_jobs():
            print(f"WARNING: --jobs {args.jobs} is more than the {course.default_jobs()} core(s) here: grading gets "
                  f"no faster, and each job holds up to two kernels in memory at once", file=sys.stderr)
        from .class_report import write_report
        from .pool import Interrupted
        from .progress import Progress
        try:
            results = course.grade(paths, args.assignment, args.student, force=args.force, jobs=args.jobs,
                                   progress=Progress(f"grading {args.assignment}"))
        except (Interrupted, KeyboardInterrupt):
            print("interrupted: what was graded is saved; run the same command again to grade the rest"
                  + (" (a forced regrade resumes: what it regraded is not run again)" if args.force else ""),
                  file=sys.stderr)
            return 130
        print(grade_table(results))
        print(f"report for instructors: {write_report(paths, args.assignment, results)}")
        from .lint import forgeable_stock_cells
        for line in forgeable_stock_cells(paths, args.assignment):
            print(f"WARNING: {line}", file=sys.stderr)
        return 1 if any(r.error for r in results) else 0
    elif args.verb == "feedback":
        files, notes = course.feedback(paths, args.assignment, args.student)
        print("\n".join(str(f) for f in files))
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
    elif args.verb == "lint":
        from .lint import lint_assignment
        findings = lint_assignment(paths, args.assignment)
        for finding in findings:
            print(finding)
        errors = sum(f.severity == "error" for f in findings)
        print(f"{args.assignment}: {errors} test cell(s) a worthless answer passes, "
              f"{len(findings) - errors} warning(s)" if findings else f"{args.assignment}: every test cell "
              "tells right from wrong (blank release and forged stub answers fail it)")
        return 1 if errors else 0
    elif args.verb == "mutate":
        import time
        from . import mutate
        if args.max_mutants < 0 or args.jobs < 1:
            raise AutograderError("--max-mutants must be 0 (all) or more, and --jobs at least 1")
        course.require_assignment(paths, args.assignment)
        began = time.perf_counter()
        result = mutate.score(paths, args.assignment, args.max_mutants, args.seed, args.jobs)
        print("\n".join(mutate.summary_lines(result, time.perf_counter() - began, args.killed)))
        if any(not m.killed for m in result["mutants"]):
            print("Judge each survivor: an equivalent change needs no test; any other shows a bug the hidden "
                  "tests would let through.")
    elif args.verb == "export":
        print(f"grades written to {course.export(paths, args.to or paths.class_dir / 'grades.csv').resolve()}")
    return 0
