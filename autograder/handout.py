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

from . import AutograderError, reports
from .config import REPO

# Top-level entries of the repository that go into the copy (everything else stays behind).
INCLUDED = ("course", "data", "autograder")
SKIPPED_NAMES = (".ipynb_checkpoints", "__pycache__", ".scratch", "*.pyc")
# Files that exist only for maintainers: the data generator writes hashes the learner never needs.
SKIPPED_FILES = ("data/generate.py",)
MARKERS = ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS")
WINDOW = 3  # consecutive hidden-test lines that make a leak outside the exercises
_ANY_BLOCK = re.compile(r"### BEGIN (SOLUTION|HIDDEN TESTS)\n.*?### END \1", re.S)

LEARNER_README = """\
# CI/CD for Models: your copy

Open `course/00_start_here.ipynb` and work through the lessons in order. Exercises arrive
through JupyterLab's menu *Nbgrader > Assignment List*: fetch one, solve it, check it, submit it.

Check an exercise before you submit it, from this folder, in a terminal. For the copy the
Assignment List fetched (it lands in a folder named after the exercise, here):

    python -m autograder check ex02_data_gate/ex02_data_gate.ipynb

For the copy that ships in `course/` (self-study, without an instructor):

    python -m autograder check course/ex02_data_gate/ex02_data_gate.ipynb

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


def _hidden_blocks(repo: Path) -> dict[str, tuple[list[list[str]], set[str]]]:
    """Per assignment: its hidden-test blocks (lists of stripped, non-blank lines), and the lines
    of its source notebook outside any hidden-test or solution block, which learners see anyway."""
    found: dict[str, tuple[list[list[str]], set[str]]] = {}
    for source in sorted((repo / "solutions").glob("*/*.ipynb")):
        blocks, visible = [], set()
        for cell in json.loads(source.read_text(encoding="utf-8")).get("cells", []):
            text = "".join(cell.get("source", []))
            for block in reports.HIDDEN_BLOCK.findall(text):
                blocks.append([line.strip() for line in block.splitlines() if line.strip()])
            visible |= {line.strip() for line in _ANY_BLOCK.sub("", text).splitlines()}
        found[source.parent.name] = (blocks, visible)
    return found


def hidden_test_lines(repo: Path = REPO) -> set[str]:
    """Single lines of the hidden-test blocks that a released exercise must never contain: long
    enough to be telling (short ones such as `assert ok` recur legitimately) and not also in the
    visible part of any exercise (learners see those lines anyway, e.g. an idiomatic
    `except FileNotFoundError as error:` that one exercise shows and another's hidden test uses)."""
    hidden, visible = set(), set()
    for blocks, shown in _hidden_blocks(repo).values():
        hidden |= {line for block in blocks for line in block if len(line) > 25}
        visible |= shown
    return hidden - visible


def hidden_test_windows(repo: Path = REPO, width: int = WINDOW) -> set[tuple[str, ...]]:
    """Every run of `width` consecutive lines of a hidden-test block that is telling (two of its
    lines longer than 25 characters) and not all visible tests too. Lessons and shipped code may
    share an idiomatic line or two with a hidden test (`warnings.simplefilter("always")`), never
    a run of telling lines: that is a pasted test."""
    windows = set()
    for blocks, visible in _hidden_blocks(repo).values():
        for block in blocks:
            for i in range(len(block) - width + 1):
                window = tuple(block[i:i + width])
                if sum(len(line) > 25 for line in window) >= 2 and not set(window) <= visible:
                    windows.add(window)
    return windows


def _windows_of(text: str, width: int = WINDOW) -> set[tuple[str, ...]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return {tuple(lines[i:i + width]) for i in range(len(lines) - width + 1)}


def leaks_in(folder: Path, repo: Path = REPO) -> list[str]:
    """Files of `folder` that leak a hidden test, each with what was found: a solution or
    hidden-test marker in a notebook, a hidden-test line in a released exercise, or a run of
    hidden-test lines anywhere."""
    lines, windows = hidden_test_lines(repo), hidden_test_windows(repo)
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        text = _readable_text(path)
        if text is None:
            continue
        where = path.relative_to(folder)
        # Markers matter in notebooks; the autograder's own code names them, harmlessly.
        marker = next((m for m in MARKERS if m in text), None) if path.suffix == ".ipynb" else None
        in_exercise = path.suffix == ".ipynb" and any(part.startswith("ex") for part in where.parts[:-1])
        present = ({line.strip() for line in text.splitlines()} & lines) if in_exercise else set()
        pasted = _windows_of(text) & windows
        if marker:
            found.append(f"{where}: contains '{marker}'")
        elif present:
            found.append(f"{where}: contains {len(present)} hidden-test line(s), e.g. {sorted(present)[0]!r}")
        elif pasted:
            found.append(f"{where}: contains {len(pasted)} run(s) of hidden-test lines, "
                         f"e.g. {' / '.join(sorted(pasted)[0])!r}")
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
    leaks = leaks_in(destination, repo)
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
