"""The suite's own scheduling (tests/conftest.py): every file its hand-out order names exists,
notebooks are units of their own and other tests go by file, the longest files go first."""

from pathlib import Path

import conftest

TESTS = Path(__file__).resolve().parent


def test_every_file_of_the_hand_out_order_exists_once():
    # A renamed or removed file would silently fall to the end of the order.
    assert len(set(conftest._LONGEST_FILES)) == len(conftest._LONGEST_FILES)
    missing = [f for f in conftest._LONGEST_FILES if not (TESTS / f).is_file()]
    assert missing == []


def test_notebooks_are_their_own_units_and_other_tests_go_by_file():
    nb = "tests/test_notebooks.py::test_notebook_runs[05_precision]"
    assert conftest.work_unit(nb) == nb
    assert conftest.work_unit("tests/test_training.py::test_a[1-True]") == "tests/test_training.py"
    assert conftest.work_unit("tests/test_training.py::test_b") == "tests/test_training.py"


def test_the_longest_files_are_handed_out_first_and_unlisted_files_last():
    ranks = [conftest.hand_out_rank(f"tests/{f}::t") for f in conftest._LONGEST_FILES]
    assert ranks == sorted(ranks) and ranks[0] == 0
    assert conftest.hand_out_rank("tests/test_notebooks.py::t") < conftest.hand_out_rank(
        "tests/test_training.py::t") < conftest.hand_out_rank("tests/test_fields.py::t")
    assert conftest.hand_out_rank("tests/test_fields.py::t") == len(conftest._LONGEST_FILES)
