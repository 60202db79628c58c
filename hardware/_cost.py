"""`cost(chip)`: yield-adjusted silicon, HBM and package cost per chip, in dollars."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaincc, gammaln
from jaxtyping import Array, Float, Int

from ._area import area
from ._chip import Chip
from ._reasons import Reason
from ._technology import (
    FOUNDRY_WAFERS_PER_YEAR,
    HBM_COST_PER_BYTE,
    PACKAGE_COST,
    WAFER_AREA_MM2,
    WAFER_DIAMETER_MM,
    YIELD_CLUSTERING,
    Technology,
    technology,
)


class CostReport(eqx.Module):
    """Manufacturing cost of one chip package, dollars (what it costs to make, not a price);
    `silicon + hbm + package = total`.

    `die_yield` is the fraction of dies that work (spare cores absorb defects in the compute
    array); `dies_per_wafer` the gross dies of a 300 mm wafer; `wafers_per_good_die` their
    product's inverse, the wafers started per working die. `reason` is
    `Reason.UNMANUFACTURABLE` where the die cannot be made (larger than the wafer, or more
    wafers per good die than a year of the largest foundry's output, `FOUNDRY_WAFERS_PER_YEAR`);
    there `silicon` is held at the cost of that year of wafers per die (finite, with a zero
    gradient), a flagged bound rather than a price. Advanced-packaging (CoWoS interposer) cost
    is not included here; the cluster TCO adds it from analysts' estimates
    (`dse.hardware.advanced_package_cost`, `Economics.interposer_cost`).
    """

    silicon: Float[Array, "*batch"]
    hbm: Float[Array, "*batch"]
    package: Float[Array, "*batch"]
    total: Float[Array, "*batch"]
    die_yield: Float[Array, "*batch"]
    dies_per_wafer: Float[Array, "*batch"]
    wafers_per_good_die: Float[Array, "*batch"]
    reason: Int[Array, "*batch"]


def dies_per_wafer(die_mm2: Float[Array, "*batch"]) -> Float[Array, "*batch"]:
    """Gross dies on a 300 mm wafer: pi r^2 / A - pi d / sqrt(2 A), at least one."""
    radius = WAFER_DIAMETER_MM / 2.0
    gross = jnp.pi * radius**2 / die_mm2 - jnp.pi * WAFER_DIAMETER_MM / jnp.sqrt(2.0 * die_mm2)
    # A wafer-scale die (larger than the formula allows) is one die per wafer.
    return jnp.maximum(gross, 1.0)


def _log_poisson_at_most(spares, mean_defects):
    """log P(Poisson(mean) <= spares) = log Q(spares + 1, mean), stable deep in the tail.

    Far in the tail (mean >> spares) Q underflows in float32 and its gradient turns into
    NaN, so there the asymptotic series Gamma(a, x) ~ x^(a-1) e^-x (1 + (a-1)/x +
    (a-1)(a-2)/x^2) is used; the exact branch is fed a harmless argument (double where).
    """
    a = spares + 1.0
    deep = mean_defects > a + 10.0 * jnp.sqrt(a) + 20.0
    x_exact = jnp.where(deep, a, mean_defects)
    exact = jnp.log(gammaincc(a, x_exact))
    x_tail = jnp.where(deep, mean_defects, a + 10.0 * jnp.sqrt(a) + 21.0)
    series = 1.0 + (a - 1.0) / x_tail + (a - 1.0) * (a - 2.0) / x_tail**2
    tail = (a - 1.0) * jnp.log(x_tail) - x_tail + jnp.log(series) - gammaln(a)
    return jnp.where(deep, tail, exact)


def cost(chip: Chip, tech: Technology | None = None) -> CostReport:
    """Cost of one chip package (all its dies, HBM and package), dollars.

    Yield: negative binomial (clustering 3) over the die's non-compute area, times the Poisson
    probability that the compute array has no more defective cores than it has spares
    (`core_count * (compute_redundancy - 1)`).
    """
    tech = technology(chip.node_nm, chip.hbm_generation) if tech is None else tech
    a = area(chip, tech)
    per_die = a.per_die
    compute_per_die = a.compute / chip.die_count
    critical = per_die - compute_per_die
    log_yield_rest = -YIELD_CLUSTERING * jnp.log1p(
        critical * tech.defect_density / YIELD_CLUSTERING)
    spares = chip.core_count * (chip.compute_redundancy - 1.0) / chip.die_count
    log_yield = log_yield_rest + _log_poisson_at_most(spares,
                                                      compute_per_die * tech.defect_density)
    dpw = dies_per_wafer(per_die)
    log_wafers = -jnp.log(dpw) - log_yield
    # Past the limit the wafers per good die are held at it: exp never overflows (a die of
    # many wafers' area has log_wafers in the thousands), and the gradient there is 0, not NaN.
    limit = float(np.log(FOUNDRY_WAFERS_PER_YEAR))
    wafers = jnp.exp(jnp.minimum(log_wafers, limit))
    manufacturable = (per_die <= WAFER_AREA_MM2) & (log_wafers <= limit)
    log_cost = jnp.log(tech.wafer_cost / dpw) - log_yield
    silicon = chip.die_count * jnp.exp(jnp.minimum(log_cost, jnp.log(tech.wafer_cost) + limit))
    die_yield = jnp.exp(log_yield)
    hbm = chip.hbm_bytes * HBM_COST_PER_BYTE
    package = PACKAGE_COST * jnp.ones_like(silicon)
    reason = jnp.where(manufacturable, 0, int(Reason.UNMANUFACTURABLE)).astype(jnp.int32)
    return CostReport(silicon=silicon, hbm=hbm, package=package,
                      total=silicon + hbm + package, die_yield=die_yield,
                      dies_per_wafer=dpw, wafers_per_good_die=wafers, reason=reason)
