"""A workload mix as one objective: a weighted portfolio of workloads judged on one chip.

A fleet runs several workloads (dense training, MoE training or serving, long-context training,
recommendation models, ...), each leaning on a different resource. `WorkloadMix` evaluates all
of them on one system in one call and combines them into the fleet time relative to a
reference system:

    mix_time(system) = sum_i w_i * t_i(system) / t_i(reference),   sum_i w_i = 1

where t_i is workload i's time per unit of work (seconds per trained or generated token, or per
recommendation sample) and w_i the share of the
reference fleet's time it takes. mix_time is then the time the new fleet needs for the work the
reference fleet does in unit time (1 at the reference; 0.5 = twice as fast on this portfolio).
It is a pure JAX function of the system, so `dse.sweep` vmaps it and `dse.optimize`
differentiates it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dse.hardware import System
from dse.models import (
    DEFAULT,
    DLRM,
    Calibration,
    InferencePlan,
    RecPlan,
    TrainingPlan,
    Transformer,
    rec_inference,
    rec_train_step,
    serve,
    train_step,
)


@dataclasses.dataclass(frozen=True)
class Workload:
    """One workload of a mix.

    **Fields:**

    - `name`: label (metric names are `time_<name>` and `fits_<name>`).
    - `weight`: share of the reference fleet's time (the weights of a mix are normalized).
    - `evaluate`: `system -> (seconds per unit of work, fits)`, pure JAX.
    """

    name: str
    weight: float
    evaluate: Callable[[System], tuple[Float[Array, ""], Any]]

    def __post_init__(self):
        if not (np.isfinite(self.weight) and self.weight > 0.0):
            raise ValueError(f"Workload.weight of {self.name!r} must be a finite number > 0; "
                             f"got {self.weight}")


def training_workload(name: str, weight: float, model: Transformer, plan: TrainingPlan,
                      num_chips: int, *, calibration: Calibration = DEFAULT,
                      flash_attention: bool = True) -> Workload:
    """A training workload: seconds per trained token of `model` under `plan` on `num_chips`
    chips of the system being judged (its chip and network, resized), and whether it fits."""
    num_chips = int(num_chips)

    def evaluate(system: System):
        r = train_step(model, plan, system.with_num_chips(num_chips), calibration=calibration,
                       smooth=True, flash_attention=flash_attention)
        return 1.0 / r.tokens_per_s, r.fits

    return Workload(name, float(weight), evaluate)


def serving_workload(name: str, weight: float, model: Transformer, plan: InferencePlan,
                     num_chips: int, *, batch: float, input_len: float, output_len: float,
                     calibration: Calibration = DEFAULT) -> Workload:
    """A serving workload: seconds per generated token of `model` served with `plan` (batches
    of `batch` requests of `input_len` prompt and `output_len` generated tokens, prefill then
    decode: `dse.models.serve`) on `num_chips` chips of the system being judged (plan.chips
    per replica, num_chips / plan.chips replicas), and whether it fits."""
    num_chips = int(num_chips)

    def evaluate(system: System):
        r = serve(model, plan, system.with_num_chips(num_chips), batch, input_len, output_len,
                  calibration=calibration, smooth=True)
        return 1.0 / (r.tokens_per_s_per_chip * num_chips), r.fits

    return Workload(name, float(weight), evaluate)


def recsys_workload(name: str, weight: float, model: DLRM, plan: RecPlan, num_chips: int, *,
                    training: bool = True, calibration: Calibration = DEFAULT) -> Workload:
    """A recommendation workload: seconds per sample of `model` trained (or scored, with
    `training=False`) with `plan` on `num_chips` chips of the system being judged
    (`dse.models.rec_train_step` / `rec_inference`), and whether its tables fit."""
    num_chips = int(num_chips)
    step = rec_train_step if training else rec_inference

    def evaluate(system: System):
        r = step(model, plan, system.with_num_chips(num_chips), calibration=calibration,
                 smooth=True)
        return 1.0 / r.samples_per_s, r.fits

    return Workload(name, float(weight), evaluate)


class WorkloadMix:
    """A weighted portfolio of workloads, evaluated on a system in one call.

    **Arguments:**

    - `workloads`: the `Workload`s (names unique).
    - `reference`: the `System` the times are normalized to (evaluated once, here).

    Calling the mix on a system returns `{"mix_time", "fits", "time_<name>",
    "relative_<name>"}`: the portfolio's relative fleet time (see the module docstring), 1.0
    where every workload fits (else 0.0), each workload's seconds per unit of work and its
    time relative to the reference.
    """

    def __init__(self, workloads: Sequence[Workload], reference: System):
        if not workloads:
            raise ValueError("WorkloadMix needs at least one workload; got none")
        names = [w.name for w in workloads]
        if len(set(names)) != len(names):
            raise ValueError(f"WorkloadMix workload names must be unique; got {names}")
        total = sum(w.weight for w in workloads)
        self.workloads = tuple(workloads)
        self.weights = {w.name: w.weight / total for w in workloads}
        self.reference_times = {}
        # One compiled program for every workload at the reference: op by op, GPT-3 training,
        # Mixtral serving and DLRM took 11.7 s here, compiled 4.6 s (notebooks/08). A workload
        # that does not fit there is evaluated again op by op, where a plan that breaks a rule
        # raises its error naming the field (traced, it is only flagged).
        at_reference = jax.jit(lambda s: [w.evaluate(s) for w in self.workloads])(reference)
        for w, (t, fits) in zip(self.workloads, at_reference, strict=True):
            if not bool(np.all(np.asarray(fits))):
                t, _ = w.evaluate(reference)
            t = float(t)
            if not (np.isfinite(t) and t > 0.0):
                raise ValueError(f"workload {w.name!r} has no finite positive time on the "
                                 f"reference system {reference.name!r}; got {t}")
            self.reference_times[w.name] = t

    def __call__(self, system: System) -> Mapping[str, Float[Array, ""]]:
        """The mix's metrics on `system` (see the class docstring)."""
        out: dict[str, Float[Array, ""]] = {}
        mix = 0.0
        fits = True
        for w in self.workloads:
            t, ok = w.evaluate(system)
            rel = t / self.reference_times[w.name]
            out[f"time_{w.name}"] = t
            out[f"relative_{w.name}"] = rel
            mix = mix + self.weights[w.name] * rel
            fits = jnp.logical_and(fits, ok)
        out["mix_time"] = mix
        out["fits"] = jnp.asarray(fits).astype(jnp.result_type(mix))
        return out
