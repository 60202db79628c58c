"""Data-parallel and sharded (ZeRO / FSDP) communication of a training step, and its overlap.

ZeRO-0: one all-reduce of the gradients; ZeRO-1/2 (and Megatron's distributed optimizer): a
reduce-scatter of the gradients and an all-gather of the updated 16-bit weights; ZeRO-3 / FSDP:
the weights all-gathered for forward and backward of every micro-batch and the gradients
reduce-scattered (Rajbhandari et al. 2020, "ZeRO", SC20, Sec. 5 and 7). Expert parameters
reduce over the DP / EP replicas of each expert.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from dse.hardware import System

from ._calibration import Calibration
from ._collectives import all_gather, all_reduce, reduce_scatter
from ._memory import GRAD_BYTES, WEIGHT_BYTES, StageParams
from ._training_plan import TrainingPlan


def _dp_collectives(system, plan, calibration, n_params, group, stride):
    """Time of the DP communication of `n_params` parameters over `group` chips, s."""
    link = dict(stride=stride, calibration=calibration)
    ar = all_reduce(system, GRAD_BYTES * n_params, group, **link).time
    rs = reduce_scatter(system, GRAD_BYTES * n_params, group, **link).time
    ag = all_gather(system, WEIGHT_BYTES * n_params, group, **link).time
    zero = plan.zero_stage
    z3 = plan.microbatches * (2.0 * ag + rs)
    return jnp.where(zero > 2.5, z3, jnp.where(zero > 0.5, rs + ag, ar))


def data_parallel_comm(plan: TrainingPlan, system: System, params: StageParams,
                       calibration: Calibration) -> Float[Array, "*batch"]:
    """All DP / ZeRO communication of one step on one chip, before any overlap, s.

    Gradients reduce over the DP x CP ranks that hold the same weights (the CP ranks of a
    replica, tp apart, then the replicas), experts over their EDP replicas, etp * ep apart."""
    t = plan.tp
    group = plan.dp * plan.cp
    return (_dp_collectives(system, plan, calibration, params.dense, group, t)
            + _dp_collectives(system, plan, calibration, params.expert, plan.expert_dp,
                              plan.expert_tp * plan.ep))


def exposed_data_parallel(plan: TrainingPlan, dp_total, window, layers_per_stage,
                          calibration: Calibration) -> Float[Array, "*batch"]:
    """The DP communication left exposed after overlap, s.

    Overlap hides the reduction behind the backward pass (bucketed all-reduce); ZeRO-3
    prefetches each layer's gather behind the compute of the whole step. Only
    `calibration.dp_overlap_fraction` of the `window` hides it, and one layer's share stays
    exposed either way: the last bucket reduced after the backward pass ends (and the first
    gather before the forward pass starts).

    **Arguments:**

    - `plan`: the `TrainingPlan` (its `dp_overlap` and `dp`).
    - `dp_total`: `data_parallel_comm`, s.
    - `window`: compute time the communication can hide behind, s.
    - `layers_per_stage`: layers on one pipeline stage.
    - `calibration`: the fitted factors.
    """
    window = calibration.dp_overlap_fraction * window
    unhidden = dp_total / jnp.maximum(layers_per_stage, 1.0)
    exposed = jnp.where(plan.dp_overlap > 0.5, jnp.maximum(dp_total - window, unhidden),
                        dp_total)
    return jnp.where(plan.dp * plan.cp > 1.0, exposed, 0.0)
