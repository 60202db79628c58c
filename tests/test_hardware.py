"""Hardware layer: validation, transforms (jit / vmap / grad), monotonicity, presets."""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

from dse.hardware import (
    CHIPS,
    CONTINUOUS_CHIP_FIELDS,
    FIELDS,
    PUBLISHED,
    SYSTEMS,
    Activity,
    Chip,
    System,
    area,
    cost,
    extrapolated_quantities,
    power,
    stack_chips,
    technology,
)
from dse.hardware import units as u

# Ranges for random designs: wide, but inside what the models are meant for.
RANDOM_RANGES = {
    "mac_units": (1e4, 2e6),
    "clock_hz": (0.5e9, 3e9),
    "vector_flops": (1e12, 2e14),
    "sram_bytes": (4 * u.MiB, 1 * u.GiB),
    "hbm_bandwidth": (0.3 * u.TB, 16 * u.TB),
    "hbm_bytes": (8 * u.GiB, 512 * u.GiB),
    "link_count": (1.0, 72.0),
    "link_bandwidth": (10 * u.GB, 200 * u.GB),
    "node_nm": (2.0, 16.0),
    "core_count": (16.0, 512.0),
    "compute_redundancy": (1.0, 1.3),
    "fp8_rate": (0.5, 8.0),
    "fp6_rate": (0.5, 8.0),
    "fp4_rate": (0.5, 16.0),
    "int8_rate": (0.5, 8.0),
    "low_precision_efficiency": (0.8, 1.1),
    "fp4_efficiency": (0.5, 1.1),
    "vector_16bit_rate": (1.0, 4.0),
    "matmul_fraction": (0.4, 1.0),
}
assert set(RANDOM_RANGES) == set(CONTINUOUS_CHIP_FIELDS)


def random_chips(key, n, **static) -> Chip:
    """n chips with every continuous field drawn log-uniformly from RANDOM_RANGES."""
    keys = jax.random.split(key, len(RANDOM_RANGES))
    fields = {}
    for k, (name, (lo, hi)) in zip(keys, RANDOM_RANGES.items(), strict=True):
        unit = jax.random.uniform(k, (n,), dtype=jnp.result_type(float))
        fields[name] = jnp.exp(jnp.log(lo) + unit * (jnp.log(hi) - jnp.log(lo)))
    return Chip(**fields, **static)


def _one(chips: Chip, i: int) -> Chip:
    return jax.tree.map(lambda x: x[i], chips)


A100 = CHIPS["A100-80GB"]


# ---------------------------------------------------------------------------- validation


@pytest.mark.parametrize("field", CONTINUOUS_CHIP_FIELDS)
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_field_names_field_and_value(field, bad):
    with pytest.raises(ValueError, match=rf"Chip\.{field} must be finite") as info:
        A100.replace(**{field: bad})
    assert ("nan" in str(info.value)) or ("inf" in str(info.value)) or ("-1" in str(info.value))


@pytest.mark.parametrize("field", ["mac_units", "clock_hz", "vector_flops", "sram_bytes",
                                   "link_bandwidth", "core_count"])
def test_zero_is_invalid_for_strictly_positive_fields(field):
    low = FIELDS[field].min_value
    with pytest.raises(ValueError, match=re.escape(f"Chip.{field} must be finite and in "
                                                   f"[{low:g}, ")):
        A100.replace(**{field: 0.0})


def test_zero_hbm_and_links_are_valid_sram_only_chip():
    chip = A100.replace(hbm_bandwidth=0.0, hbm_bytes=0.0, link_count=0.0,
                        hbm_generation="none")
    assert float(area(chip).hbm_phy) == 0.0


def test_hbm_none_requires_zero_hbm():
    with pytest.raises(ValueError, match="hbm_bandwidth must be 0 when hbm_generation='none'"):
        A100.replace(hbm_generation="none")


def test_batch_error_names_index():
    with pytest.raises(ValueError, match=r"sram_bytes .* at index \(1,\)"):
        A100.replace(sram_bytes=np.array([1e6, -5.0, 2e6]))


@pytest.mark.parametrize("field,value", [("sram_kind", "dram"), ("core_kind", "vliw"),
                                         ("hbm_generation", "HBM9")])
def test_unknown_choice(field, value):
    with pytest.raises(ValueError, match=rf"Chip\.{field} must be one of"):
        A100.replace(**{field: value})


def test_redundancy_below_one_is_invalid():
    with pytest.raises(ValueError, match=r"compute_redundancy must be finite and in \[1, 4\]"):
        A100.replace(compute_redundancy=0.9)


def test_activity_out_of_range():
    with pytest.raises(ValueError, match=r"Activity\.hbm must be finite and in \[0, 1\]"):
        Activity(hbm=1.5)


def test_system_validation():
    system = SYSTEMS["DGX-A100"]
    with pytest.raises(ValueError, match=r"System\.num_chips must be a whole number in "
                                         r"\[1, 16777216\]; got 0"):
        system.with_num_chips(0)
    with pytest.raises(ValueError, match=r"System\.scaleout_bandwidth must be finite"):
        system.replace(scaleout_bandwidth=-1.0)
    with pytest.raises(ValueError, match=r"System\.topology must be one of"):
        system.replace(topology="hypercube")


def test_unknown_preset_lists_known_names():
    with pytest.raises(KeyError, match=r"unknown chip preset 'H300'.*A100-80GB.*H100-SXM"):
        CHIPS["H300"]
    with pytest.raises(KeyError, match=r"unknown system preset 'DGX-Z'.*DGX-A100"):
        SYSTEMS["DGX-Z"]


def test_technology_validation():
    with pytest.raises(ValueError, match=r"technology\.node_nm must be finite"):
        technology(-3.0)
    with pytest.raises(ValueError, match=r"technology\.hbm_generation must be one of"):
        technology(5.0, "HBM7")


# ---------------------------------------------------------------------------- transforms

# Every narrow engine busy: the power model's gradient reaches every rate field.
MIXED = Activity(compute=0.3, fp8=0.4, fp6=0.1, fp4=0.5, int8=0.2)
MODELS = {
    "area": lambda chip: area(chip).total,
    "power": lambda chip: power(chip).total,
    "power_low_precision": lambda chip: power(chip, MIXED).total,
    "cost": lambda chip: cost(chip).total,
}


@pytest.mark.parametrize("name", MODELS)
def test_jit_vmap_match_python_loop(name):
    model = MODELS[name]
    chips = random_chips(jax.random.key(0), 16)
    batched = jax.jit(jax.vmap(model))(chips)
    looped = np.array([float(model(_one(chips, i))) for i in range(16)])
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=2e-5)
    assert np.all(np.isfinite(looped)) and np.all(looped > 0)


@pytest.mark.parametrize("name", MODELS)
def test_vmap_over_ten_thousand_chips(name):
    chips = random_chips(jax.random.key(1), 10_000)
    out = jax.jit(jax.vmap(MODELS[name]))(chips)
    assert out.shape == (10_000,)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))


def test_report_fields_broadcast_without_vmap():
    chips = random_chips(jax.random.key(2), 5)
    np.testing.assert_allclose(np.asarray(area(chips).total),
                               np.asarray(jax.vmap(lambda c: area(c).total)(chips)), rtol=1e-6)


def test_jit_does_not_recompile():
    traces = []

    @jax.jit
    def f(chip):
        traces.append(1)
        return area(chip).total + power(chip).total + cost(chip).total

    f(A100)
    f(A100.replace(sram_bytes=100 * u.MiB))
    assert len(traces) == 1


@pytest.mark.parametrize("name", MODELS)
def test_gradients_match_finite_differences_float64(name):
    # Jitted: the four chips and every shifted copy share one program (value) and one
    # (gradient); op by op, each of the ~250 evaluations dispatches every operation again.
    model, gradient = jax.jit(MODELS[name]), jax.jit(jax.grad(MODELS[name]))
    with jax.enable_x64(True):
        chips = random_chips(jax.random.key(3), 4)
        for i in range(4):
            chip = _one(chips, i)
            grad = gradient(chip)
            for field in CONTINUOUS_CHIP_FIELDS:
                analytic = float(getattr(grad, field))
                x0 = float(getattr(chip, field))

                def along(x, field=field, chip=chip):
                    return float(model(chip.replace(**{field: x})))

                if field == "compute_redundancy" and x0 - 1e-6 * x0 < 1.0:
                    continue
                numeric = central_difference(along, x0, rel_step=1e-6)
                assert np.isfinite(analytic), (name, field, i)
                scale = abs(float(model(chip))) / x0
                assert abs(analytic - numeric) <= 1e-4 * scale + 1e-4 * abs(numeric), (
                    name, field, i, analytic, numeric)


def test_gradients_finite_on_every_preset():
    for chip in CHIPS.values():
        for model in MODELS.values():
            grad = jax.grad(model)(chip)
            for field in CONTINUOUS_CHIP_FIELDS:
                assert np.isfinite(float(getattr(grad, field))), (chip.name, field)


def test_float32_and_float64_agree():
    chip32 = A100
    with jax.enable_x64(True):
        chip64 = Chip(**{f: float(getattr(A100, f)) for f in CONTINUOUS_CHIP_FIELDS},
                      sram_kind=A100.sram_kind, core_kind=A100.core_kind,
                      hbm_generation=A100.hbm_generation)
        assert chip64.sram_bytes.dtype == jnp.float64
        values64 = [float(m(chip64)) for m in MODELS.values()]
    values32 = [float(m(chip32)) for m in MODELS.values()]
    np.testing.assert_allclose(values32, values64, rtol=1e-5)


# ---------------------------------------------------------------------------- invariants


def test_area_blocks_sum_to_total():
    chips = random_chips(jax.random.key(4), 64)
    report = area(chips)
    np.testing.assert_allclose(np.asarray(sum(report.blocks.values())),
                               np.asarray(report.total), rtol=1e-6)


def test_power_blocks_sum_to_total():
    chips = random_chips(jax.random.key(5), 64)
    report = power(chips, Activity(compute=0.7, vector=0.2, hbm=0.5, link=0.1))
    np.testing.assert_allclose(np.asarray(sum(report.blocks.values())),
                               np.asarray(report.total), rtol=1e-6)


def test_cost_parts_sum_to_total():
    report = cost(random_chips(jax.random.key(6), 64))
    np.testing.assert_allclose(np.asarray(report.silicon + report.hbm + report.package),
                               np.asarray(report.total), rtol=1e-6)
    assert bool(jnp.all((report.die_yield > 0) & (report.die_yield <= 1)))


@pytest.mark.parametrize("sram_kind", ["cache", "scratchpad"])
def test_more_sram_never_shrinks_area(sram_kind):
    chips = random_chips(jax.random.key(7), 256, sram_kind=sram_kind)
    bigger = dataclasses.replace(chips, sram_bytes=chips.sram_bytes * 1.5)
    assert bool(jnp.all(area(bigger).total > area(chips).total))


def test_newer_node_never_grows_area():
    chips = random_chips(jax.random.key(8), 64)
    nodes = jnp.geomspace(16.0, 2.0, 50)
    totals = jax.vmap(lambda n: area(dataclasses.replace(chips, node_nm=jnp.full(64, n))).total)(
        nodes)
    assert bool(jnp.all(jnp.diff(totals, axis=0) <= 1e-3))


@pytest.mark.parametrize("block", ["compute", "vector", "hbm", "link", "fp8", "fp4", "int8"])
def test_more_activity_never_lowers_power(block):
    chips = random_chips(jax.random.key(9), 64)
    levels = jnp.linspace(0.0, 1.0, 11)
    totals = jax.vmap(lambda a: power(chips, Activity(**{
        "compute": 0.3, "vector": 0.3, "hbm": 0.3, "link": 0.3, block: a})).total)(levels)
    assert bool(jnp.all(jnp.diff(totals, axis=0) >= 0))
    assert bool(jnp.all(totals[-1] > totals[0]))


def test_more_spare_cores_raise_yield():
    base = A100.replace(compute_redundancy=1.0)
    spare = A100.replace(compute_redundancy=1.2)
    assert float(cost(spare).die_yield) > float(cost(base).die_yield)


def test_reticle_and_shoreline_constraints_flag_oversized_designs():
    big = A100.replace(mac_units=4 * float(A100.mac_units), hbm_bandwidth=40 * u.TB)
    report = area(big)
    assert float(report.reticle_margin) < 0
    assert float(report.shoreline_margin) < 0
    assert float(area(A100).reticle_margin) > 0
    assert float(area(A100).shoreline_margin) > 0


# ---------------------------------------------------------------------------- technology


def test_technology_reproduces_published_points():
    # tech.csv rows: logic density 7 nm 96.3, 5 nm 138.2 MTr/mm^2; N5 bitcell 0.021 um^2;
    # wafer 7 nm $9346.
    np.testing.assert_allclose(float(technology(7.0).logic_density), 96.3e6, rtol=1e-5)
    np.testing.assert_allclose(float(technology(5.0).logic_density), 138.2e6, rtol=1e-5)
    np.testing.assert_allclose(float(technology(5.0).sram_bitcell_area), 0.021e-6, rtol=1e-5)
    np.testing.assert_allclose(float(technology(7.0).wafer_cost), 9346.0, rtol=1e-5)


def test_technology_is_smooth_and_monotone_in_node():
    nodes = jnp.geomspace(20.0, 1.5, 400)
    # Jitted: one compile each instead of dispatching every operation of the vmapped curves.
    tech = jax.jit(jax.vmap(technology))(nodes)
    assert bool(jnp.all(jnp.diff(tech.logic_density) > 0))
    assert bool(jnp.all(jnp.diff(tech.sram_bitcell_area) <= 1e-5 * tech.sram_bitcell_area[1:]))
    slopes = jax.jit(jax.vmap(jax.grad(lambda n: jnp.log(technology(n).logic_density))))(nodes)
    assert bool(jnp.all(jnp.isfinite(slopes)))
    # C1: no jump in the slope between neighbouring samples anywhere.
    assert float(jnp.max(jnp.abs(jnp.diff(slopes)))) < 0.5


def test_extrapolation_is_flagged():
    assert extrapolated_quantities(7.0) == []
    assert "logic_density" in extrapolated_quantities(2.0)
    assert "wafer_cost" in extrapolated_quantities(3.0)


# ---------------------------------------------------------------------------- presets


def test_required_presets_exist():
    for name in ["A100-80GB", "H100-SXM", "H200", "B200", "MI300X", "TPUv4", "TPUv5p",
                 "Gaudi3", "V100", "Groq-TSP", "WSE-2", "GC200"]:
        assert name in CHIPS
    for name in ["DGX-A100", "DGX-H100", "TPUv4-pod", "GB200-NVL72"]:
        assert isinstance(SYSTEMS[name], System)


@pytest.mark.parametrize("name,peak_tflops", [("A100-80GB", 312), ("H100-SXM", 989.4),
                                              ("V100", 125), ("TPUv4", 275), ("B200", 2250)])
def test_preset_peak_matches_datasheet(name, peak_tflops):
    np.testing.assert_allclose(float(CHIPS[name].peak_flops), peak_tflops * 1e12, rtol=1e-5)


def test_system_resize_and_scaleup_bandwidth():
    system = SYSTEMS["DGX-A100"].with_num_chips(1024)
    assert system.num_chips == 1024
    # 12 NVLink3 links x 25 GB/s per direction = 300 GB/s (chips.csv A100: 600 GB/s total).
    np.testing.assert_allclose(float(system.scaleup_bandwidth), 300e9, rtol=1e-6)
    assert float(system.scaleup_domain) == 8.0


def test_stack_chips_builds_a_batch():
    with pytest.raises(ValueError, match=r"Chip\.hbm_generation differs"):
        stack_chips([CHIPS["A100-80GB"], CHIPS["A100-40GB"]])
    chips = [CHIPS["A100-80GB"], CHIPS["A100-40GB"].replace(hbm_generation="HBM2e")]
    batch = stack_chips(chips)
    assert batch.batch_shape == (2,)
    np.testing.assert_allclose(np.asarray(area(batch).total),
                               [float(area(c).total) for c in chips], rtol=1e-6)


def test_published_table_covers_every_preset():
    assert set(PUBLISHED) == set(CHIPS)
