"""Every notebook in notebooks/ executes top to bottom without an error (nbclient, python3 kernel).

The kernel is the `python3` kernel spec of the environment running pytest (ipykernel installed in
the venv), started in the notebooks folder, so a notebook sees the same `dse` as the tests.
"""

from __future__ import annotations

from pathlib import Path

import nbclient
import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = ("01_pareto_sweep", "02_roadmap_sensitivity", "03_training_codesign",
            "04_inference_serving", "05_precision", "06_cluster_design",
            "07_serving_plans", "08_workload_mix")
# Wall-clock limit per notebook: each runs in well under 2 minutes on 2 CPU cores; the margin
# is for a loaded machine, so a hung kernel fails the test instead of the whole CI job.
TIMEOUT_S = 600


def test_every_notebook_is_listed():
    found = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_notebook_runs(name):
    path = NOTEBOOKS / f"{name}.ipynb"
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    # Notebooks teach: prose before code, and more than a title.
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and kinds.count("markdown") >= 4, name
    client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
    # Each notebook draws at least one figure (dse.plot returns Figures that display as PNG).
    images = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if "image/png" in o.get("data", {})]
    assert images, f"{name} displayed no figure"
