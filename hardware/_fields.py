"""One table of the continuous fields of `Chip` and `System`: what each one means to a person.

For every continuous field: a label ("HBM bandwidth"), its SI unit, the unit it is shown in
(TB/s), the kind of resource it is (compute / memory / network / process), the resource that
binds when it moves a metric most (for `dse.sensitivity`) and default sweep bounds. Tables,
plots, sensitivity, the config reader and the demo all read `FIELDS`, so a new field is one
entry here plus its physics (and its validity range in `CHIP_BOUNDS` / `SYSTEM_BOUNDS`).
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping
from typing import Any, Literal

from . import units as u

Kind = Literal["compute", "memory", "network", "process", "reliability", "economics"]
Owner = Literal["Chip", "System", "Network", "Reliability", "Economics"]

# Where a field of each owner sits inside each kind of design: ("Cluster", "Chip") ->
# "system.chip." means a chip field `x` of a Cluster is `system.chip.x`.
_PREFIX: dict[tuple[str, str], str] = {
    ("System", "Chip"): "chip.",
    ("System", "Network"): "network.",
    ("Cluster", "Chip"): "system.chip.",
    ("Cluster", "System"): "system.",
    ("Cluster", "Network"): "system.network.",
    ("Cluster", "Reliability"): "reliability.",
    ("Cluster", "Economics"): "economics.",
}
Scale = Literal["linear", "log", "integer"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Quantity:
    """What a number means, for people: a label, its SI unit, and the unit it is shown in.

    **Fields:**

    - `label`: words for an axis or a column ("HBM bandwidth", "step time").
    - `unit`: the SI unit of the stored value ("B/s", "s", "mm²"; "" for counts and ratios).
    - `display_unit`, `display_scale`: the unit plots show, and how many SI units make one of it
      (TB/s: 1e12); default the SI unit itself.
    - `description`: a longer explanation ("" when the label says it all).
    """

    label: str
    unit: str
    display_unit: str | None = None
    display_scale: float = 1.0
    description: str = ""

    def __post_init__(self):
        if self.display_unit is None:
            object.__setattr__(self, "display_unit", self.unit)
        if not self.display_scale > 0:
            raise ValueError(f"Quantity {self.label!r}: display_scale must be > 0; got "
                             f"{self.display_scale!r}")

    @property
    def axis_label(self) -> str:
        """`"label [display unit]"`, or the bare label for a count or ratio."""
        return f"{self.label} [{self.display_unit}]" if self.display_unit else self.label

    def display(self, value: Any) -> Any:
        """An SI value (or array) in the display unit."""
        return value / self.display_scale


@dataclasses.dataclass(frozen=True, kw_only=True)
class Field(Quantity):
    """A continuous field of `Chip` or `System`, and its default sweep range.

    **Fields** (besides those of `Quantity`):

    - `name`: the field's name on its Module; `owner`: "Chip", "System", "Network",
      "Reliability" or "Economics".
    - `kind`: "compute", "memory", "network", "process", "reliability" or "economics".
    - `resource`: the resource `dse.sensitivity` names when this field binds a metric
      ("HBM bandwidth", "scale-up links"); None for a field that is not a resource (the
      process node, spare cores).
    - `low`, `high`, `scale`: default sweep bounds (SI) and scale ("linear", "log" or
      "integer"), the ranges a study starts from unless it names its own.
    """

    name: str
    owner: Owner
    kind: Kind
    resource: str | None
    low: float
    high: float
    scale: Scale

    def path(self, design: Any) -> str:
        """Dotted path of this field in `design`: its own Module, a `System` ("chip.<name>",
        "network.<name>") or a `Cluster` ("system.chip.<name>", "reliability.<name>", ...)."""
        kind = type(design).__name__
        if kind == self.owner:
            return self.name
        if (kind, self.owner) in _PREFIX:
            return f"{_PREFIX[kind, self.owner]}{self.name}"
        raise ValueError(f"field {self.name!r} is a field of {self.owner}; a {kind} has no "
                         f"such field")


def _field(owner, name, label, unit, kind, resource, low, high, scale, **more) -> Field:
    return Field(owner=owner, name=name, label=label, unit=unit, kind=kind, resource=resource,
                 low=float(low), high=float(high), scale=scale, **more)


_chip = functools.partial(_field, "Chip")
_system = functools.partial(_field, "System")
_network = functools.partial(_field, "Network")
_reliability = functools.partial(_field, "Reliability")
_economics = functools.partial(_field, "Economics")

_DAY = 86400.0
_YEAR = 365.25 * _DAY
# Failure rates are stored per unit per second and shown per 1,000 unit-days (Llama 3's counts
# per 16,384 GPUs over 54 days are of that order).
_PER_1000_DAYS = 1.0 / (1000.0 * _DAY)
# Per-bandwidth prices and powers are stored per byte/s and shown per Gb/s.
_PER_GBIT = 1.0 / u.Gbit
# Electricity is stored in $/J and shown in cents per kWh.
_CENTS_PER_KWH = 0.01 / 3.6e6


# Default bounds. The seven knobs of the README's reference problem (`dse demo`,
# examples/h100_gpt3_training.toml: a chip around H100) keep that problem's ranges; the others
# span the chip and system presets of `_presets.py` with room on both sides. They are starting
# ranges for a study, not limits of the model (those are CHIP_BOUNDS / SYSTEM_BOUNDS).
_FIELDS: tuple[Field, ...] = (
    _chip("mac_units", "MAC units", "", "compute", "compute", 65536, 1048576, "log",
          description="16-bit matrix multiply-accumulate units (peak = 2 x MACs x clock)"),
    _chip("clock_hz", "clock", "Hz", "compute", "compute", 1.0 * u.GHz, 2.2 * u.GHz, "linear",
          display_unit="GHz", display_scale=u.GHz),
    _chip("vector_flops", "vector throughput", "FLOP/s", "compute", "vector compute",
          10 * u.TFLOPS, 400 * u.TFLOPS, "log", display_unit="TFLOP/s", display_scale=u.TFLOPS),
    _chip("sram_bytes", "on-chip SRAM", "B", "memory", "SRAM capacity", 16 * u.MiB,
          512 * u.MiB, "log", display_unit="MiB", display_scale=u.MiB),
    _chip("hbm_bandwidth", "HBM bandwidth", "B/s", "memory", "HBM bandwidth", 1 * u.TB,
          12 * u.TB, "log", display_unit="TB/s", display_scale=u.TB),
    _chip("hbm_bytes", "HBM capacity", "B", "memory", "HBM capacity", 40 * u.GiB, 288 * u.GiB,
          "log", display_unit="GiB", display_scale=u.GiB),
    _chip("link_count", "scale-up links", "", "network", "scale-up links", 4, 36, "integer"),
    _chip("link_bandwidth", "link bandwidth", "B/s", "network", "scale-up links", 10 * u.GB,
          100 * u.GB, "log", display_unit="GB/s", display_scale=u.GB,
          description="bandwidth of one scale-up link, one direction"),
    # N2 (the last step of dse.ROADMAP_STEPS) to 16 nm (older than the oldest preset, 12 nm).
    _chip("node_nm", "process node", "nm", "process", None, 2.0, 16.0, "log"),
    _chip("core_count", "cores", "", "compute", None, 32, 256, "integer",
          description="independently scheduled cores enabled (SMs, CUs, tiles)"),
    # GA100 carries 128 SMs for 108 enabled (1.185).
    _chip("compute_redundancy", "compute redundancy", "", "process", None, 1.0, 1.25, "linear",
          description="physical / enabled compute on the die (spare cores buy yield)"),
    # Measured chips span 0.51 (MI300X, ROCm 6.3) to 0.97 (Gaudi 2); NVIDIA 0.73-0.87.
    _chip("matmul_fraction", "achievable matmul fraction", "", "compute", "compute", 0.5, 0.95,
          "linear", description="sustained fraction of peak matrix FLOP/s on the best large "
          "GEMM (clock under the power limit x issue efficiency)"),
    # 8 (a DGX) to 576 chips per scale-up domain (NVL72 = 72; the largest NVLink domains
    # announced, NVL576).
    _system("scaleup_size", "scale-up domain", "", "network", None, 8, 576, "integer",
            description="chips per scale-up domain"),
    # Around the presets' 1 us (NVLink / ICI one hop) and 5 us (InfiniBand).
    _system("scaleup_latency", "scale-up latency", "s", "network", "network latency",
            0.25 * u.us, 4 * u.us, "log", display_unit="µs", display_scale=u.us),
    # 100 Gb/s to 1.6 Tb/s per chip (presets: 200-800 Gb/s).
    _system("scaleout_bandwidth", "scale-out bandwidth", "B/s", "network", "scale-out network",
            100 * u.Gbit, 1600 * u.Gbit, "log", display_unit="GB/s", display_scale=u.GB,
            description="per-chip bandwidth to the scale-out network, one direction"),
    _system("scaleout_latency", "scale-out latency", "s", "network", "network latency",
            1 * u.us, 20 * u.us, "log", display_unit="µs", display_scale=u.us),
    # Network (hardware/_network.py). One switch to four tiers (three suffice for 64^3/4 =
    # 65,536 chips at radix 64, the DGX SuperPOD's largest tables).
    _network("tiers", "network tiers", "", "network", "scale-out network", 1, 4, "integer",
             description="switch tiers of the scale-out fat-tree"),
    # 32 (Tomahawk 3 class) to 256 ports (a 51.2 Tb/s switch at 200G: Tomahawk 5's 256 x 200G).
    _network("radix", "switch radix", "", "network", "scale-out network", 32, 256, "integer",
             description="ports per switch at one plane's port speed"),
    # Non-blocking to beyond Llama 3's 1:7.
    _network("oversubscription", "oversubscription", "", "network", "scale-out network", 1.0,
             8.0, "linear", description="down : up bandwidth at the pod boundary"),
    _network("planes", "network planes", "", "network", "scale-out network", 1, 8, "integer",
             description="independent planes each chip's scale-out bandwidth is split over"),
    # GB200 trays carry 4 GPUs, DGX hosts 8.
    _network("host_chips", "chips per host", "", "network", None, 4, 16, "integer"),
    # Meta's racks 16 GPUs, DGX SuperPOD 32, NVL72 72, NVL144-class 144.
    _network("rack_chips", "chips per rack", "", "network", None, 8, 144, "integer"),
    # Reliability (hardware/_reliability.py): a tenth to ten times Llama 3's rates.
    _reliability("accelerator_failure_rate", "accelerator failure rate", "1/s", "reliability",
                 "accelerator reliability", 2.5e-10, 2.5e-8, "log",
                 display_unit="per 1000 chip-days", display_scale=_PER_1000_DAYS),
    _reliability("hbm_failure_rate", "HBM failure rate", "1/s", "reliability",
                 "HBM reliability", 1.2e-12, 1.2e-10, "log",
                 display_unit="per 1000 GiB-days", display_scale=_PER_1000_DAYS,
                 description="HBM failures per GiB of HBM"),
    _reliability("host_failure_rate", "host failure rate", "1/s", "reliability",
                 "host reliability", 4.8e-10, 4.8e-8, "log",
                 display_unit="per 1000 host-days", display_scale=_PER_1000_DAYS),
    _reliability("nic_failure_rate", "NIC failure rate", "1/s", "reliability",
                 "network reliability", 9e-12, 9e-10, "log",
                 display_unit="per 1000 NIC-days", display_scale=_PER_1000_DAYS),
    _reliability("link_failure_rate", "link failure rate", "1/s", "reliability",
                 "network reliability", 2e-11, 2e-9, "log",
                 display_unit="per 1000 link-days", display_scale=_PER_1000_DAYS),
    _reliability("switch_failure_rate", "switch failure rate", "1/s", "reliability",
                 "network reliability", 0.0, 1e-7, "linear",
                 display_unit="per 1000 switch-days", display_scale=_PER_1000_DAYS),
    _reliability("software_failure_rate", "software failure rate", "1/s", "reliability",
                 "software reliability", 8e-11, 8e-9, "log",
                 display_unit="per 1000 chip-days", display_scale=_PER_1000_DAYS),
    _reliability("maintenance_rate", "planned interruptions", "1/s", "reliability", None,
                 1e-6, 1e-4, "log", display_unit="per day", display_scale=1.0 / _DAY),
    # 100 GB/s to 20 TB/s (Llama 3's Tectonic: 2 TB/s sustained, 7 TB/s peak).
    _reliability("checkpoint_bandwidth", "checkpoint bandwidth", "B/s", "reliability",
                 "checkpoint storage", 100 * u.GB, 20 * u.TB, "log", display_unit="TB/s",
                 display_scale=u.TB),
    _reliability("restore_bandwidth", "restore bandwidth", "B/s", "reliability",
                 "checkpoint storage", 100 * u.GB, 20 * u.TB, "log", display_unit="TB/s",
                 display_scale=u.TB),
    _reliability("restart_time", "restart time", "s", "reliability", "restart time", 60.0,
                 3600.0, "log", display_unit="min", display_scale=60.0),
    _reliability("repair_time", "repair time", "s", "reliability", None, 3600.0, 7 * _DAY,
                 "log", display_unit="h", display_scale=3600.0),
    _reliability("spare_fraction", "hot spares", "", "reliability", None, 0.0, 0.2, "linear",
                 description="spare hosts per host of the job"),
    # Economics (hardware/_tco.py): ranges around the sourced defaults.
    _economics("chip_price_base", "chip price base", "$", "economics", None, 5e3, 50e3, "log",
               description="fixed part of a chip's price"),
    _economics("chip_price_multiplier", "chip price multiplier", "", "economics", None, 1.0,
               12.0, "log", description="price per dollar of modelled manufacturing cost"),
    _economics("interposer_cost", "2.5D package cost", "$", "economics", None, 200.0, 3000.0,
               "log"),
    _economics("interposer_cost_per_extra_die", "2.5D cost per extra die", "$", "economics",
               None, 100.0, 2000.0, "log"),
    _economics("host_cost", "host cost", "$", "economics", None, 10e3, 200e3, "log"),
    _economics("host_power", "host power", "W", "economics", None, 1e3, 10e3, "log"),
    _economics("switch_cost", "switch port cost", "$/(B/s)", "economics", None, 1.6e-9,
               1.6e-7, "log", display_unit="$/(Gb/s)", display_scale=_PER_GBIT),
    _economics("switch_power", "switch port power", "W/(B/s)", "economics", None, 1.4e-11,
               1.4e-9, "log", display_unit="W/(Gb/s)", display_scale=_PER_GBIT),
    _economics("optics_cost", "optical link cost", "$/(B/s)", "economics", None, 1.5e-9,
               1.5e-7, "log", display_unit="$/(Gb/s)", display_scale=_PER_GBIT),
    _economics("optics_power", "transceiver power", "W/(B/s)", "economics", None, 1.7e-11,
               1.7e-9, "log", display_unit="W/(Gb/s)", display_scale=_PER_GBIT),
    _economics("copper_power", "copper cable power", "W", "economics", None, 0.01, 1.0, "log"),
    _economics("scaleup_switch_cost", "scale-up port cost", "$/(B/s)", "economics", None,
               1.6e-10, 1.6e-7, "log", display_unit="$/(Gb/s)", display_scale=_PER_GBIT),
    _economics("scaleup_switch_power", "scale-up port power", "W/(B/s)", "economics", None,
               1.4e-12, 1.4e-9, "log", display_unit="W/(Gb/s)", display_scale=_PER_GBIT),
    _economics("storage_cost", "storage cost", "$/(B/s)/s", "economics", None, 4.8e-14,
               4.8e-12, "log", display_unit="$/(GB/s)/year",
               display_scale=1.0 / (u.GB * _YEAR)),
    _economics("facility_cost", "facility cost", "$/W", "economics", None, 5.0, 25.0, "log",
               display_unit="$M/MW"),
    _economics("pue", "PUE", "", "economics", None, 1.05, 1.6, "linear"),
    _economics("electricity_price", "electricity price", "$/J", "economics", None,
               3 * _CENTS_PER_KWH, 20 * _CENTS_PER_KWH, "log", display_unit="¢/kWh",
               display_scale=_CENTS_PER_KWH),
    _economics("it_lifetime", "IT lifetime", "s", "economics", None, 3 * _YEAR, 7 * _YEAR,
               "linear", display_unit="years", display_scale=_YEAR),
    _economics("facility_lifetime", "facility lifetime", "s", "economics", None, 15 * _YEAR,
               40 * _YEAR, "linear", display_unit="years", display_scale=_YEAR),
)

FIELDS: Mapping[str, Field] = types.MappingProxyType({f.name: f for f in _FIELDS})
