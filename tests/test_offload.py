"""Activation offloading to host memory: memory conservation, exposed copy time, flags,
transforms, and the published runs that use it."""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

from dse.calibration import precision_training_rows
from dse.calibration._precision_data import OFFLOADED_LAYERS, predict
from dse.hardware import SYSTEMS, Reason
from dse.models import TrainingPlan, Transformer, enumerate_plans, train_step

MODEL = Transformer(layers=8.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=2816.0,
                    vocab=32000.0, seq_len=2048.0, gated_mlp=True, tied_embeddings=False)
NODE = SYSTEMS["DGX-H100"]  # 8 GPUs, PCIe Gen5 x16 to 2 TB of host memory
SHARES = (0.0, 0.25, 0.5, 1.0)


def plans(shares=SHARES, **changes):
    """One plan per offloaded share: DP 8, four micro-batches of 2 per replica, no
    recomputation."""
    base = dict(tp=1.0, pp=1.0, dp=8.0, microbatch_size=2.0, global_batch=64.0)
    return TrainingPlan(**(base | changes), activation_offload=jnp.asarray(shares))


# Read once: building the cases evaluates their plans op by op (about 3 s per call), and
# three tests read the same rows.
_precision_training_rows = functools.cache(precision_training_rows)

# One compiled step for every batch of plans and system of these tests.
step = eqx.filter_jit(jax.vmap(lambda plan, system: train_step(MODEL, plan, system),
                               in_axes=(0, None)))


def test_offloaded_activations_leave_hbm_for_host_memory():
    r = step(plans(), NODE)
    act, host = np.asarray(r.activations_bytes), np.asarray(r.host_bytes)
    stored = act[0]  # nothing offloaded: every layer's activations in HBM
    buffer = act[-1]  # everything offloaded: one layer's worth stays as the copies' buffer
    assert host[0] == 0.0 and 0.0 < buffer < stored / 4
    np.testing.assert_allclose(host, np.asarray(SHARES) * stored, rtol=1e-6)
    # Conservation: HBM + host = what was stored + the buffer, for any share of at least a
    # layer (8 layers: 0.25 is two).
    np.testing.assert_allclose(act[1:] + host[1:], stored + buffer, rtol=1e-6)
    assert np.all(np.diff(np.asarray(r.memory_per_chip)) < 0)
    # The HBM parts still sum to memory_per_chip; the host bytes are apart from them.
    parts = r.weights_bytes + r.grads_bytes + r.optimizer_bytes + r.activations_bytes
    np.testing.assert_allclose(np.asarray(parts), np.asarray(r.memory_per_chip), rtol=1e-6)
    assert np.all(np.asarray(r.fits))


def test_copies_hide_behind_compute_until_the_host_link_is_too_slow():
    # PCIe Gen5 (63 GB/s) cannot hide a small model's activations: its layers compute in
    # microseconds. A 2 TB/s link carries them inside the forward and the backward.
    pcie = step(plans(), NODE)
    assert pcie.offload_time[0] == 0.0 and np.all(np.asarray(pcie.offload_time[1:]) > 0.0)
    fast = step(plans(), NODE.replace(host_bandwidth=2e12))
    assert np.all(np.asarray(fast.offload_time) == 0.0)
    np.testing.assert_allclose(np.asarray(fast.step_time), float(fast.step_time[0]), rtol=1e-6)
    # On a 1 GB/s link the copies show: out and back, each beyond the compute it hides behind.
    # Both exposed, the time falls by 2 m B (1 / bw1 - 1 / bw2) from bw1 to bw2 (m = 4
    # micro-batches of B host bytes each; pipeline depth 1, so B = the host bytes).
    slow = [step(plans(), NODE.replace(host_bandwidth=bw)) for bw in (1e9, 2e9)]
    m = 4.0
    host = np.asarray(slow[0].host_bytes)
    drop = np.asarray(slow[0].offload_time - slow[1].offload_time)
    np.testing.assert_allclose(drop[1:], 2 * m * host[1:] * (1 / 1e9 - 1 / 2e9), rtol=1e-5)
    assert slow[0].offload_time[0] == 0.0 and np.all(np.diff(np.asarray(
        slow[0].offload_time)) > 0)
    for r in (pcie, fast, *slow):
        total = sum(np.asarray(v) for v in r.breakdown.values())
        np.testing.assert_allclose(total, np.asarray(r.step_time), rtol=1e-6)


def test_offloading_without_a_host_link_or_host_room_is_flagged():
    no_link = step(plans(), NODE.replace(host_bandwidth=0.0, host_memory=0.0))
    flags = np.asarray(no_link.reason)
    assert flags[0] == 0  # nothing offloaded: nothing needs the host
    assert np.all(flags[1:] & int(Reason.HOST_MEMORY)) and not np.any(no_link.fits[1:])
    assert np.all(np.isfinite(np.asarray(no_link.step_time)))
    # Room for half the activations: the full offload no longer fits.
    stored = float(step(plans(), NODE).activations_bytes[0])
    tight = step(plans(), NODE.replace(host_memory=0.6 * stored))
    np.testing.assert_array_equal(np.asarray(tight.fits), [True, True, True, False])


def test_bad_offload_shares_are_errors_naming_the_field():
    with pytest.raises(ValueError, match="activation_offload"):
        TrainingPlan(activation_offload=1.5)
    with pytest.raises(ValueError, match="activation_offload"):
        TrainingPlan(activation_offload=-0.1)
    with pytest.raises(ValueError, match="activation_offload"):
        enumerate_plans(MODEL, 8, 64, activation_offload=(0.0, 2.0))
    with pytest.raises(ValueError, match="host_bandwidth"):
        NODE.replace(host_bandwidth=-1.0)
    counts = [len(enumerate_plans(MODEL, 8, 64, activation_offload=a).tp)
              for a in ((0.0,), (0.0, 0.5))]
    assert counts[1] == 2 * counts[0]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_offload_time_jits_vmaps_and_differentiates(dtype):
    with jax.enable_x64(dtype == "float64"):
        plan = plans((0.5,))
        plan = jax.tree.map(lambda x: x[0], plan)

        def exposed(bw):
            system = NODE.replace(host_bandwidth=bw)
            return train_step(MODEL, plan, system).offload_time

        # The single calls' values come from the gradient's program: one compilation less.
        f = jax.jit(jax.value_and_grad(exposed))
        bws = jnp.asarray([1e9, 2e9, 4e9], dtype)
        batched = jax.jit(jax.vmap(exposed))(bws)
        looped = jnp.stack([f(b)[0] for b in bws])
        np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-5)
        g = f(jnp.asarray(1e9, dtype))[1]
        assert np.isfinite(float(g)) and float(g) < 0.0  # a faster link never costs time
        if dtype == "float64":
            numeric = central_difference(lambda b: float(f(jnp.asarray(b))[0]), 1e9)
            assert float(g) == pytest.approx(numeric, rel=1e-5)


def test_megatron_bridge_runs_that_offload_are_predicted_with_it():
    # Megatron-Bridge 25.11, Llama 3 70B FP8 (current scaling) on 64 GB200 / GB300 GPUs with
    # Megatron-FSDP: 40 and 20 of the 80 layers' activations live in the Grace CPU's memory.
    # Without offloading the model has to recompute every layer to fit and came out 23% and
    # 25% slow; with it, both within 12% (7.25 s and 7.60 s measured; the GB200 row 10%
    # fast since the collectives were pipelined, 2026-12-03, 8% before: the link efficiency
    # they re-derive rose from 0.696 to 0.772, the shared kernel fraction too).
    cases = [c for c in _precision_training_rows()[0] if c.run_id in OFFLOADED_LAYERS]
    assert len(cases) == 2
    for case in cases:
        predicted, plan, report = predict(case)
        assert float(plan.activation_offload) == OFFLOADED_LAYERS[case.run_id] / 80.0
        assert bool(report.fits) and float(report.host_bytes) > 0.0
        assert abs(predicted / case.measured - 1.0) < 0.12, (case.run_id, predicted)


# ----- tensor-parallel communication overlapped with the GEMMs ------------------------------

def tp_plans(**changes):
    """TP 8 on one DGX H100 with sequence parallelism, without and with the overlap."""
    base = dict(tp=8.0, pp=1.0, dp=1.0, microbatch_size=1.0, global_batch=8.0,
                sequence_parallel=1.0)
    return TrainingPlan(**(base | changes), tp_overlap=jnp.asarray([0.0, 1.0]))


def test_tp_overlap_hides_the_collectives_behind_the_gemms():
    wide = Transformer(layers=8.0, hidden=8192.0, heads=64.0, kv_heads=8.0, ffn_hidden=28672.0,
                       vocab=32000.0, seq_len=4096.0, gated_mlp=True, tied_embeddings=False)
    run = eqx.filter_jit(jax.vmap(lambda plan, system: train_step(wide, plan, system),
                                  in_axes=(0, None)))
    r = run(tp_plans(), NODE)
    plain, overlapped = np.asarray(r.tp_comm_time)
    # Llama-3-70B-wide layers: TP 8's GEMMs outlast its collectives, so only the
    # reduce-scatter's last chunk shows: half of each all-gather / reduce-scatter pair over t.
    assert overlapped == pytest.approx(plain / 16.0, rel=1e-5)
    # Only the TP time moves; the step keeps summing its parts.
    np.testing.assert_allclose(np.asarray(r.compute_time), float(r.compute_time[0]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(r.step_time[0] - r.step_time[1]),
                               plain - overlapped, rtol=1e-4)
    # A slow scale-up tier: the collectives outlast the GEMMs and the difference shows.
    slow = run(tp_plans(), NODE.replace(chip=NODE.chip.replace(link_bandwidth=0.5e9)))
    plain, overlapped = np.asarray(slow.tp_comm_time)
    assert plain / 16.0 < overlapped < plain
    # Megatron-Core overlaps only under sequence parallelism: all-reduces stay exposed.
    no_sp = run(tp_plans(sequence_parallel=0.0), NODE)
    np.testing.assert_array_equal(np.asarray(no_sp.step_time[0]), np.asarray(no_sp.step_time[1]))
    # Without TP there is nothing to overlap.
    single = run(tp_plans(tp=1.0, dp=8.0, global_batch=8.0, sequence_parallel=0.0), NODE)
    np.testing.assert_array_equal(np.asarray(single.step_time[0]),
                                  np.asarray(single.step_time[1]))
    with pytest.raises(ValueError, match="tp_overlap"):
        TrainingPlan(tp_overlap=0.5)


def test_runs_overlap_tp_communication_as_their_recipes_set():
    # Megatron-Bridge v0.2.0: on whenever TP > 1 (not NVFP4). NeMo 24.07 (NeMo-Framework-
    # Launcher 24.07 configs): on for GPT-3 20B, Llama 2 / 3 70B, Nemotron 8B / 22B; off for
    # GPT-3 175B and Nemotron-340B. Without TP there is nothing to overlap.
    overlap = {c.run_id: float(c.plans[0].tp_overlap[0]) for c in _precision_training_rows()[0]}
    expected = {"mbridge_25.11_DGX-H100_LLAMA3_70B_FP8-CS_64": 1.0,
                "mbridge_25.11_DGX-H100_LLAMA3.1_405B_FP8-CS_1024": 1.0,
                "mbridge_25.11_DGX-GB200_LLAMA3_70B_FP8-CS_64": 0.0,  # TP 1
                "nemo2407_LLAMA2-70B_64": 1.0, "nemo2407_Nemotron-22B_64": 1.0,
                "nemo2407_GPT3-175B_128": 0.0, "nemo2407_Nemotron-340B_128": 0.0,
                "nemo2407_LLAMA3-8B_8": 0.0}
    assert {k: overlap[k] for k in expected} == expected


def test_runs_whose_layers_do_not_split_over_pp_count_the_embedding_and_loss():
    # Llama 3.1 405B (126 layers) over PP 8 / 16 and Qwen3-235B (94) over PP 8: Megatron-Core
    # runs them only with the embedding and the loss counted as pipeline units (Megatron-
    # Bridge's recipes set both), so 128 and 96 units split evenly and each plan is valid.
    # DeepSeek-V3's 61 layers over PP 2 run an explicit layout a plan cannot state.
    from dse.calibration import precision_pairs
    from dse.models import check_training_plan

    pair_cases = [c for pair in precision_pairs() for c in (pair.low, pair.baseline)]
    counted, layouts = [], []
    for case in _precision_training_rows()[0] + pair_cases:
        plan = jax.tree.map(lambda x: x[0], case.plans[0])
        layers, pp = int(case.model.layers), int(plan.pp)
        if float(plan.account_embedding_loss) == 1.0:
            counted.append(case.model.name)
            assert int(check_training_plan(case.model, plan, case.system)) == 0, case.run_id
        elif layers % pp:
            layouts.append(case.model.name)
    assert sorted(set(counted)) == ["llama3-405b", "qwen3-235b-a22b"] and len(counted) == 10
    assert set(layouts) == {"deepseek-v3"}


def test_exposed_copies_lengthen_the_pipeline_slot():
    # Two stages, eight micro-batches each of 2 sequences: what the copies expose per
    # micro-batch also idles the other stage, (p - 1) / v = 1 slot of it (1F1B).
    two_stages = plans(pp=2.0, dp=4.0, global_batch=64.0)
    fast = step(two_stages, NODE.replace(host_bandwidth=2e12))
    slow = step(two_stages, NODE.replace(host_bandwidth=1e9))
    m = 8.0
    per_microbatch = np.asarray(slow.offload_time - fast.offload_time) / m
    assert np.all(per_microbatch[1:] > 0.0) and per_microbatch[0] == 0.0
    np.testing.assert_allclose(np.asarray(slow.bubble_time - fast.bubble_time),
                               per_microbatch, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_tp_overlap_jits_vmaps_and_differentiates(dtype):
    with jax.enable_x64(dtype == "float64"):
        plan = jax.tree.map(lambda x: x[1], tp_plans())  # overlapped

        def tp_time(link_bandwidth):
            system = NODE.replace(chip=NODE.chip.replace(link_bandwidth=link_bandwidth))
            return train_step(MODEL, plan, system).tp_comm_time

        # The single calls' values come from the gradient's program: one compilation less.
        f = jax.jit(jax.value_and_grad(tp_time))
        rates = jnp.asarray([0.5e9, 1e9, 2e9], dtype)  # slow links: the collectives show
        np.testing.assert_allclose(np.asarray(jax.jit(jax.vmap(tp_time))(rates)),
                                   np.asarray(jnp.stack([f(r)[0] for r in rates])), rtol=1e-5)
        g = f(jnp.asarray(1e9, dtype))[1]
        assert np.isfinite(float(g)) and float(g) < 0.0  # faster links never cost time
        if dtype == "float64":
            numeric = central_difference(lambda r: float(f(jnp.asarray(r))[0]), 1e9)
            assert float(g) == pytest.approx(numeric, rel=1e-5)
