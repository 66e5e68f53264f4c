"""The course's grading pipeline: a thin layer over nbgrader's API.

The command line (`python -m autograder --help`) follows an instructor's day: release,
collect, grade, feedback, export; `check` is the learner's local self-check and `demo`
runs the whole day on bundled sample submissions in a throwaway folder.
"""
import os
import sys

# nbgrader's gradebook runs the `alembic` command by name when it creates a database, so an
# instructor who calls a virtual environment's python without activating it (venv/bin/python -m
# autograder ...) would see "No such file or directory: 'alembic'". Put this interpreter's own
# scripts folder first on PATH so nbgrader finds the alembic installed beside it.
_scripts = os.path.dirname(sys.executable)
if _scripts and _scripts not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _scripts + os.pathsep + os.environ.get("PATH", "")


class AutograderError(Exception):
    """A problem the user can fix; its message says what is wrong and what to do."""
