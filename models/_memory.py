"""Memory per chip of a training step: weights, gradients, optimizer state and activations.

Counts the busiest (first) pipeline stage, which also holds the embedding, under the plan's ZeRO
stage, recomputation mode, sequence parallelism and pipeline schedule (Korthikanti et al. 2022,
arXiv:2205.05198, Sec. 4; Rajbhandari et al. 2020, ZeRO, Sec. 5).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ._training_plan import RECOMPUTE_NONE, TrainingPlan
from ._transformer import Transformer

# Bytes per parameter of mixed-precision Adam (Megatron-LM docs/distrib_optimizer.md, table
# "fp16 param, fp32 grads": 18 bytes/param non-distributed = 2 param + 4 grad + 12 optimizer:
# fp32 main param, Adam m and v). The same split reproduces Korthikanti et al. Fig. 1.
WEIGHT_BYTES = 2.0
GRAD_BYTES = 4.0
OPTIMIZER_BYTES = 12.0
ACT_BYTES = 2.0  # 16-bit activations


class StageParams(eqx.Module):
    """Parameters one chip of the first pipeline stage holds before ZeRO sharding.

    **Fields:** `dense` (attention, norms, router, embedding), `expert` (MLP experts), `dense_layer`
    and `expert_layer` (one layer's worth of each, as ZeRO-3 gathers them).
    """

    dense: Float[Array, "*batch"]
    expert: Float[Array, "*batch"]
    dense_layer: Float[Array, "*batch"]
    expert_layer: Float[Array, "*batch"]

    @property
    def total(self) -> Float[Array, "*batch"]:
        """All parameters the chip holds, dense + expert."""
        return self.dense + self.expert


def stage_params(model: Transformer, plan: TrainingPlan) -> StageParams:
    """Parameters held by one chip of the first stage (which also holds the embedding)."""
    t = plan.tp
    layers_per_stage = model.layers / plan.pp
    share = model.moe_layer_share
    # Per layer averaged over MoE and dense layers: shared experts and the dense layers' MLPs
    # are replicated over EP like attention; routed experts are split ep ways.
    dense_layer = (model.attention_params_per_layer / t + share * model.router_params_per_layer
                   + 2.0 * model.hidden + model.conditioning_params_per_layer / t
                   + share * model.shared_experts * model.expert_params_per_layer / t
                   + (1.0 - share) * model.dense_mlp_params / t)
    expert_layer = (share * model.experts / plan.ep * model.expert_params_per_layer
                    / plan.expert_tp)
    embed = model.vocab * model.hidden / t
    return StageParams(dense=layers_per_stage * dense_layer + embed,
                       expert=layers_per_stage * expert_layer, dense_layer=dense_layer,
                       expert_layer=expert_layer)


def zero_shard(plan: TrainingPlan, params: StageParams, sharded) -> Float[Array, "*batch"]:
    """Parameters per chip where `sharded`: dense ones split over DP x CP, experts over their
    replicas EDP (the CP ranks of a replica hold the same weights, so Megatron's distributed
    optimizer shards over both)."""
    group = plan.dp * plan.cp
    return jnp.where(sharded, params.dense / group + params.expert / plan.expert_dp,
                     params.dense + params.expert)


def activation_bytes_per_layer(model: Transformer, plan: TrainingPlan, *,
                               flash_attention: bool = True) -> Float[Array, "*batch"]:
    """Activations one layer stores for one micro-batch on one chip, bytes.

    Korthikanti et al. 2022 Sec. 4 / Table 2, generalized to GQA and gated / MoE MLPs: with
    16-bit activations and 1-byte dropout masks a GPT layer stores s*b*h*(34 + 5*a*s/h), of which
    10*s*b*h (norm inputs, dropout masks, GEMM inputs) is replicated across TP unless sequence
    parallelism shards it; selective recomputation drops the 5*a*s^2*b attention-core term; full
    recomputation keeps only the 2*s*b*h layer input. Fused (flash) attention never stores the
    score matrix, so with `flash_attention` the 5*a*s^2*b term is gone whatever the mode.
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
    share = model.moe_layer_share
    mlp_width = (share * (model.top_k * model.expert_load + model.shared_experts)
                 * model.ffn_hidden + (1.0 - share) * model.dense_ffn)
    mlp_parallel = s * b * mlp_width * (2.0 * up + 2.0)
    # Replicated: 2 norm inputs (4sbh), QKV and MLP inputs (4sbh), 2 dropout masks (2sbh).
    replicated = 10.0 * sbh
    scores = 0.0 if flash_attention else 5.0 * model.heads * s * full_s * b
    sp = plan.sequence_parallel > 0.5
    stored = (jnp.where(sp, replicated / t, replicated) + (attn_parallel + mlp_parallel) / t)
    none = stored + scores / t
    selective = stored
    full = 2.0 * sbh / jnp.where(sp, t, 1.0)
    return jnp.where(plan.recompute > 1.5, full,
                     jnp.where(plan.recompute > 0.5, selective, none))


class TrainingMemory(eqx.Module):
    """Memory per chip on the first pipeline stage, bytes; the four parts sum to `total`."""

    weights: Float[Array, "*batch"]
    grads: Float[Array, "*batch"]
    optimizer: Float[Array, "*batch"]
    activations: Float[Array, "*batch"]

    @property
    def total(self) -> Float[Array, "*batch"]:
        """weights + grads + optimizer + activations, bytes."""
        return self.weights + self.grads + self.optimizer + self.activations


def training_memory(model: Transformer, plan: TrainingPlan, *,
                    flash_attention: bool = True) -> TrainingMemory:
    """Memory per chip of the first pipeline stage (bytes), by kind.

    ZeRO stage 1 shards the optimizer state over DP, 2 also the gradients, 3 also the weights
    (plus one layer gathered and the next prefetched). 1F1B keeps min(m, p) micro-batches of the
    stage's layers in flight (= all L layers' worth when m >= p); interleaving adds
    (p - 1) / (p v) (Korthikanti et al. 2022, Sec. 4.2.3); full recomputation rebuilds one
    layer's activations at a time during backward.
    """
    params = stage_params(model, plan)
    zero = plan.zero_stage
    weights = WEIGHT_BYTES * zero_shard(plan, params, zero > 2.5)
    grads = GRAD_BYTES * zero_shard(plan, params, zero > 1.5)
    optimizer = OPTIMIZER_BYTES * zero_shard(plan, params, zero > 0.5)
    weights = weights + jnp.where(zero > 2.5, 2.0 * WEIGHT_BYTES * (params.dense_layer
                                                                    + params.expert_layer), 0.0)
    p, v = plan.pp, plan.interleave
    in_flight = jnp.minimum(plan.microbatches, p) / p
    interleave_factor = jnp.where(v > 1.0, 1.0 + (p - 1.0) / (p * v), 1.0)
    per_layer = activation_bytes_per_layer(model, plan, flash_attention=flash_attention)
    activations = model.layers * in_flight * interleave_factor * per_layer
    working = activation_bytes_per_layer(model, plan.replace(recompute=RECOMPUTE_NONE),
                                         flash_attention=flash_attention)
    activations = activations + jnp.where(plan.recompute > 1.5, working, 0.0)
    return TrainingMemory(weights=weights, grads=grads, optimizer=optimizer,
                          activations=activations)
