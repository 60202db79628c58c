"""LLM inference: prefill, one decode step, and a whole request (`serve`) on a `System`.

A layer is a sequence of operators on each chip (`_operators`): the QKV projection, fused
attention over the KV cache, the output projection, the MLP (or the experts a batch of tokens
touches), norms, activation and residual adds, the KV-cache write, and two tensor-parallel
all-reduces (Megatron-LM layout: column- then row-parallel GEMMs, Shoeybi et al. 2019, Sec. 3).
Pipeline stages run one after the other for a request, with a point-to-point activation send
between stages. Weights of the whole model share the chip's SRAM and HBM; the share that fits in
SRAM is served from there (weight-stationary chips). KV heads are split over tensor-parallel
chips; with fewer KV heads than chips the cache is sharded over the batch instead (each chip
holds whole sequences of its KV head), as Pope et al. 2022 (Sec. 3.3) do for multi-query
attention, with an all-to-all of queries and outputs, and replicated only when the batch is too
small to shard.

Three layouts (Pope et al. 2022, Sec. 3.2): "weight_stationary" keeps each chip's weight shard
and moves activations (1D, Megatron all-reduces); "weight_stationary_2d" splits the weights over
both d_model (X chips) and the heads / MLP width (YZ chips), so each collective spans part of the
chips and the traffic per chip falls as 1 / sqrt(chips) (Pope et al. 2022, Sec. 3.2.2; the
collective sequence as written out in Austin et al. 2025, "How to Scale Your Model", inference
chapter, App. B); "weight_gathered" shards the batch and all-gathers each layer's weights
(large-batch prefill). Options: `sequence_parallel` shards norms and residual adds over
the tensor-parallel chips (Korthikanti et al. 2022, Sec. 4.2.2; same communication volume);
`fused` folds element-wise ops into the neighbouring kernels and issues kernels back to back
(FasterTransformer, TensorRT-LLM and XLA do), so no op pays a start-up time.
"""

from __future__ import annotations

import dataclasses
import functools
import operator
from typing import TYPE_CHECKING, Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dse.hardware import Reason, System
from dse.hardware._once import evaluates_once
from dse.hardware._precision import FORMATS
from dse.hardware._validate import as_float_array, check_choice, check_integer, check_range

from ._calibration import DEFAULT, Calibration
from ._collectives import all_gather, all_reduce, all_to_all, reduce_scatter, send_recv
from ._energy import step_energy
from ._operators import _f, attention, elementwise, gemm, ratio, stacked_calls
from ._recipe import QUANTIZE_FLOPS
from ._rules import (
    Rule,
    check_rules,
    divides,
    is_concrete,
    memory_reason,
    reason_of,
    shortfall,
    whole,
)
from ._transformer import Transformer

if TYPE_CHECKING:  # _speculative builds on this module
    from ._speculative import Speculation

Layout = Literal["weight_stationary", "weight_stationary_2d", "weight_gathered"]

# Formats each tensor of a served model may be stored in (`dse.hardware.FORMATS`). Weights: the
# 16-bit formats, FP8 (per-tensor or MX), INT8, MXFP6 (OCP MX v1.0; CDNA4 and Blackwell run it
# on their FP6 engines), the 4-bit ones (AWQ-style INT4, MXFP4, NVFP4).
# GEMM inputs (activations): those a matrix engine multiplies (no INT4 engine is modelled).
# KV cache: 16-bit, FP8 or INT8 (vLLM and TensorRT-LLM offer these).
WEIGHT_FORMATS = ("bf16", "fp16", "fp8", "mxfp8", "int8", "mxfp6", "int4", "mxfp4", "nvfp4")
ACTIVATION_FORMATS = ("bf16", "fp16", "fp8", "mxfp8", "int8", "mxfp6", "mxfp4", "nvfp4")
KV_FORMATS = ("bf16", "fp16", "fp8", "int8")
# Vector FLOP to de-quantize one element in a kernel: a convert and a multiply by its scale.
DEQUANT_FLOPS = 2.0
# Element bits without block scales: the rule "activations at least as wide as weights".
_ELEMENT_BITS = {"bf16": 16, "fp16": 16, "fp8": 8, "mxfp8": 8, "int8": 8, "mxfp6": 6, "int4": 4,
                 "mxfp4": 4, "nvfp4": 4}


def _check_formats(weights: str, activations: str, kv_cache: str) -> None:
    """Raise `ValueError` naming the field for formats a serving stack cannot combine."""
    for field, value, allowed in (("weights", weights, WEIGHT_FORMATS),
                                  ("activations", activations, ACTIVATION_FORMATS),
                                  ("kv_cache", kv_cache, KV_FORMATS)):
        check_choice("InferencePlan", field, value, allowed)
    if _ELEMENT_BITS[activations] < _ELEMENT_BITS[weights]:
        raise ValueError(
            f"InferencePlan.activations must be at least as wide as the weights (W8A8, W4A8, "
            f"W4A16: the GEMM runs in the activations' format); got weights {weights!r} with "
            f"activations {activations!r}")
    w_engine, a_engine = FORMATS[weights].engine, FORMATS[activations].engine
    if w_engine not in (None, a_engine) and a_engine != "bf16":
        raise ValueError(
            f"InferencePlan.weights {weights!r} cannot feed the {a_engine} engine of "
            f"activations {activations!r}: no kernel converts one 8-bit format into another "
            f"(use 16-bit activations, or weights in the activations' format)")


def _optional_float(x):
    """`as_float_array`, with None (a default filled in by `__post_init__`) left as it is."""
    return None if x is None else as_float_array(x)


class InferencePlan(eqx.Module):
    """How a model is laid out for inference (float leaves, so plans vmap).

    **Fields:**

    - `tp`: tensor-parallel degree (chips sharing every layer).
    - `pp`: pipeline-parallel degree (stages of consecutive layers).
    - `ep`: expert-parallel degree (MoE models; 1 for a dense one). A stage then spans ep x tp
      chips: ep groups of tp chips each run attention and the dense layers on 1 / ep of the
      sequences (attention data parallel), and the MoE layers shard the experts over the ep
      groups (experts / ep per group, each split tp ways inside it), with a dispatch and a
      combine all-to-all per MoE layer (as vLLM's `--enable-expert-parallel` with data-parallel
      attention, and DeepSeek-V3's serving, DeepSeek-AI 2024, Sec. 3.4, do). TensorRT-LLM's
      other pattern, EP inside the TP group with attention tensor parallel (moe_ep_size x
      moe_tp_size = tp), is not modelled.
    - `batch`: sequences processed together (all ep groups of a replica).
    - `weights` (static): format of the stored weights (`WEIGHT_FORMATS`: "bf16", "fp8",
      "int8", "int4", "nvfp4", ...).
    - `activations` (static): format of the GEMM inputs, which sets the matrix engine: W8A8 is
      `weights="fp8", activations="fp8"`, W4A16 `weights="int4", activations="bf16"`, W4A8
      `weights="int4", activations="fp8"`. Activations are quantized in the kernel that
      produces them; the residual stream, norms and collectives stay 16-bit. Weights stored in
      another format than the engine's are de-quantized in the GEMM's kernel, and a chip
      without the engine (rate 0, or a block-scaled format without `Chip.block_scaling`) runs
      the GEMM on its 16-bit engine with everything de-quantized: both cost vector time
      (`DEQUANT_FLOPS` per element loaded).
    - `kv_cache` (static): format of the KV cache (`KV_FORMATS`); narrower than 16 bits, K and
      V are de-quantized inside the attention kernel.
    - `head_weights` (static): format of the token embedding and the output projection (LM
      head), default "bf16": quantization toolkits leave them 16-bit whatever the layers'
      format (NVIDIA ModelOpt, `modelopt/torch/quantization/config.py`,
      `_default_disabled_quantizer_cfg`: `"*lm_head*": {"enable": False}`; the embedding is a
      table lookup no GEMM quantizer touches), and TensorRT-LLM serves ModelOpt checkpoints.
      The logits GEMM runs with the layers' activations where the head's format can feed
      their engine, else on the 16-bit engine (`head_plan`). Under pipeline parallelism the
      first stage holds the embedding and the last the LM head (memory is the busier's).
    - `weight_bytes`: bytes per stored element of the layers' weights (the embedding and LM
      head: `head_weights`); default (None) the `weights` format's (block scales included).
      A value given overrides the storage width only (a search over storage widths,
      `best_serving_plan`): the GEMMs still run on the formats' engines.
    - `kv_bytes`: bytes per KV-cache element; default the `kv_cache` format's.
    - `activation_bytes`: bytes per element of the activations between operators (the 16-bit
      stream; default 2).
    - `layout` (static): "weight_stationary" (tensor parallel: weights stay, activations are
      all-reduced), "weight_stationary_2d" (the tp chips form an X x YZ mesh: weights split over
      d_model on X and heads / MLP width on YZ) or "weight_gathered" (the batch is sharded over
      the tp chips and each layer's weights are all-gathered; pays off for large-batch prefill).
    - `sequence_parallel` (static): norms and residual adds on 1/tp of the tokens per chip.
    - `fused` (static): element-wise ops fused into neighbouring kernels and kernels issued back
      to back by a compiled runtime: no per-op start-up time
      (`Calibration.with_fused_runtime`).
    """

    tp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    pp: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    ep: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    batch: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    # None: the format's width (`__post_init__`).
    weight_bytes: Float[Array, "*batch"] = eqx.field(converter=_optional_float, default=None)
    kv_bytes: Float[Array, "*batch"] = eqx.field(converter=_optional_float, default=None)
    activation_bytes: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                         default=2.0)
    # Formats take any str: `__check_init__` names the field and the allowed formats in a
    # ValueError.
    weights: str = eqx.field(static=True, default="bf16")
    activations: str = eqx.field(static=True, default="bf16")
    kv_cache: str = eqx.field(static=True, default="bf16")
    head_weights: str = eqx.field(static=True, default="bf16")
    layout: Layout = eqx.field(static=True, default="weight_stationary")
    sequence_parallel: bool = eqx.field(static=True, default=True)
    fused: bool = eqx.field(static=True, default=True)

    def __post_init__(self):
        # The storage widths default to the formats' (a format name the check below refuses
        # has no width: leave it for `__check_init__` to name).
        if self.weight_bytes is None:
            self.weight_bytes = FORMATS[self.weights].bytes if self.weights in FORMATS else 2.0
        if self.kv_bytes is None:
            self.kv_bytes = FORMATS[self.kv_cache].bytes if self.kv_cache in FORMATS else 2.0

    def __check_init__(self):
        check_choice("InferencePlan", "layout", self.layout, get_args(Layout))
        # Chips and sequences are counts: a fractional one is refused, never truncated.
        for field in ("tp", "pp", "ep", "batch"):
            check_integer("InferencePlan", field, getattr(self, field))
        _check_formats(self.weights, self.activations, self.kv_cache)
        check_choice("InferencePlan", "head_weights", self.head_weights, WEIGHT_FORMATS)
        for field in ("weight_bytes", "kv_bytes", "activation_bytes"):
            check_range("InferencePlan", field, getattr(self, field), lower=0.0, upper=8.0)

    @property
    def input_bytes(self) -> float | Float[Array, "*batch"]:
        """Bytes per GEMM-input (activation) element as the GEMM reads it: the `activations`
        format's, or the 16-bit stream's (`activation_bytes`) for a 16-bit format."""
        if FORMATS[self.activations].engine == "bf16":
            return self.activation_bytes
        return FORMATS[self.activations].bytes

    @property
    def chips(self) -> Float[Array, "*batch"]:
        """Chips the plan occupies, tp * pp * ep."""
        return self.tp * self.pp * self.ep

    @property
    def head_weight_bytes(self) -> float:
        """Bytes per stored element of the embedding and the LM head (`head_weights`)."""
        return FORMATS[self.head_weights].bytes

    def head_plan(self) -> InferencePlan:
        """The plan the logits GEMM runs under: the head's weights with the layers'
        activations where that pair is a valid one (`_check_formats`: an FP8 head under FP8
        activations, an INT4 head under W4A8), else with 16-bit activations (W16A16 for a
        16-bit head beside FP8 layers)."""
        try:  # the layers' activations, where the head's weights can feed their engine
            _check_formats(self.head_weights, self.activations, self.kv_cache)
            activations = self.activations
        except ValueError:
            activations = "bf16"
        return dataclasses.replace(self, weights=self.head_weights,
                                   weight_bytes=self.head_weight_bytes, activations=activations)

    def replace(self, **changes) -> InferencePlan:
        """A copy with some fields changed (validated like a new plan). A new `weights` or
        `kv_cache` format brings its width unless `weight_bytes` / `kv_bytes` is given too."""
        for fmt, width in (("weights", "weight_bytes"), ("kv_cache", "kv_bytes")):
            if fmt in changes and width not in changes:
                changes[width] = None
        return dataclasses.replace(self, **changes)


class InferenceReport(eqx.Module):
    """One forward pass of a batch (a prefill, or one decode step) on the plan's chips.

    **Fields** (SI units; per chip where it says so):

    - `time`: latency of the pass, s (= matmul + attention + elementwise + tp_comm + pp_comm).
    - `matmul_time`, `attention_time`, `elementwise_time`: operator time of every layer on the
      request's path (all pipeline stages in turn), s.
    - `tp_comm_time`, `pp_comm_time`: exposed tensor-parallel all-reduce and stage-to-stage
      send time, s.
    - `flops`: FLOP of the pass, all chips together.
    - `hbm_bytes`: HBM traffic per chip.
    - `tokens`: tokens processed (batch x query tokens).
    - `mfu`: flops / (time x chips x peak FLOP/s).
    - `weight_bytes`, `kv_cache_bytes`, `activation_bytes`: memory per chip, bytes.
    - `memory_per_chip`: their sum, bytes.
    - `memory_capacity`: HBM + SRAM per chip (weights are served from both), bytes.
    - `memory_shortfall`: max(memory_per_chip - memory_capacity, 0), bytes.
    - `fits`: memory per chip within capacity and the plan valid (`reason == 0`).
    - `reason`: `dse.hardware.Reason` flags (0: feasible; `MEMORY`, or `SRAM` on a chip without
      HBM; `CHIPS`, `SPLIT`, `BATCH`, `WORKLOAD` for a traced plan or length that is invalid).
    - `energy`: energy of all the plan's chips over the pass, J.
    """

    time: Float[Array, "..."]
    matmul_time: Float[Array, "..."]
    attention_time: Float[Array, "..."]
    elementwise_time: Float[Array, "..."]
    tp_comm_time: Float[Array, "..."]
    pp_comm_time: Float[Array, "..."]
    flops: Float[Array, "..."]
    hbm_bytes: Float[Array, "..."]
    tokens: Float[Array, "..."]
    mfu: Float[Array, "..."]
    weight_bytes: Float[Array, "..."]
    kv_cache_bytes: Float[Array, "..."]
    activation_bytes: Float[Array, "..."]
    memory_per_chip: Float[Array, "..."]
    memory_capacity: Float[Array, "..."]
    memory_shortfall: Float[Array, "..."]
    fits: Bool[Array, "..."]
    reason: Int[Array, "..."]
    energy: Float[Array, "..."]


class ServeReport(eqx.Module):
    """A batch of requests: prefill of `input_len` tokens, then `output_len` decode steps.

    **Fields** (SI units):

    - `ttft`: time to first token (the prefill), s.
    - `tpot`: time per output token (decode step at the mean context; with speculation, the
      speculative step over the tokens it emits), s.
    - `total_latency`: ttft + output_len x tpot, s.
    - `tokens_per_s_per_chip`: generated tokens per second per chip.
    - `energy_per_token`: energy per generated token (prefill included), J.
    - `kv_cache_bytes`: KV cache per chip at the final context (the draft's included), bytes.
    - `memory_per_chip`: weights + KV cache + activations per chip at the final context, bytes.
    - `memory_capacity`, `memory_shortfall`: HBM + SRAM per chip, and how far the larger of the
      prefill's and the final context's memory misses it, bytes.
    - `fits`, `reason`: feasibility (`dse.hardware.Reason` flags, as in `InferenceReport`).
    - `prefill`, `decode`: the `InferenceReport`s of the prefill and of the mean decode step
      (with speculation, of the verification pass).
    """

    ttft: Float[Array, "..."]
    tpot: Float[Array, "..."]
    total_latency: Float[Array, "..."]
    tokens_per_s_per_chip: Float[Array, "..."]
    energy_per_token: Float[Array, "..."]
    kv_cache_bytes: Float[Array, "..."]
    memory_per_chip: Float[Array, "..."]
    memory_capacity: Float[Array, "..."]
    memory_shortfall: Float[Array, "..."]
    fits: Bool[Array, "..."]
    reason: Int[Array, "..."]
    prefill: InferenceReport
    decode: InferenceReport


def _kv_sharding(model: Transformer, plan: InferencePlan, batch):
    """KV heads per chip, sequences of KV cache per chip, and query heads per such sequence.

    With at least as many KV heads as chips, each chip holds kv_heads / tp heads of every
    sequence. With fewer, r = tp / kv_heads chips share a KV head: they split the batch between
    them (Pope et al. 2022, Sec. 3.3) as far as it goes (at least one sequence each, so a small
    batch is replicated), and each chip then serves all heads / kv_heads query heads of its
    sequences. Attention work per chip is batch x heads / tp either way.

    A batch below one sequence is an expected share (a serving iteration's fraction of a prompt
    chunk; an empty segment): it is held as it is, not rounded up to a whole sequence (which
    priced an empty segment's chunk as if present).
    """
    kv_heads = jnp.maximum(model.kv_heads / plan.tp, 1.0)
    sharers = jnp.maximum(plan.tp / model.kv_heads, 1.0)
    kv_batch = jnp.maximum(batch / sharers, jnp.minimum(batch, 1.0))
    # batch / kv_batch: sharers once each holds its share, the batch while it is replicated.
    q_heads = model.heads / plan.tp * jnp.clip(batch, 1.0, sharers)
    return kv_heads, kv_batch, q_heads, sharers


def _runtime_calibration(plan: InferencePlan, calibration: Calibration) -> Calibration:
    """`calibration`, without per-op start-up times when the plan's runtime is fused."""
    return calibration.with_fused_runtime() if plan.fused else calibration


def _memory(model: Transformer, plan: InferencePlan, system: System, q_len, context):
    """Weights, KV cache and live activations per chip and their total, bytes; whether they fit
    and the `Reason` flags if not (`MEMORY`, or `SRAM` on a chip without HBM)."""
    gathered = plan.layout == "weight_gathered"
    # Routed experts are split over the ep groups; attention, dense and shared-expert weights
    # are held by every group (split tp x pp ways inside it).
    routed = routed_expert_params(model)
    head = model.embedding_params
    layer_params = model.params - head - routed + routed / plan.ep
    # The busiest chip: a pipeline's first stage holds the embedding and its last the LM head
    # (one vocab x hidden table each, tied or not: both ends need it), beside their share of
    # the layers; one stage holds them all.
    end_stage_head = jnp.where(plan.pp > 1.0, model.vocab * model.hidden + model.hidden, head)
    weights = (layer_params / plan.pp * plan.weight_bytes
               + end_stage_head * plan.head_weight_bytes) / plan.tp
    # Each ep group holds the KV cache and activations of 1 / ep of the sequences.
    group_batch = plan.batch / plan.ep
    if gathered:
        # One layer's weights gathered in full beside the resident shard.
        weights = weights + model.params_per_layer * plan.weight_bytes
        kv_heads, kv_batch = model.kv_heads, group_batch / plan.tp
        tokens = group_batch * q_len / plan.tp
        width_tp = 1.0
    else:
        kv_heads, kv_batch, _, _ = _kv_sharding(model, plan, group_batch)
        tokens = group_batch * q_len
        width_tp = _mesh_2d(model, plan)[1] if plan.layout == "weight_stationary_2d" else plan.tp
    kv = (2.0 * model.layers / plan.pp * kv_batch * context * kv_heads * model.head_dim
          * plan.kv_bytes)
    # Live activations of one layer: the residual stream, the attention output and the MLP
    # inner activations (gate and up for a gated MLP) of the tokens in flight.
    inner = model.mlp_matrices - 1.0
    acts = tokens * (2.0 * model.hidden + inner * model.ffn_hidden * model.top_k / width_tp) \
        * plan.activation_bytes
    total = weights + kv + acts
    reason = memory_reason(system.chip, total, _capacity(system.chip))
    return weights, kv, acts, total, reason == 0, reason


def routed_expert_params(model: Transformer) -> Float[Array, "*batch"]:
    """Weights of the routed experts of every MoE layer (0 for a dense model): what expert
    parallelism splits over its ep groups."""
    return jnp.where(model.experts > 1.0,
                     model.moe_layers * model.experts * model.expert_params_per_layer, 0.0)


def distinct_experts(experts, top_k, tokens):
    """Expected distinct experts that `tokens` tokens routed top_k of `experts` ways touch.

    Each token picks top_k distinct experts; under uniform routing an expert is missed by one
    token with probability 1 - top_k / experts, by all of them independently with that to the
    power tokens, so E [1 - (1 - k / E)^T] are touched: the occupancy problem (Feller 1968,
    "An Introduction to Probability Theory and Its Applications", Vol. I, 3rd ed., Ch. II.5 and
    IV.2, with k balls a throw). At decode (small T) an MoE layer's weight reads, and so its
    time, follow this count, not T k ("reuse fragmentation": Adhinarayanan & Jayasena 2026,
    "The qs Inequality", arXiv:2603.08960). A dense model (one expert) touches 1.
    """
    partial, log_untouched = _log_untouched(experts, top_k, tokens)
    touched = jnp.where(partial, experts * -jnp.expm1(log_untouched), experts)
    return jnp.where(experts > 1.0, touched, 1.0)


def _log_untouched(experts, top_k, tokens):
    """(partial, log (1 - k / E)^T): whether routing leaves some expert out, and the log of the
    chance that `tokens` tokens all miss a given expert. top_k = experts (every token visits
    all) is kept out of the log (no NaN)."""
    partial = (experts > 1.0) & (top_k < experts)
    return partial, tokens * jnp.log(jnp.where(partial, 1.0 - top_k / experts, 0.5))


# Per-group expert counts the busiest-group sum runs over when the model's expert count is traced
# (none is known then): the most routed experts of any preset, DeepSeek-V3's 256
# (`TRANSFORMERS["deepseek-v3"]`, from its config.json).
MAX_EXPERTS = 256


def busiest_group_experts(experts, top_k, tokens, ep):
    """Expected distinct experts touched on the busiest of `ep` expert-parallel groups.

    Each group holds n = experts / ep experts; each of them is touched with probability
    p = 1 - (1 - k / E)^T (`distinct_experts`). Treating the experts' touches as independent,
    a group's count is Binomial(n, p) and the busiest of ep groups has
    E[max] = sum_{j < n} (1 - F(j)^ep) touched (F the binomial CDF): at small T the decode
    step waits for the group that reads the most expert weights. ep = 1 gives n p exactly;
    large T gives n.
    """
    if is_concrete(experts):
        terms = int(np.max(np.asarray(experts))) + 1
    else:
        terms = MAX_EXPERTS + 1
    # One shape for every input, so that the sum over j below broadcasts rank to rank.
    experts, top_k, tokens, ep = jnp.broadcast_arrays(*(_f(x) for x in (experts, top_k, tokens,
                                                                        ep)))
    moe = experts > 1.0
    partial, log_untouched = _log_untouched(experts, top_k, tokens)  # log (1 - p)
    p = jnp.where(partial, -jnp.expm1(log_untouched), 1.0)
    n = jnp.where(moe, experts / ep, 1.0)
    mean = n * p
    j = jnp.arange(terms, dtype=n.dtype).reshape((terms,) + (1,) * n.ndim)
    n, p, ep, partial, log_untouched = (x[None] for x in (n, p, ep, partial, log_untouched))
    inside = j < n
    k_left = jnp.maximum(n - j, 0.0)
    log_p = jnp.log(jnp.where(p > 0.0, p, 1.0))
    log_q = jnp.where(partial, log_untouched, -jnp.inf)
    log_pmf = (gammaln(n + 1.0) - gammaln(j + 1.0) - gammaln(k_left + 1.0) + j * log_p
               + k_left * jnp.where(partial, log_q, 0.0))
    pmf = jnp.where(inside & partial, jnp.exp(log_pmf), 0.0)
    cdf = jnp.clip(jnp.cumsum(pmf, axis=0), 0.0, 1.0)
    safe = jnp.where(cdf > 0.0, cdf, 1.0)
    below = jnp.where(cdf > 0.0, jnp.exp(ep * jnp.log(safe)), 0.0)  # F(j)^ep
    expected_max = jnp.sum(jnp.where(inside, 1.0 - below, 0.0), axis=0)
    # ep = 1, or every expert touched (top_k = experts), or a dense model: the mean is exact;
    # a per-group count beyond the terms summed (a traced model with more experts) keeps it.
    exact = (ep[0] <= 1.0) | ~partial[0] | (n[0] > terms - 1.0)
    return jnp.where(exact, mean, jnp.maximum(expected_max, mean))


def _capacity(chip):
    """Inference memory per chip, bytes: the HBM and the SRAM (weights are served from both)."""
    return chip.hbm_bytes + chip.sram_bytes


def _mesh_2d(model: Transformer, plan: InferencePlan):
    """X x YZ split of the tp chips for the 2D weight-stationary layout.

    Per chip and block the layout moves about 2 T d_model / X (gather + scatter over YZ) plus
    2 T W / YZ (all-reduce over X of the W-wide projection, W the MLP input width), with
    X YZ = tp; X = sqrt(tp d_model / W) minimizes the sum (as in Austin et al. 2025, App. B,
    where W = 4 d_model gives X = sqrt(tp / 8) under their gather/reduce accounting).
    """
    width = (model.mlp_matrices - 1.0) * model.ffn_hidden
    x = jnp.clip(jnp.sqrt(plan.tp * model.hidden / width), 1.0, plan.tp)
    return x, plan.tp / x


def _segment_sharding(model: Transformer, plan: InferencePlan, seqs):
    """(kv_heads, kv_batch, q_heads, sharers) of `seqs` sequences on one chip of the layout."""
    if plan.layout == "weight_gathered":
        batch = seqs / plan.tp
        return model.kv_heads, batch, model.heads, 1.0
    return _kv_sharding(model, plan, seqs)


def _layer(model: Transformer, plan: InferencePlan, system: System, segments, resident, smooth,
           calibration: Calibration):
    """Operator costs of one layer on one chip: (matmul, attention, elementwise, comm).

    `segments` is a tuple of (sequences, query tokens per sequence, context) triples that run in
    the same pass: one for a prefill or a decode step, a decode segment and a prefill-chunk
    segment for an iteration of in-flight batching (`dse.models.serving`). Their tokens share
    every weight GEMM, element-wise op and collective; each segment has its own attention over
    its own context. `calibration` reaches every operator (without start-up times for a fused
    runtime) and every collective.
    """
    chip = system.chip
    hd = model.head_dim
    ab, wb = plan.activation_bytes, plan.weight_bytes
    # Expert parallelism: each of the ep groups of tp chips runs attention and the dense
    # operators on 1 / ep of the sequences; the MoE layers gather every group's tokens.
    ep = plan.ep
    segments = tuple((seqs / ep, q, context) for seqs, q, context in segments)
    up_width = (model.mlp_matrices - 1.0) * model.ffn_hidden  # MLP input-projection width
    tp = 1.0 if plan.layout == "weight_gathered" else plan.tp
    shard = [_segment_sharding(model, plan, seqs) for seqs, _, _ in segments]
    # Tokens on this chip, and those whose K and V this chip computes (the sequences it holds).
    tokens = sum(sh[1] * q if plan.layout == "weight_gathered" else seqs * q
                 for sh, (seqs, q, _) in zip(shard, segments, strict=True))
    kv_tokens = sum(sh[1] * q for sh, (_, q, _) in zip(shard, segments, strict=True))
    kv_heads, sharers = shard[0][0], shard[0][3]
    # Weight split: d_model over `x` chips, heads and MLP width over `yz` (1D: x = 1, yz = tp).
    x, yz = 1.0, tp
    if plan.layout == "weight_stationary_2d":
        x, yz = _mesh_2d(model, plan)
    eff = _runtime_calibration(plan, calibration)
    link = dict(calibration=calibration)
    mm = dict(weight_resident_fraction=resident, smooth=smooth, calibration=eff)

    # Q for every token on this chip; K, V for the sequences whose cache this chip holds.
    d_in = model.hidden / x
    # Mixture of experts: the T ep tokens of the stage (ep groups of T) routed top_k of E ways
    # touch `distinct_experts` of the E; a group holds E / ep of the experts, and the step
    # waits for the group that touches the most (`busiest_group_experts`), each expert running
    # a GEMM over its share of the tokens. Over ep > 1 groups that share is `expert_load`
    # (the imbalance, capped by the capacity factor) times the mean, as for training
    # (`_layer.expert_tokens`).
    moe = model.experts > 1.0
    stage_tokens = tokens * ep
    touched_all = distinct_experts(model.experts, model.top_k, stage_tokens)
    load = jnp.where(ep > 1.0, model.expert_load, 1.0)
    touched = busiest_group_experts(model.experts, model.top_k, stage_tokens, ep)
    expert_tokens = stage_tokens * model.top_k / touched_all * load
    # The layer's six weight GEMMs (Q, KV, output, MLP up and down, router) as one vmapped call.
    q, kv, out, up, down, router = stacked_calls(
        lambda m, n, k: _linear(chip, plan, m, n, k, **mm),
        [(tokens, model.heads / yz * hd, d_in),
         (kv_tokens, 2.0 * kv_heads * hd * tp / yz, d_in),
         (tokens, d_in, model.heads / yz * hd),
         (expert_tokens, up_width / yz, d_in),
         (expert_tokens, d_in, model.ffn_hidden / yz),
         (tokens, model.experts, d_in)])
    matmul = q + kv + out + (up + down).scale(touched) + router.scale(jnp.where(moe, 1.0, 0.0))

    narrow_kv = plan.kv_cache != "bf16" and FORMATS[plan.kv_cache].bytes < 2.0
    attn = functools.reduce(operator.add, (
        attention(chip, kv_batch, q_heads, seg_kv_heads, q_len, context, hd,
                  causal=model.causal,
                  bytes_per_element=plan.kv_bytes,
                  kv_convert_flops=DEQUANT_FLOPS if narrow_kv else 0.0, smooth=smooth,
                  calibration=eff)
        for (seg_kv_heads, kv_batch, q_heads, _), (_, q_len, context)
        in zip(shard, segments, strict=True)))

    ew = dict(bytes_per_element=ab, smooth=smooth, calibration=eff)
    sharded = plan.sequence_parallel or plan.layout == "weight_stationary_2d"
    stream = tokens * model.hidden / (tp if sharded else 1.0)
    norms = elementwise(chip, stream, **ew).scale(2.0)
    residual = elementwise(chip, stream, reads=2.0, **ew).scale(2.0)
    activation = elementwise(chip, tokens * model.top_k * load * model.ffn_hidden / yz,
                             reads=model.mlp_matrices - 1.0, **ew)
    kv_write = elementwise(chip, 2.0 * kv_tokens * kv_heads * hd, reads=0.0,
                           flops_per_element=1.0 + (QUANTIZE_FLOPS if narrow_kv else 0.0),
                           bytes_per_element=plan.kv_bytes, smooth=smooth, calibration=eff)
    elementwise_cost = norms + residual + activation + kv_write

    if plan.layout == "weight_gathered":
        comm = all_gather(system, model.params_per_layer * wb, plan.tp, **link)
    elif plan.layout == "weight_stationary_2d":
        # Per block: gather the d_model / x slice over YZ, all-reduce the partial sums of the
        # block's YZ-sharded projection over X, reduce-scatter the output over YZ (Austin et al.
        # 2025, App. B algorithm). X members sit yz chips apart.
        slice_bytes = tokens * d_in * ab
        gather_scatter = (all_gather(system, slice_bytes, yz, **link)
                          + reduce_scatter(system, slice_bytes, yz, **link)).scale(2.0)
        qkv_width = (model.heads + 2.0 * model.kv_heads) * hd
        partial = (all_reduce(system, tokens * qkv_width / yz * ab, x, stride=yz, **link)
                   + all_reduce(system, tokens * model.top_k * up_width / yz * ab, x, stride=yz,
                                **link))
        reshard = all_to_all(system, tokens * model.heads / tp * hd * ab, sharers, **link)
        comm = gather_scatter + partial + reshard.scale(jnp.where(sharers > 1.0, 2.0, 0.0))
    else:
        # Two all-reduces (or reduce-scatter + all-gather pairs under sequence parallelism: the
        # same bytes); with a batch-sharded KV cache, queries go to and outputs come back from
        # the chips that hold their sequences (two all-to-alls among the sharers).
        comm = all_reduce(system, tokens * model.hidden * ab, plan.tp, **link).scale(2.0)
        reshard = all_to_all(system, tokens * model.heads / tp * hd * ab, sharers, **link)
        comm = comm + reshard.scale(jnp.where(sharers > 1.0, 2.0, 0.0))
    # Expert parallelism: each MoE layer dispatches every token's hidden state to its top_k
    # experts' groups and combines their outputs back: two all-to-alls among the ep groups
    # (members tp chips apart), each chip of a group sending 1 / tp of the group's token copies;
    # the busiest group receives `load` times the mean (DeepSeek-AI 2024, DeepSeek-V3 technical
    # report, Sec. 3.4, dispatch and combine; vLLM and SGLang expert-parallel serving do the
    # same).
    dispatch = all_to_all(system, tokens * model.top_k * model.hidden * ab / tp * load, ep,
                          stride=tp, **link)
    comm = comm + dispatch.scale(2.0 * jnp.where(moe & (ep > 1.0), model.moe_layer_share, 0.0))
    return matmul, attn, elementwise_cost, comm


def _linear(chip, plan: InferencePlan, m, n, k, **kw):
    """One weight GEMM of a served model, in the plan's formats (`InferencePlan.activations`).

    Natively on the activations' engine, with the weights de-quantized in the kernel when
    stored in another format (INT4 weights for an FP8 or 16-bit GEMM) and the activations
    quantized in the kernel that produces them. A chip without that engine, or without block
    scaling for a block-scaled format, runs the GEMM on its 16-bit engine with the weights
    de-quantized and the activations left 16-bit (what vLLM's Marlin kernels do for FP8 weights
    on Ampere). The choice is a `jnp.where` on the engine's rate, so it traces.
    """
    w, a = FORMATS[plan.weights], FORMATS[plan.activations]
    engine = a.engine
    # Storage widths from the plan (the formats' unless overridden, `InferencePlan`).
    wb, out = plan.weight_bytes, plan.activation_bytes
    native = gemm(chip, m, n, k, bytes_per_element=plan.input_bytes, weight_bytes_per_element=wb,
                  output_bytes_per_element=out, engine=engine,
                  weight_convert_flops=0.0 if w.engine == engine else DEQUANT_FLOPS,
                  input_convert_flops=0.0 if engine == "bf16" else QUANTIZE_FLOPS, **kw)
    if engine == "bf16":
        return native
    fallback = gemm(chip, m, n, k, bytes_per_element=out, weight_bytes_per_element=wb,
                    output_bytes_per_element=out, engine="bf16",
                    weight_convert_flops=DEQUANT_FLOPS, **kw)
    block_scaled = a.block_scaled or (w.block_scaled and w.engine == engine)
    if block_scaled and not chip.block_scaling:
        return fallback
    has = chip.rate(engine) > 0.0
    return jax.tree.map(lambda x, y: jnp.where(has, x, y), native, fallback)


# Tokens per sequence and sequences per batch: float32 holds whole numbers exactly up to 2^24
# (16.8 million), beyond the longest context windows published (10 million tokens, Llama 4
# Scout, Meta 2025) and any serving batch.
MAX_COUNT = 2.0**24


def inference_plan_rules(model: Transformer, plan: InferencePlan,
                         system: System) -> list[Rule]:
    """What an inference plan must satisfy on `model` and `system` (see
    `check_inference_plan`)."""
    n = float(system.num_chips)
    rules = [
        Rule(Reason.CHIPS, "InferencePlan.tp * pp * ep", plan.chips, divides(plan.chips, n),
             lambda: f"a divisor of the system's {system.num_chips} chips (whole replicas "
                     f"of the plan)"),
        Rule(Reason.SPLIT, "InferencePlan.pp", plan.pp, divides(plan.pp, model.layers),
             lambda: f"a divisor of the model's {float(model.layers):g} layers"),
        Rule(Reason.SPLIT, "InferencePlan.ep", plan.ep, divides(plan.ep, model.experts),
             lambda: f"a divisor of the model's {float(model.experts):g} experts (1 for a "
                     f"dense model)"),
    ]
    if plan.layout == "weight_stationary":
        # 1D tensor parallelism shards the heads; KV heads are sharded too, or shared by
        # tp / kv_heads chips each (_kv_sharding), so one must divide the other.
        kv = model.kv_heads
        rules += [
            Rule(Reason.SPLIT, "InferencePlan.tp", plan.tp, divides(plan.tp, model.heads),
                 lambda: f"a divisor of the model's {float(model.heads):g} heads"),
            Rule(Reason.SPLIT, "InferencePlan.tp", plan.tp,
                 divides(plan.tp, kv) | divides(kv, plan.tp),
                 lambda: f"a divisor or a multiple of the model's {float(kv):g} KV heads"),
        ]
    return rules


def check_inference_plan(model: Transformer, plan: InferencePlan,
                         system: System) -> Int[Array, "..."]:
    """Check an inference plan against its model and system; its `Reason` flags.

    Whole replicas of the plan must fill the system (tp * pp divides num_chips), pp must divide
    the layers and, for the 1D weight-stationary layout, tp the heads (and tp and the KV heads
    one another). By hand (concrete values) a broken rule is a `ValueError` naming the field,
    its value and what is allowed; traced, the flags say what failed.
    """
    rules = inference_plan_rules(model, plan, system)
    if is_concrete(model, plan):
        check_rules(rules)
    return reason_of(rules)


def _count_rule(field: str, value, lower: float, integer: bool = True) -> Rule:
    """A batch or a length: a whole number (or, for a mean context, any number) in
    [lower, MAX_COUNT]."""
    ok = (value >= lower) & (value <= MAX_COUNT)
    if integer:
        ok = ok & whole(value)
    kind = "a whole number" if integer else "a number"
    return Rule(Reason.WORKLOAD, field, value, ok,
                lambda: f"{kind} in [{lower:g}, {MAX_COUNT:.10g}]")


def _check_workload(rules: list[Rule]) -> Int[Array, "..."]:
    """Raise for a concrete batch or length out of range; the `Reason.WORKLOAD` flag else."""
    check_rules(rules)
    return reason_of(rules)


def check_serve_workload(batch, input_len, output_len) -> Int[Array, "..."]:
    """Check `serve`'s batch and lengths: whole numbers in [1, 2^24] (sequences, prompt tokens,
    generated tokens). Concrete and out of range: a `ValueError` naming the argument, its value
    and the range; traced: `Reason.WORKLOAD` where it fails.
    """
    return _check_workload([_count_rule("serve.batch", _f(batch), 1.0),
                            _count_rule("serve.input_len", _f(input_len), 1.0),
                            _count_rule("serve.output_len", _f(output_len), 1.0)])


def _forward(model: Transformer, plan: InferencePlan, system: System, q_len, context,
             smooth, calibration: Calibration, workload: list[Rule]) -> InferenceReport:
    reason = check_inference_plan(model, plan, system) | _check_workload(workload)
    # An invalid traced length is flagged above; the pass is costed at the nearest valid one,
    # so that no report carries a negative time or an infinite energy.
    q_len = jnp.clip(_f(q_len), 1.0, MAX_COUNT)
    context = jnp.clip(_f(context), 0.0, MAX_COUNT)
    weights, kv, acts, total, _, memory_flags = _memory(model, plan, system, q_len, context)
    reason = reason | memory_flags
    # Next-token logits for the last position of every sequence.
    return _pass(model, plan, system, ((plan.batch, q_len, context),), plan.batch,
                 (weights, kv, acts, total, reason == 0, reason), smooth, calibration)


def _pass(model: Transformer, plan: InferencePlan, system: System, segments, logit_rows, memory,
          smooth, calibration: Calibration, in_flight=1.0) -> InferenceReport:
    """One pass of `segments` (see `_layer`) through every layer of the plan's chips.

    `logit_rows` tokens get next-token logits; `memory` is `_memory`'s tuple (weights, KV cache,
    activations, total, fits, reason flags) for the report.
    `in_flight` batches share the pipeline (1: a batch passes the stages in turn and each chip is
    busy 1 / pp of the pass; pp: micro-batches keep every stage busy), which sets the chips'
    activity and so the energy of the pass.
    """
    chip = system.chip
    weights, kv, acts, total, _, reason = memory
    capacity = _capacity(chip)
    tokens = sum(seqs * q for seqs, q, _ in segments)
    resident = jnp.clip(chip.sram_bytes / weights, 0.0, 1.0)
    if plan.layout == "weight_gathered":
        resident = 0.0  # weights stream through the chip layer by layer
    matmul, attn, ew, comm = _layer(model, plan, system, segments, resident, smooth,
                                    calibration)
    # The request passes every layer: layers / pp per stage, pp stages in turn.
    layers = model.layers
    # Next-token logits (vocabulary split over tp), in the head's format (`head_plan`).
    head_plan = plan.head_plan()
    logits = _linear(chip, head_plan, logit_rows / plan.ep, model.vocab / plan.tp,
                     model.hidden, weight_resident_fraction=resident, smooth=smooth,
                     calibration=_runtime_calibration(plan, calibration))
    matmul_total = matmul.scale(layers) + logits
    # Each chip of a stage's ep groups sends its group's activations to the next stage.
    pp_comm = send_recv(system, tokens / plan.ep * model.hidden * plan.activation_bytes, plan.pp,
                        stride=plan.tp * plan.ep, calibration=calibration).scale(plan.pp - 1.0)
    matmul_time = matmul_total.time
    attention_time = layers * attn.time
    elementwise_time = layers * ew.time
    tp_comm_time = layers * comm.time
    pp_comm_time = pp_comm.time
    time = matmul_time + attention_time + elementwise_time + tp_comm_time + pp_comm_time

    per_chip_flops = matmul_total.flops + layers * (attn.flops + ew.flops)
    # Every stage runs layers / pp of the layers, so a chip is busy in_flight / pp of the pass.
    busy = in_flight / plan.pp
    flops = per_chip_flops * plan.tp * plan.ep
    hbm = (matmul_total.hbm_bytes + layers * (attn.hbm_bytes + ew.hbm_bytes)) * busy
    link_bytes = (layers * (comm.scaleup_bytes + comm.scaleout_bytes)
                  + pp_comm.scaleup_bytes + pp_comm.scaleout_bytes) * busy
    # `ratio`: FLOP and chips x peak FLOP/s exceed 1.8e19 (see train_step).
    mfu = ratio(ratio(flops, plan.chips * chip.peak_flops), time)
    # The weight GEMMs run on the activations' engine where the chip has it (at that engine's
    # energy per MAC), the rest at 16 bits.
    engine = FORMATS[plan.activations].engine
    low_flops = 0.0 * time
    if engine != "bf16" and not (FORMATS[plan.activations].block_scaled
                                 and not chip.block_scaling):
        # The logits GEMM only where the head runs on that engine too (`head_plan`).
        low_matmul = matmul_total.flops
        if FORMATS[head_plan.activations].engine != engine:
            low_matmul = low_matmul - logits.flops
        low_flops = jnp.where(chip.rate(engine) > 0.0, low_matmul, 0.0) * busy
    energy = step_energy(chip, time, plan.chips,
                         compute_fraction=ratio(ratio(per_chip_flops * busy - low_flops,
                                                      chip.peak_flops), time),
                         vector_flops=layers * ew.flops * busy, hbm_bytes=hbm,
                         link_bytes=link_bytes, low_precision_flops=low_flops, engine=engine)
    return InferenceReport(
        time=time, matmul_time=matmul_time, attention_time=attention_time,
        elementwise_time=elementwise_time, tp_comm_time=tp_comm_time, pp_comm_time=pp_comm_time,
        flops=flops, hbm_bytes=hbm, tokens=tokens * jnp.ones_like(time), mfu=mfu,
        weight_bytes=weights, kv_cache_bytes=kv, activation_bytes=acts, memory_per_chip=total,
        memory_capacity=capacity, memory_shortfall=shortfall(total, capacity), fits=reason == 0,
        reason=reason, energy=energy)


@evaluates_once
def prefill(model: Transformer, plan: InferencePlan, system: System, input_len: ArrayLike, *,
            calibration: Calibration = DEFAULT, smooth: bool = False) -> InferenceReport:
    """Prefill: the forward pass over `plan.batch` prompts of `input_len` tokens.

    **Arguments:**

    - `model`: the `Transformer`.
    - `plan`: the `InferencePlan` (tp, pp, batch, element widths).
    - `system`: the `System` (its chip, scale-up and scale-out tiers).
    - `input_len`: prompt tokens per sequence (a whole number >= 1).
    - `calibration`: the models' fitted factors (`dse.models.Calibration`; default `DEFAULT`).
      They reach every operator (without start-up times when `plan.fused`) and every collective
      of the pass: the tensor-parallel all-reduces / gathers / all-to-alls and pipeline sends.
    - `smooth`: smooth rooflines (for gradient-based search).

    A plan or a length given by hand that is invalid (see `check_inference_plan`) is a
    `ValueError`; traced, it is flagged in `reason`.

    **Returns:** `InferenceReport` (time = time to first token).
    """
    workload = [_count_rule("prefill.input_len", _f(input_len), 1.0)]
    return _forward(model, plan, system, input_len, input_len, smooth, calibration, workload)


@evaluates_once
def decode(model: Transformer, plan: InferencePlan, system: System, context_len: ArrayLike, *,
           calibration: Calibration = DEFAULT, smooth: bool = False) -> InferenceReport:
    """One decode step: one new token for each of `plan.batch` sequences.

    **Arguments:**

    - `model`, `plan`, `system`: as `prefill`.
    - `context_len`: tokens in the KV cache that the new token attends to (>= 0; a mean
      context need not be whole).
    - `calibration`, `smooth`: as `prefill`.

    **Returns:** `InferenceReport` (time = time per output token).
    """
    workload = [_count_rule("decode.context_len", _f(context_len), 0.0, integer=False)]
    return _forward(model, plan, system, 1.0, context_len, smooth, calibration, workload)


@evaluates_once
def serve(model: Transformer, plan: InferencePlan, system: System, batch: ArrayLike,
          input_len: ArrayLike, output_len: ArrayLike, *, calibration: Calibration = DEFAULT,
          smooth: bool = False, speculation: Speculation | None = None) -> ServeReport:
    """A batch of requests: prefill, then `output_len` decode steps.

    The decode step is evaluated at the mean context, input_len + (output_len + 1) / 2 (a step's
    time is affine in its context); the KV cache and memory at the final context.

    **Arguments:**

    - `model`, `plan`, `system`: as `prefill` (`batch` replaces `plan.batch`).
    - `batch`: sequences served together.
    - `input_len`: prompt tokens per sequence.
    - `output_len`: generated tokens per sequence.
    - `calibration`, `smooth`: as `prefill` (shared by the prefill and the decode steps).
    - `speculation`: a `dse.models.Speculation` to decode speculatively (None: one token per
      step). The TPOT is then `speculative_decode`'s at the mean context (the draft on the
      target's tensor-parallel chips, unpipelined), `decode` its verification pass, and the
      draft's weights and KV cache and the verified tokens' activations count in the memory.

    **Returns:** `ServeReport`.
    """
    workload_reason = check_serve_workload(batch, input_len, output_len)
    # Traced and invalid: flagged above, costed at the nearest valid values (no negative TTFT,
    # no energy per token divided by zero tokens).
    batch, input_len, output_len = (jnp.clip(_f(x), 1.0, MAX_COUNT)
                                    for x in (batch, input_len, output_len))
    plan = dataclasses.replace(plan, batch=batch)
    kw = dict(calibration=calibration, smooth=smooth)
    pre = prefill(model, plan, system, input_len, **kw)
    mean_context = input_len + 0.5 * (output_len + 1.0)
    final = input_len + output_len
    _, kv, _, total, _, _ = _memory(model, plan, system, 1.0, final)
    _, _, _, pre_total, _, _ = _memory(model, plan, system, input_len, input_len)
    if speculation is None:
        dec = decode(model, plan, system, mean_context, **kw)
        tpot, step_energy_per_token = dec.time, dec.energy / plan.batch
    else:
        # The speculative step's module builds on this one.
        from ._speculative import draft_memory, draft_plan_of, speculative_decode

        spec = speculative_decode(model, plan, system, mean_context, speculation, **kw)
        dec, tpot, step_energy_per_token = spec.verify, spec.tpot, spec.energy_per_token
        verify = speculation.effective()[3]
        # At the final context the verified tokens' activations and the draft's weights and
        # KV cache are held too.
        _, kv, _, total, _, _ = _memory(model, plan, system, verify, final + verify)
        d_weights, d_kv = draft_memory(speculation, model,
                                       dataclasses.replace(draft_plan_of(plan), batch=batch),
                                       system, final + verify)
        kv, total = kv + d_kv, total + d_weights + d_kv
        workload_reason = workload_reason | spec.reason
    memory = jnp.maximum(total, pre_total)
    capacity = _capacity(system.chip)
    reason = (workload_reason | pre.reason | dec.reason
              | memory_reason(system.chip, memory, capacity))
    total_latency = pre.time + output_len * tpot
    generated = plan.batch * output_len
    return ServeReport(
        ttft=pre.time, tpot=tpot, total_latency=total_latency,
        tokens_per_s_per_chip=generated / (total_latency * plan.chips),
        energy_per_token=pre.energy / generated + step_energy_per_token,
        kv_cache_bytes=kv, memory_per_chip=memory, memory_capacity=capacity,
        memory_shortfall=shortfall(memory, capacity), fits=reason == 0, reason=reason,
        prefill=pre, decode=dec)
