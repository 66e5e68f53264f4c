"""Turning whatever a learner handed in into a notebook the grader can run.

The submitted file is never trusted for structure: the released notebook is the skeleton,
the learner contributes only the source of its answer cells (matched by nbgrader grade id,
else by cell id) and any extra cells of their own. Test cells, their order and their
metadata come from the skeleton, so a deleted, edited, reordered or metadata-stripped test
is put back, and a notebook that cannot be read is graded as unanswered. Every repair is
written down as a note in plain words, for the instructor and for the learner's feedback.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import nbformat

NOTES_CELL_ID = "grader-notes"


def read_submitted(path: Path) -> tuple[nbformat.NotebookNode | None, str | None]:
    """Read a submitted notebook; on failure return (None, a plain-words reason)."""
    try:
        raw = path.read_bytes()
    except OSError as err:
        return None, f"{path.name} could not be opened ({err.strerror})"
    if not raw.strip():
        return None, f"{path.name} is empty"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, f"{path.name} is not a text file, so it is not a notebook"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        return None, f"{path.name} is not valid notebook JSON (line {err.lineno}: {err.msg}); it may be truncated"
    except RecursionError:  # JSON nested deeper than Python's parser recurses: no notebook is like that
        return None, f"{path.name} is JSON nested too deeply to be a notebook"
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        return None, f"{path.name} is JSON but not a notebook (it has no list of cells)"
    try:
        nb = nbformat.reads(text, as_version=4)
    except Exception as err:  # nbformat raises several types for odd-but-JSON content
        return None, f"{path.name} could not be read as a notebook ({type(err).__name__})"
    return nb, None


def _nbgrader_meta(cell) -> dict:
    meta = cell.get("metadata", {}).get("nbgrader")
    return meta if isinstance(meta, dict) else {}


def _key_of(cell) -> str | None:
    key = _nbgrader_meta(cell).get("grade_id")
    return key if isinstance(key, str) else None  # a list would be unhashable; a number no grade id


def _id_of(cell) -> str | None:
    cell_id = cell.get("id")
    return cell_id if isinstance(cell_id, str) else None


def _source_of(cell) -> str:
    """The cell's text; a source of another JSON type (nbformat does not refuse one) is no answer."""
    source = cell.get("source", "")
    return source if isinstance(source, str) else ""


def _is_answer(cell) -> bool:
    return bool(_nbgrader_meta(cell).get("solution"))


def rebuild(skeleton, submitted) -> tuple[nbformat.NotebookNode, list[str]]:
    """Return the notebook to grade and the notes describing every repair.

    `skeleton` is the released (student) notebook; `submitted` the learner's notebook or None.
    """
    notes: list[str] = []
    result = copy.deepcopy(skeleton)
    for cell in result.cells:
        if cell.get("cell_type") == "code":
            cell.outputs, cell.execution_count = [], None
    if submitted is None:
        return result, notes

    by_grade_id = {_key_of(c): i for i, c in enumerate(result.cells) if _key_of(c)}
    by_cell_id = {c.get("id"): i for i, c in enumerate(result.cells) if c.get("id")}
    answers = {i for i, c in enumerate(result.cells) if _is_answer(c)}

    matched: dict[int, object] = {}
    extras: dict[int, list] = {}  # skeleton index -> learner cells placed after it (-1: before all)
    anchor, order = -1, []
    for cell in submitted.cells:
        index = by_grade_id.get(_key_of(cell)) if _key_of(cell) else None
        if index is None and _id_of(cell) in by_cell_id:
            index = by_cell_id[_id_of(cell)]
        if index is not None and index not in matched:
            matched[index] = cell
            anchor = index
            order.append(index)
        elif cell.get("cell_type") == "code" and _source_of(cell).strip():
            extras.setdefault(anchor, []).append(cell)

    graded_parts = {i for i, c in enumerate(result.cells) if _is_answer(c) or _nbgrader_meta(c).get("grade")}
    if graded_parts and not graded_parts & matched.keys():
        notes.append("none of the notebook's cells belong to this assignment (is it the notebook of "
                     "another exercise?); it was graded as unanswered")
        return result, notes
    if order != sorted(order):
        notes.append("cells were moved; the grader put them back in their original order")

    for index, skel in enumerate(result.cells):
        meta = _nbgrader_meta(skel)
        name = meta.get("grade_id") or skel.get("id")
        mine = matched.get(index)
        if index in answers:
            if mine is None:
                notes.append(f"answer cell '{name}' is missing; it was graded as unanswered")
            else:
                skel.source = _source_of(mine)
                if not _nbgrader_meta(mine):
                    notes.append(f"answer cell '{name}' had lost its grading metadata; it was restored")
        elif meta.get("grade") or meta.get("locked"):
            kind = "test cell" if meta.get("grade") else "read-only cell"
            if mine is None:
                notes.append(f"{kind} '{name}' was deleted; the original was put back")
            elif _source_of(mine) != skel.get("source", ""):
                notes.append(f"{kind} '{name}' was edited; the original was put back")
            elif not _nbgrader_meta(mine):
                notes.append(f"{kind} '{name}' had lost its grading metadata; it was restored")

    cells, count = [], 0
    for index in range(-1, len(result.cells)):
        if index >= 0:
            cells.append(result.cells[index])
        for extra in extras.get(index, []):
            count += 1
            cells.append(_clean_extra(extra, f"learner-cell-{count}"))
    result.cells = cells
    return result, notes


def _clean_extra(cell, cell_id: str):
    """A learner's own code cell keeps its source and nothing that could pose as grading metadata."""
    new = nbformat.v4.new_code_cell(_source_of(cell))
    new.id = cell_id
    return new


def notes_cell(notes: list[str]):
    """A markdown cell that tells the learner, in their feedback, what the grader repaired."""
    lines = ["**Notes from the grader** (these did not cost points by themselves):", ""]
    lines += [f"- {note}" for note in notes]
    cell = nbformat.v4.new_markdown_cell("\n".join(lines))
    cell.id = NOTES_CELL_ID
    return cell
