"""The shipped CI script, course/pipeline/ci_model.py, run as CI runs it: in a fresh process.

Every run the tests need is started once, side by side, by the `runs` fixture (the file's cost is
a dozen Python start-ups, not one per test); each test then asserts on the runs it is about.
"""
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import joblib
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "course" / "pipeline" / "ci_model.py"
SNAPSHOTS = REPO / "data" / "snapshots"
CLEAN = SNAPSHOTS / "learners_2026-03-31.csv"
DRIFTED = SNAPSHOTS / "learners_2026-09-30.csv"
BROKEN = sorted((REPO / "data" / "broken").glob("*.csv"))
METADATA_KEYS = {"model_name", "model_file", "model_sha256", "model_class", "params", "features",
                 "label", "data", "code", "environment", "split", "metrics", "gate", "latency_ms",
                 "created_at"}

sys.path.insert(0, str(SCRIPT.parent))
import ci_model  # noqa: E402  (only for the in-process checks of the behavioural tests)
import script_runner  # noqa: E402


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every subprocess run of this file, keyed by name, each with its own scratch folder."""
    root = tmp_path_factory.mktemp("ci-model")
    flipped = root / "flipped_hours.csv"  # hours_studied mirrored: still valid data, same metrics
    clean = pd.read_csv(CLEAN)
    clean.assign(hours_studied=(80 - clean["hours_studied"]).round(1)).to_csv(flipped, index=False)
    (root / "not-utf8.csv").write_bytes(b"\xff\xfe\x00learner_id\x81\n")
    (root / "a-file").write_text("a file, so nothing can be created beneath it\n")
    (root / "occupied").mkdir()
    (root / "occupied" / "model.joblib").write_bytes(b"an earlier model\n")
    broken_env = root / "broken-env" / "sklearn"  # a damaged installation shadowing the real one
    broken_env.mkdir(parents=True)
    (broken_env / "__init__.py").write_text("raise RuntimeError('damaged scikit-learn install')\n")

    train, test = ci_model.split(clean)
    exact_f1 = ci_model.evaluate(ci_model.fit(train)[0], test)["f1"]  # the clean model's, unrounded

    cases = {
        "clean": ["--data", CLEAN, "--model-out", "out-clean", "--metrics", "clean.json"],
        "smoke": ["--data", CLEAN, "--smoke", "--model-out", "out-smoke"],
        "drifted": ["--data", DRIFTED, "--model-out", "out-drifted", "--metrics", "drifted.json"],
        "rounded-floor": ["--data", CLEAN, "--min-f1", "0.8391"],
        # Also the determinism check's second training: a floor does not change the model.
        "equal-floor": ["--data", CLEAN, "--min-f1", repr(exact_f1), "--model-out", "out-again"],
        "no-convergence": ["--data", CLEAN, "--smoke", "--max-iter", "5", "--model-out", "out-conv"],
        "flipped": ["--data", flipped, "--model-out", "out-flipped"],
        "missing-file": ["--data", root / "nope.csv", "--model-out", "out-missing",
                         "--metrics", "missing.json"],
        "directory": ["--data", SNAPSHOTS],
        "not-utf8": ["--data", root / "not-utf8.csv"],
        "no-data-option": [],
        "bad-floor": ["--data", CLEAN, "--min-f1", "1.5"],
        "both-modes": ["--data", CLEAN, "--smoke", "--full"],
        "occupied-out": ["--data", CLEAN, "--model-out", "occupied"],
        "data-only-with-out": ["--data", CLEAN, "--check-data-only", "--model-out", "out-data-only"],
        "unwritable-out": ["--data", CLEAN, "--model-out", root / "a-file" / "out"],
        "unwritable-metrics": ["--data", BROKEN[0], "--metrics", root / "a-file" / "m.json"],
        "broken-env": ["--data", CLEAN, "--model-out", "out-broken-env"],
        **{f"broken/{path.stem}": ["--data", path, "--model-out", f"out-{path.stem}"] for path in BROKEN},
    }

    def run(name):
        env = {**os.environ, "COLUMNS": "100"}
        args = [str(a) for a in cases[name]]
        if name == "broken-env":  # PYTHONPATH is read when Python starts: a plain process
            env["PYTHONPATH"] = str(broken_env.parent)
            done = subprocess.run([sys.executable, str(SCRIPT), *args], cwd=root,
                                  env=env, capture_output=True, text=True, timeout=120)
            return name, done
        # Forked from a process with pandas and scikit-learn imported: as `python SCRIPT`, a
        # second faster (tests/test_script_runner.py shows the two cannot be told apart).
        code, out, err = script_runner.run_script(str(SCRIPT), args, timeout=120, env=env, cwd=root)
        return name, subprocess.CompletedProcess([sys.executable, str(SCRIPT), *args], code, out, err)

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = dict(pool.map(run, cases))
    results["root"], results["exact_f1"] = root, exact_f1
    return results


def said(done) -> str:
    return f"exit {done.returncode}\n--- stdout ---\n{done.stdout}\n--- stderr ---\n{done.stderr}"


def artifacts(runs, folder) -> list[str]:
    path = runs["root"] / folder
    return sorted(p.name for p in path.iterdir()) if path.exists() else []


# --- exit 0: passed, and only then the model and its record ---------------------------------

def test_clean_snapshot_passes_and_writes_model_and_record(runs):
    done = runs["clean"]
    assert done.returncode == 0, said(done)
    assert "f1=0.8391 recall=0.8022" in done.stdout.splitlines(), said(done)
    assert artifacts(runs, "out-clean") == ["metadata.json", "model.joblib"]
    record = json.loads((runs["root"] / "out-clean" / "metadata.json").read_text())
    assert METADATA_KEYS <= set(record), f"missing keys: {METADATA_KEYS - set(record)}"
    model_file = runs["root"] / "out-clean" / record["model_file"]
    assert record["model_sha256"] == sha256(model_file)
    assert record["data"] == {**record["data"], "file": CLEAN.name, "sha256": sha256(CLEAN),
                              "rows": 4000}
    assert record["gate"]["passed"] is True and record["gate"]["reasons"] == []
    assert record["gate"]["thresholds"] == {"f1": 0.75, "recall": 0.70}
    assert set(record["metrics"]) >= {"f1", "recall", "precision", "roc_auc"}
    assert round(record["metrics"]["f1"], 4) == 0.8391 and record["metrics"]["roc_auc"] > 0.9
    assert record["params"]["C"] == 1.0 and record["params"]["max_iter"] == 1000
    assert record["code"]["commit"] != "unknown" and isinstance(record["code"]["dirty"], bool)
    assert 0 < record["latency_ms"]["p50"] <= record["latency_ms"]["p95"]
    model = joblib.load(model_file)
    assert list(model.feature_names_in_) == record["features"] == ["hours_studied", "quiz_score"]


def test_the_same_inputs_give_the_same_model_file(runs):
    # The second run is "equal-floor": same data and settings, only the F1 floor differs.
    first = json.loads((runs["root"] / "out-clean" / "metadata.json").read_text())
    again = json.loads((runs["root"] / "out-again" / "metadata.json").read_text())
    assert first["model_sha256"] == again["model_sha256"]
    assert first["metrics"] == again["metrics"]


def test_smoke_run_uses_a_stratified_sample_and_its_own_floors(runs):
    done = runs["smoke"]
    assert done.returncode == 0, said(done)
    assert "note: smoke run" in done.stderr, "a passing smoke run leaves a note on stderr"
    record = json.loads((runs["root"] / "out-smoke" / "metadata.json").read_text())
    assert record["mode"] == "smoke" and record["data"]["rows_used"] == ci_model.SMOKE_ROWS
    assert record["split"]["train_rows"] == 800 and record["split"]["test_rows"] == 200
    assert record["gate"]["thresholds"] == ci_model.SMOKE_FLOORS


# --- exit 1: a gate failed; no artifacts -----------------------------------------------------

def test_drifted_snapshot_fails_naming_both_metrics_and_leaves_no_model(runs):
    done = runs["drifted"]
    assert done.returncode == 1, said(done)
    assert "f1=0.7416 recall=0.6735" in done.stdout, said(done)
    failed = [line for line in done.stderr.splitlines() if line.startswith("GATE FAILED")]
    assert any("f1=" in line for line in failed) and any("recall=" in line for line in failed), said(done)
    assert artifacts(runs, "out-drifted") == []
    record = json.loads((runs["root"] / "drifted.json").read_text())  # evidence on red too
    assert record["exit_code"] == 1 and len(record["gate"]["reasons"]) == 2


def test_floor_is_compared_with_the_unrounded_metric(runs):
    done = runs["rounded-floor"]  # f1 prints as 0.8391 but is 0.83908...
    assert done.returncode == 1, said(done)
    assert "f1=0.8390804597701149 is below the floor 0.8391" in done.stderr, said(done)


def test_a_metric_equal_to_its_floor_passes(runs):
    exact_f1 = runs["exact_f1"]
    assert exact_f1 == json.loads((runs["root"] / "clean.json").read_text())["metrics"]["f1"]
    assert f"{exact_f1:.4f}" == "0.8391" and exact_f1 < 0.8391
    done = runs["equal-floor"]
    assert done.returncode == 0, "equal passes:\n" + said(done)
    assert ci_model.floor_problems({"f1": exact_f1}, {"f1": exact_f1 + 1e-12}) != []


def test_convergence_warning_fails_the_gate(runs):
    done = runs["no-convergence"]
    assert done.returncode == 1, said(done)
    assert "GATE FAILED: convergence" in done.stderr and "max_iter=5" in done.stderr, said(done)
    assert artifacts(runs, "out-conv") == []


def test_behavioural_gate_catches_a_flipped_feature_the_metrics_miss(runs):
    done = runs["flipped"]
    assert done.returncode == 1, said(done)
    assert "f1=0.8391 recall=0.8022" in done.stdout, "mirroring a feature leaves the metrics unchanged"
    assert "directional: more hours_studied" in done.stderr, said(done)
    assert "minimum functionality" in done.stderr, said(done)
    assert "f1=" not in done.stderr and "recall=" not in done.stderr, "the floors passed"
    assert artifacts(runs, "out-flipped") == []


def test_behavioural_tests_on_scorers_in_process():
    rows = pd.read_csv(CLEAN).head(300)
    model, _ = ci_model.fit(rows)
    assert ci_model.behavioural_problems(lambda r: ci_model.probability(model, r), rows) == []

    def leaky(r):  # uses the end-of-course score, which the model must ignore
        return ci_model.probability(model, r) * 0.5 + r["final_score"].to_numpy() / 200
    found = ci_model.behavioural_problems(leaky, rows)
    assert any(p.startswith("invariance: changing final_score") for p in found), found

    def by_id(r):  # depends on the learner's id
        return r["learner_id"].str[1:].astype(int).to_numpy() / 10_000
    assert any("changing learner_id" in p for p in ci_model.behavioural_problems(by_id, rows))

    def batch_dependent(r):  # a row's score depends on the rest of the batch
        p = ci_model.probability(model, r)
        return p / p.max()
    assert any("other rows in its batch" in p
               for p in ci_model.behavioural_problems(batch_dependent, rows))

    found = ci_model.behavioural_problems(lambda r: 0.3 + 0 * r["quiz_score"].to_numpy(), rows)
    assert sum(p.startswith("minimum functionality") for p in found) == 2, found
    assert not any(p.startswith("directional") for p in found), found


# --- exit 2: bad input or usage; nothing trained, no artifacts ----------------------------------

def test_missing_data_file_is_bad_input(runs):
    done = runs["missing-file"]
    assert done.returncode == 2, said(done)
    assert "nope.csv does not exist" in done.stderr, said(done)
    assert artifacts(runs, "out-missing") == []
    assert json.loads((runs["root"] / "missing.json").read_text())["exit_code"] == 2


@pytest.mark.parametrize("case, words", [("directory", "IsADirectoryError"),
                                         ("not-utf8", "UnicodeDecodeError")])
def test_unreadable_data_file_is_bad_input(runs, case, words):
    done = runs[case]
    assert done.returncode == 2, said(done)
    assert "cannot read" in done.stderr and words in done.stderr, said(done)
    assert "Traceback" not in done.stderr, "an expected input problem gets one line, no traceback"


@pytest.mark.parametrize("path", BROKEN, ids=lambda p: p.stem)
def test_each_broken_snapshot_is_refused_before_training(runs, path):
    done = runs[f"broken/{path.stem}"]
    assert done.returncode == 2, said(done)
    assert "DATA INVALID" in done.stderr and "f1=" not in done.stdout, said(done)
    assert artifacts(runs, f"out-{path.stem}") == []


@pytest.mark.parametrize("case, words", [("no-data-option", "--data"),
                                         ("bad-floor", "--min-f1 must lie in [0, 1]"),
                                         ("both-modes", "not allowed with argument"),
                                         ("occupied-out", "never overwritten"),
                                         ("data-only-with-out", "--check-data-only trains no model")])
def test_usage_errors_exit_2(runs, case, words):
    done = runs[case]
    assert done.returncode == 2, said(done)
    assert words in done.stderr, said(done)
    assert "f1=" not in done.stdout


def test_an_occupied_model_folder_is_left_as_it_was(runs):
    assert (runs["root"] / "occupied" / "model.joblib").read_bytes() == b"an earlier model\n"


# --- exit 3: a crash, said to be one; no artifacts ----------------------------------------------

@pytest.mark.parametrize("case", ["unwritable-out", "unwritable-metrics"])
def test_unwritable_output_is_a_crash_not_a_weak_model(runs, case):
    done = runs[case]
    assert done.returncode == 3, said(done)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("CRASH (exit 3): cannot write") and "not a verdict on the model" in last
    assert not (runs["root"] / "a-file").is_dir()


def test_uncaught_exception_is_a_crash_with_its_traceback(runs):
    done = runs["broken-env"]
    assert done.returncode == 3, said(done)
    assert "Traceback" in done.stderr and "damaged scikit-learn install" in done.stderr, said(done)
    assert done.stderr.strip().splitlines()[-1].startswith("CRASH (exit 3): RuntimeError")
    assert artifacts(runs, "out-broken-env") == []
