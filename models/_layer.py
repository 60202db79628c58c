"""One transformer layer of a training step on one chip: its GEMMs, attention core, element-wise
ops, recomputation and tensor- / expert-parallel communication.

`layer_costs` is the single place that calls the operator models for training: it returns the
forward, backward and recomputed compute time of one layer for one micro-batch on one chip of
the TP group, the layer's exposed TP and EP communication, its HBM traffic, vector FLOPs and the
bytes it sends over links. `train_step` (`_training.py`) composes it into a step.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from dse.hardware import System

from ._calibration import DEFAULT, Calibration
from ._collectives import all_gather, all_reduce, all_to_all, reduce_scatter
from ._memory import ACT_BYTES
from ._operators import attention, attention_backward, elementwise, gemm
from ._recipe import EMULATED_BLOCK, HADAMARD_FLOPS, QUANTIZE_FLOPS, RECIPES, RecipeSpec
from ._training_plan import TrainingPlan
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
    s), `hbm_bytes` (HBM traffic of all of it, bytes), `vector_flops` (non-matrix FLOP),
    `comm_bytes` (bytes a chip sends over its links), `low_precision_flops` (matrix FLOP of
    the plan's recipe engine when it is narrower than 16 bits, recomputation included; 0 for
    "bf16"), `quantize` (time of the recipe's cast / amax / transpose kernels, s, included in
    `fwd`, `bwd` and `recompute`).
    """

    fwd: Float[Array, "*batch"]
    bwd: Float[Array, "*batch"]
    recompute: Float[Array, "*batch"]
    tp_comm: Float[Array, "*batch"]
    ep_comm: Float[Array, "*batch"]
    hbm_bytes: Float[Array, "*batch"]
    vector_flops: Float[Array, "*batch"]
    comm_bytes: Float[Array, "*batch"]
    low_precision_flops: Float[Array, "*batch"]
    quantize: Float[Array, "*batch"]


def gemm_fwd_bwd(chip, m, n, k, smooth, calibration: Calibration,
                 recipe: RecipeSpec = RECIPES["bf16"]):
    """Forward GEMM (m x k) @ (k x n) and its two backward GEMMs (dX, dW), in `recipe`'s
    format: operands at its width, 16-bit outputs, on its engine. A block-scaled format on a chip
    without block scaling is emulated: per 128-deep slice an FP32 scale-and-add of the partial
    result on the vector units (`EMULATED_BLOCK`), 2 n / 128 vector FLOP per element of A."""
    q = recipe.format.bytes
    emulated = recipe.format.block_scaled and not chip.block_scaling

    def one(m_, n_, k_):
        promote = 2.0 * n_ / EMULATED_BLOCK if emulated else 0.0
        return gemm(chip, m_, n_, k_, bytes_per_element=q, weight_bytes_per_element=q,
                    output_bytes_per_element=2.0, engine=recipe.engine,
                    input_convert_flops=promote, smooth=smooth, calibration=calibration)

    return one(m, n, k), one(m, k, n), one(k, n, m)


def _weight_gemm_shapes(model: Transformer, plan: TrainingPlan):
    """The layer's weight GEMMs on one chip: (count, m, n, k) of each forward GEMM (QKV,
    output projection, MLP up, MLP down), and the MoE router's (m, n, k)."""
    t, b, s = plan.tp, plan.microbatch_size, model.seq_len
    h, f, d = model.hidden, model.ffn_hidden, model.head_dim
    tokens = b * s
    heads_l = model.heads / t
    # KV heads are replicated once TP exceeds them (Megatron-LM GQA).
    kv_l = jnp.maximum(model.kv_heads / t, 1.0)
    local_experts = model.experts / plan.ep
    # Tokens each local expert sees: the ep chips of an expert group each route tokens * top_k
    # token-expert pairs evenly over all experts, so each of a chip's experts / ep experts
    # receives tokens * top_k * ep / experts.
    expert_tokens = tokens * model.top_k * plan.ep / model.experts
    up_width = f * (2.0 if model.gated_mlp else 1.0) / t
    shapes = [
        (1.0, tokens, heads_l * d + 2.0 * kv_l * d, h),  # QKV
        (1.0, tokens, h, heads_l * d),  # attention output projection
        (local_experts, expert_tokens, up_width, h),  # MLP up (+gate)
        (local_experts, expert_tokens, h, f / t),  # MLP down
    ]
    return shapes, (tokens, model.experts, h)


def _weight_gemms(model: Transformer, plan: TrainingPlan, system: System, smooth, calibration):
    """The layer's weight GEMMs: (count, (fwd, dx, dw)) pairs in the plan's recipe, plus the
    MoE router (16-bit: it is not a Transformer Engine linear)."""
    chip = system.chip
    recipe = RECIPES[plan.precision]
    shapes, router = _weight_gemm_shapes(model, plan)
    gemms = [(c, gemm_fwd_bwd(chip, m, n, k, smooth, calibration, recipe))
             for c, m, n, k in shapes]
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
    inputs = sum(c * m * k for c, m, n, k in shapes)
    grads = sum(c * m * n for c, m, n, k in shapes)
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


def _attention_core(model, plan, system, smooth, flash_attention, calibration):
    """QK^T, softmax, dropout, AV: (fwd s, bwd s, fwd bytes, all bytes, fwd vec, all vec)."""
    chip = system.chip
    t, b, s, d = plan.tp, plan.microbatch_size, model.seq_len, model.head_dim
    heads_l = model.heads / t
    kv_l = jnp.maximum(model.kv_heads / t, 1.0)
    eff = dict(smooth=smooth, calibration=calibration)
    if flash_attention:
        a_f = attention(chip, b, heads_l, kv_l, s, s, d, **eff)
        a_b = attention_backward(chip, b, heads_l, kv_l, s, s, d, **eff)
        return a_f.time, a_b.time, a_f.hbm_bytes, a_f.hbm_bytes + a_b.hbm_bytes, 0.0, 0.0
    # Megatron-LM 2021-22 kernels: batched GEMMs and a fused scale-mask-softmax that
    # materialize the b * heads * s * s score matrix (Korthikanti et al. 2022, Sec. 4.1).
    # QK^T and AV of all b * heads_l groups run as one batched GEMM kernel: modelled as one GEMM
    # with the groups stacked along M (K and V, s x d each, are small next to the s x s scores
    # that dominate the traffic).
    groups = b * heads_l
    qk = gemm_fwd_bwd(chip, groups * s, s, d, smooth, calibration)
    av = gemm_fwd_bwd(chip, groups * s, d, s, smooth, calibration)
    scores = groups * s * s
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
    tokens = plan.microbatch_size * model.seq_len
    expert_tokens = tokens * model.top_k * plan.ep / model.experts
    eff = dict(smooth=smooth, calibration=calibration)
    stream = tokens * model.hidden / jnp.where(sp > 0.5, t, 1.0)
    ffn_stream = expert_tokens * (model.experts / plan.ep) * model.ffn_hidden / t
    ln_f = elementwise(chip, stream, flops_per_element=LN_FLOPS, **eff)
    ln_b = elementwise(chip, stream, flops_per_element=2.0 * LN_FLOPS, reads=2.0, **eff)
    bdr_f = elementwise(chip, stream, flops_per_element=BDR_FLOPS, reads=2.0, writes=1.5, **eff)
    bdr_b = elementwise(chip, stream, flops_per_element=2.0, reads=1.5, **eff)
    if model.gated_mlp:
        act_f = elementwise(chip, ffn_stream, flops_per_element=SWIGLU_FLOPS, reads=2.0, **eff)
        act_b = elementwise(chip, ffn_stream, flops_per_element=2.0 * SWIGLU_FLOPS, reads=3.0,
                            writes=2.0, **eff)
    else:
        act_f = elementwise(chip, ffn_stream, flops_per_element=GELU_FLOPS, **eff)
        act_b = elementwise(chip, ffn_stream, flops_per_element=2.0 * GELU_FLOPS, reads=2.0,
                            **eff)
    fwd = 2.0 * (ln_f.time + bdr_f.time) + act_f.time
    bwd = 2.0 * (ln_b.time + bdr_b.time) + act_b.time
    fwd_bytes = 2.0 * (ln_f.hbm_bytes + bdr_f.hbm_bytes) + act_f.hbm_bytes
    all_bytes = fwd_bytes + 2.0 * (ln_b.hbm_bytes + bdr_b.hbm_bytes) + act_b.hbm_bytes
    vec_fwd = 2.0 * (ln_f.flops + bdr_f.flops) + act_f.flops
    return fwd, bwd, fwd_bytes, all_bytes, vec_fwd, vec_fwd + 2.0 * (ln_b.flops + bdr_b.flops) \
        + act_b.flops


def _tp_and_ep_comm(model, plan, system, calibration):
    """Exposed TP collectives and MoE all-to-alls of one layer: (tp s, ep s, bytes sent).

    TP: two all-reduces forward and two backward (with sequence parallelism each becomes an
    all-gather + reduce-scatter pair of the same volume; Korthikanti et al. 2022, Sec. 4.2.2);
    full recomputation repeats the forward pair. EP: dispatch and combine all-to-alls of the
    routed tokens, forward and backward; experts sit on chips tp apart inside the DP group.
    """
    t, sp = plan.tp, plan.sequence_parallel
    tokens = plan.microbatch_size * model.seq_len
    link = dict(calibration=calibration)
    full = plan.recompute > 1.5
    act_msg = ACT_BYTES * tokens * model.hidden
    ar = all_reduce(system, act_msg, t, **link)
    ag_rs = (all_gather(system, act_msg, t, **link).time
             + reduce_scatter(system, act_msg, t, **link).time)
    one = jnp.where(sp > 0.5, ag_rs, ar.time)
    tp_comm = one * (4.0 + jnp.where(full, 2.0, 0.0))
    tp_bytes = 2.0 * (t - 1.0) / t * act_msg * (4.0 + jnp.where(full, 2.0, 0.0))

    moe = model.experts > 1.0
    routed = ACT_BYTES * tokens * model.top_k * model.hidden / jnp.where(sp > 0.5, t, 1.0)
    a2a = all_to_all(system, routed, plan.ep, stride=t, **link)
    ep_comm = jnp.where(moe, 4.0 * a2a.time, 0.0)
    ep_bytes = jnp.where(moe, 4.0 * (plan.ep - 1.0) / plan.ep * routed, 0.0)
    return tp_comm, ep_comm, tp_bytes + ep_bytes


def layer_costs(model: Transformer, plan: TrainingPlan, system: System, *,
                calibration: Calibration = DEFAULT, smooth: bool = False,
                flash_attention: bool = True) -> LayerCost:
    """One transformer layer, one micro-batch, on one chip of the TP group.

    **Arguments:** as `train_step`.

    **Returns:** a `LayerCost` (compute times before `calibration.kernel_fraction` is applied).
    """
    gemms, router = _weight_gemms(model, plan, system, smooth, calibration)
    recipe = RECIPES[plan.precision]
    moe = model.experts > 1.0
    fwd = sum(c * g[0].time for c, g in gemms) + jnp.where(moe, router[0].time, 0.0)
    bwd = sum(c * (g[1].time + g[2].time) for c, g in gemms) \
        + jnp.where(moe, router[1].time + router[2].time, 0.0)
    hbm = sum(c * (g[0].hbm_bytes + g[1].hbm_bytes + g[2].hbm_bytes) for c, g in gemms)
    gemm_fwd_bytes = sum(c * g[0].hbm_bytes for c, g in gemms)

    core_fwd, core_bwd, core_fwd_bytes, core_bytes, core_vec_fwd, core_vec = _attention_core(
        model, plan, system, smooth, flash_attention, calibration)
    ew_fwd, ew_bwd, ew_fwd_bytes, ew_bytes, ew_vec_fwd, ew_vec = _elementwise_ops(
        model, plan, system, smooth, calibration)
    q_fwd, q_bwd, q_fwd_bytes, q_bytes, q_vec_fwd, q_vec = _quantize_ops(
        model, plan, system, smooth, calibration)
    fwd, bwd = fwd + core_fwd + ew_fwd + q_fwd, bwd + core_bwd + ew_bwd + q_bwd
    hbm = hbm + core_bytes + ew_bytes + q_bytes
    ew_fwd_bytes, ew_vec_fwd, ew_vec = (ew_fwd_bytes + q_fwd_bytes, ew_vec_fwd + q_vec_fwd,
                                        ew_vec + q_vec)

    full = plan.recompute > 1.5
    # Selective recomputation redoes the attention core in backward; fused (flash) attention
    # already does so inside its backward kernel, so there it costs nothing more.
    selective = (plan.recompute > 0.5) & ~full & (not flash_attention)
    layer_fwd_bytes = gemm_fwd_bytes + core_fwd_bytes + ew_fwd_bytes
    recompute = jnp.where(full, fwd, jnp.where(selective, core_fwd, 0.0))
    hbm = hbm + jnp.where(full, layer_fwd_bytes, jnp.where(selective, core_fwd_bytes, 0.0))

    tp_comm, ep_comm, comm_bytes = _tp_and_ep_comm(model, plan, system, calibration)
    vec = ew_vec + core_vec + jnp.where(full, ew_vec_fwd + core_vec_fwd,
                                        jnp.where(selective, core_vec_fwd, 0.0))
    gemm_flops = sum(c * (g[0].flops + g[1].flops + g[2].flops) for c, g in gemms)
    gemm_fwd_flops = sum(c * g[0].flops for c, g in gemms)
    low = (gemm_flops + jnp.where(full, gemm_fwd_flops, 0.0)) if recipe.low_precision \
        else jnp.zeros_like(fwd)
    quantize = q_fwd + q_bwd + jnp.where(full, q_fwd, 0.0)
    return LayerCost(fwd=fwd, bwd=bwd, recompute=recompute, tp_comm=tp_comm, ep_comm=ep_comm,
                     hbm_bytes=hbm, vector_flops=vec, comm_bytes=comm_bytes,
                     low_precision_flops=low, quantize=quantize)


def layer_time(model: Transformer, plan: TrainingPlan, system: System, *,
               calibration: Calibration = DEFAULT, smooth: bool = False,
               flash_attention: bool = True) -> Float[Array, "*batch"]:
    """Forward + backward (+ recomputation) of one layer for one micro-batch on one chip, s.

    Includes the layer's exposed tensor- and expert-parallel communication (what Korthikanti
    et al. 2022, Table 4, times per layer). Arguments as `train_step`.
    """
    lc = layer_costs(model, plan, system, calibration=calibration, smooth=smooth,
                     flash_attention=flash_attention)
    return (lc.fwd + lc.bwd + lc.recompute) / calibration.kernel_fraction + lc.tp_comm \
        + lc.ep_comm
