"""Fused attention's efficiency knob (`Efficiency.attention_scale`, issue 7).

Checks: the default (None) is the old model bit for bit (fused attention at the GEMM
efficiency), and so is an explicit 1.0; a smaller scale slows fused attention and a flash
training step / a prefill by exactly 1 / scale on the compute side and leaves GEMMs and unfused
attention alone; jit, vmap and float64 gradients (vs central differences) work; `dse.calibrate`
recovers a known scale from noisy synthetic fused-attention timings within its stated
uncertainty; a start value <= 0 names the field."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_trees_identical, central_difference

import dse
from dse._calibrate import param_names
from dse._measure import ATTENTION_SCALE_BOUNDS
from dse.hardware import CHIPS, SYSTEMS
from dse.models import InferencePlan, TrainingPlan, Transformer, prefill, train_step
from dse.models._operators import attention, attention_backward, default_efficiency, gemm

A100 = CHIPS["A100-80GB"]
DGX = SYSTEMS["DGX-A100"].with_num_chips(64)
SMALL = Transformer(layers=8.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=2816.0,
                    vocab=32000.0, seq_len=2048.0, gated_mlp=True, tied_embeddings=False)
PLAN = TrainingPlan(tp=4.0, pp=2.0, dp=8.0, microbatch_size=2.0, global_batch=128.0,
                    recompute=1.0, zero_stage=1.0)
# (batch, heads, kv_heads, q_len, kv_len, head_dim), causal: prefill-sized shapes that the model
# puts on the compute side of the A100 roofline (forward and backward; the test checks it), and
# a decode step (memory-bound).
SHAPES = np.array([[8, 32, 32, 2048, 2048, 128], [4, 16, 4, 4096, 4096, 128],
                   [2, 32, 8, 8192, 8192, 128], [16, 12, 12, 1024, 1024, 64],
                   [1, 64, 8, 16384, 16384, 128], [32, 16, 16, 1024, 1024, 128]], float)
DECODE = (64.0, 32.0, 8.0, 1.0, 4096.0, 128.0)


def with_scale(scale, eff=None):
    eff = default_efficiency() if eff is None else eff
    return dataclasses.replace(eff, attention_scale=jnp.asarray(scale, eff.matrix_max.dtype))


def _ops(eff, shape=SHAPES.T, causal=True):
    kw = dict(causal=causal, efficiency=eff)
    return attention(A100, *shape, **kw), attention_backward(A100, *shape, **kw)


def test_default_has_no_leaf_and_is_the_gemm_efficiency_bit_for_bit():
    eff = default_efficiency()
    assert eff.attention_scale is None
    assert param_names(eff) == ["matrix_max", "matrix_overhead_s", "memory_max",
                                "memory_overhead_s"]
    for causal in (True, False):
        none = _ops(None, causal=causal)
        for cost in none:
            # The compute time is the GEMM formula on the op's FLOPs, bit for bit.
            expected = (cost.flops / A100.peak_flops + eff.matrix_overhead_s) / eff.matrix_max
            np.testing.assert_array_equal(np.asarray(cost.compute_time), np.asarray(expected))
        assert_trees_identical(none, _ops(eff, causal=causal))
        assert_trees_identical(none, _ops(with_scale(1.0), causal=causal))


@pytest.mark.parametrize("flash", [True, False])
def test_train_step_and_prefill_defaults_are_bit_identical(flash):
    one = with_scale(1.0)
    assert_trees_identical(train_step(SMALL, PLAN, DGX, flash_attention=flash),
                     train_step(SMALL, PLAN, DGX, flash_attention=flash, efficiency=one))
    plan = InferencePlan(tp=8.0, batch=4.0, fused=flash)
    assert_trees_identical(prefill(SMALL, plan, DGX, 4096.0),
                     prefill(SMALL, plan, DGX, 4096.0, efficiency=one))


def test_smaller_scale_slows_fused_attention_only():
    base_f, base_b = _ops(None)
    slow_f, slow_b = _ops(with_scale(0.7))
    for base, slow in ((base_f, slow_f), (base_b, slow_b)):
        # Compute time is divided by the scale exactly; traffic and memory time are unchanged.
        np.testing.assert_allclose(np.asarray(slow.compute_time),
                                   np.asarray(base.compute_time) / 0.7, rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(slow.memory_time),
                                      np.asarray(base.memory_time))
        assert np.all(np.asarray(base.compute_time) > np.asarray(base.memory_time))
        assert np.all(np.asarray(slow.time) > np.asarray(base.time))
    # A memory-bound decode step stays memory-bound at 0.7: no change in its time.
    d0 = attention(A100, *DECODE)
    d1 = attention(A100, *DECODE, efficiency=with_scale(0.7))
    assert float(d1.compute_time) < float(d1.memory_time)
    assert float(d1.time) == float(d0.time)
    # GEMMs keep the GEMM efficiency.
    m = jnp.asarray([64.0, 4096.0, 16384.0])
    assert_trees_identical(gemm(A100, m, 4096.0, 4096.0),
                     gemm(A100, m, 4096.0, 4096.0, efficiency=with_scale(0.7)))


def test_smaller_scale_slows_a_flash_step_and_a_prefill_but_not_unfused_attention():
    slow = with_scale(0.6)
    t0 = float(train_step(SMALL, PLAN, DGX, flash_attention=True).step_time)
    t1 = float(train_step(SMALL, PLAN, DGX, flash_attention=True, efficiency=slow).step_time)
    assert t1 > t0
    # Unfused attention (batched GEMMs + softmax) runs at the GEMM efficiency.
    assert_trees_identical(train_step(SMALL, PLAN, DGX, flash_attention=False),
                     train_step(SMALL, PLAN, DGX, flash_attention=False, efficiency=slow))
    # Fused and eager inference runtimes both keep the scale (the fused runtime drops only the
    # start-up times).
    for fused in (True, False):
        plan = InferencePlan(tp=8.0, batch=4.0, fused=fused)
        p0 = float(prefill(SMALL, plan, DGX, 8192.0).time)
        p1 = float(prefill(SMALL, plan, DGX, 8192.0, efficiency=slow).time)
        assert p1 > p0, fused


def test_jit_vmap_and_float32_gradient():
    scales = jnp.asarray([0.5, 0.7, 1.0])

    def total(s):
        f, b = _ops(with_scale(s))
        return jnp.sum(f.time + b.time)

    batched = jax.jit(jax.vmap(total))(scales)
    looped = np.array([float(total(s)) for s in scales])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-6)
    assert np.all(np.diff(np.asarray(batched)) < 0)
    g = jax.jit(jax.grad(total))(jnp.asarray(0.7))
    assert np.isfinite(float(g)) and float(g) < 0
    step = lambda s: train_step(SMALL, PLAN, DGX, efficiency=with_scale(s)).step_time
    gs = jax.grad(step)(jnp.asarray(0.7))
    assert np.isfinite(float(gs)) and float(gs) < 0


@pytest.mark.parametrize("smooth", [False, True])
def test_float64_gradients_match_central_differences(smooth):
    with jax.enable_x64(True):
        eff = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), default_efficiency())
        plan = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), PLAN)

        def ops(s):
            kw = dict(efficiency=with_scale(s, eff), smooth=smooth)
            shape = [jnp.asarray(c, jnp.float64) for c in SHAPES.T]
            return jnp.sum(attention(A100, *shape, **kw).time
                           + attention_backward(A100, *shape, **kw).time)

        def step(s):
            return train_step(SMALL, plan, DGX, smooth=smooth,
                              efficiency=with_scale(s, eff)).step_time

        for fn in (ops, step):
            f = jax.jit(fn)
            for s in (0.55, 0.8):
                ad = float(jax.grad(f)(jnp.asarray(s, jnp.float64)))
                fd = central_difference(lambda x: float(f(jnp.asarray(x, jnp.float64))), s)
                assert np.isfinite(ad) and ad < 0
                np.testing.assert_allclose(ad, fd, rtol=1e-4)


def attention_model(efficiency, inputs):
    """Seconds of each fused-attention row: forward or backward (`is_backward`)."""
    x = inputs
    shape = (x["batch"], x["heads"], x["kv_heads"], x["q_len"], x["kv_len"], x["head_dim"])
    fwd = attention(A100, *shape, efficiency=efficiency).time
    bwd = attention_backward(A100, *shape, efficiency=efficiency).time
    return jnp.where(x["is_backward"] > 0.5, bwd, fwd)


def _synthetic_attention(true_scale=0.7, noise=0.02, seed=0):
    rows = np.concatenate([SHAPES, SHAPES])
    dtype = jnp.result_type(float)
    names = ("batch", "heads", "kv_heads", "q_len", "kv_len", "head_dim")
    inputs = {n: jnp.asarray(rows[:, i], dtype) for i, n in enumerate(names)}
    inputs["is_backward"] = jnp.asarray(np.r_[np.zeros(len(SHAPES)), np.ones(len(SHAPES))],
                                        dtype)
    clean = np.asarray(attention_model(with_scale(true_scale), inputs))
    rng = np.random.default_rng(seed)
    measured = clean * np.exp(noise * rng.standard_normal(clean.shape))
    n = len(rows)
    return dse.Measurements(inputs, jnp.asarray(measured, dtype),
                            jnp.asarray(np.arange(n) % 2), ("lab0", "lab1"))


def test_calibrate_recovers_a_known_attention_scale():
    data = _synthetic_attention()
    start = with_scale(1.0)
    r = dse.calibrate(attention_model, start, data, fit=["attention_scale"],
                      bounds=dict(attention_scale=ATTENTION_SCALE_BOUNDS), validation="none",
                      steps=60)
    assert r.names == ("attention_scale",)
    log_std = float(np.sqrt(np.asarray(r.log_covariance)[0, 0]))
    # 2% noise on 12 rows: the log-std is ~0.02 / sqrt(12) ~ 0.006; the truth within 3 sigma.
    assert 0.0 < log_std < 0.02
    assert abs(np.log(float(r.value[0]) / 0.7)) < 3 * log_std
    assert float(r.params.attention_scale) == pytest.approx(float(r.value[0]))
    # The other fields are held at their starting values.
    for name in ("matrix_max", "matrix_overhead_s", "memory_max", "memory_overhead_s"):
        assert float(getattr(r.params, name)) == float(getattr(start, name))
    assert float(r.train_mape) < 0.05 < float(r.before_mape)


def test_calibrate_rejects_a_non_positive_start_naming_the_field():
    data = _synthetic_attention()
    for bad in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match="attention_scale"):
            dse.calibrate(attention_model, with_scale(bad), data, fit=["attention_scale"],
                          validation="none", steps=5)
