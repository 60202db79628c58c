"""Plan search: enumeration validity, the best plan is the feasible minimum, soft-min gradients."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

from dse.hardware import SYSTEMS
from dse.models import (
    DEFAULT,
    TRANSFORMERS,
    Reason,
    Transformer,
    best_plan,
    enumerate_plans,
    evaluate_plans,
    plan_step_time,
    select_plan,
    train_step,
)
from dse.models._plan_search import _evaluate_broadcast

DGX = SYSTEMS["DGX-A100"]


def small_model(**changes):
    base = dict(layers=12.0, hidden=1536.0, heads=12.0, kv_heads=12.0, ffn_hidden=6144.0,
                vocab=32000.0, seq_len=2048.0)
    return Transformer(**(base | changes))


def _divs(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def test_enumeration_is_every_valid_plan():
    chips, gb, layers, heads = 16, 32, 12, 12
    plans = enumerate_plans(small_model(), chips, gb)
    got = set(zip(*(np.asarray(getattr(plans, f)).astype(int).tolist() for f in (
        "tp", "pp", "dp", "ep", "microbatch_size", "interleave", "sequence_parallel",
        "recompute", "zero_stage")), strict=False))
    want = set()
    for tp, pp in itertools.product(_divs(heads), _divs(layers)):
        if chips % (tp * pp) or gb % (chips // (tp * pp)):
            continue
        dp = chips // (tp * pp)
        for b in _divs(gb // dp):
            m = gb // dp // b
            for v in _divs(layers // pp):
                if v > 1 and (pp == 1 or m % pp):
                    continue
                for sp, rc, z in itertools.product((0, 1), (0, 1, 2), (0, 1, 2, 3)):
                    if sp and tp == 1:
                        continue
                    want.add((tp, pp, dp, 1, b, v, sp, rc, z))
    assert got == want
    assert len(got) == plans.tp.shape[0]  # no duplicates


def test_enumeration_covers_expert_parallel():
    moe = small_model(experts=8.0, top_k=2.0)
    plans = enumerate_plans(moe, 16, 32)
    ep, dp = np.asarray(plans.ep), np.asarray(plans.dp)
    assert set(ep.astype(int)) == {1, 2, 4, 8}
    assert np.all(dp % ep == 0)


@pytest.mark.parametrize("system_name,smooth", [("GB200-NVL72", False), ("TPUv5p-pod", True)])
def test_traced_plans_broadcast_through_train_step_as_vmap_would(system_name, smooth):
    # best_plan broadcasts the batch through train_step instead of vmapping it: every field
    # of every plan must equal the vmapped step's (MoE with EP, context parallelism, FP8,
    # offloading, ZeRO stages, recomputation, interleaving; a GPU and a systolic-array chip,
    # hard and smooth rooflines).
    moe = small_model(experts=8.0, top_k=2.0, seq_len=8192.0)
    base = SYSTEMS[system_name].with_num_chips(16)
    system = base.replace(chip=base.chip.replace(hbm_bytes=12e9))  # some plans do not fit
    plans = enumerate_plans(moe, 16, 32, context_parallel=(1, 2), precision="fp8_current",
                            activation_offload=(0.0, 0.5))
    pick = np.linspace(0, plans.tp.shape[0] - 1, 128).astype(int)
    plans = jax.tree.map(lambda x: x[pick], plans)
    for field in ("ep", "cp", "activation_offload", "zero_stage", "recompute", "interleave"):
        assert len(set(np.asarray(getattr(plans, field)).tolist())) > 1, field
    broadcast = jax.jit(lambda s: _evaluate_broadcast(moe, plans, s, DEFAULT, smooth, True))(
        system)
    vmapped = jax.jit(lambda s: jax.vmap(lambda p: train_step(moe, p, s, smooth=smooth))(
        plans))(system)
    assert not bool(np.all(broadcast.fits)) and bool(np.any(broadcast.fits))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(vmapped),
                            jax.tree.leaves(broadcast), strict=True):
        assert np.shape(b) == np.shape(a) == (128,), jax.tree_util.keystr(path)
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6,
                                   err_msg=jax.tree_util.keystr(path))


def test_best_plan_is_the_fastest_feasible():
    model = small_model()
    base = DGX.with_num_chips(16)
    # 4 GB of HBM: the unsharded plans do not fit, so the mask matters.
    system = base.replace(chip=base.chip.replace(hbm_bytes=4e9))
    plans = enumerate_plans(model, 16, 32)
    evaluate = jax.jit(lambda p: evaluate_plans(model, p, system))
    reports = evaluate(plans)
    plan, report = jax.jit(select_plan)(plans, reports)
    t = np.asarray(reports.step_time)
    fits = np.asarray(reports.fits)
    assert fits.any() and not fits.all()
    np.testing.assert_allclose(float(report.step_time), t[fits].min(), rtol=1e-6)
    assert bool(report.fits)
    # The chosen plan re-evaluated alone gives the same report: a batch of copies of it only,
    # the shape `evaluate` was compiled for (a batch of one compiled it again).
    n = t.shape[0]
    again = evaluate(jax.tree.map(lambda x, y: jnp.broadcast_to(x, (n,)).astype(y.dtype),
                                  plan, plans))
    np.testing.assert_allclose(np.asarray(again.step_time), float(report.step_time), rtol=1e-5)


def test_no_feasible_plan_is_reported():
    plan, report = best_plan(TRANSFORMERS["megatron-1t"], DGX.with_num_chips(8), 8,
                             recompute=(2,), zero_stages=(0,))
    assert not bool(report.fits)
    assert int(report.reason) == Reason.MEMORY


def test_soft_min_bounds_and_gradient():
    model = small_model()
    knobs = dict(recompute=(1,), zero_stages=(0, 1))
    with jax.enable_x64(True):
        system = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), DGX.with_num_chips(16))
        # One program for the soft minimum, its gradient, the differences' values and (as
        # aux) the hard minimum, which a program of its own compiled for seconds.
        both = jax.jit(jax.value_and_grad(
            lambda s: (plan_step_time(model, s, 32, temperature=0.05, **knobs),
                       best_plan(model, s, 32, **knobs)[1].step_time), has_aux=True))
        (soft, hard), g = both(system)
        soft, hard = float(soft), float(hard)
        n = enumerate_plans(model, 16, 32, **knobs).tp.shape[0]
        # Soft minimum: never above the minimum, at most a factor n^temperature below it.
        assert hard * n ** -0.05 * (1 - 1e-9) <= soft <= hard * (1 + 1e-9)
        for leaf in jax.tree.leaves(g):
            assert np.all(np.isfinite(np.asarray(leaf)))
        # More of any resource never slows the soft minimum either.
        for field in ("hbm_bandwidth", "mac_units", "link_bandwidth", "sram_bytes"):
            assert float(getattr(g.chip, field)) <= 0.0, field
        assert float(g.scaleout_bandwidth) <= 0.0
        for field in ("hbm_bandwidth", "mac_units"):
            ad = float(getattr(g.chip, field))
            x0 = float(getattr(system.chip, field))
            fd = central_difference(
                lambda x, fl=field: float(both(system.replace(
                    chip=system.chip.replace(**{fl: x})))[0][0]), x0, rel_step=1e-5)
            np.testing.assert_allclose(ad, fd, rtol=1e-2, err_msg=field)


def test_best_plan_vmaps_over_hardware():
    model = small_model()
    base = DGX.with_num_chips(16)
    c = base.chip
    designs = [base.replace(chip=c.replace(hbm_bandwidth=c.hbm_bandwidth * k,
                                           mac_units=c.mac_units * k)) for k in (1.0, 2.0)]
    stacked = jax.tree.map(lambda *x: jnp.stack(x), *designs)
    times = jax.jit(jax.vmap(lambda s: best_plan(model, s, 32)[1].step_time))(stacked)
    for i, d in enumerate(designs):
        np.testing.assert_allclose(float(times[i]), float(best_plan(model, d, 32)[1].step_time),
                                   rtol=1e-5)
    assert float(times[1]) < float(times[0])


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="no valid plan"):
        enumerate_plans(small_model(), 7, 5)
    traced_model_error = None
    try:
        jax.jit(lambda m: best_plan(m, DGX, 8)[1].step_time)(small_model())
    except ValueError as e:
        traced_model_error = str(e)
    assert traced_model_error is not None and "concrete Transformer.layers" in traced_model_error


