"""The kernels the grader starts: ipykernel_launcher's, without the debugger (autograder/kernel_command.py)."""
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

from autograder import reference
from autograder.kernel_command import LAUNCHER, without_debugger


def test_only_ipykernel_launcher_is_replaced():
    spec = [sys.executable, "-m", "ipykernel_launcher", "-f", "/tmp/c.json", "--HistoryManager.hist_file=:memory:"]
    assert without_debugger(spec) == [sys.executable, "-c", LAUNCHER, "-f", "/tmp/c.json",
                                      "--HistoryManager.hist_file=:memory:"]
    other = ["R", "--slave", "-e", "IRkernel::main()", "--args", "/tmp/c.json"]
    assert without_debugger(other) == other
    assert without_debugger([sys.executable, "-m", "other_launcher", "-f", "x"])[1:3] == ["-m", "other_launcher"]


def test_a_reference_kernel_runs_without_the_debugger_and_imports_from_its_folder(tmp_path):
    folder = tmp_path / "exercise"
    folder.mkdir()
    (folder / "helper_module.py").write_text("VALUE = 42\n")
    cell = ("import os, sys, helper_module\n"
            "try:\n    import debugpy\n    found = 'importable'\nexcept ImportError:\n    found = 'missing'\n"
            "print(helper_module.VALUE, found, os.path.basename(os.getcwd()), sys.argv[1:2])")
    nbformat.write(new_notebook(cells=[new_code_cell(cell)]), folder / "exercise.ipynb")
    run = reference.execute_in_copy(folder / "exercise.ipynb")
    assert [o.get("text") for o in run.cells[0].outputs] == ["42 missing exercise ['-f']\n"], run.cells[0].outputs


def test_what_a_reference_run_makes_with_tempfile_is_gone_after_it(tmp_path):
    """Exercises make scratch folders with tempfile; on the host's /tmp each run left them behind."""
    folder = tmp_path / "exercise"
    folder.mkdir()
    cell = "import tempfile\nprint(tempfile.mkdtemp(prefix='cicd-litter-'))"
    nbformat.write(new_notebook(cells=[new_code_cell(cell)]), folder / "exercise.ipynb")
    made = Path(reference.execute_in_copy(folder / "exercise.ipynb").cells[0].outputs[0]["text"].strip())
    assert made.name.startswith("cicd-litter-") and made.parent.name == "tmp"
    assert not made.exists() and not made.parent.exists()


def test_a_kernel_process_writes_nothing_to_the_graders_terminal(tmp_path, capfd):
    """What reaches a kernel's own stderr outside its cells (here an exit handler; in a real run
    a libzmq assertion as the kernel stopped) stays off the instructor's terminal; what a cell
    prints still arrives, over the kernel's sockets."""
    folder = tmp_path / "exercise"
    folder.mkdir()
    cell = ("import atexit, os, sys\n"
            "atexit.register(os.write, sys.__stderr__.fileno(), b'KERNEL PROCESS NOISE\\n')\n"
            "print('from the cell')")
    nbformat.write(new_notebook(cells=[new_code_cell(cell)]), folder / "exercise.ipynb")
    run = reference.execute_in_copy(folder / "exercise.ipynb")
    assert [o.get("text") for o in run.cells[0].outputs] == ["from the cell\n"]
    captured = capfd.readouterr()
    assert "KERNEL PROCESS NOISE" not in captured.err + captured.out
