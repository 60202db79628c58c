"""Memory per chip of a training step: weights, gradients, optimizer state and activations.

Counts the busiest (first) pipeline stage, which also holds the embedding, under the plan's ZeRO
stage, recomputation mode, sequence parallelism and pipeline schedule (Korthikanti et al. 2022,
arXiv:2205.05198, Sec. 4; Rajbhandari et al. 2020, ZeRO, Sec. 5).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from dse.hardware._once import once_per_evaluation

from ._recipe import RECIPES, STATE_BYTES
from ._rules import all_concretely
from ._training_plan import (
    CP_ALL_GATHER,
    RECOMPUTE_NONE,
    TrainingPlan,
    first_stage_layers,
    kv_heads_per_rank,
    no_cp_scheme,
    split_units,
)
from ._transformer import Transformer

# Bytes per parameter of mixed-precision Adam (Megatron-LM docs/distrib_optimizer.md, table
# "fp16 param, fp32 grads": 18 bytes/param non-distributed = 2 param + 4 grad + 12 optimizer:
# fp32 main param, Adam m and v). The same split reproduces Korthikanti et al. Fig. 1. These are
# the defaults of `TrainingPlan` (master_weights, optimizer_state, gradients all "fp32");
# `grad_bytes` / `optimizer_bytes` give a plan's own.
WEIGHT_BYTES = 2.0
GRAD_BYTES = 4.0
OPTIMIZER_BYTES = 12.0
ACT_BYTES = 2.0  # 16-bit activations


def grad_bytes(plan: TrainingPlan) -> float:
    """Bytes per parameter of the accumulated (and reduced) gradients."""
    return STATE_BYTES[plan.gradients]


def optimizer_bytes(plan: TrainingPlan) -> float:
    """Bytes per parameter of the optimizer: the master copy (none when the 16-bit parameters
    are the masters) and Adam's two moments."""
    master = STATE_BYTES["fp32"] if plan.master_weights == "fp32" else 0.0
    return master + 2.0 * STATE_BYTES[plan.optimizer_state]


def linear_input_bytes(plan: TrainingPlan) -> float:
    """Bytes per element of the linear-layer inputs saved for the weight gradient: the
    recipe's quantized (columnwise) copy, or the 16-bit input."""
    recipe = RECIPES[plan.precision]
    return recipe.format.bytes if recipe.low_precision else ACT_BYTES


class StageParams(eqx.Module):
    """Parameters one chip of the first pipeline stage holds before ZeRO sharding.

    **Fields:** `dense` (attention, norms, router, embedding, shared experts, the MLPs of dense
    layers), `expert` (routed experts), `dense_layer` and `expert_layer` (one layer's worth of
    each, as ZeRO-3 gathers them), `dense_linear` (the linear weights among `dense`: attention
    projections and MLPs; with `expert`, what a low-precision recipe quantizes).
    """

    dense: Float[Array, "*batch"]
    expert: Float[Array, "*batch"]
    dense_layer: Float[Array, "*batch"]
    expert_layer: Float[Array, "*batch"]
    dense_linear: Float[Array, "*batch"]

    @property
    def total(self) -> Float[Array, "*batch"]:
        """All parameters the chip holds, dense + expert."""
        return self.dense + self.expert


@once_per_evaluation
def stage_params(model: Transformer, plan: TrainingPlan, layers=None,
                 embedding: bool = True) -> StageParams:
    """Parameters held by one chip of the first stage (which also holds the embedding), or of
    a stage of `layers` layers, with or without the embedding."""
    t = plan.tp
    layers_per_stage = first_stage_layers(model, plan) if layers is None else layers
    share = model.moe_layer_share
    # Per layer averaged over MoE and dense layers: shared experts and the dense layers' MLPs
    # are replicated over EP like attention; routed experts are split ep ways.
    dense_layer = (model.attention_params_per_layer / t + share * model.router_params_per_layer
                   + 2.0 * model.hidden + model.conditioning_params_per_layer / t
                   + share * model.shared_experts * model.expert_params_per_layer / t
                   + (1.0 - share) * model.dense_mlp_params / t)
    expert_layer = (share * model.experts / plan.ep * model.expert_params_per_layer
                    / plan.expert_tp)
    # The linear weights among the dense ones (what a low-precision recipe quantizes): the
    # attention projections, the shared experts and the dense layers' MLPs.
    dense_linear_layer = (model.attention_params_per_layer / t
                          + share * model.shared_experts * model.expert_params_per_layer / t
                          + (1.0 - share) * model.dense_mlp_params / t)
    embed = model.vocab * model.hidden / t if embedding else 0.0
    return StageParams(dense=layers_per_stage * dense_layer + embed,
                       expert=layers_per_stage * expert_layer, dense_layer=dense_layer,
                       dense_linear=layers_per_stage * dense_linear_layer,
                       expert_layer=expert_layer)


def linear_weight_bytes(plan: TrainingPlan) -> tuple[float, float]:
    """Bytes per linear-layer weight: (held in memory, moved by a data-parallel gather).

    16-bit weights, plus under a low-precision recipe its cached rowwise and columnwise
    copies; with `quantized_params` only the two copies (gathered once, at the recipe's width).
    """
    recipe = RECIPES[plan.precision]
    if not recipe.low_precision:
        return WEIGHT_BYTES, WEIGHT_BYTES
    q = recipe.format.bytes
    if plan.quantized_params:
        return 2.0 * q, q
    return WEIGHT_BYTES + 2.0 * q, WEIGHT_BYTES


def zero_shard(plan: TrainingPlan, params: StageParams, sharded) -> Float[Array, "*batch"]:
    """Parameters per chip where `sharded`: dense ones split over DP x CP, experts over their
    replicas EDP (the CP ranks of a replica hold the same weights, so Megatron's distributed
    optimizer shards over both)."""
    group = plan.dp * plan.cp
    return jnp.where(sharded, params.dense / group + params.expert / plan.expert_dp,
                     params.dense + params.expert)


@once_per_evaluation
def local_tokens(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """Tokens of one micro-batch on one chip: b * s / cp (context parallelism splits each
    sequence over cp chips)."""
    return plan.microbatch_size * model.seq_len / plan.cp


@once_per_evaluation
def kv_chunk_bytes(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """Bytes of the K and V of one CP chunk on one chip (what one ring step passes on).

    GQA: K and V of the chip's KV heads; MLA: the up-projected per-head K (qk width) and V,
    as Megatron-Core's CP sends them.
    """
    t = plan.tp
    if model.latent_attention:
        width = model.heads / t * (model.qk_head_dim + model.v_head_dim)
    else:
        width = 2.0 * kv_heads_per_rank(model, plan) * model.head_dim
    return ACT_BYTES * local_tokens(model, plan) * width


@once_per_evaluation
def _moe_layer_width(model: Transformer) -> Float[Array, "*batch"]:
    """Expert MLP width a token occupies in one MoE layer: top_k routed at the busiest
    expert's load plus the shared experts."""
    return (model.top_k * model.expert_load + model.shared_experts) * model.ffn_hidden


@once_per_evaluation
def moe_block_activation_bytes(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """What one MoE block stores beyond its input for one micro-batch on one chip (the experts'
    up / gate outputs, activation output and down-projection input), bytes: what
    `TrainingPlan.recompute_moe` rebuilds one layer at a time in backward."""
    up = 2.0 if model.gated_mlp else 1.0
    tokens = model.seq_len / plan.cp * plan.microbatch_size
    moe = jnp.where(model.experts > 1.0, 1.0, 0.0)
    # One whole MoE layer (not the average over MoE and dense layers).
    return moe * tokens * _moe_layer_width(model) * (2.0 * up + linear_input_bytes(plan)) / plan.tp


@once_per_evaluation
def activation_bytes_per_layer(model: Transformer, plan: TrainingPlan, *,
                               flash_attention: bool = True) -> Float[Array, "*batch"]:
    """Activations one layer stores for one micro-batch on one chip, bytes.

    Korthikanti et al. 2022 Sec. 4 / Table 2, generalized to GQA and gated / MoE MLPs: with
    16-bit activations and 1-byte dropout masks a GPT layer stores s*b*h*(34 + 5*a*s/h), of which
    10*s*b*h (norm inputs, dropout masks, GEMM inputs) is replicated across TP unless sequence
    parallelism shards it; selective recomputation drops the 5*a*s^2*b attention-core term; full
    recomputation keeps only the 2*s*b*h layer input, and `recompute_moe` only an MoE block's
    input (the MLP input). Fused (flash) attention never stores the
    score matrix, so with `flash_attention` the 5*a*s^2*b term is gone whatever the mode.
    A low-precision recipe saves the inputs of the QKV, MLP-up and MLP-down linears in its
    format (`linear_input_bytes`) instead of 16 bits: the weight gradient reads that copy and
    nothing else needs them (the output projection's input is the attention output, which the
    fused attention backward reads in 16 bits, so it stays).
    """
    # Context parallelism: a chip holds the s / cp tokens of its chunks (Megatron-Core CP keeps
    # only its own chunk's K and V and re-gathers them in backward), so every term below
    # counts s / cp tokens; the score matrix is (s / cp) x s.
    full_s, b, h, t = model.seq_len, plan.microbatch_size, model.hidden, plan.tp
    s = full_s / plan.cp
    sbh = s * b * h
    # Attention block: QKV input 2sbh, Q and K 2sb(q + kv), V 2sb*kv, projection input 2sb*q
    # (q = heads * head_dim = h for most models). MLA: Q and K at the qk width per head, V and
    # the projection input at the value width (the latents are small beside them).
    if model.latent_attention:
        q_dim = model.heads * model.qk_head_dim
        v_dim = model.heads * model.v_head_dim
        attn_parallel = s * b * (2.0 * (2.0 * q_dim) + 2.0 * v_dim + 2.0 * v_dim)
    else:
        q_dim, kv_dim = model.q_dim, model.kv_dim
        attn_parallel = s * b * (2.0 * (q_dim + kv_dim) + 2.0 * kv_dim + 2.0 * q_dim)
    # MLP: input 2sbh (replicated) + up-projection outputs and activation output, for the
    # tokens each expert takes (top_k routed at the busiest expert's load, plus the shared
    # experts) in MoE layers and the dense width in dense layers.
    up = 2.0 if model.gated_mlp else 1.0
    lib = linear_input_bytes(plan)
    share = model.moe_layer_share
    # `recompute_moe`: an MoE block keeps only its input (the MLP input, counted below).
    kept = jnp.where((plan.recompute_moe > 0.5) & (model.experts > 1.0), 0.0, 1.0)
    mlp_width = kept * share * _moe_layer_width(model) + (1.0 - share) * model.dense_ffn
    mlp_parallel = s * b * mlp_width * (2.0 * up + lib)
    # Replicated: 2 norm inputs (4sbh), QKV and MLP inputs (4sbh at 16 bits, or the recipe's
    # quantized copy), 2 dropout masks (2sbh).
    replicated = (6.0 + 2.0 * lib) * sbh
    scores = 0.0 if flash_attention else 5.0 * model.heads * s * full_s * b
    sp = plan.sequence_parallel > 0.5
    stored = (jnp.where(sp, replicated / t, replicated) + (attn_parallel + mlp_parallel) / t)
    none = stored + scores / t
    selective = stored
    full = 2.0 * sbh / jnp.where(sp, t, 1.0)
    return jnp.where(plan.recompute > 1.5, full,
                     jnp.where(plan.recompute > 0.5, selective, none))


class TrainingMemory(eqx.Module):
    """Memory per chip on the fullest pipeline stage, bytes; the four HBM parts sum to `total`.

    `host` is apart from them: the activations the plan offloads to host memory
    (`TrainingPlan.activation_offload`), held there instead of in HBM.
    """

    weights: Float[Array, "*batch"]
    grads: Float[Array, "*batch"]
    optimizer: Float[Array, "*batch"]
    activations: Float[Array, "*batch"]
    host: Float[Array, "*batch"] = 0.0

    @property
    def total(self) -> Float[Array, "*batch"]:
        """weights + grads + optimizer + activations, bytes."""
        return self.weights + self.grads + self.optimizer + self.activations


def training_memory(model: Transformer, plan: TrainingPlan, *,
                    flash_attention: bool = True) -> TrainingMemory:
    """Memory per chip of the fullest pipeline stage (bytes), by kind: the first (its layers
    and the embedding), or, with `TrainingPlan.account_embedding_loss` over pp > 2, the second
    where it holds more (one layer more, no embedding, one micro-batch fewer in flight).

    ZeRO stage 1 shards the optimizer state over DP, 2 also the gradients, 3 also the weights
    (plus one layer gathered and the next prefetched). Bytes per parameter follow the plan's
    state precisions; a low-precision recipe adds its cached quantized weights (rowwise and
    columnwise copies of every linear weight, sharded like the weights; `quantized_params`
    keeps only those). 1F1B keeps min(m, p) micro-batches of the stage's layers in flight
    (= all L layers' worth when m >= p); interleaving adds (p - 1) / (p v) (Korthikanti et al.
    2022, Sec. 4.2.3); full recomputation rebuilds one layer's activations at a time during
    backward, `recompute_moe` one MoE block's. Offloading moves the `activation_offload` share
    of the stored activations to host memory (`host`); one layer's worth stays in HBM as the
    buffer its copies pass through.
    """
    p, v = plan.pp, plan.interleave
    interleave_factor = jnp.where(v > 1.0, 1.0 + (p - 1.0) / (p * v), 1.0)
    per_layer = activation_bytes_per_layer(model, plan, flash_attention=flash_attention)
    # Skipped where the plan's values show it cannot matter: fewer operations to trace.
    if all_concretely(plan.recompute, lambda r: r == RECOMPUTE_NONE) \
            and all_concretely(plan.recompute_moe, lambda r: r == 0.0):
        working = per_layer
    else:
        working = activation_bytes_per_layer(
            model, plan.replace(recompute=RECOMPUTE_NONE, recompute_moe=0.0),
            flash_attention=flash_attention)
    # A recomputed MoE block rebuilds its activations for one layer at a time in backward.
    moe_block = jnp.where(plan.recompute_moe > 0.5, moe_block_activation_bytes(model, plan), 0.0)
    rebuilt = jnp.where(plan.recompute > 1.5, working, moe_block)
    # All-gather CP: one layer's backward holds the other ranks' K and V chunks beside the
    # whole sequence's dK and dV until their reduce-scatter.
    if no_cp_scheme(plan, CP_ALL_GATHER):
        gathered = 0.0
    else:
        gathered = jnp.where(plan.cp_comm == CP_ALL_GATHER,
                             (2.0 * plan.cp - 1.0) * kv_chunk_bytes(model, plan), 0.0)

    def stage(params, layers, in_flight):
        zero = plan.zero_stage
        held, _ = linear_weight_bytes(plan)
        # 16-bit for the norms, router and embedding; `held` for the linear layers.
        other = dataclasses.replace(params, dense=params.dense - params.dense_linear,
                                    expert=0.0 * params.expert)
        linear = dataclasses.replace(params, dense=params.dense_linear)
        weights = (WEIGHT_BYTES * zero_shard(plan, other, zero > 2.5)
                   + held * zero_shard(plan, linear, zero > 2.5))
        grads = grad_bytes(plan) * zero_shard(plan, params, zero > 1.5)
        optimizer = optimizer_bytes(plan) * zero_shard(plan, params, zero > 0.5)
        weights = weights + jnp.where(zero > 2.5, 2.0 * WEIGHT_BYTES * (params.dense_layer
                                                                        + params.expert_layer),
                                      0.0)
        stored = layers * in_flight * interleave_factor * per_layer
        offload = plan.activation_offload
        # The copy buffer: one layer's activations once one layer of the stage is offloaded.
        staging = per_layer * jnp.minimum(offload * layers, 1.0)
        activations = (1.0 - offload) * stored + staging + rebuilt + gathered
        return TrainingMemory(weights=weights, grads=grads, optimizer=optimizer,
                              activations=activations, host=offload * stored)

    # The first stage: its layers and the embedding, min(m, p) micro-batches in flight.
    first = stage(stage_params(model, plan), first_stage_layers(model, plan),
                  jnp.minimum(plan.microbatches, p))
    if all_concretely(plan.account_embedding_loss, lambda a: a <= 0.5):
        return first
    # With the embedding and the loss counted in the split, the second stage holds a whole
    # stage of layers (one more than the first) and one micro-batch fewer in flight: with few
    # layers per stage it holds more.
    units = split_units(model, plan) / p
    second = stage(stage_params(model, plan, layers=units, embedding=False), units,
                   jnp.minimum(plan.microbatches, p - 1.0))
    fuller = ((plan.account_embedding_loss > 0.5) & (p > 2.0)
              & (second.total > first.total))
    return jax.tree.map(lambda a, b: jnp.where(fuller, b, a), first, second)
