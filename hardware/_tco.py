"""`Economics`: prices, power and lifetimes that turn a cluster into dollars and megawatts.

`network_report` counts and prices the scale-out fat-tree and the scale-up domains (switch ports,
optics and copper by reach), `capex` the whole cluster (chips with their 2.5D packages, hosts,
network, facility). Every default below is a public figure; many are estimates by analysts or
vendors' blogs, marked [E] (estimate) or [weak] (a blog or a secondary copy), so that a user sees
which dollars are soft. `ECONOMICS_ASSUMPTIONS` lists what no source gave.

Bandwidths are per direction, bytes/s; a link's price and power scale with its speed from the
400 Gb/s figures the sources quote.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from . import units as u
from ._chip import Chip
from ._cost import cost
from ._fields import ECONOMICS_BOUNDS
from ._network import fat_tree, scaleup_links
from ._power import power
from ._system import TOPOLOGY_DIMS, System
from ._validate import as_float_array, check_range

YEAR = 365.25 * 86400.0
PORT_400G = 400.0 * u.Gbit

# --- Network -------------------------------------------------------------------------------------
# Switch: "approx 50k" for NVIDIA's 64-port 400G InfiniBand switch (vs "assumed to $36k" for an
# FS.com variant), in a public cluster-cost sheet of Aug 2024 [weak]: $50,000 / 64 ports.
SWITCH_COST_PER_400G_PORT = 50000.0 / 64.0
# Switch power: UfiSpace S9321-64E, Broadcom Tomahawk 5, 64 x 800G: "913 W typical (no
# transceivers)" (vendor datasheet figure on IP Infusion's Tomahawk 5 page).
SWITCH_POWER_PER_PORT_BANDWIDTH = 913.0 / (64 * 800.0 * u.Gbit)
# Optics: a genuine NVIDIA/Mellanox 400G active optical cable "can run $600-$900 per unit"
# (Resilient-Tec, "The hidden costs of OEM lock-in") [weak]: $750 per 400G optical link.
OPTICS_COST_PER_400G_LINK = 750.0
# Transceiver power: NVIDIA MMS4X00-NS twin-port 2x400G OSFP, switch side, "17 Watts"; the
# single-port 400G NIC-side module 9 W (NVIDIA LinkX documentation). 8.5 W per 400G end.
OPTICS_POWER_PER_400G_END = 17.0 / 2.0
# Copper (DAC): "Power consumption is 0.1 Watts per end" (NVIDIA LinkX 400G DAC overview).
COPPER_POWER_PER_END = 0.1

# --- Chips -------------------------------------------------------------------------------------
# 2.5D packaging: H100 CoWoS-S ~$750, B200 CoWoS-L ~$1,100 (Silicon Analysts cost bridge, from
# Epoch, Raymond James and TrendForce estimates) [E]: $750 for one die, +$350 per further die.
INTERPOSER_COST_ONE_DIE = 750.0
INTERPOSER_COST_PER_EXTRA_DIE = 1100.0 - 750.0
# Chip price: affine in the modelled manufacturing cost (`cost(chip)` plus the 2.5D package),
# through two published selling prices: an H100 "sold to customers for $25,000 to $30,000"
# (Raymond James via Barron's, quoted in Epoch's training-cost notebook) [E], midpoint $27,500,
# and a B200 at "~$40,000" (Silicon Analysts cost bridge) [E]. A fixed part (the vendor's
# per-unit margin and software) plus a multiple of what the silicon costs: a bigger die costs
# more than its silicon. Fitted by `dse.calibration.fit_chip_price`; tests recompute them.
H100_PRICE = 27500.0
B200_PRICE = 40000.0
CHIP_PRICE_BASE = 20151.018
CHIP_PRICE_MULTIPLIER = 3.2894136

# --- Hosts, storage, facility, energy ------------------------------------------------------------
# Host (everything in an 8-GPU server but the GPUs: CPUs, memory, NVSwitch baseboard, NICs,
# chassis): DGX H100 sale price "estimated at ~$270,000" (SemiAnalysis, May 2023, via Epoch) [E]
# minus 8 x $27,500 = $50,000.
HOST_COST = 270000.0 - 8 * H100_PRICE
# Host power: DGX H100 "max system power 10.2 kW" minus 8 x 700 W H100 SXM TDP (NVIDIA
# datasheets, as cited in Epoch's energy.py) = 4.6 kW.
HOST_POWER = 10200.0 - 8 * 700.0
# Storage: Amazon FSx for Lustre persistent SSD at 125 MB/s per TiB, "~$0.145/GB-month"
# (us-east-1, as summarised by c3x.dev) [weak]: dollars per (byte/s) per second of service.
STORAGE_COST_PER_BANDWIDTH = (0.145 * (u.TiB / u.GB) / (125.0 * u.MB)) / (YEAR / 12.0)
# Facility: "$10-12 million per megawatt" of critical IT load (trade estimates attributed to
# Cushman & Wakefield's Data Center Development Cost Guide) [E]: $11 / W.
FACILITY_COST_PER_WATT = 11.0
# PUE 1.1: Google's last published fleet PUE (Q2 2021, via CNBC 2022-04-13); Epoch assumes 1.1
# for hyperscalers.
PUE = 1.1
# US average industrial electricity 2023: 8.06 cents/kWh (EIA Table 5.6.A, as copied in Epoch's
# energy.py), in dollars per joule.
ELECTRICITY_PRICE = 0.0806 / 3.6e6
# Servers and network equipment: 5 years (Meta from Q4 2022; Amazon servers 5 years; Epoch's
# cost model uses 5).
IT_LIFETIME = 5.0 * YEAR
# Buildings: 30 years (Cloudflare 2019 10-K, "Buildings 30 years") [weak: one filer's policy].
FACILITY_LIFETIME = 30.0 * YEAR

ECONOMICS_ASSUMPTIONS: tuple[str, ...] = (
    "copper (DAC) cables cost nothing: no public DAC price was found (their power is counted)",
    "NICs are priced and powered inside the host (the DGX H100 price and power include 8 "
    "ConnectX-7), so planes add switch ports and cables but no NICs",
    "scale-up switch ports (NVSwitch) outside the host are priced and powered like scale-out "
    "switch ports of the same bandwidth (`scaleup_switch_cost` / `_power` default to the "
    "scale-out figures): no public NVSwitch price or power was found; ports inside a host "
    "(an 8-GPU baseboard) are in the host's price and power",
    "a failed or idle spare draws no power; the facility is sized for the chips at full "
    "activity plus hosts and network",
)



class Economics(eqx.Module):
    """Prices, power figures and lifetimes (SI: dollars, watts, seconds, bytes/s).

    **Fields:**

    - `chip_price_base`, `chip_price_multiplier`: chip price = base + multiplier x (modelled
      manufacturing cost + 2.5D package), dollars.
    - `interposer_cost`, `interposer_cost_per_extra_die`: 2.5D package (CoWoS) of a chip with
      HBM, dollars for one die and for each further die.
    - `host_cost`, `host_power`: per host (server less its accelerators), dollars and watts.
    - `switch_cost`, `switch_power`: per byte/s of switch port bandwidth.
    - `optics_cost`: per byte/s of an optical link (both transceivers); `optics_power`: per
      byte/s per transceiver end.
    - `copper_power`: per copper cable end, W.
    - `scaleup_switch_cost`, `scaleup_switch_power`: per byte/s of a scale-up (NVSwitch) port
      outside the host.
    - `storage_cost`: checkpoint storage, dollars per (byte/s of bandwidth) per second.
    - `facility_cost`: data-centre construction per watt of IT capacity.
    - `pue`: facility power / IT power.
    - `electricity_price`: dollars per joule.
    - `it_lifetime`, `facility_lifetime`: straight-line amortization periods, s.
    """

    chip_price_base: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                        default=CHIP_PRICE_BASE)
    chip_price_multiplier: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=CHIP_PRICE_MULTIPLIER)
    interposer_cost: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=INTERPOSER_COST_ONE_DIE)
    interposer_cost_per_extra_die: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=INTERPOSER_COST_PER_EXTRA_DIE)
    host_cost: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=HOST_COST)
    host_power: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                   default=HOST_POWER)
    switch_cost: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=SWITCH_COST_PER_400G_PORT / PORT_400G)
    switch_power: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=SWITCH_POWER_PER_PORT_BANDWIDTH)
    optics_cost: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=OPTICS_COST_PER_400G_LINK / PORT_400G)
    optics_power: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=OPTICS_POWER_PER_400G_END / PORT_400G)
    copper_power: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                     default=COPPER_POWER_PER_END)
    scaleup_switch_cost: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=SWITCH_COST_PER_400G_PORT / PORT_400G)
    scaleup_switch_power: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=SWITCH_POWER_PER_PORT_BANDWIDTH)
    storage_cost: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                     default=STORAGE_COST_PER_BANDWIDTH)
    facility_cost: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                      default=FACILITY_COST_PER_WATT)
    pue: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=PUE)
    electricity_price: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=ELECTRICITY_PRICE)
    it_lifetime: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                    default=IT_LIFETIME)
    facility_lifetime: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=FACILITY_LIFETIME)

    def __check_init__(self):
        for field, (lo, hi, lo_inc) in ECONOMICS_BOUNDS.items():
            check_range("Economics", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inc)

    def replace(self, **changes) -> Economics:
        """A copy with some fields changed (validated like a new Economics)."""
        return dataclasses.replace(self, **changes)


def advanced_package_cost(chip: Chip, economics: Economics) -> Float[Array, "*batch"]:
    """2.5D package (silicon interposer) of a chip with HBM, dollars (0 without HBM)."""
    dies = float(chip.die_count)
    has_hbm = jnp.clip(chip.hbm_bytes / u.GiB, 0.0, 1.0)  # 0 for SRAM-only chips, smooth
    return has_hbm * (economics.interposer_cost
                      + (dies - 1.0) * economics.interposer_cost_per_extra_die)


def chip_price(chip: Chip, economics: Economics) -> Float[Array, "*batch"]:
    """Price of one chip, dollars: base + multiplier x (modelled cost + its 2.5D package)."""
    return economics.chip_price_base + economics.chip_price_multiplier * (
        cost(chip).total + advanced_package_cost(chip, economics))


class NetworkReport(eqx.Module):
    """Counts, cost (dollars) and power (W) of a cluster's networks; parts sum to the totals.

    Scale-out: `switches`, `optical_links`, `copper_links`, `capacity` (most chips it can
    connect), `pod_chips`; `switch_cost` + `optics_cost`, `switch_power` + `optics_power` +
    `copper_power`. Scale-up: `scaleup_optical_links`, `scaleup_cost`, `scaleup_power`.
    """

    switches: Float[Array, "*batch"]
    optical_links: Float[Array, "*batch"]
    copper_links: Float[Array, "*batch"]
    capacity: Float[Array, "*batch"]
    pod_chips: Float[Array, "*batch"]
    scaleup_optical_links: Float[Array, "*batch"]
    switch_cost: Float[Array, "*batch"]
    optics_cost: Float[Array, "*batch"]
    scaleup_cost: Float[Array, "*batch"]
    cost: Float[Array, "*batch"]
    switch_power: Float[Array, "*batch"]
    optics_power: Float[Array, "*batch"]
    copper_power: Float[Array, "*batch"]
    scaleup_power: Float[Array, "*batch"]
    power: Float[Array, "*batch"]


def network_report(system: System, economics: Economics, chips: ArrayLike) -> NetworkReport:
    """What the system's networks cost and draw for `chips` chips.

    **Arguments:**

    - `system`: a `System` with a `network` (`ValueError` without one).
    - `economics`: prices and power figures.
    - `chips`: chips cabled (float; spares included).

    **Returns:** a `NetworkReport`.
    """
    net = system.network
    if net is None:
        raise ValueError("network_report: System.network is None; give the System a "
                         "dse.hardware.Network to price its scale-out fabric")
    e = economics
    tree = fat_tree(net, chips)
    port = system.scaleout_bandwidth / net.planes
    switch_cost = e.switch_cost * tree.switch_ports * port
    optics_cost = e.optics_cost * tree.optical_links * port
    switch_power = e.switch_power * tree.switch_ports * port
    optics_power = 2.0 * e.optics_power * tree.optical_links * port
    copper_power = 2.0 * e.copper_power * tree.copper_links
    copper_up, optical_up, ports_up = scaleup_links(
        chips=chips, domain=system.scaleup_size, link_count=system.chip.link_count,
        rack_chips=net.rack_chips, dims=TOPOLOGY_DIMS[system.topology])
    # Switch ports of a domain no larger than a host sit on its baseboard (DGX H100's four
    # NVSwitches), priced in the host; beyond, the share of a chip's peers outside its host.
    outside = jnp.clip(1.0 - net.host_chips / system.scaleup_size, 0.0, 1.0)
    ports_up = ports_up * outside
    link = system.chip.link_bandwidth
    scaleup_cost = (e.scaleup_switch_cost * ports_up + e.optics_cost * optical_up) * link
    scaleup_power = ((e.scaleup_switch_power * ports_up + 2.0 * e.optics_power * optical_up)
                     * link + 2.0 * e.copper_power * copper_up)
    return NetworkReport(
        switches=tree.switches, optical_links=tree.optical_links, copper_links=tree.copper_links,
        capacity=tree.capacity, pod_chips=tree.pod_chips, scaleup_optical_links=optical_up,
        switch_cost=switch_cost, optics_cost=optics_cost, scaleup_cost=scaleup_cost,
        cost=switch_cost + optics_cost + scaleup_cost, switch_power=switch_power,
        optics_power=optics_power, copper_power=copper_power, scaleup_power=scaleup_power,
        power=switch_power + optics_power + copper_power + scaleup_power)


class CapexReport(eqx.Module):
    """Capital cost of a cluster, dollars: `chips + packaging + hosts + network + facility =
    total` (`packaging` is the 2.5D package's share of the chips' price).

    `peak_it_power` (W) sizes the facility; `per_second` is the straight-line amortization
    ($/s: IT over `it_lifetime`, the facility over `facility_lifetime`).
    """

    chips: Float[Array, "*batch"]
    packaging: Float[Array, "*batch"]
    hosts: Float[Array, "*batch"]
    network: Float[Array, "*batch"]
    facility: Float[Array, "*batch"]
    total: Float[Array, "*batch"]
    peak_it_power: Float[Array, "*batch"]
    per_second: Float[Array, "*batch"]


def capex(system: System, economics: Economics, chips: ArrayLike,
          network: NetworkReport | None = None) -> CapexReport:
    """Capital cost of `chips` chips with their hosts, networks and facility.

    **Arguments:**

    - `system`: the `System` (chip, scale-up domain, `network`).
    - `economics`: prices, power figures, lifetimes.
    - `chips`: chips bought (float; spares included).
    - `network`: `network_report(system, economics, chips)` if already computed.

    **Returns:** a `CapexReport`.
    """
    e = economics
    chip = system.chip
    network = network_report(system, e, chips) if network is None else network
    hosts = chips / system.network.host_chips
    silicon = (e.chip_price_base + e.chip_price_multiplier * cost(chip).total) * chips
    packaging = e.chip_price_multiplier * advanced_package_cost(chip, e) * chips
    host_cost = e.host_cost * hosts
    peak = power(chip).total * chips + e.host_power * hosts + network.power
    facility = e.facility_cost * peak
    it = silicon + packaging + host_cost + network.cost
    return CapexReport(chips=silicon, packaging=packaging, hosts=host_cost,
                       network=network.cost, facility=facility, total=it + facility,
                       peak_it_power=peak,
                       per_second=it / e.it_lifetime + facility / e.facility_lifetime)
