"""Reading the checks a grade cell reports, and deciding its verdict outside the student's kernel.

A grade cell earns its points only when it ran without error AND the checks it reported
equal, one by one, those the reference solution reported in the same cell. The kernel can
lie about errors or print anything it likes, but it never sees the reference values, so it
cannot make a wrong answer produce them. Everything here is pure: notebooks in, data out.
"""
from __future__ import annotations

import ast
import math
import re
from dataclasses import dataclass, field

REPORT_MIME = "application/vnd.cicd-course.check+json"
# A hidden-test block of a test cell's source, marker lines included (group 1: the lines between).
HIDDEN_BLOCK = re.compile(r"^[ \t]*### BEGIN HIDDEN TESTS[ \t]*\n(.*?)^[ \t]*### END HIDDEN TESTS", re.S | re.M)


def is_grade_cell(cell) -> bool:
    """An autograded test cell (a code cell with points that is not itself an answer to grade by hand)."""
    meta = cell.get("metadata", {}).get("nbgrader", {})
    return bool(meta.get("grade")) and not meta.get("solution") and cell.get("cell_type") == "code"


def calls_report(source: str) -> bool:
    """Whether a test cell's code calls report(): if not, it is a stock nbgrader (assert-only) test."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return "report(" in source
    return any(isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "report"
               for node in ast.walk(tree))


def grade_id(cell) -> str | None:
    return cell.get("metadata", {}).get("nbgrader", {}).get("grade_id")


def reports_of(cell) -> list[dict]:
    """The (check, value) records a cell's outputs carry, in order; malformed ones are kept as-is
    so that they compare unequal instead of vanishing."""
    found = []
    for output in cell.get("outputs", []):
        if output.get("output_type") not in ("display_data", "update_display_data"):
            continue
        data = output.get("data", {})
        if REPORT_MIME in data:
            found.append(data[REPORT_MIME])
    return found


def errors_of(cell) -> list[dict]:
    return [o for o in cell.get("outputs", []) if o.get("output_type") == "error"]


def values_match(got, expected) -> bool:
    """Structural equality on JSON data; ints exactly, floats within a relative 1e-6, no bool/number mix-ups."""
    if isinstance(expected, bool) or isinstance(got, bool):
        return type(got) is type(expected) and got == expected
    if isinstance(expected, int) and isinstance(got, int):
        return got == expected  # counts are exact, and a 400-digit int must not crash float()
    if isinstance(expected, (int, float)) and isinstance(got, (int, float)):
        try:
            return math.isclose(got, expected, rel_tol=1e-6, abs_tol=1e-9)
        except OverflowError:  # an int too large for a float equals no float the reference reports
            return False
    if isinstance(expected, dict):
        return (isinstance(got, dict) and got.keys() == expected.keys()
                and all(values_match(got[k], expected[k]) for k in expected))
    if isinstance(expected, list):
        return (isinstance(got, list) and len(got) == len(expected)
                and all(values_match(g, e) for g, e in zip(got, expected)))
    return type(got) is type(expected) and got == expected


@dataclass
class Verdict:
    grade_id: str
    passed: bool
    reason: str = ""
    failed_checks: list[str] = field(default_factory=list)


def decide(cell, expected: list[dict] | None, incident: str = "") -> Verdict:
    """Decide one grade cell. `expected` is the reference solution's reports for this cell;
    `incident` says why execution stopped early, if it did."""
    gid = grade_id(cell) or "?"
    if not expected:
        # A grade cell the reference never reported on cannot be verified: no points, loudly.
        return Verdict(gid, False, "this check has no reference result; ask your instructor")
    errors = errors_of(cell)
    got = reports_of(cell)
    if errors:
        first = errors[0]
        message = f"{first.get('ename', 'Error')}: {first.get('evalue', '')}".strip().rstrip(":")
        return Verdict(gid, False, message)
    if not got:
        return Verdict(gid, False, incident or "the check did not run to completion (no result was recorded)")
    failed = []
    for index, exp in enumerate(expected):
        name = exp.get("check", f"#{index + 1}")
        actual = got[index] if index < len(got) else None
        if not (isinstance(actual, dict) and actual.get("check") == exp.get("check")
                and "value" in actual and values_match(actual["value"], exp.get("value"))):
            failed.append(name)
    if len(got) != len(expected) and not failed:
        failed.append(f"{len(got)} results recorded where {len(expected)} were expected")
    if failed:
        return Verdict(gid, False, "wrong result for: " + ", ".join(failed), failed)
    return Verdict(gid, True)


def decide_stock(cell, incident: str = "") -> Verdict:
    """Stock nbgrader's rule for an assert-only test cell: it passes when it ran and raised no error.
    Forgeable by design (a submission can silence its asserts); `lint` says so."""
    gid = grade_id(cell) or "?"
    errors = errors_of(cell)
    if errors:
        first = errors[0]
        return Verdict(gid, False, f"{first.get('ename', 'Error')}: {first.get('evalue', '')}".strip().rstrip(":"))
    if cell.get("execution_count") is None:
        return Verdict(gid, False, incident or "the test did not run")
    return Verdict(gid, True)


def reference_reports(nb) -> dict[str, list[dict]]:
    """Map grade_id -> reports, from an executed reference (source) notebook."""
    return {grade_id(cell): reports_of(cell) for cell in nb.get("cells", []) if is_grade_cell(cell)}
