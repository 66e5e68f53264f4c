"""nbgrader's Gradebook() on one SQLAlchemy engine per gradebook and process (autograder/course.py)."""
from nbgrader.api import Gradebook

from autograder import course


def test_gradebooks_share_an_engine_and_see_each_others_writes(tmp_path):
    url = f"sqlite:///{tmp_path / 'gradebook.db'}"
    with Gradebook(url) as gradebook:
        gradebook.add_student("ada")
        engine = gradebook.engine
    with Gradebook(url) as gradebook:
        assert gradebook.engine is engine  # its compiled statements are reused
        assert [student.id for student in gradebook.students] == ["ada"]
    # A gradebook replaced on disk (restored from a backup, deleted) is read afresh: closing
    # a Gradebook still closes the engine's connections.
    (tmp_path / "gradebook.db").unlink()
    with Gradebook(url) as gradebook:
        assert gradebook.students == []


def test_only_the_newest_engines_are_kept(tmp_path):
    urls = [f"sqlite:///{tmp_path / f'gradebook{i}.db'}" for i in range(course._ENGINES_KEPT + 1)]
    engines = []
    for url in urls:
        with Gradebook(url) as gradebook:
            engines.append(gradebook.engine)
    assert len(set(map(id, engines))) == len(urls)
    with Gradebook(urls[-1]) as gradebook:
        assert gradebook.engine is engines[-1]
    with Gradebook(urls[0]) as gradebook:  # the oldest was let go
        assert gradebook.engine is not engines[0]
        assert gradebook.students == []
    assert len(course._ENGINES) == course._ENGINES_KEPT
