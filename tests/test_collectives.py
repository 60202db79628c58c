"""Collectives: conservation (AR = RS + AG), zero for one member, tiers, topology, gradients."""

import csv
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference, data_dir

from dse.calibration import collective_sweep_rows, fit_collective_latency, fit_link_efficiency
from dse.calibration._collective_data import model_times as collective_model_times
from dse.hardware import SYSTEMS, Chip, System
from dse.models import (
    DEFAULT,
    all_gather,
    all_reduce,
    all_to_all,
    reduce_scatter,
    send_recv,
)

LINK_EFFICIENCY = float(DEFAULT.link_efficiency["nvlink"])
SCALEOUT_EFFICIENCY = float(DEFAULT.scaleout_efficiency)
COLLECTIVES = {"all_reduce": all_reduce, "all_gather": all_gather,
               "reduce_scatter": reduce_scatter, "all_to_all": all_to_all,
               "send_recv": send_recv}
TOPOLOGIES = ("switch", "torus2d", "torus3d")

# A100-like chip (NVIDIA A100 whitepaper; 12 NVLink 3 links of 25 GB/s per direction) in a
# DGX-like system (8 GPUs per NVSwitch domain, 8 x 200 Gb/s HDR InfiniBand per node).
CHIP = dict(mac_units=110592.0, clock_hz=1.41e9, vector_flops=19.5e12, sram_bytes=57.3e6,
            hbm_bandwidth=2.0e12, hbm_bytes=80e9, link_count=12.0, link_bandwidth=25e9,
            node_nm=7.0, core_count=108.0, hbm_generation="HBM2e")


def system(topology="switch", num_chips=1024, scaleup_size=8.0, **chip_changes):
    return System(chip=Chip(**(CHIP | chip_changes)), num_chips=num_chips,
                  scaleup_size=scaleup_size, scaleup_latency=2e-6, scaleout_bandwidth=25e9,
                  scaleout_latency=5e-6, topology=topology)


def random_system(rng, topology):
    return System(
        chip=Chip(**(CHIP | dict(link_count=float(rng.integers(4, 19)),
                                 link_bandwidth=float(rng.uniform(10e9, 100e9))))),
        num_chips=4096, scaleup_size=float(rng.choice([4.0, 8.0, 64.0, 72.0])),
        scaleup_latency=float(rng.uniform(0.5e-6, 5e-6)),
        scaleout_bandwidth=float(rng.uniform(10e9, 100e9)),
        scaleout_latency=float(rng.uniform(2e-6, 20e-6)), topology=topology)


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_group_of_one_costs_nothing(name, topology):
    cost = COLLECTIVES[name](system(topology), 1e9, 1.0, stride=4.0)
    assert float(cost.time) == 0.0
    assert float(cost.scaleup_bytes) == 0.0 and float(cost.scaleout_bytes) == 0.0


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_all_reduce_is_reduce_scatter_plus_all_gather(topology):
    rng = np.random.default_rng(0)
    for _ in range(20):
        sys_ = random_system(rng, topology)
        n = float(10 ** rng.uniform(3, 10))
        g = float(rng.choice([2, 4, 8, 16, 64, 512]))
        stride = float(rng.choice([1, 2, 8, 16]))
        # Without the fixed start-up and the pipelining, the passes add up; with them, the
        # all-reduce (one collective of two passes) pays the start-up and the pipeline's fill
        # once, the pair twice.
        no_pipe = DEFAULT.replace(pipeline_overhead_bytes=0.0)
        bare = no_pipe.replace(collective_latency=0.0)
        ar, rs, ag = (f(sys_, n, g, stride=stride, calibration=bare)
                      for f in (all_reduce, reduce_scatter, all_gather))
        for field in ("time", "scaleup_time", "scaleout_time", "scaleup_bytes",
                      "scaleout_bytes"):
            np.testing.assert_allclose(float(getattr(ar, field)),
                                       float(getattr(rs, field) + getattr(ag, field)),
                                       rtol=1e-5, err_msg=field)
        start = float(DEFAULT.collective_latency[sys_.fabric])
        for f, cost in ((all_reduce, ar), (reduce_scatter, rs), (all_gather, ag)):
            np.testing.assert_allclose(float(f(sys_, n, g, stride=stride,
                                               calibration=no_pipe).time),
                                       float(cost.time) + start, rtol=1e-5)
        pair = (reduce_scatter(sys_, n, g, stride=stride).time
                + all_gather(sys_, n, g, stride=stride).time)
        assert float(all_reduce(sys_, n, g, stride=stride).time) <= float(pair) - start * 0.999


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
def test_tiers_sum_to_time(name):
    rng = np.random.default_rng(1)
    for topology in TOPOLOGIES:
        sys_ = random_system(rng, topology)
        cost = COLLECTIVES[name](sys_, 3e8, 64.0, stride=2.0)
        np.testing.assert_allclose(float(cost.time),
                                   float(cost.scaleup_time + cost.scaleout_time), rtol=1e-6)


def test_ring_bandwidth_term_matches_thakur():
    # One switch domain, latency negligible: all-reduce moves 2 (p-1)/p n per chip at the
    # links' sustained bandwidth (Thakur et al. 2005; NCCL bus bandwidth = link bandwidth x eff),
    # in chunks: (n + 2 sqrt(D n)) / w with the best chunk count (Johnsson & Ho 1989).
    sys_ = system(scaleup_size=8.0).replace(scaleup_latency=0.0)
    n, p = 1e9, 8.0
    no_start = DEFAULT.replace(collective_latency=0.0)
    sent, w = 2 * (p - 1) / p * n, 300e9 * LINK_EFFICIENCY
    cost = all_reduce(sys_, n, p, calibration=no_start.replace(pipeline_overhead_bytes=0.0))
    np.testing.assert_allclose(float(cost.time), sent / w, rtol=1e-6)
    chunk = float(DEFAULT.pipeline_overhead_bytes["nvlink"])
    np.testing.assert_allclose(float(all_reduce(sys_, n, p, calibration=no_start).time),
                               (sent + 2.0 * np.sqrt(chunk * sent)) / w, rtol=1e-6)
    assert float(cost.scaleout_time) == 0.0


def test_hierarchy_tensor_parallel_stays_in_node_data_parallel_crosses():
    sys_ = system()
    tp = all_reduce(sys_, 1e8, 8.0, stride=1.0)
    assert float(tp.scaleout_bytes) == 0.0 and float(tp.scaleup_bytes) > 0.0
    dp = all_reduce(sys_, 1e8, 64.0, stride=8.0)  # one member per node
    assert float(dp.scaleup_bytes) == 0.0
    np.testing.assert_allclose(float(dp.scaleout_bytes), 2 * 63 / 64 * 1e8, rtol=1e-6)
    # Two members per node: half the message crosses the network per chip.
    dp2 = all_reduce(sys_, 1e8, 64.0, stride=4.0)
    np.testing.assert_allclose(float(dp2.scaleout_bytes), 2 * 31 / 32 * 1e8 / 2, rtol=1e-6)
    assert float(dp2.time) < float(dp.time)


def test_torus_latency_steps_are_rings_per_dimension():
    # Empty message: only latency, the fixed start-up and the steps. A 4x4x4 torus all-reduce
    # takes 2 x 3 x (4 - 1) steps; a switch the fewer of a ring's and a tree's: 2 x 12 for 64
    # members (not 2 x 63), 2 x 3 for 4 (not 2 x 4).
    alpha = 2e-6 * float(DEFAULT.latency_scale["nvlink"])
    start = float(DEFAULT.collective_latency["nvlink"])
    torus = all_reduce(system("torus3d", scaleup_size=64.0), 0.0, 64.0)
    np.testing.assert_allclose(float(torus.time), start + 18 * alpha, rtol=1e-6)
    for p, steps in ((64.0, 24), (4.0, 6)):
        switch = all_reduce(system("switch", scaleup_size=64.0), 0.0, p)
        np.testing.assert_allclose(float(switch.time), start + steps * alpha, rtol=1e-6)


def test_torus_all_to_all_is_bisection_bound():
    sys_ = system("torus3d", scaleup_size=64.0, link_count=6.0, link_bandwidth=50e9)
    n = 1e9
    cost = all_to_all(sys_, n, 64.0)
    # k n / (8 link bandwidth) for k = 4, on the (p-1)/p of the data that leaves each chip.
    bisection = 4.0 * (63 / 64) * n / (8.0 * 50e9 * LINK_EFFICIENCY)
    assert float(cost.time) >= bisection
    # On a switch with the same per-chip bandwidth the all-to-all is injection-bound (faster).
    switch = all_to_all(system("switch", scaleup_size=64.0, link_count=6.0,
                               link_bandwidth=50e9), n, 64.0)
    assert float(switch.time) < float(cost.time)


def test_send_recv_crosses_network_only_when_group_spans_domains():
    sys_ = system()
    inside = send_recv(sys_, 1e8, 4.0, stride=2.0)  # chips 0, 2, 4, 6
    assert float(inside.scaleout_bytes) == 0.0
    across = send_recv(sys_, 1e8, 4.0, stride=8.0)
    np.testing.assert_allclose(float(across.time), 1e8 / (25e9 * SCALEOUT_EFFICIENCY) + 5e-6,
                               rtol=1e-6)


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
def test_more_bandwidth_never_slower_more_latency_never_faster(name):
    rng = np.random.default_rng(2)
    op = COLLECTIVES[name]
    for topology in TOPOLOGIES:
        for _ in range(5):
            sys_ = random_system(rng, topology)
            g = float(rng.choice([2, 8, 64, 256]))
            stride = float(rng.choice([1, 4, 8]))
            t0 = float(op(sys_, 1e7, g, stride=stride).time)
            faster = [sys_.replace(chip=sys_.chip.replace(
                          link_bandwidth=sys_.chip.link_bandwidth * 2)),
                      sys_.replace(scaleout_bandwidth=sys_.scaleout_bandwidth * 2)]
            for s in faster:
                assert float(op(s, 1e7, g, stride=stride).time) <= t0 * (1 + 1e-6)
            slower = sys_.replace(scaleup_latency=sys_.scaleup_latency * 2,
                                  scaleout_latency=sys_.scaleout_latency * 2)
            assert float(op(slower, 1e7, g, stride=stride).time) >= t0 * (1 - 1e-6)


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
def test_jit_and_vmap_over_systems(name):
    rng = np.random.default_rng(3)
    op = COLLECTIVES[name]
    systems = [random_system(rng, "switch") for _ in range(4)]
    batch = jax.tree.map(lambda *xs: jnp.stack(xs), *systems)
    batched = jax.jit(jax.vmap(lambda s: op(s, 1e8, 64.0, stride=2.0).time))(batch)
    loop = [float(op(s, 1e8, 64.0, stride=2.0).time) for s in systems]
    np.testing.assert_allclose(np.asarray(batched), loop, rtol=1e-5)
    # vmap over group sizes too (a batch of plans).
    sizes = jnp.array([1.0, 2.0, 8.0, 64.0])
    times = jax.vmap(lambda g: op(systems[0], 1e8, g).time)(sizes)
    assert np.all(np.isfinite(np.asarray(times)))


SYSTEM_FIELDS = ("scaleup_latency", "scaleout_bandwidth", "scaleout_latency")
CHIP_FIELDS = ("link_count", "link_bandwidth")


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_gradients_match_finite_differences(name, topology):
    op = COLLECTIVES[name]
    rng = np.random.default_rng(4)
    with jax.enable_x64(True):
        for _ in range(2):
            sys_ = random_system(rng, topology)
            g, stride = 64.0, 4.0

            def time(s, g=g, stride=stride):
                return op(s, 3e7, g, stride=stride).time

            grads = jax.grad(time)(sys_)
            t0 = float(time(sys_))
            for field in SYSTEM_FIELDS:
                x0 = float(getattr(sys_, field))
                fd = central_difference(
                    lambda x, field=field, sys_=sys_: float(time(sys_.replace(**{field: x}))),
                    x0)
                np.testing.assert_allclose(float(getattr(grads, field)), fd, rtol=1e-4,
                                           atol=1e-8 * t0 / x0, err_msg=field)
            for field in CHIP_FIELDS:
                x0 = float(getattr(sys_.chip, field))
                fd = central_difference(
                    lambda x, field=field, sys_=sys_: float(time(sys_.replace(
                        chip=sys_.chip.replace(**{field: x})))), x0)
                np.testing.assert_allclose(float(getattr(grads.chip, field)), fd, rtol=1e-4,
                                           atol=1e-8 * t0 / x0, err_msg=field)


def test_link_efficiency_fit_reproduces_constant_and_measurement():
    # Fit data: LLMCompass A100 x4 tensor-parallel all-reduce (inference_runs.csv), 2.8909 ms.
    np.testing.assert_allclose(fit_link_efficiency(data_dir()),
                               float(DEFAULT.link_efficiency["nvlink"]), rtol=1e-6)
    n = 8 * 2048 * 12288 * 2.0
    cost = all_reduce(system().replace(scaleup_latency=1e-6), n, 4.0)
    np.testing.assert_allclose(float(cost.time), 2.8909e-3, rtol=0.01)


def test_tpu_v4_pod_bisection_matches_published():
    # chips.csv, TPU v4 notes (Google Cloud TPU v4 documentation): a 4096-chip pod (16^3 torus)
    # has 24 TB/s of bisection bandwidth. The all-to-all bound implies a bisection of
    # 2 k^2 links x link bandwidth per direction; with the preset's 50 GB/s ICI links, divided
    # by the scale-up link efficiency (fitted on NVLink, not a topology property), it should
    # match within 10%.
    pod = SYSTEMS["TPUv4-pod"].with_num_chips(4096)
    n = 1e9
    t = float(all_to_all(pod, n, 4096.0).scaleup_time)
    implied = 4096 * n / 4 / t / float(DEFAULT.link_efficiency["ici"])
    assert abs(implied / 24e12 - 1) < 0.10


def _latency(factor: float, fabric: str = "nvlink"):
    return DEFAULT.replace(latency_scale={**DEFAULT.latency_scale, fabric: factor})


@pytest.mark.parametrize("name", sorted(COLLECTIVES))
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_latency_factor_scales_only_the_scaleup_alpha(name, topology):
    op = COLLECTIVES[name]
    sys_ = system(topology)
    sizes = jnp.asarray([0.0, 2e5, 3e7, 4e8])
    for g, stride in ((4.0, 1.0), (64.0, 1.0), (64.0, 8.0)):
        plain = op(sys_, sizes, g, stride=stride)
        # The factor is the same as scaling the system's scale-up latency, to rounding, and
        # leaves scale-out alone (the same through the entry points:
        # tests/test_calibration_module.py).
        scaled = op(sys_, sizes, g, stride=stride,
                    calibration=_latency(3.0 * float(DEFAULT.latency_scale["nvlink"])))
        ref = op(sys_.replace(scaleup_latency=sys_.scaleup_latency * 3.0), sizes, g,
                 stride=stride)
        np.testing.assert_allclose(np.asarray(scaled.time), np.asarray(ref.time), rtol=1e-6)
        np.testing.assert_array_equal(np.asarray(scaled.scaleout_time),
                                      np.asarray(plain.scaleout_time))


def test_latency_factor_gradient_is_the_latency_steps():
    # Switch all-reduce over 4 chips of one domain: 2 x 3 ring steps, so
    # d time / d latency_scale = 6 x scaleup_latency exactly; finite in float32 and float64.
    for x64 in (False, True):
        with jax.enable_x64(x64):
            dtype = jnp.float64 if x64 else jnp.float32

            def f(s, op=all_reduce, top="switch", n=196608.0, g=4.0, stride=1.0):
                cal = eqx.tree_at(lambda c: c.latency_scale["nvlink"], DEFAULT, s)
                return op(system(top), n, g, stride=stride, calibration=cal).time

            for s0 in (0.0, 1.0, 6.0):
                g = jax.grad(f)(jnp.asarray(s0, dtype))
                assert g.dtype == dtype and np.isfinite(float(g))
                np.testing.assert_allclose(float(g), 6.0 * 2e-6, rtol=1e-5)
            # Also through the torus all-to-all floor and a send crossing domains.
            for op, top in ((all_to_all, "torus3d"), (send_recv, "switch")):
                h = jax.grad(lambda s, op=op, top=top: f(s, op, top, 1e6, 64.0, 8.0))
                assert np.isfinite(float(h(jnp.asarray(2.0, dtype))))


# ----- one-node all-reduce latency of tensor-parallel decode (data/allreduce_latency.csv) ------


def _custom_all_reduce(gpus=None):
    """(message bytes, GPUs, measured s) of SGLang PR #2904's H100 custom all-reduce rows
    (TensorRT-LLM's kernel), and the model's times for them on a DGX H100."""
    with open(data_dir() / "allreduce_latency.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["kernel"].startswith("sglang")
                and (gpus is None or int(r["gpus"]) == gpus)]
    size = np.array([float(r["message_bytes"]) for r in rows])
    group = np.array([float(r["gpus"]) for r in rows])
    measured = np.array([float(r["latency_us"]) for r in rows]) * 1e-6
    system = SYSTEMS["DGX-H100"].with_num_chips(8)
    model = jax.jit(jax.vmap(lambda b, p: all_reduce(system, b, p).time))(size, group)
    return size, group, measured, np.asarray(model)


@pytest.mark.xfail(strict=True, reason=(
    "TensorRT-LLM's one-shot custom all-reduce (5.7-7.8 us up to 32 KB on 8 H100s) runs under "
    "NCCL's floor, which the model prices (17.3-19.1 us: the start-up and steps fitted to "
    "NCCL): the custom all-reduce kernels of serving runtimes are not modelled"))
def test_eight_gpu_small_all_reduce_is_its_latency_steps():
    size, _, measured, model = _custom_all_reduce(gpus=8)
    small = size <= 32768
    assert small.sum() == 3
    np.testing.assert_allclose(model[small], measured[small], rtol=0.25)


@pytest.mark.xfail(strict=True, reason=(
    "against SGLang's H100 custom all-reduce (TensorRT-LLM's kernel), dse.models.all_reduce "
    "(NCCL's fitted start-up, steps and pipelining) is 117-235% slow up to 32 KB, which the "
    "one-shot kernel avoids, and 3-64% slow at 256-512 KB; within 17% at 1 MB"))
def test_custom_all_reduce_latency_within_25_percent_at_every_size():
    _, _, measured, model = _custom_all_reduce()
    np.testing.assert_allclose(model, measured, rtol=0.25)


# ----- one-node collective sweeps, 512 B ... 512 MB (data/collective_sweeps.csv) -------------

@functools.cache
def _nccl_sweep():
    """(source key, op, GPUs, message bytes, measured s, model s) of every NCCL row of
    aiconfigurator's H100 and A100 sweeps, the model on the row's DGX."""
    rows = collective_sweep_rows(data_dir())
    model = collective_model_times(rows)
    return [(r["source_key"], r["op"], r["gpus"], r["message_bytes"], r["time_s"], t)
            for r, t in zip(rows, model, strict=True)]


def _nvls(source_key, op, gpus, *_):
    """NVLink SHARP's rows (eight H100s' all-reduce): not modelled, left out of the fit."""
    return source_key == "aic_h100_nccl" and op == "all_reduce" and gpus == 8


def test_collective_fit_reproduces_constants_and_its_rows():
    # In sample: the fit of every NCCL row but NVLink SHARP's (eight H100s' all-reduce), re-run,
    # gives the stored constants (a per-step latency of 0.88 x the stated 1 us, a 6.5 us
    # start-up, a per-chunk cost of 1.77 MB of link time, and the link efficiency the
    # LLMCompass all-reduce gives with it). Its 483 rows come out at a 15% median |error| (24%
    # before the pipelining), unbiased (+0.2% signed median; -16% before), all but one within a
    # factor 2 (H100's 1 KiB all-to-all on four GPUs, 52% under: the two generations' floors
    # differ, H100 5.5 us + 0.92 us per step and A100 9.6 + 1.05 fitted per chip).
    fitted = fit_collective_latency(data_dir())
    for name, value in fitted.items():
        field, fabric = name.split(".")
        np.testing.assert_allclose(value, float(getattr(DEFAULT, field)[fabric]), rtol=2e-3,
                                   err_msg=name)
    rows = [r for r in _nccl_sweep() if not _nvls(*r)]
    ratio = np.array([r[5] / r[4] for r in rows])
    assert len(rows) == 2 * 4 * 3 * 21 - 21
    assert np.median(np.abs(ratio - 1.0)) <= 0.17
    assert abs(np.median(ratio) - 1.0) <= 0.05
    assert np.sum((ratio <= 0.5) | (ratio >= 2.0)) <= 1


def test_mid_size_messages_follow_nccls_bandwidth_ramp():
    # 1-8 MB, where NCCL's bus bandwidth is a fifth to a half of its plateau: at the plateau's
    # bandwidth the model is 41% fast at the median (34% at the former link efficiency);
    # pipelined ((n + 2 sqrt(D n)) / w) +3% at the median, half the rows within 15%.
    rows = [r for r in _nccl_sweep() if 2 ** 20 <= r[3] <= 2 ** 23 and not _nvls(*r)]
    err = np.array([r[5] / r[4] - 1.0 for r in rows])
    assert len(rows) == 2 * 4 * 3 * 4 - 4
    assert abs(np.median(err)) <= 0.10
    assert np.median(np.abs(err)) <= 0.20
    plateau = DEFAULT.replace(pipeline_overhead_bytes=0.0)
    sweep = [r for r in collective_sweep_rows(data_dir()) if 2 ** 20 <= r["message_bytes"]
             <= 2 ** 23 and not _nvls(r["source_key"], r["op"], r["gpus"])]
    flat = collective_model_times(sweep, plateau) / np.array([r["time_s"] for r in sweep])
    assert np.median(flat - 1.0) < -0.2


def test_nccl_sweeps_have_every_op_gpu_count_and_size():
    rows = _nccl_sweep()
    assert len(rows) == 2 * 4 * 3 * 21
    assert {r[2] for r in rows} == {2.0, 4.0, 8.0}
    assert min(r[3] for r in rows) == 512 and max(r[3] for r in rows) == 2 ** 29


def test_large_messages_within_20_percent_of_nccl_on_four_and_eight_gpus():
    # From 128 MB up the collectives are bandwidth-bound and the pipelined ring holds on both
    # chips (-6 ... +14%), except NVLink SHARP's all-reduce on eight H100s (the xfail below).
    rows = [r for r in _nccl_sweep() if r[3] >= 2 ** 27 and r[2] >= 4 and not _nvls(*r)]
    assert len(rows) == 2 * 4 * 2 * 3 - 3
    err = np.array([r[5] / r[4] - 1.0 for r in rows])
    assert np.all(np.abs(err) <= 0.20), [(r[:4], round(float(e), 3))
                                         for r, e in zip(rows, err, strict=True) if abs(e) > 0.2]


@pytest.mark.xfail(strict=True, reason=(
    "NVLink SHARP (NVLS, in-switch reduction: NCCL's default all-reduce on eight H100s, "
    "445 GB/s bus bandwidth at 512 MB) is not modelled: the pipelined ring at the fitted link "
    "efficiency is 40-41% slow from 128 to 512 MB"))
def test_eight_h100_all_reduce_of_large_messages_within_20_percent():
    rows = [r for r in _nccl_sweep() if r[3] >= 2 ** 27 and _nvls(*r)]
    err = np.array([r[5] / r[4] - 1.0 for r in rows])
    assert np.all(np.abs(err) <= 0.20)


@pytest.mark.xfail(strict=True, reason=(
    "one set of NVLink constants for two generations: up to 8 MB the rows are -52..+57% "
    "(1 MB: -40..+57%; 8 MB: -18..+23%), H100 slow and A100 fast (H100's floors are lower: "
    "fitted per chip they are 5.5 us + 0.92 us per step on H100 and 9.6 + 1.05 on A100); "
    "NCCL's protocol choice (LL, LL128, Simple) is not modelled"))
def test_nccl_small_and_mid_messages_within_25_percent():
    rows = [r for r in _nccl_sweep() if r[3] <= 2 ** 23]
    err = np.array([r[5] / r[4] - 1.0 for r in rows])
    assert np.all(np.abs(err) <= 0.25)
