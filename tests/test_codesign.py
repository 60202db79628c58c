"""Co-design: the pruned plan set picks the exhaustive best plan; best_of_plans == select_plan."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_identical

import dse
from dse.hardware import SYSTEMS
from dse.models import (
    Transformer,
    best_of_plans,
    enumerate_plans,
    evaluate_plans,
    plan_memory,
    select_plan,
)

MODEL = Transformer(layers=12.0, hidden=1536.0, heads=12.0, kv_heads=12.0, ffn_hidden=6144.0,
                    vocab=32000.0, seq_len=2048.0)
BASE = SYSTEMS["DGX-A100"].with_num_chips(16)
GLOBAL_BATCH = 32
# Capacities from 1 GB (few plans fit) to 8 GB: memory decides the best plan in part of the box.
SPACE = dse.Space(BASE, [
    dse.Param("hbm_bytes", "chip.hbm_bytes", 1e9, 8e9, "log"),
    dse.Param("hbm_bandwidth", "chip.hbm_bandwidth", 0.5e12, 8e12, "log"),
    dse.Param("mac_units", "chip.mac_units", 16384, 524288, "log"),
    dse.Param("link_bandwidth", "chip.link_bandwidth", 10e9, 100e9, "log"),
])


# Every plan of 16 chips, and their memory, as several tests read them.
PLANS = enumerate_plans(MODEL, 16, GLOBAL_BATCH)
_plan_memory = functools.cache(lambda: plan_memory(MODEL, PLANS))
RANDOM = 16  # random designs compared; then the 1 MB design and the base design
TINY_ROW = RANDOM


@pytest.fixture(scope="module")
def candidates():
    return dse.plan_candidates(MODEL, SPACE, GLOBAL_BATCH, samples=256, margin=0.01)


@pytest.fixture(scope="module")
def both_ways():
    """`best_of_plans` and `select_plan(evaluate_plans)` at the random designs, at a 1 MB
    design (nothing fits) and at the base design, in one compiled program: evaluating the
    plans at each design compiles and traces slower than the rest of these tests together."""
    c = BASE.chip
    extra = [[1e6, c.hbm_bandwidth, c.mac_units, c.link_bandwidth],  # 1 MB: nothing fits
             [c.hbm_bytes, c.hbm_bandwidth, c.mac_units, c.link_bandwidth]]
    x = jnp.concatenate([jnp.asarray(SPACE.sample(RANDOM, method="random", seed=3)),
                         jnp.asarray(extra, jnp.float32)])

    def both(xi):
        system = SPACE.build(xi)
        a_plan, a = best_of_plans(MODEL, PLANS, system)
        reports = evaluate_plans(MODEL, PLANS, system)
        b_plan, b = select_plan(PLANS, reports)
        return dict(a_tp=a_plan.tp, a_z=a_plan.zero_stage, a_t=a.step_time, a_fit=a.fits,
                    b_tp=b_plan.tp, b_pp=b_plan.pp, b_z=b_plan.zero_stage, b_t=b.step_time,
                    b_fit=b.fits, memory=reports.memory_per_chip)

    return {k: np.asarray(v) for k, v in jax.jit(jax.vmap(both))(x).items()}


def test_design_rows_are_the_designs_they_stand_for():
    # The extra rows of `both_ways` rebuild the 1 MB design and the base design exactly.
    c = BASE.chip
    tiny = eqx.tree_at(lambda s: s.chip.hbm_bytes, BASE, jnp.asarray(1e6))
    for system in (tiny, BASE):
        x = jnp.asarray([system.chip.hbm_bytes, c.hbm_bandwidth, c.mac_units,
                         c.link_bandwidth], jnp.float32)
        assert_trees_identical(SPACE.build(x), system)


def test_plan_memory_is_train_steps_memory(both_ways):
    np.testing.assert_allclose(_plan_memory(), both_ways["memory"][TINY_ROW + 1], rtol=1e-6)


def test_best_of_plans_equals_select_plan(both_ways):
    r = both_ways
    np.testing.assert_array_equal(r["a_tp"], r["b_tp"])
    np.testing.assert_array_equal(r["a_z"], r["b_z"])
    np.testing.assert_allclose(r["a_t"], r["b_t"], rtol=1e-6)  # same plan, fused differently
    np.testing.assert_array_equal(r["a_fit"], r["b_fit"])
    a_fit = r["a_fit"][:RANDOM]
    assert 0 < int(np.sum(a_fit)) < RANDOM or bool(np.all(a_fit))


def test_no_feasible_plan_gives_the_closest_miss_flagged(both_ways):
    tiny = eqx.tree_at(lambda s: s.chip.hbm_bytes, BASE, jnp.asarray(1e6))  # 1 MB: nothing fits
    plan, report = best_of_plans(MODEL, PLANS, tiny)
    # The reference: select_plan over every plan at the same design, from the shared program.
    ref = {k: v[TINY_ROW] for k, v in both_ways.items()}
    assert not bool(report.fits) and not bool(ref["b_fit"])
    assert float(report.step_time) == pytest.approx(float(ref["b_t"]), rel=1e-6)
    assert float(plan.tp) == float(ref["b_tp"]) and float(plan.pp) == float(ref["b_pp"])


def test_memory_pruning_is_exact(candidates):
    memory = _plan_memory()
    low, high = candidates.capacity_bytes
    assert (low, high) == pytest.approx((1e9, 8e9))
    assert (memory <= low).any()  # so every design has a feasible plan
    assert candidates.n_enumerated == len(memory)
    assert candidates.n_memory_feasible == int((memory <= high).sum()) < len(memory)
    assert (plan_memory(MODEL, candidates.plans) <= high).all()
    assert candidates.n_kept < candidates.n_memory_feasible


def test_pruned_choice_equals_exhaustive_on_random_designs(candidates):
    x = SPACE.sample(128, method="random", seed=7)
    check = dse.plan_misses(MODEL, SPACE, GLOBAL_BATCH, candidates, x)
    assert check["misses"] == 0, np.flatnonzero(check["differs"])
    assert check["worst_gap"] <= 1e-6  # float32 rounding of two fusions of the same plan


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="samples"):
        dse.plan_candidates(MODEL, SPACE, GLOBAL_BATCH, samples=0)
    with pytest.raises(ValueError, match="margin"):
        dse.plan_candidates(MODEL, SPACE, GLOBAL_BATCH, margin=-0.1)
