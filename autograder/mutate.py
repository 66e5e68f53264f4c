"""Mutation testing of an assignment's hidden tests: how many small bugs in the reference answers they catch.

Every answer cell of the assignment's reference solution (solutions/<a>/<a>.ipynb) is
mutated with Python's `ast`, one small change at a time, the way a learner might slip:

- a comparison operator flipped (`<` to `<=` or `>`, `==` to `!=`, `in` to `not in`, ...);
- `and` swapped with `or`; the condition of an `if` (or `while`, or `x if c else y`) negated;
- a numeric constant changed (integers by +1 and -1, floats halved and doubled);
- `return X` replaced by `return None`; `True` swapped with `False`;
- one statement inside a function body deleted (replaced by `pass` if it was the only one);
- in a list or set of strings (data such as a pipeline's stages), one element left out, or two
  neighbours of a list swapped.

Each mutant is written into the released notebook (course/<a>/<a>.ipynb) as a learner's answer
would be, its grade cells put back with the instructor's hidden tests (as the grader does), and
executed with nbclient in a scratch copy of course/<a>/. Each grade cell is then decided with
`autograder.reports.decide` against the reference solution's reports. A mutant is *killed* when
it loses any points; it *survives* when it earns full marks. Some survivors are equivalent
mutants (the change alters no behaviour): they are listed too, for a person to judge.

    python -m autograder mutate ex03_model_gate                 # at most 60 mutants, 2 kernels
    python -m autograder mutate ex03_model_gate --max-mutants 0  # every mutant

Answer cells that write a file with a cell magic (`%%writefile ci_model.py`, as in ex06) are
mutated below the magic line, so the script the tests run is the mutant.
"""
from __future__ import annotations

import ast
import contextlib
import copy
import os
import random
import shutil
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from . import AutograderError, reference, reports, samples
from .config import ClassPaths

CELL_TIMEOUT = 30  # seconds per cell of a mutant: a mutant that loops forever is killed by it


# ---------------------------------------------------------------------------------------------
# Generating mutants

@dataclass
class Mutant:
    cell: str
    line: int
    description: str
    source: str
    killed: bool | None = None
    failed: list[str] = field(default_factory=list)
    note: str = ""

    def label(self) -> str:
        return f"{self.cell}:{self.line} {self.description}"


COMPARE_FLIPS = {
    ast.Lt: [ast.LtE, ast.Gt], ast.LtE: [ast.Lt, ast.GtE], ast.Gt: [ast.GtE, ast.Lt],
    ast.GtE: [ast.Gt, ast.LtE], ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq],
    ast.In: [ast.NotIn], ast.NotIn: [ast.In], ast.Is: [ast.IsNot], ast.IsNot: [ast.Is],
}
SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
          ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not"}
BODY_FIELDS = ("body", "orelse", "finalbody")


def _short(node, limit=50) -> str:
    text = ast.unparse(node).replace("\n", " ")
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _in_fstring(tree) -> set[int]:
    """ids of nodes inside f-strings: message wording, not behaviour."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside.update(id(n) for n in ast.walk(node))
    return inside


def _docstring(body) -> bool:
    first = body[0] if body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def _sites(tree):
    """Every mutation of the tree, as (node index in ast.walk order, kind, variant, line, description)."""
    nodes = list(ast.walk(tree))
    skip = _in_fstring(tree)
    in_function = set()
    for node in nodes:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function.update(id(n) for n in ast.walk(node))
    for index, node in enumerate(nodes):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Compare):
            for position, op in enumerate(node.ops):
                for new in COMPARE_FLIPS.get(type(op), []):
                    yield index, "compare", (position, new), node.lineno, \
                        f"`{SYMBOL[type(op)]}` -> `{SYMBOL[new]}` in `{_short(node)}`"
        elif isinstance(node, ast.BoolOp):
            new = "or" if isinstance(node.op, ast.And) else "and"
            yield index, "boolop", None, node.lineno, f"`{'and' if new == 'or' else 'or'}` -> `{new}` in `{_short(node)}`"
        elif isinstance(node, (ast.If, ast.While, ast.IfExp)):
            yield index, "negate", None, node.lineno, f"condition negated: `not ({_short(node.test)})`"
        elif isinstance(node, ast.Constant) and type(node.value) in (int, float):
            value = node.value
            variants = [value + 1, value - 1] if isinstance(value, int) else [value * 0.5, value * 2]
            for new in variants:
                if new != value:
                    yield index, "constant", new, node.lineno, f"constant {value!r} -> {new!r}"
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool):
            yield index, "bool", not node.value, node.lineno, f"`{node.value}` -> `{not node.value}`"
        if isinstance(node, (ast.List, ast.Set)) and len(node.elts) > 1 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            for position, element in enumerate(node.elts):  # data written as literals (ex01's pipeline)
                yield index, "drop", position, element.lineno, f"{element.value!r} left out of `{_short(node, 40)}`"
            if isinstance(node, ast.List):
                for position in range(len(node.elts) - 1):
                    yield index, "swap", position, node.elts[position].lineno, \
                        f"{node.elts[position].value!r} and {node.elts[position + 1].value!r} swapped"
        if isinstance(node, ast.Return) and node.value is not None and not (
                isinstance(node.value, ast.Constant) and node.value.value is None):
            yield index, "return", None, node.lineno, f"`return {_short(node.value)}` -> `return None`"
        if id(node) in in_function:  # statements of function bodies, nested blocks included
            for name in BODY_FIELDS:
                body = getattr(node, name, None)
                if not isinstance(body, list):
                    continue
                start = 1 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and _docstring(body) else 0
                for position in range(start, len(body)):
                    statement = body[position]
                    if isinstance(statement, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                        continue
                    yield index, "delete", (name, position), statement.lineno, \
                        f"statement deleted: `{_short(statement)}`"


def _apply(tree, index, kind, variant):
    tree = copy.deepcopy(tree)
    node = list(ast.walk(tree))[index]
    if kind == "compare":
        position, new = variant
        node.ops[position] = new()
    elif kind == "boolop":
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif kind == "negate":
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif kind in ("constant", "bool"):
        node.value = variant
    elif kind == "return":
        node.value = ast.Constant(value=None)
    elif kind == "drop":
        del node.elts[variant]
    elif kind == "swap":
        node.elts[variant], node.elts[variant + 1] = node.elts[variant + 1], node.elts[variant]
    elif kind == "delete":
        name, position = variant
        body = getattr(node, name)
        del body[position]
        if not body:
            body.append(ast.Pass())
    return ast.unparse(ast.fix_missing_locations(tree))


def mutants_of(cell_id: str, source: str) -> list[Mutant]:
    """Every mutant of one answer cell. A leading cell magic (`%%writefile ci_model.py`) is kept as is."""
    header, body, offset = "", source, 0
    if source.startswith("%%"):
        header, _, body = source.partition("\n")
        header, offset = header + "\n", 1
    try:
        tree = ast.parse(body)
    except SyntaxError:
        return []
    return [Mutant(cell_id, line + offset, description, header + _apply(tree, index, kind, variant))
            for index, kind, variant, line, description in _sites(tree)]


# ---------------------------------------------------------------------------------------------
# Running them

def _with_hidden_tests(nb, source_nb):
    """Put the instructor's grade cells (hidden tests included) back, as the grader does."""
    tests = {c.id: c.source for c in source_nb.cells if reports.is_grade_cell(c)}
    for cell in nb.cells:
        if cell.id in tests:
            cell.source = tests[cell.id]
    return nb


def _run_one(job):
    """Execute one mutant notebook; return (killed, failed grade ids, note). Runs in a worker process."""
    release_dir, assignment, nb, expected = job
    scratch = Path(tempfile.mkdtemp(prefix="mutant-", dir=_scratch_root()))
    try:
        folder = scratch / assignment
        shutil.copytree(release_dir, folder)
        notebook = folder / f"{assignment}.ipynb"
        nbformat.write(nb, notebook)
        try:
            done = reference.execute_in_copy(notebook, timeout=CELL_TIMEOUT)
        except Exception as err:  # a cell past its time limit, a dead kernel: the mutant is caught
            return True, [], f"run stopped: {type(err).__name__}"
        failed = []
        for cell in done.cells:
            if reports.is_grade_cell(cell):
                verdict = reports.decide(cell, expected.get(reports.grade_id(cell)))
                if not verdict.passed:
                    failed.append(verdict.grade_id)
        return bool(failed), failed, ""
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextlib.contextmanager
def _quiet_stderr():
    """The reference run's kernel writes start-up chatter to stderr too."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _quiet_worker():
    """Kernels inherit the worker's stderr: keep their start-up chatter out of the report."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)


def _scratch_root() -> Path:
    root = Path(tempfile.gettempdir()) / "mutation" / "runs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def score(paths: ClassPaths, assignment: str, limit: int = 60, seed: int = 2026, jobs: int = 2) -> dict:
    """Mutate every answer cell of one assignment's reference solution and grade each mutant
    with the hidden tests. Returns {"assignment", "sites", "mutants"}; each mutant says whether
    it was killed and by which grade cells."""
    source_path = paths.source / assignment / f"{assignment}.ipynb"
    release_dir = paths.release / assignment
    if not source_path.is_file():
        raise AutograderError(f"no source notebook {source_path}; the assignments are in {paths.source}")
    if not (release_dir / f"{assignment}.ipynb").is_file():
        raise AutograderError(f"{assignment} has no student version in {release_dir}; "
                              f"run `python -m autograder release {assignment}` first")
    source_nb = nbformat.read(source_path, as_version=4)
    answers = samples.solution_sources(source_nb)
    with _quiet_stderr():
        expected = reference.compute(source_path)["cells"]

    mutants = [m for cell_id, text in answers.items() for m in mutants_of(cell_id, text)]
    total = len(mutants)
    if limit and total > limit:
        chosen = sorted(random.Random(f"{seed}:{assignment}").sample(range(total), limit))
        mutants = [mutants[i] for i in chosen]
    released = nbformat.read(release_dir / f"{assignment}.ipynb", as_version=4)
    # Everything is read once, here: a notebook edited during the run cannot mix two versions.
    work = [(str(release_dir), assignment, _with_hidden_tests(samples.fill(released, dict(answers, **{m.cell: m.source})), source_nb),
             expected) for m in mutants]
    with ProcessPoolExecutor(max_workers=max(1, jobs), initializer=_quiet_worker) as pool:
        for mutant, (killed, failed, note) in zip(mutants, pool.map(_run_one, work)):
            mutant.killed, mutant.failed, mutant.note = killed, failed, note
    return {"assignment": assignment, "sites": total, "mutants": mutants}


def summary_lines(result: dict, seconds: float, show_killed: bool = False) -> list[str]:
    """The report of one assignment: counts, then every survivor (for a person to judge)."""
    mutants = result["mutants"]
    killed = [m for m in mutants if m.killed]
    survived = [m for m in mutants if not m.killed]
    ratio = len(killed) / len(mutants) if mutants else 1.0
    lines = [f"== {result['assignment']}: {len(mutants)} mutants (of {result['sites']} possible), "
             f"{len(killed)} killed, {len(survived)} survived, kill ratio {ratio:.0%} ({seconds:.0f} s)"]
    lines += [f"   survived  {m.label()}" for m in survived]
    if show_killed:
        lines += [f"   killed    {m.label()}  <- {', '.join(m.failed) or m.note}" for m in killed]
    return lines
