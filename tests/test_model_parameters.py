"""Calibrated parameters reach every workload model: the operator `Efficiency` and the scale-up
link efficiency as arguments of training, plan search, inference and the collectives.

Checks: the shipped defaults passed explicitly give exactly the results of passing None; a lower
efficiency never makes anything faster; gradients with respect to the parameters are finite and
match central differences in float64."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_identical, central_difference, random_plans

from dse.hardware import SYSTEMS
from dse.models import (
    Efficiency,
    InferencePlan,
    TrainingPlan,
    Transformer,
    all_gather,
    all_reduce,
    all_to_all,
    best_plan,
    decode,
    evaluate_plans,
    layer_time,
    prefill,
    reduce_scatter,
    send_recv,
    serve,
    train_step,
)
from dse.models._collectives import SCALEUP_LINK_EFFICIENCY
from dse.models._fit_training import predict, training_cases
from dse.models._operators import default_efficiency

DGX = SYSTEMS["DGX-A100"].with_num_chips(64)
TPU = SYSTEMS["TPUv4-pod"].with_num_chips(64)
EFF_FIELDS = ("matrix_max", "matrix_overhead_s", "memory_max", "memory_overhead_s")
COLLECTIVES = (all_reduce, all_gather, reduce_scatter, all_to_all, send_recv)

SMALL = Transformer(layers=8.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=2816.0,
                    vocab=32000.0, seq_len=1024.0, gated_mlp=True, tied_embeddings=False)
MOE = Transformer(layers=4.0, hidden=1024.0, heads=16.0, kv_heads=16.0, ffn_hidden=2048.0,
                  vocab=32000.0, seq_len=512.0, experts=8.0, top_k=2.0)
MQA = Transformer(layers=4.0, hidden=2048.0, heads=16.0, kv_heads=1.0, ffn_hidden=8192.0,
                  vocab=32000.0, seq_len=2048.0, gated_mlp=True)



def inference_plans():
    """Every layout, fused and eager, int8 and bf16 weights."""
    return [InferencePlan(tp=8.0, batch=4.0, fused=False, sequence_parallel=False),
            InferencePlan(tp=8.0, pp=2.0, batch=16.0, weight_bytes=1.0),
            InferencePlan(tp=16.0, batch=32.0, layout="weight_stationary_2d"),
            InferencePlan(tp=8.0, batch=64.0, layout="weight_gathered")]


def scaled(**factors) -> Efficiency:
    """The default `Efficiency` with some fields multiplied."""
    base = default_efficiency()
    return dataclasses.replace(base, **{k: getattr(base, k) * v for k, v in factors.items()})


# ----- the shipped defaults passed explicitly are the defaults ------------------------------

DEFAULTS = dict(efficiency=default_efficiency(),
                link_efficiency=jnp.asarray(SCALEUP_LINK_EFFICIENCY))


@pytest.mark.parametrize("model", [SMALL, MOE], ids=["dense", "moe"])
@pytest.mark.parametrize("flash", [True, False])
def test_training_explicit_defaults_equal_none(model, flash):
    plans = random_plans(6, seed=1 if flash else 2, moe=model is MOE)
    for system in (DGX, TPU):
        none = evaluate_plans(model, plans, system, flash_attention=flash)
        given = evaluate_plans(model, plans, system, flash_attention=flash, **DEFAULTS)
        assert_trees_identical(none, given)
        plan = jax.tree.map(lambda x: x[0], plans)
        assert_trees_identical(train_step(model, plan, system, flash_attention=flash),
                         train_step(model, plan, system, flash_attention=flash, **DEFAULTS))
        assert_trees_identical(layer_time(model, plan, system, flash_attention=flash),
                         layer_time(model, plan, system, flash_attention=flash, **DEFAULTS))


def test_best_plan_and_fit_cases_explicit_defaults_equal_none():
    kw = dict(recompute=(1,), zero_stages=(0, 1))
    assert_trees_identical(best_plan(SMALL, DGX, 256, **kw), best_plan(SMALL, DGX, 256, **kw,
                                                                  **DEFAULTS))
    for case in training_cases()[::9]:
        v0, p0, _ = predict(case)
        v1, p1, _ = predict(case, efficiency=DEFAULTS["efficiency"],
                            link_efficiency=SCALEUP_LINK_EFFICIENCY)
        assert v0 == v1, case.run_id
        assert_trees_identical(p0, p1)


@pytest.mark.parametrize("plan", inference_plans(), ids=lambda p: f"{p.layout}-{p.fused}")
def test_inference_explicit_defaults_equal_none(plan):
    for model, system in ((MQA, TPU), (SMALL, DGX)):
        assert_trees_identical(prefill(model, plan, system, 512.0),
                         prefill(model, plan, system, 512.0, **DEFAULTS))
        assert_trees_identical(decode(model, plan, system, 700.0),
                         decode(model, plan, system, 700.0, **DEFAULTS))
        assert_trees_identical(serve(model, plan, system, 8.0, 256.0, 64.0),
                         serve(model, plan, system, 8.0, 256.0, 64.0, **DEFAULTS))


@pytest.mark.parametrize("collective", COLLECTIVES, ids=lambda f: f.__name__)
def test_collectives_explicit_default_equals_none(collective):
    n = jnp.asarray([1e3, 1e6, 4e8])
    for system in (DGX, TPU, SYSTEMS["DGX-A100"].with_num_chips(8)):
        for group, stride in ((1.0, 1.0), (4.0, 1.0), (16.0, 2.0), (64.0, 1.0)):
            assert_trees_identical(collective(system, n, group, stride=stride),
                             collective(system, n, group, stride=stride,
                                        link_efficiency=SCALEUP_LINK_EFFICIENCY))


# ----- lower efficiency is never faster -------------------------------------------------------

@pytest.mark.parametrize("change", [dict(matrix_max=0.7), dict(memory_max=0.6),
                                    dict(matrix_overhead_s=3.0), dict(memory_overhead_s=3.0)],
                         ids=lambda c: next(iter(c)))
def test_lower_efficiency_never_makes_a_step_faster(change):
    worse = scaled(**change)
    for model in (SMALL, MOE):
        plans = random_plans(24, seed=3, moe=model is MOE)
        for flash in (True, False):
            base = evaluate_plans(model, plans, DGX, flash_attention=flash).step_time
            slow = evaluate_plans(model, plans, DGX, flash_attention=flash,
                                  efficiency=worse).step_time
            assert np.all(np.asarray(slow) >= np.asarray(base) * (1 - 1e-6))
    if "matrix_max" in change:
        # Large GEMMs are compute bound: the step does get slower, not just no faster.
        assert np.all(np.asarray(slow) > np.asarray(base))
    for plan in inference_plans():
        for phase, arg in ((prefill, 512.0), (decode, 2048.0)):
            slow_t = float(phase(MQA, plan, TPU, arg, efficiency=worse).time)
            assert slow_t >= float(phase(MQA, plan, TPU, arg).time) * (1 - 1e-6)
    kw = dict(recompute=(1,), zero_stages=(1,), smooth=False)
    assert (float(best_plan(SMALL, DGX, 256, efficiency=worse, **kw)[1].step_time)
            >= float(best_plan(SMALL, DGX, 256, **kw)[1].step_time) * (1 - 1e-6))


def test_lower_link_efficiency_never_makes_anything_faster():
    low = 0.5 * SCALEUP_LINK_EFFICIENCY
    n = jnp.asarray([1e3, 1e6, 4e8])
    for collective in COLLECTIVES:
        for system in (DGX, TPU):
            t0 = collective(system, n, 16.0).time
            t1 = collective(system, n, 16.0, link_efficiency=low).time
            assert np.all(np.asarray(t1) >= np.asarray(t0))
    plans = random_plans(24, seed=4, moe=True)
    base = evaluate_plans(MOE, plans, DGX).step_time
    slow = evaluate_plans(MOE, plans, DGX, link_efficiency=low).step_time
    assert np.all(np.asarray(slow) >= np.asarray(base) * (1 - 1e-6))
    # Plans with tensor parallelism pay for it.
    tp = np.asarray(plans.tp) > 1
    assert np.all(np.asarray(slow)[tp] > np.asarray(base)[tp])
    for plan in inference_plans():
        assert (float(prefill(MQA, plan, TPU, 512.0, link_efficiency=low).time)
                >= float(prefill(MQA, plan, TPU, 512.0).time))


# ----- gradients with respect to the parameters -----------------------------------------------

def _params64():
    eff = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), default_efficiency())
    return dict(efficiency=eff, link_efficiency=jnp.asarray(SCALEUP_LINK_EFFICIENCY,
                                                            jnp.float64),
                kernel_fraction=jnp.asarray(0.853, jnp.float64))


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def _training_time(params, plan, smooth, flash):
    r = train_step(MOE, plan, DGX, smooth=smooth, flash_attention=flash, **params)
    return r.step_time


def _inference_time(params, plan, smooth):
    kw = dict(smooth=smooth, efficiency=params["efficiency"],
              link_efficiency=params["link_efficiency"])
    return (prefill(MQA, plan, TPU, 512.0, **kw).time
            + 64.0 * decode(MQA, plan, TPU, 1024.0, **kw).time)


def _check_gradient(fn, params):
    grads = jax.grad(fn)(params)
    value = float(fn(params))
    leaves, treedef = jax.tree.flatten(params)
    glist = jax.tree.leaves(grads)
    assert len(glist) == len(leaves)
    for i, (x0, g) in enumerate(zip(leaves, glist, strict=True)):
        ad = float(g)
        assert np.isfinite(ad), i

        def at(x, i=i):
            new = list(leaves)
            new[i] = jnp.asarray(x, jnp.float64)
            return float(fn(jax.tree.unflatten(treedef, new)))

        fd = central_difference(at, float(x0))
        np.testing.assert_allclose(ad, fd, rtol=2e-3, atol=1e-9 * value / float(x0),
                                   err_msg=str(jax.tree_util.tree_flatten_with_path(params)
                                               [0][i][0]))


# Plans with tensor, pipeline, data and expert parallelism (so that every collective and the
# link efficiency matter), each recomputation mode and ZeRO stage.
GRAD_PLANS = [
    TrainingPlan(tp=4.0, pp=2.0, dp=8.0, ep=2.0, microbatch_size=2.0, global_batch=128.0,
                 interleave=2.0, sequence_parallel=1.0, recompute=1.0, zero_stage=1.0),
    TrainingPlan(tp=2.0, pp=4.0, dp=8.0, ep=4.0, microbatch_size=1.0, global_batch=64.0,
                 recompute=2.0, zero_stage=3.0, dp_overlap=0.0),
    TrainingPlan(tp=8.0, pp=1.0, dp=8.0, ep=8.0, microbatch_size=4.0, global_batch=256.0,
                 recompute=0.0, zero_stage=2.0),
]


@pytest.mark.parametrize("index,smooth,flash", [(0, False, True), (1, True, False),
                                                (2, True, True)])
def test_training_gradients_in_the_parameters_match_finite_differences(index, smooth, flash):
    with jax.enable_x64(True):
        plan = _f64(GRAD_PLANS[index])
        params = _params64()
        fn = jax.jit(lambda p: _training_time(p, plan, smooth, flash))
        _check_gradient(fn, params)
        g = jax.grad(fn)(params)
        # Slower matrix units and links cost time: the sensitivities have the right sign.
        assert float(g["efficiency"].matrix_max) < 0
        assert float(g["link_efficiency"]) < 0


@pytest.mark.parametrize("index", range(4))
def test_inference_gradients_in_the_parameters_match_finite_differences(index):
    plan = inference_plans()[index]
    with jax.enable_x64(True):
        plan = _f64(plan)
        params = _params64()
        params.pop("kernel_fraction")
        fn = jax.jit(lambda p: _inference_time(p, plan, index % 2 == 1))
        _check_gradient(fn, params)
