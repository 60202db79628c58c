"""The repository carries its published data: every file is there and every row names a source."""

from __future__ import annotations

import csv

import pytest
from helpers import REPO

import dse.data


@pytest.mark.parametrize("name", dse.data.FILES)
def test_every_row_names_its_source(name):
    with open(dse.data.path(name), newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, name
    assert "source" in rows[0], name
    missing = [i + 2 for i, r in enumerate(rows) if not (r["source"] or "").strip()]
    assert not missing, f"{name}: rows without a source at lines {missing[:10]}"


def test_data_folder_is_inside_the_repository():
    assert dse.data.data_dir().resolve() == (REPO / "data").resolve()
    assert (REPO / "data" / "README.md").is_file()


def test_unknown_file_is_a_named_error():
    with pytest.raises(ValueError, match="dse.data.path: name must be one of"):
        dse.data.path("nope.csv")
