"""Space: validation, sampling (Sobol' = scipy's, LHS strata, grid), bijections, build."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import qmc

from dse import Param, Space
from dse.hardware import Chip, System


def a100_like() -> Chip:
    # A100 SXM4 80GB public spec: 312 TFLOP/s dense BF16 at 1.41 GHz -> 110592 MAC/cycle;
    # 19.5 TFLOP/s FP32 vector; 40 MB L2 + 108 x 192 KB L1/shared; 2.0 TB/s HBM2e, 80 GB;
    # 12 NVLink3 links at 25 GB/s per direction.
    return Chip(mac_units=110592, clock_hz=1.41e9, vector_flops=19.5e12, sram_bytes=57.3e6,
                hbm_bandwidth=2.0e12, hbm_bytes=80e9, link_count=12, link_bandwidth=25e9,
                node_nm=7, core_count=108, hbm_generation="HBM2e")


def dgx_like() -> System:
    # DGX A100: 8 GPUs per NVSwitch domain, 8 x 200 Gb/s HDR InfiniBand per 8 GPUs = 25 GB/s
    # per GPU; latencies are order-of-magnitude test values (not a model input).
    return System(chip=a100_like(), num_chips=64, scaleup_size=8, scaleup_latency=1e-6,
                  scaleout_bandwidth=25e9, scaleout_latency=5e-6)


def chip_space() -> Space:
    return Space(a100_like(), [
        Param("sram", "sram_bytes", 1e6, 1e9, "log"),
        Param("links", "link_count", 4, 18, "integer"),
        Param("hbm_bw", "hbm_bandwidth", 1e12, 4e12, "linear"),
    ])


def test_dict_form_and_attributes():
    space = Space(dgx_like(), {"chip.sram_bytes": ("log", 1e6, 1e9),
                               "bw": ("scaleout_bandwidth", "linear", 1e9, 1e11)})
    assert space.names == ("chip.sram_bytes", "bw")
    assert space.fields == ("chip.sram_bytes", "scaleout_bandwidth")
    assert space.dim == 2
    np.testing.assert_array_equal(space.lower, [1e6, 1e9])
    np.testing.assert_array_equal(space.upper, [1e9, 1e11])
    np.testing.assert_array_equal(space.is_log, [True, False])
    with pytest.raises(AttributeError):
        space.dim = 3


@pytest.mark.parametrize("params, message", [
    ([Param("x", "sram_bytez", 1, 2)], "unknown field 'sram_bytez'"),
    ([Param("x", "chip.sram_bytes", 1, 2)], "Chip has no field 'chip'"),
    ([Param("x", "hbm_generation", 1, 2)], "static"),
    ([Param("x", "sram_bytes", 0, 2e6)], "Chip.sram_bytes must be finite and in [1024, "),
    ([Param("x", "node_nm", 1, 300)], "node_nm"),
    ([Param("x", "sram_bytes", 1, 2), Param("x", "hbm_bytes", 1, 2)], "duplicate parameter name"),
    ([Param("x", "sram_bytes", 1, 2), Param("y", "sram_bytes", 1, 2)],
     "duplicate parameter field"),
    ([], "at least one parameter"),
    ({"sram_bytes": ("log", 1e6)}, "expected (scale, low, high)"),
])
def test_bad_space_raises_naming_the_problem(params, message):
    with pytest.raises(ValueError) as err:
        Space(a100_like(), params)
    assert message in str(err.value)


def test_static_and_module_fields_of_a_system_are_rejected():
    with pytest.raises(ValueError, match="'num_chips' is static"):
        Space(dgx_like(), [Param("n", "num_chips", 8, 64)])
    with pytest.raises(ValueError, match="is a Chip, not an array"):
        Space(dgx_like(), [Param("c", "chip", 8, 64)])


@pytest.mark.parametrize("kwargs, message", [
    (dict(low=2.0, high=1.0), "inverted bounds, low=2 > high=1"),
    (dict(low=1.0, high=1.0), "empty bounds"),
    (dict(low=0.0, high=1.0, scale="log"), "log scale needs low > 0; got low=0"),
    (dict(low=-1.0, high=1.0, scale="log"), "log scale needs low > 0"),
    (dict(low=0.5, high=3.0, scale="integer"), "integer scale needs integer bounds"),
    (dict(low=float("nan"), high=3.0), "low must be finite"),
    (dict(low=1.0, high=3.0, scale="cubic"), "scale must be one of"),
    (dict(low=True, high=3.0), "low must be a number"),
])
def test_bad_param_raises(kwargs, message):
    with pytest.raises(ValueError) as err:
        Param("p", "sram_bytes", **kwargs)
    assert message in str(err.value)


def test_sobol_is_scipys_scrambled_sobol():
    space = chip_space()
    x = space.sample(256, "sobol", seed=7)
    u_ref = qmc.Sobol(3, scramble=True, bits=32, seed=np.random.default_rng(7)).random(256)
    # The sample keeps the top 24 of scipy's 32 bits (exact in float32).
    u_ref24 = np.floor(u_ref * 2**24) / 2**24
    hbm = 1e12 + u_ref24[:, 2] * 3e12
    np.testing.assert_allclose(x[:, 2], hbm, rtol=1e-12)
    np.testing.assert_allclose(x[:, 0], np.exp(np.log(1e6) + u_ref24[:, 0] * np.log(1e3)),
                               rtol=1e-12)
    np.testing.assert_array_equal(x[:, 1], np.minimum(np.floor(4 + u_ref24[:, 1] * 15), 18))
    assert not np.array_equal(x, space.sample(256, "sobol", seed=8))
    np.testing.assert_array_equal(x, space.sample(256, "sobol", seed=7))


@pytest.mark.parametrize("method", ["sobol", "lhs", "random"])
def test_samples_respect_bounds_and_types(method):
    space = chip_space()
    x = space.sample(4096, method, seed=1)
    assert x.shape == (4096, 3) and x.dtype == np.float64
    assert np.all(x >= space.lower) and np.all(x <= space.upper)
    np.testing.assert_array_equal(x[:, 1], np.round(x[:, 1]))
    # Integers uniform over 4..18: every value appears, each near 1/15 of the points.
    counts = np.bincount(x[:, 1].astype(int), minlength=19)[4:]
    assert counts.min() > 4096 / 15 * 0.8
    # Log-uniform: the median is near the geometric mean of the bounds (1e7.5).
    assert abs(np.log10(np.median(x[:, 0])) - 7.5) < 0.1


def test_lhs_is_stratified():
    space = chip_space()
    x = space.sample(100, "lhs", seed=3)
    u = np.asarray(space.to_unit(x))
    for j in (0, 2):
        strata = np.floor(np.asarray(u[:, j], np.float64) * 100 + 1e-4).astype(int)
        strata = np.clip(strata, 0, 99)
        assert len(np.unique(strata)) >= 98  # float32 map back may shift an edge point


def test_grid_includes_bounds_and_needs_a_power():
    space = chip_space()
    x = space.sample(27, "grid")
    assert sorted(set(x[:, 2])) == [1e12, 2.5e12, 4e12]
    np.testing.assert_allclose(sorted(set(x[:, 0])), [1e6, np.sqrt(1e15), 1e9], rtol=1e-12)
    assert sorted(set(x[:, 1])) == [4, 11, 18]
    assert len({tuple(r) for r in x}) == 27
    with pytest.raises(ValueError, match="n = k\\*\\*3; got n=26"):
        space.sample(26, "grid")
    with pytest.raises(ValueError, match="sampling method"):
        space.sample(8, "halton")
    with pytest.raises(ValueError, match="number of points"):
        space.sample(0)


def test_unit_and_unconstrained_round_trip_in_float64():
    space = chip_space()
    with jax.enable_x64(True):
        x = jnp.asarray(space.sample(64, "random", seed=2))
        u = space.to_unit(x)
        assert jnp.all((u >= 0) & (u <= 1))
        np.testing.assert_allclose(space.from_unit(u), x, rtol=1e-12)
        inner = space.from_unit(jnp.clip(u, 1e-6, 1 - 1e-6))
        z = space.to_unconstrained(inner)
        np.testing.assert_allclose(space.from_unconstrained(z), inner, rtol=1e-9)
        # A log parameter is log-spaced in the unit cube: the midpoint is the geometric mean.
        mid = space.from_unit(jnp.full((3,), 0.5))
        np.testing.assert_allclose(mid[0], np.sqrt(1e6 * 1e9), rtol=1e-12)
        np.testing.assert_allclose(mid[2], 2.5e12, rtol=1e-12)


def test_from_unconstrained_stays_inside_and_differentiates():
    space = chip_space()
    z = jax.random.normal(jax.random.key(0), (128, 3)) * 30.0
    x = space.from_unconstrained(z)
    x = np.asarray(x)
    assert np.all(x >= space.lower * (1 - 1e-6)) and np.all(x <= space.upper * (1 + 1e-6))

    def peak_bw_per_byte(zi):
        chip = space.build(space.from_unconstrained(zi))
        return jnp.log(chip.hbm_bandwidth / chip.sram_bytes * chip.link_count)

    g = jax.vmap(jax.grad(peak_bw_per_byte))(z[:8] / 30.0)
    assert g.shape == (8, 3) and bool(jnp.all(jnp.isfinite(g)))
    # d log(hbm/sram) / d z_sram = -log(1e3) * sigmoid'(z) < 0.
    assert bool(jnp.all(g[:, 0] < 0)) and bool(jnp.all(g[:, 2] > 0))


def test_build_replaces_only_the_named_fields_and_vmaps():
    system = dgx_like()
    space = Space(system, [Param("sram", "chip.sram_bytes", 1e6, 1e9, "log"),
                           Param("bw", "scaleout_bandwidth", 1e9, 1e11)])
    x = jnp.array([[2e6, 3e9], [4e8, 5e10]])
    batch = space.build(x)
    np.testing.assert_allclose(batch.chip.sram_bytes, [2e6, 4e8])
    np.testing.assert_allclose(batch.scaleout_bandwidth, [3e9, 5e10])
    assert float(batch.chip.hbm_bytes) == 80e9 and batch.num_chips == 64
    one = jax.jit(space.build)(x[1])
    assert one.chip.sram_bytes.shape == () and float(one.chip.sram_bytes) == pytest.approx(4e8)
    flops = jax.vmap(lambda xi: space.build(xi).scaleup_bandwidth * xi[1])(x)
    np.testing.assert_allclose(flops, 12 * 25e9 * x[:, 1], rtol=1e-6)
    with pytest.raises(ValueError, match="last axis of size 2"):
        space.build(jnp.ones(3))


def test_snap_rounds_integers_inside_bounds():
    space = chip_space()
    x = jnp.array([[1.5e6, 3.4, 1.5e12], [2e6, 18.6, 2e12], [3e6, 7.5, 3e12]])
    s = np.asarray(space.snap(x))
    np.testing.assert_array_equal(s[:, 1], [4, 18, 8])
    np.testing.assert_array_equal(s[:, [0, 2]], np.asarray(x)[:, [0, 2]])
