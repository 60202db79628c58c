"""Operators: SRAM-dependent GEMM traffic, attention, element-wise ops, efficiency fit."""

import csv

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference, data_dir

from dse.calibration import OPERATOR_FIELDS, fit_operator_efficiency
from dse.calibration._operator_data import model_times, operator_rows
from dse.hardware import Chip, stack_chips
from dse.models import DEFAULT
from dse.models._operators import (
    SMOOTH_MAX_P,
    attention,
    attention_backward,
    ceil_straight_through,
    elementwise,
    gemm,
    gemm_traffic_elements,
    roofline,
    wave_efficiency,
)

# A100-like chip (NVIDIA A100 whitepaper: 312 TFLOP/s dense BF16 at 1.41 GHz, 19.5 TFLOP/s FP32,
# 40 MB L2 + 108 x 164 KB smem, 2.0 TB/s HBM2e, 80 GB, 12 NVLink 3 links of 25 GB/s).
A100 = dict(mac_units=110592.0, clock_hz=1.41e9, vector_flops=19.5e12, sram_bytes=57.3e6,
            hbm_bandwidth=2.0e12, hbm_bytes=80e9, link_count=12.0, link_bandwidth=25e9,
            node_nm=7.0, core_count=108.0, hbm_generation="HBM2e")

GRAD_FIELDS = ("mac_units", "clock_hz", "vector_flops", "sram_bytes", "hbm_bandwidth")

OPS = {
    "gemm_prefill": lambda c, s: gemm(c, 4096.0, 12288.0, 12288.0, smooth=s),
    "gemm_decode": lambda c, s: gemm(c, 8.0, 12288.0, 12288.0, smooth=s),
    "gemm_int8": lambda c, s: gemm(c, 64.0, 3000.0, 5000.0, weight_bytes_per_element=1.0,
                                   smooth=s),
    "attention_prefill": lambda c, s: attention(c, 4.0, 32.0, 8.0, 4096.0, 4096.0, 128.0,
                                                smooth=s),
    "attention_decode": lambda c, s: attention(c, 16.0, 32.0, 8.0, 1.0, 8000.0, 128.0,
                                               smooth=s),
    "attention_backward": lambda c, s: attention_backward(c, 2.0, 16.0, 16.0, 2048.0, 2048.0,
                                                          128.0, smooth=s),
    "elementwise": lambda c, s: elementwise(c, 1e8, flops_per_element=5.0, reads=2.0,
                                            smooth=s),
}


def a100(**changes):
    return Chip(**(A100 | changes))


def random_chip(rng):
    # Log-uniform within a factor 4 of the A100 in every continuous field the ops read.
    scale = {f: float(np.exp(rng.uniform(np.log(0.25), np.log(4.0)))) for f in GRAD_FIELDS}
    return a100(**{f: A100[f] * scale[f] for f in GRAD_FIELDS})


def test_gemm_traffic_bounds_and_monotone_in_sram():
    m, n, k = 8192.0, 8192.0, 8192.0
    compulsory = m * k + k * n + m * n
    sram = jnp.logspace(3, 9, 200)
    a, b, c = gemm_traffic_elements(m, n, k, sram)
    total = np.asarray(a + b + c)
    assert np.all(total >= compulsory * (1 - 1e-6))
    assert np.all(np.diff(total) <= 1e-6 * total[:-1])
    # Whole output resident: the compulsory minimum.
    np.testing.assert_allclose(total[-1], compulsory, rtol=1e-6)
    # Small SRAM: the tight bound 2 m n k / sqrt(S) + m n (Kwasniewski et al. 2019, Thm. 1).
    s = 1e4
    a, b, c = gemm_traffic_elements(m, n, k, s)
    np.testing.assert_allclose(float(a + b + c), 2 * m * n * k / np.sqrt(s) + m * n, rtol=1e-5)


def test_gemm_traffic_skinny_reads_weights_once():
    # Decode: 8 rows. The weights are read exactly once once 8 rows x some columns fit.
    a, b, c = gemm_traffic_elements(8.0, 12288.0, 12288.0, 1e6)
    np.testing.assert_allclose(float(b), 12288.0 * 12288.0, rtol=1e-6)
    assert float(a) >= 8.0 * 12288.0


def test_weights_resident_cut_hbm_traffic():
    chip = a100()
    base = gemm(chip, 8.0, 4096.0, 4096.0)
    resident = gemm(chip, 8.0, 4096.0, 4096.0, weight_resident_fraction=1.0)
    assert float(resident.hbm_bytes) < 0.01 * float(base.hbm_bytes)
    assert float(resident.time) < float(base.time)


def test_gemm_large_is_compute_bound_and_small_m_memory_bound():
    chip = a100()
    big = gemm(chip, 8192.0, 8192.0, 8192.0)
    assert float(big.compute_time) > float(big.memory_time)
    skinny = gemm(chip, 1.0, 8192.0, 8192.0)
    assert float(skinny.memory_time) > float(skinny.compute_time)
    np.testing.assert_allclose(float(big.flops), 2 * 8192.0**3)


@pytest.mark.parametrize("name", sorted(OPS))
def test_more_bandwidth_sram_or_compute_is_never_slower(name):
    rng = np.random.default_rng(0)
    op = OPS[name]
    for _ in range(10):
        chip = random_chip(rng)
        t0 = float(op(chip, False).time)
        for field in ("sram_bytes", "hbm_bandwidth", "mac_units", "vector_flops"):
            faster = chip.replace(**{field: getattr(chip, field) * 1.7})
            assert float(op(faster, False).time) <= t0 * (1 + 1e-6), field


@pytest.mark.parametrize("name", sorted(OPS))
def test_jit_vmap_over_chips(name):
    op = OPS[name]
    rng = np.random.default_rng(1)
    chips = [random_chip(rng) for _ in range(5)]
    batch = stack_chips(chips)
    batched = jax.jit(jax.vmap(lambda c: op(c, False)))(batch)
    loop = np.array([float(op(c, False).time) for c in chips])
    np.testing.assert_allclose(np.asarray(batched.time), loop, rtol=1e-5)
    # Broadcasting a batched Chip directly also works (no vmap).
    np.testing.assert_allclose(np.asarray(op(batch, False).time), loop, rtol=1e-5)


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("name", sorted(OPS))
def test_gradients_match_finite_differences(name, smooth):
    op = OPS[name]
    rng = np.random.default_rng(2)
    # Jitted: one program for the time and one for its gradient serve every chip and shifted
    # copy (op by op, each of the ~50 evaluations dispatches every operation again).
    time = jax.jit(lambda c: op(c, smooth).time)
    gradient = jax.jit(jax.grad(lambda c: op(c, smooth).time))
    with jax.enable_x64(True):
        for _ in range(3):
            chip = random_chip(rng)
            grads = gradient(chip)
            for field in GRAD_FIELDS:
                x0 = float(getattr(chip, field))

                def f(x, field=field, chip=chip):
                    return float(time(chip.replace(**{field: x})))

                g = float(getattr(grads, field))
                fd = central_difference(f, x0)
                assert np.isfinite(g)
                # Elasticities below 1e-8 are under the finite difference round-off: absolute test.
                np.testing.assert_allclose(g, fd, rtol=1e-4, atol=1e-8 * abs(f(x0)) / x0)


def test_roofline_smooth_bounds_and_zero():
    c = jnp.array([1.0, 2.0, 0.0, 3.0])
    m = jnp.array([1.0, 0.5, 0.0, 0.0])
    hard = roofline(c, m)
    soft = roofline(c, m, smooth=True)
    assert np.all(np.asarray(soft) >= np.asarray(hard))
    assert np.all(np.asarray(soft) <= np.asarray(hard) * 2 ** (1 / SMOOTH_MAX_P) + 1e-7)
    assert float(soft[2]) == 0.0
    g = jax.grad(lambda x: roofline(x, 0.0, smooth=True))(0.0)
    assert np.isfinite(float(g))


def _primitives(jaxpr):
    """Every primitive of a jaxpr, nested calls (custom_jvp, pjit) included."""
    for eqn in jaxpr.eqns:
        yield eqn.primitive.name
        for param in eqn.params.values():
            inner = getattr(param, "jaxpr", None)
            if inner is not None:
                yield from _primitives(getattr(inner, "jaxpr", inner))


def test_smooth_roofline_is_the_p_norm_without_a_general_power():
    # (c^8 + m^8)^(1/8) at the crossover and away from it, in float64.
    c = np.array([1.0, 2.0, 3e-3, 7.0])
    m = np.array([1.0, 0.5, 4e-3, 1e-9])
    want = (c ** 8 + m ** 8) ** (1 / 8)
    with jax.enable_x64(True):
        got = roofline(jnp.asarray(c), jnp.asarray(m), smooth=True)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-14)
        # Integer powers and square roots only: a float `pow` per term made a vmapped smooth
        # train_step 16x slower on the CPU (benchmarks/sweep_throughput.py's kernel).
        prims = set(_primitives(jax.make_jaxpr(
            lambda a, b: roofline(a, b, smooth=True))(jnp.asarray(c), jnp.asarray(m)).jaxpr))
    assert "pow" not in prims and {"integer_pow", "sqrt"} <= prims


def test_attention_gqa_reads_less_kv_and_causal_halves_flops():
    chip = a100()
    mha = attention(chip, 16.0, 32.0, 32.0, 1.0, 8192.0, 128.0)
    gqa = attention(chip, 16.0, 32.0, 8.0, 1.0, 8192.0, 128.0)
    np.testing.assert_allclose(float(mha.flops), float(gqa.flops))
    # KV traffic dominates decode: a quarter of the KV heads, about a quarter of the bytes.
    np.testing.assert_allclose(float(gqa.hbm_bytes) / float(mha.hbm_bytes), 0.25, rtol=0.01)
    full = attention(chip, 1.0, 8.0, 8.0, 4096.0, 4096.0, 128.0, causal=False)
    causal = attention(chip, 1.0, 8.0, 8.0, 4096.0, 4096.0, 128.0, causal=True)
    np.testing.assert_allclose(float(causal.flops) / float(full.flops), 0.5, rtol=1e-3)
    back = attention_backward(chip, 1.0, 8.0, 8.0, 4096.0, 4096.0, 128.0, causal=True)
    np.testing.assert_allclose(float(back.flops) / float(causal.flops), 2.5, rtol=1e-6)


def test_attention_kv_traffic_falls_with_sram_to_one_pass():
    sizes = [1e5, 1e6, 1e7, 1e8, 1e10]
    traffic = [float(attention(a100(sram_bytes=s), 1.0, 32.0, 32.0, 8192.0, 8192.0, 128.0,
                               causal=False).hbm_bytes) for s in sizes]
    assert all(b <= a for a, b in zip(traffic, traffic[1:], strict=False))
    # Everything on chip: Q, K, V read once, O written once.
    np.testing.assert_allclose(traffic[-1], 4 * 32 * 8192 * 128 * 2.0, rtol=1e-6)


def test_elementwise_bytes_and_memory_bound():
    cost = elementwise(a100(), 1e9, reads=2.0, writes=1.0, bytes_per_element=2.0)
    np.testing.assert_allclose(float(cost.hbm_bytes), 6e9)
    assert float(cost.memory_time) > float(cost.compute_time)


def test_zero_size_op_costs_nothing():
    cost = gemm(a100(), 0.0, 128.0, 128.0)
    assert float(cost.time) == 0.0


def test_jit_does_not_recompile():
    chip = a100()
    f = jax.jit(lambda c: gemm(c, 1024.0, 1024.0, 1024.0).time)
    f(chip)
    before = f._cache_size()
    f(chip.replace(sram_bytes=1e6))
    assert f._cache_size() == before


def test_fit_reproduces_stored_constants():
    refit = fit_operator_efficiency(data_dir())
    for name in OPERATOR_FIELDS:
        np.testing.assert_allclose(refit[name], float(getattr(DEFAULT, name)), rtol=2e-3,
                                   err_msg=name)


def test_fitted_model_matches_a100_prefill_gemms():
    # Fit data: LLMCompass A100 per-op GEMM latencies (inference_runs.csv) within 5% each.
    points = [p for p in operator_rows(data_dir())
              if p[0].startswith("prefill") and p[2] == "gemm"]
    with jax.enable_x64(True):
        model = model_times(tuple(float(getattr(DEFAULT, n)) for n in OPERATOR_FIELDS), points)
    measured = np.array([p[-1] for p in points])
    assert np.max(np.abs(model / measured - 1)) < 0.05


@pytest.mark.parametrize("name,peak,clock,mamf", [
    # Out of sample: measured max-achievable bf16 matmul (chips.csv, stas00/ml-engineering).
    ("NVIDIA H100 SXM5 80GB", 989.4, 1.83, 794.5),
    ("NVIDIA B200 SXM 180GB", 2250.0, 1.965, 1745.0),
])
def test_large_gemm_efficiency_out_of_sample(name, peak, clock, mamf):
    with open(data_dir() / "chips.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert float(rows[name]["measured_max_matmul_bf16_tflops"]) == mamf
    chip = a100(mac_units=peak * 1e12 / (2 * clock * 1e9), clock_hz=clock * 1e9,
                hbm_bandwidth=float(rows[name]["hbm_bw_gbps"]) * 1e9)
    n = 8192.0
    achieved = 2 * n**3 / float(gemm(chip, n, n, n).time) / 1e12
    # One universal curve fitted on A100 data; NVIDIA's newer parts reach a lower fraction of
    # peak, so the tolerance is wide and stated: 15%.
    assert abs(achieved / mamf - 1) < 0.15


def test_grad_is_a_chip():
    grads = jax.grad(lambda c: gemm(c, 512.0, 512.0, 512.0).time)(a100())
    assert isinstance(grads, Chip)
    assert eqx.tree_equal(jax.tree.structure(grads), jax.tree.structure(a100()))


# ----- tile and wave quantization --------------------------------------------------------------

# H100 SXM5: 132 SMs enabled (NVIDIA H100 Tensor Core GPU Architecture whitepaper, "H100 SXM5
# ... 132 SMs"); the A100-like chip above with that core count.
H100_SMS = 132.0


def _h100_like():
    return a100(core_count=H100_SMS)


def _feed(tm, tn):
    # L2-feed rate of a tm x tn tile relative to the SM's matrix rate (MAC per loaded element
    # over the 43.2 of the A100 whitepaper's 5120 B/clk L2 against 1024 MAC/clk/SM).
    return min(1.0, tm * tn / (tm + tn) / (1024.0 / (5120.0 / 108.0 / 2.0)))


def test_wave_quantization_one_wave_and_a_bit_more():
    chip = _h100_like()
    # 3072 x 1408 = 12 x 11 tiles of 256 x 128: 132 tiles, exactly one wave of 132 SMs.
    np.testing.assert_allclose(float(wave_efficiency(chip, 3072.0, 1408.0)), 1.0, rtol=1e-6)
    # 3072 x 1536: 144 tiles of 256 x 128 take 2 waves (144 / 264 = 55% useful); 288 of
    # 128 x 128 take 3 (73%); 576 of 128 x 64 take 5 (87%), at 98.8% of the SM's rate (42.7 MAC
    # per loaded element against the 43.2 the L2 feeds): the kernel picks 128 x 64.
    best = 576 / 660 * _feed(128.0, 64.0)
    np.testing.assert_allclose(float(wave_efficiency(chip, 3072.0, 1536.0)), best, rtol=1e-6)
    # The same GEMM with 9% more output is that much slower per FLOP when compute-bound.
    k = 16384.0
    full, over = gemm(chip, 3072.0, 1408.0, k), gemm(chip, 3072.0, 1536.0, k)
    assert float(full.compute_time) > float(full.memory_time)
    per_flop = (float(over.time) / float(over.flops)) / (float(full.time) / float(full.flops))
    np.testing.assert_allclose(per_flop, 1.0 / best, rtol=0.01)
    # On the A100's 108 SMs: 288 tiles of 128 x 128 fill 3 waves of 108 (89%), at full rate.
    np.testing.assert_allclose(float(wave_efficiency(a100(), 3072.0, 1536.0)), 288 / 324,
                               rtol=1e-6)


def test_tile_choice_narrow_gemm_takes_small_tiles_at_their_feed_rate():
    chip = a100()
    # 64 x 4096 (a decode-sized or DLRM-sized GEMM): 256 x 128 tiles clip to 64 x 128, 32 tiles
    # on 108 SMs (30%); 64 x 64 tiles make 64 (59%) at 32 MAC per element (74% rate): 44%.
    eff = float(wave_efficiency(chip, 64.0, 4096.0))
    np.testing.assert_allclose(eff, 64 / 108 * _feed(64.0, 64.0), rtol=1e-6)
    assert eff > 32 / 108 * _feed(64.0, 128.0)
    # A large GEMM keeps the big tiles (the measured best-GEMM shape, 1024 x 10240: 320 tiles
    # of 256 x 128 or 640 of 128 x 128 in 3 or 6 waves, 98.8%).
    np.testing.assert_allclose(float(wave_efficiency(chip, 1024.0, 10240.0)), 320 / 324,
                               rtol=1e-6)
    # No tile choice beats the ideal, and the efficiency never rises above 1.
    effs = np.asarray(wave_efficiency(chip, jnp.array([1.0, 64.0, 777.0, 8192.0]),
                                      jnp.array([8192.0, 4096.0, 1000.0, 8192.0])))
    assert np.all(effs > 0) and np.all(effs <= 1.0 + 1e-6)


def test_wave_quantization_small_and_spatial():
    # A 1-row GEMV runs 1-row tiles (no padding to 256 rows), 64 wide: 8192 / 64 = 128 tiles on
    # 132 SMs, each fed 64 / 65 MAC per loaded element: L2-bound at 2.3% of the SM's rate (the
    # op is HBM-bound long before that matters).
    np.testing.assert_allclose(float(wave_efficiency(_h100_like(), 1.0, 8192.0)),
                               128 / 132 * _feed(1.0, 64.0), rtol=1e-6)
    # Spatial chips (systolic arrays, compiler-partitioned ops): no wave model, 1.
    tpu_like = a100(core_count=2.0).replace(core_kind="spatial")
    np.testing.assert_allclose(float(wave_efficiency(tpu_like, 3072.0, 1536.0)), 1.0)


def test_batched_weight_gradient_fills_the_waves_with_its_groups():
    # Megatron's unfused attention dK: 64 groups (b x heads) of a 128 x 2048 output each.
    # Counted as one 128 x 2048 output it is at best 64 tiles of 64 x 64 on 108 SMs at their 74%
    # feed rate; as 64 groups, 2048 tiles of 128 x 64 in 19 waves of 108 (2048 / 2052 useful, at
    # 98.8% feed; 1024 tiles of 128 x 128 would leave 1024 / 1080 useful).
    chip = a100()
    one_eff = 64 / 108 * _feed(64.0, 64.0)
    np.testing.assert_allclose(float(wave_efficiency(chip, 128.0, 2048.0)), one_eff,
                               rtol=1e-6)
    np.testing.assert_allclose(float(wave_efficiency(chip, 128.0, 2048.0, 64.0)),
                               2048 / 2052 * _feed(128.0, 64.0), rtol=1e-6)
    one = gemm(chip, 128.0, 2048.0, 64.0 * 2048.0)
    grouped = gemm(chip, 128.0, 2048.0, 64.0 * 2048.0, output_groups=64.0)
    np.testing.assert_allclose(float(grouped.flops), float(one.flops))
    assert float(grouped.compute_time) < 0.55 * float(one.compute_time)


@jax.jit
@jax.vmap
def _wave_grads(cores, m):
    def time(cores_, m_):
        return gemm(_h100_like().replace(core_count=cores_), m_, 1536.0, 4096.0).time
    return jax.grad(time, argnums=(0, 1))(cores, m)


@pytest.mark.parametrize("x64", [False, True])
def test_wave_quantization_jit_vmap_grad_finite(x64):
    # Straight-through derivative: finite at, below and above the wave steps, in both dtypes;
    # more rows cost more time. (At a fixed MAC count, more cores only leave more slots of the
    # last wave idle: d time / d cores >= 0.)
    with jax.enable_x64(x64):
        cores = jnp.array([132.0, 132.0, 131.0, 144.0, 108.0])
        m = jnp.array([3072.0, 2816.0, 3073.0, 1.0, 8192.0])
        d_cores, d_m = _wave_grads(cores, m)
        assert d_m.dtype == (jnp.float64 if x64 else jnp.float32)
        assert np.all(np.isfinite(np.asarray(d_cores))) and np.all(np.isfinite(np.asarray(d_m)))
        assert np.all(np.asarray(d_m) > 0) and np.all(np.asarray(d_cores) >= -1e-15)
    # The step itself: exact value, derivative 1.
    assert float(ceil_straight_through(2.01)) == 3.0
    assert float(jax.grad(ceil_straight_through)(2.01)) == 1.0
