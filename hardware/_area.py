"""`area(chip)`: silicon area by block, die-edge shoreline and the reticle limit."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from . import units as u
from ._chip import Chip
from ._precision import ENGINES, LOW_PRECISION_ENGINES, WIDER_ENGINES
from ._technology import (
    HBM_CONTROLLER_TRANSISTORS_PER_UNIT,
    HBM_PHY_AREA_PER_UNIT,
    LINK_CONTROLLER_TRANSISTORS_PER_BANDWIDTH,
    RETICLE_LIMIT_MM2,
    Technology,
    technology,
)

# SRAM area per bit, as a multiple of the node's high-density bitcell.
#  "cache": GA100's measured L2 block, 119.31 mm^2 for 40 MiB at N7 (tech.csv `die_breakdown`
#    "global buffer (L2)"; 40 MB L2 in chips.csv, NVIDIA's MB = MiB) over the 0.027 um^2 N7
#    bitcell: 119.31 / (40 * 2^20 * 8 * 0.027e-6) = 13.17. Tags, ECC, banking and the crossbar
#    ports of a hardware-managed cache are all in that block.
#  "scratchpad": bitcell / array efficiency 0.561 of a 1024 KB macro (tech.csv `sram` "cache
#    area efficiency ... CACTI-derived", LLMCompass).
GA100_L2_MM2 = 119.31
GA100_L2_BYTES = 40 * u.MiB
N7_BITCELL_MM2 = 0.027 * u.um2
SRAM_CELL_MULTIPLE = {
    "cache": GA100_L2_MM2 / (GA100_L2_BYTES * 8 * N7_BITCELL_MM2),
    "scratchpad": 1.0 / 0.561,
}

# Uncore (on-chip network, clocks, test, misc.) as a fraction of compute + SRAM: GA100 die shot,
# (on-chip interconnect 76.44 + other 40) / (cores 476.25 + L2 119.31) mm^2 (tech.csv
# `die_breakdown`).
UNCORE_FRACTION = (76.44 + 40.0) / (476.25 + 119.31)

# Compute transistors per core and per 16-bit-MAC equivalent (`engine_area_factor`), by core
# kind. Fitted by `dse.calibration.fit_compute_transistors` to the published die areas of
# chips.csv (simt: V100, A100, H100; spatial: Groq TSP, Cerebras WSE-2, Graphcore GC200) after
# the SRAM, HBM, link and uncore blocks above are subtracted. `tests/test_hardware_fit.py`
# re-runs the fit.
# The spatial pair leaves GC200 23% under its 823 mm^2. Graphcore's own split of that die (Hot
# Chips 33: ~50% SRAM, ~25% tile logic, ~25% exchange + uncore + PHYs) shows where: ~410 mm^2
# of SRAM against the model's 362 (1 MB-macro efficiency), ~205 mm^2 of tile logic against
# ~155 from a (per-core, per-MAC) pair shared with WSE-2's 850,000 small cores and Groq's MXM,
# and ~205 mm^2 of all-to-all exchange and I/O against ~120 from GA100's uncore fraction plus
# the IPU-Link PHYs. Separating those needs more published die splits than one.
COMPUTE_TRANSISTORS = {
    "simt": {"per_core": 171_400_926.2, "per_mac": 108_448.55},
    "spatial": {"per_core": 2_306_095.6, "per_mac": 102_295.95},
}

# Die-edge use. An HBM stack occupies the short side of its footprint, 7.75 mm (JEDEC JESD235
# HBM2 KGSD footprint 7.75 x 11.87 mm), along the logic die's edge (three stacks per long die
# edge in A100 / H100 packages fit only that way). SerDes PHYs are taken to be as deep as the
# HBM PHY (10.45 mm^2 / 7.75 mm), an assumption.
HBM_SHORELINE_PER_STACK_MM = 7.75
PHY_DEPTH_MM = HBM_PHY_AREA_PER_UNIT / HBM_SHORELINE_PER_STACK_MM


class AreaReport(eqx.Module):
    """Silicon area of a chip package by block (mm^2), shoreline (mm) and reticle margin.

    Blocks sum to `total` (all dies of the package). `low_precision` is the part of `compute`
    spent on the narrow matrix engines (FP8, FP6, FP4, INT8 beyond what wider engines provide),
    uncore excluded: what "add an FP4 engine" costs. `per_die` = total / die_count.
    `reticle_margin` = reticle limit - per_die (negative: a die too large to print).
    `shoreline_margin` = die perimeter available - edge needed by HBM and link PHYs
    (negative: the I/O does not fit on the die edge). `hbm_stacks` is the (continuous) number
    of stacks needed to supply both the bandwidth and the capacity.
    """

    compute: Float[Array, "*batch"]
    sram: Float[Array, "*batch"]
    low_precision: Float[Array, "*batch"]
    hbm_phy: Float[Array, "*batch"]
    hbm_controller: Float[Array, "*batch"]
    link_phy: Float[Array, "*batch"]
    link_controller: Float[Array, "*batch"]
    uncore: Float[Array, "*batch"]
    total: Float[Array, "*batch"]
    per_die: Float[Array, "*batch"]
    hbm_stacks: Float[Array, "*batch"]
    shoreline_needed: Float[Array, "*batch"]
    shoreline_available: Float[Array, "*batch"]
    shoreline_margin: Float[Array, "*batch"]
    reticle_margin: Float[Array, "*batch"]

    @property
    def blocks(self) -> dict[str, Float[Array, "*batch"]]:
        """The additive blocks, in mm^2 (they sum to `total`)."""
        return {
            "compute": self.compute, "sram": self.sram, "hbm_phy": self.hbm_phy,
            "hbm_controller": self.hbm_controller, "link_phy": self.link_phy,
            "link_controller": self.link_controller, "uncore": self.uncore,
        }


def engine_area_factor(chip: Chip) -> Float[Array, "*batch"]:
    """Area of the matrix engines per 16-bit MAC unit, in 16-bit-MAC equivalents (>= 1).

    A narrow format runs on any wider engine at that engine's rate (a narrow operand fits a wide
    multiplier), so each narrow engine adds only the MACs beyond the best wider one
    (`WIDER_ENGINES`): an H100 (FP8 rate 2) adds one FP8 MAC per 16-bit MAC, a B200 (FP8 2,
    FP4 4) one FP8 and two FP4 MACs, a TPU v5p (FP8 rate 1) none. Each added MAC costs its
    Horowitz area relative to a 16-bit MAC (`dse.hardware.ENGINES`).
    """
    total = jnp.ones_like(chip.mac_units)
    for engine in LOW_PRECISION_ENGINES:
        covered = jnp.ones_like(chip.mac_units)
        for wider in WIDER_ENGINES[engine][1:]:
            covered = jnp.maximum(covered, chip.rate(wider))
        extra = jnp.maximum(chip.rate(engine) - covered, 0.0)
        total = total + extra * ENGINES[engine].area
    return total


def _tech_for(chip: Chip, tech: Technology | None) -> Technology:
    return technology(chip.node_nm, chip.hbm_generation) if tech is None else tech


def hbm_stacks(chip: Chip, tech: Technology | None = None) -> Float[Array, "*batch"]:
    """Continuous number of HBM stacks needed for the chip's bandwidth and capacity."""
    tech = _tech_for(chip, tech)
    return jnp.maximum(chip.hbm_bandwidth / tech.hbm_stack_bandwidth,
                       chip.hbm_bytes / tech.hbm_stack_capacity)


def area(chip: Chip, tech: Technology | None = None) -> AreaReport:
    """Silicon area of `chip`, by block, in mm^2.

    **Arguments:**

    - `chip`: one chip or a batch (leading axis).
    - `tech`: per-node constants; default `technology(chip.node_nm, chip.hbm_generation)`,
      so the node is differentiable.

    **Returns:** an `AreaReport`.
    """
    tech = _tech_for(chip, tech)
    per = COMPUTE_TRANSISTORS[chip.core_kind]
    engines = engine_area_factor(chip)
    mac_transistors = chip.mac_units * per["per_mac"]
    compute_transistors = chip.core_count * per["per_core"] + mac_transistors * engines
    compute = chip.compute_redundancy * compute_transistors / tech.logic_density
    low_precision = (chip.compute_redundancy * mac_transistors * (engines - 1.0)
                     / tech.logic_density)
    sram = chip.sram_bytes * 8.0 * tech.sram_bitcell_area * SRAM_CELL_MULTIPLE[chip.sram_kind]

    stacks = hbm_stacks(chip, tech)
    hbm_units = stacks * tech.hbm_interface_units
    hbm_phy = hbm_units * HBM_PHY_AREA_PER_UNIT
    hbm_controller = hbm_units * HBM_CONTROLLER_TRANSISTORS_PER_UNIT / tech.logic_density

    link_bandwidth = chip.link_count * chip.link_bandwidth
    link_phy = link_bandwidth * tech.link_phy_area_per_bandwidth
    link_controller = (link_bandwidth * LINK_CONTROLLER_TRANSISTORS_PER_BANDWIDTH
                       / tech.logic_density)

    uncore = UNCORE_FRACTION * (compute + sram)
    total = compute + sram + hbm_phy + hbm_controller + link_phy + link_controller + uncore
    per_die = total / chip.die_count

    shoreline_needed = stacks * HBM_SHORELINE_PER_STACK_MM + link_phy / PHY_DEPTH_MM
    shoreline_available = chip.die_count * 4.0 * jnp.sqrt(per_die)
    return AreaReport(
        compute=compute, sram=sram, low_precision=low_precision, hbm_phy=hbm_phy,
        hbm_controller=hbm_controller,
        link_phy=link_phy, link_controller=link_controller, uncore=uncore, total=total,
        per_die=per_die, hbm_stacks=stacks, shoreline_needed=shoreline_needed,
        shoreline_available=shoreline_available,
        shoreline_margin=shoreline_available - shoreline_needed,
        reticle_margin=RETICLE_LIMIT_MM2 - per_die,
    )
