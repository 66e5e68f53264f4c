"""The course's grading pipeline: a thin layer over nbgrader's API.

The command line (`python -m autograder --help`) follows an instructor's day: release,
collect, grade, feedback, export; `check` is the learner's local self-check and `demo`
runs the whole day on bundled sample submissions in a throwaway folder.
"""


class AutograderError(Exception):
    """A problem the user can fix; its message says what is wrong and what to do."""
