"""Goodput of a long training job: failures, checkpoints (Young / Daly), restarts, hot spares.

A job checkpoints every tau seconds of work, a checkpoint stalls it for delta, and failures
arrive as a Poisson process of mean interval M (the job's MTBF, `dse.hardware.failure_rates`).
Each failure costs the work since the last checkpoint plus a restart of R seconds (detection,
rescheduling, initialisation, reading the checkpoint back, and waiting for a spare host when
none is free). Daly's model for exponential failures gives the wall time per unit of useful work
(J. T. Daly, "A higher order estimate of the optimum checkpoint interval for restart dumps",
Future Generation Computer Systems 22(3), 2006, eq. 13):

    T_wall / T_work = M e^(R/M) (e^((tau + delta)/M) - 1) / tau,

so goodput (useful time / elapsed time, the "effective training time" of Llama 3 and MegaScale)
is its inverse, computed in logs so that it stays finite (and tends to 0) when failures come
faster than checkpoints. The interval is Daly's higher-order optimum (his eq. 37):

    tau = sqrt(2 delta M) [1 + sqrt(delta / 2M) / 3 + (delta / 2M) / 9] - delta   (delta < 2M)
    tau = M                                                                       (otherwise)

which reproduces the paper's own figures (M = 24 h, 6 h, 15 min, delta = 5 min: 117, 57 and
9.1 min; tests check them) and reduces to Young's sqrt(2 delta M) for delta << M (J. W. Young,
"A first order approximation to the optimum checkpoint interval", CACM 17(9), 1974).

Hot spares: a failed host is replaced from `spare_fraction` spare hosts while it is repaired
(`repair_time`). Hosts under repair are the busy servers of an M/G/infinity queue, Poisson with
mean (host failure rate x hosts x repair time); a hardware failure finds no spare free with the
probability that they exceed the spares, and then waits for the first of the S + 1 repairs to
finish (repair_time / (S + 1) for exponential repairs). Planned interruptions (maintenance) cost
a restart without lost work.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jax.scipy.special import gammainc
from jaxtyping import Array, ArrayLike, Float

from dse.hardware import Cluster, FailureRates, failure_rates

from ._memory import OPTIMIZER_BYTES, WEIGHT_BYTES
from ._transformer import Transformer

# A checkpoint holds the fp32 main weights and both Adam moments (12 bytes per parameter,
# Rajbhandari et al., "ZeRO", SC20, Sec. 3.1) and the 16-bit weights (2 bytes): 14 bytes per
# parameter, the same bytes per parameter as the training-memory model (`_memory.py`).
CHECKPOINT_BYTES_PER_PARAM = OPTIMIZER_BYTES + WEIGHT_BYTES


def checkpoint_bytes(model: Transformer) -> Float[Array, "*batch"]:
    """Bytes of one full training checkpoint of `model` (weights and optimizer state)."""
    return CHECKPOINT_BYTES_PER_PARAM * model.params


def _safe(x, ok, fill=1.0):
    return jnp.where(ok, x, fill)


def daly_interval(checkpoint_time: ArrayLike, mtbf: ArrayLike) -> Float[Array, "*batch"]:
    """Daly's higher-order optimum checkpoint interval (work between checkpoints), s.

    **Arguments:**

    - `checkpoint_time`: delta, the stall of one checkpoint, s (> 0).
    - `mtbf`: M, the job's mean time between interruptions, s (> 0).

    **Returns:** tau, s (M when delta >= 2M).
    """
    delta = jnp.asarray(checkpoint_time)
    m = jnp.asarray(mtbf)
    short = delta < 2.0 * m
    x = _safe(delta / (2.0 * m), short, 0.5)
    young = jnp.sqrt(2.0 * delta * _safe(m, short))
    tau = young * (1.0 + jnp.sqrt(x) / 3.0 + x / 9.0) - delta
    return jnp.where(short, tau, m)


def _log_expm1(x):
    """log(e^x - 1) for x > 0, without overflow for large x."""
    big = x > 20.0
    small = jnp.log(jnp.expm1(jnp.where(big, 1.0, x)))
    large = x + jnp.log1p(-jnp.exp(-jnp.where(big, x, 21.0)))
    return jnp.where(big, large, small)


def daly_goodput(interval: ArrayLike, checkpoint_time: ArrayLike, mtbf: ArrayLike,
                 restart_cost: ArrayLike) -> Float[Array, "*batch"]:
    """Useful fraction of wall time under Daly's exponential-failure model (0..1).

    **Arguments:**

    - `interval`: tau, work between checkpoints, s.
    - `checkpoint_time`: delta, s.
    - `mtbf`: M, s.
    - `restart_cost`: R, time from a failure to resuming from the checkpoint, s.

    **Returns:** goodput = tau / (M e^(R/M) (e^((tau + delta)/M) - 1)).
    """
    tau = jnp.asarray(interval)
    m = jnp.asarray(mtbf)
    log_g = jnp.log(tau) - jnp.log(m) - restart_cost / m - _log_expm1((tau + checkpoint_time)
                                                                       / m)
    return jnp.exp(log_g)


class GoodputReport(eqx.Module):
    """How a job spends its wall time under failures (SI units).

    - `goodput`: useful fraction of elapsed time (0..1).
    - `mtbf`: mean time between unexpected interruptions of the job, s.
    - `rates`: the interruption rates by component (`dse.hardware.FailureRates`, 1/s).
    - `checkpoint_time`: stall of one checkpoint, s; `checkpoint_interval`: work between them, s.
    - `restore_time`: reading a checkpoint back, s.
    - `spare_wait`: mean wait for a free spare per hardware failure, s.
    - `restart_cost`: mean time from a failure to resuming (restart + restore + spare wait), s.
    - `checkpoint_overhead`, `rework_overhead`, `restart_overhead`, `maintenance_overhead`:
      first-order shares of elapsed time lost to checkpoints (delta / tau), recomputing lost
      work ((tau + delta) / 2M), restarts (R / M) and planned restarts, for the breakdown.
    """

    goodput: Float[Array, "*batch"]
    mtbf: Float[Array, "*batch"]
    rates: FailureRates
    checkpoint_time: Float[Array, "*batch"]
    checkpoint_interval: Float[Array, "*batch"]
    restore_time: Float[Array, "*batch"]
    spare_wait: Float[Array, "*batch"]
    restart_cost: Float[Array, "*batch"]
    checkpoint_overhead: Float[Array, "*batch"]
    rework_overhead: Float[Array, "*batch"]
    restart_overhead: Float[Array, "*batch"]
    maintenance_overhead: Float[Array, "*batch"]


def spare_wait(hardware_rate: ArrayLike, hosts: ArrayLike, repair_time: ArrayLike,
               spare_fraction: ArrayLike) -> Float[Array, "*batch"]:
    """Mean wait for a free spare host per hardware failure, s.

    **Arguments:**

    - `hardware_rate`: the job's hardware failure rate (each takes a host out), 1/s.
    - `hosts`: hosts of the job.
    - `repair_time`: mean time to repair a host, s.
    - `spare_fraction`: spare hosts per host of the job.

    **Returns:** P(hosts under repair > spares) x repair_time / (spares + 1).
    """
    spares = spare_fraction * hosts
    in_repair = hardware_rate * repair_time  # mean of the Poisson count under repair
    ok = in_repair > 0
    short = jnp.where(ok, gammainc(spares + 1.0, _safe(in_repair, ok)), 0.0)
    return short * repair_time / (spares + 1.0)


def goodput(cluster: Cluster, *, chips: ArrayLike, state_bytes: ArrayLike) -> GoodputReport:
    """Goodput of a job on `chips` chips of `cluster` with `state_bytes` of checkpoint.

    **Arguments:**

    - `cluster`: the `Cluster` (its system's chip and network, its reliability).
    - `chips`: chips the job runs on (float: cluster size differentiates).
    - `state_bytes`: bytes of one checkpoint (`checkpoint_bytes(model)`).

    **Returns:** a `GoodputReport`.
    """
    system, r = cluster.system, cluster.reliability
    rates = failure_rates(r, chips=chips, hbm_bytes=system.chip.hbm_bytes,
                          network=system.network)
    total = rates.total
    ok = total > 0
    mtbf = jnp.where(ok, 1.0 / _safe(total, ok), jnp.inf)
    m = _safe(mtbf, ok, 1.0)
    delta = state_bytes / r.checkpoint_bandwidth
    restore = state_bytes / r.restore_bandwidth
    hosts = chips / system.network.host_chips
    wait = spare_wait(rates.hardware, hosts, r.repair_time, r.spare_fraction)
    hw_share = jnp.where(ok, rates.hardware / _safe(total, ok), 0.0)
    restart = r.restart_time + restore + hw_share * wait
    tau = daly_interval(delta, m)
    unplanned = jnp.where(ok, daly_goodput(tau, delta, m, restart), 1.0)
    maintenance = jnp.clip(r.maintenance_rate * r.restart_time, 0.0, 1.0)
    return GoodputReport(
        goodput=unplanned * (1.0 - maintenance), mtbf=mtbf, rates=rates, checkpoint_time=delta,
        checkpoint_interval=jnp.where(ok, tau, jnp.inf), restore_time=restore, spare_wait=wait,
        restart_cost=restart, checkpoint_overhead=jnp.where(ok, delta / tau, 0.0),
        rework_overhead=jnp.where(ok, (tau + delta) / (2.0 * m), 0.0),
        restart_overhead=jnp.where(ok, restart / m, 0.0), maintenance_overhead=maintenance)
