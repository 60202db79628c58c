"""`TrainingPlan`: how one training step is mapped onto the chips (parallel degrees, batch,
recomputation, sharding)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dse.hardware._validate import as_float_array, check_range

# Recomputation modes (Korthikanti et al. 2022, Sec. 5).
RECOMPUTE_NONE = 0.0
RECOMPUTE_SELECTIVE = 1.0  # recompute the attention core (QK^T, softmax, dropout, AV) only
RECOMPUTE_FULL = 2.0  # store each layer's input, recompute the whole layer in backward


class TrainingPlan(eqx.Module):
    """How one training step is mapped onto the chips (all leaves floats so plans vmap).

    **Fields:**

    - `tp`, `pp`, `dp`, `ep`: tensor-, pipeline-, data- and expert-parallel degrees
      (experts are sharded `ep` ways inside the data-parallel group).
    - `cp`: context-parallel degree: each sequence is split over `cp` chips (ring attention,
      Megatron-Core CP with load-balanced causal chunks); chips used = tp * cp * pp * dp.
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
    cp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    microbatch_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    global_batch: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    interleave: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    sequence_parallel: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=0.0)
    recompute: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    zero_stage: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    dp_overlap: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)

    def __post_init__(self):
        # A CP degree left scalar in a batch of plans takes the batch's shape, so that batches
        # built without naming `cp` (as before context parallelism existed) still vmap.
        if np.ndim(self.cp) == 0 and np.ndim(self.tp) > 0:
            object.__setattr__(self, "cp", jnp.broadcast_to(self.cp, jnp.shape(self.tp)))

    def __check_init__(self):
        for field in ("tp", "pp", "dp", "ep", "cp", "microbatch_size", "global_batch",
                      "interleave"):
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
        """Chips the plan occupies, tp * cp * pp * dp."""
        return self.tp * self.cp * self.pp * self.dp

    @property
    def microbatches(self) -> Float[Array, "*batch"]:
        """Micro-batches per replica per step, global_batch / (dp * microbatch_size)."""
        return self.global_batch / (self.dp * self.microbatch_size)

    def replace(self, **changes) -> TrainingPlan:
        """A copy with some fields changed (validated like a new plan)."""
        return dataclasses.replace(self, **changes)
