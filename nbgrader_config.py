# nbgrader reads this file from the folder it runs in (the repository root, and the root of a
# `jupyter lab` server for the formgrader). The course's settings live in autograder/.
import sys
from pathlib import Path

c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file
load_subconfig(str(Path(__file__).resolve().parent / "autograder" / "nbgrader_config.py"))  # noqa: F821

# SQLite creates the gradebook but not its folder: made here, for nbgrader's own commands and the
# Formgrader, not in autograder/nbgrader_config.py, which `python -m autograder` also loads for a
# class kept elsewhere. An unwritable location is reported by the autograder's own checks.
try:
    Path(c.CourseDirectory.db_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
except OSError:
    pass

# nbgrader's own commands and the Formgrader's buttons (Autograde, Collect, Generate Feedback)
# go through the same rebuild, sandbox, verdicts, collection and feedback as
# `python -m autograder` (which configures them itself): docs/grading-you-can-trust.md.
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # nbgrader and Jupyter import the grader from here
from autograder.nbgrader_hooks import defend  # noqa: E402

defend(c)
