"""The instructor's report after grading: one self-contained HTML page per assignment.

It answers what an instructor asks after a run: how did the class do (distribution of totals),
which checks did people fail (pass rate of each grade cell), is a test suspicious (nobody passes
it: broken? everybody passes it: too weak?), and whose notebook did not run, and why. Figures
are matplotlib PNGs embedded in the page, so the file can be mailed or archived alone.
"""
from __future__ import annotations

import base64
import html
import io
import json
from collections import defaultdict
from pathlib import Path

from nbgrader.api import Gradebook, MissingEntry

from .config import ClassPaths


def report_path(paths: ClassPaths, assignment: str) -> Path:
    return paths.class_dir / "reports" / f"{assignment}.html"


def class_results(paths: ClassPaths, assignment: str, results: list) -> list:
    """This run's results, completed with every other student of the assignment in the gradebook
    (a run for one --student still reports on the whole class)."""
    from .course import SubmissionResult, _read_back, _state_file
    by_student = {r.student: r for r in results}
    with Gradebook(f"sqlite:///{paths.gradebook}") as gb:
        try:
            students = sorted(s.student.id for s in gb.find_assignment(assignment).submissions)
        except MissingEntry:
            students = []
    for student in students:
        if student in by_student:
            continue
        state = _state_file(paths, assignment, student)
        saved = json.loads(state.read_text()) if state.is_file() else {}
        result = SubmissionResult(student, assignment, notes=saved.get("notes", []),
                                  incidents=saved.get("incidents", []), skipped=True)
        _read_back(paths, result)
        by_student[student] = result
    return [by_student[s] for s in sorted(by_student)]


def cell_statistics(results) -> dict[str, dict]:
    """grade_id -> {passed, total, max_points} over autograded cells of graded submissions."""
    stats: dict[str, dict] = defaultdict(lambda: {"passed": 0, "total": 0, "max_points": 0.0})
    for result in results:
        if result.error:
            continue
        for cell in result.cells:
            if cell.manual or not cell.max_points:
                continue
            entry = stats[cell.grade_id]
            entry["total"] += 1
            entry["passed"] += cell.points >= cell.max_points
            entry["max_points"] = cell.max_points
    return dict(stats)


def flags(stats: dict[str, dict], minimum_class: int = 3) -> list[tuple[str, str]]:
    """Cells worth a second look. Below `minimum_class` graded submissions nothing is flagged:
    one or two learners say nothing about a test."""
    found = []
    for gid, entry in stats.items():
        if entry["total"] < minimum_class:
            continue
        if entry["passed"] == 0:
            found.append((gid, f"nobody passes it ({entry['total']} submissions): is the test broken?"))
        elif entry["passed"] == entry["total"]:
            found.append((gid, f"everybody passes it ({entry['total']} submissions): is the test too weak?"))
    return found


def _png(fig) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode()


def _figures(results, stats) -> list[tuple[str, str]]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    graded = [r for r in results if not r.error]
    if graded:
        fig, ax = plt.subplots(figsize=(6.5, 3))
        top = max(r.max_score for r in graded) or 1
        bins = [x - 0.5 for x in range(int(top) + 2)] if top <= 40 else 20
        ax.hist([r.score for r in graded], bins=bins, color="#4c72b0", edgecolor="white")
        ax.set_xlabel(f"total score (out of {top:g})")
        ax.set_ylabel("submissions")
        ax.yaxis.get_major_locator().set_params(integer=True)
        figures.append(("Grade distribution", _png(fig)))
        plt.close(fig)
    if stats:
        names = list(stats)
        rates = [stats[n]["passed"] / stats[n]["total"] for n in names]
        colors = ["#c44e52" if r == 0 else "#dd8452" if r == 1 else "#55a868" for r in rates]
        fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(names) + 1))
        ax.barh(range(len(names)), rates, color=colors)
        for row, name in enumerate(names):
            ax.text(0.01, row, f"{stats[name]['passed']}/{stats[name]['total']}", va="center", color="white")
        ax.set_yticks(range(len(names)), [f"{n} ({stats[n]['max_points']:g} pt)" for n in names])
        ax.invert_yaxis()
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of submissions passing (red: nobody, orange: everybody)")
        figures.append(("Pass rate of each grade cell", _png(fig)))
        plt.close(fig)
    return figures


def write_report(paths: ClassPaths, assignment: str, results: list) -> Path:
    results = class_results(paths, assignment, results)
    stats = cell_statistics(results)
    esc = html.escape
    parts = [f"<!doctype html><meta charset='utf-8'><title>{esc(assignment)}: grading report</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .5em;text-align:left;"
             "vertical-align:top}.flag{color:#a33}</style>",
             f"<h1>{esc(assignment)}: grading report</h1>"]
    graded = [r for r in results if not r.error]
    if graded:
        scores = sorted(r.score for r in graded)
        median = scores[len(scores) // 2] if len(scores) % 2 else (scores[len(scores) // 2 - 1] + scores[len(scores) // 2]) / 2
        parts.append(f"<p>{len(results)} submissions, {len(graded)} graded; median score {median:g} "
                     f"of {max(r.max_score for r in graded):g}.</p>")
    for title, png in _figures(results, stats):
        parts.append(f"<h2>{esc(title)}</h2><img alt='{esc(title)}' src='data:image/png;base64,{png}'>")
    parts.append("<h2>Tests to look at</h2>")
    found = flags(stats)
    if found:
        parts.append("<ul>" + "".join(f"<li class='flag'><b>{esc(g)}</b>: {esc(why)}</li>" for g, why in found) + "</ul>")
    else:
        parts.append("<p>No grade cell is passed by nobody or by everybody.</p>")
    parts.append("<h2>Submissions that did not run as handed in</h2>")
    broken = [(r, r.failures_to_run) for r in results if r.failures_to_run]
    if broken:
        parts.append("<table><tr><th>student</th><th>why</th></tr>" + "".join(
            f"<tr><td>{esc(r.student)}</td><td>{'<br>'.join(esc(w) for w in why)}</td></tr>" for r, why in broken)
            + "</table>")
    else:
        parts.append("<p>Every submission ran.</p>")
    parts.append("<h2>Every submission</h2><table><tr><th>student</th><th>score</th><th>failed checks</th></tr>")
    from .course import first_line
    for r in results:
        score = "error" if r.error else f"{r.score:g} / {r.max_score:g}" + (" (+manual)" if r.needs_manual_grade else "")
        failed = "<br>".join(f"<b>{esc(c.grade_id)}</b>: {esc(first_line(c.reason))}" for c in r.failed_cells)
        parts.append(f"<tr><td>{esc(r.student)}</td><td>{esc(score)}</td><td>{failed}</td></tr>")
    parts.append("</table>")
    target = report_path(paths, assignment)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("\n".join(parts))
    return target
