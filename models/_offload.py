"""Activation offloading: a plan's stored activations sent to host memory after their forward
and fetched back before their backward (`TrainingPlan.activation_offload`), over the chip's
host link (`System.host_bandwidth`: PCIe, or NVLink-C2C on Grace systems).

The copies run on the chip's copy engines beside compute: a layer's activations leave while the
next layers compute their forward and return while the later layers compute their backward
(Megatron-Core's CPU offloading, `cpu_offloading_num_layers`; PyTorch's saved-tensor hooks).
What a micro-batch's copies take beyond its forward (outbound) and its backward (inbound) is
exposed; the rest is hidden.
"""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from dse.hardware import System

from ._operators import ratio
from ._training_plan import TrainingPlan


def offload_bytes_per_microbatch(plan: TrainingPlan, layers_per_stage: ArrayLike,
                                 per_layer: ArrayLike) -> Float[Array, "*batch"]:
    """Bytes each micro-batch sends to host memory (and fetches back): the offloaded share of
    the stage's layers times one layer's stored activations."""
    return plan.activation_offload * layers_per_stage * per_layer


def offload_exposed_time(plan: TrainingPlan, system: System, layers_per_stage: ArrayLike,
                         per_layer: ArrayLike, forward_time: ArrayLike,
                         backward_time: ArrayLike) -> Float[Array, "*batch"]:
    """Exposed seconds of one micro-batch's offload copies on one chip.

    **Arguments:** `per_layer`: bytes one layer stores for one micro-batch;
    `forward_time` / `backward_time`: the stage's compute for one micro-batch, s (the backward
    with its recomputation), which the outbound and the inbound copies hide behind.

    **Returns:** max(out - forward, 0) + max(in - backward, 0), s. Without a host link
    (`host_bandwidth` 0) the copies take bytes / (1 B/s): finite, and flagged by `train_step`.
    """
    copy = ratio(offload_bytes_per_microbatch(plan, layers_per_stage, per_layer),
                 jnp.maximum(system.host_bandwidth, 1.0))
    return jnp.maximum(copy - forward_time, 0.0) + jnp.maximum(copy - backward_time, 0.0)
