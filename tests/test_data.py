"""The shipped data is exactly what data/generate.py makes, the card tells the truth, and each
broken snapshot carries the defect it claims (and only that one)."""
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data"
sys.path.insert(0, str(DATA))
import generate  # noqa: E402

CLEAN = DATA / generate.CLEAN


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    out = tmp_path_factory.mktemp("regenerated")
    subprocess.run([sys.executable, str(DATA / "generate.py"), "--out", str(out)], check=True,
                   capture_output=True)
    return out


def shipped_files():
    return sorted(p.relative_to(DATA) for p in DATA.rglob("*.csv"))


def test_regenerating_reproduces_every_file_byte_for_byte(regenerated):
    made = sorted(p.relative_to(regenerated) for p in regenerated.rglob("*.csv"))
    assert made == shipped_files()
    for rel in made:
        assert (regenerated / rel).read_bytes() == (DATA / rel).read_bytes(), f"{rel} differs from a fresh run"


def test_data_card_lists_every_file_with_its_current_sha256():
    card = (DATA / "README.md").read_text()
    listed = dict(re.findall(r"\| `([^`]+\.csv)` \| \d+ \| `([0-9a-f]{64})` \|", card))
    assert set(listed) == {p.as_posix() for p in shipped_files()}
    for rel, digest in listed.items():
        assert hashlib.sha256((DATA / rel).read_bytes()).hexdigest() == digest, f"stale hash for {rel}"


def test_exercise_copies_are_identical_to_the_data_folder():
    for assignment, rels in generate.EXERCISE_DATA.items():
        for rel in rels:
            for root in ("solutions", "course"):
                copy = REPO / root / assignment / "data" / rel
                assert copy.read_bytes() == (DATA / rel).read_bytes(), f"{copy} is not a copy of data/{rel}"


def test_clean_snapshot_is_valid_imbalanced_and_learnable():
    df = pd.read_csv(CLEAN)
    assert len(df) == 4000 and df["learner_id"].is_unique and df["learner_id"].notna().all()
    assert df["quiz_score"].between(0, 100).all() and df["final_score"].between(0, 100).all()
    assert set(df["completed"].unique()) == {0, 1}
    assert 0.15 < df["completed"].mean() < 0.35, "the positive class should be a clear minority"
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.model_selection import train_test_split
    X, y = df[["hours_studied", "quiz_score"]], df["completed"]
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.2, random_state=42, stratify=y)
    f1 = f1_score(y_te, LogisticRegression(max_iter=1000).fit(X_tr, y_tr).predict(X_te))
    assert 0.75 <= f1 < 0.95, f"learnable but noisy: F1 {f1:.3f}"


def test_drifted_snapshot_is_valid_but_different():
    clean, drifted = pd.read_csv(CLEAN), pd.read_csv(DATA / generate.DRIFTED)
    assert list(drifted.columns) == list(clean.columns)
    assert drifted["quiz_score"].between(0, 100).all() and drifted["learner_id"].is_unique
    assert not set(drifted["learner_id"]) & set(clean["learner_id"])
    assert (drifted["device"] == "phone").mean() > 2 * (clean["device"] == "phone").mean()
    assert drifted["hours_studied"].mean() < clean["hours_studied"].mean() - 2


@pytest.mark.parametrize("name, check", [
    ("missing_column", lambda df: "quiz_score" not in df.columns),
    ("null_ids", lambda df: df["learner_id"].isna().sum() == 4),
    ("duplicate_ids", lambda df: df["learner_id"].duplicated().sum() == 3),
    ("out_of_range_scores", lambda df: (~df["quiz_score"].between(0, 100)).sum() == 3),
    ("non_binary_label", lambda df: set(df["completed"].unique()) == {0, 1, 2}),
    ("wrong_dtype", lambda df: df["hours_studied"].dtype == object or str(df["hours_studied"].dtype) == "str"),
    ("label_leak", lambda df: (df["certificate_issued"] == df["completed"]).sum() == 598),
])
def test_each_broken_snapshot_has_its_defect(name, check):
    df = pd.read_csv(DATA / "broken" / f"{name}.csv")
    assert len(df) == generate.BROKEN_ROWS
    assert check(df), f"broken/{name}.csv does not carry its defect"
    base = pd.read_csv(CLEAN).head(generate.BROKEN_ROWS)
    untouched = [c for c in base.columns
                 if c in df.columns and c not in ("learner_id", "quiz_score", "completed", "hours_studied")]
    pd.testing.assert_frame_equal(df[untouched], base[untouched])
