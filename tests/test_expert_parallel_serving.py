"""MoE served with expert parallelism: the distinct-experts read model, the busiest EP group,
expert weights sharded over EP groups, the dispatch / combine all-to-alls, EP in the plan search.

One small MoE model and one jitted, vmapped decode keep the compiles few."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dse.hardware import SYSTEMS
from dse.models import (
    InferencePlan,
    Transformer,
    check_inference_plan,
    decode,
    enumerate_serving_plans,
)
from dse.models._inference import busiest_group_experts, distinct_experts, routed_expert_params

H100 = SYSTEMS["DGX-H100"].with_num_chips(8)
# 8 experts, top-2 (Mixtral's routing, Mistral AI 2024), at a small width.
MOE = Transformer(layers=2.0, hidden=1024.0, heads=8.0, kv_heads=8.0, ffn_hidden=2048.0,
                  vocab=32000.0, seq_len=4096.0, gated_mlp=True, tied_embeddings=False,
                  experts=8.0, top_k=2.0)
EPS = jnp.asarray([1.0, 2.0, 4.0, 8.0])


@jax.jit
def _decode_by_ep(system, batch):
    """Decode on 8 chips, EP in (1, 2, 4, 8) and TP the rest, one vmapped call."""
    def one(ep):
        plan = InferencePlan(tp=8.0 / ep, ep=ep, batch=batch, sequence_parallel=False)
        return decode(MOE, plan, system, 1000.0)
    return jax.vmap(one)(EPS)


@jax.jit
def _counts(experts, top_k, tokens, ep):
    """distinct_experts and busiest_group_experts over a batch of cases, one compiled call."""
    return (distinct_experts(experts, top_k, tokens),
            busiest_group_experts(8.0, 2.0, tokens, ep))


def test_distinct_and_busiest_group_experts_match_their_closed_forms():
    # (E, k, T, ep): Mixtral-like 8 experts top-2 at 1, 8 and 64 tokens; a huge batch; dense;
    # every token visiting every expert.
    cases = np.array([[8.0, 2.0, 1.0, 1.0], [8.0, 2.0, 8.0, 8.0], [8.0, 2.0, 64.0, 4.0],
                      [8.0, 2.0, 1e4, 2.0], [1.0, 1.0, 50.0, 1.0], [8.0, 8.0, 3.0, 1.0]])
    distinct, busiest = (np.asarray(x) for x in _counts(*cases.T))
    p = 1.0 - (1.0 - 2.0 / 8.0) ** cases[:4, 2]
    np.testing.assert_allclose(distinct[:4], 8.0 * p, rtol=1e-5)
    # One token touches exactly top_k experts, many touch all E, a dense model its one MLP.
    np.testing.assert_allclose(distinct[[0, 3, 4, 5]], [2.0, 8.0, 1.0, 8.0], rtol=1e-6)
    # ep = 1: the mean n p. ep = E (one expert a group): P(a group is touched) = 1 - (1-p)^E.
    # ep = 4 (two experts a group): sum over j < 2 of 1 - F(j)^4, F the Binomial(2, p) CDF.
    f0, f1 = (1.0 - p[2]) ** 2, 1.0 - p[2] ** 2
    want = [8.0 * p[0], 1.0 - (1.0 - p[1]) ** 8, (1.0 - f0 ** 4) + (1.0 - f1 ** 4), 4.0]
    np.testing.assert_allclose(busiest[:4], want, rtol=1e-5)


def test_expert_weights_shard_over_ep_and_kv_and_flops_are_conserved():
    r = _decode_by_ep(H100, 256.0)
    weights = np.asarray(r.weight_bytes)
    routed = float(routed_expert_params(MOE))
    params = float(MOE.params)
    # Per chip: attention and dense weights split tp ways, routed experts tp x ep = 8 ways.
    want = [(params - routed + routed / ep) / (8.0 / ep) * 2.0 for ep in (1, 2, 4, 8)]
    np.testing.assert_allclose(weights, want, rtol=1e-6)
    # The KV cache of the 256 sequences, all chips together, is the same in every layout.
    kv_total = np.asarray(r.kv_cache_bytes) * 8.0
    np.testing.assert_allclose(kv_total, kv_total[0], rtol=1e-6)
    # 256 tokens touch every expert: the pass does the same expert FLOP in every layout; only
    # the router and the norms, replicated over the TP chips, shrink as EP replaces TP.
    flops = np.asarray(r.flops)
    np.testing.assert_allclose(flops, flops[0], rtol=5e-3)
    assert np.all(np.diff(flops) < 0.0)


def test_ep_pays_dispatch_and_combine_and_concentrates_reads_at_small_batch():
    one = _decode_by_ep(H100, 1.0)
    # EP 8 (TP 1): no all-reduce but two all-to-alls per MoE layer; TP 8: all-reduces only.
    assert float(one.tp_comm_time[3]) > 0.0
    # One sequence (2 of 8 experts): under TP 8 each chip reads 2/8 of two experts; under EP 8
    # the chip that holds a touched expert reads all of it (and the whole attention alone).
    assert float(one.hbm_bytes[3]) > 3.0 * float(one.hbm_bytes[0])
    # At one token the collectives are latency-bound: EP 8's two all-to-alls cost less than
    # TP 8's all-reduces, as NCCL's one-node floors on 8 H100s are (all-to-all 7.4 us,
    # all-reduce 15.6 us: data/collective_sweeps.csv).
    assert float(one.tp_comm_time[3]) < float(one.tp_comm_time[0])


def test_ep_must_divide_the_experts_and_a_dense_model_has_none():
    with pytest.raises(ValueError, match=r"InferencePlan\.ep.*divisor of the model's 8 experts"):
        check_inference_plan(MOE, InferencePlan(tp=1.0, ep=3.0), H100.with_num_chips(3))
    dense = MOE.replace(experts=1.0, top_k=1.0)
    with pytest.raises(ValueError, match=r"InferencePlan\.ep"):
        check_inference_plan(dense, InferencePlan(tp=1.0, ep=2.0), H100.with_num_chips(2))
    with pytest.raises(ValueError, match=r"InferencePlan\.ep"):
        InferencePlan(ep=1.5)
    # Traced: the flag, not an exception.
    flags = jax.jit(lambda ep: check_inference_plan(MOE, InferencePlan(tp=1.0, ep=ep),
                                                    H100.with_num_chips(24)))(3.0)
    assert int(flags) != 0


def test_serving_plan_space_has_ep_for_moe_only():
    plans = enumerate_serving_plans(MOE, 8, max_batches=(256,), max_tokens=(2048,))
    inf = plans.plan.inference
    tp, pp, ep = (np.asarray(x) for x in (inf.tp, inf.pp, inf.ep))
    np.testing.assert_array_equal(np.asarray(plans.plan.replicas) * tp * pp * ep, 8.0)
    assert set(ep.tolist()) == {1.0, 2.0, 4.0, 8.0}
    # Every (tp, pp, ep) with tp | 8 heads, pp | 2 layers, ep | 8 experts, tp pp ep | 8 chips.
    want = {(a, b, c) for a in (1, 2, 4, 8) for b in (1, 2) for c in (1, 2, 4, 8)
            if 8 % (a * b * c) == 0}
    assert {tuple(r) for r in np.stack([tp, pp, ep], 1).tolist()} == want
    assert int(np.max(np.asarray(check_inference_plan(MOE, inf, H100)))) == 0
    dense = enumerate_serving_plans(MOE.replace(experts=1.0, top_k=1.0), 8,
                                    max_batches=(256,), max_tokens=(2048,))
    assert np.all(np.asarray(dense.plan.inference.ep) == 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_ep_decode_jits_vmaps_and_differentiates(dtype):
    def total(bw, link):
        chip = H100.chip.replace(hbm_bandwidth=bw, link_bandwidth=link)
        r = _decode_by_ep(H100.replace(chip=chip), jnp.asarray(4.0, dtype=bw.dtype))
        return jnp.sum(r.time)

    grad = jax.jit(jax.grad(total, argnums=(0, 1)))
    rng = np.random.default_rng(7)
    with jax.enable_x64(dtype == "float64"):
        for _ in range(2):
            s = np.exp(rng.uniform(np.log(0.5), np.log(2.0), 2))
            g = grad(jnp.asarray(H100.chip.hbm_bandwidth * s[0], dtype=dtype),
                     jnp.asarray(H100.chip.link_bandwidth * s[1], dtype=dtype))
            assert all(np.isfinite(float(v)) for v in g)
            # More bandwidth never slows a decode step.
            assert float(g[0]) < 0.0 and float(g[1]) <= 0.0


def test_moe_rows_of_unstated_ep_are_left_out_or_read_as_asked():
    from dse.calibration import serving_cases

    _, skipped = serving_cases(external=True)
    qwen = [s for s in skipped if "Qwen3" in s.run_id]
    # 10 H200, 7 H100 and 10 B200 rows of the TensorRT-LLM v1.0 page (blank cells are not rows).
    assert len(qwen) == 27 and all("EP size the source does not give" in s.reason for s in qwen)
    as_ep, _ = serving_cases(external=True, moe_layout="ep")
    ep = [c for c in as_ep if "Qwen3" in c.run_id]
    assert len(ep) == 27
    assert all(float(c.plan.inference.ep) == 8.0 and float(c.plan.inference.tp) == 1.0
               for c in ep)
    with pytest.raises(ValueError, match="moe_layout must be None or one of"):
        serving_cases(external=True, moe_layout="dp")
