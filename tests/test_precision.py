"""Precision as a design dimension: per-precision engines (their area, energy and peaks against
their sources), training recipes, serving formats, errors and infeasibility, transforms, and the
published FP8 / BF16 step-time ratios of same-shape pairs."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

from dse.calibration import precision_pairs
from dse.calibration._precision_data import predicted_ratio
from dse.hardware import (
    CHIPS,
    ENGINES,
    HOROWITZ_45NM,
    RETICLE_LIMIT_MM2,
    SYSTEMS,
    Activity,
    area,
    mac_cost_45nm,
    power,
    stack_chips,
)
from dse.hardware._precision import ADDER_AREA_EXPONENT, _fp
from dse.models import (
    DEFAULT,
    InferencePlan,
    Reason,
    TrainingPlan,
    Transformer,
    decode,
    evaluate_plans,
    gemm,
    serve,
    train_step,
)
from dse.models._layer import _quantize_ops, _weight_gemms

H100 = CHIPS["H100-SXM"]
DGX_H100 = SYSTEMS["DGX-H100"]


def small_model(**changes):
    base = dict(layers=4.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=2816.0,
                vocab=32000.0, seq_len=1024.0, gated_mlp=True, tied_embeddings=False)
    return Transformer(**(base | changes))


SMALL = small_model()
# Large enough GEMMs (4096 wide, 8192 tokens per micro-batch) that they are compute-bound and an
# FP8 engine pays for its casts; two layers keep it cheap.
WIDE = small_model(layers=2.0, hidden=4096.0, heads=32.0, kv_heads=8.0, ffn_hidden=14336.0,
                   seq_len=4096.0)
PLAN8 = TrainingPlan(tp=2.0, dp=4.0, microbatch_size=2.0, global_batch=16.0,
                     sequence_parallel=1.0, zero_stage=1.0)


# ----- per-MAC area and energy reproduce their source -----------------------------------------


def test_horowitz_table_is_reproduced_at_its_own_widths():
    # The power laws pass through Horowitz's FP16 and FP32 multipliers and adders exactly, and
    # the integer MAC is the table's own sum (ISSCC 2014, 45 nm).
    for unit in ("mult", "add"):
        for kind in (1,) if unit == "add" else (0, 1):
            np.testing.assert_allclose(_fp(unit, 11, kind), HOROWITZ_45NM[f"fp16_{unit}"][kind])
            np.testing.assert_allclose(_fp(unit, 24, kind), HOROWITZ_45NM[f"fp32_{unit}"][kind])
    np.testing.assert_allclose(ADDER_AREA_EXPONENT, np.log(4184 / 1360) / np.log(24 / 11))
    assert mac_cost_45nm("bf16")[0] == pytest.approx(1.1 + 0.9)  # FP16 mult + FP32 add, pJ
    assert mac_cost_45nm("int8") == pytest.approx((0.2 + 0.1, 282.0 + 67.0))


@pytest.mark.parametrize("engine,energy,area_", [("fp8", 0.5641, 0.2027), ("fp6", 0.5641, 0.2027),
                                                 ("fp4", 0.4888, 0.0699), ("int8", 0.15, 0.0655)])
def test_engine_costs_relative_to_a_16_bit_mac(engine, energy, area_):
    assert ENGINES[engine].energy == pytest.approx(energy, abs=5e-4)
    assert ENGINES[engine].area == pytest.approx(area_, abs=5e-4)
    assert ENGINES["bf16"].energy == ENGINES["bf16"].area == 1.0


def test_fp8_mac_energy_matches_h100_at_its_power_limit():
    # H100 at 700 W sustains 794.5 TFLOP/s BF16 and 1402.6 FP8 (data/chips.csv MAMF): the same
    # power at both operating points within 2%, and within 5% of the TDP, with no FP8 fit.
    with jax.enable_x64(True):
        bf16 = float(power(H100, Activity(compute=794.5 / 989.4)).total)
        fp8 = float(power(H100, Activity(compute=0.0, fp8=1402.6 / 1979)).total)
    assert abs(fp8 / bf16 - 1) < 0.02
    assert abs(bf16 / 700 - 1) < 0.05 and abs(fp8 / 700 - 1) < 0.05


@pytest.mark.parametrize("name", ["B200", "GB200", "B300", "GB300"])
def test_blackwell_dies_with_their_fp4_engines_are_reticle_sized(name):
    # "2 x reticle sized GPUs": with the FP8 / FP4 engines priced at their Horowitz area, each die
    # comes out between 80% and 100% of the 858 mm^2 reticle.
    with jax.enable_x64(True):
        per_die = float(area(CHIPS[name]).per_die)
    assert 0.8 * RETICLE_LIMIT_MM2 < per_die <= RETICLE_LIMIT_MM2, per_die


def test_an_fp4_engine_costs_area_and_watts():
    with jax.enable_x64(True):
        base = H100
        fp4 = H100.replace(fp4_rate=4.0)
        a0, a1 = area(base), area(fp4)
        # Two FP4 MACs beyond the FP8 engine's two, per 16-bit MAC, at 0.0699 of its area; H100
        # already carries one extra FP8 and one extra INT8 MAC per 16-bit MAC.
        extra = float(a1.low_precision - a0.low_precision)
        share = extra / float(a0.low_precision)
        assert share == pytest.approx(
            2 * ENGINES["fp4"].area / (ENGINES["fp8"].area + ENGINES["int8"].area), rel=1e-3)
        assert float(a1.total) > float(a0.total)
        busy = Activity(compute=0.0, fp4=1.0)
        assert float(power(fp4, busy).compute) == pytest.approx(
            float(power(base, Activity()).compute) * 4 * ENGINES["fp4"].energy, rel=1e-6)


@pytest.mark.parametrize("name,engine,tflops", [
    ("H100-SXM", "fp8", 1979), ("B200", "fp4", 9000), ("GB200", "fp4", 10000),
    ("B300", "fp4", 14000), ("GB300", "fp4", 15000), ("GB300", "fp8", 5000),
    ("MI300X", "fp8", 2614.9), ("MI325X", "fp8", 2614.9), ("MI355X", "fp4", 10066.3),
    ("TPUv5p", "fp8", 459), ("TPUv6e", "int8", 1836), ("Gaudi3", "fp8", 1835)])
def test_preset_engine_peaks_reproduce_their_sources(name, engine, tflops):
    np.testing.assert_allclose(float(CHIPS[name].matrix_peak(engine)), tflops * 1e12, rtol=1e-4)


# ----- training recipes ------------------------------------------------------------------------

TE_LAYER = Transformer(layers=24.0, hidden=4096.0, heads=32.0, kv_heads=32.0, ffn_hidden=16384.0,
                       vocab=32000.0, seq_len=512.0)  # TE gemm_profiling.rst's model config
TE_PLAN = TrainingPlan(microbatch_size=31.0, global_batch=31.0)  # M = 31 x 512 tokens
B300 = SYSTEMS["DGX-B300"].with_num_chips(1)


@functools.cache  # several tests read the same layer's costs; eager, ~0.3 s each
def _te_layer(precision):
    plan = TE_PLAN.replace(precision=precision)
    fwd, bwd, *_ = _quantize_ops(TE_LAYER, plan, B300, False, DEFAULT)
    gemms, _ = _weight_gemms(TE_LAYER, plan, B300, False, DEFAULT)
    return float(fwd + bwd), float(gemms.total("time"))


@pytest.mark.parametrize("precision,measured_ms", [
    ("mxfp8", 8.507 - 7.324),
    pytest.param("nvfp4", 6.439 - 3.754, marks=pytest.mark.xfail(
        strict=True, reason="NVFP4 quantization modelled at 1.43 ms: three reads and the "
        "Hadamard FLOPs; the stochastic rounding and the 16 x 16 weight blocks are not")),
    pytest.param("fp8_blockwise", 9.598 - 6.830, marks=pytest.mark.xfail(
        strict=True, reason="blockwise scale computation modelled as cheap as MXFP8's; TE: "
        "'its autocast quantization overhead (block-wise scaling computation) is higher'"))])
def test_quantization_kernels_match_te_b300_gemm_profile(precision, measured_ms):
    # Transformer Engine's B300 GEMM profile (gemm_profiling.rst @ce616e1f): autocast minus
    # pre-quantized time of one layer's 12 GEMMs is the quantization. Tolerance 10%.
    quantize, _ = _te_layer(precision)
    assert abs(quantize * 1e3 / measured_ms - 1) < 0.10, quantize


def test_mxfp8_gemm_speedup_matches_te_b300_profile():
    # Pre-quantized 12 GEMMs per layer: BF16 12.835 ms, MXFP8 7.324 ms (1.75x). Tolerance 8%.
    _, bf16 = _te_layer("bf16")
    _, mx = _te_layer("mxfp8")
    assert abs((bf16 / mx) / (12.835 / 7.324) - 1) < 0.08


def test_nvfp4_gemms_match_te_b300_profile():
    # Pre-quantized 12 NVFP4 GEMMs per layer: 3.754 ms (the B300's FP4 K-loop rate is fitted to
    # it without per-op start-up times; the training model adds them). 5%. (The 16-bit model
    # runs the same GEMMs 16% faster than TE's 12.835 ms: B300's best-GEMM rate at larger
    # shapes.)
    _, fp4 = _te_layer("nvfp4")
    assert abs(fp4 * 1e3 / 3.754 - 1) < 0.05, fp4


def test_fp4_gemm_constants_are_what_their_fits_give():
    from dse.calibration._gemm_data import fit_fp4_gemm, fit_fp4_layer_efficiency
    from dse.models._operators import FP4_WAVE_CYCLES

    fitted = fit_fp4_gemm()
    assert FP4_WAVE_CYCLES == pytest.approx(fitted["wave_cycles"], rel=2e-3)
    assert float(CHIPS["B300"].fp4_efficiency) == pytest.approx(
        fit_fp4_layer_efficiency("B300", fitted["wave_cycles"]), rel=2e-3)
    # The GB200 and GB300 have no measurement of their own: their die's.
    assert float(CHIPS["GB200"].fp4_efficiency) == float(CHIPS["B200"].fp4_efficiency)
    assert float(CHIPS["GB300"].fp4_efficiency) == float(CHIPS["B300"].fp4_efficiency)
    # The whole vLLM table (M = 1 ... 16,384) at one rate: within 10% at the median.
    assert fitted["median_abs_error"] < 0.10, fitted


def test_block_scaled_fp4_gemm_waves():
    from dse.calibration._gemm_data import OUTPUT_BYTES, gemm_kernel_rows, measured_time

    chip, cal = CHIPS["B200"], DEFAULT.with_fused_runtime()

    def t(m, n=6144.0, k=4096.0, chip=chip):
        return float(gemm(chip, m, n, k, bytes_per_element=0.5, engine="fp4",
                          output_bytes_per_element=OUTPUT_BYTES, calibration=cal).time)

    # vLLM's B200 table is flat from M = 1 to 512 (11.4 and 11.8 us): rows padded to 128, one
    # wave of 4 x 24 tiles. So is the model; a second wave (M = 1024) doubles it.
    rows = {r["m"]: measured_time(r) for r in gemm_kernel_rows(source_key="vllm_pr20646_b200",
                                                                engine="fp4")}
    assert rows[512.0] / rows[1.0] == pytest.approx(1.0, abs=0.05)
    assert t(512.0) == pytest.approx(t(1.0), rel=1e-6)
    assert t(1024.0) == pytest.approx(2.0 * t(512.0), rel=1e-6)
    # Monotone in every dimension; a chip without an FP4 engine keeps the 16-bit tile family.
    grid = [t(m) for m in (1.0, 100.0, 128.0, 129.0, 2000.0, 9000.0)]
    assert all(b >= a for a, b in zip(grid, grid[1:], strict=False)), grid
    assert t(512.0, k=8192.0) > t(512.0)
    assert t(512.0, n=12288.0) >= t(512.0)
    h100 = CHIPS["H100-SXM"]
    assert t(1.0, chip=h100) < t(512.0, chip=h100)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_block_scaled_fp4_gemm_jits_vmaps_and_differentiates(dtype):
    fields = ("fp4_efficiency", "core_count", "clock_hz", "mac_units")
    base = CHIPS["B200"]

    def time(values, m):
        chip = base.replace(**dict(zip(fields, values, strict=True)))
        return gemm(chip, m, 6144.0, 4096.0, bytes_per_element=0.5, engine="fp4",
                    output_bytes_per_element=2.0).time

    with jax.enable_x64(dtype == "float64"):
        values = jnp.asarray([float(getattr(base, f)) for f in fields], dtype=dtype)
        ms = jnp.asarray([1.0, 300.0, 5000.0], dtype=dtype)
        batched = jax.jit(jax.vmap(time, in_axes=(None, 0)))(values, ms)
        assert batched.shape == (3,) and bool(jnp.all(jnp.isfinite(batched)))
        grad_of = jax.jit(jax.grad(time))
        for m in ms:
            assert bool(jnp.all(jnp.isfinite(grad_of(values, m))))
        # A faster K-loop, more MAC units or more cores (fewer waves, each with its fixed time)
        # speed a GEMM up.
        grad = grad_of(values, ms[2])
        assert float(grad[0]) < 0.0 and float(grad[3]) < 0.0 and float(grad[1]) < 0.0
        if dtype == "float64":
            # The K-loop's rate (efficiency, MAC units) is smooth: finite differences agree.
            for i in (0, 3):
                fd = central_difference(lambda v, i=i: float(time(
                    values.at[i].set(v), ms[2])), float(values[i]), 1e-4)
                assert float(grad[i]) == pytest.approx(fd, rel=1e-4)


def test_fp4_gemm_gradient_survives_a_huge_chip_in_float32():
    # A chip at the top of the field ranges has an FP4 rate whose square overflows float32; the
    # gradient must not silently become 0 (it equals float64's).
    def time(macs):
        chip = CHIPS["B200"].replace(mac_units=macs, clock_hz=1e10, fp4_rate=64.0)
        return gemm(chip, 65536.0, 65536.0, 65536.0, bytes_per_element=0.5, engine="fp4",
                    output_bytes_per_element=2.0).compute_time

    g32 = float(jax.grad(time)(jnp.float32(1e10)))
    with jax.enable_x64(True):
        g64 = float(jax.grad(time)(jnp.float64(1e10)))
    assert g64 < 0.0 and g32 == pytest.approx(g64, rel=1e-3)


@functools.cache  # two tests read the FP8 delayed-scaling step (eager, ~1 s each)
def _small_step(precision=None):
    """SMALL's step under PLAN8 (with `precision`, if given) on a DGX H100, by hand."""
    plan = PLAN8 if precision is None else PLAN8.replace(precision=precision)
    return train_step(SMALL, plan, DGX_H100)


def test_recipe_memory_states_and_copies():
    system = DGX_H100
    base = _small_step()
    fp8 = _small_step("fp8_delayed")
    only = train_step(SMALL, PLAN8.replace(precision="fp8_delayed", quantized_params=True),
                      system)
    lean = train_step(SMALL, PLAN8.replace(optimizer_state="bf16", gradients="bf16",
                                           master_weights="bf16"), system)
    # Optimizer: FP32 master + two FP32 moments = 12 B; without a master and BF16 moments 4 B.
    np.testing.assert_allclose(float(lean.optimizer_bytes) / float(base.optimizer_bytes), 4 / 12,
                               rtol=1e-6)
    np.testing.assert_allclose(float(lean.grads_bytes) / float(base.grads_bytes), 0.5, rtol=1e-6)
    # FP8 keeps the 16-bit weights and adds two 1-byte copies of the linear weights; FP8-only
    # weights hold just the two copies, as many bytes as the 16-bit weights ("FP8 training does
    # not always reduce memory"); the saved linear inputs shrink.
    assert float(fp8.weights_bytes) > float(base.weights_bytes) == float(only.weights_bytes)
    nvfp4 = train_step(SMALL, PLAN8.replace(precision="nvfp4", quantized_params=True),
                       SYSTEMS["DGX-B200"])
    assert float(nvfp4.weights_bytes) < float(base.weights_bytes)
    assert float(fp8.activations_bytes) < float(base.activations_bytes)
    assert float(fp8.quantize_time) > 0.0 == float(base.quantize_time)
    wide, wide8 = (train_step(WIDE, PLAN8.replace(precision=p), system)
                   for p in ("bf16", "fp8_delayed"))
    assert float(wide8.step_time) < float(wide.step_time)
    assert float(wide8.energy) < float(wide.energy)


def test_fp8_recipes_order_by_their_quantization_cost():
    times = {p: float(_small_step(p).quantize_time) for p in ("fp8_delayed", "fp8_current")}
    assert times["fp8_delayed"] < times["fp8_current"]  # current scaling reads twice


# ----- errors and infeasibility ------------------------------------------------------------------


def test_bad_precision_names_are_errors_naming_the_field():
    with pytest.raises(ValueError, match=r"TrainingPlan\.precision must be one of .*'nvfp4'"):
        TrainingPlan(precision="fp9")
    with pytest.raises(ValueError, match=r"TrainingPlan\.optimizer_state must be one of"):
        TrainingPlan(optimizer_state="fp8")
    with pytest.raises(ValueError, match=r"InferencePlan\.weights must be one of"):
        InferencePlan(weights="fp3")
    with pytest.raises(ValueError, match=r"InferencePlan\.kv_cache must be one of"):
        InferencePlan(kv_cache="nvfp4")
    with pytest.raises(ValueError, match=r"InferencePlan\.head_weights must be one of"):
        InferencePlan(weights="fp8", activations="fp8", head_weights="fp3")
    with pytest.raises(ValueError, match=r"matrix_rate\.engine must be one of"):
        gemm(H100, 8.0, 8.0, 8.0, engine="fp3")
    with pytest.raises(ValueError, match=r"Chip\.fp4_rate must be finite"):
        H100.replace(fp4_rate=-1.0)


def test_unsupported_serving_combinations_are_errors():
    with pytest.raises(ValueError, match=r"InferencePlan\.activations must be at least as wide"):
        InferencePlan(weights="fp8", activations="nvfp4")
    with pytest.raises(ValueError, match=r"InferencePlan\.weights 'int8' cannot feed the fp8"):
        InferencePlan(weights="int8", activations="fp8")


def test_missing_engine_is_a_reason_inside_a_sweep():
    # FP4 training on chips without (rate 0) and with an FP4 engine, in one vmapped call; MXFP8
    # on Hopper (no block scaling) is flagged whatever its FP8 rate.
    chips = stack_chips([CHIPS["B200"].replace(fp4_rate=0.0), CHIPS["B200"]])
    system = SYSTEMS["DGX-B200"]
    plan = PLAN8.replace(precision="nvfp4")
    reports = jax.jit(jax.vmap(lambda c: train_step(SMALL, plan, system.replace(chip=c))))(chips)
    reasons = np.asarray(reports.reason)
    assert reasons[0] & Reason.PRECISION and not reasons[1] & Reason.PRECISION
    assert np.all(np.isfinite(np.asarray(reports.step_time)))
    hopper = train_step(SMALL, PLAN8.replace(precision="mxfp8"), DGX_H100)
    assert int(hopper.reason) & Reason.PRECISION and not bool(hopper.fits)


# ----- serving ---------------------------------------------------------------------------------

SERVE_MODEL = small_model(seq_len=2048.0)


def _tpot(plan, system=DGX_H100, batch=64.0):
    return decode(SERVE_MODEL, plan.replace(batch=batch), system, 2048.0)


def test_serving_formats_move_time_and_memory():
    bf16 = _tpot(InferencePlan(tp=1.0))
    w8a8 = _tpot(InferencePlan(tp=1.0, weights="fp8", activations="fp8", kv_cache="fp8"))
    w4a16 = _tpot(InferencePlan(tp=1.0, weights="int4"))
    # The layers' weights shrink with the format; the embedding and LM head stay 16-bit
    # (`InferencePlan.head_weights`, as ModelOpt leaves them).
    head = float(SERVE_MODEL.embedding_params) * 2.0
    layers = float(bf16.weight_bytes) - head
    assert float(w8a8.weight_bytes) == pytest.approx(layers / 2 + head, rel=1e-6)
    assert float(w8a8.kv_cache_bytes) == pytest.approx(float(bf16.kv_cache_bytes) / 2, rel=1e-6)
    assert float(w4a16.weight_bytes) == pytest.approx(layers * 4.25 / 16 + head, rel=1e-6)
    # An FP8 head too: every weight halves, and the logits GEMM leaves the 16-bit engine.
    fp8_head = _tpot(InferencePlan(tp=1.0, weights="fp8", activations="fp8", kv_cache="fp8",
                                   head_weights="fp8"))
    assert float(fp8_head.weight_bytes) == pytest.approx(float(bf16.weight_bytes) / 2, rel=1e-6)
    assert float(fp8_head.matmul_time) < float(w8a8.matmul_time)
    assert float(w8a8.time) < float(bf16.time) and float(w4a16.time) < float(bf16.time)


def test_formats_not_native_to_the_chip_pay_their_dequantization():
    # FP8 W8A8 on A100 (no FP8 engine) runs on the 16-bit engine with the weights de-quantized
    # in the kernel: a compute-bound prefill runs at the 16-bit rate (plus the de-quantization),
    # the same plan on a chip with the engine nearly twice as fast.
    from dse.models import prefill

    plan = InferencePlan(tp=1.0, batch=8.0, weights="fp8", activations="fp8")
    a100 = SYSTEMS["DGX-A100"]
    with_engine = a100.replace(chip=a100.chip.replace(fp8_rate=2.0))
    slow = float(prefill(SERVE_MODEL, plan, a100, 4096.0).matmul_time)
    fast = float(prefill(SERVE_MODEL, plan, with_engine, 4096.0).matmul_time)
    bf16 = float(prefill(SERVE_MODEL, InferencePlan(tp=1.0, batch=8.0), a100, 4096.0).matmul_time)
    assert slow == pytest.approx(bf16, rel=0.02) and fast < 0.6 * slow
    kw = dict(bytes_per_element=2.0, weight_bytes_per_element=1.0)
    plain = gemm(a100.chip, 4096.0, 4096.0, 4096.0, **kw)
    dequant = gemm(a100.chip, 4096.0, 4096.0, 4096.0, weight_convert_flops=2.0, **kw)
    assert float(dequant.compute_time) > float(plain.compute_time)
    assert float(dequant.memory_time) == float(plain.memory_time)


# ----- transforms --------------------------------------------------------------------------------

ENGINE_FIELDS = ("fp8_rate", "fp4_rate", "low_precision_efficiency", "fp4_efficiency")


def _train_time(chip, precision):
    return train_step(WIDE, PLAN8.replace(precision=precision),
                      SYSTEMS["DGX-B200"].replace(chip=chip)).step_time


def _serve_time(chip):
    plan = InferencePlan(tp=1.0, weights="nvfp4", activations="nvfp4", kv_cache="fp8")
    return serve(SERVE_MODEL, plan, SYSTEMS["DGX-B200"].replace(chip=chip).with_num_chips(1),
                 16.0, 512.0, 64.0).total_latency


@pytest.mark.parametrize("objective", ["train_fp8", "train_nvfp4", "serve_nvfp4"])
def test_engine_fields_jit_vmap_and_differentiate(objective):
    f = {"train_fp8": lambda c: _train_time(c, "fp8_current"),
         "train_nvfp4": lambda c: _train_time(c, "nvfp4"), "serve_nvfp4": _serve_time}[objective]
    rng = np.random.default_rng(0)
    chips = [CHIPS["B200"].replace(fp8_rate=rng.uniform(1.0, 4.0), fp4_rate=rng.uniform(4.0, 8.0),
                                   low_precision_efficiency=rng.uniform(0.8, 1.0),
                                   fp4_efficiency=rng.uniform(0.5, 1.0)) for _ in range(3)]
    # Two compiled programs show all three transforms: jit(vmap(value_and_grad)) in float32
    # and jit(value_and_grad) in float64, which the finite differences reuse.
    values, grads = jax.jit(jax.vmap(jax.value_and_grad(f)))(stack_chips(chips))
    assert all(np.all(np.isfinite(np.asarray(getattr(grads, k)))) for k in ENGINE_FIELDS)
    value_and_grad = jax.jit(jax.value_and_grad(f))
    with jax.enable_x64(True):
        chip64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), chips[0])
        value64, grad64 = value_and_grad(chip64)
        np.testing.assert_allclose(float(values[0]), float(value64), rtol=2e-5)
        relevant = {"train_fp8": ("fp8_rate", "low_precision_efficiency"),
                    "train_nvfp4": ("fp4_rate", "fp4_efficiency"),
                    "serve_nvfp4": ("fp4_rate", "fp4_efficiency")}[objective]
        for field in relevant:
            x0 = float(getattr(chip64, field))
            numeric = central_difference(lambda x, field=field: float(value_and_grad(
                chip64.replace(**{field: x}))[0]), x0)
            analytic = float(getattr(grad64, field))
            assert numeric < 0.0  # a faster engine never slows the step
            assert analytic == pytest.approx(numeric, rel=1e-4), field



# Every precision field of the chip, each with an objective it moves: the engines' rates cost
# area and watts at a mixed activity; W8A8 INT8 and MXFP6 prefill runs on the INT8 / FP6
# engines; a 16-bit element-wise op runs at the packed vector rate.
_BUSY = Activity(compute=0.5, vector=0.5, fp8=0.5, fp6=0.5, fp4=0.5, int8=0.5)


def _area_watts(chip):
    return area(chip).total + power(chip, _BUSY).total


def _prefill_time(chip, fmt):
    from dse.models import prefill

    plan = InferencePlan(tp=1.0, batch=8.0, weights=fmt, activations=fmt)
    system = SYSTEMS["DGX-B200"].replace(chip=chip).with_num_chips(1)
    return prefill(SERVE_MODEL, plan, system, 4096.0).time


def _int8_prefill_time(chip):
    return _prefill_time(chip, "int8")


def _mxfp6_prefill_time(chip):
    return _prefill_time(chip, "mxfp6")


def _vector_time(chip):
    from dse.models import elementwise

    return elementwise(chip, 1e9, flops_per_element=8.0, reads=0.0, writes=0.0).compute_time


_FIELD_OBJECTIVES = {
    # field: (objective, sign of d objective / d field)
    "fp8_rate": (_area_watts, +1.0),
    "fp6_rate": (_area_watts, +1.0),
    "fp4_rate": (_area_watts, +1.0),
    "int8_rate": (_area_watts, +1.0),
    "int8_rate/prefill": (_int8_prefill_time, -1.0),
    "fp6_rate/prefill": (_mxfp6_prefill_time, -1.0),
    "low_precision_efficiency": (_int8_prefill_time, -1.0),
    "vector_16bit_rate": (_vector_time, -1.0),
}


@functools.cache
def _field_programs(f):
    """jit(vmap(value_and_grad(f))) and jit(value_and_grad(f)), built once per objective: the
    fields that share one (four the area and watts, two the INT8 prefill) share its traced and
    compiled programs instead of tracing them again (~1-2 s each)."""
    return jax.jit(jax.vmap(jax.value_and_grad(f))), jax.jit(jax.value_and_grad(f))


@pytest.mark.parametrize("key", list(_FIELD_OBJECTIVES))
def test_every_precision_field_jits_vmaps_and_differentiates(key):
    field = key.split("/")[0]
    f, sign = _FIELD_OBJECTIVES[key]
    rng = np.random.default_rng(1)
    low, high = (0.6, 0.95) if field == "low_precision_efficiency" else (1.5, 3.5)
    base = CHIPS["B200"].replace(int8_rate=2.0)  # an INT8 engine for the W8A8 objectives
    chips = [base.replace(**{field: float(x)}) for x in rng.uniform(low, high, size=3)]
    # Two compiled programs show all three transforms: jit(vmap(value_and_grad)) in float32
    # and jit(value_and_grad) in float64 (one design at a time, reused by the differences).
    batched, value_and_grad = _field_programs(f)
    values, grads = batched(stack_chips(chips))
    assert np.all(np.isfinite(np.asarray(getattr(grads, field))))
    with jax.enable_x64(True):
        chips64 = [jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), c) for c in chips]
        one_by_one = np.array([float(value_and_grad(c)[0]) for c in chips64])
        np.testing.assert_allclose(np.asarray(values), one_by_one, rtol=2e-5)
        assert len(set(one_by_one.round(9))) == 3  # the field moves the objective
        chip64 = chips64[0]
        analytic = float(getattr(value_and_grad(chip64)[1], field))
        x0 = float(getattr(chip64, field))
        numeric = central_difference(
            lambda x: float(value_and_grad(chip64.replace(**{field: x}))[0]), x0)
        assert sign * numeric > 0.0
        assert analytic == pytest.approx(numeric, rel=1e-4)


# ----- published FP8 / BF16 step-time ratios ----------------------------------------------------

_PAIRS = {p.pair_id: p for p in precision_pairs()}
_MISSES = {
    "llmf_h100_mpt-1b_512": "-9.5%: a 1B model at 512 tokens; small GEMMs' FP8 efficiency",
    "torchao_mi300x_llama3-8b_tensorwise": "+19.4%: with AMD's measured max-achievable FP8 "
                                           "/ BF16 rates (hipBLASLt 1273 / 708 TFLOP/s; "
                                           "+27.6% at an ideal FP8 engine); torchao's FP8 "
                                           "path on ROCm gains 1.15x",
    "torchao_b200_llama3-8b_mxfp8": "+11.3%: the model puts MXFP8 1% behind FP8 current "
                                    "scaling; torchao measured 4% behind on 'power limited' "
                                    "B200s (its FP8 tensorwise ratio is within 8%)",
}


# The misses are reported by benchmarks/validate_precision.py; not re-run here (suite time).
@pytest.mark.parametrize("pair_id", [
    pytest.param(k, marks=pytest.mark.xfail(run=False, reason=_MISSES[k])) if k in _MISSES
    else k for k, p in _PAIRS.items() if p.versus_bf16])
def test_fp8_bf16_step_time_ratio_of_published_pairs_within_8_percent(pair_id):
    pair = _PAIRS[pair_id]
    ratio = predicted_ratio(pair)
    assert abs(ratio / pair.measured - 1) <= 0.08, (ratio, pair.measured)


def test_candidate_plans_by_hand_match_the_traced_search_and_flag_a_broken_one():
    # The pairs' predictions evaluate their candidate plans by hand: the plans broadcast
    # through one step (not an eager vmap). Every report field equals the jitted, vmapped
    # evaluation, for the row's own candidate and for one that breaks a rule (TP 3: tp * pp *
    # dp is not the chip count), which is flagged as inside jit, while the same plan alone by
    # hand is an error. The candidate batch has the shape the pairs above already ran.
    case = _PAIRS["llmf_h100_mpt-3b_8192"].baseline
    plans = case.plans[0]
    broken = plans.replace(tp=jnp.full_like(plans.tp, 3.0))
    evaluate = jax.jit(lambda p: evaluate_plans(case.model, p, case.system))
    for batch in (plans, broken):
        by_hand = evaluate_plans(case.model, batch, case.system)
        traced = evaluate(batch)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(traced),
                                jax.tree.leaves(by_hand), strict=True):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                                       err_msg=jax.tree_util.keystr(path))
    assert int(by_hand.reason[0]) & int(Reason.CHIPS) and not bool(by_hand.fits[0])
    with pytest.raises(ValueError, match="TrainingPlan.tp"):
        train_step(case.model, jax.tree.map(lambda x: x[0], broken), case.system)


# ----- the explorer moves the engines ----------------------------------------------------------


def test_optimize_grows_the_fp4_engine_to_its_area_budget():
    # Maximize the FP4 peak of a B200-class chip under an area budget 60 mm^2 above the chip
    # without an FP4 engine: area is linear in the FP4 rate above the FP8 one (2), so the
    # optimum spends the whole budget on FP4 MACs: rate 2 + 60 / (mm^2 per unit of rate).
    import dse

    chip = CHIPS["B200"].replace(fp4_rate=0.0)
    a0 = float(area(chip).total)
    slope = float(area(chip.replace(fp4_rate=3.0)).total) - float(area(chip.replace(
        fp4_rate=2.0)).total)
    space = dse.Space(chip, {"fp4_rate": ("linear", 0.0, 8.0)})
    res = dse.optimize(lambda c: {"fp4_peak": c.matrix_peak("fp4") / 1e15,
                                  "area": area(c).total},
                       space, objectives={"fp4_peak": "max"}, budgets={"area": a0 + 60.0},
                       n_preferences=2, n_starts=1, outer_steps=12, inner_steps=80,
                       learning_rate=0.1, n_pilot=16, progress=False)
    assert res.status == "ok"
    best = res.front[0]
    # Within 3% of the optimum's FP4 MACs, from below (the search aims 0.1% inside the budget,
    # and the exact check never lets a design past it).
    extra = res.x[best][0] - 2.0
    assert 0.97 * 60.0 / slope <= extra <= 60.0 / slope
    assert res.metrics["area"][best] <= a0 + 60.0


def test_configs_name_the_precision_and_its_errors(tmp_path):
    from helpers import REPO

    from dse._study import ConfigError, load_study

    train = (REPO / "examples" / "h100_gpt3_training.toml").read_text()
    serve_cfg = (REPO / "examples" / "h100_llama70b_inference.toml").read_text()
    ok = tmp_path / "fp8.toml"
    ok.write_text(train.replace('global_batch = 1536', 'global_batch = 1536\n'
                                'precision = "fp8_current"'))
    assert load_study(ok).plan.precision == "fp8_current"
    bad = tmp_path / "bad.toml"
    bad.write_text(train.replace('global_batch = 1536', 'global_batch = 1536\nprecision = "fp9"'))
    with pytest.raises(ConfigError, match=r"workload\.precision.*TrainingPlan\.precision"):
        load_study(bad)
    w4 = tmp_path / "w4.toml"
    w4.write_text(serve_cfg.replace('output_len = 256', 'output_len = 256\nweights = "int4"\n'
                                    'kv_cache = "fp8"'))
    plan = load_study(w4).plan
    assert (plan.weights, plan.activations, plan.kv_cache) == ("int4", "bf16", "fp8")
    w4.write_text(serve_cfg.replace('output_len = 256', 'output_len = 256\nweights = "fp3"'))
    with pytest.raises(ConfigError, match=r"workload\.weights"):
        load_study(w4)


def test_vector_units_run_16_bit_data_at_their_packed_rate():
    from dse.models import elementwise

    a100 = CHIPS["A100-80GB"]  # BF16 non-tensor 39 TFLOP/s, FP32 19.5
    kw = dict(flops_per_element=8.0, reads=0.0, writes=0.0)
    bf16 = elementwise(a100, 1e9, bytes_per_element=2.0, **kw)
    fp32 = elementwise(a100, 1e9, bytes_per_element=4.0, **kw)
    overhead = float(DEFAULT.memory_overhead_s)
    assert float(bf16.compute_time) - overhead == pytest.approx(8e9 / 39e12, rel=1e-4)
    assert float(fp32.compute_time) - overhead == pytest.approx(8e9 / 19.5e12, rel=1e-4)


def test_inference_plan_widths_follow_its_formats_unless_given():
    # The storage widths default to the formats' (NVFP4: 4-bit elements and one E4M3 scale per
    # 16: 0.5625 B), an explicit width overrides storage only (issue 16's search over widths),
    # and a new format brings its own width.
    plan = InferencePlan(tp=2.0, weights="nvfp4", activations="nvfp4", kv_cache="fp8")
    assert float(plan.weight_bytes) == 0.5625 and float(plan.kv_bytes) == 1.0
    assert float(InferencePlan(weight_bytes=1.0).weight_bytes) == 1.0
    moved = InferencePlan(tp=2.0).replace(weights="fp8", activations="fp8")
    assert float(moved.weight_bytes) == 1.0 and float(moved.kv_bytes) == 2.0
    assert float(moved.replace(tp=4.0).weight_bytes) == 1.0
