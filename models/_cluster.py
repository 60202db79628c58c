"""A cluster that trains (or serves) a model: time to train under failures, megawatts, dollars.

`train_cluster` composes the step model (`train_step`), the goodput model (`_goodput.py`) and the
cluster's capital and running costs (`dse.hardware.capex`, `network_report`):

- time to train = tokens / (tokens per second of the step) / goodput;
- power = chips at the step's power + hosts + networks, times PUE for the facility;
- cost = capital amortized over the time to train (IT over its lifetime, the building over its
  own) + energy at the facility's power over the whole elapsed time (failed and idle time draw
  power too) + checkpoint storage rented for that time;
- dollars per trained token = cost / tokens.

`serve_cost` does the same per generated token for a serving deployment. Every quantity is a
pure function of the design, so sweeps vmap it and `jax.grad` differentiates dollars per token
with respect to chip, network, reliability and economics fields alike.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dse.hardware import (
    CapexReport,
    Cluster,
    NetworkReport,
    Reason,
    capex,
    network_report,
)

from ._calibration import DEFAULT, Calibration
from ._goodput import GoodputReport, checkpoint_bytes, goodput
from ._inference import InferencePlan, serve
from ._serving import ServingPlan, ServingReport, ServingWorkload, Slo, serve_continuous
from ._training import train_step
from ._training_plan import TrainingPlan
from ._transformer import Transformer


class ClusterReport(eqx.Module):
    """What training `tokens` tokens on a cluster takes (SI units; dollars).

    - `step_time`, `tokens_per_s`, `mfu`: the training step (`train_step`).
    - `goodput`: the `GoodputReport` (failures, checkpoints, restarts, spares).
    - `time_to_train`: expected elapsed time, s.
    - `chip_power`: one chip's power during the step, W; `it_power`: chips, hosts and
      networks, W; `facility_power`: times PUE, W.
    - `capex`: the `CapexReport` (spares included); `network`: the `NetworkReport`.
    - `capital_cost`, `energy_cost`, `storage_cost` (sum `total_cost`), dollars over the run;
      `cost_per_token`: dollars per trained token.
    - `fits`, `reason`: feasibility (`dse.hardware.Reason` flags: the step's, and NETWORK when
      the network's tiers and radix cannot connect the chips).
    """

    step_time: Float[Array, "*batch"]
    tokens_per_s: Float[Array, "*batch"]
    mfu: Float[Array, "*batch"]
    goodput: GoodputReport
    time_to_train: Float[Array, "*batch"]
    chip_power: Float[Array, "*batch"]
    it_power: Float[Array, "*batch"]
    facility_power: Float[Array, "*batch"]
    capex: CapexReport
    network: NetworkReport
    capital_cost: Float[Array, "*batch"]
    energy_cost: Float[Array, "*batch"]
    storage_cost: Float[Array, "*batch"]
    total_cost: Float[Array, "*batch"]
    cost_per_token: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Int[Array, "*batch"]

    @property
    def megawatts(self) -> Float[Array, "*batch"]:
        """Facility power, MW."""
        return self.facility_power / 1e6

    def metrics(self) -> dict[str, Float[Array, "*batch"]]:
        """The headline numbers as a flat dict (the objective of a sweep or an optimization):
        `cost_per_token` ($), `time_to_train` (s), `megawatts` (MW), `goodput`, `mtbf` (s),
        `step_time` (s), `tokens_per_s`, `capex` ($), `network_cost` ($), `total_cost` ($),
        `fits` (1.0 or 0.0)."""
        return {"cost_per_token": self.cost_per_token, "time_to_train": self.time_to_train,
                "megawatts": self.megawatts, "goodput": self.goodput.goodput,
                "mtbf": self.goodput.mtbf, "step_time": self.step_time,
                "tokens_per_s": self.tokens_per_s, "capex": self.capex.total,
                "network_cost": self.network.cost, "total_cost": self.total_cost,
                "fits": self.fits.astype(self.time_to_train.dtype)}


def _network_reason(network: NetworkReport, chips) -> Array:
    return jnp.where(network.capacity < chips * (1.0 - 1e-6), int(Reason.NETWORK),
                     0).astype(jnp.int32)


def _facility_power(cluster: Cluster, chips, chip_power, network: NetworkReport):
    """(IT power, facility power): `chips` chips at `chip_power` with their hosts and networks,
    and that times PUE, W."""
    e = cluster.economics
    it = (chips * chip_power + chips / cluster.system.network.host_chips * e.host_power
          + network.power)
    return it, e.pue * it


def train_cluster(model: Transformer, plan: TrainingPlan, cluster: Cluster, tokens: ArrayLike,
                  *, calibration: Calibration = DEFAULT, smooth: bool = False,
                  flash_attention: bool = True) -> ClusterReport:
    """Time, power and cost of training `model` on `tokens` tokens with `plan` on `cluster`.

    **Arguments:**

    - `model`: the `Transformer`.
    - `plan`: the `TrainingPlan` (its `chips` are the job's size).
    - `cluster`: the `Cluster` (system with its network, reliability, economics).
    - `tokens`: tokens to train on.
    - `calibration`, `smooth`, `flash_attention`: as `train_step`.

    **Returns:** a `ClusterReport`.
    """
    system, r, e = cluster.system, cluster.reliability, cluster.economics
    step = train_step(model, plan, system, calibration=calibration, smooth=smooth,
                      flash_attention=flash_attention)
    chips = plan.chips
    bought = chips * (1.0 + r.spare_fraction)
    network = network_report(system, e, bought)
    cap = capex(system, e, bought, network)
    gp = goodput(cluster, chips=chips, state_bytes=checkpoint_bytes(model))
    time = tokens / step.tokens_per_s / gp.goodput
    chip_power = step.energy / (step.step_time * chips)
    it_power, facility_power = _facility_power(cluster, chips, chip_power, network)
    capital = cap.per_second * time
    energy = facility_power * time * e.electricity_price
    storage = e.storage_cost * r.checkpoint_bandwidth * time
    total = capital + energy + storage
    reason = step.reason | _network_reason(network, bought)
    return ClusterReport(
        step_time=step.step_time, tokens_per_s=step.tokens_per_s, mfu=step.mfu, goodput=gp,
        time_to_train=time, chip_power=chip_power, it_power=it_power,
        facility_power=facility_power, capex=cap, network=network, capital_cost=capital,
        energy_cost=energy, storage_cost=storage, total_cost=total,
        cost_per_token=total / tokens, fits=reason == 0, reason=reason)


class ServeCostReport(eqx.Module):
    """Dollars and watts per generated token of a serving deployment (SI; dollars).

    - `cost_per_million_tokens`: dollars per million generated tokens (capital + energy).
    - `tokens_per_s_per_chip`: generated tokens per second per chip (`serve`).
    - `chip_power`: one chip's power while serving, W; `facility_power`: of the deployment's
      chips with their hosts and networks, times PUE, W.
    - `ttft`, `tpot`: time to first token and per output token, s.
    - `fits`, `reason`: feasibility.
    """

    cost_per_million_tokens: Float[Array, "*batch"]
    tokens_per_s_per_chip: Float[Array, "*batch"]
    chip_power: Float[Array, "*batch"]
    facility_power: Float[Array, "*batch"]
    ttft: Float[Array, "*batch"]
    tpot: Float[Array, "*batch"]
    fits: Bool[Array, "*batch"]
    reason: Int[Array, "*batch"]


def serve_cost(model: Transformer, plan: InferencePlan, cluster: Cluster, batch: ArrayLike,
               input_len: ArrayLike, output_len: ArrayLike, *,
               calibration: Calibration = DEFAULT) -> ServeCostReport:
    """Dollars per million generated tokens of `model` served with `plan` on `cluster`.

    **Arguments:**

    - `model`, `plan`, `batch`, `input_len`, `output_len`, `calibration`: as `serve`.
    - `cluster`: the `Cluster` (its system serves; economics price it).

    **Returns:** a `ServeCostReport`.
    """
    system, e = cluster.system, cluster.economics
    report = serve(model, plan, system, batch, input_len, output_len, calibration=calibration)
    chips = plan.chips
    network = network_report(system, e, chips)
    cap = capex(system, e, chips, network)
    rate = report.tokens_per_s_per_chip * chips
    chip_power = report.energy_per_token * report.tokens_per_s_per_chip
    _, facility_power = _facility_power(cluster, chips, chip_power, network)
    dollars_per_s = cap.per_second + facility_power * e.electricity_price
    reason = report.reason | _network_reason(network, chips)
    return ServeCostReport(
        cost_per_million_tokens=1e6 * dollars_per_s / rate,
        tokens_per_s_per_chip=report.tokens_per_s_per_chip, chip_power=chip_power,
        facility_power=facility_power, ttft=report.ttft, tpot=report.tpot,
        fits=reason == 0, reason=reason)


def serving_cost(model: Transformer, plan: ServingPlan, cluster: Cluster,
                 workload: ServingWorkload, slo: Slo | None = None, *,
                 calibration: Calibration = DEFAULT,
                 report: ServingReport | None = None) -> ServeCostReport:
    """Dollars per million output tokens of a deployment served with in-flight batching.

    The deployment (`serve_continuous`) runs at full load (`slo` None) or at the most load that
    meets `slo` (its goodput); its chips, hosts and networks are priced as in `serve_cost`, the
    chips drawing their full-load power (an upper bound below full load).

    **Arguments:** `model`, `plan`, `workload`, `calibration` as `serve_continuous`; `cluster`
    the `Cluster` whose system serves and whose economics price it; `slo` the `Slo` or None.

    **Returns:** `ServeCostReport`: `tokens_per_s_per_chip` at that load, `ttft`/`tpot` at the
    objective's quantile (with no objective: the full-load prefill of a prompt, no queue wait,
    and the full-load TPOT); cost inf with `Reason.SLO` when no load meets `slo`. `report`: the
    plan's `ServingReport` if already evaluated (e.g. `best_serving_plan(...).report`).
    """
    system, e = cluster.system, cluster.economics
    if report is None:
        report = serve_continuous(model, plan, system, workload, calibration=calibration)
    if slo is None:
        tokens, ttft, tpot = report.tokens_per_s, report.prefill_time[..., -1], \
            report.iteration_time
        reason = report.reason
    else:
        g = report.goodput(slo)
        tokens, ttft, tpot, reason = g.tokens_per_s, g.ttft, g.tpot, g.reason
    chips = plan.chips
    network = network_report(system, e, chips)
    cap = capex(system, e, chips, network)
    _, facility_power = _facility_power(cluster, chips, report.chip_power, network)
    dollars_per_s = cap.per_second + facility_power * e.electricity_price
    reason = reason | _network_reason(network, chips)
    served = tokens > 0.0
    cost = jnp.where(served, 1e6 * dollars_per_s / jnp.where(served, tokens, 1.0), jnp.inf)
    return ServeCostReport(
        cost_per_million_tokens=cost, tokens_per_s_per_chip=tokens / chips,
        chip_power=report.chip_power, facility_power=facility_power, ttft=ttft, tpot=tpot,
        fits=reason == 0, reason=reason)
