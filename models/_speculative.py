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

The draft runs on the target's chips with the target's layout (`draft_plan` overrides); its
weights and its KV cache (over the same context) add to the memory. Not modelled: the draft's
own prefill (a draft of one layer adds a 1 / layers share to the prompt's pass), the
rejection-sampling kernels and the tree's bookkeeping (element-wise, a few per step).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
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
from ._rules import Rule, check_rules, memory_reason, reason_of, shortfall
from ._transformer import Transformer


class Speculation(eqx.Module):
    """How a step of speculative decoding drafts and verifies (float leaves: they vmap).

    **Fields:**

    - `draft`: the draft `Transformer` (a small model of the target's family; for EAGLE, one
      decoder layer of the target's width with the draft's LM head: `eagle_draft`).
    - `acceptance_length`: tokens emitted per target pass, tau (measured; >= 1 and at most
      `draft_passes` + 1).
    - `draft_passes`: sequential draft forward passes per step (chain length gamma, or the
      tree's depth); >= 1.
    - `draft_width`: tokens per sequence in each draft pass (1 for a chain, the top-k of a
      tree); >= 1.
    - `verify_tokens`: tokens per sequence the target scores in its pass (gamma + 1 for a
      chain; a tree's nodes plus its root); >= `draft_passes` + 1.
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
                 lambda: "at least draft_passes + 1 (the drafts of the longest path and the "
                         "token before them)"),
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

    def replace(self, **changes) -> Speculation:
        """A copy with some fields changed (validated like a new one)."""
        return dataclasses.replace(self, **changes)


def chain_acceptance_length(alpha: ArrayLike, draft_tokens: ArrayLike) -> Float[Array, "*batch"]:
    """Expected tokens per target pass of a chain of `draft_tokens` drafts whose tokens the
    target accepts independently with probability `alpha` (Leviathan et al. 2023, Eq. 1):
    (1 - alpha^(gamma + 1)) / (1 - alpha); gamma + 1 at alpha = 1."""
    alpha, gamma = _f(alpha), _f(draft_tokens)
    near_one = jnp.abs(1.0 - alpha) < 1e-6
    a = jnp.where(near_one, 0.5, alpha)
    return jnp.where(near_one, gamma + 1.0, (1.0 - a ** (gamma + 1.0)) / (1.0 - a))


def eagle_draft(target: Transformer, draft_vocab: ArrayLike | None = None) -> Transformer:
    """An EAGLE draft head for `target`: one decoder layer of the target's shape and an LM head
    over `draft_vocab` tokens (default the target's). EAGLE-3's LLaMA-3 heads draft over a
    reduced vocabulary (Li et al. 2025, arXiv:2503.01840, Sec. 3)."""
    vocab = target.vocab if draft_vocab is None else draft_vocab
    name = f"{target.name}-eagle-draft" if target.name else ""
    return target.replace(layers=1.0, vocab=vocab, dense_layers=0.0, name=name)


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
    - `draft_plan`: the draft's layout (default the target's `plan`).
    - `calibration`, `smooth`: as `decode`.

    **Returns:** `SpeculativeReport`.
    """
    draft_plan = plan if draft_plan is None else dataclasses.replace(draft_plan,
                                                                      batch=plan.batch)
    spec = speculation
    rules = spec.rules() + [Rule(Reason.WORKLOAD, "speculative_decode.context_len",
                                 _f(context_len), (_f(context_len) >= 0.0)
                                 & (_f(context_len) <= MAX_COUNT),
                                 lambda: f"in [0, {MAX_COUNT:.10g}]")]
    check_rules(rules[-1:])
    reason = (reason_of(rules) | check_inference_plan(model, plan, system)
              | check_inference_plan(spec.draft, draft_plan, system))
    context = jnp.clip(_f(context_len), 0.0, MAX_COUNT)
    verify, passes = jnp.maximum(spec.verify_tokens, 1.0), jnp.maximum(spec.draft_passes, 1.0)
    width = jnp.maximum(spec.draft_width, 1.0)
    tau = jnp.clip(spec.acceptance_length, 1.0, passes + 1.0)
    batch = plan.batch

    weights, kv, acts, total, _, _ = _memory(model, plan, system, verify, context + verify)
    d_weights, d_kv, d_acts, d_total, _, _ = _memory(spec.draft, draft_plan, system, width,
                                                     context + verify)
    memory = total + d_weights + d_kv
    capacity = _capacity(system.chip)
    reason = reason | memory_reason(system.chip, memory, capacity)
    mem = (weights, kv, acts, total, reason == 0, reason)
    # The target scores every verified token (logits for each), attending over the context.
    checked = _pass(model, plan, system, ((batch, verify, context + verify),), batch * verify,
                    mem, smooth, calibration)
    # One draft pass: `width` tokens per sequence at a context of about the step's middle.
    d_mem = (d_weights, d_kv, d_acts, d_total, reason == 0, reason)
    drafted = _pass(spec.draft, draft_plan, system,
                    ((batch, width, context + 0.5 * verify),), batch * width, d_mem, smooth,
                    calibration)
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
