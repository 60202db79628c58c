"""Co-design: the pruned plan set picks the exhaustive best plan; best_of_plans == select_plan."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

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


@pytest.fixture(scope="module")
def candidates():
    return dse.plan_candidates(MODEL, SPACE, GLOBAL_BATCH, samples=256, margin=0.01)


def test_plan_memory_is_train_steps_memory():
    plans = enumerate_plans(MODEL, 16, GLOBAL_BATCH)
    reports = jax.jit(lambda p: evaluate_plans(MODEL, p, BASE))(plans)
    np.testing.assert_allclose(plan_memory(MODEL, plans), np.asarray(reports.memory_per_chip),
                               rtol=1e-6)


def test_best_of_plans_equals_select_plan():
    plans = enumerate_plans(MODEL, 16, GLOBAL_BATCH)
    x = jnp.asarray(SPACE.sample(16, method="random", seed=3))

    def both(xi):
        system = SPACE.build(xi)
        a_plan, a = best_of_plans(MODEL, plans, system)
        b_plan, b = select_plan(plans, evaluate_plans(MODEL, plans, system))
        return a_plan.tp, a_plan.zero_stage, a.step_time, a.fits, b_plan.tp, b_plan.zero_stage, \
            b.step_time, b.fits

    a_tp, a_z, a_t, a_fit, b_tp, b_z, b_t, b_fit = jax.jit(jax.vmap(both))(x)
    np.testing.assert_array_equal(a_tp, b_tp)
    np.testing.assert_array_equal(a_z, b_z)
    np.testing.assert_allclose(a_t, b_t, rtol=1e-6)  # same plan, fused differently
    np.testing.assert_array_equal(a_fit, b_fit)
    assert 0 < int(np.sum(a_fit)) < 16 or bool(np.all(a_fit))


def test_no_feasible_plan_gives_the_closest_miss_flagged():
    plans = enumerate_plans(MODEL, 16, GLOBAL_BATCH)
    tiny = eqx.tree_at(lambda s: s.chip.hbm_bytes, BASE, jnp.asarray(1e6))  # 1 MB: nothing fits
    plan, report = best_of_plans(MODEL, plans, tiny)
    # The reference compiled whole (op by op it compiled ~180 small programs: 16 s here).
    ref_plan, ref = jax.jit(lambda s: select_plan(plans, evaluate_plans(MODEL, plans, s)))(tiny)
    assert not bool(report.fits) and not bool(ref.fits)
    assert float(report.step_time) == pytest.approx(float(ref.step_time), rel=1e-6)
    assert float(plan.tp) == float(ref_plan.tp) and float(plan.pp) == float(ref_plan.pp)


def test_memory_pruning_is_exact(candidates):
    plans = enumerate_plans(MODEL, 16, GLOBAL_BATCH)
    memory = plan_memory(MODEL, plans)
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
