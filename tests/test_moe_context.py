"""MoE as trained today (routing skew, capacity, shared experts, dense layers, MLA, EP over the
tiers) and context parallelism (ring, all-gather, Ulysses and hierarchical a2a+p2p schemes) in
the training model; MoE presets."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

from dse.hardware import SYSTEMS, Reason
from dse.models import (
    CP_A2A,
    CP_A2A_P2P,
    CP_ALL_GATHER,
    CP_P2P,
    DEFAULT,
    TRANSFORMERS,
    TrainingPlan,
    Transformer,
    all_gather,
    all_to_all,
    attention,
    enumerate_plans,
    reduce_scatter,
    send_recv,
    train_step,
    training_memory,
)
from dse.models._layer import _ring_effective_context, kv_chunk_bytes, layer_costs
from dse.models._transformer import PUBLISHED_PARAMS

DGX = SYSTEMS["DGX-A100"]
DGX_64 = DGX.with_num_chips(64)
H100_64 = SYSTEMS["DGX-H100"].with_num_chips(64)

# Programs that several tests trace: the model and the plan are arguments, not constants, so
# one compiled program serves every model and plan of the same structure (each new closure
# would trace and compile train_step anew, ~1 s and ~3 s).
step_on_dgx_64 = jax.jit(lambda model, plan: train_step(model, plan, DGX_64))
reason_on_h100_64 = jax.jit(lambda model, plan: train_step(model, plan, H100_64).reason)


def small_moe(**changes):
    """A small DeepSeek-style model: MLA, 8 routed + 1 shared experts, one dense layer."""
    base = dict(layers=4.0, hidden=512.0, heads=8.0, kv_heads=8.0, ffn_hidden=256.0,
                vocab=8192.0, seq_len=2048.0, experts=8.0, top_k=2.0, head_size=64.0,
                shared_experts=1.0, dense_layers=1.0, dense_ffn_hidden=1024.0,
                q_lora_rank=128.0, kv_lora_rank=64.0, rope_head_dim=32.0, v_head_size=64.0,
                latent_attention=True, gated_mlp=True, tied_embeddings=False)
    return Transformer(**(base | changes))


# ----- presets -------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_moe_presets_match_published_parameter_counts(name):
    total, active, unit = PUBLISHED_PARAMS[name]
    m = TRANSFORMERS[name]
    # Totals within 1%; the active counts are published rounded to `unit`, so they must agree
    # within half that rounding plus 1%.
    assert abs(float(m.params) / total - 1.0) < 0.01
    assert abs(float(m.active_params) - active) <= 0.5 * unit + 0.01 * active


def test_mla_attention_parameters_by_hand():
    # DeepSeek-V3 config_671B.json: Q down 7168x1536 + norm 1536 + Q up 1536x128x(128+64);
    # KV down 7168x(512+64) + norm 512 + KV up 512x128x(128+128); output 128x128x7168.
    expected = (7168 * 1536 + 1536 + 1536 * 128 * 192 + 7168 * 576 + 512 + 512 * 128 * 256
                + 128 * 128 * 7168)
    assert float(TRANSFORMERS["deepseek-v3"].attention_params_per_layer) == expected


def test_shared_experts_and_dense_layers_count_parameters():
    m = small_moe(shared_experts=0.0, dense_layers=0.0)
    expert = float(m.expert_params_per_layer)
    shared = m.replace(shared_experts=2.0)
    np.testing.assert_allclose(float(shared.params - m.params), 2.0 * 4.0 * expert, rtol=1e-6)
    np.testing.assert_allclose(float(shared.active_params - m.active_params),
                               2.0 * 4.0 * expert, rtol=1e-6)
    dense = m.replace(dense_layers=1.0)
    # One MoE layer (8 experts + router) replaced by a dense MLP of width 1024.
    diff = float(m.params - dense.params)
    np.testing.assert_allclose(diff, 8 * expert + 512 * 8 - 3 * 512 * 1024, rtol=1e-6)
    with pytest.raises(ValueError, match="dense_layers"):
        m.replace(dense_layers=5.0)


# ----- routing: imbalance, capacity, dropped tokens --------------------------------------------
def test_capacity_factor_caps_the_busiest_expert_and_reports_drops():
    m = small_moe(expert_imbalance=2.0)
    assert float(m.expert_load) == 2.0 and float(m.dropped_token_fraction) == 0.0
    capped = m.replace(capacity_factor=1.25)
    assert float(capped.expert_load) == 1.25
    np.testing.assert_allclose(float(capped.dropped_token_fraction), 1.0 - 1.25 / 2.0)
    roomy = m.replace(capacity_factor=3.0)
    assert float(roomy.expert_load) == 2.0 and float(roomy.dropped_token_fraction) == 0.0


def test_imbalance_slows_expert_compute_and_all_to_all():
    plan = TrainingPlan(tp=1, dp=8, ep=8, global_batch=16)
    system = DGX.with_num_chips(8)
    base = train_step(small_moe(), plan, system)
    skewed = train_step(small_moe(expert_imbalance=1.5), plan, system)
    capped = train_step(small_moe(expert_imbalance=1.5, capacity_factor=1.0), plan, system)
    assert float(skewed.ep_comm_time) > float(base.ep_comm_time)
    assert float(skewed.compute_time) > float(base.compute_time)
    # Capacity factor 1 caps the load at the balanced share: the balanced costs come back.
    np.testing.assert_allclose(float(capped.step_time), float(base.step_time), rtol=1e-6)


def test_dispatcher_permutations_copy_the_routed_rows_by_hand():
    # Megatron-Core's all-to-all dispatcher: the chip's tokens gathered top_k times and summed
    # back (read 1 + write 1 / k), the received rows sorted and unsorted (several local
    # experts); DeepEP sends and sums in its kernels, so only the received rows are permuted
    # and back. Bytes at 2 per element, forward = backward; zero for a dense model.
    from dse.models._layer import _moe_permute_ops

    m = small_moe(dense_layers=0.0, shared_experts=0.0)
    plan = TrainingPlan(tp=2.0, dp=4.0, ep=2.0, etp=1.0, microbatch_size=2.0, global_batch=32.0,
                        sequence_parallel=1.0)
    h, k, tokens = 512.0, 2.0, 2.0 * 2048.0
    sent = tokens / 2.0 * k * h  # the sequence-parallel shard, top_k rows each
    received = tokens * k / 2.0 * h  # the local experts' rows (balanced; etp 1 of tp 2)
    args = (DGX.with_num_chips(8), False, DEFAULT)
    _, _, fwd_bytes, all_bytes, _, _ = _moe_permute_ops(m, plan, *args)
    expected = 2.0 * (2.0 * sent + (1.0 + 1.0 / k) * sent + 2.0 * 2.0 * received)
    np.testing.assert_allclose(float(fwd_bytes), expected, rtol=1e-6)
    np.testing.assert_allclose(float(all_bytes), 2.0 * expected, rtol=1e-6)
    deepep = _moe_permute_ops(m, plan.replace(ep_hierarchical=1.0), *args)
    np.testing.assert_allclose(float(deepep[2]), 2.0 * 2.0 * 2.0 * received, rtol=1e-6)
    dense = _moe_permute_ops(m.replace(experts=1.0, top_k=1.0), plan.replace(ep=1.0), *args)
    assert all(float(x) == 0.0 for x in dense)


def test_expert_all_to_all_leaves_the_scale_up_domain():
    # DGX-A100: 8 GPUs per NVSwitch domain. EP 8 (tp 1) stays inside; EP 16 sends half of its
    # all-to-all over InfiniBand, so the per-byte time rises well above the in-domain one.
    system = DGX.with_num_chips(64)
    msg = 64e6
    inside = all_to_all(system, msg, 8.0)
    across = all_to_all(system, msg, 16.0)
    assert float(inside.scaleout_bytes) == 0.0
    np.testing.assert_allclose(float(across.scaleout_bytes), 8.0 / 16.0 * msg, rtol=1e-6)
    assert float(across.time) > 2.0 * float(inside.time)
    # Strided by TP: with tp 2 an EP group of 8 spans two domains.
    strided = all_to_all(system, msg, 8.0, stride=2.0)
    assert float(strided.scaleout_bytes) > 0.0


def test_hierarchical_dispatch_crosses_the_network_once_per_node():
    # Qwen3-235B's routing (128 experts, top 8) over EP 32 on DGX H100 (4 nodes of 8): a
    # token's 8 experts fall in 4 (1 - C(96, 8) / C(128, 8)) = 3.63 nodes on average, 2.72 of
    # them remote, where a plain all-to-all sends 8 x 3/4 = 6 remote copies. DeepEP-style
    # dispatch sends the 2.72 over InfiniBand and forwards inside each node over NVLink.
    import math

    from dse.models._layer import domains_per_token, expert_dispatch

    model = TRANSFORMERS["qwen3-235b-a22b"]
    system = SYSTEMS["DGX-H100"].with_num_chips(256)
    miss = math.comb(96, 8) / math.comb(128, 8)
    assert float(domains_per_token(128.0, 8.0, 4.0)) == pytest.approx(4 * (1 - miss), rel=1e-4)
    assert float(domains_per_token(128.0, 8.0, 1.0)) == 1.0
    base = dict(tp=2.0, pp=2.0, dp=64.0, ep=32.0, etp=1.0, global_batch=128.0)
    msg = 100e6
    plain = expert_dispatch(model, TrainingPlan(**base), system, msg)
    deep = expert_dispatch(model, TrainingPlan(**base, ep_hierarchical=1.0), system, msg)
    np.testing.assert_allclose(float(deep.scaleout_bytes) / float(plain.scaleout_bytes),
                               3 * (1 - miss) / 6.0, rtol=1e-4)
    # Every copy bound for another GPU of its node crosses NVLink once: 7/8 of the buffer.
    np.testing.assert_allclose(float(deep.scaleup_bytes), 7.0 / 8.0 * msg, rtol=1e-5)
    # The bandwidth time of each tier follows its bytes; the latency steps stay the same.
    from dse.models import DEFAULT

    ib = float(system.scaleout_bandwidth * DEFAULT.scaleout_efficiency)
    np.testing.assert_allclose(float(deep.scaleout_time) - float(plain.scaleout_time),
                               (float(deep.scaleout_bytes) - float(plain.scaleout_bytes)) / ib,
                               rtol=1e-4)
    assert float(deep.time) < 0.65 * float(plain.time)
    # Over an explicit network (its tiers pipelined) the same bytes, and a faster dispatch.
    from dse.hardware import NETWORKS

    roce = system.replace(network=NETWORKS["llama3-roce"])
    plain_n = expert_dispatch(model, TrainingPlan(**base), roce, msg)
    deep_n = expert_dispatch(model, TrainingPlan(**base, ep_hierarchical=1.0), roce, msg)
    assert float(plain_n.time) == float(all_to_all(roce, msg, 32.0, stride=1.0).time)
    np.testing.assert_allclose(float(deep_n.scaleout_bytes), float(deep.scaleout_bytes),
                               rtol=1e-6)
    assert float(deep_n.time) < float(plain_n.time)
    # Inside one node the two schemes are the same all-to-all.
    inside = dict(base, ep=8.0, tp=1.0, dp=128.0)
    a = expert_dispatch(model, TrainingPlan(**inside), system, msg)
    b = expert_dispatch(model, TrainingPlan(**inside, ep_hierarchical=1.0), system, msg)
    assert float(a.time) == pytest.approx(float(b.time), rel=1e-6)
    with pytest.raises(ValueError, match="ep_hierarchical"):
        TrainingPlan(ep_hierarchical=0.5)
    # Differentiable in the routing and the node size it depends on (float64 differences).
    with jax.enable_x64(True):
        f = jax.jit(lambda g: domains_per_token(jnp.float64(128.0), jnp.float64(8.0), g))
        analytic = float(jax.grad(lambda g: domains_per_token(128.0, 8.0, g))(jnp.float64(4.0)))
        numeric = (float(f(4.0 + 1e-5)) - float(f(4.0 - 1e-5))) / 2e-5
        assert analytic == pytest.approx(numeric, rel=1e-5) and analytic > 0.0


def test_combined_1f1b_hides_each_all_to_all_behind_the_other_micro_batch_by_hand():
    from dse.models._layer import DEEPEP_SMS, _combined_1f1b_ep_comm

    chip = SYSTEMS["DGX-H100"].chip  # 132 SMs
    # Four all-to-alls of 1 s each; attention 0.5 s forward and backward, experts 3 s.
    # Phases: combine bwd (1) vs attention fwd (0.5) shows 0.5; dispatch fwd + bwd (2) vs the
    # experts (3) shows nothing; combine fwd (1) vs attention bwd (0.5) shows 0.5. PP 2 with 8
    # micro-batches: 2 / 8 of them run outside the merged steady state, all four exposed.
    plan = TrainingPlan(pp=2.0, dp=4.0, ep=4.0, global_batch=32.0, ep_overlap=1.0)
    exposed = _combined_1f1b_ep_comm(plan, chip, 4.0, 0.5, 0.5, 3.0)
    assert float(exposed) == pytest.approx(0.75 * 1.0 + 0.25 * 4.0, rel=1e-6)
    # DeepEP's kernels hold 20 of the 132 SMs: beside a longer compute a phase still shows
    # the all-to-all's share of the SMs (2 x 20/132 in the experts' phase).
    s = DEEPEP_SMS / 132.0
    deep = _combined_1f1b_ep_comm(plan.replace(ep_hierarchical=1.0), chip, 4.0, 0.5, 0.5, 3.0)
    assert float(deep) == pytest.approx(0.75 * (0.5 + 2.0 * s + 0.5) + 0.25 * 4.0, rel=1e-6)
    # Off, or no steady state to merge (as many micro-batches as stages): all exposed.
    assert float(_combined_1f1b_ep_comm(plan.replace(ep_overlap=0.0), chip, 4.0, .5, .5, 3.)) == 4.0
    few = plan.replace(global_batch=8.0)
    assert float(_combined_1f1b_ep_comm(few, chip, 4.0, 0.5, 0.5, 3.0)) == pytest.approx(4.0)
    # Megatron-Core refuses it under full recomputation; so does a plan by hand.
    with pytest.raises(ValueError, match="ep_overlap must be 0 under full recomputation"):
        plan.replace(recompute=2.0)
    with pytest.raises(ValueError, match="ep_overlap"):
        TrainingPlan(ep_overlap=0.5)
    # The plan space offers it to every plan Megatron-Core can run it with.
    plans = enumerate_plans(small_moe(), 16, 64, ep_overlap=1)
    full = np.asarray(plans.recompute) == 2.0
    assert full.any() and not full.all()
    np.testing.assert_array_equal(np.asarray(plans.ep_overlap), np.where(full, 0.0, 1.0))


def overlap_model():
    """A 16-expert GQA MoE."""
    return Transformer(layers=4.0, hidden=1024.0, heads=16.0, kv_heads=4.0, ffn_hidden=512.0,
                       vocab=8192.0, seq_len=2048.0, experts=16.0, top_k=4.0, gated_mlp=True,
                       tied_embeddings=False)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ep_overlap_moves_only_the_all_to_all_and_differentiates(dtype):
    with jax.enable_x64(dtype == "float64"):
        system = SYSTEMS["DGX-H100"].with_num_chips(32)
        # EP 16 over two DGX H100 nodes, and EP 1; each without and with the overlap.
        plans = TrainingPlan(pp=2.0, dp=16.0, ep=jnp.asarray([16.0, 16.0, 1.0, 1.0]), etp=1.0,
                             global_batch=128.0, ep_hierarchical=1.0,
                             ep_overlap=jnp.asarray([0.0, 1.0, 0.0, 1.0]))
        r = eqx.filter_jit(jax.vmap(lambda p: train_step(overlap_model(), p, system)))(plans)
        plain, merged = np.asarray(r.ep_comm_time[:2])
        assert 0.0 < merged < plain
        np.testing.assert_allclose(np.asarray(r.compute_time[:2]), float(r.compute_time[0]),
                                   rtol=1e-6)
        # The step sheds the all-to-all time the schedule hides (and the bubble its share).
        shed = np.asarray(r.ep_comm_time + r.bubble_time)
        np.testing.assert_allclose(float(r.step_time[0] - r.step_time[1]), shed[0] - shed[1],
                                   rtol=1e-4)
        # With EP 1 there is no all-to-all to hide.
        assert float(r.step_time[2]) == float(r.step_time[3])

        def exposed(bandwidth):
            slow = system.replace(scaleout_bandwidth=bandwidth)
            plan = TrainingPlan(pp=2.0, dp=16.0, ep=16.0, etp=1.0, global_batch=128.0,
                                ep_hierarchical=1.0, ep_overlap=1.0)
            return train_step(overlap_model(), plan, slow).ep_comm_time

        f = jax.jit(exposed)
        rates = jnp.asarray([1e9, 2e9, 4e9], dtype)  # slow links: the all-to-alls outlast
        values, grads = jax.jit(jax.vmap(jax.value_and_grad(exposed)))(rates)
        assert float(values[1]) == pytest.approx(float(f(rates[1])), rel=1e-5)
        assert np.all(np.diff(np.asarray(values)) < 0.0)  # faster links, less exposed
        assert np.all(np.isfinite(np.asarray(grads))) and np.all(np.asarray(grads) < 0.0)
        if dtype == "float64":
            numeric = central_difference(lambda x: float(f(jnp.asarray(x))), 2e9)
            assert float(grads[1]) == pytest.approx(numeric, rel=1e-5)


def test_recomputed_moe_blocks_keep_their_input_and_redo_their_all_to_alls_by_hand():
    # Megatron-Core's --recompute-modules moe (moe_layer.py: the whole block, dispatch and
    # combine included, under tensor_parallel.checkpoint). PP 2, 8 micro-batches of one
    # 2048-token sequence, 2 layers per stage: the first stage stores 2 x min(8, 2) layers.
    system = SYSTEMS["DGX-H100"].with_num_chips(32)
    model = overlap_model()
    plans = TrainingPlan(pp=2.0, dp=16.0, ep=16.0, etp=1.0, global_batch=128.0,
                         recompute=1.0, recompute_moe=jnp.asarray([0.0, 1.0]))
    r = eqx.filter_jit(jax.vmap(lambda p: train_step(model, p, system)))(plans)
    # An MoE block stores top_k x load tokens' up / gate outputs and activation output (16-bit)
    # and the down projection's input: 2048 x 4 x 512 x (2 x 2 + 2) bytes. Recomputed, it keeps
    # only its input; one block is rebuilt at a time in backward.
    block = 2048.0 * 4.0 * float(model.expert_load) * 512.0 * (2.0 * 2.0 + 2.0)
    np.testing.assert_allclose(float(r.activations_bytes[0] - r.activations_bytes[1]),
                               (2.0 * 2.0 - 1.0) * block, rtol=1e-6)
    # The dispatch and combine run again: six all-to-alls a layer instead of four.
    np.testing.assert_allclose(float(r.ep_comm_time[1] / r.ep_comm_time[0]), 1.5, rtol=1e-6)
    assert float(r.compute_time[1]) > float(r.compute_time[0])
    # HFU counts the recomputed forward GEMMs: per token and layer 2 x (top_k experts of
    # 3 x 1024 x 512 gated-MLP weights + the 1024 x 16 router), 128 x 2048 tokens, 4 layers.
    extra = 128.0 * 2048.0 * 4.0 * 2.0 * (4.0 * 3.0 * 1024.0 * 512.0 + 1024.0 * 16.0)
    np.testing.assert_allclose(float(r.hardware_flops[1] - r.hardware_flops[0]), extra,
                               rtol=1e-5)
    np.testing.assert_allclose(float(r.model_flops[1]), float(r.model_flops[0]), rtol=1e-7)
    # Megatron-Core refuses it beside the combined 1F1B schedule; so does a plan by hand.
    with pytest.raises(ValueError, match="ep_overlap must be 0 when the MoE blocks are"):
        TrainingPlan(ep=16.0, recompute_moe=1.0, ep_overlap=1.0)
    with pytest.raises(ValueError, match="recompute_moe"):
        TrainingPlan(recompute_moe=0.5)


# ----- context parallelism -------------------------------------------------------------------
def test_ring_attention_does_one_cpth_of_the_causal_work():
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0)
    chip = DGX.chip
    full = attention(chip, 1.0, 32.0, 8.0, 131072.0, 131072.0, 128.0)
    for cp in (2.0, 8.0, 16.0):
        plan = TrainingPlan(cp=cp)
        kv = _ring_effective_context(model, plan)
        rank = attention(chip, 1.0, 32.0, 8.0, 131072.0 / cp, kv, 128.0)
        np.testing.assert_allclose(float(rank.flops) * cp, float(full.flops), rtol=1e-6)


def test_context_parallel_divides_activation_memory():
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0)
    one = training_memory(model, TrainingPlan(tp=4, dp=1, global_batch=1))
    eight = training_memory(model, TrainingPlan(tp=4, cp=8, dp=1, global_batch=1))
    np.testing.assert_allclose(float(one.activations) / float(eight.activations), 8.0,
                               rtol=1e-6)
    # The weights and optimizer state are the same per chip without ZeRO; ZeRO-1 shards the
    # optimizer over DP x CP.
    assert float(eight.weights) == float(one.weights)
    z1 = training_memory(model, TrainingPlan(tp=4, cp=8, global_batch=1, zero_stage=1))
    np.testing.assert_allclose(float(one.optimizer) / float(z1.optimizer), 8.0, rtol=1e-6)


def test_kv_ring_crosses_the_scale_out_network_beyond_the_domain():
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0)
    system = DGX.with_num_chips(64)
    # K and V of 131072 / cp tokens, 8 KV heads / tp of 128, 2 bytes.
    plan = TrainingPlan(tp=4, cp=2, dp=1, global_batch=1)
    np.testing.assert_allclose(float(kv_chunk_bytes(model, plan)),
                               2.0 * 65536 * 2 * 2 * 128, rtol=1e-9)
    inside = train_step(model, TrainingPlan(tp=1, cp=8, dp=8, global_batch=8), system)
    across = train_step(model, TrainingPlan(tp=8, cp=8, dp=1, global_batch=8), system)
    assert float(inside.cp_comm_time) >= 0.0 and float(across.cp_comm_time) >= 0.0
    parts = sum(getattr(across, f) for f in (
        "compute_time", "tp_comm_time", "pp_comm_time", "dp_comm_time", "ep_comm_time",
        "cp_comm_time", "bubble_time", "optimizer_time"))
    np.testing.assert_allclose(float(parts), float(across.step_time), rtol=1e-6)


def test_context_parallel_schemes_expose_their_collectives_by_hand():
    # Llama 3 8B's shape with 32 KV heads (Ulysses needs the KV heads of a TP rank to split cp
    # ways) at 128K over CP 16 x TP 2: the CP group spans four DGX nodes.
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0, kv_heads=32.0)
    system = SYSTEMS["DGX-H100"].with_num_chips(64)
    plans = {c: TrainingPlan(tp=2.0, cp=16.0, dp=2.0, global_batch=2.0, sequence_parallel=1.0,
                             cp_comm=c) for c in (CP_P2P, CP_ALL_GATHER, CP_A2A)}
    costs = {c: layer_costs(model, p, system) for c, p in plans.items()}
    link = dict(stride=2.0, calibration=DEFAULT)
    # K and V of 131072 / 16 tokens, 32 / 2 KV heads of 128, 2 bytes.
    chunk = 2.0 * 8192 * 2 * 16 * 128
    np.testing.assert_allclose(float(kv_chunk_bytes(model, plans[CP_P2P])), chunk, rtol=1e-9)
    # All-gather: K and V gathered before the forward and again before the backward, dK and
    # dV reduce-scattered, nothing hidden.
    gather = float(all_gather(system, 16 * chunk, 16.0, **link).time)
    scatter = float(reduce_scatter(system, 16 * chunk, 16.0, **link).time)
    np.testing.assert_allclose(float(costs[CP_ALL_GATHER].cp_comm), 2 * gather + scatter,
                               rtol=1e-5)
    # Ulysses: forward Q, K and V (16 heads each) in and the output (16 heads) out; backward
    # the output and its gradient in, the gradients of Q, K and V out.
    qkv, out = 2.0 * 8192 * (16 + 2 * 16) * 128, 2.0 * 8192 * 16 * 128
    a2a = sum(float(all_to_all(system, b, 16.0, **link).time) for b in (qkv, out, qkv, 2 * out))
    np.testing.assert_allclose(float(costs[CP_A2A].cp_comm), a2a, rtol=1e-5)
    # The ring sends what the all-gather sends; with Llama 3's 8 KV heads (a quarter of the
    # bytes) it hides them behind 128K tokens' attention, where the all-gather cannot.
    np.testing.assert_allclose(float(costs[CP_ALL_GATHER].comm_bytes),
                               float(costs[CP_P2P].comm_bytes), rtol=1e-6)
    gqa = TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0)
    ring, gathered = (float(layer_costs(gqa, plans[c], system).cp_comm)
                      for c in (CP_P2P, CP_ALL_GATHER))
    assert ring == 0.0 < gathered
    np.testing.assert_allclose(
        float(costs[CP_A2A].comm_bytes - costs[CP_P2P].comm_bytes),
        15 / 16 * (2 * qkv + 3 * out) - 3 * 15 * chunk, rtol=1e-5)
    # Every scheme does the same attention work: ring and all-gather in one kernel shape,
    # Ulysses over the whole sequence for 1 / 16 of the heads.
    assert float(costs[CP_ALL_GATHER].fwd) == float(costs[CP_P2P].fwd)
    np.testing.assert_allclose(float(costs[CP_A2A].fwd), float(costs[CP_P2P].fwd), rtol=0.05)
    # One layer's backward holds the other ranks' K and V beside the sequence's dK and dV.
    memory = {c: training_memory(model, p) for c, p in plans.items()}
    np.testing.assert_allclose(
        float(memory[CP_ALL_GATHER].activations - memory[CP_P2P].activations), 31 * chunk,
        rtol=1e-6)
    assert float(memory[CP_A2A].activations) == float(memory[CP_P2P].activations)
    # Without CP the scheme changes nothing, by hand and traced (where every scheme is staged).
    schemes = (CP_P2P, CP_ALL_GATHER, CP_A2A)
    no_cp = dict(tp=2.0, dp=32.0, global_batch=32.0)
    by_hand = [float(train_step(model, TrainingPlan(cp_comm=c, **no_cp), system).step_time)
               for c in schemes]
    traced = jax.jit(jax.vmap(lambda p: train_step(model, p, system).step_time))(
        TrainingPlan(cp_comm=np.array(schemes), **no_cp))
    assert by_hand[0] == by_hand[1] == by_hand[2]
    np.testing.assert_allclose(np.asarray(traced), by_hand[0], rtol=1e-6)
    assert float(traced[0]) == float(traced[1]) == float(traced[2])


def test_ulysses_needs_whole_heads_per_cp_rank():
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0)
    system = H100_64
    # 32 heads over TP 8: 4 per TP rank, which CP 8 cannot split.
    bad = TrainingPlan(tp=8.0, cp=8.0, dp=1.0, global_batch=1.0, cp_comm=CP_A2A)
    with pytest.raises(ValueError, match=r"TrainingPlan\.cp .*heads per TP rank.*got 8"):
        train_step(model, bad, system)
    flagged = reason_on_h100_64(model, bad)
    assert int(flagged) & int(Reason.SPLIT)
    # 32 query heads split 4 ways over TP 1, but its 8 KV heads do not split 16 ways.
    kv_short = TrainingPlan(tp=1.0, cp=16.0, dp=4.0, global_batch=4.0, cp_comm=CP_A2A)
    with pytest.raises(ValueError, match=r"32 query and 8 KV heads per TP rank"):
        train_step(model, kv_short, system)
    with pytest.raises(ValueError, match="TrainingPlan.cp_comm"):
        TrainingPlan(cp=2.0, cp_comm=4.0)
    # The plan search offers Ulysses only where the heads split.
    plans = enumerate_plans(model, 64, 8, recompute=(2,), zero_stages=(1,),
                            sequence_parallel=(1,), context_parallel=(1, 4, 8),
                            cp_comm=(CP_P2P, CP_ALL_GATHER, CP_A2A))
    cp, tp, scheme = (np.asarray(x) for x in (plans.cp, plans.tp, plans.cp_comm))
    assert np.all(scheme[cp == 1] == CP_P2P)
    ulysses = scheme == CP_A2A
    assert ulysses.any() and np.all(32 / tp[ulysses] % cp[ulysses] == 0)
    assert np.all(np.maximum(8 / tp[ulysses], 1) % cp[ulysses] == 0)
    with pytest.raises(ValueError, match="cp_comm"):  # no plan can run Ulysses at CP 16
        enumerate_plans(model, 64, 4, context_parallel=(16,), cp_comm=(CP_A2A,))
    assert np.sum(scheme == CP_ALL_GATHER) == np.sum((scheme == CP_P2P) & (cp > 1))


def test_hierarchical_cp_is_the_ring_at_one_and_ulysses_at_cp_and_splits_the_tiers():
    # Llama 3 8B's shape with 32 KV heads at 128K over CP 16 x TP 2 on 64 H100s: the CP group
    # spans four DGX nodes, an all-to-all group of 4 (x TP 2) fills one node's NVLink.
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=131072.0, kv_heads=32.0)
    system = H100_64
    base = dict(tp=2.0, cp=16.0, dp=2.0, global_batch=2.0, sequence_parallel=1.0)
    done = {}

    def costs(scheme, level=1.0):
        # Each scheme's costs by hand once (several checks below read the same ones).
        if (scheme, level) not in done:
            plan = TrainingPlan(cp_comm=scheme, cp_a2a=level, **base)
            done[scheme, level] = layer_costs(model, plan, system), train_step(model, plan,
                                                                               system)
        return done[scheme, level]

    fields = ("cp_comm", "comm_bytes", "fwd", "bwd")
    for level, same in ((1.0, CP_P2P), (16.0, CP_A2A)):
        (lc, r), (lc0, r0) = costs(CP_A2A_P2P, level), costs(same)
        for f in fields:
            assert float(getattr(lc, f)) == float(getattr(lc0, f)), (level, f)
        assert float(r.step_time) == float(r0.step_time)
    # Level 4, by hand: the Ulysses all-to-alls over 4 ranks 2 apart (inside the node), then
    # the ring's 3 steps between ranks 8 apart (across nodes), each a plain ring's chunk:
    # K and V of 131072 / 4 tokens for 16 / 4 KV heads of 128, 2 bytes.
    lc, _ = costs(CP_A2A_P2P, 4.0)
    chunk = 2.0 * 8192 * 2 * 16 * 128
    ring_f = float(send_recv(system, chunk, 4.0, stride=8.0).time)
    ring_b = float(send_recv(system, 2.0 * chunk, 4.0, stride=8.0).time)
    qkv, out = 2.0 * 8192 * (16 + 2 * 16) * 128, 2.0 * 8192 * 16 * 128
    a2a = sum(float(all_to_all(system, b, 4.0, stride=2.0).time)
              for b in (qkv, out, qkv, 2 * out))
    lc_ring, _ = costs(CP_P2P)
    core_f, core_b = (float(x) for x in _attention_core_times(
        model, dict(base, cp_comm=CP_A2A_P2P, cp_a2a=4.0), system))
    exposed = max(3 * ring_f - core_f, 0.0) + max(3 * ring_b - core_b, 0.0)
    np.testing.assert_allclose(float(lc.cp_comm), a2a + exposed, rtol=1e-5)
    np.testing.assert_allclose(float(lc.comm_bytes - lc_ring.comm_bytes),
                               3 / 4 * (2 * qkv + 3 * out) - 3 * (16 - 4) * chunk, rtol=1e-5)
    # Its all-to-alls stay on NVLink and its ring crosses the network 3 times, not 15: it
    # exposes less than the ring (whose 15 cross-node steps outrun the attention) and than
    # Ulysses (whose all-to-all crosses the network); the attention work is the same.
    assert float(lc.cp_comm) < min(float(costs(CP_P2P)[0].cp_comm),
                                   float(costs(CP_A2A)[0].cp_comm))
    np.testing.assert_allclose(float(lc.fwd), float(lc_ring.fwd), rtol=0.05)
    # A level that does not divide cp, or does not split the TP rank's 16 KV heads, is refused
    # by hand and flagged when traced; Llama 3's 8 KV heads (4 per TP rank) do not split 8 ways.
    for bad_model, level in ((model, 3.0), (TRANSFORMERS["llama3-8b"].replace(
            seq_len=131072.0), 8.0)):
        bad = TrainingPlan(cp_comm=CP_A2A_P2P, cp_a2a=level, **base)
        with pytest.raises(ValueError, match=r"TrainingPlan\.cp_a2a must be a divisor of cp"):
            train_step(bad_model, bad, system)
        flagged = reason_on_h100_64(bad_model, bad)
        assert int(flagged) & int(Reason.SPLIT)
    with pytest.raises(ValueError, match="TrainingPlan.cp_a2a"):
        TrainingPlan(cp=4.0, cp_comm=CP_A2A_P2P, cp_a2a=1.5)
    # A group size under another scheme would be read by nothing: refused, not ignored.
    with pytest.raises(ValueError, match=r"TrainingPlan\.cp_a2a .*1 under any other scheme"):
        train_step(model, TrainingPlan(cp_comm=CP_P2P, cp_a2a=4.0, **base), system)
    # The plan search offers every level strictly between 1 and cp that splits the heads, and
    # one traced evaluation of them equals the plans by hand.
    plans = enumerate_plans(model, 64, 2, recompute=(2,), zero_stages=(1,),
                            sequence_parallel=(1,), context_parallel=(16,),
                            cp_comm=(CP_A2A_P2P,), max_microbatch=1)
    tp, level = np.asarray(plans.tp), np.asarray(plans.cp_a2a)
    assert np.all(np.asarray(plans.cp_comm) == CP_A2A_P2P)
    assert {(float(t), float(u)) for t, u in zip(tp, level, strict=True)} == {
        (t, u) for t in (2.0, 4.0) for u in (2.0, 4.0, 8.0)}  # DP 2 or 1 divides the batch
    traced = jax.jit(jax.vmap(lambda p: train_step(model, p, system).step_time))(plans)
    k = int(np.nonzero((tp == 2.0) & (level == 4.0))[0][0])
    by_hand = train_step(model, jax.tree.map(lambda x: x[k], plans), system)
    np.testing.assert_allclose(float(traced[k]), float(by_hand.step_time), rtol=1e-5)


def _attention_core_times(model, plan_fields, system):
    """(forward, backward) attention-core times of one layer (what the ring hides behind),
    s, before the kernel fraction (as `layer_costs` passes them)."""
    from dse.models._layer import _attention_core

    plan = TrainingPlan(**plan_fields)
    fwd, bwd, *_ = _attention_core(model, plan, system, False, True, DEFAULT)
    return fwd, bwd


def test_context_parallel_schemes_gradients_match_finite_differences():
    # Each scheme's step time in float64 against central differences of the same program, at
    # random links: CP 8 x TP 2 over 32 H100s, so the CP group crosses the scale-out network.
    # 16 KV heads, 8 per TP rank: Ulysses can split them 8 ways (Llama 3's 8 could not, and
    # its plan would be a flagged one).
    rng = np.random.default_rng(3)
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=32768.0, layers=4.0, kv_heads=16.0)
    with jax.enable_x64(True):
        f64 = lambda t: jax.tree.map(  # noqa: E731
            lambda x: jnp.asarray(x, jnp.float64) if eqx_float(x) else x, t)
        model, base = f64(model), f64(SYSTEMS["DGX-H100"].with_num_chips(32))
        # ... and the hierarchical scheme with all-to-alls over pairs of CP ranks.
        plans = f64(batched(4, TrainingPlan(
            tp=2.0, cp=8.0, dp=2.0, global_batch=2.0, sequence_parallel=1.0, recompute=2.0,
            cp_comm=np.array([CP_P2P, CP_ALL_GATHER, CP_A2A, CP_A2A_P2P]),
            cp_a2a=np.array([1.0, 1.0, 1.0, 2.0]))))

        def system_at(links):
            return base.replace(chip=base.chip.replace(link_bandwidth=links[0]),
                                scaleout_bandwidth=links[1])

        def time_and_reason(p, links):
            r = train_step(model, p, system_at(links))
            return r.step_time, r.reason

        # The step's reasons ride along as aux: one program gives them (at the base links)
        # and the times and gradients (at random ones), where a second would trace it again.
        step = jax.jit(jax.vmap(jax.value_and_grad(time_and_reason, argnums=1, has_aux=True),
                                in_axes=(0, None)))
        base_links = jnp.asarray([base.chip.link_bandwidth, base.scaleout_bandwidth])
        links = base_links * jnp.asarray(rng.uniform(0.5, 2.0, 2))
        (times, _), grads = step(plans, links)
        (_, reasons), _ = step(plans, base_links)
        assert np.all(np.asarray(reasons) == 0)  # every scheme's plan is a valid one
        assert np.all(np.asarray(grads) != 0.0)  # each scheme's time moves with both tiers
        for i in range(2):
            fd = central_difference(
                lambda x, i=i: np.asarray(step(plans, links.at[i].set(x))[0][0]), float(links[i]))
            np.testing.assert_allclose(np.asarray(grads[:, i]), fd, rtol=2e-3,
                                       atol=1e-9 * float(times.max()) / float(links[i]))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_million_token_sequences_stay_finite(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        model = TRANSFORMERS["llama3-8b"].replace(seq_len=2.0 ** 20)
        model = jax.tree.map(lambda x: jnp.asarray(x, dtype), model)
        system = SYSTEMS["DGX-H100"].with_num_chips(256)
        system = jax.tree.map(lambda x: jnp.asarray(x, dtype) if eqx_float(x) else x, system)
        plan = TrainingPlan(tp=4, cp=16, dp=4, global_batch=4, recompute=2)
        plan = jax.tree.map(lambda x: jnp.asarray(x, dtype), plan)
        r = eqx.filter_jit(train_step)(model, plan, system)  # one program, not op by op
        for leaf in jax.tree.leaves(r):
            assert np.all(np.isfinite(np.asarray(leaf, dtype=np.float64)))
        # The 1M-token sequence on 16 CP ranks holds 65536 tokens of activations per chip.
        assert float(r.activations_bytes) < float(system.chip.hbm_bytes)
        assert float(r.tokens_per_s) > 0.0


def batched(n, plan):
    """Every leaf of `plan` broadcast to a leading axis of n (a batch of plans vmaps)."""
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,)), plan)


def eqx_float(x):
    return hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating)


def test_enumerate_plans_includes_context_parallel():
    model = TRANSFORMERS["llama3-8b"].replace(seq_len=65536.0)
    plans = enumerate_plans(model, 16, 4, recompute=(2,), zero_stages=(1,),
                            sequence_parallel=(0, 1), context_parallel="all")
    cps = np.asarray(plans.cp)
    assert set(np.unique(cps)) >= {1.0, 2.0, 4.0, 8.0, 16.0}
    np.testing.assert_array_equal(np.asarray(plans.chips), 16.0)
    default = enumerate_plans(model, 16, 4, recompute=(2,), zero_stages=(1,),
                              sequence_parallel=(1,))
    assert set(np.unique(np.asarray(default.cp))) == {1.0}
    with pytest.raises(ValueError, match="context_parallel"):
        enumerate_plans(model, 16, 4, context_parallel="some")


# ----- transforms ----------------------------------------------------------------------------
def _metric(model, plan, system):
    return train_step(model, plan, system, smooth=True).step_time


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_moe_and_cp_jit_vmap_and_differentiate(dtype):
    with jax.enable_x64(dtype == jnp.float64):
        rng = np.random.default_rng(0)
        cast = lambda t: jax.tree.map(  # noqa: E731
            lambda x: jnp.asarray(x, dtype) if eqx_float(x) else x, t)
        model = cast(small_moe(expert_imbalance=1.3, capacity_factor=1.2,
                               attention_window=1024.0, window_layer_share=0.5))
        base = cast(DGX.with_num_chips(32))
        plans = cast(batched(4, TrainingPlan(tp=np.array([1.0, 2.0, 2.0, 1.0]),
                                  cp=np.array([1.0, 2.0, 4.0, 8.0]),
                                  dp=np.array([32.0, 8.0, 4.0, 4.0]),
                                  ep=np.array([8.0, 8.0, 2.0, 4.0]),
                                  global_batch=np.full(4, 32.0),
                                  recompute=np.array([0.0, 1.0, 2.0, 2.0]),
                                  # plan 1's EP group (8 x etp 2) spans two nodes
                                  ep_hierarchical=np.array([0.0, 1.0, 1.0, 0.0]),
                                  ep_overlap=np.array([1.0, 0.0, 0.0, 0.0]),
                                  recompute_moe=np.array([0.0, 1.0, 0.0, 0.0]),
                                  # ring, all-gather, Ulysses and a2a+p2p CP
                                  cp_comm=np.array([0.0, 1.0, 2.0, 3.0]),
                                  cp_a2a=np.array([1.0, 1.0, 1.0, 2.0]))))
        # One jitted call over three hardware designs x four plans ...
        bws = jnp.asarray(rng.uniform(0.5, 2.0, 3) * float(base.chip.hbm_bandwidth), dtype)
        over_plans = jax.vmap(lambda p, s: _metric(model, p, s), in_axes=(0, None))
        times = jax.jit(jax.vmap(lambda bw: over_plans(
            plans, base.replace(chip=base.chip.replace(hbm_bandwidth=bw)))))(bws)
        assert times.shape == (3, 4) and times.dtype == dtype
        assert np.all(np.isfinite(times))
        # ... and differentiates at random points (one compiled gradient over all plans).
        grad_hw = jax.jit(jax.vmap(jax.grad(lambda p, s: _metric(model, p, s), argnums=1),
                                   in_axes=(0, None)))
        for _ in range(3):
            scale = jnp.asarray(rng.uniform(0.3, 3.0, 3), dtype)
            system = base.replace(chip=base.chip.replace(
                hbm_bandwidth=base.chip.hbm_bandwidth * scale[0],
                sram_bytes=base.chip.sram_bytes * scale[1]),
                scaleout_bandwidth=base.scaleout_bandwidth * scale[2])
            g = grad_hw(plans, system)
            leaves = [x for x in jax.tree.leaves(g) if eqx_float(x)]
            assert leaves and all(np.all(np.isfinite(x)) for x in leaves)
            # The bandwidth gradient is not all zero: the step depends on the hardware.
            assert float(jnp.abs(g.chip.hbm_bandwidth).sum()) > 0.0


def test_expert_tensor_parallel_maps_experts_over_the_stage():
    from dse.models._memory import stage_params

    model = small_moe(dense_layers=0.0, shared_experts=0.0)
    # Megatron-Core: ETP x EP x EDP over the same tp * cp * dp chips as TP x CP x DP.
    plan = TrainingPlan(tp=2, dp=4, ep=8, etp=1, global_batch=16)
    assert float(plan.expert_dp) == 1.0
    params = stage_params(model, plan)
    # Routed experts per chip: 8 / 8 experts, unsplit (etp 1), in every one of the 4 layers.
    np.testing.assert_allclose(float(params.expert),
                               4.0 * 8.0 / 8.0 * float(model.expert_params_per_layer),
                               rtol=1e-6)
    default = TrainingPlan(tp=2, dp=4, ep=4, global_batch=16)
    assert float(default.expert_tp) == 2.0 and float(default.expert_dp) == 1.0
    with pytest.raises(ValueError, match="ep \\* etp"):
        TrainingPlan(tp=2, dp=4, ep=8, global_batch=16)
    # The routed expert FLOPs per chip do not depend on the EP x ETP mapping: the same model
    # FLOPs, and step times of the same order.
    system = DGX.with_num_chips(8)
    a = train_step(model, plan, system)
    b = train_step(model, default, system)
    assert float(a.model_flops) == float(b.model_flops)
    assert 0.5 < float(a.compute_time) / float(b.compute_time) < 2.0


# ----- block variants ------------------------------------------------------------------------
def test_sliding_window_attention_counts_at_most_the_window():
    m = TRANSFORMERS["mistral-7b"]
    # Window 4096 over 8192 tokens: (W (W + 1) / 2 + (s - W) W) / s keys per query.
    np.testing.assert_allclose(float(m.mean_attended_keys()),
                               (4096 * 4097 / 2 + 4096 * 4096) / 8192, rtol=1e-9)
    full = m.replace(attention_window=0.0)
    assert float(full.mean_attended_keys()) == (8192 + 1) / 2
    # A window as long as the sequence changes nothing; Gemma-2-style half-local layers sit
    # between.
    assert float(m.replace(attention_window=8192.0).mean_attended_keys()) == (8192 + 1) / 2
    half = float(m.replace(window_layer_share=0.5).mean_attended_keys())
    np.testing.assert_allclose(half, 0.5 * (3072.25 + 4096.5), rtol=1e-9)
    plan = TrainingPlan(tp=8, dp=1, global_batch=1)
    system = DGX.with_num_chips(8)
    local = train_step(m.replace(seq_len=65536.0), plan, system)
    dense = train_step(full.replace(seq_len=65536.0), plan, system)
    assert float(local.compute_time) < 0.6 * float(dense.compute_time)
    assert float(local.model_flops) < float(dense.model_flops)


def test_parallel_block_halves_tensor_parallel_communication():
    gptj = TRANSFORMERS["gpt-j-6b"]
    serial = Transformer(**{f: getattr(gptj, f) for f in ("layers", "hidden", "heads",
                                                         "kv_heads", "ffn_hidden", "vocab",
                                                         "seq_len")}, tied_embeddings=False)
    plan = TrainingPlan(tp=8, dp=1, global_batch=8, microbatch_size=1)
    system = DGX.with_num_chips(8)
    par, ser = train_step(gptj, plan, system), train_step(serial, plan, system)
    np.testing.assert_allclose(float(par.tp_comm_time), 0.5 * float(ser.tp_comm_time),
                               rtol=1e-6)
    assert float(par.compute_time) < float(ser.compute_time)  # one norm instead of two
    assert float(par.model_flops) == float(ser.model_flops)


def test_uneven_pipeline_stages_are_an_error_by_hand_and_a_flag_when_traced():
    # A plan whose pp does not divide the layers (without the embedding and the loss counted):
    # by hand an error naming pp; traced (a sweep) the step is the average stage's, flagged.
    from dse.models import Reason

    model = small_moe(layers=6.0)
    plan = TrainingPlan(tp=1.0, pp=4.0, dp=16.0, ep=8.0, microbatch_size=1.0, global_batch=64.0)
    system = DGX_64
    with pytest.raises(ValueError, match="TrainingPlan.pp must be a divisor of the model's 6 "):
        train_step(model, plan, system)
    traced = step_on_dgx_64(model, plan)
    assert int(traced.reason) & int(Reason.SPLIT) and not bool(traced.fits)
    even = step_on_dgx_64(model.replace(layers=8.0), plan)
    assert 0.0 < float(traced.step_time) < float(even.step_time)


@pytest.mark.parametrize("vocab", [8192.0, 1048576.0])
def test_embedding_and_loss_counted_in_the_split_by_hand(vocab):
    # Megatron-Core's --account-for-embedding/loss-in-pipeline-split (how Qwen3's 94 layers run
    # over PP 8, Llama 3.1 405B's 126 over PP 16): 6 layers + 2 units over PP 4, 2 per stage.
    # The first stage holds 1 layer beside the embedding, the middle ones 2, the last 1 beside
    # the output layer; the busier of the last and a middle stage sets the pace.
    model = small_moe(layers=6.0, vocab=vocab, dense_layers=0.0)
    base = dict(tp=1.0, pp=4.0, dp=16.0, ep=8.0, microbatch_size=1.0, global_batch=64.0)
    system = DGX_64
    step = step_on_dgx_64
    counted = step(model, TrainingPlan(**base, account_embedding_loss=1.0))
    assert bool(counted.fits)
    # Plain splits of 4 and 8 layers: 1 and 2 layers per stage, the last adding the head.
    one = step(model.replace(layers=4.0), TrainingPlan(**base))
    two = step(model.replace(layers=8.0), TrainingPlan(**base))
    layer = float(two.compute_time - one.compute_time)  # one layer, every micro-batch
    head = float(one.compute_time) - layer
    expected = max(2.0 * layer, layer + head)
    assert float(counted.compute_time) == pytest.approx(expected, rel=1e-5)
    assert (head > layer) == (vocab > 1e6)  # both cases are exercised
    # Memory is the fuller of the first stage (one layer and the embedding, as the plain
    # 4-layer split's first stage, 4 micro-batches in flight) and the second (two layers, no
    # embedding, 3 in flight): the second with the small vocabulary, the first with the large.
    layer_weights = float(two.weights_bytes - one.weights_bytes)
    first_fuller = vocab > 1e6
    held = float(one.weights_bytes) if first_fuller else 2.0 * layer_weights
    assert float(counted.weights_bytes) == pytest.approx(held, rel=1e-6)
    assert float(counted.memory_per_chip) >= float(one.memory_per_chip) * (1.0 - 1e-6)
    # Over PP 2 the count changes nothing (3 layers + embedding, 3 + the output layer).
    pp2 = dict(base, pp=2.0, dp=32.0)
    plain = step(model, TrainingPlan(**pp2))
    both = step(model, TrainingPlan(**pp2, account_embedding_loss=1.0))
    assert float(both.step_time) == pytest.approx(float(plain.step_time), rel=1e-6)
    # By hand: pp must divide layers + 2, the interleave the units per stage.
    with pytest.raises(ValueError, match=r"divisor of the model's 6 layers \+ 2 = 8"):
        train_step(model, TrainingPlan(**dict(base, pp=3.0, dp=16.0, global_batch=48.0),
                                       account_embedding_loss=1.0), system.with_num_chips(48))
    with pytest.raises(ValueError, match="account_embedding_loss"):
        TrainingPlan(account_embedding_loss=0.5)
    if not first_fuller:
        # Jits, vmaps and differentiates: the step over HBM bandwidths, finite and never
        # slower with more bandwidth.
        def step_at(bandwidth):
            chip = system.chip.replace(hbm_bandwidth=bandwidth)
            plan = TrainingPlan(**base, account_embedding_loss=1.0)
            return train_step(model, plan, system.replace(chip=chip)).step_time

        rates = jnp.asarray([0.5, 1.0, 2.0]) * system.chip.hbm_bandwidth
        values, grads = jax.jit(jax.vmap(jax.value_and_grad(step_at)))(rates)
        assert float(values[1]) == pytest.approx(float(counted.step_time), rel=1e-5)
        assert np.all(np.isfinite(np.asarray(grads))) and np.all(np.asarray(grads) <= 0.0)
