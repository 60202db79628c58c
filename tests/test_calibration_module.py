"""`Calibration`: one Module of every fitted factor, validated once, reaching every entry point.

Checks: construction validates every field (the error names the field, the value and the range);
each field reaches exactly the entry points whose physics reads it (perturb one field, see which
results move); a lower efficiency is never faster and more latency never faster; a latency
factor equals scaling the system's stated latency; a batch of calibrations jits and vmaps;
gradients with respect to the fields are finite in float32 and match central differences in
float64; a field added in a subclass travels through training, inference and the fused runtime
untouched (adding a factor needs no signature change anywhere).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference, jit_over_calibrations

from dse.hardware import FABRICS, SYSTEMS
from dse.models import (
    DEFAULT,
    FRAMEWORKS,
    Calibration,
    InferencePlan,
    TrainingPlan,
    Transformer,
    all_reduce,
    best_plan,
    decode,
    layer_time,
    prefill,
    serve,
    train_step,
)

DGX = SYSTEMS["DGX-A100"].with_num_chips(16)  # NVSwitch: log2 p latency steps per collective
TPU = SYSTEMS["TPUv4-pod"].with_num_chips(16)  # 3D torus, fabric "ici"
SMALL = Transformer(layers=4.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=2816.0,
                    vocab=32000.0, seq_len=2048.0, gated_mlp=True, tied_embeddings=False)
# Data parallel over two nodes with overlap on (the overlap fraction and the scale-out
# efficiency matter), TP 4 (the scale-up tier matters), flash attention at 2048 tokens, where
# the fused kernels are compute-bound (the attention fields matter).
PLAN = TrainingPlan(tp=4.0, dp=4.0, microbatch_size=1.0, global_batch=16.0, dp_overlap=1.0)
INFER = InferencePlan(tp=4.0, pp=2.0, batch=4.0)
EAGER = InferencePlan(tp=4.0, batch=4.0, fused=False, sequence_parallel=False)


def _train(cal, flash=True, system=DGX):
    return train_step(SMALL, PLAN, system, calibration=cal, flash_attention=flash).step_time


def _prefill(cal, plan=INFER, system=DGX):
    return prefill(SMALL, plan, system, 256.0, calibration=cal).time


def _decode(cal, plan=INFER, system=DGX):
    return decode(SMALL, plan, system, 384.0, calibration=cal).time


def _entry(fn, system):
    # The system is an argument, not a constant of the program, so that other hardware of
    # the same structure (a slower fabric) reuses the compiled entry point.
    run = jit_over_calibrations(fn)
    return lambda cal, system=system: run(cal, system)


# Jitted once each: ~40 perturbed fields x 6 entry points, op by op, took twice as long.
ENTRY_POINTS = {
    "train_step": _entry(lambda c, s: _train(c, True, s), DGX),
    "train_step (unfused attention)": _entry(lambda c, s: _train(c, False, s), DGX),
    "prefill (fused runtime)": _entry(lambda c, s: _prefill(c, INFER, s), DGX),
    "prefill (eager)": _entry(lambda c, s: _prefill(c, EAGER, s), DGX),
    "decode": _entry(lambda c, s: _decode(c, INFER, s), DGX),
    "decode on TPU": _entry(lambda c, s: _decode(c, INFER, s), TPU.with_num_chips(8)),
}

# Which entry point each field must move (a 10% change of the field), and which it must not.
NVLINK_ONLY = {"train_step", "train_step (unfused attention)", "prefill (fused runtime)",
               "prefill (eager)", "decode"}
REACHES = {
    "matrix_max": set(ENTRY_POINTS),
    "memory_max": set(ENTRY_POINTS),
    "matrix_overhead_s": {"train_step", "train_step (unfused attention)", "prefill (eager)"},
    "memory_overhead_s": {"train_step", "train_step (unfused attention)", "prefill (eager)"},
    "attention_scale": {"train_step", "prefill (fused runtime)"},
    "attention_backward_scale": {"train_step"},
    "attention_softmax_dim": {"train_step", "prefill (fused runtime)"},
    "attention_forward_io": {"train_step", "prefill (fused runtime)"},
    "attention_backward_io": {"train_step"},
    # Read only through Calibration.with_previous_generation_attention (tested below).
    "attention_previous_scale": set(),
    "kernel_fraction": {"train_step", "train_step (unfused attention)"},
    "scaleout_efficiency": {"train_step", "train_step (unfused attention)"},
    "link_efficiency.nvlink": NVLINK_ONLY,
    "latency_scale.nvlink": NVLINK_ONLY,
    "collective_latency.nvlink": NVLINK_ONLY,
    "pipeline_overhead_bytes.nvlink": NVLINK_ONLY,
    "collective_latency.ici": {"decode on TPU"},
    "pipeline_overhead_bytes.ici": {"decode on TPU"},
    "link_efficiency.ici": {"decode on TPU"},
    "latency_scale.ici": {"decode on TPU"},
    "dp_overlap_fraction": {"train_step", "train_step (unfused attention)"},
    # Hidden communication slows the compute beside it, in both steps.
    "overlap_slowdown": {"train_step", "train_step (unfused attention)"},
    # Read only through Calibration.for_framework (tested below).
    **{f"framework_scale.{f}": set() for f in FRAMEWORKS},
}


def _perturbed(name: str, factor: float) -> Calibration:
    field, _, fabric = name.partition(".")
    value = getattr(DEFAULT, field)
    if fabric:
        return DEFAULT.replace(**{field: {**value, fabric: value[fabric] * factor}})
    return DEFAULT.replace(**{field: value * factor})


@pytest.fixture(scope="module")
def base_times():
    return {k: float(f(DEFAULT)) for k, f in ENTRY_POINTS.items()}


@pytest.mark.parametrize("name", sorted(REACHES))
def test_each_field_reaches_exactly_its_entry_points(name, base_times):
    # Fractions and rates are moved down (they have upper bounds); the others up. The overlap
    # fraction is halved: enough to expose both steps' DP communication.
    factor = 0.9 if name.split(".")[0] in (
        "matrix_max", "memory_max", "kernel_fraction", "link_efficiency", "scaleout_efficiency",
        "attention_scale", "attention_backward_scale",
        "attention_previous_scale", "framework_scale") else 1.5
    factor = 0.5 if name == "dp_overlap_fraction" else factor
    cal = _perturbed(name, factor)
    moved = {k for k, f in ENTRY_POINTS.items() if float(f(cal)) != base_times[k]}
    assert moved == REACHES[name], name


def test_every_field_is_listed():
    leaves = {".".join(str(getattr(k, "name", getattr(k, "key", k))) for k in path)
              for path, _ in jax.tree_util.tree_flatten_with_path(DEFAULT)[0]}
    # Less the fabrics no entry point runs on.
    assert leaves == set(REACHES) | {
        f"{f}.{fab}" for f in ("link_efficiency", "latency_scale", "collective_latency",
                                "pipeline_overhead_bytes")
        for fab in FABRICS if fab not in ("nvlink", "ici")}


def test_framework_scale_multiplies_the_kernel_fraction_up_to_one():
    core = DEFAULT.for_framework("megatron-core")
    np.testing.assert_allclose(float(core.kernel_fraction), float(DEFAULT.kernel_fraction)
                               * float(DEFAULT.framework_scale["megatron-core"]), rtol=1e-6)
    capped = DEFAULT.replace(framework_scale=1.5).for_framework("composer")
    assert float(capped.kernel_fraction) == 1.0
    with pytest.raises(ValueError, match="framework must be one of"):
        DEFAULT.for_framework("jax")
    with pytest.raises(ValueError, match="per-framework calibration needs exactly"):
        DEFAULT.replace(framework_scale={"megatron-lm": 1.0})


def test_previous_generation_attention_slows_only_fused_attention(base_times):
    cal = DEFAULT.with_previous_generation_attention()
    np.testing.assert_allclose(float(cal.attention_scale), float(DEFAULT.attention_scale)
                               * float(DEFAULT.attention_previous_scale), rtol=1e-6)
    # The compiled entry points base_times came from: op by op, each step took ~5 s.
    train, unfused = ENTRY_POINTS["train_step"], ENTRY_POINTS["train_step (unfused attention)"]
    assert float(train(cal)) > base_times["train_step"]
    assert float(unfused(cal)) == base_times["train_step (unfused attention)"]


@pytest.mark.parametrize("name", ["matrix_max", "memory_max", "attention_scale",
                                  "attention_backward_scale", "kernel_fraction",
                                  "link_efficiency.nvlink", "scaleout_efficiency",
                                  "dp_overlap_fraction"])
def test_lower_efficiency_is_never_faster(name, base_times):
    cal = _perturbed(name, 0.7)
    for k, f in ENTRY_POINTS.items():
        assert float(f(cal)) >= base_times[k] * (1 - 1e-6), (name, k)


def test_more_latency_is_never_faster(base_times):
    cal = _perturbed("latency_scale.nvlink", 3.0)
    for k, f in ENTRY_POINTS.items():
        assert float(f(cal)) >= base_times[k] * (1 - 1e-6), k


def test_latency_factor_equals_scaling_the_systems_latency():
    cal = _perturbed("latency_scale.nvlink", 3.0)
    slow = DGX.replace(scaleup_latency=DGX.scaleup_latency * 3.0)
    # Both sides through the module's compiled entry points (op by op: ~1.5 s each).
    for entry in ("prefill (fused runtime)", "prefill (eager)", "train_step"):
        f = ENTRY_POINTS[entry]
        np.testing.assert_allclose(float(f(cal)), float(f(DEFAULT, slow)), rtol=1e-6,
                                   err_msg=entry)


def test_best_plan_serve_and_layer_time_take_the_calibration():
    slow = _perturbed("matrix_max", 0.5)
    # Compiled once each for both calibrations (provenance cleared): best_plan's own compiled
    # evaluation keys on the provenance, so the two calibrations compiled it twice.
    for fn in map(jit_over_calibrations, (
            lambda c: best_plan(SMALL, DGX, 16, calibration=c, recompute=(0,),
                                zero_stages=(0,))[1].step_time,
            lambda c: serve(SMALL, INFER, DGX, 4.0, 256.0, 32.0, calibration=c).ttft,
            lambda c: layer_time(SMALL, PLAN, DGX, calibration=c))):
        assert float(fn(slow)) > float(fn(DEFAULT))


@pytest.mark.parametrize("field,bad,allowed", [
    ("matrix_max", 0.0, "(0, 1.5]"), ("matrix_max", 1.6, "(0, 1.5]"),
    ("memory_overhead_s", -1e-6, "[0, 0.01]"), ("kernel_fraction", float("nan"), "(0, 1]"),
    ("dp_overlap_fraction", 1.2, "[0, 1]"), ("attention_scale", -0.5, "(0, 1.5]"),
    ("overlap_slowdown", -0.1, "[0, 1]"),
    ("scaleout_efficiency", 1.2, "(0, 1]"), ("attention_softmax_dim", -1.0, "[0, 1000]"),
])
def test_bad_values_name_the_field_value_and_range(field, bad, allowed):
    with pytest.raises(ValueError, match=rf"Calibration\.{field} must be finite and in "
                                         rf"{__import__('re').escape(allowed)}; got"):
        DEFAULT.replace(**{field: bad})


def test_per_fabric_fields_check_each_fabric_and_the_fabric_names():
    with pytest.raises(ValueError, match=r"Calibration\.link_efficiency\['ici'\] must be"):
        DEFAULT.replace(link_efficiency={**DEFAULT.link_efficiency, "ici": 2.0})
    with pytest.raises(ValueError, match="exactly the fabrics"):
        DEFAULT.replace(latency_scale={"nvlink": 1.0})


def test_provenance_names_known_fields_and_drops_on_change():
    assert "LLMCompass" in DEFAULT.source("matrix_max")
    assert DEFAULT.replace(matrix_max=0.5).source("matrix_max") == "not recorded"
    assert "LLMCompass" in DEFAULT.replace(matrix_max=0.5).source("memory_max")
    with pytest.raises(ValueError, match="unknown field 'nope'"):
        DEFAULT.replace(provenance=(("nope", "x"),))


def test_jit_and_vmap_over_a_batch_of_calibrations():
    factors = jnp.asarray([0.6, 0.8, 1.0])
    batch = jax.vmap(lambda f: eqx.tree_at(lambda c: c.matrix_max, DEFAULT,
                                           DEFAULT.matrix_max * f))(factors)
    fn = jax.jit(jax.vmap(lambda c: (_train(c), _prefill(c), _decode(c))))
    got = fn(batch)
    # Against the unbatched compiled entry points (compiled once for the module): op by op,
    # the nine references took ~10 s.
    singles = [ENTRY_POINTS[k] for k in ("train_step", "prefill (fused runtime)", "decode")]
    for i, f in enumerate(np.asarray(factors)):
        one = _perturbed("matrix_max", float(f))
        for col, g in zip(got, singles, strict=True):
            np.testing.assert_allclose(float(col[i]), float(g(one)), rtol=2e-6)


_GRAD_FIELDS = ("matrix_max", "memory_max", "matrix_overhead_s", "kernel_fraction",
                "attention_scale", "attention_backward_scale", "attention_softmax_dim",
                "attention_forward_io", "attention_backward_io", "scaleout_efficiency",
                "dp_overlap_fraction", "overlap_slowdown")


def _with(cal, name, value):
    field, _, fabric = name.partition(".")
    if fabric:
        return eqx.tree_at(lambda c: getattr(c, field)[fabric], cal, value)
    return eqx.tree_at(lambda c: getattr(c, field), cal, value)


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64) if eqx.is_inexact_array_like(x)
                        else x, tree)


_GRADIENT_CASES = {
    "train_step": lambda c, m, s: train_step(m, PLAN, s, calibration=c).step_time,
    "prefill (eager)": lambda c, m, s: prefill(m, EAGER, s, 256.0, calibration=c).time,
    "decode": lambda c, m, s: decode(m, INFER, s, 384.0, calibration=c).time,
}


@pytest.mark.parametrize("entry", sorted(_GRADIENT_CASES))
def test_gradients_finite_in_float32_and_match_differences_in_float64(entry):
    # Jitted: the 26 finite-difference evaluations then reuse one compiled float64 program,
    # the one that gives the gradient (a separate value-only program was a third compile).
    both = eqx.filter_jit(jax.value_and_grad(_GRADIENT_CASES[entry]))
    fn = lambda *args: both(*args)[0]  # noqa: E731
    grad_fn = lambda *args: both(*args)[1]  # noqa: E731
    names = _GRAD_FIELDS + ("link_efficiency.nvlink", "latency_scale.nvlink",
                            "collective_latency.nvlink", "pipeline_overhead_bytes.nvlink")
    g32 = grad_fn(jax.tree.map(jnp.asarray, DEFAULT), SMALL, DGX)
    assert all(bool(jnp.isfinite(x)) for x in jax.tree.leaves(g32))
    with jax.enable_x64(True):
        cal, model, system = _f64(DEFAULT), _f64(SMALL), _f64(DGX)
        grad = dict(zip(_names(cal), jax.tree.leaves(grad_fn(cal, model, system)),
                        strict=True))
        start = dict(zip(_names(cal), jax.tree.leaves(cal), strict=True))
        for name in names:
            x0 = float(start[name])
            fd = central_difference(
                lambda v, n=name: float(fn(_with(cal, n, jnp.float64(v)), model, system)), x0)
            np.testing.assert_allclose(float(grad[name]), fd, rtol=1e-5, atol=1e-12,
                                       err_msg=name)


def _names(tree):
    return [".".join(str(getattr(k, "name", getattr(k, "key", k))) for k in path)
            for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


class WithExtraFactor(Calibration):
    """A calibration grown by one field, as a later issue adds one."""

    extra_factor: float = eqx.field(default=1.0)


def test_a_field_added_to_the_calibration_reaches_training_and_inference():
    cal = WithExtraFactor(**{f.name: getattr(DEFAULT, f.name)
                             for f in dataclasses.fields(DEFAULT)}, extra_factor=0.25)
    # Every entry point takes it whole: the results equal the base calibration's (compiled:
    # op by op, the first step alone took ~7 s) ...
    train, eager = ENTRY_POINTS["train_step"], ENTRY_POINTS["prefill (eager)"]
    assert float(train(cal)) == float(train(DEFAULT))
    assert float(eager(cal)) == float(eager(DEFAULT))
    # ... the fused runtime's adjustment keeps it (a field-by-field rebuild would drop it) ...
    fused = cal.with_fused_runtime()
    assert isinstance(fused, WithExtraFactor) and fused.extra_factor == 0.25
    # ... and a model reading it differentiates through train_step and decode.
    # The times ride as aux of the compiled gradient (op by op, the gradient took ~6 s).
    def scaled(c):
        times = _train(c) + _decode(c)
        return c.extra_factor * times, times

    g, times = jax.jit(jax.grad(scaled, has_aux=True))(jax.tree.map(jnp.asarray, cal))
    np.testing.assert_allclose(float(g.extra_factor), float(times), rtol=1e-6)


def test_collective_uses_its_fabrics_factors():
    ici_slow = DEFAULT.replace(link_efficiency={**DEFAULT.link_efficiency, "ici": 0.1})
    big = 1e9
    assert float(all_reduce(DGX, big, 8.0, calibration=ici_slow).time) == \
        float(all_reduce(DGX, big, 8.0).time)
    tpu = TPU.with_num_chips(8)
    assert float(all_reduce(tpu, big, 8.0, calibration=ici_slow).time) > \
        2 * float(all_reduce(tpu, big, 8.0).time)
