"""The course's defences, wired into nbgrader's own configuration.

`python -m autograder grade` runs nbgrader with our preprocessors; this makes `nbgrader autograde`
(from the repository root), the Formgrader's Autograde, Collect and feedback buttons do the same:
the submission is rebuilt from the release, runs in the sandbox, is judged against the reference
results, is collected only from regular files its owner handed in, and its feedback never shows
hidden test code.
"""
from __future__ import annotations

from pathlib import Path


def defend(c) -> None:
    """Point nbgrader's own pipeline at ours, with the folders the course configuration chose."""
    repo = Path(c.CourseDirectory.root)
    class_dir = Path(c.CourseDirectory.submitted_directory).parent
    exchange = Path(c.Exchange.root)
    from nbconvert.preprocessors import ClearMetadataPreprocessor
    from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearOutput, DeduplicateIds,
                                        LimitOutput, OverwriteCells, OverwriteKernelspec, SaveAutoGrades)

    from . import course, feedback  # noqa: F401  (course: nbgrader's gradebook without an alembic subprocess)
    from .preprocessors import CapOutputs, DecideVerdicts, GuardedExecute, RebuildSubmission

    c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, OverwriteKernelspec, RebuildSubmission,
                                          OverwriteCells, CheckCellMetadata]
    c.Autograde.autograde_preprocessors = [GuardedExecute, CapOutputs, DecideVerdicts, ClearMetadataPreprocessor,
                                           LimitOutput, SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
    c.RebuildSubmission.release_dir = str(repo / "course")
    c.GuardedExecute.hide_paths = [str(repo), str(class_dir), str(exchange)]
    c.GuardedExecute.release_dir = str(repo / "course")  # what its fork server imports comes from there
    c.DecideVerdicts.reference_dir = str(class_dir / "reference")
    c.DecideVerdicts.source_dir = str(repo / "solutions")
    for section, values in feedback.config_sections().items():  # the same page as `python -m autograder feedback`
        for key, value in values.items():
            setattr(getattr(c, section), key, value)
    c.VisibleOnlyFeedback.staged_dir = str(class_dir / "staged")
    c.VisibleOnlyFeedback.reference_dir = str(class_dir / "reference")
    c.VisibleOnlyFeedback.submitted_dir = c.CourseDirectory.submitted_directory
    c.VisibleOnlyFeedback.release_dir = str(repo / "course")
    c.ExchangeFactory.collect = "autograder.inbound.SafeExchangeCollect"
    c.ExchangeFactory.release_assignment = "autograder.lint.LintedReleaseAssignment"
