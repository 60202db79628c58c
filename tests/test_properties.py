"""Property tests (hypothesis) over the public entry points: no silent wrong answer.

Valid random inputs, over the whole valid range of every continuous field and on its far
corners (hypothesis draws unit coordinates, 0 and 1 among them), in float32 and float64, give
finite values and finite gradients, or a named infeasibility; invalid ones give a `ValueError`
that names the field, the value and the allowed range. Each test jits its function once and
feeds it batches, so the budgets stay small (`benchmarks/robustness.py` runs 100,000 designs).
"""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dse import models
from dse._study import make_objective
from dse.hardware import (
    CHIPS,
    FIELDS,
    NETWORKS,
    SPAN_FIELDS,
    SYSTEMS,
    Economics,
    Reason,
    Reliability,
    area,
    cost,
    power,
    span_systems,
)
from dse.hardware._technology import WAFER_AREA_MM2
from dse.models import Transformer

PROPERTY = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
BATCH = 16
# Unit coordinates of a batch of designs: hypothesis favours 0 and 1, the far corners.
UNIT = arrays(np.float64, (BATCH, len(SPAN_FIELDS)), elements=st.floats(0.0, 1.0))
KINDS = st.sampled_from([(True, True), (True, False), (False, True), (False, False)])

H100 = SYSTEMS["DGX-H100"]
GPT3 = models.TRANSFORMERS["gpt3-175b"]
GPT3_PLAN = models.TrainingPlan(tp=8, pp=8, dp=16, microbatch_size=1, global_batch=1536,
                                interleave=2, sequence_parallel=1, recompute=1, zero_stage=1)
LLAMA = models.TRANSFORMERS["llama3-70b"]
SERVE_PLAN = models.InferencePlan(tp=8, batch=32)


def _systems(u, kind, base=H100):
    with_hbm, with_links = kind
    return span_systems(base, u, with_hbm=with_hbm, with_links=with_links)


def _all_finite(tree) -> np.ndarray:
    """Per design (leading axis): every floating-point leaf of the tree finite (integer flags
    and their float0 tangents are not numbers to check)."""
    leaves = [np.asarray(x) for x in jax.tree.leaves(tree)]
    leaves = [x.reshape(len(x), -1) for x in leaves if np.issubdtype(x.dtype, np.floating)]
    return np.all(np.concatenate([np.isfinite(x) for x in leaves], axis=1), axis=1)


_COMPILED: dict = {}


def _compiled(name, make):
    """One jitted function per test and dtype, built once (hypothesis calls it many times)."""
    key = (name, jax.config.jax_enable_x64)
    if key not in _COMPILED:
        _COMPILED[key] = make()
    return _COMPILED[key]


def _values_and_tangent(fn):
    """jit(vmap) of `fn`'s values and its derivative along every field at once.

    The tangent moves every field (by its own value, or by 1 where it is 0), so a non-finite
    derivative of any output with respect to any field shows: sum_j J_ij v_j with every
    v_j != 0 is non-finite when one J_ij is (a non-finite term never cancels). One forward
    pass instead of a Jacobian keeps the compilation short.
    """

    def one(design):
        tangent = jax.tree.map(lambda x: jnp.where(x != 0, x, 1.0), design)
        return jax.jvp(fn, (design,), (tangent,))

    return jax.jit(jax.vmap(one))


# ------------------------------------------------------------------ valid inputs: hardware


@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@PROPERTY
@given(u=UNIT, kind=KINDS)
def test_area_power_cost_finite_with_finite_gradients_or_unmanufacturable(x64, u, kind):
    with jax.enable_x64(x64):
        systems = _systems(u, kind)

        def hardware(chip):
            return area(chip), power(chip), cost(chip)

        run = _compiled("hardware", lambda: _values_and_tangent(hardware))
        (a, p, c), tangent = run(systems.chip)
        assert _all_finite((a, p, c)).all() and _all_finite(tangent).all()
        assert np.all(np.asarray(a.total) > 0) and np.all(np.asarray(c.total) > 0)
        # A die larger than a wafer is never a cost without its reason.
        too_big = np.asarray(a.per_die) > WAFER_AREA_MM2
        flagged = (np.asarray(c.reason) & Reason.UNMANUFACTURABLE) != 0
        assert np.all(flagged[too_big])
        # The breakdowns sum to their totals, flagged or not.
        np.testing.assert_allclose(sum(a.blocks.values()), a.total, rtol=2e-6)
        np.testing.assert_allclose(sum(p.blocks.values()), p.total, rtol=2e-6)
        np.testing.assert_allclose(c.silicon + c.hbm + c.package, c.total, rtol=2e-6)


# ------------------------------------------------------------------ valid inputs: workloads


def _check_study(values, jac, kind_name):
    ok = _all_finite(values) & _all_finite(jac)
    assert ok.all(), f"{(~ok).sum()} designs with non-finite values or gradients"
    reason = np.asarray(values["reason"]).astype(int)
    feasible = reason == 0
    # A feasible answer is a real one; an infeasible one says why and by how much.
    times = ("step_time",) if kind_name == "training" else ("ttft", "tpot")
    for k in times + ("area", "cost", "energy_per_token"):
        assert np.all(np.asarray(values[k])[feasible] > 0), k
    short = np.asarray(values["memory_shortfall"])
    memory_flags = int(Reason.MEMORY | Reason.SRAM)
    np.testing.assert_array_equal(short > 0, (reason & memory_flags) != 0)
    assert np.all(np.asarray(values["memory_margin"])[feasible] >= 0)


# The objectives a study sweeps: (base system, objective). GPT-3 175B with the Megatron plan on
# 1024 chips; Llama 3 70B served at TP 8 on one node.
WORKLOADS = {
    "training": lambda: (H100.with_num_chips(1024),
                         make_objective("training", GPT3, GPT3_PLAN, 1536, smooth=True)),
    "inference": lambda: (H100, make_objective("inference", LLAMA, SERVE_PLAN, 1, 32.0, 2048.0,
                                               256.0, smooth=True)),
}


@pytest.mark.parametrize("workload", list(WORKLOADS))
@pytest.mark.parametrize("x64", [False, True], ids=["float32", "float64"])
@PROPERTY
@given(u=UNIT, kind=KINDS)
def test_study_objective_finite_or_flagged(workload, x64, u, kind):
    with jax.enable_x64(x64):
        base, objective = WORKLOADS[workload]()
        run = _compiled(workload, lambda: _values_and_tangent(objective))
        values, jac = run(_systems(u, kind, base))
        _check_study(values, jac, workload)


@PROPERTY
@given(tp=st.integers(1, 32), pp=st.integers(1, 16), dp=st.integers(1, 16),
       microbatch=st.integers(1, 4), global_batch=st.integers(1, 96),
       interleave=st.integers(1, 3))
def test_training_plan_is_valid_or_refused_by_hand_and_flagged_when_traced(
        tp, pp, dp, microbatch, global_batch, interleave):
    model = Transformer(layers=12, hidden=768, heads=12, kv_heads=12, ffn_hidden=3072,
                        vocab=50304, seq_len=1024)
    system = H100.with_num_chips(32)
    plan = models.TrainingPlan(tp=tp, pp=pp, dp=dp, microbatch_size=microbatch,
                               global_batch=global_batch, interleave=interleave)
    # The oracle, in integers.
    expected = 0
    if tp * pp * dp != 32:
        expected |= Reason.CHIPS
    if 12 % tp or 12 % pp or (12 % pp == 0 and (12 // pp) % interleave):
        expected |= Reason.SPLIT
    if global_batch % (dp * microbatch):
        expected |= Reason.BATCH
    traced = _compiled("plan_rules", lambda: jax.jit(
        lambda p: models.check_training_plan(model, p, system)))(plan)
    assert int(traced) == expected
    if expected:
        with pytest.raises(ValueError, match=r"TrainingPlan\.\S+.* must be .*; got "):
            models.check_training_plan(model, plan, system)
    else:
        assert int(models.check_training_plan(model, plan, system)) == 0


# ------------------------------------------------------------------ invalid inputs


def _bad_value(f, draw_kind: str, scale: float) -> float:
    """A value outside field f's valid range (and not the 0 it may allow)."""
    if draw_kind == "nan":
        return float("nan")
    if draw_kind == "inf":
        return float("inf")
    if draw_kind == "above":
        return f.max_value * (1.0 + scale)
    if f.min_value > 0:
        below = f.min_value * (1.0 - min(scale, 0.5))
        return below if below > 0 or not f.zero_allowed else -1.0
    return -f.max_value * scale if f.min_inclusive or scale < 1 else 0.0


# A valid Module of each owner, to set one bad field on.
OWNERS = {"Chip": CHIPS["H100-SXM"], "System": H100, "Network": NETWORKS["dgx-superpod"],
          "Reliability": Reliability(), "Economics": Economics()}


@PROPERTY
@given(name=st.sampled_from(list(FIELDS)), draw_kind=st.sampled_from(["nan", "inf", "above",
                                                                     "below"]),
       scale=st.floats(1e-3, 1e30))
def test_invalid_field_is_an_error_naming_field_value_and_range(name, draw_kind, scale):
    f = FIELDS[name]
    bad = _bad_value(f, draw_kind, scale)
    with pytest.raises(ValueError) as info:
        OWNERS[f.owner].replace(**{name: bad})
    text = str(info.value)
    assert f"{f.owner}.{name} must be {f.allowed}" in text
    got = re.search(r"got (\S+)", text).group(1)
    np.testing.assert_allclose(float(got), bad, rtol=1e-6)  # as stored: float32 or as given


@PROPERTY
@given(field=st.sampled_from(["tp", "pp", "dp", "ep", "microbatch_size", "global_batch",
                              "interleave", "recompute", "zero_stage"]),
       value=st.one_of(st.floats(0.01, 1e3).filter(lambda v: v != round(v)),
                       st.floats(-1e6, -0.01), st.just(float("nan"))))
def test_invalid_plan_is_an_error_never_a_truncation(field, value):
    with pytest.raises(ValueError, match=rf"TrainingPlan\.{field} must be a whole number in "
                                         r"\[\d+, \d+\]; got "):
        models.TrainingPlan(**{field: value})


@PROPERTY
@given(argument=st.sampled_from(["batch", "input_len", "output_len"]),
       value=st.one_of(st.floats(1.01, 1e3).filter(lambda v: v != round(v)),
                       st.floats(-1e6, 0.99), st.floats(2.0**24 + 1, 1e30)))
def test_invalid_serve_workload_is_an_error_naming_it(argument, value):
    args = {"batch": 8.0, "input_len": 128.0, "output_len": 16.0} | {argument: value}
    with pytest.raises(ValueError, match=rf"serve\.{argument} must be a whole number in "
                                         r"\[1, 16777216\]; got "):
        models.check_serve_workload(**args)


def test_traced_invalid_workload_is_flagged_and_finite():
    run = jax.jit(jax.vmap(lambda n: models.serve(LLAMA, SERVE_PLAN, H100, 32.0, n, 256.0)))
    report = run(jnp.array([-5.0, 0.0, 2048.5, 2048.0]))
    np.testing.assert_array_equal(np.asarray(report.reason) & Reason.WORKLOAD,
                                  [Reason.WORKLOAD] * 3 + [0])
    assert _all_finite(report).all() and np.all(np.asarray(report.ttft) > 0)
