"""dse.optimize: gradient search over a Space under budgets, snapped, repaired, checked exactly.

Problems with known answers, posed on the fields of a Chip (units: clock in GHz, HBM bandwidth
in TB/s inside the objectives):

- two objectives f1 = (c - 1)^2, f2 = (c - 3)^2: Pareto set c in [1, 3], front
  f2 = (2 - sqrt f1)^2 for f1 in [0, 4];
- min (c - 3)^2 + (h - 2)^2 s.t. c + h <= 4: KKT gives c = 2.5, h = 1.5, value 0.5;
- max link_count s.t. link_count <= 7.6: the relaxed optimum 7.6 rounds to 8, which breaks the
  budget, and the repair must return 7.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import dse
from dse.hardware import Chip, area, power

FAST = dict(n_preferences=4, n_starts=1, outer_steps=3, inner_steps=30, learning_rate=0.1,
            n_pilot=16, progress=False)


@pytest.fixture(scope="module")
def chip():
    # A100-like (NVIDIA A100 datasheet: 312 TFLOP/s dense BF16 at 1.41 GHz, 2.0 TB/s, 80 GB).
    return Chip(mac_units=110592, clock_hz=1.41e9, vector_flops=19.5e12, sram_bytes=57.3e6,
                hbm_bandwidth=2.0e12, hbm_bytes=80e9, link_count=12, link_bandwidth=25e9,
                node_nm=7, core_count=108, hbm_generation="HBM2e")


def _two_objective(c):
    x = c.clock_hz / 1e9
    return {"f1": (x - 1.0) ** 2, "f2": (x - 3.0) ** 2}


def test_two_objective_front_is_analytic(chip):
    space = dse.Space(chip, {"clock_hz": ("linear", 0.5e9, 3.5e9)})
    res = dse.optimize(_two_objective, space, objectives=["f1", "f2"],
                       **{**FAST, "n_preferences": 9, "outer_steps": 2, "inner_steps": 80})
    assert res.status == "ok"
    f = res.front_metrics
    c = res.front_x[:, 0] / 1e9
    assert np.all((c > 1.0 - 2e-3) & (c < 3.0 + 2e-3)), c  # the Pareto set
    np.testing.assert_allclose(f["f2"], (2.0 - np.sqrt(f["f1"])) ** 2, atol=1e-5)
    # The ends of the front are reached (w = (1, 0) and (0, 1) are among the preferences).
    assert f["f1"].min() < 1e-3 and f["f2"].min() < 1e-3
    # Sorted by the first objective, non-dominated.
    assert np.all(np.diff(f["f1"]) >= 0) and np.all(np.diff(f["f2"]) <= 0)


def test_convex_budget_known_optimum(chip):
    space = dse.Space(chip, {"clock_hz": ("linear", 0.5e9, 3.5e9),
                             "hbm_bandwidth": ("linear", 0.5e12, 4.0e12)})

    def objective(c):
        x, h = c.clock_hz / 1e9, c.hbm_bandwidth / 1e12
        return {"loss": (x - 3.0) ** 2 + (h - 2.0) ** 2, "sum": x + h}

    res = dse.optimize(objective, space, objectives=["loss"], budgets={"sum": 4.0},
                       **{**FAST, "outer_steps": 8, "inner_steps": 50})
    assert res.status == "ok"
    best = res.front[0]
    np.testing.assert_allclose(res.x[best] / [1e9, 1e12], [2.5, 1.5], atol=1e-2)
    # The search aims budget_margin = 1e-3 (relative) inside the budget: on c + h = 4 - d,
    # d = 0.004, the optimum is 0.5 + d + d^2 / 2 = 0.504; never below the true 0.5.
    assert 0.5 <= res.metrics["loss"][best] <= 0.5045
    assert res.margins["sum"][best] >= 0.0
    # Every design called feasible meets the budget in the exact evaluation.
    assert np.all(res.metrics["sum"][res.feasible] <= 4.0)


def test_snapping_breaks_budget_and_repair_fixes_it(chip):
    space = dse.Space(chip, {"link_count": ("integer", 1, 20),
                             "clock_hz": ("linear", 1e9, 2e9)})

    def objective(c):
        return {"links": c.link_count, "clock": c.clock_hz}

    res = dse.optimize(objective, space, objectives={"links": "max", "clock": "min"},
                       budgets={"links": 7.6}, **{**FAST, "outer_steps": 6})
    links = res.metrics["links"]
    assert np.all(links == np.round(links))  # every returned design is snapped
    assert np.all(links[res.feasible] <= 7.6)
    snapped_bad = (res.source == "snapped") & (links == 8.0)
    assert snapped_bad.any()  # the relaxed optimum 7.6 rounded up past the budget...
    assert not res.feasible[snapped_bad].any()
    assert all("links <= 7.6" in r for r in res.reason[snapped_bad])
    repaired = (res.source == "repair") & (links == 7.0) & res.feasible
    assert repaired.any()  # ...and its floor neighbour was tried and kept
    assert res.front_metrics["links"].max() == 7.0


def _budget_problem(c):
    """Four budgeted metrics that cannot all be broken at once by loose bounds."""
    x, s = c.clock_hz / 1e9, c.sram_bytes / 1e6
    return {"time": 1.0 / x + 10.0 / s, "area": 10.0 * s + 5.0 * x, "power": 50.0 * x ** 2,
            "margin": 200.0 - s}


LOOSE = {"area": 2000.0, "power": 500.0, "margin": (0.0, None)}


@pytest.fixture(scope="module")
def budget_space(chip):
    return dse.Space(chip, {"clock_hz": ("linear", 0.5e9, 3.0e9),
                            "sram_bytes": ("log", 1e6, 400e6)})


# The chip budgets of the issue, on the hardware models: peak FLOP/s up, area down, under
# power, reticle, shoreline and memory (HBM capacity for a 60 GB working set) budgets.
HW_LOOSE = {"power": 1000.0, "reticle_margin": (0.0, None), "shoreline_margin": (0.0, None),
            "memory_margin": (0.0, None)}
# One impossible value per budget: below any chip's power or area, a reticle or shoreline
# margin larger than the reticle itself (858 mm^2) or any die's perimeter, 10 TB of HBM.
HW_IMPOSSIBLE = {"power": 1.0, "area": 1.0, "reticle_margin": (1000.0, None),
                 "shoreline_margin": (1e4, None), "memory_margin": (1e13, None)}


def _chip_metrics(c):
    a = area(c)
    return {"peak_flops": c.peak_flops, "area": a.total, "power": power(c).total,
            "reticle_margin": a.reticle_margin, "shoreline_margin": a.shoreline_margin,
            "memory_margin": c.hbm_bytes - 60e9}


@pytest.fixture(scope="module")
def chip_space(chip):
    return dse.Space(chip, {"mac_units": ("log", 2e4, 4e5), "sram_bytes": ("log", 8e6, 4e8),
                            "hbm_bandwidth": ("log", 0.5e12, 8e12),
                            "hbm_bytes": ("log", 16e9, 192e9),
                            "link_count": ("integer", 2, 24)})


def _chip_optimize(space, budgets):
    return dse.optimize(_chip_metrics, space, objectives={"peak_flops": "max", "area": "min"},
                        budgets=budgets, log_objectives=True, **FAST)


def test_chip_budgets_feasible_and_rechecked(chip_space):
    res = _chip_optimize(chip_space, HW_LOOSE)
    assert res.status == "ok" and len(res.front) >= 3
    assert not res.feasible.all()  # the budgets bind: some designs checked were rejected
    for i in res.front:  # rebuild every front design and evaluate it afresh
        c = res.design(i)
        a = area(c)
        assert float(power(c).total) <= 1000.0
        assert float(a.reticle_margin) >= 0.0 and float(a.shoreline_margin) >= 0.0
        assert float(c.hbm_bytes) >= 60e9
        assert float(c.link_count) == round(float(c.link_count))
        np.testing.assert_allclose(float(a.total), res.metrics["area"][i], rtol=1e-5)
    for name in HW_LOOSE:
        assert np.all(res.front_margins[name] >= 0.0)
    # Sorted best first in the first objective (the most peak): the front runs from the
    # largest, fastest chip down, and on a front area falls as peak falls.
    f = res.front_metrics
    assert np.all(np.diff(f["peak_flops"]) <= 0) and np.all(np.diff(f["area"]) <= 0)
    df = res.to_dataframe()
    assert len(df) == len(res.front) and "margin_power" in df.columns
    # Evaluation accounting: pilot + 3 per gradient + every final check.
    n_final = int(np.sum(res.source != "pilot"))
    assert res.n_evaluations == 16 + 3 * res.n_gradients + n_final
    assert res.n_gradients == 4 * 3 * 30
    assert res.history["objectives"].shape == (3, 4, 2)
    assert res.history["n_evaluations"][-1] == 16 + 3 * res.n_gradients
    # Reference in the objectives' own signs: no peak, 2000 mm^2 (a bad chip in both).
    assert res.hypervolume(np.array([0.0, 2000.0])) > 0.0


@pytest.mark.parametrize("broken", sorted(HW_IMPOSSIBLE))
def test_each_broken_budget_is_reported_infeasible(chip_space, broken):
    budgets = {**HW_LOOSE, broken: HW_IMPOSSIBLE[broken]}
    res = _chip_optimize(chip_space, budgets)
    assert res.status == "infeasible"
    assert res.front.size == 0 and not res.feasible.any()
    assert broken in res.message
    assert all(broken in r for r in res.reason)
    assert np.all(res.margins[broken] < 0.0)
    assert len(res.x) > 16  # the search ran and its designs were checked, not skipped


def test_deterministic_for_a_seed(budget_space):
    a = dse.optimize(_budget_problem, budget_space, objectives=["time", "area"],
                     budgets=LOOSE, seed=3, **FAST)
    b = dse.optimize(_budget_problem, budget_space, objectives=["time", "area"],
                     budgets=LOOSE, seed=3, **FAST)
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.front, b.front)
    np.testing.assert_array_equal(a.history["objectives"], b.history["objectives"])


def test_bad_arguments(budget_space):
    with pytest.raises(ValueError, match="no metric named"):
        dse.optimize(_budget_problem, budget_space, objectives=["speed"], **FAST)
    with pytest.raises(ValueError, match="direction"):
        dse.optimize(_budget_problem, budget_space, objectives={"time": "lowest"}, **FAST)
    with pytest.raises(ValueError, match="low 2.0 > high 1.0"):
        dse.optimize(_budget_problem, budget_space, objectives=["time"],
                     budgets={"area": (2.0, 1.0)}, **FAST)
    with pytest.raises(ValueError, match="scalarizations"):
        dse.optimize(_budget_problem, budget_space, objectives=["time"],
                     scalarizations=("pbi",), **FAST)


def test_progress_bar_weighted_sum_random_starts_iterates(budget_space, capsys):
    res = dse.optimize(_budget_problem, budget_space, objectives=["time", "area"],
                       budgets=LOOSE, scalarizations=("chebyshev", "weighted_sum"),
                       starts="random", keep_iterates=True, **{**FAST, "progress": True})
    assert res.history["violation"].shape == (3, 8)
    # 8 starts: best + last + 2 intermediate iterates each, at most (duplicates merged).
    assert 8 <= np.sum(res.source != "pilot") <= 8 * 4
    assert res.n_evaluations == 16 + 3 * res.n_gradients + int(np.sum(res.source != "pilot"))
    with pytest.raises(ValueError, match="starts"):
        dse.optimize(_budget_problem, budget_space, objectives=["time"], starts="best",
                     **FAST)
    assert "optimize" in capsys.readouterr().err
    assert jnp.isfinite(res.seconds)


# --- method="trace": continuation along the front -------------------------------------------

TRACE = dict(method="trace", n_pilot=8, progress=False)


def test_trace_front_is_analytic(chip):
    """f1 = (c - 1)^2, f2 = (c - 3)^2: every accepted traced point is on the front
    f2 = (2 - sqrt f1)^2, the trace runs from one end (f2 = 0) to the other (f1 = 0), the
    points are spread along it, and it costs far fewer Jacobians than the multistart search."""
    space = dse.Space(chip, {"clock_hz": ("linear", 0.5e9, 3.5e9)})
    res = dse.optimize(_two_objective, space, objectives=["f1", "f2"], spacing=0.05, **TRACE)
    assert res.status == "ok"
    traced = res.source == "trace"
    accepted = np.zeros(len(res.x), bool)
    accepted[traced] = res.history["accepted"]
    f1, f2 = res.metrics["f1"][accepted], res.metrics["f2"][accepted]
    on_set = (res.x[accepted, 0] > 1e9 - 2e6) & (res.x[accepted, 0] < 3e9 + 2e6)
    assert on_set[1:].all()  # the first point is the pilot's best for f2, not yet converged
    np.testing.assert_allclose(f2[1:], (2.0 - np.sqrt(f1[1:])) ** 2, atol=1e-4)
    assert f2.min() < 1e-4 and f1.min() < 1e-4
    # Spread: no gap between consecutive front points wider than a quarter of the front.
    c = np.sort(res.front_x[:, 0] / 1e9)
    assert np.max(np.diff(c)) < 0.5, c
    assert res.n_gradients <= 60
    assert np.all(np.diff(res.history["weight"]) >= 0)  # w only moves forward
    assert res.n_evaluations == 8 + 6 * res.n_gradients
    assert res.history["n_evaluations"][-1] == res.n_evaluations


def test_trace_budgets_feasible_and_rechecked(chip_space):
    res = dse.optimize(_chip_metrics, chip_space,
                       objectives={"peak_flops": "max", "area": "min"}, budgets=HW_LOOSE,
                       log_objectives=True, **TRACE)
    assert res.status == "ok" and len(res.front) >= 5
    for i in res.front:
        c = res.design(i)
        a = area(c)
        assert float(power(c).total) <= 1000.0
        assert float(a.reticle_margin) >= 0.0 and float(a.shoreline_margin) >= 0.0
        assert float(c.hbm_bytes) >= 60e9
        assert float(c.link_count) == round(float(c.link_count))  # snapped while tracing
        np.testing.assert_allclose(float(a.total), res.metrics["area"][i], rtol=1e-5)
    # The power budget binds at the fast end: the fastest front design is within 2% of it.
    fastest = res.front[0]
    assert res.margins["power"][fastest] < 20.0, res.margins["power"][fastest]
    # Peak falls with area along the front (sorted by -peak).
    f = res.front_metrics
    assert np.all(np.diff(f["peak_flops"]) <= 0) and np.all(np.diff(f["area"]) <= 0)


@pytest.mark.parametrize("broken", ["power", "memory_margin"])
def test_trace_broken_budget_is_reported_infeasible(chip_space, broken):
    budgets = {**HW_LOOSE, broken: HW_IMPOSSIBLE[broken]}
    res = dse.optimize(_chip_metrics, chip_space,
                       objectives={"peak_flops": "max", "area": "min"}, budgets=budgets,
                       log_objectives=True, max_steps=20, **TRACE)
    assert res.status == "infeasible" and res.front.size == 0
    assert broken in res.message and np.all(res.margins[broken] < 0.0)
    assert np.sum(res.source == "trace") > 1  # the trace ran and its points were checked


def test_trace_deterministic_and_bad_arguments(budget_space):
    a = dse.optimize(_budget_problem, budget_space, objectives=["time", "area"],
                     budgets=LOOSE, seed=3, **TRACE)
    b = dse.optimize(_budget_problem, budget_space, objectives=["time", "area"],
                     budgets=LOOSE, seed=3, **TRACE)
    np.testing.assert_array_equal(a.x, b.x)
    with pytest.raises(ValueError, match="exactly two objectives"):
        dse.optimize(_budget_problem, budget_space, objectives=["time"], **TRACE)
    with pytest.raises(ValueError, match="method"):
        dse.optimize(_budget_problem, budget_space, objectives=["time", "area"],
                     method="newton", progress=False)
