"""The pipeline schedule of a training step: stage-to-stage sends and the pipeline bubble.

1F1B and interleaved 1F1B (Narayanan et al. 2021, "Efficient Large-Scale Language Model Training
on GPU Clusters Using Megatron-LM", SC21, Sec. 2.2 and 4.1).
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from dse.hardware import System

from ._calibration import Calibration
from ._collectives import all_gather, send_recv
from ._memory import ACT_BYTES
from ._training_plan import TrainingPlan
from ._transformer import Transformer


def pipeline_send_bytes(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """Bytes one chip sends per stage boundary per micro-batch: with the scatter/gather
    optimization 1/t of the activation (SC21 Sec. 4.1); a CP rank sends its s / cp tokens."""
    return ACT_BYTES * plan.microbatch_size * model.seq_len / plan.cp * model.hidden / plan.tp


def pipeline_comm_per_microbatch(model: Transformer, plan: TrainingPlan, system: System,
                                 calibration: Calibration) -> Float[Array, "*batch"]:
    """Stage-to-stage communication of one micro-batch on one chip, s.

    Each micro-batch crosses each of a chip's v virtual stage boundaries forward and backward;
    the receiving TP group all-gathers the full activation over the scale-up tier.
    """
    t, p, v = plan.tp, plan.pp, plan.interleave
    activation = ACT_BYTES * plan.microbatch_size * model.seq_len / plan.cp * model.hidden
    p2p = send_recv(system, pipeline_send_bytes(model, plan), 2.0, stride=t * plan.cp * plan.dp,
                    calibration=calibration)
    regather = all_gather(system, activation, t, calibration=calibration)
    return jnp.where(p > 1.0, 2.0 * v * (p2p.time + regather.time), 0.0)


def pipeline_bubble(plan: TrainingPlan, microbatch_slot) -> Float[Array, "*batch"]:
    """Idle time of the 1F1B schedule: (p - 1) / v micro-batch slots (SC21 Sec. 2.2), s.

    **Arguments:**

    - `plan`: the `TrainingPlan` (its `pp` and `interleave`).
    - `microbatch_slot`: time of one micro-batch's forward + backward on one stage, with its
      exposed communication, s.
    """
    return (plan.pp - 1.0) / plan.interleave * microbatch_slot
