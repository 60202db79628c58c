"""`TrainingPlan`: how one training step is mapped onto the chips (parallel degrees, batch,
recomputation, sharding)."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import numpy as np
from jaxtyping import Array, Float

from dse.hardware._validate import as_float_array, check_choice, check_range

from ._recipe import RECIPE_NAMES, STATE_PRECISIONS

# Recomputation modes (Korthikanti et al. 2022, Sec. 5).
RECOMPUTE_NONE = 0.0
RECOMPUTE_SELECTIVE = 1.0  # recompute the attention core (QK^T, softmax, dropout, AV) only
RECOMPUTE_FULL = 2.0  # store each layer's input, recompute the whole layer in backward


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
    - `precision` (static): the GEMM recipe (`dse.models.RECIPES`): "bf16", "fp8_delayed",
      "fp8_current", "fp8_blockwise", "mxfp8" or "nvfp4".
    - `master_weights` (static): "fp32" (a separate FP32 copy in the optimizer, 4 bytes per
      parameter) or "bf16" (the 16-bit parameters are the masters: no copy).
    - `optimizer_state` (static): precision of Adam's two moments, "fp32" (8 bytes per
      parameter) or "bf16" (4).
    - `gradients` (static): precision of the accumulated gradients and their reduction, "fp32"
      (Megatron-LM's main_grad, 4 bytes) or "bf16" (2).
    - `quantized_params` (static): under a low-precision recipe, the linear layers' weights are
      kept only in the recipe's format (both orientations; Megatron-Core's `--fp8-param-gather`,
      Transformer Engine's `fp8_model_params`): no 16-bit copy, and the data-parallel gather
      moves them at that width. False: 16-bit weights plus cached quantized copies.
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
    # Choices take any str: `__check_init__` names the field and the allowed values (`Recipe`,
    # `StatePrecision`) in a ValueError.
    precision: str = eqx.field(static=True, default="bf16")
    master_weights: str = eqx.field(static=True, default="fp32")
    optimizer_state: str = eqx.field(static=True, default="fp32")
    gradients: str = eqx.field(static=True, default="fp32")
    quantized_params: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_choice("TrainingPlan", "precision", self.precision, RECIPE_NAMES)
        for field in ("master_weights", "optimizer_state", "gradients"):
            check_choice("TrainingPlan", field, getattr(self, field), STATE_PRECISIONS)
        if not isinstance(self.quantized_params, bool):
            raise ValueError(f"TrainingPlan.quantized_params must be True or False; got "
                             f"{self.quantized_params!r}")
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
