"""Speculative decoding: a draft proposes tokens, the target verifies them in one pass.

A decode step of plain autoregression reads every weight for one token per sequence; at small
batches it is bound by memory bandwidth, and the matrix engines idle. Speculative decoding
(Leviathan et al. 2023, arXiv:2211.17192; Chen et al. 2023, arXiv:2302.01318) spends that idle
compute: a cheap draft proposes tokens, the target scores all of them in one forward pass (a
short "prefill" of `verify_tokens` query tokens per sequence over the KV cache), and the
longest prefix the target agrees with is kept, plus the target's own next token. The output is
the target's (lossless); the gain is the tokens emitted per target pass, the acceptance length
tau, against the extra work of the draft passes and of the wider verification pass.

One step, per sequence of the batch (`Speculation`):

- `draft_passes` sequential forward passes of the `draft` model, each over `draft_width`
  tokens per sequence: a chain of gamma drafts is gamma passes of width 1 (Leviathan et al.,
  Alg. 1); an EAGLE-2/3 draft tree of depth d and top-k branching is d passes of width k
  (Li et al. 2024, arXiv:2406.16858, Sec. 4.1, expansion phase), each with its LM head over
  the draft vocabulary (the draft's `vocab`);
- one target pass over `verify_tokens` tokens per sequence (a chain: gamma + 1; a tree: its
  nodes plus the root), attending causally to the context and to each other (a tree mask
  attends less; the causal count is an upper bound), with logits for every one of them;
- `acceptance_length` tokens emitted (tau: 1 <= tau <= draft_passes + 1). It is a property of
  the draft, the target and the data, measured with them (published beside the speed-ups), an
  input here; `chain_acceptance_length` gives Leviathan et al.'s expectation for a chain with
  a per-token acceptance rate alpha: (1 - alpha^(gamma + 1)) / (1 - alpha) (their Eq. 1).

Time per output token is (draft passes + verification) / tau. The verification pass costs
about a plain step while it stays bound by the weights' bandwidth, which is why the method pays
at small batches and stops paying as the batch makes decode compute-bound.

The draft runs on the target's tensor-parallel chips, unpipelined (the target's plan with
pp = 1: a one-layer head is not split into stages; `draft_plan` overrides). Its layers' weights
and its KV cache (over the same context) add to the memory; its embedding is the target's
(EAGLE reads the target's token embeddings) and so is its LM head when it drafts over the
target's vocabulary (EAGLE-1/2), so only a head over its own reduced vocabulary (EAGLE-3) adds
weights (`draft_weight_bytes`). Not modelled: the draft's own prefill (a draft of one layer
adds a 1 / layers share to the prompt's pass), the rejection-sampling kernels, the tree's
bookkeeping (element-wise, a few per step) and the KV slots a runtime reserves per sequence for
the drafts.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dse.hardware import Reason, System
from dse.hardware._validate import as_float_array

from ._calibration import DEFAULT, Calibration
from ._inference import (
    MAX_COUNT,
    InferencePlan,
    InferenceReport,
    _capacity,
    _memory,
    _optional_float,
    _pass,
    check_inference_plan,
)
from ._operators import _f, ratio
from ._rules import Rule, check_rules, is_concrete, memory_reason, reason_of, shortfall
from ._transformer import Transformer


class Speculation(eqx.Module):
    """How a step of speculative decoding drafts and verifies (float leaves: they vmap).

    **Fields:**

    - `draft`: the draft `Transformer` (a small model of the target's family; for EAGLE, one
      dense decoder layer of the target's width with the draft's LM head: `eagle_draft`).
    - `acceptance_length`: tokens emitted per target pass, tau (measured; >= 1 and at most
      `draft_passes` + 1).
    - `draft_passes`: sequential draft forward passes per step (chain length gamma, or the
      tree's depth); >= 1.
    - `draft_width`: tokens per sequence in each draft pass (1 for a chain, the top-k of a
      tree); >= 1.
    - `verify_tokens`: tokens per sequence the target scores in its pass, the root included:
      gamma + 1 for a chain (the default, `draft_passes` x `draft_width` + 1); for a tree its
      selected nodes plus the root, which may exceed the tokens the draft passes ran (EAGLE-2
      keeps the best of each pass's width x top-k candidates); at least `draft_passes` + 1.
    """

    draft: Transformer
    acceptance_length: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    draft_passes: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    draft_width: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    # None: the chain's (`__post_init__`).
    verify_tokens: Float[Array, "*batch"] = eqx.field(converter=_optional_float, default=None)

    def __post_init__(self):
        # A chain verifies its drafts and the token before them.
        if self.verify_tokens is None:
            self.verify_tokens = self.draft_passes * self.draft_width + 1.0

    def rules(self) -> list[Rule]:
        """The fields' ranges, as `Reason.WORKLOAD` rules."""
        tau, passes = _f(self.acceptance_length), _f(self.draft_passes)
        width, verify = _f(self.draft_width), _f(self.verify_tokens)
        return [
            Rule(Reason.WORKLOAD, "Speculation.draft_passes", passes,
                 (passes >= 1.0) & (passes <= MAX_COUNT), lambda: f"in [1, {MAX_COUNT:.10g}]"),
            Rule(Reason.WORKLOAD, "Speculation.draft_width", width,
                 (width >= 1.0) & (width <= MAX_COUNT), lambda: f"in [1, {MAX_COUNT:.10g}]"),
            Rule(Reason.WORKLOAD, "Speculation.verify_tokens", verify,
                 (verify >= passes + 1.0) & (verify <= MAX_COUNT),
                 lambda: f"in [draft_passes + 1, {MAX_COUNT:.10g}] (at least the drafts of "
                         "the longest path and the root)"),
            Rule(Reason.WORKLOAD, "Speculation.acceptance_length", tau,
                 (tau >= 1.0) & (tau <= passes + 1.0),
                 lambda: "in [1, draft_passes + 1] (a step emits the accepted drafts of one "
                         "path and the target's next token)"),
        ]

    def __check_init__(self):
        if not isinstance(self.draft, Transformer):
            raise ValueError(f"Speculation.draft must be a Transformer; got "
                             f"{type(self.draft).__name__}")
        check_rules(self.rules())  # by hand: a value out of range is named; traced: flagged

    def effective(self):
        """(tau, draft_passes, draft_width, verify_tokens) held in their ranges, for a traced
        value out of range (flagged by `rules`): finite figures, never NaN. Inside the range
        the values and their derivatives are the fields' own."""
        passes = _within(_f(self.draft_passes), 1.0, MAX_COUNT)
        width = _within(_f(self.draft_width), 1.0, MAX_COUNT)
        verify = _within(_f(self.verify_tokens), passes + 1.0, MAX_COUNT)
        tau = _within(_f(self.acceptance_length), 1.0, passes + 1.0)
        return tau, passes, width, verify

    def replace(self, **changes) -> Speculation:
        """A copy with some fields changed (validated like a new one). A chain (verifying
        the default `draft_passes` x `draft_width` + 1 tokens) whose passes or width change
        verifies the new chain's tokens unless `verify_tokens` is given too."""
        if ({"draft_passes", "draft_width"} & set(changes) and "verify_tokens" not in changes
                and is_concrete(self.verify_tokens, self.draft_passes, self.draft_width)
                and np.all(np.asarray(self.verify_tokens)
                           == np.asarray(self.draft_passes * self.draft_width + 1.0))):
            changes["verify_tokens"] = None
        return dataclasses.replace(self, **changes)


def _within(x, lower, upper):
    """`x` where it lies in [lower, upper] (its derivative kept, at the bounds too), else the
    nearest bound."""
    return jnp.where((x >= lower) & (x <= upper), x, jnp.clip(x, lower, upper))


def chain_acceptance_length(alpha: ArrayLike, draft_tokens: ArrayLike) -> Float[Array, "*batch"]:
    """Expected tokens per target pass of a chain of `draft_tokens` drafts whose tokens the
    target accepts independently with probability `alpha` (Leviathan et al. 2023, Eq. 1):
    (1 - alpha^(gamma + 1)) / (1 - alpha), gamma + 1 at alpha = 1.

    Written as expm1((gamma + 1) l) / expm1(l) with l = ln alpha (no cancellation in float32
    near alpha = 1), and within 1e-4 of l = 0 as its expansion (gamma + 1)(1 + gamma l / 2),
    whose derivative at alpha = 1 is the exact gamma (gamma + 1) / 2. `alpha` in [0, 1] and
    `draft_tokens` >= 0 (by hand, a `ValueError` names the one out of range).
    """
    alpha, gamma = _f(alpha), _f(draft_tokens)
    check_rules([
        Rule(Reason.WORKLOAD, "chain_acceptance_length.alpha", alpha,
             (alpha >= 0.0) & (alpha <= 1.0), lambda: "in [0, 1]"),
        Rule(Reason.WORKLOAD, "chain_acceptance_length.draft_tokens", gamma,
             (gamma >= 0.0) & (gamma <= MAX_COUNT), lambda: f"in [0, {MAX_COUNT:.10g}]")])
    a = _within(alpha, 0.0, 1.0)
    log_a = jnp.log(jnp.maximum(a, 1e-30))
    near = log_a > -1e-4
    safe = jnp.where(near, -1.0, log_a)
    exact = jnp.expm1((gamma + 1.0) * safe) / jnp.expm1(safe)
    return jnp.where(near, (gamma + 1.0) * (1.0 + 0.5 * gamma * log_a), exact)


def eagle_draft(target: Transformer, draft_vocab: ArrayLike | None = None) -> Transformer:
    """An EAGLE draft head for `target`: one dense decoder layer of the target's width (an MoE
    target's head is a dense layer of its expert width, as NVIDIA ModelOpt's EAGLE heads are
    Llama layers) and an LM head over `draft_vocab` tokens (default the target's, shared with
    it). EAGLE-3's LLaMA-3 heads draft over a reduced vocabulary of their own (Li et al. 2025,
    arXiv:2503.01840, Sec. 3)."""
    vocab = target.vocab if draft_vocab is None else draft_vocab
    name = f"{target.name}-eagle-draft" if target.name else ""
    return target.replace(layers=1.0, vocab=vocab, dense_layers=0.0, experts=1.0, top_k=1.0,
                          shared_experts=0.0, name=name)


def draft_weight_bytes(speculation: Speculation, target: Transformer,
                       draft_plan: InferencePlan) -> Float[Array, "*batch"]:
    """Bytes per chip of the draft's own weights under `draft_plan`: its layers, and its LM
    head only where it drafts over a vocabulary of its own (its embedding, and a head over the
    target's vocabulary, are the target's)."""
    draft = speculation.draft
    layers = draft.params - draft.embedding_params
    own_head = jnp.where(draft.vocab != target.vocab, draft.vocab * draft.hidden, 0.0)
    return (layers / draft_plan.pp * draft_plan.weight_bytes
            + own_head * draft_plan.head_weight_bytes) / draft_plan.tp


def draft_plan_of(plan: InferencePlan) -> InferencePlan:
    """The draft's layout by default: the target's tensor parallelism, unpipelined."""
    return dataclasses.replace(plan, pp=1.0 + 0.0 * plan.pp)


def check_draft_plan(speculation: Speculation, draft_plan: InferencePlan,
                     system: System) -> Int[Array, "..."]:
    """`check_inference_plan` of the draft under its plan, an error naming the draft."""
    try:
        return check_inference_plan(speculation.draft, draft_plan, system)
    except ValueError as err:
        raise ValueError(f"the draft model ({speculation.draft.name}) under its plan: {err}") \
            from None


class SpeculativeReport(eqx.Module):
    """One step of speculative decoding for a batch (SI units).

    - `tpot`: time per output token of a sequence, s: `step_time` / `acceptance_length`.
    - `step_time`: the draft passes and the verification pass, s.
    - `speedup`: the plain decode step's time over `tpot` (> 1 where speculation pays).
    - `energy_per_token`: energy of a step over the tokens it emits, J.
    - `memory_per_chip`: the target's weights, KV cache and activations plus the draft's,
      bytes; `memory_capacity`, `memory_shortfall` as in `InferenceReport`.
    - `fits`, `reason`: feasibility (`Reason` flags: the plans', the fields', memory).
    - `verify`, `draft`, `plain`: `InferenceReport`s of the verification pass, of one draft
      pass and of a plain decode step at the same context.
    """

    tpot: Float[Array, "..."]
    step_time: Float[Array, "..."]
    speedup: Float[Array, "..."]
    energy_per_token: Float[Array, "..."]
    memory_per_chip: Float[Array, "..."]
    memory_capacity: Float[Array, "..."]
    memory_shortfall: Float[Array, "..."]
    fits: Bool[Array, "..."]
    reason: Int[Array, "..."]
    verify: InferenceReport
    draft: InferenceReport
    plain: InferenceReport


def draft_memory(speculation: Speculation, target: Transformer, draft_plan: InferencePlan,
                 system: System, context) -> tuple:
    """(weights, KV cache) bytes per chip the draft adds at `context` tokens under `draft_plan`
    (`draft_plan.batch` sequences): its own weights (`draft_weight_bytes`) and its layers'
    KV cache."""
    kv = _memory(speculation.draft, draft_plan, system, 1.0, context)[1]
    return draft_weight_bytes(speculation, target, draft_plan), kv


def speculative_decode(model: Transformer, plan: InferencePlan, system: System,
                       context_len: ArrayLike, speculation: Speculation, *,
                       draft_plan: InferencePlan | None = None,
                       calibration: Calibration = DEFAULT,
                       smooth: bool = False) -> SpeculativeReport:
    """One step of speculative decoding for `plan.batch` sequences at `context_len` tokens.

    **Arguments:**

    - `model`, `plan`, `system`: the target, its layout and its chips (as `decode`).
    - `context_len`: tokens in the KV cache before the step (>= 0; a mean need not be whole).
    - `speculation`: the `Speculation` (draft model, passes, width, verified tokens, tau).
    - `draft_plan`: the draft's layout (default the target's, unpipelined: `draft_plan_of`).
    - `calibration`, `smooth`: as `decode`.

    **Returns:** `SpeculativeReport`; a traced field out of range is flagged
    (`Reason.WORKLOAD`) and costed at the nearest valid value.
    """
    draft_plan = draft_plan_of(plan) if draft_plan is None else draft_plan
    draft_plan = dataclasses.replace(draft_plan, batch=plan.batch)
    spec = speculation
    rules = spec.rules() + [Rule(Reason.WORKLOAD, "speculative_decode.context_len",
                                 _f(context_len), (_f(context_len) >= 0.0)
                                 & (_f(context_len) <= MAX_COUNT),
                                 lambda: f"in [0, {MAX_COUNT:.10g}]")]
    check_rules(rules[-1:])
    reason = (reason_of(rules) | check_inference_plan(model, plan, system)
              | check_draft_plan(spec, draft_plan, system))
    context = jnp.clip(_f(context_len), 0.0, MAX_COUNT)
    tau, passes, width, verify = spec.effective()
    batch = plan.batch

    weights, kv, acts, total, _, _ = _memory(model, plan, system, verify, context + verify)
    d_weights, d_kv = draft_memory(spec, model, draft_plan, system, context + verify)
    memory = total + d_weights + d_kv
    capacity = _capacity(system.chip)
    reason = reason | memory_reason(system.chip, memory, capacity)
    mem = (weights, kv, acts, total, reason == 0, reason)
    # The target scores every verified token (logits for each), attending over the context.
    checked = _pass(model, plan, system, ((batch, verify, context + verify),), batch * verify,
                    mem, smooth, calibration)
    # A draft pass: `width` tokens per sequence; pass k of a step attends about k tokens past
    # the context, (passes + 1) / 2 on average.
    drafted = _pass(spec.draft, draft_plan, system,
                    ((batch, width, context + 0.5 * (passes + 1.0)),), batch * width, mem,
                    smooth, calibration)
    plain = _pass(model, plan, system, ((batch, 1.0, context + 1.0),), batch, mem, smooth,
                  calibration)
    step = checked.time + passes * drafted.time
    tpot = step / tau
    energy = (checked.energy + passes * drafted.energy) / (tau * batch)
    return SpeculativeReport(
        tpot=tpot, step_time=step, speedup=ratio(plain.time, tpot), energy_per_token=energy,
        memory_per_chip=memory, memory_capacity=capacity,
        memory_shortfall=shortfall(memory, capacity), fits=reason == 0, reason=reason,
        verify=checked, draft=drafted, plain=plain)
