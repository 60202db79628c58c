"""Speculative decoding: a step's accounting, where it pays, its errors and its derivatives.

A few module-level jitted functions keep the compiles few (each costs seconds): every speculative
step of Llama 3 8B is `_step`'s program, and every speculative serving report of it without CUDA
graphs (its gradients aside) is `_serve`'s."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import central_difference

from dse.hardware import SYSTEMS, Reason
from dse.models import (
    TRANSFORMERS,
    InferencePlan,
    ServingPlan,
    ServingWorkload,
    Speculation,
    chain_acceptance_length,
    decode,
    eagle_draft,
    serve,
    serve_continuous,
    speculative_decode,
)

LLAMA = TRANSFORMERS["llama3-8b"]
H100 = SYSTEMS["DGX-H100"].with_num_chips(1)
PLAN = InferencePlan(tp=1.0, batch=1.0)
# An EAGLE-style tree: 8 draft passes of top-10, 60 tokens verified, 5 tokens per step.
TREE = Speculation(draft=eagle_draft(LLAMA, 32000.0), acceptance_length=5.0, draft_passes=8.0,
                   draft_width=10.0, verify_tokens=60.0)


@jax.jit
def _step(plan, system, context, spec):
    return speculative_decode(LLAMA, plan, system, context, spec)


@jax.jit
def _serve(plan, load, draft, tau, passes, width, verify):
    # The speculation is built inside the trace, so that a value out of range is flagged (not
    # refused).
    spec = Speculation(draft=draft, acceptance_length=tau, draft_passes=passes, draft_width=width,
                       verify_tokens=verify)
    return serve_continuous(LLAMA, plan, H100, load, speculation=spec)


def _serve_fields(plan, load, draft, tau, passes, width, verify):
    """`serve_continuous` of Llama 3 8B on `H100` decoding speculatively with these fields (any
    of them out of range): one program for every plan and load of one structure."""
    # float32 arrays, whether given as Python floats or as a Speculation's leaves: weakly typed
    # ones would compile the program again.
    return _serve(plan, load, draft,
                  *(jnp.asarray(v, jnp.float32) for v in (tau, passes, width, verify)))


def _served(plan, load, spec):
    """`_serve_fields` with `spec`'s draft and fields."""
    return _serve_fields(plan, load, spec.draft, spec.acceptance_length, spec.draft_passes,
                         spec.draft_width, spec.verify_tokens)


def test_chain_acceptance_length_is_leviathans_expectation():
    alpha = jnp.asarray([0.0, 0.5, 0.8, 1.0])
    expected = [1.0, (1 - 0.5**5) / 0.5, (1 - 0.8**5) / 0.2, 5.0]
    np.testing.assert_allclose(np.asarray(chain_acceptance_length(alpha, 4.0)), expected,
                               rtol=1e-6)
    # A chain verifies its drafts and the token before them by default.
    chain = Speculation(draft=LLAMA.replace(layers=2.0), acceptance_length=3.0, draft_passes=4.0)
    assert float(chain.verify_tokens) == 5.0


def test_a_step_is_the_draft_passes_and_the_verification_over_tau():
    r = _step(PLAN, H100, 1000.0, TREE)
    np.testing.assert_allclose(float(r.step_time), float(r.verify.time + 8.0 * r.draft.time),
                               rtol=1e-6)
    np.testing.assert_allclose(float(r.tpot), float(r.step_time) / 5.0, rtol=1e-6)
    np.testing.assert_allclose(float(r.speedup), float(r.plain.time / r.tpot), rtol=1e-6)
    # The plain step is `decode`'s at the context after the step's first token.
    np.testing.assert_allclose(float(r.plain.time), float(decode(LLAMA, PLAN, H100, 1001.0).time),
                               rtol=1e-6)
    # The verification pass scores 60 tokens (logits for each) and the draft pass 10.
    assert float(r.verify.tokens) == 60.0 and float(r.draft.tokens) == 10.0
    # The draft's layer and KV cache add to the memory, and its LM head only where it drafts
    # over a vocabulary of its own (32,000 tokens here: EAGLE-3's); over the target's vocabulary
    # it shares the target's head and embedding.
    from dse.models._speculative import draft_weight_bytes

    shared = TREE.replace(draft=eagle_draft(LLAMA))
    d = _step(PLAN, H100, 1000.0, shared)
    np.testing.assert_allclose(float(r.memory_per_chip - d.memory_per_chip),
                               32000.0 * 4096.0 * 2.0, rtol=1e-3)
    layer = float(LLAMA.params_per_layer) * 2.0
    np.testing.assert_allclose(float(draft_weight_bytes(shared, LLAMA, PLAN)), layer, rtol=1e-6)
    assert float(d.memory_per_chip) > float(decode(LLAMA, PLAN, H100, 1001.0).memory_per_chip)


def test_speculation_pays_at_small_batches_and_not_once_decode_is_compute_bound():
    # At batch 1 the verification of 60 tokens reads the same weights as one token's step.
    one = _step(PLAN, H100, 1000.0, TREE)
    assert float(one.verify.time) < 1.2 * float(one.plain.time)
    assert 3.0 < float(one.speedup) < 5.0
    speedups = [float(_step(PLAN.replace(batch=b), H100, 1000.0, TREE).speedup)
                for b in (1.0, 4.0, 16.0, 64.0)]
    assert all(a > b for a, b in zip(speedups, speedups[1:], strict=False)), speedups
    assert speedups[-1] < 1.0
    # More tokens accepted per step: proportionally less time per token.
    more = _step(PLAN, H100, 1000.0, TREE.replace(acceptance_length=6.0))
    np.testing.assert_allclose(float(more.tpot) * 6.0, float(one.tpot) * 5.0, rtol=1e-6)


def test_serve_decodes_speculatively_at_the_mean_context():
    plain = serve(LLAMA, PLAN, H100, 1.0, 500.0, 500.0)
    spec = serve(LLAMA, PLAN, H100, 1.0, 500.0, 500.0, speculation=TREE)
    step = speculative_decode(LLAMA, PLAN, H100, 500.0 + 0.5 * 501.0, TREE)
    np.testing.assert_allclose(float(spec.tpot), float(step.tpot), rtol=1e-6)
    np.testing.assert_allclose(float(spec.ttft), float(plain.ttft), rtol=1e-6)
    np.testing.assert_allclose(float(spec.total_latency),
                               float(spec.ttft + 500.0 * spec.tpot), rtol=1e-6)
    assert float(spec.tpot) < float(plain.tpot)
    assert float(spec.memory_per_chip) > float(plain.memory_per_chip)
    assert bool(spec.fits)


def test_out_of_range_fields_name_the_field():
    draft = eagle_draft(LLAMA)
    with pytest.raises(ValueError, match="acceptance_length"):
        Speculation(draft=draft, acceptance_length=10.0, draft_passes=4.0)
    with pytest.raises(ValueError, match="acceptance_length"):
        Speculation(draft=draft, acceptance_length=0.5, draft_passes=4.0)
    with pytest.raises(ValueError, match="verify_tokens"):
        Speculation(draft=draft, acceptance_length=2.0, draft_passes=4.0, verify_tokens=3.0)
    with pytest.raises(ValueError, match="draft_passes"):
        Speculation(draft=draft, acceptance_length=1.0, draft_passes=0.0)
    # (Under the suite's runtime type checks jaxtyping refuses it first, a TypeError.)
    with pytest.raises((ValueError, TypeError), match="draft"):
        Speculation(draft=PLAN, acceptance_length=1.0, draft_passes=1.0)
    with pytest.raises(ValueError, match="context_len"):
        speculative_decode(LLAMA, PLAN, H100, -1.0, TREE)
    # Traced, a bad value is a flagged result: built under a trace (where it is not refused),
    # evaluated by `_step`'s program (a jit around `_step` would compile it all again).
    spec = jax.jit(lambda t: TREE.replace(acceptance_length=t))(jnp.float32(20.0))
    bad = _step(PLAN, H100, 1000.0, spec)
    assert not bool(bad.fits) and np.isfinite(float(bad.tpot))


def test_vmaps_over_tau_and_chips_like_a_loop():
    taus = jnp.asarray([2.0, 4.0, 6.0])
    batched = jax.vmap(lambda t: _step(PLAN, H100, 1000.0, TREE.replace(acceptance_length=t)))(
        taus)
    for k, t in enumerate([2.0, 4.0, 6.0]):
        np.testing.assert_allclose(float(batched.tpot[k]),
                                   float(_step(PLAN, H100, 1000.0,
                                               TREE.replace(acceptance_length=t)).tpot),
                                   rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gradients_finite_and_match_central_differences(dtype):
    def tpot(bw, macs, tau):
        chip = H100.chip.replace(hbm_bandwidth=bw, mac_units=macs)
        r = speculative_decode(LLAMA, PLAN.replace(batch=8.0), H100.replace(chip=chip), 2000.0,
                               TREE.replace(acceptance_length=tau))
        return r.tpot

    with jax.enable_x64(dtype == "float64"):
        both = jax.jit(jax.value_and_grad(tpot, argnums=(0, 1, 2)))
        rng = np.random.default_rng(0)
        for _ in range(2):
            s = np.exp(rng.uniform(np.log(0.5), np.log(2.0), 2))
            x = [jnp.asarray(v, dtype=dtype) for v in (H100.chip.hbm_bandwidth * s[0],
                                                       H100.chip.mac_units * s[1],
                                                       rng.uniform(1.5, 8.5))]
            _, g = both(*x)
            assert all(np.isfinite(float(v)) for v in g)
            assert float(g[0]) < 0.0 and float(g[2]) < 0.0
        if dtype == "float64":
            # float64 arrays, as above: a float32 or weakly typed argument compiles anew.
            x0 = float(H100.chip.hbm_bandwidth)
            macs, tau = jnp.float64(H100.chip.mac_units), jnp.float64(5.0)
            fd = central_difference(lambda v: float(both(jnp.float64(v), macs, tau)[0]), x0)
            g = float(both(jnp.float64(x0), macs, tau)[1][0])
            np.testing.assert_allclose(g, fd, rtol=1e-4)


@functools.lru_cache(maxsize=1)
def _published():
    # Evaluated once for the two tests that read it (seconds each time).
    from dse.calibration import predict_speculative, speculative_cases

    cases = speculative_cases()
    return cases, np.asarray(predict_speculative(cases))


def test_published_speedups_keep_their_order_and_context_barely_matters():
    from dse.calibration import predict_speculative

    cases, model = _published()
    assert len(cases) == 5
    measured = np.asarray([c.measured for c in cases])
    # Across the methods on one target, the model orders the speed-ups as measured (EAGLE-3 >
    # EAGLE-2 > EAGLE on Vicuna-13B; EAGLE-2 > EAGLE on Vicuna-7B).
    for target in ("llama2-13b", "vicuna-7b"):
        k = [i for i, c in enumerate(cases) if c.model.name == target]
        assert list(np.argsort(model[k])) == list(np.argsort(measured[k]))
    # Every speed-up is below its acceptance length (a step costs more than a plain one).
    taus = np.asarray([float(c.speculation.acceptance_length) for c in cases])
    assert np.all(model < taus) and np.all(measured < taus)
    # The rows state no context: the speed-up at batch 1 moves < 2% from 256 to 2,048 tokens.
    short, long = (np.asarray(predict_speculative(cases, context=c)) for c in (256.0, 2048.0))
    np.testing.assert_allclose(short, long, rtol=0.02)


@pytest.mark.xfail(strict=True, reason="the model's speed-ups are 38-53% above Spec-Bench's "
                   "A100 EAGLE / EAGLE-2 / EAGLE-3 ones (HF transformers, eager) at their "
                   "measured acceptance lengths: a measured step costs 1.7-1.9 plain steps, the "
                   "modelled one 1.2-1.3 (the draft tree's bookkeeping and the verification in "
                   "eager PyTorch are not modelled)")
def test_published_speedups_within_15_percent():
    cases, model = _published()
    measured = np.asarray([c.measured for c in cases])
    assert np.median(np.abs(model / measured - 1.0)) <= 0.15, np.round(model / measured - 1, 3)


def test_continuous_serving_decodes_tau_tokens_per_iteration():
    plan = ServingPlan(inference=InferencePlan(tp=1.0, sequence_parallel=False))
    load = ServingWorkload(1000.0, 500.0)
    chain = Speculation(draft=eagle_draft(LLAMA, 32000.0), acceptance_length=3.0,
                        draft_passes=3.0)
    # Jitted (`_serve`'s program, shared with the review of the edges): run op by op, a serving
    # model takes seconds.
    def run(spec, load):
        return _served(plan, load, spec)

    plain = jax.jit(lambda: serve_continuous(LLAMA, plan, H100, load))()
    spec = run(chain, load)
    # TPOT is the iteration over the tokens it emits; at the lightest load (one sequence, and
    # two-token prompts: no prefill to share the iteration) it is the speculative step's.
    np.testing.assert_allclose(float(spec.iteration_time) / 3.0,
                               float(spec.tpot_mean[-1]), rtol=1e-6)
    short = run(chain, ServingWorkload(2.0, 500.0))
    one = _step(PLAN, H100, 2.0 + 0.5 * 500.0 - 1.0, chain)
    np.testing.assert_allclose(float(short.tpot_mean[0]), float(one.tpot), rtol=0.02)
    assert float(spec.tpot_mean[0]) < 0.5 * float(plain.tpot_mean[0])
    # The draft's weights and KV cache take memory from the target's cache.
    assert float(spec.kv_capacity_tokens) < float(plain.kv_capacity_tokens)
    # The iteration's breakdown still sums to its time with the draft passes in it.
    it = spec.iteration
    np.testing.assert_allclose(float(it.matmul_time + it.attention_time + it.elementwise_time
                                     + it.tp_comm_time + it.pp_comm_time), float(it.time),
                               rtol=1e-5)
    # Throughput is requests x output tokens, and more accepted tokens serve more of them.
    np.testing.assert_allclose(float(spec.tokens_per_s), float(spec.requests_per_s) * 500.0,
                               rtol=1e-6)
    assert float(run(chain.replace(acceptance_length=4.0), load).tokens_per_s) > float(
        spec.tokens_per_s)

    def goodput(bw):
        chip = H100.chip.replace(hbm_bandwidth=bw)
        r = serve_continuous(LLAMA, plan, H100.replace(chip=chip), load, speculation=chain,
                             smooth=True)
        return r.tokens_per_s + r.latency(5.0).tpot

    for dtype in ("float32", "float64"):
        with jax.enable_x64(dtype == "float64"):
            g = jax.jit(jax.grad(goodput))(jnp.asarray(H100.chip.hbm_bandwidth, dtype=dtype))
            assert np.isfinite(float(g))


def test_best_serving_plan_with_speculation_meets_a_tighter_tpot():
    from dse.models import ServingWorkload, Slo, best_serving_plan

    small = LLAMA.replace(layers=4.0, name="llama3-8b-4-layers")
    draft = Speculation(draft=eagle_draft(small, 32000.0), acceptance_length=3.0,
                        draft_passes=3.0)
    system = SYSTEMS["DGX-H100"].with_num_chips(2)
    load, slo = ServingWorkload(500.0, 200.0), Slo(tpot=0.0006, ttft=1.0)
    kw = dict(precisions={"bf16": (2.0, 2.0, 1.0)}, max_batches=(64, 512), max_tokens=(4096,))
    # Each search compiled whole: by hand its selection runs op by op (2.5 CPU-s more each).
    plain = jax.jit(lambda: best_serving_plan(small, system, load, slo, **kw))()
    spec = jax.jit(lambda: best_serving_plan(small, system, load, slo, speculation=draft,
                                             **kw))()
    # A 0.6 ms p99 TPOT is below a plain decode step of this model: only speculation meets it.
    assert int(plain.feasible) == 0 and not bool(plain.goodput.fits)
    assert int(spec.feasible) > 0 and float(spec.tokens_per_s) > 0.0
    assert float(spec.goodput.tpot) <= 0.0006 * (1.0 + 1e-6)  # at the limit, in float32


def test_review_edges_flagged_finite_and_exact():
    from dse.models._serving import TRTLLM_GRAPH_BATCHES

    # Leviathan's expectation: exact derivative at alpha = 1 (gamma (gamma + 1) / 2), no
    # cancellation just below it in float32, and alpha outside [0, 1] named.
    np.testing.assert_allclose(float(jax.grad(chain_acceptance_length)(1.0, 4.0)), 10.0,
                               rtol=1e-6)
    np.testing.assert_allclose(float(chain_acceptance_length(jnp.float32(0.99999), 4.0)),
                               (1 - 0.99999**5) / (1 - 0.99999), rtol=1e-5)
    with pytest.raises(ValueError, match="alpha"):
        chain_acceptance_length(1.5, 4.0)
    # An MoE target's EAGLE head is a dense layer.
    mixtral = TRANSFORMERS["mixtral-8x7b"]
    head = eagle_draft(mixtral)
    assert float(head.experts) == 1.0 and float(head.layers) == 1.0
    # A pipelined target: the draft runs unpipelined on the target's TP chips.
    big = TRANSFORMERS["llama3-70b"]
    four = SYSTEMS["DGX-H100"].with_num_chips(4)
    r = jax.jit(lambda: speculative_decode(
        big, InferencePlan(tp=2.0, pp=2.0, batch=4.0), four, 1000.0,
        Speculation(draft=eagle_draft(big), acceptance_length=3.0, draft_passes=3.0)))()
    assert bool(r.fits) and float(r.draft.pp_comm_time) == 0.0 and float(r.speedup) > 1.0

    # serve_continuous: a traced speculation out of range is flagged and finite.
    plan = ServingPlan(inference=InferencePlan(tp=1.0, sequence_parallel=False))
    load = ServingWorkload(1000.0, 500.0)

    draft = eagle_draft(LLAMA, 32000.0)

    def run(verify, passes, width, tau):
        # The speculation is built inside `_serve`'s trace (one program for every call).
        return _serve_fields(plan, load, draft, tau, passes, width, verify)

    ok = run(4.0, 3.0, 1.0, 3.0)
    assert bool(ok.fits)
    for bad in ((-4.0, 3.0, 1.0, 3.0), (4.0, -3.0, 1.0, 3.0), (4.0, 3.0, -1.0, 3.0),
                (4.0, 3.0, 1.0, 10.0), (4.0, 3.0, 1.0, 0.5)):
        r = run(*bad)
        assert not bool(r.fits), bad
        assert int(r.reason) & int(Reason.WORKLOAD), bad
        assert np.isfinite(float(r.tokens_per_s)) and float(r.tokens_per_s) > 0.0, bad
        assert np.isfinite(float(r.energy_per_token)), bad

    # CUDA-graph dummies carry the verified tokens (TensorRT-LLM's dummy requests carry the
    # draft tokens): decode-only iterations pad (256 - batch) sequences of 4 tokens.
    padded = plan.replace(max_batch=512.0, kv_memory_fraction=0.7,
                          graph_batches=TRTLLM_GRAPH_BATCHES)
    chain = Speculation(draft=eagle_draft(LLAMA, 32000.0), acceptance_length=3.0,
                        draft_passes=3.0)
    long = ServingWorkload(100.0, 2000.0)
    # Compiled whole (op by op these three calls compiled ~200 small programs); the plan
    # without graphs is `_serve`'s (its captured sizes are static: the one with them is not).
    with_graphs = jax.jit(lambda: serve_continuous(LLAMA, padded, H100, long,
                                                   speculation=chain))()
    without = _served(padded.replace(graph_batches=()), long, chain)
    batch = float(without.batch)
    assert 128.0 < batch < 256.0, batch
    # Prompts of 100 tokens arrive batch / (1999 / 3) per iteration: that share carries a chunk.
    decode_only = 1.0 - batch / (1999.0 / 3.0)
    np.testing.assert_allclose(float(with_graphs.iteration.tokens - without.iteration.tokens),
                               (256.0 - batch) * 4.0 * decode_only, rtol=1e-3)


def test_disaggregated_decode_pool_decodes_speculatively():
    from dse.models import serve_disaggregated

    plan = ServingPlan(inference=InferencePlan(tp=1.0, sequence_parallel=False))
    load = ServingWorkload(1000.0, 500.0)
    chain = Speculation(draft=eagle_draft(LLAMA, 32000.0), acceptance_length=3.0,
                        draft_passes=3.0)
    # Jitted: run op by op, a serving model takes seconds. The acceptance length is traced, so
    # that one program serves the speculation in range and out of it (below).
    run = jax.jit(lambda tau: serve_disaggregated(
        LLAMA, plan, H100, plan, H100, load, speculation=chain.replace(acceptance_length=tau)))
    plain, plain_pools = jax.jit(lambda: serve_disaggregated(LLAMA, plan, H100, plan, H100,
                                                             load))()
    spec, pools = run(chain.acceptance_length)
    # The decode pool's TPOT at its lightest load is the speculative step's (decode only, no
    # prompts to share it), and the pool serves more requests; the prefill pool is unchanged.
    one = _step(PLAN, H100, 1000.0 + 0.5 * 500.0 - 1.0, chain)
    np.testing.assert_allclose(float(spec.tpot_mean[0]), float(one.tpot), rtol=0.02)
    assert float(pools.decode_rate) > float(plain_pools.decode_rate)
    np.testing.assert_allclose(float(pools.prefill_rate), float(plain_pools.prefill_rate),
                               rtol=1e-6)
    assert bool(spec.fits) and float(spec.tpot_mean[0]) < 0.5 * float(plain.tpot_mean[0])
    bad = run(jnp.float32(9.0))[0]
    assert not bool(bad.fits) and np.isfinite(float(bad.tokens_per_s))
