"""One LLM training step under Megatron-style 4D parallelism: time, memory, MFU, energy.

`train_step` composes the pieces, each in its own module:

- `_layer.py`: one layer's GEMMs, attention, element-wise ops, recomputation, TP and EP
  communication (the only place training calls the operator models);
- `_memory.py`: weights, gradients, optimizer state and activations per chip (ZeRO sharding);
- `_pipeline.py`: stage-to-stage sends and the pipeline bubble (1F1B / interleaved, Narayanan
  et al. 2021, SC21);
- `_data_parallel.py`: DP / ZeRO / FSDP communication and what overlap hides;
- `_energy.py`: energy at the utilizations the step implies.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from dse.hardware import Reason, System
from dse.hardware._once import evaluates_once

from ._calibration import DEFAULT, Calibration
from ._data_parallel import data_parallel_cost
from ._energy import step_energy
from ._layer import ADAM_FLOPS, SOFTMAX_FLOPS, gemm_fwd_bwd, layer_costs, weight_quantize
from ._memory import (
    STATE_BYTES,
    WEIGHT_BYTES,
    activation_bytes_per_layer,
    grad_bytes,
    optimizer_bytes,
    stage_params,
    training_memory,
    zero_shard,
)
from ._offload import offload_bytes_per_microbatch, offload_exposed_time
from ._operators import elementwise, ratio
from ._pipeline import pipeline_bubble, pipeline_comm_per_microbatch, pipeline_send_bytes
from ._recipe import RECIPES
from ._rules import memory_reason, shortfall
from ._training_plan import TrainingPlan, check_training_plan, split_units
from ._transformer import Transformer


class TrainReport(eqx.Module):
    """What one training step costs (per step, per chip where it says so; SI units).

    `step_time == compute_time + tp_comm_time + pp_comm_time + dp_comm_time + ep_comm_time
    + cp_comm_time + bubble_time + optimizer_time + offload_time` (exposed communication and
    offload copies only;
    `optimizer_time` includes the once-per-step quantization of the weights under a
    low-precision recipe). `quantize_time` is the part of `compute_time` spent in the recipe's
    cast / amax / transpose kernels. `mfu` and `hfu` are against the 16-bit peak (as NeMo's
    "model TFLOP/s" are read), so an FP8 run can exceed what a 16-bit one could reach.
    `memory_per_chip ==
    weights_bytes + grads_bytes + optimizer_bytes + activations_bytes` on the busiest (first)
    pipeline stage. `memory_capacity` is where that memory must live (the HBM, or the SRAM of a
    chip without HBM) and `memory_shortfall` = max(memory_per_chip - memory_capacity, 0) how far
    it misses. `host_bytes` are the activations offloaded to host memory (not in
    `memory_per_chip`; over `System.host_memory` they are flagged). `fits` is False with
    `reason` (`dse.hardware.Reason` flags) when the plan is infeasible; the times are still
    computed so that a sweep can see how far off it is.
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
    # The system's, broadcast against the plans: a batch of plans on one chip has one capacity.
    memory_capacity: Float[Array, "*#batch"]
    memory_shortfall: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Int[Array, "*batch"]
    compute_time: Float[Array, "*batch"]
    tp_comm_time: Float[Array, "*batch"]
    pp_comm_time: Float[Array, "*batch"]
    dp_comm_time: Float[Array, "*batch"]
    ep_comm_time: Float[Array, "*batch"]
    cp_comm_time: Float[Array, "*batch"]
    bubble_time: Float[Array, "*batch"]
    optimizer_time: Float[Array, "*batch"]
    quantize_time: Float[Array, "*batch"]
    model_flops: Float[Array, "*batch"]
    hardware_flops: Float[Array, "*batch"]
    offload_time: Float[Array, "*batch"]
    host_bytes: Float[Array, "*batch"]

    @property
    def breakdown(self) -> dict[str, Float[Array, "*batch"]]:
        """The step time by where it went (sums to `step_time`)."""
        return {"compute": self.compute_time, "tp_comm": self.tp_comm_time,
                "pp_comm": self.pp_comm_time, "dp_comm": self.dp_comm_time,
                "ep_comm": self.ep_comm_time, "cp_comm": self.cp_comm_time,
                "bubble": self.bubble_time,
                "optimizer": self.optimizer_time, "offload": self.offload_time}


# HBM passes of the softmax cross-entropy per logit, as frameworks run it in fp32 (Megatron-LM
# `_VocabParallelCrossEntropy`, PyTorch `cross_entropy` under autocast, which upcasts the
# logits): forward reads the 16-bit logit (2 B) and writes it as fp32 (4), reads it for the max
# (4), reads it and writes exp(x - max) (4 + 4), reads that for the sum (4): 22 B; backward
# reads exp (4) and writes softmax - one-hot in fp32 (4), then casts it to 16 bits (4 + 2):
# 14 B. In units of 2-byte elements: 11 forward, 7 backward.
XENT_FWD_ELEMENTS, XENT_BWD_ELEMENTS = 11.0, 7.0


def _output_layer_time(model, plan, system, smooth, calibration):
    """Logits GEMM (forward, dX, dW) and cross-entropy of one micro-batch on the last stage, s.

    The output layer runs on the last stage, which paces the pipeline; the embedding lookup is
    negligible. **Returns:** (time, the three GEMM costs, the cross-entropy's HBM bytes).
    """
    tokens = plan.microbatch_size * model.seq_len / plan.cp
    logits = gemm_fwd_bwd(system.chip, tokens, model.vocab / plan.tp, model.hidden, smooth,
                          calibration)
    kw = dict(smooth=smooth, calibration=calibration)
    elements = tokens * model.vocab / plan.tp
    xent_f = elementwise(system.chip, elements, flops_per_element=SOFTMAX_FLOPS,
                         reads=XENT_FWD_ELEMENTS - 1.0, writes=1.0, **kw)
    xent_b = elementwise(system.chip, elements, flops_per_element=2.0,
                         reads=XENT_BWD_ELEMENTS - 1.0, writes=1.0, **kw)
    time = logits[0].time + logits[1].time + logits[2].time + xent_f.time + xent_b.time
    return time, logits, xent_f.hbm_bytes + xent_b.hbm_bytes


def precision_unsupported(plan: TrainingPlan, chip) -> Bool[Array, "*batch"]:
    """True where the chip cannot run the plan's recipe: no engine of its format (rate 0), or a
    block-scaled format (MXFP8, NVFP4) without block scaling in the engines. Blockwise FP8 is
    emulated without it (Transformer Engine on Hopper), so only its engine is required."""
    recipe = RECIPES[plan.precision]
    if not recipe.low_precision:
        return jnp.zeros(jnp.shape(chip.mac_units), bool)
    needs_native = recipe.format.block_scaled and plan.precision != "fp8_blockwise"
    missing = chip.rate(recipe.engine) <= 0.0
    return missing | (needs_native and not chip.block_scaling)


def _busiest_stage(model, plan, lc, head_time, eta):
    """(transformer layers, output layers) on the pipeline stage that sets the step's pace.

    By default every stage holds layers / pp and the last adds the output layer, which makes
    it the busiest. With `TrainingPlan.account_embedding_loss` (pp > 1) a stage holds
    u = (layers + 2) / pp units: the last u - 1 layers and the output layer, the middle ones
    (when pp > 2) u layers; the busier of the two sets the pace.
    """
    counted = (plan.account_embedding_loss > 0.5) & (plan.pp > 1.0)
    units = split_units(model, plan) / plan.pp
    layer = lc.time(eta)
    middle = counted & (plan.pp > 2.0) & (layer >= head_time)
    layers = jnp.where(counted, jnp.where(middle, units, units - 1.0), model.layers / plan.pp)
    return layers, jnp.where(middle, 0.0, 1.0)


@evaluates_once
def train_step(model: Transformer, plan: TrainingPlan, system: System, *,
               calibration: Calibration = DEFAULT, smooth: bool = False,
               flash_attention: bool = True) -> TrainReport:
    """Cost of one optimizer step of `model` trained with `plan` on `system`.

    **Arguments:**

    - `model`: the `Transformer`.
    - `plan`: the `TrainingPlan` (parallel degrees, batch, recomputation, sharding).
    - `system`: the `System` (chips and their two network tiers).
    - `calibration`: the models' fitted factors (`dse.models.Calibration`; default `DEFAULT`).
      Pass a calibrated one, or a traced one to differentiate with respect to it.
    - `smooth`: smooth maxima in the operator rooflines (for gradients).
    - `flash_attention`: fused attention that never stores the score matrix (False models the
      Megatron-LM 2021-22 kernels that materialize it).

    A plan given by hand that does not fit the model or the system (tp * pp * dp other than the
    system's chips, tp not dividing the heads, pp not dividing the layers, a batch that does not
    split into micro-batches) is a `ValueError` (`check_training_plan`); traced, it is flagged.

    **Returns:** a `TrainReport` (seconds, tokens/s, fractions of peak, joules, bytes).
    """
    plan_reason = check_training_plan(model, plan, system)
    chip = system.chip
    p, v, s = plan.pp, plan.interleave, model.seq_len
    m = plan.microbatches
    eta = calibration.kernel_fraction
    lc = layer_costs(model, plan, system, calibration=calibration, smooth=smooth,
                     flash_attention=flash_attention)
    out_time, logits, xent_bytes = _output_layer_time(model, plan, system, smooth, calibration)
    layers_per_stage, head = _busiest_stage(model, plan, lc, out_time / eta, eta)

    stage_compute = (layers_per_stage * (lc.fwd + lc.bwd + lc.recompute) + head * out_time) / eta
    stage_tp = layers_per_stage * lc.tp_comm
    stage_ep = layers_per_stage * lc.ep_comm
    stage_cp = layers_per_stage * lc.cp_comm
    stage_pp = pipeline_comm_per_microbatch(model, plan, system, calibration)
    compute_time = m * stage_compute
    tp_time = m * stage_tp
    ep_time = m * stage_ep
    cp_time = m * stage_cp
    pp_time = m * stage_pp
    # Offload copies a micro-batch's compute cannot hide lengthen its pipeline slot too.
    per_layer = activation_bytes_per_layer(model, plan, flash_attention=flash_attention)
    stage_offload = offload_exposed_time(
        plan, system, layers_per_stage, per_layer, layers_per_stage * lc.fwd / eta,
        layers_per_stage * (lc.bwd + lc.recompute) / eta)
    offload_time = m * stage_offload
    bubble_time = pipeline_bubble(plan, stage_compute + stage_tp + stage_ep + stage_cp
                                  + stage_pp + stage_offload)

    params = stage_params(model, plan)
    memory = training_memory(model, plan, flash_attention=flash_attention)

    dp_time = data_parallel_cost(plan, system, params, lc.fwd / eta, lc.bwd / eta,
                                 lc.recompute / eta, layers_per_stage, calibration).exposed

    # Optimizer: Adam over the chip's shard of the parameters, memory bound (reads the master
    # weight, m, v and the gradient; writes the three back and, with an FP32 master, the 16-bit
    # weight copy). Defaults: 16 bytes read, 14 written per parameter.
    master = STATE_BYTES["fp32"] if plan.master_weights == "fp32" else WEIGHT_BYTES
    state = optimizer_bytes(plan) - (master if plan.master_weights == "fp32" else 0.0)
    read = master + state + grad_bytes(plan)
    write = master + state + (WEIGHT_BYTES if plan.master_weights == "fp32" else 0.0)
    opt = elementwise(chip, zero_shard(plan, params, plan.zero_stage > 0.5),
                      flops_per_element=ADAM_FLOPS, bytes_per_element=4.0, reads=read / 4.0,
                      writes=write / 4.0, smooth=smooth, calibration=calibration)
    # A low-precision recipe quantizes the chip's linear weights once per step.
    linear = dataclasses.replace(params, dense=params.dense_linear)
    cast = weight_quantize(model, plan, system, zero_shard(plan, linear, plan.zero_stage > 2.5),
                           smooth=smooth, calibration=calibration)
    optimizer_time = (opt.time + cast.time) / eta

    step_time = (compute_time + tp_time + pp_time + dp_time + ep_time + cp_time + bubble_time
                 + optimizer_time + offload_time)

    chips_used = plan.chips
    global_tokens = plan.global_batch * s
    model_flops = global_tokens * model.flops_per_token(training=True)
    layer_flops = model.layer_forward_flops_per_token()
    # `recompute_moe`: the MoE blocks' forward GEMMs (routed top_k, shared experts, router).
    moe_flops = 2.0 * model.moe_layer_share * model.moe_active_params_per_layer
    recompute_share = jnp.where(
        plan.recompute > 1.5, 1.0,
        jnp.where((plan.recompute > 0.5) & (not flash_attention),
                  model.attention_core_flops_per_token() / layer_flops, 0.0)
        + jnp.where((plan.recompute_moe > 0.5) & (model.experts > 1.0),
                    moe_flops / layer_flops, 0.0))
    hardware_flops = global_tokens * model.hardware_flops_per_token(recompute_share)
    peak = chip.peak_flops
    # `ratio`: chips x peak FLOP/s and a step's FLOP exceed 1.8e19, whose square (in the
    # derivative of a plain division) overflows float32.
    mfu = ratio(ratio(model_flops, chips_used * peak), step_time)
    hfu = ratio(ratio(hardware_flops, chips_used * peak), step_time)

    hbm_bytes = m * (layers_per_stage * lc.hbm_bytes + head * (logits[0].hbm_bytes
                     + logits[1].hbm_bytes + logits[2].hbm_bytes + xent_bytes)) + opt.hbm_bytes \
        + cast.hbm_bytes \
        + 2.0 * m * offload_bytes_per_microbatch(plan, layers_per_stage, per_layer)
    link_bytes = m * (layers_per_stage * lc.comm_bytes + jnp.where(p > 1.0, 2.0 * v, 0.0)
                      * pipeline_send_bytes(model, plan)) \
        + jnp.where(plan.dp * plan.cp > 1.0, 2.0 * grad_bytes(plan) * params.total, 0.0)
    # The recipe's GEMM FLOPs run on its engine (at its energy per MAC); the rest at 16 bits.
    recipe = RECIPES[plan.precision]
    low_flops = m * layers_per_stage * lc.low_precision_flops
    busy_16 = hfu - ratio(ratio(low_flops, peak), step_time)
    energy = step_energy(chip, step_time, chips_used, compute_fraction=busy_16,
                         vector_flops=m * layers_per_stage * lc.vector_flops + opt.flops
                         + cast.flops,
                         hbm_bytes=hbm_bytes, link_bytes=link_bytes,
                         low_precision_flops=low_flops, engine=recipe.engine)

    capacity = chip.memory_capacity
    no_engine = precision_unsupported(plan, chip)
    offloads = plan.activation_offload > 0.0
    no_host_room = offloads & ((system.host_bandwidth <= 0.0)
                               | (memory.host > system.host_memory))
    reason = (plan_reason | memory_reason(chip, memory.total, capacity)
              | jnp.where(no_engine, int(Reason.PRECISION), 0).astype(jnp.int32)
              | jnp.where(no_host_room, int(Reason.HOST_MEMORY), 0).astype(jnp.int32))
    return TrainReport(
        step_time=step_time, tokens_per_s=global_tokens / step_time, mfu=mfu, hfu=hfu,
        energy=energy, memory_per_chip=memory.total, weights_bytes=memory.weights,
        grads_bytes=memory.grads, optimizer_bytes=memory.optimizer,
        activations_bytes=memory.activations, memory_capacity=capacity,
        memory_shortfall=shortfall(memory.total, capacity), fits=reason == 0, reason=reason,
        compute_time=compute_time, tp_comm_time=tp_time, pp_comm_time=pp_time,
        dp_comm_time=dp_time, ep_comm_time=ep_time, cp_comm_time=cp_time, bubble_time=bubble_time,
        optimizer_time=optimizer_time, offload_time=offload_time, host_bytes=memory.host,
        quantize_time=m * layers_per_stage * lc.quantize / eta,
        model_flops=model_flops, hardware_flops=hardware_flops)
