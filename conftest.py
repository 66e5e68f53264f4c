"""Expected outputs for lesson cells tagged `nbval-check-output`.

Lessons are committed without outputs, so nbval alone would only prove they run. The outputs
that teach (a gate's verdict, a metric table, a hash) are kept in tests/golden/<lesson>.json,
keyed by cell id, and put in front of nbval before it compares. `pytest --update-golden`
records them afresh from a real run; a tagged cell with no recorded output fails.
"""
import json
import os
import re
from pathlib import Path

import nbformat
import pytest

# Two notebooks run at once on two cores: one BLAS thread each is much faster than both fighting.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

GOLDEN_DIR = Path(__file__).parent / "tests" / "golden"
CHECK_TAG = "nbval-check-output"


def pytest_addoption(parser):
    parser.addoption("--update-golden", action="store_true",
                     help="record the outputs of tagged lesson cells into tests/golden/")


def _golden_file(notebook) -> Path:
    return GOLDEN_DIR / f"{Path(str(notebook)).stem}.json"


def _tagged(cell) -> bool:
    return CHECK_TAG in cell.get("metadata", {}).get("tags", [])


def _install_golden_hooks(nbval_plugin):
    original_collect = nbval_plugin.IPyNbFile.collect
    original_compare = nbval_plugin.IPyNbCell.compare_outputs
    original_runtest = nbval_plugin.IPyNbCell.runtest

    def collect(self):
        path = _golden_file(self.fspath)
        golden = json.loads(path.read_text()) if path.is_file() else {}
        for item in original_collect(self):
            if _tagged(item.cell):
                expected = golden.get(item.cell.get("id"))
                item.golden_missing = expected is None
                if expected is not None:
                    item.cell.outputs = [nbformat.from_dict(o) for o in expected]
                    item.cell.execution_count = 1
            yield item

    def runtest(self):
        updating = self.config.getoption("--update-golden")
        if _tagged(self.cell) and getattr(self, "golden_missing", False) and not updating:
            pytest.fail(f"cell '{self.cell.get('id')}' is tagged {CHECK_TAG} but has no expected output "
                        f"in {_golden_file(self.parent.fspath).name}; run `python -m pytest --update-golden`")
        if updating and _tagged(self.cell):
            self.cell.execution_count = 1  # make nbval call compare_outputs, which records
        return original_runtest(self)

    def compare_outputs(self, test, ref, skip_compare=None):
        if self.config.getoption("--update-golden") and _tagged(self.cell):
            path = _golden_file(self.parent.fspath)
            golden = json.loads(path.read_text()) if path.is_file() else {}
            golden[self.cell.get("id")] = [dict(o) for o in test]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
            return True
        return original_compare(self, test, ref, skip_compare)

    nbval_plugin.IPyNbFile.collect = collect
    nbval_plugin.IPyNbCell.runtest = runtest
    nbval_plugin.IPyNbCell.compare_outputs = compare_outputs


def pytest_configure(config):
    from nbval import plugin as nbval_plugin
    if not getattr(nbval_plugin, "_golden_hooks", False):
        _install_golden_hooks(nbval_plugin)
        nbval_plugin._golden_hooks = True


# --- the suite leaves the repository as it found it ---------------------------------------
# Lessons and exercises may write only to temporary or git-ignored folders. The controller
# process compares `git status` before and after the run; a new change fails the session.

def _repo_changes():
    import subprocess
    done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=Path(__file__).parent,
                          capture_output=True, text=True)
    return set(done.stdout.splitlines()) if done.returncode == 0 else None


def pytest_sessionstart(session):
    if not hasattr(session.config, "workerinput"):
        session.config._repo_changes_before = _repo_changes()


def pytest_sessionfinish(session, exitstatus):
    before = getattr(session.config, "_repo_changes_before", None)
    if before is None or session.config.getoption("--update-golden"):
        return
    added = sorted((_repo_changes() or set()) - before)
    if added:
        session.config.get_terminal_writer().line(
            "FAILED: the test run wrote into the repository (lessons and exercises may write only to "
            "temporary or git-ignored folders):\n  " + "\n  ".join(added), red=True)
        session.exitstatus = 1


# --- spreading the suite over workers ---------------------------------------------------------
# Each group of tests runs on one worker. A group is a file (so module-scoped set-up, and a
# lesson's cells sharing one kernel, stay together), except that tests parametrized by an
# exercise are grouped by that exercise: its one graded fixture class (tests/conftest.py) is
# then shared by every test that needs it, in any file, while the six exercises spread over the
# workers. xdist's own `--dist loadgroup` cannot do this on pytest 9.2 (it marks groups by
# rewriting node ids, which pytest 9.2 no longer reads: pytest-dev/pytest-xdist#1386), so the
# groups are read from the node ids here, by a scheduler of our own.

_EXERCISE_PARAMETER = re.compile(r"\[(ex\d\d_[a-z0-9_]+?)(?:-[^\]]*)?\]$")


def suite_group(nodeid: str) -> str:
    """The group a test runs in: its exercise when it is parametrized by one, else its file."""
    found = _EXERCISE_PARAMETER.search(nodeid)
    return found.group(1) if found else nodeid.split("::")[0]


# Groups that take longest start first, so that none is left running alone at the end (measured
# with `pytest --durations=0`, summed per group). This changes only the order, never what runs;
# a group not listed starts after these, in the order it was collected.
SLOWEST_GROUPS_FIRST = [
    "tests/test_class_day.py", "tests/test_trust.py", "tests/test_jupyterhub.py", "ex06_ci_script",
    "tests/test_parallel.py", "ex05_registry", "ex03_model_gate", "ex04_metadata", "tests/test_cli.py",
    "tests/test_sandbox.py", "ex02_data_gate", "tests/test_every_path.py", "tests/test_delivery.py",
    "tests/test_verdicts.py", "ex01_pipeline", "tests/test_own_nbgrader_assignment.py", "tests/test_browser.py",
    "course/05_local_ci_script.ipynb", "tests/test_bad_submissions.py",
]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    """Order the tests group by group, slowest groups first (a stable sort: within a group, and
    within a lesson's cells, the order stays as collected)."""
    rank = {group: i for i, group in enumerate(SLOWEST_GROUPS_FIRST)}
    items.sort(key=lambda item: rank.get(suite_group(item.nodeid), len(rank)))


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: unknown when it runs with -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class ByExerciseOrFile(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return suite_group(nodeid)

    config.option.loadscopereorder = False  # keep the order above, not "most tests first"
    return ByExerciseOrFile(config, log)
