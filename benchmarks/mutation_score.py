"""Mutation score of the six exercises' tests: how many small bugs in the reference answers they catch.

The mutation testing itself lives in `autograder.mutate` (also an instructor's verb:
`python -m autograder mutate ASSIGNMENT`); this script runs it over the course's six exercises
and prints one table, to compare with earlier runs.

    python benchmarks/mutation_score.py                      # every exercise, at most 60 mutants each
    python benchmarks/mutation_score.py ex03_model_gate --max 0   # one exercise, every mutant

Mutants are sampled deterministically (--seed) when there are more than --max, and run in
--jobs parallel kernels (2 by default). Always exits 0: this is a measurement, not a gate.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from autograder import mutate  # noqa: E402
from autograder.config import ClassPaths  # noqa: E402

EXERCISES = ["ex01_pipeline", "ex02_data_gate", "ex03_model_gate", "ex04_metadata", "ex05_registry",
             "ex06_ci_script"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("exercises", nargs="*", help=f"default: all of {', '.join(EXERCISES)}")
    parser.add_argument("--max", type=int, default=60, help="mutants per exercise (0: all); default 60")
    parser.add_argument("--seed", type=int, default=2026, help="seed of the deterministic sample")
    parser.add_argument("--jobs", type=int, default=2, help="kernels run in parallel; default 2")
    parser.add_argument("--killed", action="store_true", help="also list the killed mutants and what caught them")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.exercises) - set(EXERCISES))
    if unknown:
        parser.error(f"unknown exercise(s) {unknown}; choose from {EXERCISES}")

    paths = ClassPaths.resolve(repo=REPO)
    start = time.perf_counter()
    summary = []
    for exercise in args.exercises or EXERCISES:
        began = time.perf_counter()
        result = mutate.score(paths, exercise, args.max, args.seed, args.jobs)
        print("\n" + "\n".join(mutate.summary_lines(result, time.perf_counter() - began, args.killed)))
        mutants = result["mutants"]
        killed = sum(1 for m in mutants if m.killed)
        summary.append((exercise, len(mutants), killed, killed / len(mutants) if mutants else 1.0))
        sys.stdout.flush()
    print("\nexercise          mutants  killed  ratio")
    for exercise, count, killed, ratio in summary:
        print(f"{exercise:18}{count:8}{killed:8}  {ratio:5.0%}")
    print(f"total time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
