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
    - `etp`: expert tensor-parallel degree (Megatron-Core ETP): the MoE layers are mapped
      ETP x EP x EDP over the same tp * cp * dp chips as the attention's TP x CP x DP; 0 (the
      default) means etp = tp. `ep * etp` must divide tp * cp * dp.
    - `microbatch_size`: sequences per micro-batch.
    - `global_batch`: sequences per optimizer step (micro-batches per replica =
      global_batch / (dp * microbatch_size)).
    - `interleave`: virtual pipeline stages per chip (1 = plain 1F1B).
    - `sequence_parallel`: 1 to shard norms/dropouts along the sequence over the TP group.
    - `recompute`: `RECOMPUTE_NONE` / `RECOMPUTE_SELECTIVE` / `RECOMPUTE_FULL` (0 / 1 / 2).
    - `zero_stage`: 0 none, 1 optimizer state, 2 + gradients, 3 + weights (FSDP) sharded over DP.
    - `dp_overlap`: 1 to overlap the data-parallel communication with compute (bucketed
      gradient reduction behind the backward pass, the parameter all-gather of ZeRO-1/2
      behind the next forward, ZeRO-3's per-layer prefetch).
    - `dp_hierarchical`: 1 for data-parallel collectives reduced in the scale-up domain first,
      each chip driving its own scale-out port with its share (NCCL's rail-aligned rings,
      Megatron-LM, PyTorch FSDP); 0 for a flat ring in which every chip's whole share crosses
      the scale-out network (DeepSpeed ZeRO-3 at scale in 2021: Narayanan et al. 2021, Table 2
      implies a per-GPU gather rate at its InfiniBand port's rate).
    - `zero3_regather`: 1 when ZeRO-3 gathers a layer's weights again for its recomputed
      forward (DeepSpeed's per-module fetch and release hooks fire for the recomputation too), 0
      when the backward's gather serves both (PyTorch FSDP unshards once before a unit's
      backward, which runs the recomputation inside it).
    """

    tp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    pp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    dp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    ep: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    cp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    etp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    microbatch_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    global_batch: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    interleave: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    sequence_parallel: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=0.0)
    recompute: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    zero_stage: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    dp_overlap: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    dp_hierarchical: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    zero3_regather: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)

    def __post_init__(self):
        # A field given as one number beside batched ones applies to every plan of the batch:
        # broadcast it, so that a batch of plans always vmaps along one leading axis.
        names = [f.name for f in dataclasses.fields(self)]
        shape = np.broadcast_shapes(*(np.shape(getattr(self, n)) for n in names))
        if shape:
            for n in names:
                value = getattr(self, n)
                if np.shape(value) != shape:
                    setattr(self, n, jnp.broadcast_to(value, shape))

    def __post_init__(self):
        # A CP degree left scalar in a batch of plans takes the batch's shape, so that batches
        # built without naming `cp` (as before context parallelism existed) still vmap.
        for name in ("cp", "etp"):
            if np.ndim(getattr(self, name)) == 0 and np.ndim(self.tp) > 0:
                object.__setattr__(self, name,
                                   jnp.broadcast_to(getattr(self, name), jnp.shape(self.tp)))

    def __check_init__(self):
        for field in ("tp", "pp", "dp", "ep", "cp", "microbatch_size", "global_batch",
                      "interleave"):
            check_range("TrainingPlan", field, getattr(self, field), lower=1.0,
                        lower_inclusive=True)
        for field, hi in (("sequence_parallel", 1.0), ("recompute", 2.0), ("zero_stage", 3.0),
                          ("dp_overlap", 1.0), ("dp_hierarchical", 1.0),
                          ("zero3_regather", 1.0)):
            check_range("TrainingPlan", field, getattr(self, field), lower=0.0, upper=hi,
                        lower_inclusive=True)
        check_range("TrainingPlan", "etp", self.etp, lower=0.0, lower_inclusive=True)
        leaves = (self.ep, self.dp, self.tp, self.cp, self.etp)
        if not any(isinstance(x, jax.core.Tracer) for x in leaves):
            ep, dp, tp, cp, etp = (np.asarray(x) for x in leaves)
            expert_tp = np.where(etp > 0.0, etp, tp)
            if bool(np.any(ep * expert_tp > tp * cp * dp)):
                raise ValueError(
                    f"TrainingPlan.ep * etp must be <= tp * cp * dp (the chips of a stage); got "
                    f"ep {ep}, etp {expert_tp}, tp {tp}, cp {cp}, dp {dp}")

    @property
    def chips(self) -> Float[Array, "*batch"]:
        """Chips the plan occupies, tp * cp * pp * dp."""
        return self.tp * self.cp * self.pp * self.dp

    @property
    def expert_tp(self) -> Float[Array, "*batch"]:
        """Expert tensor-parallel degree: `etp`, or `tp` when it is 0."""
        return jnp.where(self.etp > 0.0, self.etp, self.tp)

    @property
    def expert_dp(self) -> Float[Array, "*batch"]:
        """Replicas of each expert (EDP), tp * cp * dp / (ep * etp)."""
        return self.tp * self.cp * self.dp / (self.ep * self.expert_tp)

    @property
    def microbatches(self) -> Float[Array, "*batch"]:
        """Micro-batches per replica per step, global_batch / (dp * microbatch_size)."""
        return self.global_batch / (self.dp * self.microbatch_size)

    def replace(self, **changes) -> TrainingPlan:
        """A copy with some fields changed (validated like a new plan)."""
        return dataclasses.replace(self, **changes)
