"""What autograder/course.py changes in how nbgrader 0.9.6 works, for speed: Gradebook() on one
SQLAlchemy engine per gradebook and process, and cell metadata checked against a schema checked once."""
import jsonschema
import pytest
from nbformat.v4 import new_code_cell
from nbgrader.nbgraderformat import MetadataValidator

from autograder import course
from nbgrader.api import Gradebook


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


def test_cell_metadata_is_still_validated_and_the_schema_checked_once(monkeypatch):
    assert isinstance(course.nbgrader_metadata_format.jsonschema, course._MetadataSchemas)
    checks = []
    real_check = jsonschema.Draft4Validator.check_schema
    monkeypatch.setattr(jsonschema.Draft4Validator, "check_schema",
                        classmethod(lambda cls, schema: checks.append(1) or real_check(schema)))
    monkeypatch.setattr(course.nbgrader_metadata_format, "jsonschema", course._MetadataSchemas())
    good = new_code_cell("1", metadata={"nbgrader": {"grade": True, "solution": False, "locked": True, "points": 1,
                                                     "grade_id": "test_one", "schema_version": 3, "task": False}})
    bad = new_code_cell("1", metadata={"nbgrader": {**good.metadata["nbgrader"], "points": "one"}})
    validator = MetadataValidator()
    for _ in range(20):
        validator.validate_cell(good)
    with pytest.raises(jsonschema.ValidationError) as raised:
        validator.validate_cell(bad)
    assert "'one'" in str(raised.value)
    assert len(checks) == 1
