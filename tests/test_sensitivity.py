"""dse.sensitivity: elasticities against finite differences, batching, binding resource flips.

The workload is a few GEMMs on an H100-like chip (operator models of `dse.models`) plus the
chip's area and power (`dse.hardware`): every hardware field moves at least one metric.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dse
from dse.hardware import CHIPS, area, power, stack_chips
from dse.models import DEFAULT, _operators, gemm
from dse.models._operators import wave_efficiency
from tests.helpers import central_difference

M = N = K = 8192.0


def _workload(chip):
    # A training-sized GEMM and a decode-sized one (16 tokens): one compute-bound, one
    # memory-bound on an H100, so both roofs appear; smooth rooflines for clean derivatives.
    big = gemm(chip, M, N, K, smooth=True)
    small = gemm(chip, 16.0, 12288.0, 12288.0, smooth=True)
    return {"time": big.time + 20.0 * small.time, "area": area(chip).total,
            "power": power(chip).total}


def _gemm_time(chip):
    return {"time": gemm(chip, M, N, K).time}


def _gemm_limits(chip):
    op = gemm(chip, M, N, K)
    return {"compute": op.compute_time, "memory": op.memory_time}


def _f64(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), tree)


def test_elasticities_match_finite_differences(monkeypatch):
    with jax.enable_x64(True):
        base = _f64(CHIPS["H100-SXM"])
        rng = np.random.default_rng(0)
        # Random designs around the preset (each field scaled by 0.5x..2x; the node off the
        # published knots, see test_node_elasticity_at_a_published_node).
        designs = []
        for _ in range(3):
            scale = np.exp(rng.uniform(np.log(0.5), np.log(2.0), 6))
            designs.append(base.replace(
                mac_units=base.mac_units * scale[0], clock_hz=base.clock_hz * scale[1],
                sram_bytes=base.sram_bytes * scale[2], hbm_bandwidth=base.hbm_bandwidth * scale[3],
                link_bandwidth=base.link_bandwidth * scale[4], node_nm=base.node_nm * scale[5]))
        # The GEMMs' tile and wave quantization is held at the preset's 132 SMs: its rounded
        # wave count is differentiated by its trend (`ceil_straight_through`), which a finite
        # difference of the steps cannot see (between jumps the local derivative is that of a
        # fixed wave count). test_known_elasticities_of_a_roofline checks that trend, and
        # test_operators the rounding itself.
        real_wave_efficiency = _operators.wave_efficiency
        cores = float(base.core_count)
        monkeypatch.setattr(
            _operators, "wave_efficiency", lambda chip, m, n, groups=1.0: real_wave_efficiency(
                chip.replace(core_count=jnp.asarray(cores, jnp.float64)), m, n, groups))

        def metrics(chip):  # a new function: the patched trace is cached under it alone
            return _workload(chip)

        workload = jax.jit(metrics)
        for chip in designs:
            res = dse.sensitivity(metrics, chip)
            assert res.elasticity["time"].dtype == np.float64
            for j, field in enumerate(res.fields):
                p0 = float(getattr(chip, field))
                if p0 == 0.0:
                    # An engine the chip does not have (H100's fp4_rate): p df/dp is 0 there,
                    # and a log-space difference is undefined.
                    for metric in ("time", "area", "power"):
                        assert res.elasticity[metric][j] == 0.0, f"{metric} wrt {field}"
                    continue

                for metric in ("time", "area", "power"):
                    def log_f(logp, field=field, metric=metric, chip=chip):
                        c = chip.replace(**{field: jnp.exp(jnp.asarray(logp, jnp.float64))})
                        return float(jnp.log(workload(c)[metric]))

                    fd = central_difference(log_f, np.log(p0), rel_step=1e-5)
                    got = res.elasticity[metric][j]
                    np.testing.assert_allclose(got, fd, rtol=1e-4, atol=1e-6,
                                               err_msg=f"{metric} wrt {field}")


def test_node_elasticity_at_a_published_node():
    with jax.enable_x64(True):
        chip = _f64(CHIPS["H100-SXM"])
        res = dse.sensitivity(lambda c: area(c).total, chip, fields=["node_nm"])

        def log_area(logn):
            return float(jnp.log(area(chip.replace(node_nm=jnp.exp(logn))).total))

        fd = central_difference(log_area, np.log(float(chip.node_nm)), rel_step=1e-5)
        np.testing.assert_allclose(res.elasticity["value"][0], fd, rtol=1e-3)


def test_known_elasticities_of_a_roofline():
    """Compute-bound GEMM time is ~ 1/(MACs x clock); memory-bound ~ 1/bandwidth."""
    chip = CHIPS["H100-SXM"]
    res = dse.sensitivity(_gemm_time, chip)
    e = dict(zip(res.fields, res.elasticity["time"], strict=True))
    # time = (flops / (peak w) + overhead) / eta, with w the tile and wave quantization of the
    # 8192 x 8192 output on 132 SMs (it moves with core_count, not with mac_units or clock):
    # elasticity -flops/(peak w) / (flops/(peak w) + overhead).
    flops_time = 2 * M * N * K / float(chip.peak_flops) / float(wave_efficiency(chip, M, N))
    expected = -flops_time / (flops_time + DEFAULT.matrix_overhead_s)
    assert -0.9955 < expected < -0.995  # the kernel start-up is under 0.5% of this GEMM
    np.testing.assert_allclose(e["mac_units"], expected, rtol=1e-4)
    np.testing.assert_allclose(e["clock_hz"], expected, rtol=1e-4)
    # More SMs at the same MAC count: the wave count's trend (straight-through) leaves the
    # chosen 128 x 64 tile's slot count waves x cores at its rounded value, so the quantized
    # share 8192 tiles / (63 waves x 132 SMs) falls with cores as -(1 - share) per log-unit.
    share = 8192.0 / (63.0 * 132.0)
    np.testing.assert_allclose(e["core_count"], -expected * (1.0 - share), rtol=1e-3)
    assert e["hbm_bandwidth"] == 0.0 and e["link_count"] == 0.0
    # Area is first-order homogeneous in nothing, but it grows with every block it contains.
    res_a = dse.sensitivity(lambda c: area(c).total, chip)
    ea = dict(zip(res_a.fields, res_a.elasticity["value"], strict=True))
    for field in ("mac_units", "sram_bytes", "hbm_bandwidth", "link_bandwidth"):
        assert ea[field] > 0, field
    assert ea["node_nm"] > 0  # a larger node is a larger die


def test_binding_resource_flips_as_bandwidth_falls():
    chip = CHIPS["H100-SXM"]
    bandwidths = np.geomspace(3.35e12, 1e10, 12)
    batch = stack_chips([chip.replace(hbm_bandwidth=b) for b in bandwidths])
    res = dse.sensitivity(_gemm_time, batch, limits=_gemm_limits)
    assert res.batch_shape == (12,)
    binding = res.binding["time"]
    # Starts compute-bound, ends memory-bound, and flips exactly once.
    assert binding[0] == "compute" and binding[-1] == "HBM bandwidth"
    flips = np.flatnonzero(binding[1:] != binding[:-1])
    assert len(flips) == 1
    # The flip is where the memory roof overtakes the compute roof.
    limiting = res.limiting
    assert limiting[0] == "compute" and limiting[-1] == "memory"
    memory_bound = res.limits["memory"] > res.limits["compute"]
    np.testing.assert_array_equal(binding == "HBM bandwidth", memory_bound)
    np.testing.assert_array_equal(limiting == "memory", memory_bound)
    j = res.fields.index("hbm_bandwidth")
    assert res.elasticity["time"][0, j] == 0.0
    assert res.elasticity["time"][-1, j] < -0.99


def test_batch_equals_loop():
    chips = [CHIPS["H100-SXM"], CHIPS["H100-SXM"].replace(hbm_bandwidth=1e12, sram_bytes=1e8),
             CHIPS["H100-SXM"].replace(mac_units=2e5)]
    batched = dse.sensitivity(_workload, stack_chips(chips))
    for i, c in enumerate(chips):
        one = dse.sensitivity(_workload, c)
        for m in one.metrics:
            np.testing.assert_allclose(batched.values[m][i], one.values[m], rtol=1e-6)
            np.testing.assert_allclose(batched.elasticity[m][i], one.elasticity[m], rtol=1e-5,
                                       atol=1e-7)
            assert batched.binding[m][i] == one.binding[m]


def test_table_ranks_what_to_improve_next():
    slow_memory = CHIPS["H100-SXM"].replace(hbm_bandwidth=2e11)
    res = dse.sensitivity(_workload, slow_memory, budgets={"area": 826.0, "power": 700.0})
    t = res.table("time")
    assert list(t.columns[:4]) == ["field", "resource", "value", "elasticity"]
    assert t.loc[0, "field"] == "hbm_bandwidth" and t.loc[0, "direction"] == "increase"
    assert np.all(np.diff(t["gain"].to_numpy()) <= 1e-12)  # best first
    no_effect = t["elasticity"].to_numpy() == 0
    assert no_effect.any() and np.all(t["direction"].to_numpy()[no_effect] == "none")
    # +10% of a field changes the metric by 1.1 ** elasticity - 1.
    row = t.iloc[0]
    np.testing.assert_allclose(row["change"], 1.1 ** row["elasticity"] - 1.0, rtol=1e-12)
    # Priced by area: price columns beside the same ranking by the size of the effect (a
    # field that moves the metric a billionth of a percent and costs no area never ranks above
    # the HBM bandwidth that binds).
    tp = res.table("time", per="area")
    assert list(tp["field"]) == list(t["field"])
    # At 0.2 TB/s the stacks are sized by capacity: more bandwidth costs no area.
    row = tp[tp["field"] == "hbm_bandwidth"].iloc[0]
    assert row["price"] == 0.0 and row["gain_per_price"] == np.inf
    row = tp[tp["field"] == "sram_bytes"].iloc[0]
    assert row["price"] > 0
    np.testing.assert_allclose(row["gain_per_price"], row["gain"] / row["price"], rtol=1e-12)
    # Budgets: the binding budget is the one with the largest value / bound.
    u = {k: float(res.values[k]) / b for k, b in (("area", 826.0), ("power", 700.0))}
    assert res.binding_budget == max(u, key=u.get)
    np.testing.assert_allclose(res.utilization["area"], u["area"])
    # A "max" metric ranks the other way round.
    res_max = dse.sensitivity(lambda c: {"throughput": 1.0 / gemm(c, M, N, K).time},
                              CHIPS["H100-SXM"], directions="max")
    # A compute-bound GEMM: MACs, clock and the sustained matmul fraction all have elasticity 1.
    assert res_max.table().loc[0, "field"] in ("mac_units", "clock_hz", "matmul_fraction")
    assert res_max.table().loc[0, "direction"] == "increase"


def test_system_fields_and_report_outputs():
    system = dse.hardware.SYSTEMS["DGX-H100"]
    fields = dse.continuous_fields(system)
    assert "chip.hbm_bandwidth" in fields and "scaleout_bandwidth" in fields
    # A report Module as output: every scalar float field is a metric.
    res = dse.sensitivity(lambda s: gemm(s.chip, M, N, K), system,
                          fields=["chip.mac_units", "chip.hbm_bandwidth"])
    assert set(res.metrics) == {"flops", "hbm_bytes", "compute_time", "memory_time", "time"}
    assert res.fields == ("chip.mac_units", "chip.hbm_bandwidth")
    np.testing.assert_allclose(res.elasticity["flops"], 0.0)
    # NaN where the metric is zero (elasticity undefined), never inf.
    res0 = dse.sensitivity(lambda c: {"zero": c.mac_units * 0.0}, CHIPS["H100-SXM"])
    assert np.all(np.isnan(res0.elasticity["zero"]))
    assert res0.binding["zero"] == "none"


def test_second_call_does_not_retrace():
    traces = []

    def metric(chip):
        traces.append(1)
        return {"time": gemm(chip, M, N, K).time}

    dse.sensitivity(metric, CHIPS["H100-SXM"])
    first = len(traces)
    assert first > 0
    dse.sensitivity(metric, CHIPS["H100-SXM"].replace(hbm_bandwidth=1e12))
    assert len(traces) == first


def test_bad_input_names_the_problem():
    chip = CHIPS["H100-SXM"]
    with pytest.raises(ValueError, match="unknown or non-float fields.*bogus"):
        dse.sensitivity(_gemm_time, chip, fields=["bogus"])
    with pytest.raises(ValueError, match="equinox Module"):
        dse.sensitivity(_gemm_time, {"mac_units": 1.0})
    with pytest.raises(ValueError, match="budget on unknown metric 'area'"):
        dse.sensitivity(_gemm_time, chip, budgets={"area": 800.0})
    with pytest.raises(ValueError, match="direction of 'time'"):
        dse.sensitivity(_gemm_time, chip, directions={"time": "up"})
    res = dse.sensitivity(_gemm_time, stack_chips([chip, chip]))
    with pytest.raises(ValueError, match="pass index="):
        res.table()
