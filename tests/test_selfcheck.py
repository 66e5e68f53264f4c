"""The learner's self-check says first when the exercise's own setup fails."""
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_a_missing_data_folder_is_reported_before_the_tests(tmp_path):
    folder = tmp_path / "ex02_data_gate"
    shutil.copytree(REPO / "course" / "ex02_data_gate", folder, ignore=shutil.ignore_patterns("data"))
    out = subprocess.run([sys.executable, "-m", "autograder", "check", str(folder / "ex02_data_gate.ipynb")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    lines = out.stdout.splitlines()
    assert lines[0].startswith("FAIL  setup (0 pt): the exercise's own setup cell"), out.stdout
    assert "FileNotFoundError" in lines[1] and "data/ folder" in lines[1], out.stdout
    assert not any("setup" in line for line in lines[2:] if line.startswith("FAIL  test_")), out.stdout
