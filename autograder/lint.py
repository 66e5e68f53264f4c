"""Prove that every test cell can tell a right answer from a wrong one, before anyone is graded.

A test cell earns its points when what it reports equals what the reference solution reported
(autograder.reports). That is only worth something if a worthless answer cannot produce the same
reports. So `release` (and `python -m autograder lint ASSIGNMENT`) runs negative controls against
the reference results and refuses any test cell that one of them passes:

- the blank release: every answer cell as learners receive it (`raise NotImplementedError()`);
- hidden tests that give their expected values away: the kernel that runs a hidden test reads its
  code (an IPython input transformer sees every cell), so an `assert got == [...]` there tells
  it the value to produce, and an input transformer that turns each assert into the assignment it
  demands passes a blank answer. In a report() cell, code between the hidden-test markers may not
  assert, nor bind a name that nothing reads (a table's `expected` column kept for asserts):
  hidden tests compute and report, and the grader compares outside the kernel. A static check;
- a stub answer, attacked: every function of the solution returns None, every statement of every
  cell runs on its own (an attacker who knows the source can make later statements run after a
  failed assert, e.g. with an IPython transformer that wraps each one in try/except), and each
  report is forged with the most guessable values: one constant for every check (True, False,
  None, 0, "", []), the stub's own values with every boolean forced to True (or False), and the
  reference's own shape with every boolean set to True (or False).

An attacker forging values also knows the check names and how many there are (they are in the
source), so forged reports use the reference's names and count. Assert-only test cells (stock
nbgrader style, no report()) are graded the stock way and are forgeable by design: they are
flagged, not refused.
"""
from __future__ import annotations

import ast
import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbgrader.exchange.default.release_assignment import ExchangeReleaseAssignment
from nbgrader.preprocessors import ClearSolutions

from . import AutograderError, reference, reports
from .config import ClassPaths

LINT_MIME = "application/vnd.cicd-course.lint+json"
DOCS = "docs/grading-you-can-trust.md"
GUESSES = [True, False, None, 0, "", []]

# Installed in the kernel of the attacked run, before any cell of the notebook: every statement
# runs on its own, and each report(check, value) call records its check and value even when
# computing them fails (so a forger could still send something for it).
ATTACKER_CELL = f'''
import ast as _lint_ast
import json as _lint_json
from IPython import get_ipython as _lint_ipython
from IPython.display import display as _lint_display


def _lint_report(check_of, value_of):
    record = {{}}
    for key, thunk in (("check", check_of), ("value", value_of)):
        try:
            value = thunk()
            _lint_json.dumps(value)
            record[key] = value
        except BaseException:
            record[key + "_failed"] = True
    _lint_display({{{LINT_MIME!r}: record}}, raw=True)


class _LintEveryStatementAlone(_lint_ast.NodeTransformer):
    def visit_Call(self, node):
        self.generic_visit(node)
        if isinstance(node.func, _lint_ast.Name) and node.func.id == "report" and len(node.args) == 2:
            def thunk(expr):
                no_args = _lint_ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[], defaults=[])
                return _lint_ast.Lambda(args=no_args, body=expr)
            return _lint_ast.Call(func=_lint_ast.Name("_lint_report", _lint_ast.Load()),
                                  args=[thunk(node.args[0]), thunk(node.args[1])], keywords=[])
        return node

    def generic_visit(self, node):
        node = super().generic_visit(node)
        for name in ("body", "orelse", "finalbody"):
            body = getattr(node, name, None)
            if isinstance(body, list) and body and isinstance(body[0], _lint_ast.stmt):
                setattr(node, name, [self._alone(statement) for statement in body])
        return node

    @staticmethod
    def _alone(statement):
        if isinstance(statement, (_lint_ast.Global, _lint_ast.Nonlocal)) or (
                isinstance(statement, _lint_ast.ImportFrom) and statement.module == "__future__"):
            return statement
        handler = _lint_ast.ExceptHandler(type=_lint_ast.Name("BaseException", _lint_ast.Load()), name=None,
                                          body=[_lint_ast.Pass()])
        return _lint_ast.Try(body=[statement], handlers=[handler], orelse=[], finalbody=[])

    def visit(self, node):
        return _lint_ast.fix_missing_locations(super().visit(node))


_lint_ipython().ast_transformers.append(_LintEveryStatementAlone())
'''


@dataclass
class Finding:
    notebook: str
    grade_id: str
    severity: str  # "error": release refuses; "warning": graded, but forgeable or suspicious
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.notebook}: {self.grade_id}: {self.message}"


# --- what a hidden test's code gives away ----------------------------------------------------

def hidden_lines(source: str) -> set[int]:
    """The 1-based numbers of a cell's lines inside its hidden-test blocks."""
    lines = set()
    for block in reports.HIDDEN_BLOCK.finditer(source):
        first = source.count("\n", 0, block.start(1)) + 1
        lines.update(range(first, first + block.group(1).count("\n")))
    return lines


def _names_read(tree: ast.AST) -> set[str]:
    return {node.id for node in ast.walk(tree) if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store)}


def names_read(source: str) -> set[str]:
    """Every name a piece of code reads (empty when it does not parse)."""
    try:
        return _names_read(ast.parse(source))
    except SyntaxError:
        return set()


def hidden_giveaways(source: str, read_elsewhere: frozenset[str] = frozenset()) -> list[str]:
    """What the hidden-test code of a cell tells the kernel that runs it about the values it
    expects: each assert, and each name bound there that nothing reads (neither the cell nor
    `read_elsewhere`, the names the notebook's other cells read)."""
    hidden = hidden_lines(source)
    if not hidden:
        return []
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assert) and node.lineno in hidden:
            text = ast.unparse(node.test)
            found.append(f"line {node.lineno} asserts `{text[:60]}{'…' if len(text) > 60 else ''}`")
    read = _names_read(tree) | read_elsewhere
    bound = {}
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) not in hidden:
            continue
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            bound.setdefault(node.id, node.lineno)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            bound.setdefault(node.name, node.lineno)
        elif isinstance(node, ast.ExceptHandler) and node.name:
            bound.setdefault(node.name, node.lineno)
    for name, line in sorted(bound.items(), key=lambda item: item[1]):
        if name not in read and not name.startswith("_"):
            found.append(f"line {line} binds `{name}`, which nothing reads")
    return found


def giveaway_findings(source_nb, name: str) -> list[Finding]:
    """An error for every report() cell whose hidden-test code gives expected values away."""
    code = [cell for cell in source_nb.cells if cell.cell_type == "code"]
    reads = [names_read(cell.source) for cell in code]
    findings = []
    for index, cell in enumerate(code):
        if not reports.is_grade_cell(cell) or not reports.calls_report(cell.source):
            continue
        others = frozenset().union(*(read for other, read in enumerate(reads) if other != index))
        found = hidden_giveaways(cell.source, others)
        if found:
            findings.append(Finding(name, reports.grade_id(cell), "error",
                                    "its hidden tests give their expected values away to the student's kernel, "
                                    f"which reads every line it runs: {'; '.join(found)}. An input transformer turns "
                                    "such asserts into the assignments they demand and passes a blank answer. Hidden "
                                    "tests compute and report, with no assert and no expected value; the grader "
                                    f"compares the reports with the reference's, outside the kernel (see {DOCS})"))
    return findings


# --- the controls' notebooks -------------------------------------------------------------------

def blank_release(source_nb):
    """The source notebook with its answers cleared as in the release, hidden tests kept
    (grading runs them)."""
    nb = copy.deepcopy(source_nb)
    nb, _ = ClearSolutions().preprocess(nb, {})
    return nb


def stub_source(solution: str) -> str:
    """A `return None` stub of an answer: same imports, functions, classes and names, no work."""
    lines = [line for line in solution.splitlines()
             if line.strip() not in ("### BEGIN SOLUTION", "### END SOLUTION")]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return "pass"

    def stubbed(node):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            return node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.decorator_list, node.body = [], [ast.Return(ast.Constant(None))]
            return node
        if isinstance(node, ast.ClassDef):
            node.decorator_list = []
            node.body = [s for s in map(stubbed, node.body) if s is not None] or [ast.Pass()]
            return node
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            node.value = ast.Constant(None)
            return node
        return None

    body = [s for s in map(stubbed, tree.body) if s is not None]
    return ast.unparse(ast.fix_missing_locations(ast.Module(body=body, type_ignores=[]))) or "pass"


def attacked_stub(source_nb):
    nb = copy.deepcopy(source_nb)
    for cell in nb.cells:
        meta = cell.get("metadata", {}).get("nbgrader", {})
        if cell.cell_type == "code" and meta.get("solution"):
            cell.source = stub_source(cell.source)
    nb.cells.insert(0, nbformat.v4.new_code_cell(ATTACKER_CELL))
    return nb


def recorded(cell) -> list[dict]:
    return [o["data"][LINT_MIME] for o in cell.get("outputs", [])
            if o.get("output_type") == "display_data" and LINT_MIME in o.get("data", {})]


# --- forging -----------------------------------------------------------------------------------

def _with_bools(value, forced):
    if isinstance(value, bool):
        return forced
    if isinstance(value, list):
        return [_with_bools(v, forced) for v in value]
    if isinstance(value, dict):
        return {k: _with_bools(v, forced) for k, v in value.items()}
    return value


def _only_bools(value) -> bool:
    if isinstance(value, list):
        return all(_only_bools(v) for v in value)
    if isinstance(value, dict):
        return all(_only_bools(v) for v in value.values())
    return isinstance(value, bool)


def _stub_values(expected: list[dict], records: list[dict]) -> list:
    """The value the stub computed for each expected check (a KeyError marker where it computed none)."""
    unused = list(records)
    values = []
    for index, exp in enumerate(expected):
        match = None
        if index < len(records) and records[index].get("check") == exp.get("check") and records[index] in unused:
            match = records[index]
        else:
            match = next((r for r in unused if r.get("check") == exp.get("check")), None)
        if match is not None:
            unused.remove(match)
        values.append(match["value"] if match is not None and "value" in match else KeyError)
    return values


def forgeries(expected: list[dict], records: list[dict]):
    """(how, forged values) for every guessing strategy, one value per expected check."""
    for constant in GUESSES:
        yield f"every report forced to {constant!r}", [constant] * len(expected)
    computed = _stub_values(expected, records)
    yield "the stub's own values", [None if v is KeyError else v for v in computed]
    for forced in (True, False):
        yield (f"the stub's own values with every boolean (and every value it could not compute) forced to {forced}",
               [forced if v is KeyError else _with_bools(v, forced) for v in computed])
        if all(_only_bools(e.get("value")) for e in expected):
            yield (f"every reported boolean forced to {forced} in the shape the test's source shows",
                   [_with_bools(e.get("value"), forced) for e in expected])


def forged_by(expected: list[dict], records: list[dict]) -> str:
    """How a worthless answer forges this cell's reports, or '' if no strategy does."""
    for how, values in forgeries(expected, records):
        if all(reports.values_match(v, e.get("value")) for v, e in zip(values, expected)):
            return how
    return ""


# --- the check ---------------------------------------------------------------------------------

def lint_notebook(source_path: Path, reference_result: dict) -> list[Finding]:
    source_nb = nbformat.read(source_path, as_version=4)
    name = source_path.name
    expected_cells = reference_result["cells"]
    stock = set(reference_result.get("stock_cells", []))
    findings = [Finding(name, w.split(" ", 1)[0], "warning", w.split(" ", 1)[1])
                for w in reference_result.get("warnings", [])]
    findings += giveaway_findings(source_nb, name)
    blank = {reports.grade_id(c): c for c in reference.execute_in_copy(source_path, nb=blank_release(source_nb), sandboxed=True).cells
             if reports.is_grade_cell(c)}
    attacked = {reports.grade_id(c): c for c in reference.execute_in_copy(source_path, nb=attacked_stub(source_nb), sandboxed=True).cells
                if reports.is_grade_cell(c)}
    for cell in source_nb.cells:
        if not reports.is_grade_cell(cell):
            continue
        gid = reports.grade_id(cell)
        if gid in stock:
            findings.append(Finding(name, gid, "warning",
                                    "assert-only test (no report()): graded the stock nbgrader way, so a submission "
                                    "that silences its asserts passes it; convert it to report() style "
                                    f"(see {DOCS}, 'Bring your own nbgrader assignment')"))
            if gid in blank and reports.decide_stock(blank[gid]).passed:
                findings.append(Finding(name, gid, "warning", "passes even the blank release, with no answer at all"))
            continue
        expected = expected_cells.get(gid) or []
        if gid in blank and reports.decide(blank[gid], expected).passed:
            findings.append(Finding(name, gid, "error",
                                    "passes the blank release, with no answer at all: it cannot tell right from wrong"))
            continue
        how = forged_by(expected, recorded(attacked.get(gid, {})))
        if how:
            findings.append(Finding(name, gid, "error",
                                    f"a worthless answer passes it (every function returns None, every statement runs "
                                    f"on its own, {how}); report values that only a right answer computes, "
                                    f"see {DOCS}"))
    return findings


def _lint_code_sha() -> str:
    return hashlib.sha256(Path(__file__).read_bytes() + Path(reports.__file__).read_bytes()).hexdigest()


def lint_assignment(paths, assignment: str) -> list[Finding]:
    """Lint every notebook of an assignment (cached beside its reference results)."""
    from .course import require_assignment
    require_assignment(paths, assignment)
    findings = []
    from .submission import read_submitted
    for source in sorted((paths.source / assignment).glob("*.ipynb")):
        _, problem = read_submitted(source)
        if problem:
            raise AutograderError(f"the source notebook {source}: {problem}; fix it (or restore it from git), "
                                  f"then run `python -m autograder lint {assignment}` again")
        ref_path = reference.ensure(source, paths.reference, assignment)
        cache = ref_path.with_suffix(".lint.json")
        key = {"source_sha256": reference.sha256_of(source), "lint_sha256": _lint_code_sha()}
        try:
            stored = json.loads(cache.read_text())
            if {k: stored.get(k) for k in key} == key:
                findings += [Finding(**f) for f in stored["findings"]]
                continue
        except (OSError, ValueError, KeyError, TypeError):
            pass  # no cache, or a damaged one: lint again
        found = lint_notebook(source, json.loads(ref_path.read_text()))
        cache.write_text(json.dumps({**key, "findings": [f.__dict__ for f in found]}, indent=1))
        findings += found
    return findings


def refuse_if_forgeable(findings: list[Finding], assignment: str) -> None:
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        cells = "; ".join(f"{f.notebook}: {f.grade_id}: {f.message}" for f in errors)
        raise AutograderError(f"{assignment} was not released: {len(errors)} test cell(s) cannot tell right from "
                              f"wrong. {cells}. Fix them in solutions/{assignment}/, then release again "
                              f"(`python -m autograder lint {assignment}` checks without releasing)")


def forgeable_stock_cells(paths, assignment: str) -> list[str]:
    """One line per notebook whose assert-only test cells are graded the stock (forgeable) way,
    read from its reference results (grade computes them first)."""
    lines = []
    for ref_path in sorted((paths.reference / assignment).glob("*.json")):
        if ref_path.name.endswith(".lint.json"):
            continue
        try:
            stock = json.loads(ref_path.read_text()).get("stock_cells", [])
        except (OSError, ValueError):
            continue
        if stock:
            lines.append(f"{assignment}/{ref_path.stem}.ipynb: {', '.join(stock)} are assert-only (no report()), "
                         f"graded the stock nbgrader way: a submission that silences its asserts passes them; "
                         f"convert them to report() style ({DOCS})")
    return lines


class LintedReleaseAssignment(ExchangeReleaseAssignment):
    """nbgrader's release (command line, Formgrader's Release button), refused like
    `python -m autograder release` when a test cell cannot tell right from wrong."""

    def copy_files(self):
        coursedir = self.coursedir
        paths = ClassPaths(Path(coursedir.root), Path(coursedir.submitted_directory).parent, Path(self.root))
        try:
            findings = lint_assignment(paths, coursedir.assignment_id)
            refuse_if_forgeable(findings, coursedir.assignment_id)
        except AutograderError as err:
            self.fail(str(err))
        for finding in findings:
            self.log.warning("%s", finding)
        super().copy_files()
