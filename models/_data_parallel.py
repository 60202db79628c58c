"""Data-parallel and sharded (ZeRO / FSDP) communication of a training step, and what overlap
hides of it.

As the frameworks run them (Rajbhandari et al. 2020, "ZeRO", SC20, Sec. 5 and 7; PyTorch FSDP
`ShardingStrategy` docs; Megatron-LM distributed optimizer):

- ZeRO-0 (DDP): one all-reduce of the gradients per step, after the last micro-batch's
  backward, bucketed so that it overlaps that backward when the plan overlaps (`dp_overlap`).
- ZeRO-1/2 and Megatron's distributed optimizer: a reduce-scatter of the gradients (overlapped
  like the all-reduce) and, after the optimizer step, an all-gather of the updated 16-bit
  weights, which overlaps the next step's first forward pass when the plan overlaps
  (`--overlap-param-gather`) and is exposed otherwise.
- ZeRO-3 / FSDP FULL_SHARD: every micro-batch, each layer's weights are all-gathered before its
  forward and again before its backward (FSDP reshards after forward; FSDP1 docstring:
  "unshards (via all-gather) before the forward, reshards after the forward, unshards before the
  backward computation"), its gradients reduce-scattered after its backward. The recomputed
  forward of full activation recomputation runs inside the layer's backward on the weights
  gathered for it. Prefetching overlaps layer i+1's gather (and layer i+1's reduce-scatter in
  backward) with layer i's compute, so per layer only max(0, communication - compute) shows,
  plus the first gather of each pass and the last reduce-scatter, which have nothing to hide
  behind (PyTorch FSDP notes: "The 1st all-gather will not be able to overlap with anything").

What overlap hides still costs: the communication kernels run on the same chip as the compute
(NCCL's rings hold SMs: an all-gather beside a GEMM launched 24 blocks on an H100's 132 SMs in
NVIDIA developer forum thread 337991), so the compute they overlap runs slower. Lee et al. 2025
("Characterizing Compute-Communication Overlap in GPU-Accelerated Distributed Deep Learning",
arXiv 2507.03114, abstract) measured the computation 18.9% slower on average (40.0% at most)
while communication ran beside it, on A100, H100, MI250 and MI210
(`Calibration.overlap_slowdown`): each hidden second adds slowdown / (1 + slowdown) s.

Expert parameters reduce over the DP / EP replicas of each expert. Gradients reduce at the
plan's gradient precision (`grad_bytes`); a low-precision recipe with `quantized_params` gathers
its linear weights at the recipe's width (`linear_weight_bytes`). Collectives are hierarchical
over the scale-up and scale-out tiers (`dse.models.all_gather` and friends), or a flat ring
where the plan says so (`TrainingPlan.dp_hierarchical`).
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from dse.hardware import System

from ._calibration import Calibration
from ._collectives import reduce_scatter
from ._memory import WEIGHT_BYTES, StageParams, grad_bytes, linear_weight_bytes
from ._operators import stacked_calls
from ._training_plan import TrainingPlan


class DataParallelCost(eqx.Module):
    """Data-parallel communication of one step on one chip (SI units).

    **Fields:** `total` (all of it, before any overlap, s), `exposed` (what overlap leaves on
    the step's critical path, with the slowdown of the compute it overlaps, s).
    """

    total: Float[Array, "*batch"]
    exposed: Float[Array, "*batch"]


def _group_times(system, calibration, plan, messages):
    """Reduce-scatter times, s, of each (dense_bytes, expert_bytes) pair in `messages`: one
    collective over the dense parameters' DP group plus one over the experts' DP group
    (`dense_bytes`, `expert_bytes`: what each moves per chip).

    Dense gradients reduce over the DP x CP ranks that hold the same weights (the CP ranks of a
    replica, tp apart, then the replicas); experts over their EDP replicas, etp * ep apart.
    An all-gather costs what a reduce-scatter of the same buffer does and an all-reduce twice
    that (both halves), so the callers scale these; the doubling counts the collective's fixed
    start-up twice where `dse.models.all_reduce` pays it once (~7 us a step). All the pairs are
    one `vmap`ped collective (traced and compiled once, not once per collective).
    """
    kw = dict(calibration=calibration, hierarchical=plan.dp_hierarchical)
    groups = ((plan.dp * plan.cp, plan.tp), (plan.expert_dp, plan.expert_tp * plan.ep))
    rows = [(n, g, stride) for pair in messages for n, (g, stride) in zip(pair, groups,
                                                                           strict=True)]
    times = stacked_calls(lambda n, g, stride: reduce_scatter(system, n, g, stride=stride,
                                                              **kw).time, rows)
    return [times[2 * i] + times[2 * i + 1] for i in range(len(messages))]


def _overlapped(comm, window, calibration, pieces):
    """What of `comm` shows when it overlaps `window` of compute, split in `pieces` buckets:
    at least the last bucket, which starts when the compute ends."""
    hidden = calibration.dp_overlap_fraction * window
    return jnp.maximum(comm - hidden, comm / jnp.maximum(pieces, 1.0))


def data_parallel_cost(plan: TrainingPlan, system: System, params: StageParams,
                       layer_fwd, layer_bwd, layer_recompute, layers_per_stage,
                       calibration: Calibration) -> DataParallelCost:
    """DP / ZeRO / FSDP communication of one step on one chip, and the part left exposed.

    **Arguments:**

    - `plan`: the `TrainingPlan` (its `dp`, `ep`, `zero_stage`, `dp_overlap`, micro-batches).
    - `system`: the `System`.
    - `params`: the parameters a chip of the first stage holds (`stage_params`).
    - `layer_fwd`, `layer_bwd`, `layer_recompute`: one layer's forward, backward and
      recomputed compute for one micro-batch, s (the windows communication hides behind).
    - `layers_per_stage`: layers on one pipeline stage.
    - `calibration`: the fitted factors (link efficiencies, `dp_overlap_fraction`,
      `overlap_slowdown`).

    **Returns:** a `DataParallelCost`.
    """
    m, layers = plan.microbatches, jnp.maximum(layers_per_stage, 1.0)
    overlap = plan.dp_overlap > 0.5
    g = grad_bytes(plan)
    _, gathered = linear_weight_bytes(plan)
    # A parameter gather moves the norms, router and embedding in 16 bits and the linear
    # weights at `gathered` bytes (the recipe's width with `quantized_params`).
    dense_gather = (WEIGHT_BYTES * (params.dense - params.dense_linear)
                    + gathered * params.dense_linear)
    expert_gather = gathered * params.expert

    # ZeRO-0 / 1 / 2 (once per step): all-reduce, or reduce-scatter and all-gather; ZeRO-3 /
    # FSDP (per layer, per micro-batch): all-gather of the layer's weights, reduce-scatter of
    # its gradients in 16 bits (FSDP mixed precision reduces in the parameters' dtype).
    linear_layer = params.dense_linear / layers
    red_sc, gather, ag, rs = _group_times(system, calibration, plan, [
        (g * params.dense, g * params.expert),
        (dense_gather, expert_gather),
        (WEIGHT_BYTES * (params.dense_layer - linear_layer) + gathered * linear_layer,
         gathered * params.expert_layer),
        (WEIGHT_BYTES * params.dense_layer, WEIGHT_BYTES * params.expert_layer)])
    all_red = 2.0 * red_sc
    reduction = jnp.where(plan.zero_stage > 0.5, red_sc, all_red)
    param_gather = jnp.where(plan.zero_stage > 0.5, gather, 0.0)
    red_exposed = jnp.where(overlap, _overlapped(reduction, layers * layer_bwd, calibration,
                                                 layers), reduction)
    gather_exposed = jnp.where(overlap, _overlapped(param_gather, layers * layer_fwd,
                                                    calibration, layers), param_gather)
    low_total = reduction + param_gather
    low_exposed = red_exposed + gather_exposed

    # ZeRO-3 / FSDP: the first gather of each pass and the last reduce-scatter show.
    ag_bwd = ag * (1.0 + jnp.where(plan.recompute > 1.5, plan.zero3_regather, 0.0))
    hide = calibration.dp_overlap_fraction
    fwd_shown = ag + (layers - 1.0) * jnp.maximum(ag - hide * layer_fwd, 0.0)
    bwd_shown = ag_bwd + rs + (layers - 1.0) * jnp.maximum(
        ag_bwd + rs - hide * (layer_bwd + layer_recompute), 0.0)
    z3_total = m * layers * (ag + ag_bwd + rs)
    z3_exposed = jnp.where(overlap, m * (fwd_shown + bwd_shown), z3_total)

    z3 = plan.zero_stage > 2.5
    total = jnp.where(z3, z3_total, low_total)
    exposed = jnp.where(z3, z3_exposed, low_exposed)
    # Hidden is not free: while the communication kernels run beside the compute they hold SMs
    # and HBM bandwidth, and the compute kernels take (1 + slowdown) times as long. In a hidden
    # second the compute does 1 / (1 + slowdown) of a second's work, so the step grows by
    # slowdown / (1 + slowdown) of every hidden second (0 where nothing hides: exposed == total).
    slow = calibration.overlap_slowdown
    exposed = exposed + slow / (1.0 + slow) * (total - exposed)
    single = plan.dp * plan.cp <= 1.0
    return DataParallelCost(total=jnp.where(single, 0.0, total),
                            exposed=jnp.where(single, 0.0, exposed))
