"""`Reliability`: what fails, how often, and what a failure costs (checkpoints, restarts, spares).

Failure rates are per component and per second, so a job's interruption rate follows from what
it runs on: chips, GiB of HBM, hosts, NICs, network links and switches (`failure_rates`). The
defaults are the Llama 3 405B pre-training run's 419 unexpected interruptions in 54 days on
16,384 H100 (Dubey et al. 2024, arXiv 2407.21783, Table 5), divided by the component count of
that cluster (`dse.calibration.fit_failure_rates`, data/cluster_failures.csv). Table 5 groups:

- accelerator: faulty GPU 148, GPU SRAM 19, GPU system processor 17, silent data corruption 6,
  GPU thermal interface / sensor 6 (196), per chip;
- HBM: GPU HBM3 memory 72, per GiB of HBM (80 GiB per H100): failures grow with capacity, as
  the per-GB error intervals of HBM2e / HBM3 measured on NCSA Delta suggest (Cui et al., "A
  Story of Two GPUs", arXiv 2503.11901; read second-hand);
- host: unplanned host maintenance 32, SSD 3, power supply 3, chassis 2, I/O expansion board 2,
  CPU 2, system memory 2 (46), per host of 8 GPUs;
- NIC: 7, per chip (one 400 Gb/s back-end NIC per GPU);
- network: switch / cable 35, per link (Table 5 does not split switches from cables; MegaScale
  names "bad link quality between network card, AOC cable and switch" as the cause of its link
  flaps, Jiang et al., NSDI 2024, Sec. 6.3). The switch rate is 0 until a source splits them;
- software: software bug 54, dependency 2, NCCL watchdog timeout 7 (63), per chip.

Planned interruptions (47 in the 54 days: firmware and kernel upgrades) cost a restart but no
lost work: `maintenance_rate` per job.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from . import units as u
from ._fields import RELIABILITY_BOUNDS
from ._network import NETWORKS, Network, fat_tree
from ._validate import as_float_array, check_range

DAY = 86400.0


# Llama 3 Table 5 (54 days, up to 16,384 H100 in hosts of 8; counts, not the table's printed
# percentages, which do not sum to 100%).
LLAMA3_DAYS = 54.0
LLAMA3_CHIPS = 16384.0
LLAMA3_HBM_GIB = 80.0
LLAMA3_HOST_CHIPS = 8.0
# Llama 3's back-end network (`NETWORKS["llama3-roce"]`); only its link count (which does not
# depend on the radix) enters the failure fit.
LLAMA3_NETWORK = NETWORKS["llama3-roce"]


def _per_second(count: int | float, units: int | float) -> float:
    return count / (units * LLAMA3_DAYS * DAY)


# One jitted call, not fat_tree's dozen eager operations: each eager operation compiles on first
# use, which cost every process that imports dse about 0.3 s.
_LLAMA3_LINKS = float(jax.jit(lambda chips: (lambda f: f.host_links + f.fabric_links)(
    fat_tree(LLAMA3_NETWORK, chips)))(LLAMA3_CHIPS))

# The fitted defaults (`dse.calibration.fit_failure_rates` recomputes them from
# data/cluster_failures.csv and tests compare).
LLAMA3_RATES: dict[str, float] = {
    "accelerator_failure_rate": _per_second(196, LLAMA3_CHIPS),
    "hbm_failure_rate": _per_second(72, LLAMA3_CHIPS * LLAMA3_HBM_GIB),
    "host_failure_rate": _per_second(46, LLAMA3_CHIPS / LLAMA3_HOST_CHIPS),
    "nic_failure_rate": _per_second(7, LLAMA3_CHIPS),
    "link_failure_rate": _per_second(35, _LLAMA3_LINKS),
    "switch_failure_rate": 0.0,
    "software_failure_rate": _per_second(63, LLAMA3_CHIPS),
    "maintenance_rate": 47 / (LLAMA3_DAYS * DAY),
}


class Reliability(eqx.Module):
    """Failure rates per component, and the checkpoint / restart / spare machinery (SI units).

    **Fields:**

    - `accelerator_failure_rate`: job-interrupting failures of the chip itself, per chip per s.
    - `hbm_failure_rate`: HBM failures per GiB of HBM per s.
    - `host_failure_rate`: per host (CPU, memory, disk, power, chassis) per s.
    - `nic_failure_rate`: per chip's scale-out NIC per s.
    - `link_failure_rate`: per scale-out link (cable and its transceivers) per s.
    - `switch_failure_rate`: per scale-out switch per s.
    - `software_failure_rate`: software and unknown interruptions, per chip per s.
    - `maintenance_rate`: planned interruptions of the job per s (restart, no lost work).
    - `checkpoint_bandwidth`: storage write bandwidth a checkpoint gets, bytes/s (aggregate).
    - `restore_bandwidth`: storage read bandwidth a restart gets, bytes/s (aggregate).
    - `restart_time`: detection, diagnosis, rescheduling and re-initialisation of a restart, s.
    - `repair_time`: mean time to bring a failed host back, s (0: replaced at once).
    - `spare_fraction`: hot-spare hosts per host of the job.
    """

    accelerator_failure_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["accelerator_failure_rate"])
    hbm_failure_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["hbm_failure_rate"])
    host_failure_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["host_failure_rate"])
    nic_failure_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["nic_failure_rate"])
    link_failure_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["link_failure_rate"])
    switch_failure_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["switch_failure_rate"])
    software_failure_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["software_failure_rate"])
    maintenance_rate: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=LLAMA3_RATES["maintenance_rate"])
    # Llama 3's Tectonic storage "supports a sustainable throughput of 2 TB/s" (Sec. 3.3.1; peak
    # 7 TB/s), used for both directions.
    checkpoint_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                             default=2.0 * u.TB)
    restore_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                          default=2.0 * u.TB)
    # MegaScale: "The average time required for detecting failure and executing diagnostic
    # tests is less than 10 minutes" on >10,000 GPUs (Jiang et al., NSDI 2024, Sec. 6.3).
    restart_time: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                      default=600.0)
    # 0: a failed host is replaced at once from a pool larger than the job (Llama 3 ran on up
    # to 16K GPUs of a 24K-GPU cluster). No published repair time was found; set one to see
    # what hot spares buy.
    repair_time: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    spare_fraction: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)

    def __check_init__(self):
        for field, (lo, hi, lo_inc) in RELIABILITY_BOUNDS.items():
            check_range("Reliability", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inc)

    @property
    def accelerator_mtbf(self) -> Float[Array, "*batch"]:
        """Mean time between failures of one accelerator, s (inf for a rate of 0)."""
        rate = self.accelerator_failure_rate
        return jnp.where(rate > 0, 1.0 / jnp.where(rate > 0, rate, 1.0), jnp.inf)

    def replace(self, **changes) -> Reliability:
        """A copy with some fields changed (validated like a new Reliability)."""
        return dataclasses.replace(self, **changes)


class FailureRates(eqx.Module):
    """Interruption rates of one job by component, per second; `total` is their sum.

    `hardware` is the part that takes a host out (it needs a spare or a repair); software and
    planned interruptions restart on the same hosts.
    """

    accelerator: Float[Array, "*batch"]
    hbm: Float[Array, "*batch"]
    host: Float[Array, "*batch"]
    nic: Float[Array, "*batch"]
    link: Float[Array, "*batch"]
    switch: Float[Array, "*batch"]
    software: Float[Array, "*batch"]
    hardware: Float[Array, "*batch"]
    total: Float[Array, "*batch"]

    @property
    def mtbf(self) -> Float[Array, "*batch"]:
        """Mean time between unexpected interruptions of the job, s."""
        return 1.0 / self.total


def failure_rates(reliability: Reliability, *, chips: ArrayLike, hbm_bytes: ArrayLike,
                  network: Network, links: ArrayLike | None = None,
                  switches: ArrayLike | None = None) -> FailureRates:
    """Unexpected interruption rates of a job on `chips` chips, by component, per second.

    **Arguments:**

    - `reliability`: the rates per component.
    - `chips`: chips the job runs on (float, so cluster size differentiates).
    - `hbm_bytes`: HBM per chip, bytes.
    - `network`: the scale-out `Network` (hosts of `network.host_chips`).
    - `links`, `switches`: scale-out links and switches the job depends on; default the
      network's fat-tree for `chips` chips.

    **Returns:** `FailureRates` (per second; `total` > 0 unless every rate is 0).
    """
    if links is None or switches is None:
        tree = fat_tree(network, chips)
        links = tree.host_links + tree.fabric_links if links is None else links
        switches = tree.switches if switches is None else switches
    r = reliability
    accelerator = chips * r.accelerator_failure_rate
    hbm = chips * (hbm_bytes / u.GiB) * r.hbm_failure_rate
    host = chips / network.host_chips * r.host_failure_rate
    nic = chips * r.nic_failure_rate
    link = links * r.link_failure_rate
    switch = switches * r.switch_failure_rate
    software = chips * r.software_failure_rate
    hardware = accelerator + hbm + host + nic + link + switch
    return FailureRates(accelerator=accelerator, hbm=hbm, host=host, nic=nic, link=link,
                        switch=switch, software=software, hardware=hardware,
                        total=hardware + software)
