"""Notebooks are source: committed clean, free of absolute paths, and lessons keep one shape."""
import json
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LESSONS = sorted((REPO / "course").glob("[0-9][0-9]_*.ipynb"))
EXPECTED_LESSONS = ["00_start_here", "01_why_models_change_cicd", "02_data_gates", "03_evaluation_gates",
                    "04_metadata_capture", "05_local_ci_script", "06_ci_workflow",
                    "07_promotion_and_rollback", "08_anti_patterns_and_self_assessment"]


def _in_virtual_environment(path: Path) -> bool:
    """Inside a virtual environment made in the checkout (`python -m venv .venv`, as many do):
    its packages' notebooks (nbgrader's documentation) are not the course's."""
    return any((REPO / folder / "pyvenv.cfg").is_file() for folder in path.relative_to(REPO).parents)


def tracked_notebooks():
    out = subprocess.run(["git", "ls-files", "*.ipynb"], cwd=REPO, capture_output=True, text=True).stdout.split()
    on_disk = {p.relative_to(REPO).as_posix() for p in REPO.glob("**/*.ipynb")
               if ".ipynb_checkpoints" not in p.parts and "class" not in p.relative_to(REPO).parts[:1]
               and not _in_virtual_environment(p)}
    return sorted(set(out) | on_disk)


def test_every_lesson_of_the_syllabus_exists():
    assert [p.stem for p in LESSONS] == EXPECTED_LESSONS


@pytest.mark.parametrize("rel", tracked_notebooks())
def test_notebook_is_committed_without_outputs_or_counts(rel):
    nb = json.loads((REPO / rel).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [], f"{rel}: cell {cell.get('id')} has outputs"
            assert cell.get("execution_count") is None, f"{rel}: cell {cell.get('id')} has an execution count"


@pytest.mark.parametrize("rel", tracked_notebooks())
def test_notebook_has_no_absolute_paths(rel):
    text = (REPO / rel).read_text()
    found = re.findall(r"(?:/work/|/home/|/root/|/Users/|[A-Z]:\\\\)[\w./-]*", text)
    assert not found, f"{rel} mentions absolute paths: {found[:3]}"


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_has_the_course_shape(lesson):
    nb = json.loads(lesson.read_text())
    markdown = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    headings = re.findall(r"^##? (.+)$", markdown, flags=re.M)
    assert headings[0].startswith(lesson.stem[:2]), f"the title should start with the lesson number: {headings[0]}"
    for required in ("Learning objectives", "Check yourself", "Summary", "What comes next"):
        assert any(h.strip().startswith(required) for h in headings), f"{lesson.name} lacks '## {required}'"
    assert "<details>" in markdown, "check-yourself answers go in <details> blocks"
    assert sum(c["cell_type"] == "code" for c in nb["cells"]) >= 4


@pytest.mark.parametrize("lesson", LESSONS, ids=lambda p: p.stem)
def test_lesson_golden_outputs_match_its_tagged_cells(lesson):
    nb = json.loads(lesson.read_text())
    tagged = {c["id"] for c in nb["cells"] if "nbval-check-output" in c.get("metadata", {}).get("tags", [])}
    assert tagged, f"{lesson.name} compares no outputs: tag the cells whose output teaches"
    golden_file = REPO / "tests" / "golden" / f"{lesson.stem}.json"
    golden = json.loads(golden_file.read_text()) if golden_file.is_file() else {}
    assert set(golden) == tagged, (f"{golden_file.name} is out of step with the tagged cells; "
                                   "run `python -m pytest --update-golden course/`")
    assert all(golden[cid] for cid in tagged), "a compared cell with no output compares nothing"
