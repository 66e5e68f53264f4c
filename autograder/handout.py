"""The learner's copy of the course: what a JupyterHub hands out in a graded class.

It holds what a learner needs and nothing an instructor must keep: the lessons (with the
pipeline code they run), the data, the released exercises and the `autograder` package for the
self-check. It never holds `solutions/`, hidden tests, sample submissions, the tests, the class
folder or the repository's history. The copy is checked after it is written: a solution or
hidden-test line found in it stops the build and the copy is removed.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from . import AutograderError
from .config import REPO

# Top-level entries of the repository that go into the copy (everything else stays behind).
INCLUDED = ("course", "data", "autograder")
SKIPPED_NAMES = (".ipynb_checkpoints", "__pycache__", ".scratch", "*.pyc")
# Files that exist only for maintainers: the data generator writes hashes the learner never needs.
SKIPPED_FILES = ("data/generate.py",)
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
_HIDDEN_BLOCK = re.compile(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", re.S)

LEARNER_README = """\
# CI/CD for Models: your copy

Open `course/00_start_here.ipynb` and work through the lessons in order. Exercises arrive
through JupyterLab's menu *Nbgrader > Assignment List*: fetch one, solve it, check it, submit it.

Check an exercise before you submit it (from this folder, in a terminal):

    python -m autograder check ex02_data_gate/ex02_data_gate.ipynb

It runs the visible tests. Hidden tests run when your instructor grades; your feedback
appears in the Assignment List after grading.
"""


def _readable_text(path: Path) -> str | None:
    """A file's text as a person would read it: a notebook's cell sources, or the file itself."""
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None
    if path.suffix == ".ipynb":
        try:
            cells = json.loads(text).get("cells", [])
        except (json.JSONDecodeError, AttributeError):
            return text
        return "\n".join("".join(c.get("source", [])) for c in cells)
    return text


def hidden_test_lines(repo: Path = REPO) -> set[str]:
    """Lines of the hidden-test blocks in solutions/ that a learner must never see: long enough
    to be telling (short ones such as `assert ok` recur legitimately) and not also in the
    released notebook's visible tests. Solution code is not among them: lessons teach code much
    like it, on purpose."""
    lines = set()
    for source in sorted((repo / "solutions").glob("*/*.ipynb")):
        hidden = set()
        for cell in json.loads(source.read_text(encoding="utf-8")).get("cells", []):
            for block in _HIDDEN_BLOCK.findall("".join(cell.get("source", []))):
                hidden.update(line.strip() for line in block.splitlines() if len(line.strip()) > 25)
        released = repo / "course" / source.parent.name / source.name
        visible = _readable_text(released) if released.is_file() else ""
        lines |= hidden - {line.strip() for line in (visible or "").splitlines()}
    return lines


def leaks_in(folder: Path, secrets: set[str]) -> list[str]:
    """Files of `folder` with a solution or hidden-test marker in a notebook, or a hidden-test
    line anywhere, each with what was found."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        decoded = _readable_text(path)
        if decoded is None:
            continue
        # Markers matter in notebooks; the autograder's own code names them, harmlessly.
        marker = next((m for m in MARKERS if m in decoded), None) if path.suffix == ".ipynb" else None
        if marker:
            found.append(f"{path.relative_to(folder)}: contains '{marker}'")
            continue
        present = {line.strip() for line in decoded.splitlines()} & secrets
        if present:
            found.append(f"{path.relative_to(folder)}: contains {len(present)} hidden-test line(s), "
                         f"e.g. {sorted(present)[0]!r}")
    return found


def build(destination: Path, repo: Path = REPO) -> dict[str, int]:
    """Write the learner's copy into `destination` (a new folder) and return what it holds."""
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise AutograderError(f"{destination} already exists and is not empty; give a new folder, "
                              "so that nothing is overwritten")
    missing = [name for name in INCLUDED if not (repo / name).is_dir()]
    if missing:
        raise AutograderError(f"{repo} has no {', '.join(missing)}; run this from a full checkout of the course")
    try:
        destination.mkdir(parents=True, exist_ok=True)
        for name in INCLUDED:
            shutil.copytree(repo / name, destination / name, ignore=shutil.ignore_patterns(*SKIPPED_NAMES))
        for rel in SKIPPED_FILES:
            (destination / rel).unlink(missing_ok=True)
        (destination / "README.md").write_text(LEARNER_README)
    except OSError as err:
        shutil.rmtree(destination, ignore_errors=True)
        raise AutograderError(f"could not write the learner's copy to {destination} ({err.strerror}); "
                              "choose a folder you can write to") from None
    leaks = leaks_in(destination, hidden_test_lines(repo))
    if leaks:
        shutil.rmtree(destination, ignore_errors=True)
        raise AutograderError("the learner's copy would leak solutions, so it was not written: "
                              + "; ".join(leaks[:3]) + ". Regenerate the released exercises with "
                              "`python -m autograder release NAME` and try again.")
    return {
        "lessons": len(list((destination / "course").glob("[0-9][0-9]_*.ipynb"))),
        "exercises": len([p for p in (destination / "course").glob("ex*") if p.is_dir()]),
        "data files": len([p for p in (destination / "data").rglob("*") if p.is_file()]),
    }
