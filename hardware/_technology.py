"""`Technology`: per-node physical and economic constants, interpolated in the node.

Every published value below cites its source. Most come from `data/tech.csv` (its
rows name the original publication); a few come from the public papers named beside them. Between
published nodes, `technology(node_nm)` interpolates log(value) against log(node) with a monotone
cubic (C1-smooth, so the node is a differentiable what-if); outside them it extrapolates linearly
in log-log along the last published segment and `extrapolated_quantities` says so.
"""

from __future__ import annotations

from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Real

from . import units as u
from ._fields import LIMITS
from ._once import compiled_when_concrete, once_per_evaluation
from ._validate import as_float_array, check_choice, check_range

# Memory generations a chip's HBM stacks can be ("none": a chip without HBM).
HbmGeneration = Literal["none", "HBM2", "HBM2e", "HBM3", "HBM3e", "HBM4"]

# --------------------------------------------------------------------------------------------
# Published per-node data (node in nm, value in SI / mm^2 units).
# --------------------------------------------------------------------------------------------

# Average logic transistor density, transistors per mm^2. tech.csv rows `logic_density`,
# CSET "AI Chips" (Khan & Mann 2020) via ttm-cas supply_chain_model.py: 14 nm 28.9, 10 nm 52.5,
# 7 nm 96.3, 5 nm 138.2 MTr/mm^2. TSMC N4 (H100's 4N is an N4 derivative): TSMC states N4 gives
# a ~6% die-area reduction over N5 (TSMC N4 announcement, Oct 2020), i.e. 138.2 / 0.94.
LOGIC_DENSITY = {
    28.0: 15.3e6,
    20.0: 22.1e6,
    14.0: 28.9e6,
    10.0: 52.5e6,
    7.0: 96.3e6,
    5.0: 138.2e6,
    4.0: 138.2e6 / 0.94,
}

# High-density 6T SRAM bitcell area, mm^2 per bit.
#   16 nm: 0.070 um^2, TSMC 16 nm 128 Mb SRAM, Chen et al., ISSCC 2014 / JSSC 50(1) 2015.
#   14 nm: 0.064 um^2, Samsung 14 nm FinFET 128 Mb SRAM, Song et al., ISSCC 2014 (GF 14LPP is
#          the licensed Samsung process).
#   10 nm: 0.040 um^2, Samsung 10 nm HD bitcell, Song et al., JSSC 2017 ("A 10 nm FinFET 128 Mb
#          SRAM with assist adjustment system").
#    7 nm: 0.027 um^2, TSMC N7 256 Mb SRAM, Chang et al., ISSCC 2017 paper 12.1.
#    5 nm: 0.021 um^2; 3 nm (N3E): 0.021 um^2; 2 nm: 0.0175 um^2 — tech.csv rows `sram`
#          "high-density SRAM bitcell area" (IEDM 2022 / IEDM 2024 via WikiChip, Tom's Hardware).
#    4 nm: N4 is an N5-family node with the N5 bitcell (same tech.csv row family).
SRAM_BITCELL = {
    16.0: 0.070 * u.um2,
    14.0: 0.064 * u.um2,
    10.0: 0.040 * u.um2,
    7.0: 0.027 * u.um2,
    5.0: 0.021 * u.um2,
    4.0: 0.021 * u.um2,
    3.0: 0.021 * u.um2,
    2.0: 0.0175 * u.um2,
}

# Dynamic energy per operation relative to 7 nm, from the foundry's iso-performance power
# claims: 16 -> 7 nm ">65% power reduction" (TSMC, IEDM 2016 paper 2.6, as reported by Nikkei
# Tech-On 2016-12-07), so 16 nm = 1 / 0.35; 7 -> 5 nm "30% power reduction" (TSMC N5, IEDM 2019
# paper 36.7); 5 -> 3 nm "25-30%" (TSMC N3, 2020 Technology Symposium; lower end 25% used);
# 3 -> 2 nm "25-30%" (TSMC N2, IEDM 2024; lower end used).
ENERGY_SCALE = {
    16.0: 1.0 / 0.35,
    7.0: 1.0,
    5.0: 0.70,
    3.0: 0.70 * 0.75,
    2.0: 0.70 * 0.75 * 0.75,
}

# 300 mm wafer cost, dollars. tech.csv rows `wafer_cost` (CSET "AI Chips" via ttm-cas).
WAFER_COST = {
    28.0: 2891.0,
    20.0: 3677.0,
    14.0: 3984.0,
    10.0: 5992.0,
    7.0: 9346.0,
    5.0: 16988.0,
}

# Defect density, defects per mm^2. tech.csv rows `defect_density` (ttm-cas model constant,
# "estimated from TSMC public slides for 10nm and 5nm").
DEFECT_DENSITY = {
    28.0: 0.0005,
    20.0: 0.0008,
    14.0: 0.0010,
    10.0: 0.0012,
    7.0: 0.0015,
    5.0: 0.0020,
}

PER_NODE_TABLES = {
    "logic_density": LOGIC_DENSITY,
    "sram_bitcell_area": SRAM_BITCELL,
    "energy_scale": ENERGY_SCALE,
    "wafer_cost": WAFER_COST,
    "defect_density": DEFECT_DENSITY,
}

# --------------------------------------------------------------------------------------------
# Node-independent constants.
# --------------------------------------------------------------------------------------------

# Memory generations. Per-stack maximum bandwidth and capacity: tech.csv rows `hbm` (JEDEC
# figures via ml-engineering / Wikipedia "High Bandwidth Memory"): HBM2 307 GB/s 8 GiB, HBM2e
# 461 GB/s 24 GiB, HBM3 819 GB/s 24 GiB, HBM3e 1229 GB/s 48 GiB, HBM4 2048 GB/s 64 GiB.
# Interface width: 1024 bits per stack up to HBM3e, 2048 for HBM4 (tech.csv channel rows:
# 8x128, 16x64, 32x64 bits).
HBM_STACK_BANDWIDTH = {
    "none": 1.0, "HBM2": 307 * u.GB, "HBM2e": 461 * u.GB, "HBM3": 819 * u.GB,
    "HBM3e": 1229 * u.GB, "HBM4": 2048 * u.GB,
}
HBM_STACK_CAPACITY = {
    "none": 1.0, "HBM2": 8 * u.GiB, "HBM2e": 24 * u.GiB, "HBM3": 24 * u.GiB,
    "HBM3e": 48 * u.GiB, "HBM4": 64 * u.GiB,
}
HBM_INTERFACE_UNITS = {  # 1024-bit interface units per stack
    "none": 0.0, "HBM2": 1.0, "HBM2e": 1.0, "HBM3": 1.0, "HBM3e": 1.0, "HBM4": 2.0,
}
# HBM PHY: 10.45 mm^2 per 1024-bit unit (LLMCompass cost_model.py, tech.csv `io_phy_area`
# "HBM2e PHY"; PHYs assumed not to scale with node, as LLMCompass assumes).
HBM_PHY_AREA_PER_UNIT = 10.45
# HBM controller: 552,743,000 transistors per 1024-bit unit (tech.csv `logic_area`
# "HBM2e controller", LLMCompass).
HBM_CONTROLLER_TRANSISTORS_PER_UNIT = 552_743_000.0
# DRAM access + I/O energy of HBM2, ~3.9 pJ/bit (O'Connor et al., "Fine-Grained DRAM", MICRO
# 2017, Sec. 1). No per-generation figure with a primary source is at hand, so later
# generations keep it: a conservative (high) estimate for HBM3 / HBM3e / HBM4.
HBM_ENERGY_PER_BYTE = 3.9 * u.pJ * 8
# HBM price: 7 $/GB "average via dramexchange spot price, Oct 2023" (tech.csv `memory_cost`,
# LLMCompass). Used for every generation.
HBM_COST_PER_BYTE = 7.0 / u.GB

# Off-chip SerDes links. PHY area per link of 25 GB/s per direction: NVLink3 1.888 mm^2 (4 lanes
# of 50 Gb/s NRZ), NVLink4 0.965 mm^2 (2 lanes of 100 Gb/s PAM4) (tech.csv `io_phy_area`,
# LLMCompass). Area per byte/s of one-direction link bandwidth; 7 nm uses NVLink3-class SerDes
# and 5 nm and below NVLink4-class (the nodes those GPUs were built in).
LINK_PHY_AREA_PER_BANDWIDTH = {
    16.0: 1.888 / (25 * u.GB),
    7.0: 1.888 / (25 * u.GB),
    5.0: 0.965 / (25 * u.GB),
}
# Link controller: NVLink4 86,628,000 transistors per 25 GB/s link (tech.csv `logic_area`).
LINK_CONTROLLER_TRANSISTORS_PER_BANDWIDTH = 86_628_000.0 / (25 * u.GB)
# Off-package SerDes energy 5.5 pJ/bit (NVIDIA, ISSCC 2023 paper 9.3, NVLink-C2C comparison:
# "1.3 pJ/bit versus 5.5 pJ/bit for SerDes").
LINK_ENERGY_PER_BYTE = 5.5 * u.pJ * 8

# Lithography field (reticle) limit: 26 mm x 33 mm = 858 mm^2 (ASML NXT/NXE scanner exposure
# field specification).
RETICLE_LIMIT_MM2 = 26.0 * 33.0

# Wafer: 300 mm diameter; gross dies per wafer pi r^2 / A - pi d / sqrt(2 A), and negative-
# binomial yield (1 + A D0 / alpha)^-alpha with clustering alpha = 3 (ttm-cas
# supply_chain_model.py `dies_per_wafer_area`, `yield_rate(..., cluster_param=3)`).
WAFER_DIAMETER_MM = 300.0
WAFER_AREA_MM2 = np.pi * (WAFER_DIAMETER_MM / 2.0) ** 2  # 70,686 mm^2: no die can be larger
# A die is manufacturable when a year of the largest foundry's output yields at least one good
# one: TSMC's annual capacity exceeded 16 million 12-inch-equivalent wafers in 2023 (TSMC 2023
# Annual Report). Beyond that the yield model's cost is a number no one could pay or build.
FOUNDRY_WAFERS_PER_YEAR = 16e6
YIELD_CLUSTERING = 3.0
# Package: $20 substrate + $1 assembly per package (ttm-cas Moonwalk constants
# `mw_package_cost`, `mw_assembly_cost_per_package`: "starter examples"; an organic flip-chip
# package, not a CoWoS interposer — see CostReport).
PACKAGE_COST = 21.0


# --------------------------------------------------------------------------------------------
# Interpolation.
# --------------------------------------------------------------------------------------------


def _pchip_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Fritsch-Carlson monotone cubic slopes (numpy, at import)."""
    h = np.diff(x)
    delta = np.diff(y) / h
    d = np.zeros_like(y)
    if len(x) == 2:
        return np.full_like(y, delta[0])
    for i in range(1, len(x) - 1):
        if delta[i - 1] * delta[i] <= 0:
            d[i] = 0.0
        else:
            w1 = 2 * h[i] + h[i - 1]
            w2 = h[i] + 2 * h[i - 1]
            d[i] = (w1 + w2) / (w1 / delta[i - 1] + w2 / delta[i])
    d[0] = delta[0]
    d[-1] = delta[-1]
    return d


class _LogLogCurve:
    """log(value) as a C1 monotone cubic of log(node); linear (in log-log) outside the data."""

    def __init__(self, table: dict[float, float]):
        nodes = np.array(sorted(table))
        self.x = np.log(nodes)
        self.y = np.log(np.array([table[n] for n in nodes]))
        self.d = _pchip_slopes(self.x, self.y)
        # Outside the data: the log-log trend of the last (first) three published points, so
        # one half-node step (N5 -> N4) does not set the slope of a whole extrapolation.
        k = min(3, len(self.x))
        self.slope_low = float(np.polyfit(self.x[:k], self.y[:k], 1)[0])
        self.slope_high = float(np.polyfit(self.x[-k:], self.y[-k:], 1)[0])
        # End slopes of the cubic equal the extrapolation slopes: C1 across the data's ends.
        self.d[0] = self.slope_low
        self.d[-1] = self.slope_high
        self.node_min = float(nodes[0])
        self.node_max = float(nodes[-1])

    def __call__(self, node_nm):
        x = jnp.log(node_nm)
        n = len(self.x)
        xs, ys, ds = (jnp.asarray(a, dtype=x.dtype) for a in (self.x, self.y, self.d))
        return _curve_value(x, xs, ys, ds, jnp.asarray(n - 1), self.slope_low, self.slope_high)


def _curve_value(x, xs, ys, ds, last, slope_low, slope_high):
    """log(value) at log(node) `x` of the curve with nodes `xs[:last + 1]` (later entries are
    padding: +inf nodes, never selected), exponentiated. Written for `_LogLogCurve` and for
    `_curves_at`'s vmap over all the curves."""
    # "compare_all": a handful of published nodes; the default binary search is a while
    # loop, which XLA compiles (and a sweep runs) far slower than one comparison per node.
    i = jnp.clip(jnp.searchsorted(xs, x, side="right", method="compare_all") - 1, 0, last - 1)
    x0, x1 = xs[i], xs[i + 1]
    h = x1 - x0
    # No clip on t: the outer where picks the extrapolation outside the data, and a clip
    # would halve the derivative exactly at the published nodes (where presets sit).
    t = (x - x0) / h
    h00 = 2 * t**3 - 3 * t**2 + 1
    h10 = t**3 - 2 * t**2 + t
    h01 = -2 * t**3 + 3 * t**2
    h11 = t**3 - t**2
    inside = h00 * ys[i] + h10 * h * ds[i] + h01 * ys[i + 1] + h11 * h * ds[i + 1]
    below = ys[0] + slope_low * (x - xs[0])
    above = ys[last] + slope_high * (x - xs[last])
    logv = jnp.where(x < xs[0], below, jnp.where(x > xs[last], above, inside))
    return jnp.exp(logv)


_CURVES = {name: _LogLogCurve(table) for name, table in PER_NODE_TABLES.items()}
_LINK_PHY_CURVE = _LogLogCurve(LINK_PHY_AREA_PER_BANDWIDTH)
_ALL_CURVES = [*_CURVES.values(), _LINK_PHY_CURVE]
_WIDTH = max(len(c.x) for c in _ALL_CURVES)


def _padded(values, fill):
    return np.stack([np.concatenate([v, np.full(_WIDTH - len(v), fill)]) for v in values])


# Every curve's nodes, values and slopes as one table (padded with +inf nodes), so that
# `technology` evaluates them all as one vmapped curve: traced and compiled once, not six
# times (a model calls `technology` from area, power and cost alike).
_TABLE = (_padded([c.x for c in _ALL_CURVES], np.inf), _padded([c.y for c in _ALL_CURVES], 0.0),
          _padded([c.d for c in _ALL_CURVES], 0.0),
          np.array([len(c.x) - 1 for c in _ALL_CURVES], dtype=np.int32),
          np.array([c.slope_low for c in _ALL_CURVES]),
          np.array([c.slope_high for c in _ALL_CURVES]))


@compiled_when_concrete
def _curves_at(node_nm):
    """Every per-node curve at `node_nm`: the values of `_CURVES` in order, then the link
    PHY's (each of `node_nm`'s shape). Compiled when called by hand: a vmap run op by op
    batches and dispatches each of its operations (tests/test_hardware.py: 58 -> 42 s)."""
    x = jnp.log(node_nm)
    xs, ys, ds, last, low, high = (jnp.asarray(a, dtype=x.dtype if a.dtype.kind == "f"
                                               else None) for a in _TABLE)
    values = jax.vmap(_curve_value, in_axes=(None, 0, 0, 0, 0, 0, 0))(x, xs, ys, ds, last,
                                                                      low, high)
    return list(values)


class Technology(eqx.Module):
    """Per-node constants for the area, power and cost models (SI; area in mm^2).

    **Fields:**

    - `node_nm`: the node these constants describe.
    - `logic_density`: logic transistors per mm^2.
    - `sram_bitcell_area`: high-density 6T SRAM bitcell, mm^2 per bit.
    - `energy_scale`: dynamic energy per operation relative to 7 nm.
    - `wafer_cost`: dollars per 300 mm wafer.
    - `defect_density`: defects per mm^2.
    - `link_phy_area_per_bandwidth`: SerDes PHY mm^2 per (byte/s, one direction).
    - `hbm_generation` (static) and the per-stack figures of that generation:
      `hbm_stack_bandwidth` (bytes/s), `hbm_stack_capacity` (bytes), `hbm_interface_units`
      (1024-bit PHY units per stack).
    """

    node_nm: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    logic_density: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    sram_bitcell_area: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    energy_scale: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    wafer_cost: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    defect_density: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    link_phy_area_per_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    hbm_stack_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    hbm_stack_capacity: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    hbm_interface_units: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    hbm_generation: str = eqx.field(static=True, default="HBM3")  # a HbmGeneration (checked)

    def __check_init__(self):
        for field in ("node_nm", "logic_density", "sram_bitcell_area", "energy_scale",
                      "wafer_cost", "link_phy_area_per_bandwidth", "hbm_stack_bandwidth",
                      "hbm_stack_capacity"):
            check_range("Technology", field, getattr(self, field))
        for field in ("defect_density", "hbm_interface_units"):
            check_range("Technology", field, getattr(self, field), lower_inclusive=True)
        check_choice("Technology", "hbm_generation", self.hbm_generation,
                     get_args(HbmGeneration))


@once_per_evaluation
def technology(node_nm: Real[ArrayLike, "*batch"], hbm_generation: str = "HBM3") -> Technology:
    """Constants for a (continuous) process node and a memory generation.

    **Arguments:**

    - `node_nm`: process node in nm (scalar or array; traced values are fine).
    - `hbm_generation`: "none", "HBM2", "HBM2e", "HBM3", "HBM3e" or "HBM4".

    **Returns:** a `Technology` whose leaves have the shape of `node_nm`.
    """
    low, high, _ = LIMITS["node_nm"]
    check_range("technology", "node_nm", node_nm, lower=low, upper=high, lower_inclusive=True)
    check_choice("technology", "hbm_generation", hbm_generation, get_args(HbmGeneration))
    node = as_float_array(node_nm)
    ones = jnp.ones_like(node)
    return Technology(
        node_nm=node,
        **dict(zip([*_CURVES, "link_phy_area_per_bandwidth"], _curves_at(node), strict=True)),
        hbm_stack_bandwidth=HBM_STACK_BANDWIDTH[hbm_generation] * ones,
        hbm_stack_capacity=HBM_STACK_CAPACITY[hbm_generation] * ones,
        hbm_interface_units=HBM_INTERFACE_UNITS[hbm_generation] * ones,
        hbm_generation=hbm_generation,
    )


def extrapolated_quantities(node_nm: float) -> list[str]:
    """Names of the per-node quantities that `technology(node_nm)` extrapolates (no data there)."""
    node = float(node_nm)
    out = [name for name, curve in _CURVES.items()
           if not (curve.node_min <= node <= curve.node_max)]
    if not (_LINK_PHY_CURVE.node_min <= node <= _LINK_PHY_CURVE.node_max):
        out.append("link_phy_area_per_bandwidth")
    return out


PUBLISHED_NODES: dict[str, tuple[float, ...]] = {
    name: tuple(sorted(table)) for name, table in PER_NODE_TABLES.items()
}
