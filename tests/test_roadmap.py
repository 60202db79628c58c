"""dse.roadmap / dse.retarget: a chip moved across nodes and HBM generations, re-optimized."""

from __future__ import annotations

import numpy as np
import pytest

import dse
from dse.hardware import CHIPS, area, extrapolated_quantities, hbm_stacks, power, technology
from dse.models import gemm
from dse.plot import UNITS  # noqa: F401  (dse.plot imports with dse)

AREA_BUDGET = 826.0  # mm^2, GA100 / GH100-class die (chips.csv die areas)
POWER_BUDGET = 700.0  # W, H100 SXM TDP (chips.csv)


def _workload(chip):
    # One large training GEMM and a batch of 20 decode-sized ones.
    t = gemm(chip, 4096.0, 12288.0, 12288.0).time + 20.0 * gemm(chip, 16.0, 12288.0,
                                                                 12288.0).time
    return {"time": t, "area": area(chip).total, "power": power(chip).total}


def test_retarget_keeps_architecture_and_stack_count():
    a100 = CHIPS["A100-80GB"]
    moved = dse.retarget(a100, 5.0, "HBM3e")
    assert moved.hbm_generation == "HBM3e" and float(moved.node_nm) == 5.0
    for field in ("mac_units", "clock_hz", "sram_bytes", "link_count", "link_bandwidth",
                  "core_count"):
        assert float(getattr(moved, field)) == float(getattr(a100, field)), field
    # Same number of stacks, each of the new generation (JEDEC per-stack figures).
    stacks = float(hbm_stacks(a100))
    np.testing.assert_allclose(float(hbm_stacks(moved)), stacks, rtol=1e-5)
    new = technology(5.0, "HBM3e")
    np.testing.assert_allclose(float(moved.hbm_bandwidth), stacks * float(new.hbm_stack_bandwidth),
                               rtol=1e-6)
    old = technology(7.0, "HBM2e")
    np.testing.assert_allclose(float(moved.hbm_bandwidth) / float(a100.hbm_bandwidth),
                               float(new.hbm_stack_bandwidth) / float(old.hbm_stack_bandwidth),
                               rtol=1e-5)
    # Node only: memory untouched, area shrinks.
    same_mem = dse.retarget(a100, 5.0)
    assert float(same_mem.hbm_bandwidth) == float(a100.hbm_bandwidth)
    assert float(area(same_mem).total) < float(area(a100).total)
    with pytest.raises(ValueError, match="HBM and no HBM"):
        dse.retarget(a100, 5.0, "none")


def test_roadmap_follows_the_chip_and_the_optimum():
    params = {"mac_units": ("log", 2e4, 4e5), "hbm_bandwidth": ("log", 5e11, 1e13)}
    assert dse.ROADMAP_STEPS == ((7.0, "HBM2e"), (5.0, "HBM3"), (3.0, "HBM3e"), (2.0, "HBM4"))
    # First and last default steps (each step compiles its own sweep: two keep the test short).
    steps = [dse.ROADMAP_STEPS[0], dse.ROADMAP_STEPS[-1]]
    res = dse.roadmap(_workload, CHIPS["A100-80GB"], metric="time", params=params,
                      constraints={"area": ("<=", AREA_BUDGET), "power": ("<=", POWER_BUDGET)},
                      n=512, steps=steps)
    assert [s.label for s in res.steps] == ["N7 / HBM2e", "N2 / HBM4"]
    # Extrapolation flags are the technology layer's, per node.
    for s in res.steps:
        assert s.extrapolated == tuple(extrapolated_quantities(s.node_nm))
    assert not res.steps[0].extrapolated and res.steps[-1].extrapolated
    # The same architecture gets smaller and faster (more HBM bandwidth) down the roadmap.
    areas = [s.metrics["area"] for s in res.steps]
    times = [s.metrics["time"] for s in res.steps]
    assert np.all(np.diff(areas) < 0) and np.all(np.diff(times) < 0)
    resources = set(dse._sensitivity.RESOURCES.values())
    for s in res.steps:
        assert s.binding in resources
        assert s.n_feasible > 0 and s.optimum is not None
        # The optimum is re-evaluated exactly and meets both budgets.
        m = {k: float(v) for k, v in _workload(s.optimum).items()}
        assert m["area"] <= AREA_BUDGET * (1 + 1e-6) and m["power"] <= POWER_BUDGET * (1 + 1e-6)
        np.testing.assert_allclose(m["time"], s.optimum_metrics["time"], rtol=1e-5)
        assert s.optimum_binding in resources
        lo, hi = 2e4, 4e5
        assert lo * (1 - 1e-6) <= s.optimum_params["mac_units"] <= hi * (1 + 1e-6)
    # Denser nodes fit more MAC units under the same area and power budgets.
    macs = [s.optimum_params["mac_units"] for s in res.steps]
    assert macs[-1] > macs[0]
    df = res.to_dataframe()
    assert list(df["step"]) == [s.label for s in res.steps]
    assert {"time", "opt_time", "opt_mac_units", "binding", "opt_binding",
            "extrapolated"} <= set(df.columns)


def test_roadmap_without_a_space_and_bad_input():
    res = dse.roadmap(_workload, CHIPS["H100-SXM"], metric="time",
                      steps=[(5.0, "HBM3"), (3.0, "HBM3e")],
                      fields=["mac_units", "hbm_bandwidth"])
    assert all(s.optimum is None and s.optimum_metrics == {} for s in res.steps)
    # Only the named fields are differentiated (and so only they can bind).
    assert all({f for f, _ in s.top} == {"mac_units", "hbm_bandwidth"} for s in res.steps)
    assert all(s.binding in ("compute", "HBM bandwidth") for s in res.steps)
    assert res.to_dataframe().shape[0] == 2
    with pytest.raises(ValueError, match="no metric 'speed'"):
        dse.roadmap(_workload, CHIPS["H100-SXM"], metric="speed", steps=[(5.0, "HBM3")])
    with pytest.raises(ValueError, match="direction"):
        dse.roadmap(_workload, CHIPS["H100-SXM"], metric="time", direction="down")
    with pytest.raises(ValueError, match="at least one"):
        dse.roadmap(_workload, CHIPS["H100-SXM"], metric="time", steps=[])
