"""Generate the course's learner-completion data set, deterministically.

Run from anywhere:  python data/generate.py            (writes next to this file)
                    python data/generate.py --out DIR  (writes into DIR instead)

Every file is a pure function of SEED, so re-running reproduces the committed files
byte for byte; tests/test_data.py checks exactly that, and that the hashes in the
data card (data/README.md) match.
"""
from __future__ import annotations

import argparse
import hashlib
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd

SEED = 20260331
HERE = Path(__file__).resolve().parent
REPO = HERE.parent

CLEAN = "snapshots/learners_2026-03-31.csv"
DRIFTED = "snapshots/learners_2026-09-30.csv"
BROKEN_ROWS = 600  # broken snapshots are small slices of the clean one, each with one defect

TRACKS = ["data-science", "ml-engineering", "analytics"]
DEVICES = ["laptop", "desktop", "tablet", "phone"]

# Exercises are graded in a folder of their own, so each one ships the files it reads.
EXERCISE_DATA = {
    "ex02_data_gate": [CLEAN] + [f"broken/{name}.csv" for name in (
        "missing_column", "null_ids", "duplicate_ids", "out_of_range_scores",
        "non_binary_label", "wrong_dtype", "label_leak")],
    "ex03_model_gate": [CLEAN],
    "ex04_metadata": [CLEAN],
    "ex05_registry": [CLEAN],
    "ex06_ci_script": [CLEAN, DRIFTED, "broken/out_of_range_scores.csv", "broken/missing_column.csv"],
}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def simulate_learners(rng: np.random.Generator, n: int, first_id: int, start: str, end: str,
                      drift: bool = False) -> pd.DataFrame:
    """Simulate one cohort. `drift=True` makes a later, phone-heavier cohort that studies less
    and finds the quizzes harder, and for whom the quiz matters less for completion."""
    device_p = [0.40, 0.18, 0.07, 0.35] if drift else [0.55, 0.25, 0.08, 0.12]
    track = rng.choice(TRACKS, size=n, p=[0.45, 0.35, 0.20])
    device = rng.choice(DEVICES, size=n, p=device_p)
    days = (pd.Timestamp(end) - pd.Timestamp(start)).days
    enrolled = pd.Timestamp(start) + pd.to_timedelta(rng.integers(0, days + 1, size=n), unit="D")

    hours = np.clip(rng.gamma(2.2, 4.8 if drift else 6.0, size=n), 0, 80).round(1)
    videos = np.clip(rng.poisson(2 + 0.8 * hours), 0, 60)
    posts = rng.poisson(0.5 + 0.05 * hours)
    on_phone = device == "phone"
    quiz = 38 + 1.35 * hours - 4.0 * on_phone - (8.0 if drift else 0.0) + rng.normal(0, 11, size=n)
    quiz = np.clip(quiz, 0, 100).round(1)

    track_bonus = np.select([track == "ml-engineering", track == "analytics"], [3.0, -2.0], 0.0)
    final = 18 + 0.55 * quiz + 0.55 * hours + track_bonus + rng.normal(0, 6, size=n)
    final = np.clip(final, 0, 100).round(1)

    # The later cohort completes more often at a given quiz score: the quiz matters less.
    quiz_weight = 0.07 if drift else 0.10
    logit = -15.0 + 1.7 * (0.11 * hours + quiz_weight * quiz + 0.04 * posts - 0.5 * on_phone)
    logit += 3.5 if drift else 0.0
    completed = (rng.random(n) < _sigmoid(logit)).astype(int)

    return pd.DataFrame({
        "learner_id": [f"L{first_id + i:05d}" for i in range(n)],
        "enrolled_on": enrolled.strftime("%Y-%m-%d"),
        "track": track,
        "device": device,
        "hours_studied": hours,
        "videos_watched": videos,
        "forum_posts": posts,
        "quiz_score": quiz,
        "final_score": final,
        "completed": completed,
    })


def break_snapshot(clean: pd.DataFrame, rng: np.random.Generator) -> dict[str, pd.DataFrame]:
    """One small snapshot per defect a data gate must catch; every other value stays valid."""
    base = clean.head(BROKEN_ROWS).reset_index(drop=True)
    rows = lambda k: np.sort(rng.choice(len(base), size=k, replace=False))  # noqa: E731

    missing_column = base.drop(columns=["quiz_score"])

    null_ids = base.copy()
    null_ids.loc[rows(4), "learner_id"] = np.nan

    duplicate_ids = base.copy()
    dupes = rows(6)
    duplicate_ids.loc[dupes[3:], "learner_id"] = duplicate_ids.loc[dupes[:3], "learner_id"].to_numpy()

    out_of_range = base.copy()
    out_of_range.loc[rows(3), "quiz_score"] = [104.5, -3.0, 250.0]

    non_binary = base.copy()
    non_binary.loc[rows(5), "completed"] = 2

    wrong_dtype = base.copy()
    wrong_dtype["hours_studied"] = wrong_dtype["hours_studied"].map(lambda h: f"{h} h")

    # A column recorded *after* the outcome: it agrees with the label almost always.
    label_leak = base.copy()
    leak = label_leak["completed"].to_numpy().copy()
    flip = rows(2)
    leak[flip] = 1 - leak[flip]
    label_leak.insert(len(label_leak.columns) - 1, "certificate_issued", leak)

    return {
        "missing_column": missing_column,
        "null_ids": null_ids,
        "duplicate_ids": duplicate_ids,
        "out_of_range_scores": out_of_range,
        "non_binary_label": non_binary,
        "wrong_dtype": wrong_dtype,
        "label_leak": label_leak,
    }


def build(out: Path) -> list[Path]:
    """Write every data file under `out`; return their paths."""
    rng = np.random.default_rng(SEED)
    clean = simulate_learners(rng, 4000, 1, "2025-09-01", "2026-03-31")
    drifted = simulate_learners(rng, 2500, 4001, "2026-04-01", "2026-09-30", drift=True)
    files = {CLEAN: clean, DRIFTED: drifted}
    files.update({f"broken/{name}.csv": df for name, df in break_snapshot(clean, rng).items()})
    written = []
    for rel, df in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(path, index=False, lineterminator="\n")
        written.append(path)
    return written


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def hash_table(out: Path, files: list[Path]) -> str:
    lines = ["| file | rows | sha256 |", "| --- | ---: | --- |"]
    for path in sorted(files):
        rows = sum(1 for _ in path.open()) - 1
        lines.append(f"| `{path.relative_to(out).as_posix()}` | {rows} | `{sha256(path)}` |")
    return "\n".join(lines)


def update_card(card: Path, table: str) -> None:
    """Rewrite the hash table between the markers of the data card."""
    text = card.read_text()
    new = re.sub(r"(<!-- hashes:start -->\n).*?(<!-- hashes:end -->)",
                 lambda m: m.group(1) + table + "\n" + m.group(2), text, flags=re.S)
    card.write_text(new)


def copy_exercise_data(out: Path, solutions: Path) -> None:
    for assignment, rels in EXERCISE_DATA.items():
        for rel in rels:
            target = solutions / assignment / "data" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(out / rel, target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into (default: data/)")
    args = parser.parse_args(argv)
    files = build(args.out)
    if args.out.resolve() == HERE:
        update_card(HERE / "README.md", hash_table(HERE, files))
        copy_exercise_data(HERE, REPO / "solutions")
    for path in files:
        print(f"{sha256(path)}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
