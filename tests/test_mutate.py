"""`python -m autograder mutate`: mutation testing of any assignment's hidden tests."""
from autograder import cli, mutate


def test_writefile_cells_are_mutated_below_their_magic():
    source = '%%writefile ci_model.py\nimport sys\n\ndef main():\n    return 2 if len(sys.argv) < 2 else 0\n'
    mutants = mutate.mutants_of("script", source)
    assert mutants, "a %%writefile cell must yield mutants"
    assert all(m.source.startswith("%%writefile ci_model.py\n") for m in mutants)
    assert any("return None" in m.source for m in mutants)
    assert any(m.line == 5 for m in mutants), "line numbers count the magic line"


def test_every_survivor_is_listed_for_a_person_to_judge():
    survivor = mutate.Mutant("functions", 12, "`is` -> `is not` in `x is True`", "", killed=False)
    caught = mutate.Mutant("functions", 3, "constant 1 -> 2", "", killed=True, failed=["test_next_stage"])
    lines = mutate.summary_lines({"assignment": "ex01_pipeline", "sites": 44, "mutants": [survivor, caught]}, 1.0,
                                 show_killed=True)
    assert lines[0].startswith("== ex01_pipeline: 2 mutants (of 44 possible), 1 killed, 1 survived")
    assert "   survived  functions:12 `is` -> `is not` in `x is True`" in lines
    assert "   killed    functions:3 constant 1 -> 2  <- test_next_stage" in lines


def test_the_verb_reports_counts_and_survivors(capsys, course_copy):
    code = cli.main(["mutate", "ex01_pipeline", "--max-mutants", "2", "--seed", "3",
                     "--class-dir", str(course_copy.class_dir), "--exchange", str(course_copy.exchange)])
    out = capsys.readouterr().out
    assert code == 0
    assert "== ex01_pipeline: 2 mutants (of " in out


def test_bad_options_get_one_clear_line(capsys):
    assert cli.main(["mutate", "ex01_pipeline", "--max-mutants", "-1"]) == 2
    assert "--max-mutants" in capsys.readouterr().err
