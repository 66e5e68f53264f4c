"""The command line: verbs that read as an instructor's day, and clear errors for mistakes."""
import subprocess
import sys
from pathlib import Path

import pytest

from autograder import AutograderError, config

REPO = Path(__file__).resolve().parent.parent


def run(*args, cwd=REPO, env=None):
    return subprocess.run([sys.executable, "-m", "autograder", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env=env)


def run_here(capsys, monkeypatch, *args):
    """The same command in this process, from the repository root: main's exit code and output.
    (A subprocess per test would import nbgrader again each time; the tests above and below that
    need a real process, for `python -m autograder` itself or for kernels, still start one.)"""
    from autograder import cli
    monkeypatch.chdir(REPO)
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def class_with_submissions(tmp_path, *students):
    """A class folder under tmp_path holding each student's unanswered ex02_data_gate, as collected."""
    from conftest import submit_directly
    from autograder.config import ClassPaths
    import nbformat
    paths = ClassPaths.resolve(tmp_path / "class", repo=REPO)
    nb = nbformat.read(REPO / "course" / "ex02_data_gate" / "ex02_data_gate.ipynb", as_version=4)
    for student in students:
        submit_directly(paths, student, "ex02_data_gate", nb)
    return paths


def test_help_lists_the_day_in_order():
    out = run("--help")
    assert out.returncode == 0
    positions = [out.stdout.index(f"  {verb} ") for verb in
                 ("release", "collect", "grade", "feedback", "export", "check", "demo")]
    assert positions == sorted(positions)


@pytest.mark.parametrize("verb", ["release", "collect", "grade", "feedback", "export", "check", "demo"])
def test_every_verb_explains_itself(verb):
    out = run(verb, "--help")
    assert out.returncode == 0 and "usage:" in out.stdout


def test_no_verb_prints_help_and_fails():
    out = run()
    assert out.returncode == 2 and "release" in out.stdout


def test_unknown_assignment_is_named_with_the_known_ones(tmp_path, capsys, monkeypatch):
    out = run_here(capsys, monkeypatch, "grade", "ex99_nothing", "--class-dir", str(tmp_path / "class"))
    assert out.returncode == 2
    assert "unknown assignment 'ex99_nothing'" in out.stderr and "ex02_data_gate" in out.stderr


def test_grading_before_collecting_says_what_to_run(tmp_path, capsys, monkeypatch):
    (tmp_path / "class").mkdir()
    out = run_here(capsys, monkeypatch, "grade", "ex02_data_gate", "--class-dir", str(tmp_path / "class"))
    assert out.returncode == 2
    assert "collect ex02_data_gate" in out.stderr


def test_grading_a_class_folder_that_does_not_exist_says_so(tmp_path, capsys, monkeypatch):
    """A mistyped --class-dir: told so, not sent to `collect`, which would start a class there."""
    out = run_here(capsys, monkeypatch, "grade", "ex02_data_gate", "--class-dir", str(tmp_path / "clas"))
    assert out.returncode == 2
    assert f"{tmp_path / 'clas'} does not exist" in out.stderr and "--class-dir" in out.stderr
    assert "collect" not in out.stderr and not (tmp_path / "clas").exists()


def test_a_damaged_gradebook_is_named_with_the_way_back(tmp_path, capsys, monkeypatch):
    paths = class_with_submissions(tmp_path, "ada")
    paths.gradebook.write_bytes(b"this is no SQLite file " * 100)
    out = run_here(capsys, monkeypatch, "grade", "ex02_data_gate", "--class-dir", str(paths.class_dir))
    assert out.returncode == 2
    assert f"the gradebook {paths.gradebook} is damaged" in out.stderr and str(paths.backups) in out.stderr
    assert "permissions" not in out.stderr
    assert paths.gradebook.read_bytes() == b"this is no SQLite file " * 100, "the damaged file is left as it was"


def test_more_jobs_than_cores_is_warned_about(tmp_path, capsys, monkeypatch):
    (tmp_path / "class").mkdir()
    out = run_here(capsys, monkeypatch, "grade", "ex02_data_gate", "--jobs", "99", "--class-dir", str(tmp_path / "class"))
    assert "WARNING: --jobs 99 is more than the" in out.stderr and "no faster" in out.stderr
    out = run_here(capsys, monkeypatch, "grade", "ex02_data_gate", "--jobs", "1", "--class-dir", str(tmp_path / "class"))
    assert "--jobs" not in out.stderr


def test_grading_an_assignment_the_gradebook_does_not_hold_says_to_release_it(tmp_path, capsys, monkeypatch):
    """Submissions but no release in this class (or an empty gradebook put back): one clear error
    before anything runs, not a MissingEntry for every student (or, with two workers, one racing
    the other to create the gradebook's tables)."""
    paths = class_with_submissions(tmp_path, "ada", "alan")
    for gradebook in ("none", "empty file"):
        if gradebook == "empty file":
            paths.gradebook.write_bytes(b"")
        out = run_here(capsys, monkeypatch, "grade", "ex02_data_gate", "--class-dir", str(paths.class_dir))
        assert out.returncode == 2, out
        assert "ex02_data_gate is not in the gradebook" in out.stderr
        assert "python -m autograder release ex02_data_gate" in out.stderr
        assert not (paths.class_dir / "state").exists() and not paths.autograded.exists()


def test_feedback_before_grading_says_what_to_run(tmp_path, capsys, monkeypatch):
    out = run_here(capsys, monkeypatch, "feedback", "ex02_data_gate", "--class-dir", str(tmp_path / "class"))
    assert out.returncode == 2 and "grade ex02_data_gate" in out.stderr


def test_export_without_a_gradebook_is_explained(tmp_path, capsys, monkeypatch):
    out = run_here(capsys, monkeypatch, "export", "--class-dir", str(tmp_path / "class"), "--to", str(tmp_path / "g.csv"))
    assert out.returncode == 2 and "no gradebook" in out.stderr
    assert not (tmp_path / "g.csv").exists()


def test_unwritable_class_folder_is_explained(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run_here(capsys, monkeypatch, "collect", "ex02_data_gate", "--class-dir", str(blocker / "class"))
    assert out.returncode == 2 and "class folder" in out.stderr and "not writable" in out.stderr


def test_unwritable_exchange_is_explained(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    out = run_here(capsys, monkeypatch, "collect", "ex02_data_gate", "--class-dir", str(tmp_path / "class"),
              "--exchange", str(blocker / "exchange"))
    assert out.returncode == 2 and "exchange" in out.stderr and "not writable" in out.stderr


def test_unknown_student_is_explained(tmp_path, capsys, monkeypatch):
    class_with_submissions(tmp_path, "ada")
    out = run_here(capsys, monkeypatch, "grade", "ex02_data_gate", "--student", "bob", "--class-dir", str(tmp_path / "class"))
    assert out.returncode == 2 and "'bob'" in out.stderr and "ada" in out.stderr


def test_broken_or_missing_config_is_explained(tmp_path, monkeypatch):
    paths = config.ClassPaths.resolve(tmp_path / "class", repo=REPO)
    broken = tmp_path / "nbgrader_config.py"
    broken.write_text("c = get_config()\nc.CourseDirectory.course_id = (\n")
    monkeypatch.setattr(config, "CONFIG_FILE", broken)
    with pytest.raises(AutograderError, match="is broken.*SyntaxError"):
        config.load_course_config(paths)
    monkeypatch.setattr(config, "CONFIG_FILE", tmp_path / "missing.py")
    with pytest.raises(AutograderError, match="is missing"):
        config.load_course_config(paths)


def test_check_of_a_missing_notebook_is_explained(capsys, monkeypatch):
    out = run_here(capsys, monkeypatch, "check", "course/nope/nope.ipynb")
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_check_of_a_broken_notebook_is_explained(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "ex02_data_gate.ipynb"
    bad.write_text('{"cells": [')
    out = run_here(capsys, monkeypatch, "check", str(bad))
    assert out.returncode == 2 and "not valid notebook JSON" in out.stderr


def test_check_fails_an_unanswered_exercise_and_passes_the_reference(tmp_path):
    import shutil
    import nbformat
    from autograder import samples
    blank = run("check", "course/ex02_data_gate/ex02_data_gate.ipynb")
    assert blank.returncode == 1 and "FAIL" in blank.stdout and "NotImplementedError" in blank.stdout
    folder = tmp_path / "ex02_data_gate"
    shutil.copytree(REPO / "course" / "ex02_data_gate", folder)
    nb = samples.build(samples.load("ex02_data_gate", "correct"), folder / "ex02_data_gate.ipynb",
                       REPO / "solutions" / "ex02_data_gate" / "ex02_data_gate.ipynb")
    nbformat.write(nb, folder / "ex02_data_gate.ipynb")
    good = run("check", str(folder / "ex02_data_gate.ipynb"))
    assert good.returncode == 0, good.stdout + good.stderr
    assert " 0 failed" in good.stdout


def test_an_unactivated_virtual_environment_still_releases(tmp_path):
    """`venv/bin/python -m autograder` without `activate`: nbgrader's gradebook would run the
    `alembic` command by name, found only on PATH; ours reads the schema's revision in-process."""
    import os
    import shutil
    root = tmp_path / "repo"
    for folder in ("solutions/ex01_pipeline", "course", "autograder"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    env = {**os.environ, "CICD_CLASS_DIR": str(tmp_path / "class"), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
    out = run("release", "ex01_pipeline", cwd=root, env=env)
    assert out.returncode == 0, out.stdout[-1000:] + out.stderr[-2000:]
    assert (tmp_path / "class" / "gradebook.db").is_file()


def test_a_class_kept_elsewhere_leaves_no_class_folder_in_the_repository(tmp_path):
    """Only nbgrader's own commands (through the root nbgrader_config.py) make the default class
    folder; loading the course's config for a class given with --class-dir must not leave an empty
    class/ in the repository."""
    import os
    import shutil
    root = tmp_path / "repo"
    shutil.copytree(REPO / "autograder", root / "autograder", ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("CICD_CLASS_DIR", "CICD_EXCHANGE")}
    code = ("from autograder.config import ClassPaths, load_course_config; import sys; "
            "c = load_course_config(ClassPaths.resolve(sys.argv[1])); print(c.CourseDirectory.db_url)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "elsewhere")], cwd=root, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert str(tmp_path / "elsewhere" / "gradebook.db") in out.stdout
    assert not (root / "class").exists()


def test_nbgrader_own_command_line_uses_the_course_config(tmp_path):
    """Instructors may also call `nbgrader` directly from the repository root (the root
    nbgrader_config.py loads autograder/nbgrader_config.py)."""
    import os
    import shutil
    root = tmp_path / "repo"
    for folder in ("solutions/ex01_pipeline", "autograder"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "nbgrader_config.py", root / "nbgrader_config.py")
    env = {**os.environ, "CICD_CLASS_DIR": str(tmp_path / "class"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run([str(Path(sys.executable).parent / "nbgrader"), "generate_assignment", "ex01_pipeline",
                          "--force"], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    made = root / "course" / "ex01_pipeline" / "ex01_pipeline.ipynb"
    assert made.read_bytes() == (REPO / "course" / "ex01_pipeline" / "ex01_pipeline.ipynb").read_bytes()
    assert (tmp_path / "class" / "gradebook.db").is_file(), "the gradebook belongs in the class folder"
