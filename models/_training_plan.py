"""`TrainingPlan`: how one training step is mapped onto the chips (parallel degrees, batch,
recomputation, sharding)."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from dse.hardware import Reason, System
from dse.hardware._once import once_per_evaluation
from dse.hardware._validate import (
    as_float_array,
    check_choice,
    check_integer,
    check_range,
    format_value,
)

from ._recipe import RECIPE_NAMES, STATE_PRECISIONS
from ._rules import Rule, all_concretely, check_rules, divides, is_concrete, reason_of
from ._transformer import Transformer

# Recomputation modes (Korthikanti et al. 2022, Sec. 5).
RECOMPUTE_NONE = 0.0
RECOMPUTE_SELECTIVE = 1.0  # recompute the attention core (QK^T, softmax, dropout, AV) only
RECOMPUTE_FULL = 2.0  # store each layer's input, recompute the whole layer in backward

# Context-parallel communication schemes: Megatron-Core's `cp_comm_type` (TransformerConfig,
# megatron/core/transformer/transformer_config.py @d98e8a64: "p2p", "all_gather", "a2a").
CP_P2P = 0.0  # KV chunks passed around a ring, each step overlapped with attention
CP_ALL_GATHER = 1.0  # the sequence's K and V gathered before attention, not overlapped
CP_A2A = 2.0  # DeepSpeed-Ulysses: all-to-alls from sequence- to head-sharded Q, K, V and back
# Megatron-Core's "a2a+p2p" (its docstring: "A hierarchical implementation of context
# parallelism to attention. It uses A2A communications in low-level CP groups (e.g., via
# NVLink), and P2P communications in high-level CP groups (e.g., via IBLink)"), with the group
# sizes of `--hierarchical-context-parallel-sizes`: Ulysses over `TrainingPlan.cp_a2a` adjacent
# CP ranks, the ring over the cp / cp_a2a groups (Transformer Engine's AttnFuncWithCPAndKVP2P
# with a [cp_group_a2a, cp_group_p2p] pair).
CP_A2A_P2P = 3.0
CP_SCHEMES = (CP_P2P, CP_ALL_GATHER, CP_A2A, CP_A2A_P2P)


class TrainingPlan(eqx.Module):
    """How one training step is mapped onto the chips (all leaves floats so plans vmap).

    **Fields:**

    - `tp`, `pp`, `dp`, `ep`: tensor-, pipeline-, data- and expert-parallel degrees
      (experts are sharded `ep` ways inside the data-parallel group).
    - `cp`: context-parallel degree: each sequence is split over `cp` chips (Megatron-Core CP
      with load-balanced causal chunks); chips used = tp * cp * pp * dp.
    - `cp_comm`: how the CP group exchanges the sequence (Megatron-Core's `cp_comm_type`):
      `CP_P2P` (0, the default: ring attention, each rank's K and V chunk passed around the
      ring in cp - 1 point-to-point steps, each hidden behind the attention of the chunk
      already held), `CP_ALL_GATHER` (1: K and V all-gathered before each attention, again
      before its backward, dK and dV reduce-scattered after; nothing overlapped, as Llama 3
      runs it, Dubey et al. 2024, Sec. 3.3.2) or `CP_A2A` (2: DeepSpeed-Ulysses, Jacobs et al.
      2023: all-to-alls turn the sequence-sharded Q, K and V into head-sharded ones over the
      whole sequence and the attention output back, and their gradients the reverse way in
      backward; not overlapped; the TP rank's query and KV heads must each split cp ways), and
      `CP_A2A_P2P` (3: Megatron-Core's hierarchical "a2a+p2p": Ulysses all-to-alls inside
      groups of `cp_a2a` adjacent CP ranks, then the ring, overlapped as above, over the
      cp / cp_a2a groups; the TP rank's query and KV heads must each split cp_a2a ways).
    - `cp_a2a`: the all-to-all group size of `CP_A2A_P2P` (Megatron-Core's
      `hierarchical_context_parallel_sizes[0]`): adjacent CP ranks, tp apart, that exchange
      heads; a divisor of cp (1, the default, is the plain ring; cp is Ulysses). Under any
      other scheme it must be 1.
    - `etp`: expert tensor-parallel degree (Megatron-Core ETP): the MoE layers are mapped
      ETP x EP x EDP over the same tp * cp * dp chips as the attention's TP x CP x DP; 0 (the
      default) means etp = tp. `ep * etp` must divide tp * cp * dp.
    - `microbatch_size`: sequences per micro-batch.
    - `global_batch`: sequences per optimizer step (micro-batches per replica =
      global_batch / (dp * microbatch_size)).
    - `interleave`: virtual pipeline stages per chip (1 = plain 1F1B).
    - `sequence_parallel`: 1 to shard norms/dropouts along the sequence over the TP group.
    - `recompute`: `RECOMPUTE_NONE` / `RECOMPUTE_SELECTIVE` / `RECOMPUTE_FULL` (0 / 1 / 2).
    - `recompute_moe`: 1 to recompute each MoE block (router, dispatch, experts, combine) in
      the backward pass instead of storing its activations (Megatron-Core's
      `--recompute-modules moe`): the block keeps only its input, and runs its forward again,
      all-to-alls included. Megatron-Core refuses it beside `ep_overlap`, and so does a plan
      given by hand. Under full recomputation it changes nothing.
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
    - `tp_overlap`: 1 to overlap the tensor-parallel collectives with the TP-sharded GEMMs
      they feed or drain (Transformer Engine userbuffers, Megatron-Core `--tp-comm-overlap`:
      on whenever TP > 1 in Megatron-Bridge's performance recipes, per model in NeMo 24.07's);
      it needs sequence parallelism (without it nothing is overlapped). 0 (the default)
      exposes them, as Megatron-LM 2021-22 did.
    - `ep_hierarchical`: 1 when the MoE dispatch sends each token over the scale-out network
      once per destination scale-up domain and forwards it to that domain's experts over the
      scale-up links (DeepEP's normal kernels, Megatron-Core's `--moe-enable-deepep`; the
      scheme of DeepSeek-V3's report, arXiv 2412.19437, Sec. 3.2.2); 0 (the default) for a
      plain all-to-all, one copy per routed expert on whichever tier it crosses.
    - `ep_overlap`: 1 for Megatron-Core's combined 1F1B schedule (`--overlap-moe-expert-
      parallel-comm`, with `--delay-wgrad-compute`): the forward of one micro-batch runs beside
      the backward of another, layer by layer, so each MoE all-to-all of one hides behind the
      other's attention or expert compute (`dse.models._layer._combined_1f1b_ep_comm`). Only
      the 1F1B steady state is merged: the warm-up forwards and cool-down backwards still
      expose theirs. Megatron-Core refuses it under full recomputation or `recompute_moe`, and
      so does a plan given by hand. 0 (the default) exposes every all-to-all.
    - `account_embedding_loss`: 1 when the pipeline split counts the embedding and the loss
      (output layer) as one layer each, Megatron-Core's `--account-for-embedding-in-pipeline-
      split` and `--account-for-loss-in-pipeline-split`: pp (and pp x interleave) then divide
      layers + 2, the first stage holds one layer fewer beside the embedding and the last one
      fewer beside the output layer (how Qwen3-235B's 94 layers or Llama 3.1 405B's 126 run
      over PP 8). 0 (the default): pp divides the layers and the last stage adds the output
      layer. Only with pipeline parallelism (pp > 1).
    - `activation_offload`: share of each chip's layers whose stored activations go to host
      memory after their forward and come back before their backward, over
      `System.host_bandwidth`, overlapped with compute (Megatron-Core's
      `cpu_offloading_num_layers` / the layers of a stage); 0 (the default) keeps every layer's
      activations in HBM. Continuous in [0, 1]. One layer's worth stays in HBM as the copies'
      buffer, so HBM use only falls once more than one layer is offloaded (its derivative in
      the share is 0 at 0). Megatron-Core runs it only without pipeline parallelism and
      recomputation; the model prices any combination.
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
    cp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    cp_comm: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=CP_P2P)
    cp_a2a: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    etp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    microbatch_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    global_batch: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    interleave: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    sequence_parallel: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=0.0)
    recompute: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    recompute_moe: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    zero_stage: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    dp_overlap: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    dp_hierarchical: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    zero3_regather: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    tp_overlap: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    ep_hierarchical: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    ep_overlap: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    account_embedding_loss: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                               default=0.0)
    activation_offload: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                           default=0.0)

    # Choices take any str: `__check_init__` names the field and the allowed values (`Recipe`,
    # `StatePrecision`) in a ValueError.
    precision: str = eqx.field(static=True, default="bf16")
    master_weights: str = eqx.field(static=True, default="fp32")
    optimizer_state: str = eqx.field(static=True, default="fp32")
    gradients: str = eqx.field(static=True, default="fp32")
    quantized_params: bool = eqx.field(static=True, default=False)

    def __post_init__(self):
        # A field given as one number beside batched ones applies to every plan of the batch:
        # broadcast it, so that a batch of plans always vmaps along one leading axis.
        # (The static choices, `precision` and the like, are not arrays and stay as they are.)
        names = [f.name for f in dataclasses.fields(self) if not f.metadata.get("static")]
        shape = np.broadcast_shapes(*(np.shape(getattr(self, n)) for n in names))
        if shape:
            for n in names:
                value = getattr(self, n)
                if np.shape(value) != shape:
                    setattr(self, n, jnp.broadcast_to(value, shape))

    def __check_init__(self):
        # Every field is a count or a choice: a fractional value is refused, never truncated.
        check_choice("TrainingPlan", "precision", self.precision, RECIPE_NAMES)
        for field in ("master_weights", "optimizer_state", "gradients"):
            check_choice("TrainingPlan", field, getattr(self, field), STATE_PRECISIONS)
        if not isinstance(self.quantized_params, bool):
            raise ValueError(f"TrainingPlan.quantized_params must be True or False; got "
                             f"{self.quantized_params!r}")
        for field in ("tp", "pp", "dp", "ep", "cp", "cp_a2a", "microbatch_size",
                      "global_batch", "interleave"):
            check_integer("TrainingPlan", field, getattr(self, field))
        for field, hi in (("sequence_parallel", 1.0), ("recompute", 2.0), ("zero_stage", 3.0),
                          ("cp_comm", CP_A2A_P2P),
                          ("dp_overlap", 1.0), ("dp_hierarchical", 1.0),
                          ("zero3_regather", 1.0), ("tp_overlap", 1.0),
                          ("ep_hierarchical", 1.0), ("ep_overlap", 1.0),
                          ("account_embedding_loss", 1.0), ("recompute_moe", 1.0)):
            check_integer("TrainingPlan", field, getattr(self, field), lower=0.0, upper=hi)
        # Megatron-Core's combined 1F1B refuses full recomputation and MoE-block recomputation
        # (megatron/core/transformer/transformer_config.py @d98e8a64 asserts both).
        for field, threshold, state in (("recompute", 1.5, "under full recomputation "
                                                           "(recompute 2)"),
                                        ("recompute_moe", 0.5, "when the MoE blocks are "
                                                               "recomputed (recompute_moe 1)")):
            other = getattr(self, field)
            if is_concrete(self.ep_overlap, other) and bool(np.any(
                    (np.asarray(self.ep_overlap) > 0.5) & (np.asarray(other) > threshold))):
                raise ValueError(
                    f"TrainingPlan.ep_overlap must be 0 {state}: Megatron-Core's combined 1F1B "
                    f"schedule refuses it; got ep_overlap "
                    f"{format_value(np.asarray(self.ep_overlap))}, {field} "
                    f"{format_value(np.asarray(other))}")
        check_range("TrainingPlan", "activation_offload", self.activation_offload, lower=0.0,
                    upper=1.0, lower_inclusive=True)
        # etp 0: the experts take the dense layers' TP degree.
        check_integer("TrainingPlan", "etp", self.etp, lower=0.0)
        leaves = (self.ep, self.dp, self.tp, self.cp, self.etp)
        if not any(isinstance(x, jax.core.Tracer) for x in leaves):
            ep, dp, tp, cp, etp = (np.asarray(x) for x in leaves)
            expert_tp = np.where(etp > 0.0, etp, tp)
            if bool(np.any(ep * expert_tp > tp * cp * dp)):
                raise ValueError(
                    f"TrainingPlan.ep * etp must be <= tp * cp * dp (the chips of a stage); got "
                    f"ep {ep}, etp {expert_tp}, tp {tp}, cp {cp}, dp {dp}")

    @property
    @once_per_evaluation
    def chips(self) -> Float[Array, "*batch"]:
        """Chips the plan occupies, tp * cp * pp * dp."""
        return self.tp * self.cp * self.pp * self.dp

    @property
    @once_per_evaluation
    def expert_tp(self) -> Float[Array, "*batch"]:
        """Expert tensor-parallel degree: `etp`, or `tp` when it is 0."""
        return jnp.where(self.etp > 0.0, self.etp, self.tp)

    @property
    @once_per_evaluation
    def expert_dp(self) -> Float[Array, "*batch"]:
        """Replicas of each expert (EDP), tp * cp * dp / (ep * etp)."""
        return self.tp * self.cp * self.dp / (self.ep * self.expert_tp)

    @property
    @once_per_evaluation
    def microbatches(self) -> Float[Array, "*batch"]:
        """Micro-batches per replica per step, global_batch / (dp * microbatch_size)."""
        return self.global_batch / (self.dp * self.microbatch_size)

    def replace(self, **changes) -> TrainingPlan:
        """A copy with some fields changed (validated like a new plan)."""
        return dataclasses.replace(self, **changes)


@once_per_evaluation
def split_units(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """What the pipeline split divides over the stages: the layers, plus the embedding and the
    loss with `TrainingPlan.account_embedding_loss` under pipeline parallelism."""
    counted = (plan.account_embedding_loss > 0.5) & (plan.pp > 1.0)
    return model.layers + jnp.where(counted, 2.0, 0.0)


@once_per_evaluation
def first_stage_layers(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """Transformer layers on the first pipeline stage (the one beside the embedding)."""
    counted = (plan.account_embedding_loss > 0.5) & (plan.pp > 1.0)
    return split_units(model, plan) / plan.pp - jnp.where(counted, 1.0, 0.0)


def kv_heads_per_rank(model: Transformer, plan: TrainingPlan) -> Float[Array, "*batch"]:
    """K and V heads on one TP rank: kv_heads / tp, at least 1 (a KV head is copied to the
    ranks that share it when kv_heads < tp); MLA trains over the up-projected per-head K and V,
    heads / tp."""
    if model.latent_attention:
        return model.heads / plan.tp
    return jnp.maximum(model.kv_heads / plan.tp, 1.0)


def no_cp_scheme(plan: TrainingPlan, scheme: float) -> bool:
    """True where the plan's concrete values show that no plan of it runs CP `scheme` (its CP
    degree is 1, or its `cp_comm` another scheme): the models then skip that scheme (fewer
    operations to trace; the same values)."""
    return all_concretely(plan.cp, lambda c: c == 1.0) \
        or all_concretely(plan.cp_comm, lambda c: c != scheme)


@once_per_evaluation
def cp_head_split(plan: TrainingPlan):
    """CP ranks that split a TP rank's heads between them by all-to-all: cp under Ulysses
    (`CP_A2A`), `cp_a2a` under `CP_A2A_P2P`, 1 for the ring and the all-gather (the Python
    1.0 where the plan's concrete values show no all-to-all group); `cp_ring_size` is the
    rest of the CP group."""
    ulysses, hierarchical = (not no_cp_scheme(plan, CP_A2A),
                             not no_cp_scheme(plan, CP_A2A_P2P))
    if not (ulysses or hierarchical):
        return 1.0
    return jnp.where(plan.cp_comm == CP_A2A, plan.cp,
                     jnp.where(plan.cp_comm == CP_A2A_P2P, plan.cp_a2a, 1.0))


@once_per_evaluation
def cp_ring_size(plan: TrainingPlan):
    """CP ranks around the ring that passes K and V: cp / `cp_head_split` (cp itself where no
    plan has an all-to-all group; 1 under Ulysses)."""
    split = cp_head_split(plan)
    return plan.cp if isinstance(split, float) else plan.cp / split


def training_plan_rules(model: Transformer, plan: TrainingPlan, system: System) -> list[Rule]:
    """What a training plan must satisfy on `model` and `system` (see `check_training_plan`)."""
    n = float(system.num_chips)
    units = split_units(model, plan)
    layers_per_stage = units / plan.pp
    replica_batch = plan.dp * plan.microbatch_size
    return [
        Rule(Reason.CHIPS, "TrainingPlan.tp * cp * pp * dp", plan.chips, plan.chips == n,
             lambda: f"the system's {system.num_chips} chips (System.num_chips)"),
        Rule(Reason.SPLIT, "TrainingPlan.tp", plan.tp, divides(plan.tp, model.heads),
             lambda: f"a divisor of the model's {float(model.heads):g} heads"),
        # Ulysses scatters whole heads: each CP rank takes 1 / cp of the TP rank's query heads
        # and of its K and V heads (Transformer Engine's AttnFuncWithCPAndQKVOA2A asserts both).
        Rule(Reason.SPLIT, "TrainingPlan.cp", plan.cp,
             (plan.cp_comm != CP_A2A) | (divides(plan.cp, model.heads / plan.tp)
                                     & divides(plan.cp, kv_heads_per_rank(model, plan))),
             lambda: f"a divisor of the {float(np.max(model.heads / plan.tp)):g} query and "
                     f"{float(np.max(kv_heads_per_rank(model, plan))):g} KV heads per TP rank "
                     f"under cp_comm {CP_A2A:g} (all-to-all, Ulysses)"),
        # The hierarchical scheme's all-to-all group is whole CP ranks that split whole heads
        # the same way. Under another scheme a group size other than 1 would be read by
        # nothing: refused rather than ignored.
        Rule(Reason.SPLIT, "TrainingPlan.cp_a2a", plan.cp_a2a,
             jnp.where(plan.cp_comm == CP_A2A_P2P,
                       divides(plan.cp_a2a, plan.cp)
                       & divides(plan.cp_a2a, model.heads / plan.tp)
                       & divides(plan.cp_a2a, kv_heads_per_rank(model, plan)),
                       plan.cp_a2a == 1.0),
             lambda: f"a divisor of cp ({float(np.max(plan.cp)):g}) and of the "
                     f"{float(np.max(model.heads / plan.tp)):g} query and "
                     f"{float(np.max(kv_heads_per_rank(model, plan))):g} KV heads per TP rank "
                     f"under cp_comm {CP_A2A_P2P:g} (a2a+p2p), and 1 under any other scheme"),
        Rule(Reason.SPLIT, "TrainingPlan.pp", plan.pp, divides(plan.pp, units),
             lambda: f"a divisor of the model's {float(model.layers):g} layers" + (
                 f" + 2 = {float(np.max(units)):g} (the embedding and the loss counted)"
                 if np.any(np.asarray(units) != np.asarray(model.layers)) else "")),
        Rule(Reason.SPLIT, "TrainingPlan.interleave", plan.interleave,
             divides(plan.interleave, layers_per_stage),
             lambda: f"a divisor of the {float(np.max(layers_per_stage)):g} layers per stage"
                     + (" (the embedding and the loss counted)"
                        if np.any(np.asarray(units) != np.asarray(model.layers)) else "")),
        # Megatron-Core forms the expert groups (etp x ep x edp) over a stage's tp * cp * dp
        # chips: ep * etp must divide them, so that every expert has whole replicas (EDP).
        Rule(Reason.SPLIT, "TrainingPlan.ep", plan.ep,
             divides(plan.ep, model.experts)
             & divides(plan.ep * plan.expert_tp, plan.tp * plan.cp * plan.dp),
             lambda: f"a divisor of the model's {float(model.experts):g} experts with ep * etp "
                     f"dividing tp * cp * dp = {float(plan.tp * plan.cp * plan.dp):g}"),
        Rule(Reason.BATCH, "TrainingPlan.global_batch", plan.global_batch,
             divides(replica_batch, plan.global_batch),
             lambda: f"a multiple of dp * microbatch_size = {float(replica_batch):g} (whole "
                     f"micro-batches per replica)"),
    ]


def check_training_plan(model: Transformer, plan: TrainingPlan,
                        system: System) -> Int[Array, "*batch"]:
    """Check a training plan against its model and system; its `Reason` flags.

    The plan must use exactly the system's chips (tp * pp * dp = num_chips), tp must divide the
    heads, pp the layers, the interleave the layers per stage, ep the experts and dp, and the
    global batch must split into whole micro-batches per replica. A plan given by hand (concrete
    values) that breaks a rule is a `ValueError` naming the field, its value and what is
    allowed; inside jit / vmap (a plan search, a sweep) the flags say what failed.

    **Returns:** the `Reason` flags of the failed rules (int32, 0 where every rule holds).
    """
    rules = training_plan_rules(model, plan, system)
    if is_concrete(model, plan) and not _FLAG_ONLY.get():
        check_rules(rules)
    return reason_of(rules)


_FLAG_ONLY = contextvars.ContextVar("dse_flag_invalid_plans", default=False)


@contextlib.contextmanager
def flagging_invalid_plans():
    """Within this context a concrete plan that breaks a rule is flagged in its report, as
    inside jit / vmap, instead of raising: for a batch of candidate plans evaluated by hand
    (`evaluate_plans`), where a broken candidate is an answer (not feasible), not a mistake."""
    token = _FLAG_ONLY.set(True)
    try:
        yield
    finally:
        _FLAG_ONLY.reset(token)
