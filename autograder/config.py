"""Where a class lives, and the nbgrader configuration that points there.

An instructor may move the class folder and the exchange (environment variables
CICD_CLASS_DIR and CICD_EXCHANGE, or --class-dir / --exchange on the command line).
Everything else comes from autograder/nbgrader_config.py.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from traitlets.config import Config, PyFileConfigLoader

from . import AutograderError

REPO = Path(__file__).resolve().parent.parent
CONFIG_FILE = Path(__file__).resolve().parent / "nbgrader_config.py"


@dataclass(frozen=True)
class ClassPaths:
    repo: Path
    class_dir: Path
    exchange: Path

    @classmethod
    def resolve(cls, class_dir=None, exchange=None, repo: Path = REPO) -> "ClassPaths":
        class_dir = Path(class_dir or os.environ.get("CICD_CLASS_DIR") or repo / "class").resolve()
        exchange = Path(exchange or os.environ.get("CICD_EXCHANGE") or class_dir / "exchange").resolve()
        return cls(Path(repo).resolve(), class_dir, exchange)

    @property
    def submitted(self) -> Path:  # raw submissions, exactly as collected: never modified
        return self.class_dir / "submitted"

    @property
    def staged(self) -> Path:  # the notebooks actually graded, rebuilt from the submissions
        return self.class_dir / "staged"

    @property
    def autograded(self) -> Path:
        return self.class_dir / "autograded"

    @property
    def feedback(self) -> Path:
        return self.class_dir / "feedback"

    @property
    def reference(self) -> Path:  # the reference solution's check results: never shown to students
        return self.class_dir / "reference"

    @property
    def backups(self) -> Path:
        return self.class_dir / "backups"

    @property
    def gradebook(self) -> Path:
        return self.class_dir / "gradebook.db"

    @property
    def source(self) -> Path:
        return self.repo / "solutions"

    @property
    def release(self) -> Path:
        return self.repo / "course"


def ensure_writable(folder: Path, what: str, hint: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise AutograderError(f"the {what} {folder} is not writable ({err.strerror}); {hint}") from None


def load_course_config(paths: ClassPaths) -> Config:
    """nbgrader's configuration for this class, from autograder/nbgrader_config.py."""
    if not CONFIG_FILE.is_file():
        raise AutograderError(f"the nbgrader configuration {CONFIG_FILE} is missing; restore it from git")
    try:
        loader = PyFileConfigLoader(CONFIG_FILE.name, path=str(CONFIG_FILE.parent))
        config = loader.load_config()
    except Exception as err:
        raise AutograderError(f"the nbgrader configuration {CONFIG_FILE} is broken "
                              f"({type(err).__name__}: {err}); fix it or restore it from git") from None
    config.CourseDirectory.root = str(paths.repo)
    config.CourseDirectory.submitted_directory = str(paths.submitted)
    config.CourseDirectory.autograded_directory = str(paths.autograded)
    config.CourseDirectory.feedback_directory = str(paths.feedback)
    config.CourseDirectory.db_url = f"sqlite:///{paths.gradebook}"
    config.Exchange.root = str(paths.exchange)
    return config
