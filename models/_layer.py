"""One transformer layer of a training step on one chip: its GEMMs, attention core, element-wise
ops, recomputation and tensor- / expert-parallel communication.

`layer_costs` is the single place that calls the operator models for training: it returns the
forward, backward and recomputed compute time of one layer for one micro-batch on one chip of
the TP group, the layer's exposed TP and EP communication, its HBM traffic, vector FLOPs and the
bytes it sends over links. `train_step` (`_training.py`) composes it into a step.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import gammaln
from jaxtyping import Array, Float

from dse.hardware import System
from dse.hardware._once import once_per_evaluation

from ._calibration import DEFAULT, Calibration
from ._collectives import (
    CommCost,
    _tiers,
    all_gather,
    all_reduce,
    all_to_all,
    reduce_scatter,
    send_recv,
)
from ._memory import ACT_BYTES, kv_chunk_bytes, local_tokens
from ._operators import (
    attention,
    attention_backward,
    elementwise,
    elementwise_ops,
    gemm,
    stacked_calls,
)
from ._recipe import EMULATED_BLOCK, HADAMARD_FLOPS, QUANTIZE_FLOPS, RECIPES, RecipeSpec
from ._training_plan import (
    CP_ALL_GATHER,
    TrainingPlan,
    cp_head_split,
    cp_ring_size,
    kv_heads_per_rank,
    no_cp_scheme,
)
from ._transformer import Transformer

# Arithmetic per element of the memory-bound ops, counted from their definitions (FLOP/element):
# LayerNorm: mean (1), centre (1), square+sum (2), scale by rsqrt (1), gamma/beta (2) = 7;
# GELU (tanh form): x^3, two mul-adds, tanh, 1+, two mul = 8; SwiGLU: sigmoid (4), two mul = 6;
# bias + dropout + residual: add, mask-mul, scale, add = 4; softmax: max, sub, exp, sum, div = 5;
# Adam(W): m (3), v (4), bias corrections (2), sqrt+eps+div (3), decay (2), lr step (2) = 16.
LN_FLOPS, GELU_FLOPS, SWIGLU_FLOPS, BDR_FLOPS, SOFTMAX_FLOPS, ADAM_FLOPS = (
    7.0, 8.0, 6.0, 4.0, 5.0, 16.0)


class LayerCost(eqx.Module):
    """One layer, one micro-batch, one chip of the TP group (SI units).

    **Fields:** `fwd`, `bwd`, `recompute` (forward, backward and recomputed on-chip compute, s),
    `tp_comm` (TP collectives forward + backward + recompute, s), `ep_comm` (MoE all-to-alls,
    s), `cp_comm` (exposed ring-attention KV sends, s), `hbm_bytes` (HBM traffic of all of it,
    bytes), `vector_flops` (non-matrix FLOP), `comm_bytes` (bytes a chip sends over its links),
    `low_precision_flops` (matrix FLOP of the plan's recipe engine when it is narrower than 16
    bits, recomputation included; 0 for "bf16"), `quantize` (time of the recipe's cast / amax /
    transpose kernels, s, included in `fwd`, `bwd` and `recompute`).
    """

    fwd: Float[Array, "*batch"]
    bwd: Float[Array, "*batch"]
    recompute: Float[Array, "*batch"]
    tp_comm: Float[Array, "*batch"]
    ep_comm: Float[Array, "*batch"]
    cp_comm: Float[Array, "*batch"]
    hbm_bytes: Float[Array, "*batch"]
    vector_flops: Float[Array, "*batch"]
    comm_bytes: Float[Array, "*batch"]
    low_precision_flops: Float[Array, "*batch"]
    quantize: Float[Array, "*batch"]

    def time(self, kernel_fraction) -> Float[Array, "*batch"]:
        """The layer's time, s: compute at `kernel_fraction` of the rooflines plus its exposed
        TP, EP and CP communication."""
        return ((self.fwd + self.bwd + self.recompute) / kernel_fraction + self.tp_comm
                + self.ep_comm + self.cp_comm)


def _gemm_passes(chip, shapes, smooth, calibration: Calibration, recipe: RecipeSpec):
    """The per-product cost function and the 3 len(shapes) rows (forward, then dX, then dW
    of every shape) of `gemms_fwd_bwd`."""
    q = recipe.format.bytes
    emulated = recipe.format.block_scaled and not chip.block_scaling

    def one(m_, n_, k_, g_):
        promote = 2.0 * n_ / EMULATED_BLOCK if emulated else 0.0
        return gemm(chip, m_, n_, k_, bytes_per_element=q, weight_bytes_per_element=q,
                    output_bytes_per_element=2.0, engine=recipe.engine,
                    input_convert_flops=promote, output_groups=g_, smooth=smooth,
                    calibration=calibration)

    # A batched GEMM of `groups` products stacked along M: the forward and dX outputs stack
    # along M too; dW is `groups` separate k x n outputs (`gemm`'s `output_groups`).
    rows = [(*shape, 1.0) if len(shape) == 3 else tuple(shape) for shape in shapes]
    return one, ([(m, n, k, 1.0) for m, n, k, _ in rows] + [(m, k, n, 1.0) for m, n, k, _ in rows]
                 + [(k, n, m, g) for m, n, k, g in rows])


def gemms_fwd_bwd(chip, shapes, smooth, calibration: Calibration,
                  recipe: RecipeSpec = RECIPES["bf16"]):
    """`gemm_fwd_bwd` of every (m, n, k) or (m, n, k, groups) in `shapes`: a list of
    (fwd, dx, dw) `OpCost`s.

    All 3 len(shapes) products are one `vmap`ped `gemm` over a stacked axis (`stacked_calls`),
    so the model is traced and compiled once for the lot, not once per GEMM, and split back
    into one array per product: sums over the products are then element-wise adds, in which
    XLA folds each product's constant shape into its own arithmetic. Summed as a reduction over
    the stacked axis instead, a million-design sweep of GPT-3's `train_step` ran 17x slower on
    the CPU (benchmarks/sweep_throughput.py's kernel: 2.5e6 vs 4.5e7 designs/s; XLA emits the
    reductions as single-threaded library calls and evaluates every product at every design).
    """
    costs = stacked_calls(*_gemm_passes(chip, shapes, smooth, calibration, recipe))
    n = len(shapes)
    return [(costs[j], costs[n + j], costs[2 * n + j]) for j in range(n)]


def gemm_fwd_bwd(chip, m, n, k, smooth, calibration: Calibration,
                 recipe: RecipeSpec = RECIPES["bf16"], groups=1.0):
    """Forward GEMM (m x k) @ (k x n) and its two backward GEMMs (dX, dW), in `recipe`'s
    format: operands at its width, 16-bit outputs, on its engine. A block-scaled format on a chip
    without block scaling is emulated: per 128-deep slice an FP32 scale-and-add of the partial
    result on the vector units (`EMULATED_BLOCK`), 2 n / 128 vector FLOP per element of A.
    `groups`: the product is a batched GEMM of that many products stacked along M (dW is then
    `groups` separate k x n outputs for the tile and wave count)."""
    return gemms_fwd_bwd(chip, [(m, n, k, groups)], smooth, calibration, recipe)[0]


@once_per_evaluation
def expert_tokens(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """Tokens the busiest local expert of an MoE layer processes per micro-batch.

    The ep chips of an expert group each route tokens * top_k token-expert pairs over all
    experts, so each of a chip's experts / ep experts receives tokens * top_k * ep / experts on
    average; the EP group waits for the busiest, `expert_load` times that (the imbalance,
    capped by the capacity factor where tokens are dropped). With expert tensor parallelism
    etp != tp the tokens of tp / etp attention ranks meet at each expert shard (the expert
    FLOPs per chip are the same whatever the EP x ETP mapping).
    """
    return (local_tokens(model, plan) * model.top_k * plan.ep * plan.expert_tp / plan.tp
            / model.experts * model.expert_load)


def _attention_gemms(model, plan, tokens, fb):
    """QKV, output projection (and MLA's down / up projections): (count, gemms) pairs."""
    t, h = plan.tp, model.hidden
    heads_l = model.heads / t
    if model.latent_attention:
        # MLA (DeepSeek-V2 Sec. 2.1; Megatron-Core MLA): the down projections are replicated
        # across TP, the per-head up projections and the output projection are split by head.
        has_q_lora = model.q_lora_rank > 0.0
        q_in = jnp.where(has_q_lora, model.q_lora_rank, h)
        return [
            (jnp.where(has_q_lora, 1.0, 0.0), fb(tokens, jnp.maximum(model.q_lora_rank, 1.0), h)),
            (1.0, fb(tokens, heads_l * model.qk_head_dim, q_in)),  # Q (up)
            (1.0, fb(tokens, model.kv_lora_rank + model.rope_head_dim, h)),  # KV down + rope K
            (1.0, fb(tokens, heads_l * (model.head_dim + model.v_head_dim),
                     model.kv_lora_rank)),  # K (non-rotary) and V up
            (1.0, fb(tokens, h, heads_l * model.v_head_dim)),  # output projection
        ]
    d = model.head_dim
    # KV heads are replicated once TP exceeds them (Megatron-LM GQA).
    kv_l = kv_heads_per_rank(model, plan)
    return [
        (1.0, fb(tokens, heads_l * d + 2.0 * kv_l * d, h)),  # QKV
        (1.0, fb(tokens, h, heads_l * d)),  # attention output projection
    ]


@once_per_evaluation
def _weight_gemm_table(model: Transformer, plan: TrainingPlan):
    """The layer's weight GEMMs on one chip: (count, (m, n, k), TP cover) of each forward GEMM,
    and the MoE router's (m, n, k).

    Counts are per layer averaged over the model's MoE and dense layers (`moe_layer_share`):
    routed experts at the busiest local expert's load, shared experts on every token, the
    dense layers' MLP at their own width. TP cover is 1 for a GEMM that TP shards, which the
    TP collectives can hide behind (`_tp_and_ep_comm`): attention, a dense model's MLP (held
    in the routed slots with one expert), shared experts, the dense layers' MLP; 0 for routed
    experts (EP shards them) and DiT's adaLN.
    """
    t, h, f = plan.tp, model.hidden, model.ffn_hidden
    tokens = local_tokens(model, plan)
    share = model.moe_layer_share
    local_experts = model.experts / plan.ep
    gate = 2.0 if model.gated_mlp else 1.0
    dense = jnp.where(model.experts > 1.0, 0.0, 1.0)

    def shape(m, n, k):
        return (m, n, k)

    routed = expert_tokens(model, plan)
    e = plan.expert_tp
    table = [(c, mnk, 1.0) for c, mnk in _attention_gemms(model, plan, tokens, shape)] + [
        (share * local_experts, shape(routed, f * gate / e, h), dense),  # MLP up (+gate)
        (share * local_experts, shape(routed, h, f / e), dense),  # MLP down
        (share * model.shared_experts, shape(tokens, f * gate / t, h), 1.0),  # shared experts
        (share * model.shared_experts, shape(tokens, h, f / t), 1.0),
        ((1.0 - share), shape(tokens, model.dense_ffn * gate / t, h), 1.0),  # dense layers' MLP
        ((1.0 - share), shape(tokens, h, model.dense_ffn / t), 1.0),
    ]
    if model.adaln:
        # DiT adaLN: one Linear(h, 6h) per sequence of the micro-batch, split over TP.
        table.append((1.0, shape(plan.microbatch_size, 6.0 * h / t, h), 0.0))
    return tuple(table), (tokens, model.experts, h)


def _weight_gemm_shapes(model: Transformer, plan: TrainingPlan):
    """(count, (m, n, k)) of each weight GEMM of the layer, and the router's (m, n, k)
    (`_weight_gemm_table` without the TP cover)."""
    table, router = _weight_gemm_table(model, plan)
    return [(c, mnk) for c, mnk, _ in table], router


# Passes of a GEMM (`gemms_fwd_bwd`): forward, backward (dX and dW), all three.
FWD, BWD, ALL = slice(0, 1), slice(1, 3), slice(0, 3)


class WeightGemms(NamedTuple):
    """A layer's weight GEMMs: `counts` and TP `cover` (`_weight_gemm_table`) of each, and their
    `costs`, one (fwd, dx, dw) of `OpCost`s each (`gemms_fwd_bwd`)."""

    counts: list
    cover: list
    costs: list

    def total(self, field: str, passes: slice = ALL, rows: slice = slice(None),
              covered: bool = False) -> Array:
        """Sum over the GEMMs in `rows` of count x `field` summed over `passes` (`FWD`, `BWD`,
        `ALL`); weighted by the TP cover when `covered`. Element-wise adds, not a reduction
        over a stacked axis (`gemms_fwd_bwd` says why)."""
        terms = [(c * w if covered else c)
                 * functools.reduce(operator.add, (getattr(p, field) for p in g[passes]))
                 for c, w, g in zip(self.counts[rows], self.cover[rows], self.costs[rows],
                                    strict=True)]
        return functools.reduce(operator.add, terms)


def _weight_gemms(model: Transformer, plan: TrainingPlan, system: System, smooth, calibration):
    """The layer's weight GEMMs in the plan's recipe (`WeightGemms`), plus the MoE router's
    (fwd, dx, dw) (16-bit: it is not a Transformer Engine linear)."""
    chip = system.chip
    recipe = RECIPES[plan.precision]
    table, router = _weight_gemm_table(model, plan)
    costs = gemms_fwd_bwd(chip, [mnk for _, mnk, _ in table], smooth, calibration, recipe)
    gemms = WeightGemms([c for c, _, _ in table], [w for _, _, w in table], costs)
    return gemms, gemm_fwd_bwd(chip, *router, smooth, calibration)


def _quantize_ops(model, plan, system, smooth, calibration):
    """The recipe's cast / amax / transpose kernels of one layer (memory-bound element-wise).

    Forward: each linear's input is quantized twice (rowwise for its GEMM, columnwise for the
    weight gradient), reading the 16-bit input `reads` times. Backward: each linear's
    output gradient likewise (rowwise for dgrad, columnwise for wgrad), plus NVFP4's Hadamard
    transform on the two wgrad operands. The weights are quantized once per step
    (`weight_quantize`), not here.

    **Returns:** (fwd s, bwd s, fwd bytes, all bytes, fwd vector FLOP, all vector FLOP).
    """
    recipe = RECIPES[plan.precision]
    zero = jnp.zeros_like(plan.tp)
    if not recipe.low_precision:
        return zero, zero, zero, zero, zero, zero
    chip = system.chip
    shapes, _ = _weight_gemm_shapes(model, plan)
    inputs = sum(c * m * k for c, (m, n, k) in shapes)
    grads = sum(c * m * n for c, (m, n, k) in shapes)
    eff = dict(smooth=smooth, calibration=calibration, bytes_per_element=2.0)
    # Two quantized copies written, in units of the 16-bit element the kernel reads.
    writes = 2.0 * recipe.format.bytes / 2.0
    flops = 2.0 * QUANTIZE_FLOPS + (HADAMARD_FLOPS if recipe.hadamard else 0.0)
    fwd = elementwise(chip, inputs, flops_per_element=flops, reads=recipe.reads,
                      writes=writes, **eff)
    bwd = elementwise(chip, grads, flops_per_element=flops, reads=recipe.reads,
                      writes=writes, **eff)
    return (fwd.time, bwd.time, fwd.hbm_bytes, fwd.hbm_bytes + bwd.hbm_bytes, fwd.flops,
            fwd.flops + bwd.flops)


def _moe_permute_ops(model, plan, system, smooth, calibration):
    """The MoE token dispatcher's permutations of one layer (memory-bound copies), as
    Megatron-Core's all-to-all dispatcher runs them (megatron/core/transformer/moe/
    token_dispatcher.py, `MoEAlltoAllTokenDispatcher`; Transformer Engine's `moe_permute`,
    `moe_sort_chunks_by_index`, `moe_unpermute` when fused).

    Forward: "permutation 1" gathers each of the chip's tokens once per chosen expert (top_k
    rows of `hidden` each, in expert order) before the dispatch all-to-all; with more than one
    local expert, "permutation 2" sorts the received rows by local expert and its inverse
    unsorts the experts' output; "unpermutation 1" sums each token's top_k rows back, weighted
    by the router's probabilities. With DeepEP (`plan.ep_hierarchical`; Megatron-Core's flex
    dispatcher) the dispatch kernel sends each token straight from its place and the combine
    kernel sums its top_k rows, so only the received rows are permuted to expert order and
    back. Backward runs the same copies in reverse. The chip's tokens are its sequence-parallel
    shard (Megatron-Core requires sequence parallelism for MoE with TP > 1); the rows it
    receives are those of its local experts (`expert_tokens`). Zero for a dense model and in the
    dense layers of an MoE model.

    **Returns:** (fwd s, bwd s, fwd bytes, all bytes, fwd vector FLOP, all vector FLOP).
    """
    chip = system.chip
    h, k = model.hidden, model.top_k
    share = jnp.where(model.experts > 1.0, model.moe_layer_share, 0.0)
    sent = local_tokens(model, plan) / plan.tp * k * h  # elements gathered, then summed back
    received = expert_tokens(model, plan) * model.experts / plan.ep * h
    deepep = plan.ep_hierarchical > 0.5
    # All-to-all: the sent rows once each way, the received ones sorted and unsorted when the
    # chip holds several experts. DeepEP: the received rows once each way.
    sent_copies = jnp.where(deepep, 0.0, 1.0)
    received_copies = jnp.where(deepep, 2.0, jnp.where(model.experts / plan.ep > 1.0, 2.0, 0.0))
    permute, sort, unpermute = elementwise_ops(chip, [
        (sent, 0.0, 1.0, 1.0),
        (received, 0.0, 1.0, 1.0),
        # Reads the top_k expert outputs of a token (and its probabilities), writes it once.
        (sent, 2.0, 1.0, 1.0 / k),
    ], smooth=smooth, calibration=calibration)
    fwd, fwd_bytes, vec = (share * (sent_copies * (getattr(permute, f) + getattr(unpermute, f))
                                    + received_copies * getattr(sort, f))
                           for f in ("time", "hbm_bytes", "flops"))
    return fwd, fwd, fwd_bytes, 2.0 * fwd_bytes, vec, 2.0 * vec


def weight_quantize(model: Transformer, plan: TrainingPlan, system: System, params_per_chip,
                    smooth: bool = False, calibration: Calibration = DEFAULT):
    """Quantizing the chip's linear weights once per step for a low-precision recipe (both
    orientations, cached across the step's micro-batches): an `OpCost` (zero for "bf16", and
    for `quantized_params`: the optimizer writes the quantized weights directly)."""
    recipe = RECIPES[plan.precision]
    active = recipe.low_precision and not plan.quantized_params
    elements = params_per_chip if active else 0.0 * params_per_chip
    return elementwise(system.chip, elements, flops_per_element=2.0 * QUANTIZE_FLOPS,
                       bytes_per_element=2.0, reads=recipe.reads,
                       writes=recipe.format.bytes, smooth=smooth, calibration=calibration)


@once_per_evaluation
def _ring_effective_context(model, plan, cp=None):
    """Keys per sequence that make `attention`'s causal count right for one CP rank.

    With load-balanced causal chunks (Megatron-Core CP: rank i holds chunks i and 2cp-1-i) every
    rank's s / cp queries attend to the sequence's mean, (s + 1) / 2 keys (fewer under a sliding
    window, `Transformer.mean_attended_keys`), 1 / cp of the causal work. `attention` places
    causal queries at the end of the context (query j of q sees kv - q + j + 1 keys,
    kv - (q - 1) / 2 on average), so kv = mean + (s / cp - 1) / 2 gives that mean; at cp = 1
    without a window it is s, the plain causal case. `cp`: the degree to use instead of the
    plan's (1 for a rank that holds every query of its heads, as under Ulysses).
    """
    s, cp = model.seq_len, (plan.cp if cp is None else cp)
    if not model.causal:
        return s  # every query of every rank attends to the whole sequence
    return model.mean_attended_keys() + 0.5 * (s / cp - 1.0)


def _attention_core(model, plan, system, smooth, flash_attention, calibration):
    """QK^T, softmax, dropout, AV: (fwd s, bwd s, fwd bytes, all bytes, fwd vec, all vec)."""
    chip = system.chip
    t, b, s = plan.tp, plan.microbatch_size, model.seq_len
    heads_l = model.heads / t
    if model.latent_attention:
        # MLA trains as multi-head attention over the up-projected heads; QK^T runs at the
        # qk width and AV at the value width, so one head of their mean width does the work.
        d = 0.5 * (model.qk_head_dim + model.v_head_dim)
    else:
        d = model.head_dim
    kv_l = kv_heads_per_rank(model, plan)
    # Ring and all-gather CP: the rank's s / cp queries against the sequence's keys. Ulysses
    # (all-to-all): 1 / cp of the rank's query and KV heads over the whole sequence; the
    # hierarchical scheme: 1 / cp_a2a of them over the s * cp_a2a / cp tokens its all-to-all
    # group gathered, against the keys the ring brings. The same FLOPs in kernels of other
    # shapes.
    split, ring = cp_head_split(plan), cp_ring_size(plan)
    q_len = s / ring
    if not isinstance(split, float):  # some plan has an all-to-all group
        heads_l, kv_l = heads_l / split, kv_l / split
    eff = dict(smooth=smooth, calibration=calibration)
    if flash_attention:
        kv_len = _ring_effective_context(model, plan, cp=ring)
        a_f = attention(chip, b, heads_l, kv_l, q_len, kv_len, d, causal=model.causal, **eff)
        a_b = attention_backward(chip, b, heads_l, kv_l, q_len, kv_len, d, causal=model.causal,
                                 **eff)
        return a_f.time, a_b.time, a_f.hbm_bytes, a_f.hbm_bytes + a_b.hbm_bytes, 0.0, 0.0
    # Megatron-LM 2021-22 kernels: batched GEMMs and a fused scale-mask-softmax that
    # materialize the b * heads * s * s score matrix (Korthikanti et al. 2022, Sec. 4.1).
    # QK^T and AV of all b * heads_l groups run as one batched GEMM kernel: modelled as one GEMM
    # with the groups stacked along M (K and V, s x d each, are small next to the s x s scores
    # that dominate the traffic). Under CP a chip holds the s / cp query rows of its chunk.
    groups = b * heads_l
    qk = gemm_fwd_bwd(chip, groups * q_len, s, d, smooth, calibration, groups=groups)
    av = gemm_fwd_bwd(chip, groups * q_len, d, s, smooth, calibration, groups=groups)
    scores = groups * q_len * s
    softmax_f = elementwise(chip, scores, flops_per_element=SOFTMAX_FLOPS, **eff)
    # Dropout writes its output and a 1-byte mask (half a 16-bit element).
    drop_f = elementwise(chip, scores, flops_per_element=2.0, writes=1.5, **eff)
    softmax_b = elementwise(chip, scores, flops_per_element=SOFTMAX_FLOPS, reads=2.0, **eff)
    drop_b = elementwise(chip, scores, flops_per_element=1.0, reads=1.5, **eff)
    fwd = qk[0].time + av[0].time + softmax_f.time + drop_f.time
    bwd = qk[1].time + qk[2].time + av[1].time + av[2].time + softmax_b.time + drop_b.time
    fwd_bytes = qk[0].hbm_bytes + av[0].hbm_bytes + softmax_f.hbm_bytes + drop_f.hbm_bytes
    all_bytes = fwd_bytes + (qk[1].hbm_bytes + qk[2].hbm_bytes + av[1].hbm_bytes
                             + av[2].hbm_bytes + softmax_b.hbm_bytes + drop_b.hbm_bytes)
    vec_fwd = softmax_f.flops + drop_f.flops
    return fwd, bwd, fwd_bytes, all_bytes, vec_fwd, vec_fwd + softmax_b.flops + drop_b.flops


def _elementwise_ops(model, plan, system, smooth, calibration):
    """Two LayerNorms and two bias-dropout-residuals on the hidden stream (sharded over TP only
    with sequence parallelism), the MLP activation on the FFN stream.

    **Returns:** (fwd s, bwd s, fwd bytes, all bytes, fwd vector FLOP, all vector FLOP).
    """
    chip = system.chip
    t, sp = plan.tp, plan.sequence_parallel
    tokens = local_tokens(model, plan)
    share = model.moe_layer_share
    eff = dict(smooth=smooth, calibration=calibration)
    stream = tokens * model.hidden / jnp.where(sp > 0.5, t, 1.0)
    ffn_stream = (share * (expert_tokens(model, plan) * model.experts / plan.ep * t
                           / plan.expert_tp + tokens * model.shared_experts)
                  * model.ffn_hidden
                  + (1.0 - share) * tokens * model.dense_ffn) / t
    # (elements, FLOP per element, reads, writes) of each kernel.
    if model.gated_mlp:
        act = [(ffn_stream, SWIGLU_FLOPS, 2.0, 1.0), (ffn_stream, 2.0 * SWIGLU_FLOPS, 3.0, 2.0)]
    else:
        act = [(ffn_stream, GELU_FLOPS, 1.0, 1.0), (ffn_stream, 2.0 * GELU_FLOPS, 2.0, 1.0)]
    ln_f, ln_b, bdr_f, bdr_b, act_f, act_b = elementwise_ops(chip, [
        (stream, LN_FLOPS, 1.0, 1.0), (stream, 2.0 * LN_FLOPS, 2.0, 1.0),
        (stream, BDR_FLOPS, 2.0, 1.5), (stream, 2.0, 1.5, 1.0), *act], **eff)
    norms = 1.0 if model.parallel_block else 2.0  # a parallel block normalizes once
    fwd = norms * ln_f.time + 2.0 * bdr_f.time + act_f.time
    bwd = norms * ln_b.time + 2.0 * bdr_b.time + act_b.time
    fwd_bytes = norms * ln_f.hbm_bytes + 2.0 * bdr_f.hbm_bytes + act_f.hbm_bytes
    all_bytes = fwd_bytes + norms * ln_b.hbm_bytes + 2.0 * bdr_b.hbm_bytes + act_b.hbm_bytes
    vec_fwd = norms * ln_f.flops + 2.0 * bdr_f.flops + act_f.flops
    return fwd, bwd, fwd_bytes, all_bytes, vec_fwd, vec_fwd + norms * ln_b.flops \
        + 2.0 * bdr_b.flops + act_b.flops


@once_per_evaluation
def expert_passes(plan: TrainingPlan) -> Float[Array, "*batch"]:
    """MoE all-to-alls per layer and micro-batch: dispatch and combine, forward and backward,
    and the forward pair again under full recomputation or `recompute_moe` (recomputing the
    MoE block repeats its dispatch and combine, not the TP collectives)."""
    again = (plan.recompute > 1.5) | (plan.recompute_moe > 0.5)
    return 4.0 + jnp.where(again, 2.0, 0.0)


def _tp_and_ep_comm(model, plan, system, calibration, tp_gemm_fwd=0.0, tp_gemm_bwd=0.0):
    """Exposed TP collectives and MoE all-to-alls of one layer: (tp s, ep s, bytes sent).

    TP: two all-reduces forward and two backward (with sequence parallelism each becomes an
    all-gather + reduce-scatter pair of the same volume; Korthikanti et al. 2022, Sec. 4.2.2);
    full recomputation repeats the forward pair. With `TrainingPlan.tp_overlap` the
    collectives run in chunks under the TP-sharded GEMMs they feed or drain (Transformer
    Engine's userbuffers comm-GEMM overlap, Megatron-Core `--tp-comm-overlap`; Wang et al.
    2023, "Overlap Communication with Dependent Computation via Decomposition in Large Deep
    Learning Models", ASPLOS): the forward ones under the forward GEMMs (`tp_gemm_fwd`,
    per pass, kernel fraction applied), the backward ones under the backward GEMMs
    (`tp_gemm_bwd`); what the GEMMs cannot cover shows. Megatron-Core overlaps only with
    sequence parallelism (its all-gather / reduce-scatter pairs), so without it the
    all-reduces stay exposed. In the ring exchange the all-gather's first chunk is local, but
    the reduce-scatter's last partial sum leaves after the last GEMM chunk: one chunk in t of
    the reduce-scatter (half the pair) always shows. EP: dispatch and combine all-to-alls of
    the routed tokens, forward and backward (and the forward pair again under full
    recomputation or `recompute_moe`), in the MoE layers only; the busiest receiver takes
    `expert_load` times the balanced share. The EP group's members sit etp apart
    (Megatron-Core's expert rank order etp-ep-edp), so the all-to-all runs over the scale-up
    tier while ep * etp fits in a domain and over the scale-out network beyond (`all_to_all`
    splits it over the tiers).
    """
    t, sp = plan.tp, plan.sequence_parallel
    tokens = local_tokens(model, plan)
    link = dict(calibration=calibration)
    full = plan.recompute > 1.5
    passes = 4.0 + jnp.where(full, 2.0, 0.0)
    ep_passes = expert_passes(plan)
    # A parallel block sums the attention and MLP outputs before one reduction (PaLM Sec. 2).
    tp_passes = 0.5 * passes if model.parallel_block else passes
    act_msg = ACT_BYTES * tokens * model.hidden
    ar = all_reduce(system, act_msg, t, **link)
    ag_rs = (all_gather(system, act_msg, t, **link).time
             + reduce_scatter(system, act_msg, t, **link).time)
    one = jnp.where(sp > 0.5, ag_rs, ar.time)
    tp_comm = one * tp_passes
    # Overlapped: per forward pass (the forward, and its repeat under full recomputation) and
    # for the backward.
    per_pass = one * tp_passes / passes * 2.0
    shown_fwd = jnp.maximum(per_pass - tp_gemm_fwd, 0.5 * per_pass / t)
    shown_bwd = jnp.maximum(per_pass - tp_gemm_bwd, 0.5 * per_pass / t)
    overlapped = (1.0 + jnp.where(full, 1.0, 0.0)) * shown_fwd + shown_bwd
    tp_comm = jnp.where((plan.tp_overlap > 0.5) & (sp > 0.5) & (t > 1.0), overlapped, tp_comm)
    tp_bytes = 2.0 * (t - 1.0) / t * act_msg * tp_passes

    moe = jnp.where(model.experts > 1.0, model.moe_layer_share, 0.0)
    routed = (ACT_BYTES * tokens * model.top_k * model.hidden * model.expert_load
              / jnp.where(sp > 0.5, t, 1.0))
    a2a = expert_dispatch(model, plan, system, routed, calibration)
    ep_comm = moe * ep_passes * a2a.time
    ep_bytes = moe * ep_passes * (a2a.scaleup_bytes + a2a.scaleout_bytes)
    return tp_comm, ep_comm, tp_bytes + ep_bytes


# SMs DeepEP's dispatch and combine kernels occupy while they run: Megatron-Core's
# `moe_flex_dispatcher_num_sms` docstring (transformer/transformer_config.py @d98e8a64) gives
# DeepEP's default as 20.
DEEPEP_SMS = 20.0


def _combined_1f1b_ep_comm(plan: TrainingPlan, chip, ep_comm, attention_fwd, attention_bwd,
                           expert_fwd_bwd):
    """Exposed MoE all-to-all time of one layer per micro-batch under
    `TrainingPlan.ep_overlap` (else `ep_comm`, every all-to-all exposed), s.

    Megatron-Core's combined 1F1B (megatron/core/models/common/model_chunk_schedule_plan.py
    @d98e8a64, `TransformerLayerSchedulePlan.run`) runs one layer's forward for micro-batch
    i + 1 beside its backward for micro-batch i in three phases, communication on one stream
    and compute on the other:

        comm:    combine bwd        | dispatch fwd, dispatch bwd      | combine fwd
        compute: attention fwd      | experts bwd, wgrad, experts fwd | attention bwd

    so a phase takes the longer of its two and only a phase's excess all-to-all shows. DeepEP's
    kernels (`TrainingPlan.ep_hierarchical`) run on `DEEPEP_SMS` of the chip's cores, so while
    they run the compute has the rest: a phase with all-to-all c and compute w takes
    max(c, w + c s) with s = DEEPEP_SMS / `Chip.core_count` (the compute does c (1 - s) of its
    work beside the all-to-all); NCCL's all-to-all is taken to leave the cores free. Each
    all-to-all takes `ep_comm` over their count (`_tp_and_ep_comm` prices dispatch and combine,
    forward and backward, alike; a traced plan with full or MoE recomputation, which a plan by
    hand refuses, adds the recomputed forward's two, exposed). Only the 1F1B steady state is merged:
    Megatron-Core's `get_pp_rank_microbatches` (pipeline_parallel/schedules.py) runs
    2 (p - 1 - rank) + (v - 1) p + 1 chunk forwards before it, v p on the average stage (the 1
    is the overlap's), of the m v a stage runs; without pipelining the first forward and the
    last backward run alone. Either way a share p / m of the micro-batches (m per replica,
    p stages) keeps its all-to-alls exposed.
    """
    passes = expert_passes(plan)
    one = ep_comm / passes
    # DeepEP is a GPU library: its SM share applies to GPUs (SIMT cores) only.
    sms = jnp.minimum(DEEPEP_SMS / chip.core_count, 1.0) if chip.core_kind == "simt" else 0.0
    share = jnp.where(plan.ep_hierarchical > 0.5, sms, 0.0)

    def shown(comm, compute):  # a phase's time beyond its compute at the full rate
        return jnp.maximum(comm - compute, share * comm)

    phases = (shown(one, attention_fwd) + shown(2.0 * one, expert_fwd_bwd)
              + shown(one, attention_bwd) + (passes - 4.0) * one)
    merged = jnp.clip(1.0 - plan.pp / plan.microbatches, 0.0, 1.0)
    overlapped = merged * phases + (1.0 - merged) * ep_comm
    return jnp.where(plan.ep_overlap > 0.5, overlapped, ep_comm)


def domains_per_token(experts, top_k, domains):
    """Expected distinct scale-up domains a token's `top_k` experts fall in, when the EP
    group's `experts` sit evenly over `domains` domains and a token picks distinct experts
    uniformly (balanced routing): domains x (1 - C(experts - experts / domains, top_k) /
    C(experts, top_k)). Continuous in all three (log-gamma); 1 for one domain."""
    other = experts - experts / domains  # experts outside one domain
    # Every domain is hit when fewer than top_k experts lie outside it (C(other, k) = 0).
    hits_all = (other - top_k + 1.0 <= 0.0) | (experts - top_k + 1.0 <= 0.0)
    # Safe arguments on the masked side too, so that no inf reaches a gradient.
    o = jnp.where(hits_all, top_k + 1.0, other)
    e = jnp.where(hits_all, top_k + 1.0, experts)
    log_miss = (gammaln(o + 1.0) - gammaln(o - top_k + 1.0) - gammaln(e + 1.0)
                + gammaln(e - top_k + 1.0))
    miss = jnp.where(hits_all | (domains <= 1.0), 0.0, jnp.exp(log_miss))
    return jnp.where(domains <= 1.0, 1.0, domains * (1.0 - miss))


def expert_dispatch(model: Transformer, plan: TrainingPlan, system, routed_bytes,
                    calibration: Calibration = DEFAULT) -> CommCost:
    """One MoE dispatch (or combine) of a chip's `routed_bytes` (its tokens x top_k copies)
    over the EP group: a plain all-to-all, or with `TrainingPlan.ep_hierarchical` DeepEP's
    two-tier scheme. There a token crosses the scale-out network once per remote domain that
    holds one of its experts (`domains_per_token`), not once per expert, and is forwarded to
    the experts of that domain over the scale-up links. So every copy bound for another chip
    of the domain crosses the scale-up tier once ((g_in - 1) / g_in of the bytes, the domains
    times the plain all-to-all's in-domain share), and the scale-out bytes shrink by the
    distinct remote domains per token over the remote expert copies per token. The latency
    steps stay those of the all-to-all (`all_to_all`'s tier scales move bytes only)."""
    _, _, domains = _tiers(system, plan.ep, plan.expert_tp)
    k = jnp.maximum(model.top_k, 1.0)
    # Remote domains (D - 1) / D x domains_per_token over remote copies (D - 1) / D x k.
    out_share = domains_per_token(model.experts, k, domains) / k
    on = plan.ep_hierarchical > 0.5
    return all_to_all(system, routed_bytes, plan.ep, stride=plan.expert_tp,
                      calibration=calibration, scaleup_scale=jnp.where(on, domains, 1.0),
                      scaleout_scale=jnp.where(on, out_share, 1.0))


def ulysses_send_bytes(model: Transformer, plan: TrainingPlan):
    """Each chip's all-to-all send buffers of one layer under Ulysses CP (`CP_A2A`, and the
    all-to-all groups of `CP_A2A_P2P`), bytes:
    (Q, K and V of its s / cp tokens for every head of its TP rank; the attention output)."""
    heads_l = model.heads / plan.tp
    if model.latent_attention:
        qkv = heads_l * (2.0 * model.qk_head_dim + model.v_head_dim)
        out = heads_l * model.v_head_dim
    else:
        qkv = (heads_l + 2.0 * kv_heads_per_rank(model, plan)) * model.head_dim
        out = heads_l * model.head_dim
    tokens = ACT_BYTES * local_tokens(model, plan)
    return tokens * qkv, tokens * out


def _context_parallel_comm(model, plan, system, core_fwd, core_bwd, calibration):
    """Exposed context-parallel communication of one layer: (s, bytes sent), by
    `TrainingPlan.cp_comm`. The CP members sit tp apart, so their traffic runs over the
    scale-up tier while tp * cp fits in a domain and crosses the scale-out network beyond;
    full recomputation repeats the forward's.

    - Ring (Megatron-Core CP, docs/user-guide/features/context_parallel.md): forward, each rank
      passes its KV chunk around the ring, cp - 1 point-to-point steps, each overlapped with
      the attention of the chunk it already holds; backward passes KV and dKV (twice the
      bytes) the same way. What the attention compute cannot hide is exposed.
    - All-gather (Llama 3, Dubey et al. 2024, Sec. 3.3.2; Megatron-Core "all_gather": "not
      async, and cannot be overlapped"): K and V all-gathered before the forward attention and
      again before its backward (a rank keeps only its chunk), dK and dV reduce-scattered
      after; all exposed.
    - All-to-all (DeepSpeed-Ulysses, Jacobs et al. 2023, Sec. 3.1, as Transformer Engine's
      AttnFuncWithCPAndQKVOA2A runs it for Megatron-Core's "a2a"): Q, K and V all-to-all into
      head shards before the attention and the output back after it; backward the output and
      its gradient in (the forward kept the output in sequence shards) and the gradients of Q,
      K and V back; all exposed.
    - All-to-all inside groups of cp_a2a, then the ring over cp / cp_a2a groups (Megatron-Core
      "a2a+p2p", Transformer Engine's AttnFuncWithCPAndKVP2P with a pair of CP groups): the
      Ulysses all-to-alls over the cp_a2a adjacent ranks (tp apart), exposed; then the ring's
      cp / cp_a2a - 1 steps between ranks tp * cp_a2a apart, each passing K and V of
      s / (cp / cp_a2a) tokens for 1 / cp_a2a of the heads (the bytes of a plain ring's
      chunk), hidden behind the attention as the ring is. A group of 1 is the ring, a group of
      cp is Ulysses.
    """
    cp = plan.cp
    chunk = kv_chunk_bytes(model, plan)
    split, ring = cp_head_split(plan), cp_ring_size(plan)
    steps = ring - 1.0
    ring_link = dict(stride=plan.tp * split, calibration=calibration)
    link = dict(stride=plan.tp, calibration=calibration)
    send_f = send_recv(system, chunk, ring, **ring_link).time
    send_b = send_recv(system, 2.0 * chunk, ring, **ring_link).time
    exposed_f = jnp.maximum(steps * send_f - core_fwd, 0.0)
    exposed_b = jnp.maximum(steps * send_b - core_bwd, 0.0)
    # Bytes each chip sends, forward and backward: the ring (or the all-gather) the chunk once
    # per step, ring - 1 times (cp - 1 without an all-to-all group); an all-to-all group of
    # `split` ranks (split - 1) / split of its buffers.
    sent_f, sent_b = steps * chunk, 2.0 * steps * chunk
    if not isinstance(split, float):
        # The all-to-all groups (the whole CP group under Ulysses): exposed, before and after.
        qkv, out = ulysses_send_bytes(model, plan)
        a2a_qkv = all_to_all(system, qkv, split, **link).time
        exposed_f = exposed_f + a2a_qkv + all_to_all(system, out, split, **link).time
        exposed_b = exposed_b + a2a_qkv + all_to_all(system, 2.0 * out, split, **link).time
        sent_f = sent_f + (split - 1.0) / split * (qkv + out)
        sent_b = sent_b + (split - 1.0) / split * (qkv + 2.0 * out)
    if not no_cp_scheme(plan, CP_ALL_GATHER):
        gather = all_gather(system, cp * chunk, cp, **link).time
        scatter = reduce_scatter(system, cp * chunk, cp, **link).time
        chosen = plan.cp_comm == CP_ALL_GATHER
        exposed_f = jnp.where(chosen, gather, exposed_f)
        exposed_b = jnp.where(chosen, gather + scatter, exposed_b)
    full = jnp.where(plan.recompute > 1.5, 1.0, 0.0)
    comm = (1.0 + full) * exposed_f + exposed_b
    sent = (1.0 + full) * sent_f + sent_b
    on = cp > 1.0
    return jnp.where(on, comm, 0.0), jnp.where(on, sent, 0.0)


def layer_costs(model: Transformer, plan: TrainingPlan, system: System, *,
                calibration: Calibration = DEFAULT, smooth: bool = False,
                flash_attention: bool = True) -> LayerCost:
    """One transformer layer, one micro-batch, on one chip of the TP group.

    **Arguments:** as `train_step`.

    **Returns:** a `LayerCost` (compute times before `calibration.kernel_fraction` is applied).
    """
    gemms, router = _weight_gemms(model, plan, system, smooth, calibration)
    recipe = RECIPES[plan.precision]
    moe = jnp.where(model.experts > 1.0, model.moe_layer_share, 0.0)
    fwd = gemms.total("time", FWD) + moe * router[0].time
    bwd = gemms.total("time", BWD) + moe * (router[1].time + router[2].time)
    hbm = gemms.total("hbm_bytes")
    gemm_fwd_bytes = gemms.total("hbm_bytes", FWD)

    core_fwd, core_bwd, core_fwd_bytes, core_bytes, core_vec_fwd, core_vec = _attention_core(
        model, plan, system, smooth, flash_attention, calibration)
    ew_fwd, ew_bwd, ew_fwd_bytes, ew_bytes, ew_vec_fwd, ew_vec = _elementwise_ops(
        model, plan, system, smooth, calibration)
    q_fwd, q_bwd, q_fwd_bytes, q_bytes, q_vec_fwd, q_vec = _quantize_ops(
        model, plan, system, smooth, calibration)
    p_fwd, p_bwd, p_fwd_bytes, p_bytes, p_vec_fwd, p_vec = _moe_permute_ops(
        model, plan, system, smooth, calibration)
    fwd = fwd + core_fwd + ew_fwd + q_fwd + p_fwd
    bwd = bwd + core_bwd + ew_bwd + q_bwd + p_bwd
    hbm = hbm + core_bytes + ew_bytes + q_bytes + p_bytes
    ew_fwd_bytes = ew_fwd_bytes + q_fwd_bytes + p_fwd_bytes
    ew_vec_fwd, ew_vec = ew_vec_fwd + q_vec_fwd + p_vec_fwd, ew_vec + q_vec + p_vec

    full = plan.recompute > 1.5
    # Selective recomputation redoes the attention core in backward; fused (flash) attention
    # already does so inside its backward kernel, so there it costs nothing more.
    selective = (plan.recompute > 0.5) & ~full & (not flash_attention)
    layer_fwd_bytes = gemm_fwd_bytes + core_fwd_bytes + ew_fwd_bytes
    recompute = jnp.where(full, fwd, jnp.where(selective, core_fwd, 0.0))
    hbm = hbm + jnp.where(full, layer_fwd_bytes, jnp.where(selective, core_fwd_bytes, 0.0))
    # `recompute_moe`: the MoE block's forward again (router, routed and shared experts, the
    # dispatcher's copies); under full recomputation it is already in `fwd`.
    attn = 5 if model.latent_attention else 2
    experts = slice(attn, attn + 4)  # routed up / down, shared up / down (`_weight_gemm_table`)
    moe_fwd = gemms.total("time", FWD, experts) + moe * router[0].time + p_fwd
    moe_fwd_bytes = gemms.total("hbm_bytes", FWD, experts) + p_fwd_bytes
    again = (plan.recompute_moe > 0.5) & ~full & (model.experts > 1.0)
    recompute = recompute + jnp.where(again, moe_fwd, 0.0)
    hbm = hbm + jnp.where(again, moe_fwd_bytes, 0.0)

    # The TP-sharded GEMMs are what TP collectives can overlap with, at the rate the step runs
    # them (`kernel_fraction`, as `train_step` applies it).
    eta = calibration.kernel_fraction
    tp_gemm_fwd = gemms.total("time", FWD, covered=True) / eta
    tp_gemm_bwd = gemms.total("time", BWD, covered=True) / eta
    tp_comm, ep_comm, comm_bytes = _tp_and_ep_comm(model, plan, system, calibration,
                                                   tp_gemm_fwd, tp_gemm_bwd)
    # The attention side of the layer (its GEMMs, core and the router: Megatron-Core's
    # "pre-dispatch" node) and the rest (experts, shared experts, element-wise and copy
    # kernels), at the rate the step runs them, for the combined 1F1B schedule.
    attention = slice(0, attn)
    attention_fwd = (gemms.total("time", FWD, attention) + core_fwd
                     + moe * router[0].time) / eta
    attention_bwd = (gemms.total("time", BWD, attention) + core_bwd
                     + moe * (router[1].time + router[2].time)) / eta
    ep_comm = _combined_1f1b_ep_comm(plan, system.chip, ep_comm, attention_fwd, attention_bwd,
                                     (fwd + bwd) / eta - attention_fwd - attention_bwd)
    cp_comm, cp_bytes = _context_parallel_comm(model, plan, system, core_fwd, core_bwd,
                                               calibration)
    vec = ew_vec + core_vec + jnp.where(full, ew_vec_fwd + core_vec_fwd,
                                        jnp.where(selective, core_vec_fwd, 0.0))
    gemm_flops = gemms.total("flops")
    gemm_fwd_flops = gemms.total("flops", FWD)
    low = (gemm_flops + jnp.where(full, gemm_fwd_flops, 0.0)) if recipe.low_precision \
        else jnp.zeros_like(fwd)
    quantize = q_fwd + q_bwd + jnp.where(full, q_fwd, 0.0)
    return LayerCost(fwd=fwd, bwd=bwd, recompute=recompute, tp_comm=tp_comm, ep_comm=ep_comm,
                     cp_comm=cp_comm, hbm_bytes=hbm, vector_flops=vec,
                     comm_bytes=comm_bytes + cp_bytes, low_precision_flops=low,
                     quantize=quantize)


def layer_time(model: Transformer, plan: TrainingPlan, system: System, *,
               calibration: Calibration = DEFAULT, smooth: bool = False,
               flash_attention: bool = True) -> Float[Array, "*batch"]:
    """Forward + backward (+ recomputation) of one layer for one micro-batch on one chip, s.

    Includes the layer's exposed tensor- and expert-parallel communication (what Korthikanti
    et al. 2022, Table 4, times per layer). Arguments as `train_step`.
    """
    lc = layer_costs(model, plan, system, calibration=calibration, smooth=smooth,
                     flash_attention=flash_attention)
    return lc.time(calibration.kernel_fraction)
