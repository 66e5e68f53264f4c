# nbgrader reads this file from the folder it runs in (the repository root, and the root of a
# `jupyter lab` server for the formgrader). The course's settings live in autograder/.
from pathlib import Path

c = get_config()  # noqa: F821 - provided by traitlets when nbgrader loads this file
load_subconfig(str(Path(__file__).resolve().parent / "autograder" / "nbgrader_config.py"))  # noqa: F821
