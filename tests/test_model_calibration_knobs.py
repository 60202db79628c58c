"""The collectives' `latency_scale` reaches inference and plan search; `dp_overlap_fraction`
reaches plan search (issue 7: every named efficiency parameter is calibratable).

Checks: the defaults (None, or the neutral value 1 passed explicitly) give bit-identical results;
`latency_scale=s` is exactly the system's scale-up latency multiplied by s (what
benchmarks/_inference_rows.py used to do by hand); jit + vmap over several values agree with a
Python loop; gradients are finite and match central differences in float64, and for a
switch-connected plan equal the count of latency steps times the stated latency; more latency
is never faster and more overlap never slower; out-of-range values raise a ValueError that names
the function called and the field.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

from dse.hardware import SYSTEMS
from dse.models import (
    InferencePlan,
    Transformer,
    best_plan,
    decode,
    enumerate_plans,
    evaluate_plans,
    plan_step_time,
    prefill,
    serve,
)

DGX = SYSTEMS["DGX-A100"].with_num_chips(16)  # NVSwitch: log2 p latency steps per collective
TPU = SYSTEMS["TPUv4-pod"].with_num_chips(16)  # 3D torus
SMALL = Transformer(layers=4.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=2816.0,
                    vocab=32000.0, seq_len=512.0, gated_mlp=True)
MQA = Transformer(layers=2.0, hidden=1024.0, heads=8.0, kv_heads=1.0, ffn_hidden=4096.0,
                  vocab=32000.0, seq_len=512.0, gated_mlp=True)

# Every collective the inference model issues: tensor-parallel all-reduces and a pipeline send
# (case 0), the all-to-alls of a batch-sharded multi-query KV cache (1), the 2D layout's
# gathers, reduce-scatters and strided all-reduces on a torus (2), the weight all-gather (3).
CASES = (
    (SMALL, InferencePlan(tp=4.0, pp=2.0, batch=4.0), DGX),
    (MQA, InferencePlan(tp=8.0, batch=16.0, fused=False, sequence_parallel=False), DGX),
    (SMALL, InferencePlan(tp=16.0, batch=8.0, layout="weight_stationary_2d"), TPU),
    (SMALL, InferencePlan(tp=8.0, batch=32.0, layout="weight_gathered"), TPU),
)
INPUT_LEN, CONTEXT_LEN, OUTPUT_LEN = 256.0, 384.0, 64.0
# Few plans (no recomputation, ZeRO 0, micro-batch 1): 28 plans on 16 chips, most with data
# parallelism and its overlap on (enumerate_plans' default), so both knobs matter.
GLOBAL_BATCH = 32
PLAN_KW = dict(recompute=(0,), zero_stages=(0,), max_microbatch=1)


@functools.cache
def _default_plans_and_reports():
    """The enumerated plans and their eager `evaluate_plans` reports at the defaults."""
    plans = enumerate_plans(SMALL, 16, GLOBAL_BATCH, **PLAN_KW)
    return plans, evaluate_plans(SMALL, plans, DGX)


def _leaves_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _inference(kind, model, plan, system, **kw):
    if kind == "prefill":
        return prefill(model, plan, system, INPUT_LEN, **kw)
    if kind == "decode":
        return decode(model, plan, system, CONTEXT_LEN, **kw)
    return serve(model, plan, system, plan.batch, INPUT_LEN, OUTPUT_LEN, **kw)


def _seconds(kind, s, model, plan, system):
    """The time each entry point reports, s, as a function of latency_scale `s`."""
    if kind == "best_plan":
        return plan_step_time(model, system, GLOBAL_BATCH, latency_scale=s, **PLAN_KW)
    r = _inference(kind, model, plan, system, latency_scale=s)
    return r.total_latency if kind == "serve" else r.time


# ----- defaults --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(len(CASES)))
def test_inference_defaults_are_bit_identical(case):
    model, plan, system = CASES[case]
    for kind in ("prefill", "decode", "serve"):
        plain = _inference(kind, model, plan, system)
        for s in (None, jnp.asarray(1.0)):
            _leaves_equal(_inference(kind, model, plan, system, latency_scale=s), plain)


def test_plan_search_defaults_are_bit_identical():
    # Every field of every plan's report (best_plan only selects among these, whatever the knobs).
    plans, plain = _default_plans_and_reports()
    ones = evaluate_plans(SMALL, plans, DGX, latency_scale=jnp.asarray(1.0),
                          dp_overlap_fraction=jnp.asarray(1.0))
    _leaves_equal(ones, plain)


# ----- the factor is the system's scale-up latency times s --------------------------------------

@pytest.mark.parametrize("case", range(len(CASES)))
def test_latency_scale_equals_scaling_the_systems_latency(case):
    model, plan, system = CASES[case]
    for kind in ("prefill", "decode"):
        times = []
        for s in (0.0, 1.0, 3.7):
            scaled = _inference(kind, model, plan, system, latency_scale=s)
            ref = _inference(kind, model, plan,
                             system.replace(scaleup_latency=system.scaleup_latency * s))
            _leaves_equal(scaled, ref)
            times.append(float(scaled.time))
        # Every case has collectives in the scale-up tier: more latency, strictly more time.
        assert times[0] < times[1] < times[2], (kind, times)


# ----- jit, vmap and gradients ------------------------------------------------------------------

SCALES = (0.0, 1.0, 2.0, 8.0)


@pytest.mark.parametrize("kind", ["prefill", "decode", "serve", "best_plan"])
def test_jit_vmap_and_gradient_in_latency_scale(kind):
    with jax.enable_x64(True):
        model, plan, system = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), CASES[0])
        f = lambda s: _seconds(kind, s, model, plan, system)  # noqa: E731
        value_and_grad = jax.jit(jax.vmap(jax.value_and_grad(f)))
        values, grads = (np.asarray(x) for x in value_and_grad(jnp.asarray(SCALES, jnp.float64)))
        assert values.dtype == np.float64 and grads.dtype == np.float64
        # vmap under jit agrees with a Python loop of single calls (eager; jitted for the plan
        # search, whose eager evaluation is slow).
        single = jax.jit(f) if kind == "best_plan" else f
        loop = [float(single(jnp.asarray(x, jnp.float64))) for x in SCALES[::3]]
        np.testing.assert_allclose(values[::3], loop, rtol=1e-9)
        # Finite, positive gradients (more latency is slower) and increasing times.
        assert np.all(np.isfinite(grads)) and np.all(grads > 0), grads
        assert np.all(np.diff(values) > 0), values
        # The gradient matches a central difference, taken with the same compiled function
        # (same argument shape: no recompilation).
        s0 = 2.0

        def at(x):
            return float(value_and_grad(jnp.full(len(SCALES), x, jnp.float64))[0][0])

        np.testing.assert_allclose(grads[SCALES.index(s0)], central_difference(at, s0),
                                   rtol=1e-4)
        if kind == "decode":
            # Case 0 on NVSwitch, tp 4 in one domain: two all-reduces per layer of 2 log2(4)
            # latency steps each over the 4 layers, plus one pipeline send of one step. Time is
            # affine in the factor, so d time / d latency_scale = 33 x scaleup_latency.
            np.testing.assert_allclose(grads, 33.0 * float(system.scaleup_latency), rtol=1e-9)


def test_decode_latency_gradient_is_finite_in_float32():
    model, plan, system = CASES[1]
    g = jax.jit(jax.grad(lambda s: _seconds("decode", s, model, plan, system)))(
        jnp.asarray(1.5, jnp.float32))
    assert g.dtype == jnp.float32 and np.isfinite(float(g)) and float(g) > 0


# ----- monotonicity of the best plan in both knobs (float32) ------------------------------------

def test_best_plan_slower_with_latency_and_faster_with_overlap():
    @jax.jit
    @jax.vmap
    @functools.partial(jax.value_and_grad, argnums=(0, 1))
    def step_time(s, fraction):
        return best_plan(SMALL, DGX, GLOBAL_BATCH, latency_scale=s, dp_overlap_fraction=fraction,
                         **PLAN_KW)[1].step_time

    scales = np.array([0.0, 1.0, 4.0, 16.0], np.float32)
    fractions = np.array([0.0, 0.25, 0.5, 1.0], np.float32)
    s_grid, f_grid = (x.ravel() for x in np.meshgrid(scales, fractions, indexing="ij"))
    t, dt_ds, dt_df = (np.asarray(x).reshape(4, 4) for x in jax.tree.leaves(
        step_time(jnp.asarray(s_grid), jnp.asarray(f_grid))))
    # The hard minimum over plans of times non-decreasing in the latency and non-increasing in
    # the overlap fraction is so too; strictly here, as every plan reduces over 16 chips (the
    # fastest with its data-parallel reduction partly exposed).
    assert np.all(np.diff(t, axis=0) > 0), t
    assert np.all(np.diff(t, axis=1) < 0), t
    assert t.dtype == np.float32 and np.all(np.isfinite(dt_ds)) and np.all(np.isfinite(dt_df))
    assert np.all(dt_ds > 0) and np.all(dt_df < 0)
    # At the defaults it is the fastest feasible plan of the eager reports.
    _, reports = _default_plans_and_reports()
    fastest = float(np.min(np.where(np.asarray(reports.fits), np.asarray(reports.step_time),
                                    np.inf)))
    np.testing.assert_allclose(t[1, 3], fastest, rtol=1e-6)


# ----- bad values ---------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_bad_latency_scale_names_the_entry_point(bad):
    model, plan, system = CASES[0]
    calls = {
        "prefill": lambda: prefill(model, plan, system, INPUT_LEN, latency_scale=bad),
        "decode": lambda: decode(model, plan, system, CONTEXT_LEN, latency_scale=bad),
        "serve": lambda: serve(model, plan, system, 4.0, INPUT_LEN, OUTPUT_LEN,
                               latency_scale=bad),
        "best_plan": lambda: best_plan(SMALL, DGX, GLOBAL_BATCH, latency_scale=bad, **PLAN_KW),
        "evaluate_plans": lambda: evaluate_plans(
            SMALL, enumerate_plans(SMALL, 16, GLOBAL_BATCH, **PLAN_KW), DGX,
            latency_scale=bad),
    }
    for owner, call in calls.items():
        with pytest.raises(ValueError, match=rf"{owner}\.latency_scale must be finite and in "
                                             r"\[0, inf\)"):
            call()
    # plan_step_time forwards to best_plan.
    with pytest.raises(ValueError, match=r"best_plan\.latency_scale"):
        plan_step_time(SMALL, DGX, GLOBAL_BATCH, latency_scale=bad, **PLAN_KW)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_dp_overlap_fraction_names_the_entry_point(bad):
    with pytest.raises(ValueError, match=r"best_plan\.dp_overlap_fraction must be finite and in "
                                         r"\[0, 1\]"):
        best_plan(SMALL, DGX, GLOBAL_BATCH, dp_overlap_fraction=bad, **PLAN_KW)
    with pytest.raises(ValueError, match=r"evaluate_plans\.dp_overlap_fraction"):
        evaluate_plans(SMALL, enumerate_plans(SMALL, 16, GLOBAL_BATCH, **PLAN_KW), DGX,
                       dp_overlap_fraction=bad)
