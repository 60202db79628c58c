"""One LLM training step under Megatron-style 4D parallelism: time, memory, MFU, energy.

The step is built from the operator and collective models (`_operators`, `_collectives`): one
transformer layer's GEMMs, attention and element-wise ops per micro-batch on one chip
(`_layer_costs`, the single place that calls them), composed into a pipeline schedule
(1F1B or interleaved, Narayanan et al. 2021, SC21), with data-parallel gradient reduction,
ZeRO / FSDP sharding and activation recomputation (Korthikanti et al. 2022, arXiv:2205.05198).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float

from dse.hardware import Activity, System, power
from dse.hardware._validate import as_float_array, check_range

from ._collectives import all_gather, all_reduce, all_to_all, reduce_scatter, send_recv
from ._operators import Efficiency, attention, attention_backward, elementwise, gemm
from ._transformer import Transformer

# Recomputation modes (Korthikanti et al. 2022, Sec. 5).
RECOMPUTE_NONE = 0.0
RECOMPUTE_SELECTIVE = 1.0  # recompute the attention core (QK^T, softmax, dropout, AV) only
RECOMPUTE_FULL = 2.0  # store each layer's input, recompute the whole layer in backward

# Sustained fraction of the isolated-operator speed (the operator models are fitted to single-op
# microbenchmarks) that on-chip work reaches inside an end-to-end training step: kernel gaps,
# framework overhead and the clock a chip sustains under training power draw. Fitted by
# `models/_fit_training.py: fit_kernel_fraction` to the training_runs.csv rows it names
# (FIT_SOURCES there); tests/test_training.py re-runs the fit.
SUSTAINED_KERNEL_FRACTION = 0.853

# Reason codes of `TrainReport.reason` (0 = feasible); the first failing check is reported.
REASON_OK = 0
REASON_CHIPS = 1  # tp * pp * dp exceeds the system's chips
REASON_BATCH = 2  # the global batch gives a replica less than one micro-batch
REASON_MEMORY = 3  # weights + gradients + optimizer + activations exceed HBM capacity
REASON_NAMES = {REASON_OK: "ok", REASON_CHIPS: "plan needs more chips than the system has",
                REASON_BATCH: "global batch smaller than one micro-batch per replica",
                REASON_MEMORY: "memory per chip exceeds HBM capacity"}

# Bytes per parameter of mixed-precision Adam (Megatron-LM docs/distrib_optimizer.md, table
# "fp16 param, fp32 grads": 18 bytes/param non-distributed = 2 param + 4 grad + 12 optimizer:
# fp32 main param, Adam m and v). The same split reproduces Korthikanti et al. Fig. 1.
WEIGHT_BYTES = 2.0
GRAD_BYTES = 4.0
OPTIMIZER_BYTES = 12.0
ACT_BYTES = 2.0  # 16-bit activations

# Arithmetic per element of the memory-bound ops, counted from their definitions (FLOP/element):
# LayerNorm: mean (1), centre (1), square+sum (2), scale by rsqrt (1), gamma/beta (2) = 7;
# GELU (tanh form): x^3, two mul-adds, tanh, 1+, two mul = 8; SwiGLU: sigmoid (4), two mul = 6;
# bias + dropout + residual: add, mask-mul, scale, add = 4; softmax: max, sub, exp, sum, div = 5;
# Adam(W): m (3), v (4), bias corrections (2), sqrt+eps+div (3), decay (2), lr step (2) = 16.
_LN_FLOPS, _GELU_FLOPS, _SWIGLU_FLOPS, _BDR_FLOPS, _SOFTMAX_FLOPS, _ADAM_FLOPS = (
    7.0, 8.0, 6.0, 4.0, 5.0, 16.0)


class TrainingPlan(eqx.Module):
    """How one training step is mapped onto the chips (all leaves floats so plans vmap).

    **Fields:**

    - `tp`, `pp`, `dp`, `ep`: tensor-, pipeline-, data- and expert-parallel degrees
      (chips used = tp * pp * dp; experts are sharded `ep` ways inside the data-parallel group).
    - `microbatch_size`: sequences per micro-batch.
    - `global_batch`: sequences per optimizer step (micro-batches per replica =
      global_batch / (dp * microbatch_size)).
    - `interleave`: virtual pipeline stages per chip (1 = plain 1F1B).
    - `sequence_parallel`: 1 to shard norms/dropouts along the sequence over the TP group.
    - `recompute`: `RECOMPUTE_NONE` / `RECOMPUTE_SELECTIVE` / `RECOMPUTE_FULL` (0 / 1 / 2).
    - `zero_stage`: 0 none, 1 optimizer state, 2 + gradients, 3 + weights (FSDP) sharded over DP.
    - `dp_overlap`: 1 to overlap the gradient reduction with the backward pass.
    """

    tp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    pp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    dp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    ep: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    microbatch_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    global_batch: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    interleave: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    sequence_parallel: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=0.0)
    recompute: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    zero_stage: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    dp_overlap: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)

    def __check_init__(self):
        for field in ("tp", "pp", "dp", "ep", "microbatch_size", "global_batch", "interleave"):
            check_range("TrainingPlan", field, getattr(self, field), lower=1.0,
                        lower_inclusive=True)
        for field, hi in (("sequence_parallel", 1.0), ("recompute", 2.0), ("zero_stage", 3.0),
                          ("dp_overlap", 1.0)):
            check_range("TrainingPlan", field, getattr(self, field), lower=0.0, upper=hi,
                        lower_inclusive=True)
        ep, dp = self.ep, self.dp
        if not isinstance(ep, jax.core.Tracer) and not isinstance(dp, jax.core.Tracer):
            if bool(np.any(np.asarray(ep) > np.asarray(dp))):
                raise ValueError(f"TrainingPlan.ep must be <= TrainingPlan.dp ({dp}); got {ep}")

    @property
    def chips(self) -> Float[Array, "*batch"]:
        """Chips the plan occupies, tp * pp * dp."""
        return self.tp * self.pp * self.dp

    @property
    def microbatches(self) -> Float[Array, "*batch"]:
        """Micro-batches per replica per step, global_batch / (dp * microbatch_size)."""
        return self.global_batch / (self.dp * self.microbatch_size)

    def replace(self, **changes) -> TrainingPlan:
        """A copy with some fields changed (validated like a new plan)."""
        return dataclasses.replace(self, **changes)


class TrainReport(eqx.Module):
    """What one training step costs (per step, per chip where it says so; SI units).

    `step_time == compute_time + tp_comm_time + pp_comm_time + dp_comm_time + ep_comm_time
    + bubble_time + optimizer_time` (exposed communication only). `memory_per_chip ==
    weights_bytes + grads_bytes + optimizer_bytes + activations_bytes` on the busiest (first)
    pipeline stage. `fits` is False with `reason` (a `REASON_*` code) when the plan is infeasible;
    the times are still computed so that a sweep can see how far off it is.
    """

    step_time: Float[Array, "*batch"]
    tokens_per_s: Float[Array, "*batch"]
    mfu: Float[Array, "*batch"]
    hfu: Float[Array, "*batch"]
    energy: Float[Array, "*batch"]
    memory_per_chip: Float[Array, "*batch"]
    weights_bytes: Float[Array, "*batch"]
    grads_bytes: Float[Array, "*batch"]
    optimizer_bytes: Float[Array, "*batch"]
    activations_bytes: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Array
    compute_time: Float[Array, "*batch"]
    tp_comm_time: Float[Array, "*batch"]
    pp_comm_time: Float[Array, "*batch"]
    dp_comm_time: Float[Array, "*batch"]
    ep_comm_time: Float[Array, "*batch"]
    bubble_time: Float[Array, "*batch"]
    optimizer_time: Float[Array, "*batch"]
    model_flops: Float[Array, "*batch"]
    hardware_flops: Float[Array, "*batch"]

    @property
    def breakdown(self) -> dict[str, Float[Array, "*batch"]]:
        """The step time by where it went (sums to `step_time`)."""
        return {"compute": self.compute_time, "tp_comm": self.tp_comm_time,
                "pp_comm": self.pp_comm_time, "dp_comm": self.dp_comm_time,
                "ep_comm": self.ep_comm_time, "bubble": self.bubble_time,
                "optimizer": self.optimizer_time}


class _LayerCost(eqx.Module):
    fwd: Array  # forward compute of one layer, one micro-batch, s
    bwd: Array  # backward compute, s
    recompute: Array  # extra forward work redone in backward, s
    tp_comm: Array  # TP collectives fwd + bwd (+ recompute), s
    ep_comm: Array  # MoE all-to-alls fwd + bwd, s
    hbm_bytes: Array  # HBM traffic fwd + bwd + recompute, bytes
    vector_flops: Array  # non-matrix FLOPs, FLOP
    comm_bytes: Array  # bytes a chip sends over its links, bytes


def _gemm_fb(chip, m, n, k, smooth, efficiency: Efficiency | None = None):
    """Forward GEMM (m x k) @ (k x n) and its two backward GEMMs (dX, dW)."""
    f = gemm(chip, m, n, k, smooth=smooth, efficiency=efficiency)
    dx = gemm(chip, m, k, n, smooth=smooth, efficiency=efficiency)
    dw = gemm(chip, k, n, m, smooth=smooth, efficiency=efficiency)
    return f, dx, dw


def _layer_costs(model: Transformer, plan: TrainingPlan, system: System, smooth: bool,
                 flash_attention: bool, efficiency: Efficiency | None = None,
                 link_efficiency=None, latency_scale=None) -> _LayerCost:
    """One transformer layer, one micro-batch, on one chip of the TP group.

    `efficiency` (the operator `Efficiency`, None = fitted default) reaches every operator call
    and `link_efficiency` (None = `SCALEUP_LINK_EFFICIENCY`) and `latency_scale` (None = the
    system's stated latency) every collective.
    """
    chip = system.chip
    eff = dict(smooth=smooth, efficiency=efficiency)
    link = dict(link_efficiency=link_efficiency, latency_scale=latency_scale)
    t, sp, b, s = plan.tp, plan.sequence_parallel, plan.microbatch_size, model.seq_len
    h, f = model.hidden, model.ffn_hidden
    tokens = b * s
    heads_l = model.heads / t
    # KV heads are replicated once TP exceeds them (Megatron-LM GQA).
    kv_l = jnp.maximum(model.kv_heads / t, 1.0)
    d = model.head_dim
    moe = model.experts > 1.0
    local_experts = model.experts / plan.ep
    # Tokens each local expert sees: the ep chips of an expert group each route tokens * top_k
    # token-expert pairs evenly over all experts, so each of a chip's experts / ep experts
    # receives tokens * top_k * ep / experts.
    expert_tokens = tokens * model.top_k * plan.ep / model.experts
    up_width = f * (2.0 if model.gated_mlp else 1.0) / t

    def fb(m, n, k):
        return _gemm_fb(chip, m, n, k, smooth, efficiency)

    gemms = [
        (1.0, fb(tokens, heads_l * d + 2.0 * kv_l * d, h)),  # QKV
        (1.0, fb(tokens, h, heads_l * d)),  # attention output projection
        (local_experts, fb(expert_tokens, up_width, h)),  # MLP up (+gate)
        (local_experts, fb(expert_tokens, h, f / t)),  # MLP down
    ]
    fwd = sum(c * g[0].time for c, g in gemms)
    bwd = sum(c * (g[1].time + g[2].time) for c, g in gemms)
    hbm = sum(c * (g[0].hbm_bytes + g[1].hbm_bytes + g[2].hbm_bytes) for c, g in gemms)
    gemm_fwd_bytes = sum(c * g[0].hbm_bytes for c, g in gemms)
    router = fb(tokens, model.experts, h)
    fwd = fwd + jnp.where(moe, router[0].time, 0.0)
    bwd = bwd + jnp.where(moe, router[1].time + router[2].time, 0.0)

    # Attention core (QK^T, softmax, dropout, AV).
    if flash_attention:
        a_f = attention(chip, b, heads_l, kv_l, s, s, d, **eff)
        a_b = attention_backward(chip, b, heads_l, kv_l, s, s, d, **eff)
        core_fwd, core_bwd = a_f.time, a_b.time
        core_fwd_bytes, core_bytes = a_f.hbm_bytes, a_f.hbm_bytes + a_b.hbm_bytes
        core_vec_fwd, core_vec = 0.0, 0.0
    else:
        # Megatron-LM 2021-22 kernels: batched GEMMs and a fused scale-mask-softmax that
        # materialize the b * heads * s * s score matrix (Korthikanti et al. 2022, Sec. 4.1).
        # QK^T and AV of all b * heads_l groups run as one batched GEMM kernel: modelled as
        # one GEMM with the groups stacked along M (K and V, s x d each, are small next to the
        # s x s scores that dominate the traffic).
        groups = b * heads_l
        qk = fb(groups * s, s, d)
        av = fb(groups * s, d, s)
        scores = groups * s * s
        softmax_f = elementwise(chip, scores, flops_per_element=_SOFTMAX_FLOPS, **eff)
        # Dropout writes its output and a 1-byte mask (half a 16-bit element).
        drop_f = elementwise(chip, scores, flops_per_element=2.0, writes=1.5, **eff)
        softmax_b = elementwise(chip, scores, flops_per_element=_SOFTMAX_FLOPS, reads=2.0, **eff)
        drop_b = elementwise(chip, scores, flops_per_element=1.0, reads=1.5, **eff)
        core_fwd = qk[0].time + av[0].time + softmax_f.time + drop_f.time
        core_bwd = (qk[1].time + qk[2].time + av[1].time + av[2].time + softmax_b.time
                    + drop_b.time)
        core_fwd_bytes = (qk[0].hbm_bytes + av[0].hbm_bytes + softmax_f.hbm_bytes
                          + drop_f.hbm_bytes)
        core_bytes = core_fwd_bytes + (qk[1].hbm_bytes + qk[2].hbm_bytes + av[1].hbm_bytes
                                       + av[2].hbm_bytes + softmax_b.hbm_bytes
                                       + drop_b.hbm_bytes)
        core_vec_fwd = softmax_f.flops + drop_f.flops
        core_vec = core_vec_fwd + softmax_b.flops + drop_b.flops
    fwd, bwd, hbm = fwd + core_fwd, bwd + core_bwd, hbm + core_bytes

    # Element-wise ops: two LayerNorms and two bias-dropout-residuals on the hidden stream
    # (sharded over TP only with sequence parallelism), the MLP activation on the FFN stream.
    stream = tokens * h / jnp.where(sp > 0.5, t, 1.0)
    ffn_stream = expert_tokens * local_experts * f / t
    ln_f = elementwise(chip, stream, flops_per_element=_LN_FLOPS, **eff)
    ln_b = elementwise(chip, stream, flops_per_element=2.0 * _LN_FLOPS, reads=2.0, **eff)
    bdr_f = elementwise(chip, stream, flops_per_element=_BDR_FLOPS, reads=2.0, writes=1.5, **eff)
    bdr_b = elementwise(chip, stream, flops_per_element=2.0, reads=1.5, **eff)
    if model.gated_mlp:
        act_f = elementwise(chip, ffn_stream, flops_per_element=_SWIGLU_FLOPS, reads=2.0, **eff)
        act_b = elementwise(chip, ffn_stream, flops_per_element=2.0 * _SWIGLU_FLOPS, reads=3.0,
                            writes=2.0, **eff)
    else:
        act_f = elementwise(chip, ffn_stream, flops_per_element=_GELU_FLOPS, **eff)
        act_b = elementwise(chip, ffn_stream, flops_per_element=2.0 * _GELU_FLOPS, reads=2.0,
                            **eff)
    ew_fwd = 2.0 * (ln_f.time + bdr_f.time) + act_f.time
    ew_bwd = 2.0 * (ln_b.time + bdr_b.time) + act_b.time
    ew_fwd_bytes = 2.0 * (ln_f.hbm_bytes + bdr_f.hbm_bytes) + act_f.hbm_bytes
    ew_bytes = ew_fwd_bytes + 2.0 * (ln_b.hbm_bytes + bdr_b.hbm_bytes) + act_b.hbm_bytes
    ew_vec_fwd = 2.0 * (ln_f.flops + bdr_f.flops) + act_f.flops
    ew_vec = ew_vec_fwd + 2.0 * (ln_b.flops + bdr_b.flops) + act_b.flops
    fwd, bwd, hbm = fwd + ew_fwd, bwd + ew_bwd, hbm + ew_bytes

    full = plan.recompute > 1.5
    # Selective recomputation redoes the attention core in backward; fused (flash) attention
    # already does so inside its backward kernel, so there it costs nothing more.
    selective = (plan.recompute > 0.5) & ~full & (not flash_attention)
    layer_fwd_bytes = gemm_fwd_bytes + core_fwd_bytes + ew_fwd_bytes
    recompute = jnp.where(full, fwd, jnp.where(selective, core_fwd, 0.0))
    hbm = hbm + jnp.where(full, layer_fwd_bytes, jnp.where(selective, core_fwd_bytes, 0.0))

    # TP: two all-reduces forward and two backward (with sequence parallelism each becomes an
    # all-gather + reduce-scatter pair of the same volume; Korthikanti et al. 2022, Sec. 4.2.2);
    # full recomputation repeats the forward pair.
    act_msg = ACT_BYTES * tokens * h
    ar = all_reduce(system, act_msg, t, **link)
    ag_rs = (all_gather(system, act_msg, t, **link).time
             + reduce_scatter(system, act_msg, t, **link).time)
    one = jnp.where(sp > 0.5, ag_rs, ar.time)
    tp_comm = one * (4.0 + jnp.where(full, 2.0, 0.0))
    tp_bytes = 2.0 * (t - 1.0) / t * act_msg * (4.0 + jnp.where(full, 2.0, 0.0))

    # EP: dispatch and combine all-to-alls of the routed tokens, forward and backward; experts
    # sit on chips tp apart inside the DP group.
    routed = ACT_BYTES * tokens * model.top_k * h / jnp.where(sp > 0.5, t, 1.0)
    a2a = all_to_all(system, routed, plan.ep, stride=t, **link)
    ep_comm = jnp.where(moe, 4.0 * a2a.time, 0.0)
    ep_bytes = jnp.where(moe, 4.0 * (plan.ep - 1.0) / plan.ep * routed, 0.0)

    vec = ew_vec + core_vec + jnp.where(full, ew_vec_fwd + core_vec_fwd,
                                        jnp.where(selective, core_vec_fwd, 0.0))
    return _LayerCost(fwd=fwd, bwd=bwd, recompute=recompute, tp_comm=tp_comm, ep_comm=ep_comm,
                      hbm_bytes=hbm, vector_flops=vec, comm_bytes=tp_bytes + ep_bytes)


def layer_time(model: Transformer, plan: TrainingPlan, system: System, *, smooth: bool = False,
               flash_attention: bool = True, kernel_fraction: float | None = None,
               efficiency: Efficiency | None = None,
               link_efficiency: ArrayLike | None = None,
               latency_scale: ArrayLike | None = None) -> Float[Array, "*batch"]:
    """Forward + backward (+ recomputation) of one layer for one micro-batch on one chip, s.

    Includes the layer's exposed tensor- and expert-parallel communication (what Korthikanti
    et al. 2022, Table 4, times per layer). Arguments as `train_step`.
    """
    eta = SUSTAINED_KERNEL_FRACTION if kernel_fraction is None else kernel_fraction
    lc = _layer_costs(model, plan, system, smooth, flash_attention, efficiency, link_efficiency,
                      latency_scale)
    return (lc.fwd + lc.bwd + lc.recompute) / eta + lc.tp_comm + lc.ep_comm


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
    s, b, h, t = model.seq_len, plan.microbatch_size, model.hidden, plan.tp
    sbh = s * b * h
    kv_dim = model.kv_dim
    # Attention block: QKV input 2sbh, Q and K 2sb(q + kv), V 2sb*kv, projection input 2sb*q
    # (q = heads * head_dim = h for most models).
    q_dim = model.q_dim
    attn_parallel = s * b * (2.0 * (q_dim + kv_dim) + 2.0 * kv_dim + 2.0 * q_dim)
    # MLP: input 2sbh (replicated) + up-projection outputs and activation output.
    up = 2.0 if model.gated_mlp else 1.0
    mlp_parallel = model.top_k * s * b * model.ffn_hidden * (2.0 * up + 2.0)
    # Replicated: 2 norm inputs (4sbh), QKV and MLP inputs (4sbh), 2 dropout masks (2sbh).
    replicated = 10.0 * sbh
    scores = 0.0 if flash_attention else 5.0 * model.heads * s * s * b
    sp = plan.sequence_parallel > 0.5
    stored = (jnp.where(sp, replicated / t, replicated) + (attn_parallel + mlp_parallel) / t)
    none = stored + scores / t
    selective = stored
    full = 2.0 * sbh / jnp.where(sp, t, 1.0)
    return jnp.where(plan.recompute > 1.5, full,
                     jnp.where(plan.recompute > 0.5, selective, none))


def train_step(model: Transformer, plan: TrainingPlan, system: System, *, smooth: bool = False,
               flash_attention: bool = True, kernel_fraction: float | None = None,
               efficiency: Efficiency | None = None,
               link_efficiency: ArrayLike | None = None,
               latency_scale: ArrayLike | None = None,
               dp_overlap_fraction: ArrayLike | None = None) -> TrainReport:
    """Cost of one optimizer step of `model` trained with `plan` on `system`.

    **Arguments:**

    - `model`: the `Transformer`.
    - `plan`: the `TrainingPlan` (parallel degrees, batch, recomputation, sharding).
    - `system`: the `System` (chips and their two network tiers).
    - `smooth`: smooth maxima in the operator rooflines (for gradients).
    - `flash_attention`: fused attention that never stores the score matrix (False models the
      Megatron-LM 2021-22 kernels that materialize it).
    - `kernel_fraction`: sustained fraction of the isolated-operator speed reached inside a
      training step (default `SUSTAINED_KERNEL_FRACTION`, fitted).
    - `efficiency`: the operator `Efficiency` of every GEMM, attention and element-wise op
      (default: the fitted `default_efficiency()`; pass a calibrated one, or a traced one to
      differentiate with respect to it).
    - `link_efficiency`: fraction of the scale-up link bandwidth every collective sustains
      (default `SCALEUP_LINK_EFFICIENCY`, fitted).
    - `latency_scale`: factor on the scale-up tier's per-step collective latency (default None:
      the system's stated `scaleup_latency`; see `dse.models.all_reduce`).
    - `dp_overlap_fraction`: for plans with `dp_overlap`, the fraction of the overlap window
      (the backward pass; with ZeRO-3 the whole step's compute) under which the data-parallel
      communication actually hides, in [0, 1]: the exposed time is
      max(dp_total - fraction * window, one layer's share). Default None: the whole window,
      exactly as fraction 1; 0 hides nothing. Plans without `dp_overlap` are unaffected.

    **Returns:** a `TrainReport` (seconds, tokens/s, fractions of peak, joules, bytes).
    """
    chip = system.chip
    t, p, dp, v, b = plan.tp, plan.pp, plan.dp, plan.interleave, plan.microbatch_size
    s, h = model.seq_len, model.hidden
    m = plan.microbatches
    layers_per_stage = model.layers / p
    lc = _layer_costs(model, plan, system, smooth, flash_attention, efficiency, link_efficiency,
                      latency_scale)
    eff = dict(smooth=smooth, efficiency=efficiency)
    link = dict(link_efficiency=link_efficiency, latency_scale=latency_scale)

    # The output layer (logits GEMM + cross-entropy) runs on the last stage, which paces the
    # pipeline; the embedding lookup is negligible.
    tokens = b * s
    logits = _gemm_fb(chip, tokens, model.vocab / t, h, smooth, efficiency)
    xent = elementwise(chip, tokens * model.vocab / t, flops_per_element=_SOFTMAX_FLOPS,
                       reads=2.0, **eff)
    out_time = logits[0].time + logits[1].time + logits[2].time + 2.0 * xent.time

    eta = SUSTAINED_KERNEL_FRACTION if kernel_fraction is None else kernel_fraction
    stage_compute = (layers_per_stage * (lc.fwd + lc.bwd + lc.recompute) + out_time) / eta
    stage_tp = layers_per_stage * lc.tp_comm
    stage_ep = layers_per_stage * lc.ep_comm
    # Pipeline point-to-point: each micro-batch crosses each of a chip's v virtual stage
    # boundaries forward and backward; scatter/gather sends 1/t of the activation (SC21 Sec. 4.1).
    # The receiving TP group all-gathers the full activation over the scale-up tier.
    p2p_bytes = ACT_BYTES * tokens * h / t
    p2p = send_recv(system, p2p_bytes, 2.0, stride=t * dp, **link)
    regather = all_gather(system, ACT_BYTES * tokens * h, t, **link)
    stage_pp = jnp.where(p > 1.0, 2.0 * v * (p2p.time + regather.time), 0.0)

    compute_time = m * stage_compute
    tp_time = m * stage_tp
    ep_time = m * stage_ep
    pp_time = m * stage_pp
    # 1F1B bubble: (p - 1) / v micro-batch slots (SC21 Sec. 2.2).
    bubble_time = (p - 1.0) / v * (stage_compute + stage_tp + stage_ep + stage_pp)

    # Parameters held by one chip of the first stage (which also holds the embedding).
    dense_layer = (model.attention_params_per_layer / t + model.router_params_per_layer
                   + 2.0 * model.hidden)
    expert_layer = model.experts / plan.ep * model.expert_params_per_layer / t
    embed = model.vocab * h / t
    dense_params = layers_per_stage * dense_layer + embed
    expert_params = layers_per_stage * expert_layer
    stage_params = dense_params + expert_params

    zero = plan.zero_stage
    expert_dp = dp / plan.ep

    def shard(x_dense, x_expert, on):
        return jnp.where(on, x_dense / dp + x_expert / expert_dp, x_dense + x_expert)

    weights = WEIGHT_BYTES * shard(dense_params, expert_params, zero > 2.5)
    grads = GRAD_BYTES * shard(dense_params, expert_params, zero > 1.5)
    optimizer = OPTIMIZER_BYTES * shard(dense_params, expert_params, zero > 0.5)
    # ZeRO-3 gathers one layer's weights at a time, plus the next one prefetched.
    weights = weights + jnp.where(zero > 2.5, 2.0 * WEIGHT_BYTES * (dense_layer + expert_layer),
                                  0.0)

    # Activations on the first stage: 1F1B keeps min(m, p) micro-batches of its layers in
    # flight (= all L layers' worth when m >= p); interleaving adds (p - 1) / (p v)
    # (Korthikanti et al. 2022, Sec. 4.2.3).
    in_flight = jnp.minimum(m, p) / p
    interleave_factor = jnp.where(v > 1.0, 1.0 + (p - 1.0) / (p * v), 1.0)
    per_layer = activation_bytes_per_layer(model, plan, flash_attention=flash_attention)
    activations = model.layers * in_flight * interleave_factor * per_layer
    # Full recomputation rebuilds one layer's activations at a time during backward.
    working = activation_bytes_per_layer(model, plan.replace(recompute=RECOMPUTE_NONE),
                                         flash_attention=flash_attention)
    activations = activations + jnp.where(plan.recompute > 1.5, working, 0.0)
    memory = weights + grads + optimizer + activations

    # Data parallel: gradient reduction (ZeRO-0: all-reduce; ZeRO-1/2: reduce-scatter of the
    # gradients + all-gather of the updated 16-bit weights; ZeRO-3: weights all-gathered for
    # forward and backward of every micro-batch, gradients reduce-scattered).
    def dp_comm(n_params, group, stride):
        ar_ = all_reduce(system, GRAD_BYTES * n_params, group, stride=stride, **link).time
        rs_ = reduce_scatter(system, GRAD_BYTES * n_params, group, stride=stride, **link).time
        ag_ = all_gather(system, WEIGHT_BYTES * n_params, group, stride=stride, **link).time
        z3 = m * (2.0 * ag_ + rs_)
        return jnp.where(zero > 2.5, z3, jnp.where(zero > 0.5, rs_ + ag_, ar_))

    dp_total = dp_comm(dense_params, dp, t) + dp_comm(expert_params, expert_dp, t * plan.ep)
    # Overlap hides the reduction behind the last micro-batch's backward (bucketed all-reduce);
    # ZeRO-3 prefetches each layer's gather behind the compute of the whole step. One layer's
    # share stays exposed either way: the last bucket reduced after the backward pass ends (and
    # the first gather before the forward pass starts).
    window = jnp.where(zero > 2.5, compute_time, layers_per_stage * lc.bwd / eta)
    if dp_overlap_fraction is not None:
        check_range("train_step", "dp_overlap_fraction", dp_overlap_fraction, lower=0.0,
                    upper=1.0, lower_inclusive=True)
        # Only part of the window hides the communication (calibratable; None = all of it).
        window = dp_overlap_fraction * window
    unhidden = dp_total / jnp.maximum(layers_per_stage, 1.0)
    dp_time = jnp.where(plan.dp_overlap > 0.5,
                        jnp.maximum(dp_total - window, unhidden), dp_total)
    dp_time = jnp.where(dp > 1.0, dp_time, 0.0)

    # Optimizer: Adam over the chip's shard of the parameters, memory bound (reads fp32 main
    # weight, m, v and gradient; writes the three back and the 16-bit weight copy).
    opt_params = shard(dense_params, expert_params, zero > 0.5)
    opt = elementwise(chip, opt_params, flops_per_element=_ADAM_FLOPS, bytes_per_element=4.0,
                      reads=4.0, writes=3.5, **eff)
    optimizer_time = opt.time / eta

    step_time = (compute_time + tp_time + pp_time + dp_time + ep_time + bubble_time
                 + optimizer_time)

    chips_used = plan.chips
    global_tokens = plan.global_batch * s
    model_flops = global_tokens * model.flops_per_token(training=True)
    recompute_share = jnp.where(
        plan.recompute > 1.5, 1.0,
        jnp.where((plan.recompute > 0.5) & (not flash_attention),
                  4.0 * s * model.q_dim / model.layer_forward_flops_per_token(), 0.0))
    hardware_flops = global_tokens * model.hardware_flops_per_token(recompute_share)
    peak = chip.peak_flops
    mfu = model_flops / (chips_used * peak * step_time)
    hfu = hardware_flops / (chips_used * peak * step_time)

    # Energy: the chip's power at the utilizations this step implies, times the step.
    hbm_bytes = m * (layers_per_stage * lc.hbm_bytes + logits[0].hbm_bytes
                     + logits[1].hbm_bytes + logits[2].hbm_bytes) + opt.hbm_bytes
    link_bytes = m * (layers_per_stage * lc.comm_bytes + jnp.where(p > 1.0, 2.0 * v, 0.0)
                      * p2p_bytes) + jnp.where(dp > 1.0, 2.0 * GRAD_BYTES * stage_params, 0.0)
    vec_flops = m * layers_per_stage * lc.vector_flops + opt.flops
    u_compute = jnp.clip(hfu, 0.0, 1.0)
    activity = Activity(
        compute=u_compute,
        vector=jnp.clip(vec_flops / (chip.vector_flops * step_time), 0.0, 1.0),
        # max(., 1 B/s): a chip with no HBM (or no links) moves no bytes there; without it the
        # 0 / 0 here is NaN in the gradient of the energy.
        hbm=jnp.clip(hbm_bytes / (jnp.maximum(chip.hbm_bandwidth, 1.0) * step_time), 0.0, 1.0),
        link=jnp.clip(link_bytes / (jnp.maximum(system.scaleup_bandwidth, 1.0) * step_time),
                      0.0, 1.0),
    )
    energy = power(chip, activity).total * step_time * chips_used

    too_many = chips_used > system.num_chips + 0.5
    no_batch = m < 1.0 - 1e-6
    oom = memory > chip.hbm_bytes
    reason = jnp.where(too_many, REASON_CHIPS,
                       jnp.where(no_batch, REASON_BATCH,
                                 jnp.where(oom, REASON_MEMORY, REASON_OK)))
    return TrainReport(
        step_time=step_time, tokens_per_s=global_tokens / step_time, mfu=mfu, hfu=hfu,
        energy=energy, memory_per_chip=memory, weights_bytes=weights, grads_bytes=grads,
        optimizer_bytes=optimizer, activations_bytes=activations, fits=reason == REASON_OK,
        reason=reason, compute_time=compute_time, tp_comm_time=tp_time, pp_comm_time=pp_time,
        dp_comm_time=dp_time, ep_comm_time=ep_time, bubble_time=bubble_time,
        optimizer_time=optimizer_time, model_flops=model_flops, hardware_flops=hardware_flops)
