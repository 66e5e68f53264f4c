"""The delivery half of the course's pipeline, run for real: model-ci.yml's job graph for each kind
of snapshot, approval, promotion and rollback through the registry, lesson 08's workflow snippet
against ci_model.py, and the workflow lint's own mutation test."""
import ast
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PIPELINE = REPO / "course" / "pipeline"
sys.path.insert(0, str(REPO / "course"))

from pipeline import serve, workflow  # noqa: E402
from pipeline.registry import PromotionRefused, Registry, RegistryError  # noqa: E402

MARCH = REPO / "data" / "snapshots" / "learners_2026-03-31.csv"
SEPTEMBER = REPO / "data" / "snapshots" / "learners_2026-09-30.csv"
OUT_OF_RANGE = REPO / "data" / "broken" / "out_of_range_scores.csv"
NOT_RUN = {"skipped", "waiting"}


def data_source(folder: Path, *snapshots) -> Path:
    """A folder of dated snapshots, standing in for object storage: (source, dated name) pairs."""
    folder.mkdir(parents=True)
    for source, name in snapshots:
        shutil.copyfile(source, folder / name)
    return folder


def statuses(run) -> dict:
    return {name: job.status for name, job in run.jobs.items()}


@pytest.fixture(scope="module")
def model_ci():
    assert (PIPELINE / "ci_model.py").is_file(), "course/pipeline/ci_model.py (lesson 05) is missing"
    return workflow.load(PIPELINE / "model-ci.yml")


@pytest.fixture(scope="module")
def delivery(tmp_path_factory, model_ci):
    """One registry driven as a team would: a scheduled run waits for approval and is approved;
    a push to main trains again and is approved; then a rollback is dispatched. Two full trainings
    in all, shared by the tests below."""
    root = tmp_path_factory.mktemp("delivery")
    source = data_source(root / "source", (MARCH, "learners_2026-03-31.csv"))
    registry = root / "registry"
    scratch = root / "scratch"
    scratch.mkdir()
    found = {}
    waiting = workflow.simulate(model_ci, "schedule", source, registry=registry, scratch_dir=scratch)
    found["waiting"] = statuses(waiting)
    found["aliases while waiting"] = Registry(registry).aliases()
    found["waiting scratch kept"] = any(scratch.iterdir())
    found["approved"] = statuses(waiting.approve())
    found["approved run"] = waiting
    found["aliases after approval"] = Registry(registry).aliases()
    second = workflow.simulate(model_ci, "push", source, approve=True, registry=registry, scratch_dir=scratch)
    found["second"] = statuses(second)
    found["second run"] = second
    found["aliases after second"] = Registry(registry).aliases()
    found["history before rollback"] = Registry(registry).history()
    rollback = workflow.simulate(model_ci, "workflow_dispatch", source, approve=True,
                                 inputs={"rollback_to": "1"}, registry=registry, scratch_dir=scratch)
    found["rollback"] = statuses(rollback)
    found["rollback run"] = rollback
    found["registry"] = Registry(registry)
    found["scratch left"] = sorted(p.name for p in scratch.iterdir())
    found["source"] = source
    return found


# ---- the job graph, per kind of snapshot ----------------------------------------------------

def test_clean_snapshot_trains_registers_and_waits_for_approval(delivery):
    assert delivery["waiting"] == {
        "code-checks": "success", "data-gate": "success", "smoke-train": "skipped", "full-train": "success",
        "register": "success", "promote": "waiting", "rollback": "skipped"}
    assert delivery["aliases while waiting"] == {"challenger": 1}, "register must point @challenger, not @champion"
    assert delivery["waiting scratch kept"], "a waiting run must keep its artifacts until it is approved"


def test_approval_promotes_and_moves_champion(delivery):
    assert delivery["approved"]["promote"] == "success", delivery["approved run"].jobs["promote"].log
    assert delivery["aliases after approval"] == {"challenger": 1, "champion": 1}
    promotion = delivery["history before rollback"][1]
    assert promotion["action"] == "promote" and promotion["to"] == 1 and promotion["from"] is None
    assert promotion["evidence"]["golden_batch"]["passed"] and promotion["evidence"]["golden_batch"]["rows"] == 50


def test_second_promotion_carries_a_paired_bootstrap_reason(delivery):
    assert delivery["second"]["promote"] == "success", delivery["second run"].jobs["promote"].log
    assert delivery["aliases after second"] == {"challenger": 2, "champion": 2}
    move = [m for m in delivery["history before rollback"] if m["action"] == "promote"][-1]
    comparison = move["evidence"]["vs_champion"]
    assert comparison["against"] == 1 and comparison["resamples"] == 1000
    assert comparison["low"] <= comparison["delta"] <= comparison["high"]
    assert "paired bootstrap interval" in comparison["detail"]


def test_rollback_moves_champion_back_and_history_keeps_every_move(delivery):
    assert delivery["rollback"] == {
        "code-checks": "skipped", "data-gate": "skipped", "smoke-train": "skipped", "full-train": "skipped",
        "register": "skipped", "promote": "skipped", "rollback": "success"}, delivery["rollback run"].report()
    registry = delivery["registry"]
    assert registry.get_version_by_alias("champion") == 1
    history = registry.history()
    assert history[:len(delivery["history before rollback"])] == delivery["history before rollback"]
    assert [(m["alias"], m["action"], m["from"], m["to"]) for m in history] == [
        ("challenger", "register", None, 1), ("champion", "promote", None, 1),
        ("challenger", "register", 1, 2), ("champion", "promote", 1, 2), ("champion", "rollback", 2, 1)]
    assert delivery["scratch left"] == [], "finished runs must remove their scratch folders"


def test_broken_snapshot_stops_at_the_data_gate(model_ci, tmp_path):
    source = data_source(tmp_path / "source", (MARCH, "learners_2026-03-31.csv"),
                         (OUT_OF_RANGE, "learners_2026-10-31.csv"))
    run = workflow.simulate(model_ci, "schedule", source, registry=tmp_path / "registry", scratch_dir=tmp_path)
    assert statuses(run) == {
        "code-checks": "success", "data-gate": "failure", "smoke-train": "skipped", "full-train": "skipped",
        "register": "skipped", "promote": "skipped", "rollback": "skipped"}
    assert run.jobs["data-gate"].detail.startswith("exit 2:") and "quiz_score" in run.jobs["data-gate"].detail
    assert not (tmp_path / "registry").exists(), "nothing may reach the registry from a broken snapshot"


def test_drifted_snapshot_fails_the_full_training_gate(model_ci, tmp_path):
    source = data_source(tmp_path / "source", (MARCH, "learners_2026-03-31.csv"),
                         (SEPTEMBER, "learners_2026-09-30.csv"))
    run = workflow.simulate(model_ci, "schedule", source, registry=tmp_path / "registry", scratch_dir=tmp_path)
    assert statuses(run) == {
        "code-checks": "success", "data-gate": "success", "smoke-train": "skipped", "full-train": "failure",
        "register": "skipped", "promote": "skipped", "rollback": "skipped"}
    assert run.jobs["full-train"].detail.startswith("exit 1:")
    september_sha256 = hashlib.sha256(SEPTEMBER.read_bytes()).hexdigest()
    assert f"{september_sha256}  learners_2026-09-30.csv" in run.jobs["data-gate"].log, \
        "the scheduled run must read the newest snapshot and record its sha256"


def test_pull_request_runs_the_smoke_path_only(model_ci, tmp_path):
    run = workflow.simulate(model_ci, "pull_request", MARCH, registry=tmp_path / "registry", scratch_dir=tmp_path)
    assert statuses(run) == {
        "code-checks": "success", "data-gate": "success", "smoke-train": "success", "full-train": "skipped",
        "register": "skipped", "promote": "skipped", "rollback": "skipped"}


# ---- the registry and the serving path ------------------------------------------------------

def test_comparison_uses_the_rows_the_model_was_evaluated_on(delivery):
    # serve.compare rebuilds the held-out rows from the metadata; they must be ci_model.py's own.
    import pandas as pd
    from sklearn.metrics import f1_score

    registry = delivery["registry"]
    model, metadata, _ = serve.load(registry, version=1)
    rows = serve.held_out_rows(metadata, pd.read_csv(delivery["source"] / metadata["data"]["file"]))
    assert len(rows) == round(metadata["data"]["rows"] * metadata["split"]["test_size"])
    assert f1_score(rows[metadata["label"]], serve.score(model, metadata, rows)) == pytest.approx(
        metadata["metrics"]["f1"], abs=1e-12)


def test_refused_promotion_leaves_registry_json_unchanged(delivery):
    registry = delivery["registry"]
    before = registry.state_file.read_bytes()
    with pytest.raises(PromotionRefused, match="reason"):
        registry.promote(2, by="ana", reason="  ")
    with pytest.raises(PromotionRefused, match="golden"):
        registry.promote(2, by="ana", reason="ok", evidence={"golden_batch": {"passed": False, "detail": "golden 49 of 50"}})
    with pytest.raises(PromotionRefused, match="already"):
        registry.rollback(by="sam", reason="again", to=1)
    assert registry.state_file.read_bytes() == before


def test_altered_artifact_is_refused_before_unpickling(delivery, tmp_path):
    copy = tmp_path / "registry"
    shutil.copytree(delivery["registry"].root, copy)
    registry = Registry(copy)
    model_file = registry.version_dir(2) / "model.joblib"
    model_file.chmod(0o644)
    model_file.write_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.")  # a pickle that would run a command
    with pytest.raises(RegistryError, match="altered"):
        serve.load(registry, version=2)
    with pytest.raises(RegistryError, match="altered"):
        registry.rollback(by="sam", reason="try v2", to=2)


def test_registry_cli_exit_codes(delivery, tmp_path):
    root = delivery["registry"].root

    def cli(*args):
        return subprocess.run([sys.executable, str(PIPELINE / "registry.py"), "--registry", str(root), *args],
                              capture_output=True, text=True).returncode

    before = delivery["registry"].state_file.read_bytes()
    assert cli("promote", "2", "--by", "ana", "--reason", "") == 1
    assert cli("promote", "9", "--by", "ana", "--reason", "x") == 2
    assert cli("rollback", "--to", "9", "--by", "sam", "--reason", "x") == 2
    assert cli("register", str(tmp_path / "nowhere"), "--by", "ci") == 2
    assert delivery["registry"].state_file.read_bytes() == before


# ---- lesson 08's workflow snippet against the real ci_model.py -------------------------------

def lesson_08_snippet() -> dict:
    nb = json.loads((REPO / "course" / "08_anti_patterns_and_self_assessment.ipynb").read_text())
    source = next("".join(c["source"]) for c in nb["cells"] if c.get("id") == "full-training-fix-yaml")
    assignment = next(node for node in ast.parse(source).body
                      if isinstance(node, ast.Assign) and node.targets[0].id == "SNIPPET")
    return yaml.safe_load(assignment.value.value)


@pytest.mark.parametrize("job, snapshot, expected", [
    ("smoke", MARCH, 0), ("full", MARCH, 0), ("smoke", OUT_OF_RANGE, 2)])
def test_lesson_08_snippet_steps_run_against_ci_model(job, snapshot, expected, tmp_path):
    snippet = lesson_08_snippet()
    shutil.copytree(PIPELINE, tmp_path / "course" / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "SNAPSHOT": str(snapshot)}
    steps = [s["run"] for s in snippet["jobs"][job]["steps"] if "run" in s]
    assert steps, f"the snippet's {job} job has no run step"
    codes = [subprocess.run(["bash", "-eo", "pipefail", "-c", step], cwd=tmp_path, env=env,
                            capture_output=True, text=True).returncode for step in steps]
    assert codes[-1] == expected, f"{job} on {snapshot.name}: exit codes {codes}, expected {expected} last"
    if job == "full" and expected == 0:
        assert (tmp_path / "model" / "model.joblib").is_file() and (tmp_path / "model" / "metadata.json").is_file()


# ---- the lint, mutation-tested ---------------------------------------------------------------

def test_lint_passes_the_good_workflow(model_ci):
    assert workflow.lint(model_ci) == []


def gate_job_alone(workflow_dict) -> dict:
    """The data-gate job on its own, with the gate command replaced by one that fails at once."""
    job = json.loads(json.dumps(workflow_dict["jobs"]["data-gate"]))
    for step in job["steps"]:
        if "--check-data-only" in str(step.get("run", "")):
            step["run"] = step["run"].replace('python "$PIPELINE/ci_model.py" --data data/*.csv --check-data-only',
                                              'python -c "import sys; sys.exit(2)"')
    job["steps"] = [s for s in job["steps"] if "run" in s and "pip install" not in s["run"]]
    job["steps"] = [s for s in job["steps"] if "DATA_SOURCE" not in s["run"]]
    job.pop("needs", None)
    return {"name": "gate", "on": {"push": None}, "defaults": workflow_dict.get("defaults"), "jobs": {"data-gate": job}}


def test_the_unmutated_gate_step_fails_on_a_failing_gate(model_ci, tmp_path):
    assert workflow.simulate(gate_job_alone(model_ci), "push", scratch_dir=tmp_path).status("data-gate") == "failure"


@pytest.mark.parametrize("variant", list(workflow.no_op_mutants(workflow.load(PIPELINE / "model-ci.yml"))))
def test_lint_catches_every_no_op_variant(variant, model_ci, tmp_path):
    mutant = workflow.no_op_mutants(model_ci)[variant]
    assert workflow.lint(mutant), f"the lint let `{variant}` through"
    # And the variant really is a no-op: the same failing gate now leaves the job green.
    assert workflow.simulate(gate_job_alone(mutant), "push", scratch_dir=tmp_path).status("data-gate") == "success"


def test_lint_command_line_exit_codes(model_ci, tmp_path):
    mutant = tmp_path / "mutant.yml"
    mutant.write_text(yaml.safe_dump(workflow.no_op_mutants(model_ci)["|| true"], sort_keys=False))
    lint = [sys.executable, str(PIPELINE / "workflow.py"), "lint"]
    assert subprocess.run([*lint, str(PIPELINE / "model-ci.yml")], capture_output=True).returncode == 0
    assert subprocess.run([*lint, str(mutant)], capture_output=True).returncode == 1
    assert subprocess.run([*lint, str(tmp_path / "missing.yml")], capture_output=True).returncode == 2


def test_concurrency_checks_every_commit_on_main(model_ci):
    pushes = [{"event_name": "push", "ref": "refs/heads/main", "sha": c * 40} for c in "abc"]
    pulls = [{"event_name": "pull_request", "ref": "refs/pull/7/merge", "sha": c * 40} for c in "abc"]
    assert workflow.queue(model_ci, pushes) == ["checked"] * 3
    assert workflow.queue(model_ci, pulls) == ["cancelled while running", "cancelled while running", "checked"]
    per_ref = {**model_ci, "concurrency": {"group": "ci-${{ github.ref }}", "cancel-in-progress": False}}
    assert workflow.queue(per_ref, pushes) == ["checked", "cancelled while pending", "checked"]
    assert any("never checked" in p for p in workflow.lint(per_ref))


def test_expressions_follow_github_rules():
    context = {"github": {"event_name": "push", "ref": "refs/heads/main", "run_id": 7}, "inputs": {}}
    assert workflow.evaluate("github.event_name == 'PUSH'", context) is True  # case-insensitive strings
    assert workflow.evaluate("github.event_name == 'pull_request' && github.ref || github.run_id", context) == 7
    assert workflow.condition_holds("${{ !inputs.rollback_to }}", context)
    assert not workflow.condition_holds("github.event_name == 'push'", {**context, "status": "failure"})
    assert workflow.condition_holds("always()", {**context, "status": "failure"})
    assert workflow.load("on: push\njobs: {a: {}}\n")["on"] == "push"  # YAML 1.1 reads `on` as True
    with pytest.raises(ValueError):
        workflow.evaluate("github.event_name = 'push'", context)


def test_malformed_workflows_get_one_clear_error(tmp_path):
    with pytest.raises(ValueError, match="job `train` is not a mapping"):
        workflow.load("on: push\njobs:\n  train:\n")
    with pytest.raises(ValueError, match="steps"):
        workflow.load("on: push\njobs:\n  train:\n    steps: python train.py\n")
    with pytest.raises(ValueError, match="does not define"):
        workflow.simulate({"on": {"push": None}, "jobs": {"train": {"needs": "gate", "steps": []}}}, "push",
                          scratch_dir=tmp_path)
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  train:\n")
    done = subprocess.run([sys.executable, str(PIPELINE / "workflow.py"), "lint", str(broken)],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "not a mapping" in done.stderr and len(done.stderr.splitlines()) == 1
