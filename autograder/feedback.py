"""Feedback a learner reads at a glance, and honest about grades still to come.

The HTML feedback opens with a summary: each test's description (its docstring), its points,
its verdict and the reason it failed; then the notebook, test code hidden. A written answer that
no instructor has graded yet says "awaiting a grader" instead of a score of 0, and the total says
it is not final. `pending_manual_grades` lets `feedback` warn the instructor who releases such
feedback.
"""
from __future__ import annotations

import re
from pathlib import Path

from jupyter_core.paths import jupyter_path
from nbconvert import HTMLExporter
from nbgrader.api import Gradebook, MissingEntry
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import default

from . import reports
from .preprocessors import GRADER_PREFIX, VERDICT_ERROR, first_docstring_line

TEMPLATES = Path(__file__).resolve().parent / "templates"
_QUOTE_MIN = 16  # a source line at least this long, found in a reason, means the reason quotes test code


def _points(value) -> str:
    return f"{float(value or 0):g}"


def _description(cell) -> str:
    """The test's one-line description: its docstring, or the header VisibleOnlyFeedback left."""
    header = re.match(r"# Test: (.*)", cell.get("source", ""))
    return header.group(1).strip() if header else first_docstring_line(cell.get("source", ""))


def _reason(cell) -> str:
    """The first line of why a test failed. After VisibleOnlyFeedback a test cell holds only text no
    hidden test could have reached: the visible-only run's error (a visible test's own message)
    or, when the visible tests passed there, the grader's verdict."""
    errors = reports.errors_of(cell)
    if errors:
        first = errors[0]
        text = first.get("evalue", "") if first.get("ename") == VERDICT_ERROR else \
            f"{first.get('ename', 'Error')}: {first.get('evalue', '')}"
    else:
        text = next((_text(o)[len(GRADER_PREFIX):] for o in cell.get("outputs", [])
                     if o.get("output_type") == "stream" and _text(o).startswith(GRADER_PREFIX)), "")
    line = text.strip().splitlines()[0] if text.strip() else "the test failed"
    quoted = [code.strip() for code in cell.get("source", "").splitlines() if len(code.strip()) >= _QUOTE_MIN]
    if any(code in text for code in quoted):
        return "the test failed (its message quoted test code, which feedback never shows)"
    return line


def _text(output) -> str:
    text = output.get("text", "")
    return "".join(text) if isinstance(text, list) else text


class SummarizeForLearner(NbGraderPreprocessor):
    """Collect each graded cell's description, points, verdict and reason into resources["cicd_feedback"],
    and mark written answers that await a grader. Runs after VisibleOnlyFeedback and GetGrades."""

    def preprocess(self, nb, resources):
        info = resources["nbgrader"]
        rows, automatic, automatic_max, pending = [], 0.0, 0.0, 0.0
        with Gradebook(info["db_url"]) as gradebook:
            for cell in nb.cells:
                meta = cell.get("metadata", {}).get("nbgrader", {})
                if not meta.get("grade"):
                    continue
                try:
                    grade = gradebook.find_grade(meta["grade_id"], info["notebook"], info["assignment"],
                                                 info["student"])
                except MissingEntry:
                    continue
                score, max_score = float(grade.score or 0), float(grade.max_score or 0)
                written = cell.get("cell_type") == "markdown" or bool(meta.get("solution"))
                description = ("Your written answer (graded by an instructor)" if written
                               else _description(cell))
                if grade.needs_manual_grade:
                    meta["cicd_pending"] = True
                    pending += max_score
                    rows.append(dict(grade_id=meta["grade_id"], description=description, css="info",
                                     points=f"– / {_points(max_score)}", verdict="awaiting a grader", reason=""))
                    continue
                passed = score >= max_score
                if not written:
                    automatic += score
                    automatic_max += max_score
                rows.append(dict(grade_id=meta["grade_id"], description=description,
                                 css="success" if passed else "danger",
                                 points=f"{_points(score)} / {_points(max_score)}",
                                 verdict="graded" if written else "passed" if passed else "failed",
                                 reason="" if passed or written else _reason(cell)))
        total, total_max = info.get("score", automatic), info.get("max_score", automatic_max)
        if pending:
            score_line = (f"{_points(total)} points so far, not final: {_points(pending)} more points "
                          f"for a written answer await a grader (out of {_points(total_max)} in all)")
        else:
            score_line = f"{_points(total)} / {_points(total_max)} points"
        resources["cicd_feedback"] = {"rows": rows, "score_line": score_line, "pending_points": pending}
        return nb, resources


def _formgrader_dir() -> Path:
    import nbgrader
    return Path(nbgrader.__file__).resolve().parent / "server_extensions" / "formgrader"


class FeedbackExporter(HTMLExporter):
    """nbgrader's HTML exporter, able to find nbgrader's own feedback template by the unambiguous
    name templates/feedback/index.html.j2: NbGraderAPI insists on a template named "feedback",
    so ours has that name, is found first, and extends nbgrader's by that path."""

    @default("template_data_paths")
    def _template_data_paths(self):
        return [*jupyter_path("nbconvert", "templates"), str(_formgrader_dir())]


def config_sections() -> dict:
    """Configuration for NbGraderAPI.generate_feedback: our preprocessors, exporter and template."""
    return {"GenerateFeedback": {"preprocessors": preprocessors(), "exporter_class": FeedbackExporter},
            "HTMLExporter": {"template_name": "feedback", "extra_template_basedirs": [str(TEMPLATES)]}}


def preprocessors() -> list:
    from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
    from nbgrader.preprocessors import GetGrades

    from .preprocessors import VisibleOnlyFeedback
    return [VisibleOnlyFeedback, GetGrades, SummarizeForLearner, CSSHTMLHeaderPreprocessor]


def pending_manual_grades(gradebook_path: Path, assignment: str, students: list[str]) -> list[str]:
    """One warning per student whose released feedback still has manual grades to come."""
    warnings = []
    if not Path(gradebook_path).is_file():
        return warnings
    with Gradebook(f"sqlite:///{gradebook_path}") as gradebook:
        for student in students:
            try:
                submission = gradebook.find_submission(assignment, student)
            except MissingEntry:
                continue
            if submission.needs_manual_grade:
                cells = sorted(grade.name for notebook in submission.notebooks for grade in notebook.grades
                               if grade.needs_manual_grade)
                warnings.append(f"WARNING: {student}'s feedback for {assignment} was released with manual grades "
                                f"pending ({', '.join(cells)}): it says 'awaiting a grader'. Grade them in the "
                                "Formgrader, then run `feedback` again.")
    return warnings
