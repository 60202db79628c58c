"""The cluster as the design (issue 18): networks, collectives over tiers, failures, goodput, TCO.

Published figures (data/): DGX SuperPOD switch and cable counts, NCCL all-reduce bus bandwidth
at 2-4 nodes, Llama 3's failure counts and a held-out run's, Daly's own checkpoint intervals,
the chip prices the price line goes through. Every new function jits, vmaps and has finite
gradients at random points (float32), matching central differences in float64.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

import dse
from dse.calibration import (
    busbw_checks,
    failure_checks,
    fit_chip_price,
    fit_failure_rates,
    network_design_checks,
)
from dse.hardware import (
    CHIPS,
    NETWORKS,
    SYSTEMS,
    Cluster,
    Economics,
    Network,
    Reliability,
    capex,
    chip_price,
    failure_rates,
    fat_tree,
    network_report,
)
from dse.hardware import units as u
from dse.hardware._network import scaleup_links
from dse.hardware._reliability import LLAMA3_RATES
from dse.hardware._tco import CHIP_PRICE_BASE, CHIP_PRICE_MULTIPLIER
from dse.models import (
    DEFAULT,
    TRANSFORMERS,
    InferencePlan,
    TrainingPlan,
    Transformer,
    all_gather,
    all_reduce,
    all_to_all,
    checkpoint_bytes,
    daly_goodput,
    daly_interval,
    goodput,
    reduce_scatter,
    send_recv,
    serve_cost,
    spare_wait,
    train_cluster,
)

H100 = SYSTEMS["DGX-H100"]
SUPERPOD = NETWORKS["dgx-superpod"]
SMALL = Transformer(layers=4.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=2816.0,
                    vocab=32000.0, seq_len=512.0, gated_mlp=True, tied_embeddings=False)
PLAN = TrainingPlan(tp=4.0, dp=8.0, microbatch_size=1.0, global_batch=32.0, dp_overlap=1.0)
CLUSTER = Cluster(H100.replace(network=SUPERPOD.replace(tiers=2.0)).with_num_chips(32))
DAY = 86400.0


# --- networks ------------------------------------------------------------------------------------

def test_fat_tree_counts_match_the_dgx_superpod_tables():
    rows = network_design_checks()
    assert len(rows) == 11
    for r in rows:
        # Cables: every published size, every tier, exactly.
        assert r["modelled_cables"] == r["cables"], r
        if r["source_key"] == "superpod_b200":
            assert r["modelled_switches"] == r["switches"], r
        else:  # XDR tables round spines up (18 for 16, 36 for 32): within 5%
            assert abs(r["modelled_switches"] / r["switches"] - 1.0) <= 0.05, r


def test_fat_tree_tiers_radix_and_oversubscription():
    one = fat_tree(Network(tiers=1.0, radix=64.0, oversubscription=7.0), 48.0)
    # One switch: no uplinks, so no oversubscription and no switch-to-switch links.
    assert float(one.capacity) == 64.0 and float(one.switches) == 48.0 / 64.0
    assert float(one.fabric_links) == 0.0 and float(one.oversubscription) == 1.0
    full = fat_tree(Network(tiers=3.0, radix=64.0), 16384.0)
    assert float(full.capacity) == 64.0**3 / 4 and float(full.pod_chips) == 32.0 * 32.0
    over = fat_tree(Network(tiers=3.0, radix=64.0, oversubscription=7.0), 16384.0)
    # k o / (1 + o) down at the pod boundary: bigger pods, fewer switches and top-tier links.
    np.testing.assert_allclose(float(over.pod_chips), 32.0 * 64.0 * 7.0 / 8.0)
    np.testing.assert_allclose(float(over.switches), 16384.0 / 64.0 * (3.0 + 2.0 / 7.0))
    np.testing.assert_allclose(float(over.fabric_links), 16384.0 * (1.0 + 1.0 / 7.0))
    # Two planes: twice the switches and links, each at half the speed.
    two = fat_tree(Network(tiers=3.0, radix=64.0, planes=2.0), 16384.0)
    assert float(two.switches) == 2 * float(full.switches)
    # Rail-optimized leaves sit outside the rack: host links are optical, not copper.
    rack = fat_tree(Network(tiers=2.0, radix=64.0, rail_optimized=False), 1024.0)
    rail = fat_tree(Network(tiers=2.0, radix=64.0, rail_optimized=True), 1024.0)
    assert float(rack.copper_links) == 1024.0 and float(rail.copper_links) == 0.0
    assert float(rail.optical_links) == float(rack.optical_links) + 1024.0


def test_scaleup_links_by_reach():
    # An 8-GPU board: all copper; NVL72 in one rack: all copper; 4x4x4 TPU cubes in a
    # 4096-chip torus: a quarter of the links optical (TPU v4's cube faces).
    for domain, rack, dims, optical in ((8.0, 32.0, 0, 0.0), (72.0, 72.0, 0, 0.0),
                                        (4096.0, 64.0, 3, 0.25)):
        copper, opt, _ = scaleup_links(chips=4096.0, domain=domain, link_count=6.0,
                                       rack_chips=rack, dims=dims)
        np.testing.assert_allclose(float(opt / (copper + opt)), optical, atol=1e-6)
    none = scaleup_links(chips=64.0, domain=1.0, link_count=18.0, rack_chips=32.0, dims=0)
    assert all(float(x) == 0.0 for x in none)


def test_published_network_presets_connect_their_clusters():
    # Llama 3's 24K GPUs, MegaScale's >10K, a 64-SU DGX SuperPOD: all within capacity.
    for name, chips in (("llama3-roce", 24576.0), ("megascale", 12288.0),
                        ("dgx-superpod", 16384.0)):
        assert float(fat_tree(NETWORKS[name], chips).capacity) >= chips, name


# --- collectives ---------------------------------------------------------------------------------

def test_systems_without_a_network_keep_the_two_tier_model():
    # Fields added since come after `network`, with defaults: positional systems keep working.
    names = [f.name for f in dataclasses.fields(H100)]
    assert H100.network is None
    assert names[names.index("network"):] == ["network", "host_bandwidth", "host_memory"]
    # The two-tier formula of models/_collectives.py: serial tiers, the scale-out tier at the
    # NICs' sustained fraction of their stated bandwidth.
    system = H100.with_num_chips(64)
    n, g = 1e9, 64.0
    # In chunks: (bytes + 2 sqrt(D bytes)) / bandwidth.
    up_bytes = 2 * 7 / 8 * n
    up = ((up_bytes + 2.0 * np.sqrt(float(DEFAULT.pipeline_overhead_bytes["nvlink"]) * up_bytes))
          / (450e9 * float(DEFAULT.link_efficiency["nvlink"])))
    out = 2 * 7 / 8 * n / 8 / (50e9 * float(DEFAULT.scaleout_efficiency))
    # Latency: NCCL's fitted start-up once, 2 x 6 in-node steps (the fewer of a ring's 7 and a
    # tree's 2 log2 8) at the fitted per-step latency, 2 x 3 steps across the 8 nodes.
    latency = (float(DEFAULT.collective_latency["nvlink"])
               + 2 * 6 * 1e-6 * float(DEFAULT.latency_scale["nvlink"]) + 2 * 3 * 5e-6)
    np.testing.assert_allclose(float(all_reduce(system, n, g).time), up + out + latency,
                               rtol=1e-6)


def test_bus_bandwidth_matches_nccl_measurements_within_15_percent():
    rows = busbw_checks()
    assert sorted(r["nodes"] for r in rows) == [2, 3, 4]
    for r in rows:
        assert abs(r["error"]) <= 0.15, r
    # The two-tier model (tiers in series, no NIC efficiency) is 43% low on the 4-node H100 row.
    h100 = next(r for r in rows if r["nodes"] == 4)
    g, n = 32.0, 8 * u.GiB
    t = float(all_reduce(H100.with_num_chips(32), n, g).time)
    old = 2 * (g - 1) / g * n / t / u.GB
    assert old / h100["measured"] - 1.0 < -0.4


NET_SYSTEM = H100.replace(network=Network(tiers=3.0, radix=16.0, oversubscription=4.0)
                          ).with_num_chips(512)


@pytest.mark.parametrize("name", ["all_reduce", "all_gather", "reduce_scatter", "all_to_all",
                                  "send_recv"])
def test_network_collectives_conserve_and_vanish_for_one(name):
    fn = {"all_reduce": all_reduce, "all_gather": all_gather,
          "reduce_scatter": reduce_scatter, "all_to_all": all_to_all,
          "send_recv": send_recv}[name]
    one = fn(NET_SYSTEM, 1e9, 1.0, stride=8.0)
    assert float(one.time) == 0.0 and float(one.scaleout_bytes) == 0.0
    for g, stride in ((8.0, 1.0), (64.0, 8.0), (512.0, 1.0)):
        c = fn(NET_SYSTEM, 1e9, g, stride=stride)
        np.testing.assert_allclose(float(c.time), float(c.scaleup_time + c.scaleout_time),
                                   rtol=1e-6)
    # One collective of two passes: the pair's time less one fixed start-up.
    ar = all_reduce(NET_SYSTEM, 1e9, 64.0, stride=8.0)
    rs = reduce_scatter(NET_SYSTEM, 1e9, 64.0, stride=8.0)
    ag = all_gather(NET_SYSTEM, 1e9, 64.0, stride=8.0)
    np.testing.assert_allclose(float(ar.time) + float(DEFAULT.collective_latency["nvlink"]),
                               float(rs.time + ag.time), rtol=1e-6)


def test_oversubscription_slows_only_groups_that_cross_pods_thinly():
    # Radix 16, 3 tiers, o = 4: pods of 8 x 16 x 4/5 = 102.4 chips (64 at o = 1). No latency
    # (nor start-up), so times are bandwidth only.
    slow = NET_SYSTEM.replace(scaleup_latency=0.0, scaleout_latency=0.0)
    fast = slow.replace(network=slow.network.replace(oversubscription=1.0))
    no_start = DEFAULT.replace(collective_latency=0.0)

    def ratio(g, stride, fn=all_reduce):
        return (float(fn(slow, 1e9, g, stride=stride, calibration=no_start).time)
                / float(fn(fast, 1e9, g, stride=stride, calibration=no_start).time))

    # Inside one pod, or a ring with ~100 members per pod (4 of its 63 hops cross, 4 x 4/63 of
    # the pod's bandwidth < its 1/4 uplinks): the oversubscription costs nothing.
    assert ratio(64.0, 1.0) == pytest.approx(1.0, rel=1e-6)
    assert ratio(512.0, 1.0) == pytest.approx(1.0, rel=1e-6)
    # One member per 64 chips: 1.6 per pod, 4 of 7 hops cross: 4 x 4/7 slower.
    assert ratio(8.0, 64.0) == pytest.approx(16.0 / 7.0, rel=1e-5)
    # An all-to-all over everything sends (512 - 102.4) / (512 - 8) of its bytes out of the pod.
    assert ratio(512.0, 1.0, all_to_all) == pytest.approx(4.0 * 409.6 / 504.0, rel=1e-5)


def test_scaleout_efficiency_reaches_both_collective_models():
    # One field for the scale-out NICs: the network model and the two-tier model both read it.
    half = DEFAULT.replace(scaleout_efficiency=0.48)
    dp = (64.0, 8.0)
    assert float(all_reduce(NET_SYSTEM, 1e9, *dp[:1], stride=dp[1],
                            calibration=half).scaleout_time) > 1.9 * float(
        all_reduce(NET_SYSTEM, 1e9, dp[0], stride=dp[1]).scaleout_time)
    plain = H100.with_num_chips(64)
    assert float(all_reduce(plain, 1e9, 64.0, calibration=half).scaleout_time) > 1.9 * float(
        all_reduce(plain, 1e9, 64.0).scaleout_time)


# --- reliability and goodput ---------------------------------------------------------------------

def test_failure_rates_are_the_llama3_fit():
    fitted = fit_failure_rates()
    assert set(fitted) == set(LLAMA3_RATES)
    for k, v in fitted.items():
        np.testing.assert_allclose(LLAMA3_RATES[k], v, rtol=1e-5, err_msg=k)
    # On Llama 3's own cluster the job's MTBF is 54 days / 419 interruptions = 3.09 h.
    rates = failure_rates(Reliability(), chips=16384.0, hbm_bytes=80 * u.GiB,
                          network=NETWORKS["llama3-roce"])
    np.testing.assert_allclose(float(rates.mtbf), 54 * DAY / 419, rtol=1e-5)
    np.testing.assert_allclose(float(rates.hardware / rates.total), 356 / 419, rtol=1e-5)


def test_fitted_rates_predict_a_held_out_run_within_25_percent():
    checks = {c["run"].split()[0]: c for c in failure_checks()}
    # Lablup's 504 B200 over 55 days: 10 XID-identified GPU failures; predicted 11.2.
    assert abs(checks["Lablup"]["error"]) <= 0.25
    assert checks["Lablup"]["predicted"] == pytest.approx(11.22, rel=0.01)
    # BLOOM's "1-2 GPU failures a week" on 384 A100: predicted 0.81, 19% under the range.
    assert abs(checks["BLOOM-176B"]["error"]) <= 0.25
    # Goodput bounds (MegaScale held out; Llama 3 in-sample) are met.
    assert checks["MegaScale"]["error"] == 0.0 and checks["Llama"]["error"] == 0.0
    # OPT-175B's 2022 A100 cluster had 4x more hardware restarts than Llama 3's rates give
    # (reported, not hidden: the rates are one run's).
    assert checks["OPT-175B"]["error"] < -0.5


def test_daly_interval_reproduces_dalys_figures():
    # Daly 2006, figure captions: delta = 5 min, M = 24 h / 6 h / 15 min -> 117 / 57 / 9.1 min.
    for m, tau in ((24 * 3600.0, 117.0), (6 * 3600.0, 57.0), (15 * 60.0, 9.1)):
        assert float(daly_interval(300.0, m)) / 60.0 == pytest.approx(tau, abs=0.5 if tau > 10
                                                                        else 0.05)
    assert float(daly_interval(7200.0, 3000.0)) == 3000.0  # delta >= 2M: checkpoint every M
    # Young's sqrt(2 delta M) when delta << M.
    assert float(daly_interval(1.0, 1e6)) == pytest.approx((2e6) ** 0.5, rel=2e-3)


def test_daly_goodput_limits_and_monotonicity():
    assert float(daly_goodput(1e-3, 0.0, 1e12, 0.0)) == pytest.approx(1.0, abs=1e-6)
    # Failures faster than checkpoints: goodput tends to 0, finite (no overflow).
    tiny = float(daly_goodput(100.0, 1000.0, 10.0, 600.0))
    assert 0.0 <= tiny < 1e-30
    state = float(checkpoint_bytes(TRANSFORMERS["llama3-405b"]))
    cluster = Cluster(H100.replace(network=NETWORKS["llama3-roce"]))
    g = [float(goodput(cluster, chips=c, state_bytes=state).goodput) for c in (1e3, 1e4, 1e5)]
    assert g[0] > g[1] > g[2]
    slow_storage = cluster.replace(reliability=Reliability(checkpoint_bandwidth=100 * u.GB))
    assert float(goodput(slow_storage, chips=1e4, state_bytes=state).goodput) < g[1]
    perfect = cluster.replace(reliability=Reliability(**{k: 0.0 for k in LLAMA3_RATES}))
    assert float(goodput(perfect, chips=1e5, state_bytes=state).goodput) == 1.0


def test_hot_spares_buy_goodput_when_repairs_take_time():
    state = float(checkpoint_bytes(TRANSFORMERS["llama3-405b"]))
    base = Cluster(H100.replace(network=NETWORKS["llama3-roce"]))
    assert float(goodput(base, chips=16384.0, state_bytes=state).spare_wait) == 0.0
    slow = Reliability(repair_time=2 * DAY)
    none = float(goodput(base.replace(reliability=slow), chips=16384.0,
                         state_bytes=state).goodput)
    spared = float(goodput(base.replace(reliability=slow.replace(spare_fraction=0.02)),
                           chips=16384.0, state_bytes=state).goodput)
    assert spared > none + 0.1
    # Enough spares: no wait at all (hosts in repair ~ 6.6 / day x 2 days ~ 13 << 41 spares).
    assert float(spare_wait(6.6 / DAY, 2048.0, 2 * DAY, 0.02)) < 1e-3


# --- TCO -----------------------------------------------------------------------------------------

def test_chip_price_line_goes_through_the_published_prices():
    fitted = fit_chip_price()
    np.testing.assert_allclose(fitted["chip_price_base"], CHIP_PRICE_BASE, rtol=1e-6)
    np.testing.assert_allclose(fitted["chip_price_multiplier"], CHIP_PRICE_MULTIPLIER,
                               rtol=1e-6)
    e = Economics()
    assert float(chip_price(CHIPS["H100-SXM"], e)) == pytest.approx(27500.0, rel=1e-5)
    assert float(chip_price(CHIPS["B200"], e)) == pytest.approx(40000.0, rel=1e-5)


def test_capex_and_network_cost_add_up():
    system = CLUSTER.system
    e = Economics()
    net = network_report(system, e, 1024.0)
    np.testing.assert_allclose(float(net.cost), float(net.switch_cost + net.optics_cost
                                                      + net.scaleup_cost), rtol=1e-6)
    # 8-GPU boards: the NVSwitches are in the host; nothing scale-up is priced separately.
    assert float(net.scaleup_cost) == 0.0
    # 1,024 GPUs rail-optimized on two tiers: 2,048 optical 400G links at $750 = $1.54M, above
    # the "exceeded $1.5 million" of transceivers at NVIDIA list for 128 DGX H100 (a vendor
    # blog's anecdote, network_designs.csv).
    assert float(net.optics_cost) == pytest.approx(2048 * 750.0, rel=1e-5)
    cap = capex(system, e, 1024.0, net)
    np.testing.assert_allclose(float(cap.total), float(cap.chips + cap.packaging + cap.hosts
                                                       + cap.network + cap.facility), rtol=1e-6)
    np.testing.assert_allclose(float(cap.chips + cap.packaging) / 1024.0, 27500.0, rtol=1e-5)
    with pytest.raises(ValueError, match="System.network is None"):
        network_report(H100, e, 8.0)
    with pytest.raises(ValueError, match="Cluster.system.network must be"):
        Cluster(H100)
    with pytest.raises(ValueError, match=r"Economics.pue must be finite and in \[1, 5\]"):
        Economics(pue=0.9)
    with pytest.raises(ValueError, match=r"Network.oversubscription must be"):
        Network(tiers=2.0, radix=64.0, oversubscription=0.5)


# --- the whole cluster, in the explorer ----------------------------------------------------------

# Knobs of the gradient checks: (path into a Cluster, low, high) for random points.
KNOBS = (
    (lambda c: c.system.network.tiers, 1.6, 2.9),
    (lambda c: c.system.network.radix, 24.0, 90.0),
    (lambda c: c.system.network.oversubscription, 1.2, 6.0),
    (lambda c: c.system.network.planes, 1.0, 2.5),
    (lambda c: c.system.scaleup_size, 4.5, 30.0),
    (lambda c: c.system.scaleout_bandwidth, 20e9, 90e9),
    (lambda c: c.system.chip.hbm_bandwidth, 2e12, 5e12),
    (lambda c: c.reliability.accelerator_failure_rate, 1e-9, 1e-8),
    (lambda c: c.reliability.checkpoint_bandwidth, 2e11, 4e12),
    (lambda c: c.reliability.repair_time, 3600.0, 86400.0),
    (lambda c: c.reliability.spare_fraction, 0.001, 0.05),
    (lambda c: c.economics.pue, 1.05, 1.5),
)


def _random_points(n, seed):
    rng = np.random.default_rng(seed)
    lo = np.array([k[1] for k in KNOBS])
    hi = np.array([k[2] for k in KNOBS])
    return lo * (hi / lo) ** rng.uniform(size=(n, len(KNOBS)))


def _cluster_at(x, base=CLUSTER):
    return eqx.tree_at(lambda c: [k[0](c) for k in KNOBS], base,
                       [x[i] for i in range(len(KNOBS))])


def _cheap(x):
    """Every new function but the step models, at design x (a vector of KNOBS)."""
    c = _cluster_at(x)
    s, r, e = c.system, c.reliability, c.economics
    chips = 1000.0 * x[4]  # chips as a smooth knob too
    tree = fat_tree(s.network, chips)
    up = scaleup_links(chips=chips, domain=s.scaleup_size, link_count=s.chip.link_count,
                       rack_chips=s.network.rack_chips, dims=3)
    rates = failure_rates(r, chips=chips, hbm_bytes=s.chip.hbm_bytes, network=s.network)
    net = network_report(s, e, chips)
    cap = capex(s, e, chips, net)
    g = goodput(c, chips=chips, state_bytes=1e13)
    tau = daly_interval(g.checkpoint_time, g.mtbf)
    big = s.with_num_chips(4096)
    comm = [f(big, 1e9, 256.0, stride=8.0).time
            for f in (all_reduce, all_to_all, send_recv, reduce_scatter)]
    return jnp.stack([tree.switches, tree.capacity, tree.optical_links, up[1], rates.total,
                      net.cost, net.power, cap.total, chip_price(s.chip, e), tau,
                      daly_goodput(tau, g.checkpoint_time, g.mtbf, g.restart_cost),
                      spare_wait(rates.hardware, chips / 8.0, r.repair_time, r.spare_fraction),
                      g.goodput, *comm])


def _jacobian(f):
    """x -> (f(x), df/dx), f traced once; not jitted itself, for the vmapped programs: a jit
    inside the vmap traced twice as long and compiled a third longer (`_whole`: 11.0 + 10.5 s
    vs 5.7 + 7.6 s)."""
    def twice(x):
        out = f(x)
        return out, out

    return lambda x: jax.jacfwd(twice, has_aux=True)(x)[::-1]


def _value_and_jacobian(f):
    """x -> (f(x), df/dx), jitted once (the central differences reuse its values)."""
    return jax.jit(_jacobian(f))


def _check_against_differences(both, x, knobs, rtol=2e-4, rows=None):
    value, jac = (np.asarray(a)[rows] if rows is not None else np.asarray(a) for a in both(x))
    for i in knobs:
        fd = central_difference(lambda v, i=i: np.asarray(both(x.at[i].set(v))[0])[rows]
                                if rows is not None else np.asarray(both(x.at[i].set(v))[0]),
                                float(x[i]), rel_step=1e-6)
        tol = rtol * np.abs(fd) + 1e-9 * np.abs(value) + 1e-12
        bad = np.abs(jac[:, i] - fd) > tol
        assert not bad.any(), (i, np.flatnonzero(bad), jac[bad, i], fd[bad])


def test_new_functions_jit_vmap_and_differentiate():
    # float32: a batch of random designs, values and Jacobians finite.
    x32 = jnp.asarray(_random_points(8, 0), jnp.float32)
    values, jac = jax.jit(jax.vmap(_jacobian(_cheap)))(x32)
    assert values.shape == (8, 17) and bool(jnp.all(jnp.isfinite(values)))
    assert bool(jnp.all(jnp.isfinite(jac)))
    # float64: the Jacobian matches central differences, knob by knob.
    with jax.enable_x64(True):
        x = jnp.asarray(_random_points(1, 1)[0], jnp.float64)
        _check_against_differences(_value_and_jacobian(_cheap), x, range(len(KNOBS)))


INFER = InferencePlan(tp=4.0, batch=8.0)


def _train(x):
    t = train_cluster(SMALL, PLAN, _cluster_at(x), 1e10)
    return jnp.stack([t.cost_per_token, t.time_to_train, t.megawatts, t.goodput.goodput,
                      (t.capital_cost + t.energy_cost + t.storage_cost) / t.total_cost - 1.0,
                      t.fits.astype(x.dtype)])


def _whole(x):
    s = serve_cost(SMALL, INFER, _cluster_at(x), 8.0, 256.0, 64.0)
    return jnp.concatenate([_train(x), jnp.stack([s.cost_per_million_tokens,
                                                  s.fits.astype(x.dtype)])])


def test_train_cluster_and_serve_cost_add_up_and_differentiate():
    # float32: random designs, and one whose one-switch network of radix 16 cannot connect the
    # 32 training chips (flagged, not an error; its 4-chip serving replica fits).
    x = _random_points(3, 2)
    x[2, 0], x[2, 1] = 1.0, 16.0
    values, jac = jax.jit(jax.vmap(_jacobian(_whole)))(jnp.asarray(x, jnp.float32))
    assert bool(jnp.all(jnp.isfinite(values))) and bool(jnp.all(jnp.isfinite(jac)))
    np.testing.assert_allclose(np.asarray(values[:, 4]), 0.0, atol=1e-6)
    assert np.asarray(values[:, 5]).tolist() == [1.0, 1.0, 0.0]
    assert np.asarray(values[:, 7]).tolist() == [1.0, 1.0, 1.0]
    # float64: d(metrics)/d(knobs) of train_cluster matches central differences
    # (oversubscription, scale-up size, accelerator failure rate, checkpoint bandwidth, PUE);
    # serve_cost's own parts (capex, network_report) are checked in float64 above.
    with jax.enable_x64(True):
        _check_against_differences(_value_and_jacobian(_train), jnp.asarray(x[0], jnp.float64),
                                   (2, 4, 7, 8, 11), rows=[0, 1, 2, 3])


def _cheap_objective(c, chips=1024.0):
    """Dollars, time and megawatts of a job at a fixed step rate (the step model is the
    benchmark's and the notebook's; here the network, goodput and capital parts)."""
    g = goodput(c, chips=chips, state_bytes=1e12)
    net = network_report(c.system, c.economics, chips)
    cap = capex(c.system, c.economics, chips, net)
    time = 1e12 / 1e6 / g.goodput
    return {"dollars": cap.per_second * time, "time": time,
            "megawatts": c.economics.pue * cap.peak_it_power / 1e6,
            "capacity_margin": net.capacity / chips - 1.0}


def test_space_sweep_and_budgets_over_network_reliability_and_chip():
    space = dse.Space(CLUSTER, [dse.Param.from_field(CLUSTER, name) for name in (
        "oversubscription", "tiers", "checkpoint_bandwidth", "accelerator_failure_rate",
        "hbm_bandwidth", "scaleup_size")])
    assert space.fields[:3] == ("system.network.oversubscription", "system.network.tiers",
                                "reliability.checkpoint_bandwidth")
    assert space.fields[4:] == ("system.chip.hbm_bandwidth", "system.scaleup_size")
    result = dse.sweep(_cheap_objective, space, 256, chunk_size=256, progress=False,
                       directions={"dollars": "min", "time": "min"},
                       constraints={"megawatts": ("<=", 2.05)})
    mw = np.asarray(result["megawatts"])
    feasible = np.asarray(result.feasible)
    assert feasible.any() and not feasible.all()
    assert np.all(mw[feasible] <= 2.05)
    # Snapped integer knobs (tiers, scale-up size) are whole numbers in the table.
    assert np.all(result["tiers"] == np.round(result["tiers"]))


def test_optimize_trades_network_and_reliability_under_budgets():
    space = dse.Space(CLUSTER, [dse.Param.from_field(CLUSTER, name) for name in (
        "oversubscription", "tiers", "checkpoint_bandwidth", "spare_fraction")])
    result = dse.optimize(lambda c: _cheap_objective(c, 4096.0), space,
                          objectives=["dollars", "time"],
                          budgets={"megawatts": 8.0, "capacity_margin": (0.0, None)},
                          n_preferences=4, n_starts=1, outer_steps=2, inner_steps=8,
                          n_pilot=16, progress=False)
    assert result.status == "ok"
    front = result.to_dataframe()
    # 4,096 chips at radix 64 need two tiers; every design on the front meets both budgets.
    assert (front["tiers"] >= 2).all() and (front["megawatts"] <= 8.0).all()
