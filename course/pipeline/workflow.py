"""Read, lint and locally run a GitHub Actions workflow (lessons 06-08).

    python course/pipeline/workflow.py lint WORKFLOW.yml [...]        exit 0 clean, 1 problems, 2 unreadable
    python course/pipeline/workflow.py plan WORKFLOW.yml EVENT         the jobs an event would start

In Python, `simulate(workflow, event, snapshot, approve=...)` plays the job graph the way a runner
would: jobs in `needs:` order, `if:` evaluated, each job in a fresh copy of the checkout, each `run:`
step a real bash process with GitHub's shell options, artifacts handed between jobs through a local
store, and a job behind a protected `environment:` stopped until someone approves it.

What it does not do: start containers, run marketplace actions other than checkout, setup-python
and the artifact pair, or install packages (steps that only `pip install` are skipped: this
Python already has them).
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import yaml

PIPELINE = Path(__file__).resolve().parent
REPO = PIPELINE.parent.parent
PROTECTED_ENVIRONMENTS = {"production"}

# ---------------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------------


def load(source) -> dict:
    """A workflow as a dict from a path or YAML text. PyYAML (YAML 1.1) reads the key `on:` as
    the boolean True; GitHub reads the string "on". Both spellings end up under "on"."""
    is_text = isinstance(source, str) and ("\n" in source or not source.endswith((".yml", ".yaml")))
    text = source if is_text else Path(source).read_text()
    workflow = yaml.safe_load(text)
    if not isinstance(workflow, dict) or not isinstance(workflow.get("jobs"), dict):
        raise ValueError("not a workflow: the file has no `jobs:` mapping")
    if True in workflow:
        workflow["on"] = workflow.pop(True)
    for name, job in workflow["jobs"].items():
        if not isinstance(job, dict):
            raise ValueError(f"job `{name}` is not a mapping: give it `runs-on:` and `steps:`")
        steps = job.get("steps") or []
        if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
            raise ValueError(f"job `{name}`: `steps:` must be a list of `- run: ...` or `- uses: ...` items")
    return workflow


def triggers(workflow: dict) -> dict:
    """The workflow's events as {event: its settings or None}."""
    on = workflow.get("on", workflow.get(True)) or {}
    if isinstance(on, str):
        return {on: None}
    return dict(on) if isinstance(on, dict) else dict.fromkeys(on)


def needs_of(job: dict) -> list[str]:
    needs = job.get("needs") or []
    return [needs] if isinstance(needs, str) else list(needs)


def job_order(workflow: dict) -> list[str]:
    """Jobs in an order that respects `needs:`; ties keep the file's order."""
    graph = {name: needs_of(job) for name, job in workflow["jobs"].items()}
    sorter = TopologicalSorter(graph)
    sorter.prepare()
    order, position = [], {name: i for i, name in enumerate(workflow["jobs"])}
    while sorter.is_active():
        ready = sorted(sorter.get_ready(), key=lambda n: position.get(n, len(position)))
        order += ready
        sorter.done(*ready)
    return order


def environment_of(job: dict) -> str | None:
    environment = job.get("environment")
    return environment.get("name") if isinstance(environment, dict) else environment


# ---------------------------------------------------------------------------------------------
# Expressions: the part of GitHub's `${{ }}` language this course uses
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>\d+(?:\.\d+)?)|(?P<op>==|!=|<=|>=|&&|\|\||[!<>(),])"
                    r"|(?P<name>[A-Za-z_][\w-]*(?:\.[A-Za-z_*][\w-]*)*))")


def _tokens(expression: str) -> list[tuple[str, str]]:
    tokens, pos = [], 0
    while pos < len(expression):
        if expression[pos:].strip() == "":
            break
        match = _TOKEN.match(expression, pos)
        if match is None:
            raise ValueError(f"cannot read the expression `{expression}` at `{expression[pos:]}`")
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _number(value):
    if value is None:
        return 0.0
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value) if str(value).strip() else 0.0
    except ValueError:
        return float("nan")


def _equal(left, right) -> bool:
    # GitHub compares strings without case and coerces mismatched types to numbers.
    if isinstance(left, str) and isinstance(right, str):
        return left.lower() == right.lower()
    if type(left) is type(right):
        return left == right
    return _number(left) == _number(right)


def _truthy(value) -> bool:
    return value not in (None, False, 0, 0.0, "")


def evaluate(expression, context: dict):
    """Evaluate a GitHub expression (with or without `${{ }}`) against a context dict.
    `context["status"]` answers success()/failure(); `&&` and `||` return operands, as on GitHub."""
    if isinstance(expression, bool) or expression is None:
        return expression
    text = str(expression).strip()
    if text.startswith("${{") and text.endswith("}}"):
        text = text[3:-2]
    tokens, pos = _tokens(text), 0

    def peek():
        return tokens[pos] if pos < len(tokens) else (None, None)

    def take(value=None):
        nonlocal pos
        token = peek()
        if value is not None and token[1] != value:
            raise ValueError(f"expected `{value}` in `{expression}`")
        pos += 1
        return token

    def lookup(path):
        value = context
        for part in path.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        return value

    def primary():
        kind, value = take()
        if kind == "str":
            return value[1:-1].replace("''", "'")
        if kind == "num":
            return float(value)
        if value == "(":
            result = either()
            take(")")
            return result
        if value == "!":
            return not _truthy(primary())
        if kind == "name":
            if value in ("true", "false"):
                return value == "true"
            if value == "null":
                return None
            if peek()[1] == "(":
                take("(")
                args = []
                while peek()[1] != ")":
                    args.append(either())
                    if peek()[1] == ",":
                        take(",")
                take(")")
                return call(value, args)
            return lookup(value)
        raise ValueError(f"unexpected `{value}` in `{expression}`")

    def call(name, args):
        status = context.get("status", "success")
        functions = {
            "always": lambda: True,
            "success": lambda: status == "success",
            "failure": lambda: status == "failure",
            "cancelled": lambda: False,
            "contains": lambda a, b: (str(b).lower() in str(a).lower()) if isinstance(a, str)
            else any(_equal(x, b) for x in (a or [])),
            "startsWith": lambda a, b: str(a).lower().startswith(str(b).lower()),
            "endsWith": lambda a, b: str(a).lower().endswith(str(b).lower()),
            "format": lambda f, *a: re.sub(r"\{(\d+)\}", lambda m: str(a[int(m[1])]), f),
        }
        if name not in functions:
            raise ValueError(f"the simulator does not know the function {name}() in `{expression}`")
        return functions[name](*args)

    def comparison():
        left = primary()
        while peek()[1] in ("==", "!=", "<", ">", "<=", ">="):
            op = take()[1]
            right = primary()
            if op in ("==", "!="):
                left = _equal(left, right) == (op == "==")
            else:
                a, b = _number(left), _number(right)
                left = {"<": a < b, ">": a > b, "<=": a <= b, ">=": a >= b}[op]
        return left

    def both():
        left = comparison()
        while peek()[1] == "&&":
            take()
            right = comparison()
            left = right if _truthy(left) else left
        return left

    def either():
        left = both()
        while peek()[1] == "||":
            take()
            right = both()
            left = left if _truthy(left) else right
        return left

    result = either()
    if pos != len(tokens):
        raise ValueError(f"cannot read the end of `{expression}`")
    return result


def _as_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def substitute(text, context: dict) -> str:
    """Replace every `${{ expr }}` in a string, as GitHub does before a step runs."""
    return re.sub(r"\$\{\{(.*?)\}\}", lambda m: _as_text(evaluate(m[1], context)), str(text))


_STATUS_FUNCTION = re.compile(r"\b(always|success|failure|cancelled)\s*\(")


def condition_holds(condition, context: dict) -> bool:
    """A job's or step's `if:`; without a status function GitHub adds `success() &&`."""
    if condition is None:
        return context.get("status", "success") == "success"
    if isinstance(condition, bool):
        return condition and context.get("status", "success") == "success"
    holds = _truthy(evaluate(condition, context))
    if not _STATUS_FUNCTION.search(str(condition)):
        holds = holds and context.get("status", "success") == "success"
    return holds


# ---------------------------------------------------------------------------------------------
# Lint: structure and the no-ops practitioners actually write
# ---------------------------------------------------------------------------------------------

# A failure swallowed by the shell: `cmd || true`, `|| :`, `|| exit 0`, `|| echo ...`.
SWALLOWED = re.compile(r"\|\|\s*(?:(?:/usr)?/bin/)?(?:true\b|:(?=\s|;|\)|$)|exit\s+0\b|echo\b|printf\b)")
# The shell told to keep going after a failure: `set +e`, `set +ex`, `set +o errexit`.
ERREXIT_OFF = re.compile(r"(?:^|[;&|\s])set\s+(?:\+[A-Za-z]*e[A-Za-z]*\b|\+o\s+errexit\b)")
PIPEFAIL_OFF = re.compile(r"(?:^|[;&|\s])set\s+\+o\s+pipefail\b")
NO_OP_LINE = re.compile(r"\s*(?:#.*|echo\b.*|printf\b.*|true|:|exit 0|sleep \d+)?\s*")
REQUIRED_EVENTS = ("pull_request", "push", "schedule", "workflow_dispatch")


def can_fail(step: dict) -> bool:
    """A `run:` step can fail unless every line of it is a no-op such as `echo OK`."""
    return "run" in step and not all(NO_OP_LINE.fullmatch(line) for line in str(step["run"]).splitlines())


def upstream(workflow: dict, name: str) -> set[str]:
    """Every job `name` waits for, directly or through other jobs."""
    seen, todo = set(), list(needs_of(workflow["jobs"][name]))
    while todo:
        job = todo.pop()
        if job not in seen:
            seen.add(job)
            todo += needs_of(workflow["jobs"].get(job, {}))
    return seen


def _is_true(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "${{ true }}")


def _shell_problem(shell) -> str | None:
    if shell is None or shell in ("bash", "sh", "pwsh", "python", "cmd", "powershell"):
        return None
    if "{0}" in str(shell) and not re.search(r"\s-\w*e", str(shell)):
        return f"custom shell `{shell}` runs without -e: a failing command does not stop the step"
    return None


def _runs(job: dict) -> str:
    return "\n".join(str(step.get("run", "")) for step in job.get("steps", []) or [])


def _push_context(workflow: dict, run_id: int, sha: str) -> dict:
    return {"github": {"event_name": "push", "ref": "refs/heads/main", "sha": sha, "run_id": run_id,
                       "workflow": workflow.get("name", "workflow"), "head_ref": ""}, "inputs": {}}


def lint(workflow: dict) -> list[str]:
    """Problems that make a workflow protect less than it seems to; [] means none found."""
    problems = []
    events = triggers(workflow)
    missing = [event for event in REQUIRED_EVENTS if event not in events]
    if missing:
        problems.append(f"triggers: missing {', '.join(missing)}")
    if "push" in events and "main" not in (((events["push"] or {}).get("branches")) or ["main"]):
        problems.append("triggers: push does not cover main")
    jobs = workflow.get("jobs") or {}
    try:
        job_order(workflow)
    except CycleError as err:
        problems.append(f"needs: a cycle between jobs {err.args[1]}")
    default_shell = ((workflow.get("defaults") or {}).get("run") or {}).get("shell")
    if default_shell != "bash":
        problems.append("defaults: run steps do not use `shell: bash` (GitHub then runs `bash -e` without pipefail)")
    if _shell_problem(default_shell):
        problems.append(f"defaults: {_shell_problem(default_shell)}")

    for name, job in jobs.items():
        steps = job.get("steps") or []
        unknown = [n for n in needs_of(job) if n not in jobs]
        if unknown:
            problems.append(f"{name}: needs unknown job(s) {unknown}")
        if _is_true(job.get("continue-on-error")):
            problems.append(f"{name}: `continue-on-error: true` on the job: its failure never fails the run")
        if "timeout-minutes" not in job:
            problems.append(f"{name}: no timeout-minutes (the default is 360)")
        if not any(can_fail(step) for step in steps):
            problems.append(f"{name}: no step can fail (only no-ops)")
        for number, step in enumerate(steps, start=1):
            label = f"{name}, step {number} ({step.get('name') or step.get('uses') or str(step.get('run', '')).splitlines()[0]})"
            if _is_true(step.get("continue-on-error")):
                problems.append(f"{label}: `continue-on-error: true`: the step's failure is ignored")
            run = str(step.get("run", ""))
            for line in run.splitlines():
                code = line.split(" #")[0]
                swallowed = SWALLOWED.search(code)
                if swallowed:
                    problems.append(f"{label}: `{swallowed.group(0).strip()}` turns a failure into success")
                if ERREXIT_OFF.search(code):
                    problems.append(f"{label}: `set +e` lets the step carry on after a failure")
                if PIPEFAIL_OFF.search(code):
                    problems.append(f"{label}: `set +o pipefail` hides a failure inside a pipe")
            if _shell_problem(step.get("shell")):
                problems.append(f"{label}: {_shell_problem(step.get('shell'))}")
        moves_champion = re.search(r"registry\.py\b.*\b(promote|rollback)\b", _runs(job))
        if moves_champion and environment_of(job) is None:
            problems.append(f"{name}: moves @champion without an `environment:` (nobody approves it)")

    runs = {name: _runs(job) for name, job in jobs.items()}
    test_jobs = [n for n, r in runs.items() if "pytest" in r or re.search(r"workflow\.py\W+lint", r)]
    data_jobs = [n for n, r in runs.items() if "ci_model.py" in r and "--check-data-only" in r]
    train_jobs = [n for n, r in runs.items() if "ci_model.py" in r and "--check-data-only" not in r]
    for gate, found in (("code checks (tests or lint)", test_jobs), ("data gate", data_jobs),
                        ("evaluation gate", train_jobs)):
        if not found:
            problems.append(f"gates: no job runs the {gate}")
    for name in train_jobs:
        if data_jobs and not set(data_jobs) & upstream(workflow, name):
            problems.append(f"{name}: trains without waiting for the data gate")
        uploads = [s for s in jobs[name].get("steps") or [] if "upload-artifact" in str(s.get("uses", ""))]
        if not any("always()" in str(s.get("if")) for s in uploads):
            problems.append(f"{name}: no upload with `if: always()`, a failed run leaves no evidence")

    concurrency = workflow.get("concurrency")
    if concurrency is not None and "push" in events:
        group = concurrency.get("group") if isinstance(concurrency, dict) else concurrency
        cancel = concurrency.get("cancel-in-progress", False) if isinstance(concurrency, dict) else False
        first, second = _push_context(workflow, 101, "a" * 40), _push_context(workflow, 102, "b" * 40)
        try:
            same_group = substitute(group, first) == substitute(group, second)
            cancels = _truthy(evaluate(cancel, first))
        except ValueError as err:
            problems.append(f"concurrency: cannot evaluate: {err}")
        else:
            if same_group:
                problems.append("concurrency: two pushes to main share one group, so a newer push cancels the "
                                "pending one and that commit is never checked")
            elif cancels:
                problems.append("concurrency: cancel-in-progress is true for pushes to main")
    return problems


def no_op_mutants(workflow: dict) -> dict[str, dict]:
    """The good workflow with one no-op injected into its data-gate step, one variant each:
    the lint is tested the way lesson 08 tests gates (every mutant must be caught)."""
    import copy

    def gate_step(mutant):
        for job_name, job in mutant["jobs"].items():
            for step in job.get("steps") or []:
                if "--check-data-only" in str(step.get("run", "")):
                    return job_name, step
        raise ValueError("the workflow has no data-gate step (ci_model.py --check-data-only) to mutate")

    def variant(change):
        mutant = copy.deepcopy(workflow)
        job_name, step = gate_step(mutant)
        change(mutant["jobs"][job_name], step)
        return mutant

    def append(suffix):
        return lambda job, step: step.update(run=step["run"].rstrip() + suffix)

    return {
        "continue-on-error: true (step)": variant(lambda job, step: step.update({"continue-on-error": True})),
        "continue-on-error: true (job)": variant(lambda job, step: job.update({"continue-on-error": True})),
        "|| true": variant(append(" || true")),
        "|| :": variant(append(" || :")),
        "|| exit 0": variant(append(" || exit 0")),
        "|| echo ...": variant(append(' || echo "data gate failed, carrying on"')),
        "set +e": variant(lambda job, step: step.update(
            run="set +e\n" + step["run"].rstrip() + "\necho \"data gate done\"")),
        "shell: bash {0} (no -e)": variant(lambda job, step: step.update(
            shell="bash {0}", run=step["run"].rstrip() + "\necho \"data gate done\"")),
        "gate replaced by echo": variant(lambda job, step: step.update(run='echo "data gate passed"')),
    }


def plan(workflow: dict, event: str, inputs: dict | None = None) -> list[str]:
    """The jobs an event starts if every job succeeds, in `needs:` order."""
    started = []
    for name in job_order(workflow):
        job = workflow["jobs"][name]
        context = {"github": {"event_name": event, "ref": "refs/heads/main"}, "inputs": inputs or {},
                   "status": "success" if all(n in started for n in needs_of(job)) else "failure"}
        if condition_holds(job.get("if"), context):
            started.append(name)
    return started


# ---------------------------------------------------------------------------------------------
# Concurrency: which runs of a burst get checked
# ---------------------------------------------------------------------------------------------


def queue(workflow: dict, arrivals: list[dict]) -> list[str]:
    """Runs arriving while the first is still going, in order; returns each run's fate under the
    workflow's `concurrency:` (at most one running and one pending per group; a newer run cancels
    the pending one; cancel-in-progress also cancels the running one)."""
    concurrency = workflow.get("concurrency")
    group = concurrency.get("group") if isinstance(concurrency, dict) else concurrency
    cancel = concurrency.get("cancel-in-progress", False) if isinstance(concurrency, dict) else False
    fate, running, pending = {}, {}, {}
    for number, run in enumerate(arrivals):
        context = {"github": {"workflow": workflow.get("name", "workflow"), "run_id": 1000 + number, **run},
                   "inputs": {}}
        key = substitute(group, context).lower() if group is not None else f"run-{number}"
        if key in pending:
            fate[pending.pop(key)] = "cancelled while pending"
        if key in running and _truthy(evaluate(cancel, context)):
            fate[running.pop(key)] = "cancelled while running"
        if key in running:
            pending[key] = number
        else:
            running[key] = number
    for number in range(len(arrivals)):
        fate.setdefault(number, "checked")
    return [fate[number] for number in range(len(arrivals))]


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------


@dataclass
class JobResult:
    status: str                     # success | failure | skipped | waiting
    detail: str = ""
    steps: list = field(default_factory=list)   # (step label, outcome, exit code or None)
    outputs: dict = field(default_factory=dict)
    log: str = ""


@dataclass
class SimulatedRun:
    event: str
    jobs: dict
    _state: dict | None = field(default=None, repr=False)

    def approve(self) -> "SimulatedRun":
        """A reviewer approves the waiting deployment: the same run continues."""
        if self._state is None or "waiting" not in self.by_status():
            raise ValueError("this run has no job waiting for approval")
        try:
            _advance(self, approve=True)
        finally:
            self.discard()
        return self

    def discard(self):
        """Remove the run's scratch folder (a waiting run is then never approved)."""
        if self._state is not None:
            shutil.rmtree(self._state["scratch"], ignore_errors=True)
            self._state = None

    def status(self, name):
        return self.jobs[name].status

    def by_status(self) -> dict:
        found = {}
        for name, job in self.jobs.items():
            found.setdefault(job.status, []).append(name)
        return found

    @property
    def conclusion(self) -> str:
        statuses = {job.status for job in self.jobs.values()}
        if "failure" in statuses:
            return "failure"
        return "waiting for approval" if "waiting" in statuses else "success"

    def report(self) -> str:
        lines = [f"{name:<12} {job.status:<8} {job.detail}".rstrip() for name, job in self.jobs.items()]
        return "\n".join(lines + [f"=> run {self.conclusion}"])


_RUN_IDS = iter(range(1001, 10**9))


def _copy_checkout(target: Path, checkout: list):
    """Copy each path to its place under the repository (or a (source, place) pair) into a job's folder."""
    for item in checkout:
        source, relative = (Path(item[0]).resolve(), Path(item[1])) if isinstance(item, tuple) else (Path(item).resolve(), None)
        if relative is None:
            relative = source.relative_to(REPO) if source.is_relative_to(REPO) else Path(source.name)
        if source.is_dir():
            shutil.copytree(source, target / relative, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative)


def _upload(step_with: dict, workspace: Path, store: Path) -> tuple[int, str]:
    name = str(step_with.get("name", "artifact"))
    paths = [p.strip() for p in str(step_with.get("path", "")).splitlines() if p.strip()]
    found = [workspace / p for p in paths if (workspace / p).exists()]
    if not found:
        rule = str(step_with.get("if-no-files-found", "warn"))
        return (1, f"upload {name}: no files found at {paths}") if rule == "error" else (0, f"upload {name}: nothing to upload")
    target = store / name
    if target.exists():
        return 1, f"upload {name}: an artifact of that name already exists in this run"
    target.mkdir(parents=True)
    for path in found:
        if path.is_dir():
            shutil.copytree(path, target, dirs_exist_ok=True)  # like upload-artifact: a folder's contents
        else:
            shutil.copy2(path, target / path.name)
    return 0, f"uploaded {name}"


def _download(step_with: dict, workspace: Path, store: Path) -> tuple[int, str]:
    name = str(step_with.get("name", ""))
    source = store / name
    if not source.is_dir():
        return 1, f"download {name}: no artifact of that name in this run"
    shutil.copytree(source, workspace / str(step_with.get("path", ".")), dirs_exist_ok=True)
    return 0, f"downloaded {name}"


def _read_pairs(path: Path) -> dict:
    """KEY=value lines written to $GITHUB_ENV or $GITHUB_OUTPUT (the heredoc form is not needed here)."""
    pairs = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if "=" in line:
                key, value = line.split("=", 1)
                pairs[key.strip()] = value
    return pairs


def _run_job(name, job, workflow, context, workspace: Path, store: Path, base_env: dict) -> JobResult:
    shell_default = ((workflow.get("defaults") or {}).get("run") or {}).get("shell")
    env = dict(base_env)
    for scope in (workflow.get("env") or {}, job.get("env") or {}):
        env.update({k: substitute(v, {**context, "env": env}) for k, v in scope.items()})
    github_env, github_output = workspace.parent / f"{name}.env", workspace.parent / f"{name}.output"
    result, steps_context, status, logs = JobResult("success"), {}, "success", []
    timeout = float(job.get("timeout-minutes", 360)) * 60
    for number, step in enumerate(job.get("steps") or [], start=1):
        label = step.get("name") or step.get("uses") or str(step.get("run", "")).splitlines()[0]
        step_context = {**context, "env": env, "steps": steps_context, "status": status}
        if not condition_holds(step.get("if"), step_context):
            result.steps.append((label, "skipped", None))
            continue
        step_env = {**env, **{k: substitute(v, step_context) for k, v in (step.get("env") or {}).items()}}
        complaint = ""
        if "uses" in step:
            action = str(step["uses"]).split("@")[0]
            step_with = {k: substitute(v, step_context) for k, v in (step.get("with") or {}).items()}
            if action in ("actions/checkout", "actions/setup-python", "actions/cache"):
                result.steps.append((label, "provided", None))  # the copied checkout and this Python
                continue
            elif action == "actions/upload-artifact":
                code, said = _upload(step_with, workspace, store)
            elif action == "actions/download-artifact":
                code, said = _download(step_with, workspace, store)
            else:
                code, said = 1, f"the simulator cannot run the action {action}"
            complaint = said if code else ""
        else:
            script = substitute(step["run"], step_context)
            if re.fullmatch(r"\s*python -m pip install [^\n;&|]*\s*", script):
                result.steps.append((label, "provided", None))  # this Python already has the packages
                continue
            shell = step.get("shell") or shell_default
            options = {"bash": ["bash", "--noprofile", "--norc", "-eo", "pipefail"], None: ["bash", "-e"]}.get(shell)
            if options is None:
                options = str(shell).replace("{0}", "").split()
            script_file = workspace.parent / f"{name}-step{number}.sh"
            script_file.write_text(script)
            step_env.update(GITHUB_ENV=str(github_env), GITHUB_OUTPUT=str(github_output),
                            GITHUB_WORKSPACE=str(workspace), GITHUB_JOB=name)
            github_output.write_text("")
            try:
                proc = subprocess.run([*options, str(script_file)], cwd=workspace, env=step_env,
                                      capture_output=True, text=True, timeout=timeout)
                code, said, complaint = proc.returncode, (proc.stdout + proc.stderr), proc.stderr
            except subprocess.TimeoutExpired:
                code, said = 124, f"timed out after {job.get('timeout-minutes', 360)} minutes"
                complaint = said
            env.update(_read_pairs(github_env))
            github_env.write_text("")
            if step.get("id"):
                steps_context[step["id"]] = {"outputs": _read_pairs(github_output),
                                             "outcome": "success" if code == 0 else "failure"}
        logs.append(f"--- {label} (exit {code})\n{said.rstrip()}")
        if code != 0 and _is_true(step.get("continue-on-error")):
            result.steps.append((label, "failure ignored (continue-on-error)", code))
            continue
        result.steps.append((label, "success" if code == 0 else "failure", code))
        if code != 0 and status == "success":
            status = "failure"
            # The first line on stderr usually says why; otherwise the last line of the output.
            problem = [line.strip() for line in complaint.splitlines() if line.strip()] or \
                [line.strip() for line in said.splitlines() if line.strip()][-1:]
            result.status, result.detail = "failure", f"exit {code}: {problem[0] if problem else '(no output)'}"
    result.log = "\n".join(logs)
    output_context = {**context, "env": env, "steps": steps_context}
    result.outputs = {k: substitute(v, output_context) for k, v in (job.get("outputs") or {}).items()}
    if result.status == "failure" and _is_true(job.get("continue-on-error")):
        result.status, result.detail = "success", f"failure ignored (continue-on-error): {result.detail}"
    return result


def simulate(workflow, event: str, snapshot=None, approve=False, *, inputs: dict | None = None,
             registry=None, checkout=None, ref: str = "refs/heads/main", scratch_dir=None) -> SimulatedRun:
    """Run a workflow's job graph locally for one event.

    workflow: a dict from `load()` or a path. snapshot: a CSV file, or a folder of dated
    snapshots (the data source; a run reads the newest). registry: the model registry's folder,
    shared between runs like a registry service. approve: whether a reviewer approves the jobs
    behind a protected environment (`production`) at once; otherwise they wait, and
    `run.approve()` continues the same run later, as approving a deployment does on GitHub.
    The run's scratch folder (under `scratch_dir`, default the system's temporary folder) is
    removed when the run is over; a waiting run keeps it until `approve()` or `discard()`."""
    workflow = load(workflow) if not isinstance(workflow, dict) else workflow
    unknown = {need for job in workflow["jobs"].values() for need in needs_of(job)} - set(workflow["jobs"])
    if unknown:
        raise ValueError(f"jobs need {sorted(unknown)}, which the workflow does not define; run lint() first")
    if event not in triggers(workflow):
        raise ValueError(f"the workflow is not triggered by {event!r}; it listens to {sorted(triggers(workflow))}")
    scratch = Path(tempfile.mkdtemp(prefix="simulated-run-", dir=scratch_dir))
    run = SimulatedRun(event, {})
    try:
        data_source = scratch / "data-source"
        if snapshot is not None and Path(snapshot).is_dir():
            data_source = Path(snapshot).resolve()
        else:
            data_source.mkdir()
            if snapshot is not None:
                shutil.copy2(snapshot, data_source / Path(snapshot).name)
        registry = Path(registry).resolve() if registry is not None else scratch / "registry"
        declared = ((triggers(workflow).get("workflow_dispatch") or {}).get("inputs")) or {}
        given = {key: spec.get("default", "") if isinstance(spec, dict) else "" for key, spec in declared.items()}
        given.update(inputs or {})
        run_id = next(_RUN_IDS)
        pull = ref if event == "pull_request" and ref != "refs/heads/main" else "refs/pull/1/merge"
        context = {
            "github": {"event_name": event, "ref": pull if event == "pull_request" else ref,
                       "sha": f"{run_id:040x}", "run_id": run_id, "run_number": run_id - 1000,
                       "workflow": workflow.get("name", "workflow"), "actor": "simulated-user",
                       "repository": "course/cicd-for-models"},
            "inputs": given if event == "workflow_dispatch" else {},
            "vars": {"DATA_SOURCE": str(data_source), "MODEL_REGISTRY": str(registry)},
            "runner": {"os": "Linux", "temp": str(scratch / "runner-temp")},
        }
        (scratch / "runner-temp").mkdir()
        base_env = {key: value for key, value in os.environ.items() if not key.startswith("GITHUB_")}
        base_env.update(CI="true", GITHUB_ACTIONS="true", GITHUB_EVENT_NAME=event, GITHUB_SHA=context["github"]["sha"],
                        GITHUB_RUN_ID=str(run_id), GITHUB_ACTOR="simulated-user", GITHUB_REF=context["github"]["ref"],
                        RUNNER_TEMP=context["runner"]["temp"],
                        PATH=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
                        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        # A real runner has its cores to itself; simulated jobs share this machine's. With one BLAS
        # thread per step, small models do not spin threads against each other (same results).
        for threads in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            base_env.setdefault(threads, "1")
        (scratch / "artifacts").mkdir()
        run._state = {"workflow": workflow, "context": context, "scratch": scratch, "base_env": base_env,
                      "checkout": checkout if checkout is not None else [PIPELINE]}
        _advance(run, approve)
        return run
    finally:
        if run._state is None or "waiting" not in run.by_status():
            run.discard()


def _advance(run: SimulatedRun, approve: bool):
    """Start every job that can start; jobs behind a protected environment wait unless approved."""
    state = run._state
    workflow, context, scratch = state["workflow"], state["context"], state["scratch"]
    jobs = run.jobs
    for name in job_order(workflow):
        if name in jobs and jobs[name].status != "waiting":
            continue  # finished before the approval
        job = workflow["jobs"][name]
        needs = needs_of(job)
        waiting = [n for n in needs if jobs[n].status == "waiting"]
        if waiting:
            jobs[name] = JobResult("waiting", f"needs {', '.join(waiting)}, which waits for approval")
            continue
        failed = any(jobs[n].status in ("failure", "skipped") for n in needs)
        job_context = {**context, "status": "failure" if failed else "success",
                       "needs": {n: {"result": jobs[n].status, "outputs": jobs[n].outputs} for n in needs}}
        if not condition_holds(job.get("if"), job_context):
            blocked = [n for n in needs if jobs[n].status != "success"]
            jobs[name] = JobResult("skipped", f"needs {', '.join(blocked)}" if blocked and failed
                                   else f"if: false for {run.event}")
            continue
        environment = environment_of(job)
        if environment in PROTECTED_ENVIRONMENTS and not approve:
            jobs[name] = JobResult("waiting", f"waiting for approval (environment: {environment})")
            continue
        workspace = scratch / "jobs" / name / "workspace"
        workspace.mkdir(parents=True)
        _copy_checkout(workspace, state["checkout"])
        jobs[name] = _run_job(name, job, workflow, job_context, workspace, scratch / "artifacts", state["base_env"])
        if environment in PROTECTED_ENVIRONMENTS and jobs[name].status == "success":
            jobs[name].detail = f"approved (environment: {environment})"
    run.jobs = {name: jobs[name] for name in workflow["jobs"]}  # in the file's order


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="workflow.py", description="Lint or plan a GitHub Actions workflow.")
    sub = parser.add_subparsers(dest="command", required=True)
    lint_cmd = sub.add_parser("lint", help="exit 1 if a workflow can protect less than it seems to")
    lint_cmd.add_argument("files", nargs="+", type=Path)
    plan_cmd = sub.add_parser("plan", help="the jobs an event would start if every job succeeded")
    plan_cmd.add_argument("file", type=Path)
    plan_cmd.add_argument("event")
    args = parser.parse_args(argv)
    files = args.files if args.command == "lint" else [args.file]
    workflows = {}
    for path in files:
        try:
            workflows[path] = load(path)
        except (OSError, yaml.YAMLError, ValueError) as err:
            print(f"{path}: cannot read the workflow: {str(err).splitlines()[0]}; fix the file or its path",
                  file=sys.stderr)
            return 2
    if args.command == "plan":
        print(" -> ".join(plan(workflows[args.file], args.event)) or "(no job)")
        return 0
    found = 0
    for path, workflow in workflows.items():
        problems = lint(workflow)
        found += len(problems)
        print(f"{path.name}: {'clean' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr if problems else sys.stdout)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
