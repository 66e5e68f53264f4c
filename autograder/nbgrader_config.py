"""nbgrader settings for the course.

Loaded by nbgrader through the repository's root nbgrader_config.py, and by the autograder package
through `autograder.config.course_config`. Two environment variables relocate what an instructor
may want elsewhere:

  CICD_CLASS_DIR   the class folder: submissions, autograded copies, feedback, gradebook
                   (default: class/ in the repository, which git ignores)
  CICD_EXCHANGE    nbgrader's exchange root (default: exchange/ inside the class folder)
"""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLASS_DIR = Path(os.environ.get("CICD_CLASS_DIR") or REPO / "class").resolve()
EXCHANGE = Path(os.environ.get("CICD_EXCHANGE") or CLASS_DIR / "exchange").resolve()

c = get_config()  # noqa: F821 - provided by traitlets

c.CourseDirectory.course_id = "cicd-for-models"
c.CourseDirectory.root = str(REPO)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
# Absolute paths: nbgrader joins them onto the root, which leaves an absolute path unchanged.
c.CourseDirectory.submitted_directory = str(CLASS_DIR / "submitted")
c.CourseDirectory.autograded_directory = str(CLASS_DIR / "autograded")
c.CourseDirectory.feedback_directory = str(CLASS_DIR / "feedback")
c.CourseDirectory.db_url = f"sqlite:///{CLASS_DIR / 'gradebook.db'}"

c.Exchange.root = str(EXCHANGE)
c.Exchange.path_includes_course = True

# Per-cell limit: the slowest exercise cell (ex06 runs a training script a few times) takes a
# few seconds here, so a minute only ever stops a runaway loop. CICD_CELL_TIMEOUT overrides it.
c.Execute.timeout = int(os.environ.get("CICD_CELL_TIMEOUT", "60"))
# A deleted or renamed grade cell is put back from the gradebook and graded, never left empty.
c.OverwriteCells.add_missing_cells = True
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

