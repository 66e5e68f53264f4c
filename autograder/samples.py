"""Sample submissions: answers written into a released notebook, as a learner would hand it in.

A sample (tests/fixtures/submissions/<assignment>/<case>.json) lists the source of the answer
cells; every other cell stays as released. "answers": "reference" takes the instructor's
solution for every answer cell, and within an answer the text <<reference>> stands for the
instructor's solution of that cell, and <<snippet:NAME>> for the code in
tests/fixtures/snippets/NAME (an attack that several exercises' fixtures share). Optional keys
tamper with the file the way a learner might: "delete_cells" (cell ids), "edit_cells" ({cell id:
new source}), "strip_metadata" (true), "move_to_end" (cell ids), and "file_bytes" (the whole
file, as text, for broken files).
The same corpus drives the test suite and `demo`.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

from .config import REPO

SAMPLES = REPO / "tests" / "fixtures" / "submissions"
SNIPPETS = REPO / "tests" / "fixtures" / "snippets"
_SNIPPET = re.compile(r"<<snippet:([\w.-]+)>>")


@dataclass
class Sample:
    assignment: str
    case: str
    description: str
    answers: dict | str
    expected_points: float
    expected_failed: list[str]
    data: dict


def load(assignment: str, case: str, root: Path = SAMPLES) -> Sample:
    data = json.loads((root / assignment / f"{case}.json").read_text())
    return Sample(assignment, case, data["description"], data.get("answers", {}),
                  float(data["expected_points"]), list(data.get("expected_failed", [])), data)


def cases(assignment: str, root: Path = SAMPLES) -> list[str]:
    return sorted(p.stem for p in (root / assignment).glob("*.json"))


def solution_sources(source_nb) -> dict[str, str]:
    """The instructor's answer for each answer cell, with the solution markers removed."""
    found = {}
    for cell in source_nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if meta.get("solution"):
            lines = [line for line in cell.source.splitlines()
                     if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
            found[cell.id] = "\n".join(lines)
    return found


def fill(released_nb, answers: dict[str, str]):
    """A copy of the released notebook with the given answer cells' source replaced."""
    nb = nbformat.from_dict(json.loads(json.dumps(released_nb)))
    unknown = set(answers) - {c.id for c in nb.cells}
    if unknown:
        raise KeyError(f"no cell with id {sorted(unknown)} in the released notebook")
    for cell in nb.cells:
        if cell.id in answers:
            cell.source = answers[cell.id]
    return nb


def with_snippets(text: str) -> str:
    """`text` with each <<snippet:NAME>> replaced by the code in tests/fixtures/snippets/NAME."""
    return _SNIPPET.sub(lambda found: (SNIPPETS / found.group(1)).read_text(), text)


def build(sample: Sample, released: Path, source: Path):
    """The submitted notebook (a NotebookNode), or its raw text for a deliberately broken file."""
    if "file_bytes" in sample.data:
        return sample.data["file_bytes"]
    released_nb = nbformat.read(released, as_version=4)
    reference = solution_sources(nbformat.read(source, as_version=4))
    answers = reference if sample.answers == "reference" else \
        {cid: with_snippets(text.replace("<<reference>>", reference.get(cid, "")))
         for cid, text in sample.answers.items()}
    nb = fill(released_nb, answers)
    for cell in nb.cells:
        if cell.id in sample.data.get("edit_cells", {}):
            cell.source = sample.data["edit_cells"][cell.id]
        if sample.data.get("strip_metadata"):
            cell.metadata = {}
    moved_ids = set(sample.data.get("move_to_end", []))
    deleted = set(sample.data.get("delete_cells", []))
    nb.cells = [c for c in nb.cells if c.id not in deleted | moved_ids] + \
        [c for c in nb.cells if c.id in moved_ids]
    return nb
