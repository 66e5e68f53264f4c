"""How fast a class is graded: stock nbgrader, ours one at a time, ours on all cores, raw nbclient.

Builds a class of N submissions of one exercise from the fixture corpus (right answers, partial,
wrong and blank ones, and a notebook cut off mid-save), then, in one run and on the same
submissions:

  stock    `nbgrader autograde` one student after another, with the course's nbgrader_config.py
           and nbgrader's own preprocessors (no sandbox, no verdicts)
  ours-1   `course.grade(..., jobs=1)`: sandbox, verdicts, gradebook, one submission at a time
  ours-N   `course.grade(...)` with one job per core
  raw      nbclient executing the very notebooks ours ran, one after another in a fresh kernel
           each, in their folder: the floor, with nothing but the learner's code and a kernel

and prints wall times, ratios and peak memory (resident set of the grading process and of all
its descendants, sampled every 50 ms). The reference solution's run happens once per release
and is reported on its own line. Usage:

  python benchmarks/grade_class.py [--size 60] [--assignment ex02_data_gate] [--keep FOLDER]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def tree_rss(root_pid: int) -> tuple[int, int]:
    """(resident bytes of root_pid, of root_pid and every descendant)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        pid, ppid = int(fields["Pid"]), int(fields["PPid"])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    total, todo, seen = 0, [root_pid], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return rss.get(root_pid, 0), total


class PeakMemory:
    """Samples the resident memory of this process and its descendants (grading workers come from
    a fork server that is our child, kernels from the workers) while a phase runs."""

    def __init__(self):
        self.own = self.total = 0
        self._stop = threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            own, total = tree_rss(os.getpid())
            self.own, self.total = max(self.own, own), max(self.total, total)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_class(root: Path, assignment: str, size: int):
    from autograder import course, samples
    from autograder.config import ClassPaths
    for folder in ("solutions", "course"):
        shutil.copytree(REPO / folder, root / "repo" / folder)
    paths = ClassPaths(root / "repo", root / "class", root / "exchange")
    course.generate(paths, assignment)
    cases = samples.cases(assignment) + ["cut_off_mid_save"]
    released = paths.release / assignment / f"{assignment}.ipynb"
    for index in range(size):
        case = cases[index % len(cases)]
        folder = paths.submitted / f"s{index:03d}_{case}" / assignment
        folder.mkdir(parents=True)
        target = folder / f"{assignment}.ipynb"
        if case == "cut_off_mid_save":
            text = released.read_text()
            target.write_text(text[: len(text) // 2])
        else:
            import nbformat
            nb = samples.build(samples.load(assignment, case), released,
                               paths.source / assignment / f"{assignment}.ipynb")
            target.write_text(nb if isinstance(nb, str) else nbformat.writes(nb))
        (folder / "timestamp.txt").write_text("2026-11-01 12:00:00.000000 UTC")
    return paths


def fresh_class(paths, name: str):
    """The same course and submissions with an empty class folder of its own."""
    from autograder.config import ClassPaths
    class_dir = paths.class_dir.parent / name
    shutil.copytree(paths.submitted, class_dir / "submitted")
    shutil.copy(paths.gradebook, class_dir / "gradebook.db")  # as `release` left it
    if paths.reference.is_dir():
        shutil.copytree(paths.reference, class_dir / "reference")
    return ClassPaths(paths.repo, class_dir, class_dir / "exchange")


def run_stock(paths, assignment: str) -> None:
    from nbgrader.apps import NbGraderAPI
    from autograder.config import load_course_config
    config = load_course_config(paths)
    api = NbGraderAPI(config=config)
    for student in sorted(p.name for p in paths.submitted.iterdir()):
        api.autograde(assignment, student, force=True, create=True)


def run_raw(staged_root: Path, assignment: str) -> None:
    import nbformat
    from nbclient import NotebookClient
    for folder in sorted(p / assignment for p in staged_root.iterdir()):
        for path in sorted(folder.glob("*.ipynb")):
            nb = nbformat.read(path, as_version=4)
            client = NotebookClient(nb, timeout=60, allow_errors=True, kernel_name="python3",
                                    resources={"metadata": {"path": str(folder)}})
            try:
                client.execute()
            except Exception:  # a notebook that kills its kernel stops here, as in grading
                pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=60, help="submissions in the class (default 60)")
    parser.add_argument("--assignment", default="ex02_data_gate")
    parser.add_argument("--keep", type=Path, help="build the classes here (must not exist) and keep them")
    args = parser.parse_args(argv)
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(name, "1")  # raw and stock kernels get what the sandbox gives ours
    from autograder import course

    if args.keep and args.keep.exists():
        print(f"{args.keep} already exists; give --keep a new folder", file=sys.stderr)
        return 2
    root = args.keep or Path(tempfile.mkdtemp(prefix="cicd-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        paths = build_class(root, args.assignment, args.size)
        started = time.perf_counter()
        course.prepare_reference(paths, args.assignment)
        reference_s = time.perf_counter() - started
        cores = course.default_jobs()
        rows = {}

        stock_paths = fresh_class(paths, "class-stock")
        with PeakMemory() as memory:
            started = time.perf_counter()
            run_stock(stock_paths, args.assignment)
            rows["stock nbgrader autograde"] = (time.perf_counter() - started, memory)

        for label, jobs in (("ours --jobs 1", 1), (f"ours --jobs {cores} (all cores)", cores)):
            ours = fresh_class(paths, f"class-jobs{jobs}")
            parent_rss = {}

            def after_each(result, seen=[0]):
                seen[0] += 1
                if seen[0] in (10, args.size):
                    parent_rss[seen[0]] = tree_rss(os.getpid())[0]

            with PeakMemory() as memory:
                started = time.perf_counter()
                results = course.grade(ours, args.assignment, jobs=jobs, on_result=after_each)
                rows[label] = (time.perf_counter() - started, memory)
            failed = [r.student for r in results if r.error]
            print(f"{label}: {len(results)} graded, {len(failed)} errors; grading process "
                  + ", ".join(f"{rss / 2**20:.0f} MiB after {n}" for n, rss in sorted(parent_rss.items())))
            staged = ours.staged

        with PeakMemory() as memory:
            started = time.perf_counter()
            run_raw(staged, args.assignment)
            rows["raw nbclient"] = (time.perf_counter() - started, memory)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    load = os.getloadavg()
    print(f"\n{args.size} submissions of {args.assignment}, {cores} cores, load average at the end "
          f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}")
    print(f"reference solution run (once per release): {reference_s:.1f} s")
    print(f"{'':34} {'wall s':>8} {'s/sub':>7} {'peak MiB':>9} {'(tree)':>8}")
    for label, (seconds, memory) in rows.items():
        print(f"{label:34} {seconds:8.1f} {seconds / args.size:7.2f} {memory.own / 2**20:9.0f} "
              f"{memory.total / 2**20:8.0f}")
    stock = rows["stock nbgrader autograde"][0]
    raw = rows["raw nbclient"][0]
    one = rows["ours --jobs 1"][0]
    many = rows[f"ours --jobs {cores} (all cores)"][0]
    print(f"\nours on all cores vs stock: {stock / many:.2f}x faster (target >= 1.8x)")
    print(f"ours --jobs 1 vs raw nbclient: {one / raw:.2f}x the time (target <= 1.25x)")
    print(f"ours --jobs 1 vs stock: {stock / one:.2f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
