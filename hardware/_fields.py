"""One table of the continuous fields of `Chip` and `System`: what each one means to a person.

For every continuous field: a label ("HBM bandwidth"), its SI unit, the unit it is shown in
(TB/s), the kind of resource it is (compute / memory / network / process), the resource that
binds when it moves a metric most (for `dse.sensitivity`), default sweep bounds and the range
of values the Modules accept (`CHIP_BOUNDS` / `SYSTEM_BOUNDS`, derived from the same rows, so the
table and validation cannot disagree). Tables, plots, sensitivity, the config reader and the demo
all read `FIELDS`, so a new field is one entry here plus its physics.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from . import units as u
from ._validate import range_text

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
    - `min_value`, `max_value`, `zero_allowed`: the values the Module accepts (SI): finite and
      in [min_value, max_value], or exactly 0 where `zero_allowed` (0 means "absent": no HBM,
      no links). Physical limits, see `LIMITS`.
    - `min_inclusive`: whether `min_value` itself is allowed (False: only values above it, as
      a checkpoint bandwidth above 0).
    """

    name: str
    owner: Owner
    kind: Kind
    resource: str | None
    low: float
    high: float
    scale: Scale
    min_value: float
    max_value: float
    zero_allowed: bool
    min_inclusive: bool = True

    def __post_init__(self):
        super().__post_init__()
        if not self.min_value <= self.low < self.high <= self.max_value:
            raise ValueError(f"Field {self.name!r}: default sweep range [{self.low:g}, "
                             f"{self.high:g}] must lie inside the field's valid range "
                             f"{self.allowed}")

    @property
    def bounds(self) -> Bounds:
        """The valid range, as the Modules' `__check_init__` reads it."""
        return Bounds(self.min_value, self.max_value, self.zero_allowed, self.min_inclusive)

    @property
    def allowed(self) -> str:
        """The valid range in words, as errors print it ("finite and in [1, 1e+10]")."""
        return range_text(self.min_value, self.max_value, lower_inclusive=self.min_inclusive,
                          zero_allowed=self.zero_allowed)

    def from_unit(self, u: Any) -> Any:
        """Values across the whole valid range from unit coordinates (numpy): log-spaced from
        `min_value` (u = 0) to `max_value` (u = 1); a field whose lower bound is 0 spans
        [max_value * 1e-12, max_value] with u = 0 exactly 0 (or max_value * 1e-12 where 0
        itself is not allowed)."""
        import numpy as np

        u = np.asarray(u, np.float64)
        floor = self.min_value if self.min_value > 0 else self.max_value * 1e-12
        x = floor * (self.max_value / floor) ** u
        # Exactly on the bounds at the ends (the power rounds).
        lowest = self.min_value if self.min_inclusive else floor
        return np.where(u <= 0, lowest, np.where(u >= 1, self.max_value, x))

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


class Bounds(NamedTuple):
    """Valid values of a field: finite and in [low, high] (low excluded where not
    `low_inclusive`), or 0 where `zero_allowed`."""

    low: float
    high: float
    zero_allowed: bool = False
    low_inclusive: bool = True


# What a field may be: (lowest value, highest value, whether 0 is allowed as "absent"). The
# upper bounds are physical limits with room to spare, so that no design a study can reach is
# cut off, while a typo (1e30 bytes of SRAM) or a runaway optimizer is refused before it turns
# into an overflowing area or cost. The lower bounds are the least that still means the thing
# (one MAC unit, a clock of a megahertz): far below any real chip, but a positive number, so
# that no time divides by a denormal and overflows float32.
LIMITS: Mapping[str, tuple[float, float, bool]] = types.MappingProxyType({
    # At least one MAC unit. A 300 mm wafer of N4 logic holds 70,686 mm^2 x 1.47e8
    # transistors/mm^2 (LOGIC_DENSITY in _technology.py) = 1.0e13 transistors; a 16-bit MAC
    # needs at least ~7,000 (a 16 x 16 array multiplier: 256 AND gates and ~240 full adders of
    # 28 transistors in static CMOS, Weste & Harris, "CMOS VLSI Design", 4th ed., ch. 11):
    # 1.5e9 MACs per wafer. 1e10 leaves room for the densest extrapolated node (~3x N4 at 1 nm).
    # WSE-3, a whole wafer, has 3.6e6.
    "mac_units": (1.0, 1e10, False),
    # 1 MHz: below any processor of the last fifty years (the Intel 4004 ran at 0.74 MHz in
    # 1971). 10 GHz: above any clock logic ships at (6.2 GHz, Intel Core i9-14900KS, 2024) and
    # above the liquid-helium overclocking records (just over 9 GHz, 2024).
    "clock_hz": (1.0 * u.MHz, 10.0 * u.GHz, False),
    # One lane at the lowest clock; at most 2 FLOP x 1e10 lanes (a wafer of MACs) x 10 GHz.
    "vector_flops": (1.0 * u.MHz, 2.0 * 1e10 * 10.0 * u.GHz, False),
    # 1 KiB: a single small SRAM macro. A 300 mm wafer of the densest bitcell in the tables
    # (N2, 0.0175 um^2, SRAM_BITCELL) with no periphery at all: 70,686 mm^2 / 0.0175e-6 mm^2 / 8
    # = 5.0e11 B; 1 TiB is twice that (WSE-3: 44 GB).
    "sram_bytes": (1.0 * u.KiB, 1.0 * u.TiB, False),
    # 0: no HBM (operands in SRAM). Otherwise at least one DDR2-400 channel (3.2 GB/s; 1 GB/s
    # is below any DRAM interface of the last twenty years) and one 1 MiB of DRAM (below any
    # DRAM die since 1990). Upper: a 300 mm wafer's circumference (942 mm) lined with HBM4
    # stacks on 7.75 mm of die edge each (HBM_SHORELINE_PER_STACK_MM in _area.py) is 121 stacks
    # x 2.048 TB/s = 248 TB/s and x 64 GiB = 7.6 TiB (HBM_STACK_BANDWIDTH / _CAPACITY); the
    # bounds leave 4x on top.
    "hbm_bandwidth": (1.0 * u.GB, 1.0 * u.PB, True),
    "hbm_bytes": (1.0 * u.MiB, 32.0 * u.TiB, True),
    # 0: no scale-up links. At most 8x the SerDes lanes of the largest switch ASIC (Broadcom
    # Tomahawk 5: 512 lanes of 100 Gb/s).
    "link_count": (1.0, 4096.0, True),
    # 1 B/s: the value presets without links carry (the models never use it when
    # link_count is 0). At most 5x the fastest port (1.6 Tb/s Ethernet, IEEE 802.3dj: 200 GB/s
    # per direction).
    "link_bandwidth": (1.0, 1.0 * u.TB, False),
    # 1 nm: below the most advanced node announced (TSMC A14, 1.4 nm class); 250 nm: older than
    # any accelerator the model is meant for (technology() extrapolates beyond 28 nm).
    "node_nm": (1.0, 250.0, False),
    # At least one core; 100x the cores of a whole wafer (WSE-3: 900,000 cores, Cerebras, Hot
    # Chips 2024).
    "core_count": (1.0, 1e8, False),
    # At least the enabled compute; 4x spare is far beyond any yield strategy published
    # (GA100 128 / 108 = 1.19; wafer-scale dies ~1.01).
    "compute_redundancy": (1.0, 4.0, False),
    # A fraction of the dense matrix peak: above 0 (the lower bound itself is excluded, see
    # _EXCLUSIVE_LOWER), at most all of it.
    "matmul_fraction": (0.0, 1.0, False),
    # Narrow matrix engines (issue 15), MACs per cycle per 16-bit MAC unit, from 0 (no such
    # engine; the lower bound itself allowed, so that a sweep or an optimizer passes continuously
    # from no engine to a narrow one) to 64. The widest shipping ratio is 6.2 (B300 FP4: 14 /
    # 2.25 PFLOP/s dense); 64 bounds the physically meaningful, not the market: a multiplier's
    # area grows with the product of its operand widths, so a 4-bit engine fits 16 x 16 / (4 x 4)
    # = 16 MACs in a 16-bit MAC's multiplier area, and even 1-bit operands fit 256, of which the
    # accumulators and adder trees a MAC still needs leave far fewer.
    "fp8_rate": (0.0, 64.0, False),
    "fp6_rate": (0.0, 64.0, False),
    "fp4_rate": (0.0, 64.0, False),
    "int8_rate": (0.0, 64.0, False),
    # Sustained fraction of a narrow engine's peak relative to the 16-bit engine's (the lower
    # bound itself excluded, see _EXCLUSIVE_LOWER): measured FP8 / BF16 ratios span 0.88 (H100)
    # to 1.04 (Gaudi 3), the NVFP4 K-loop 0.70 (B300; data/gemm_kernels.csv). A ratio of 2
    # would mean the narrow engine sustains twice the 16-bit engine's fraction of its own peak,
    # which with `matmul_fraction` above 0.5 exceeds the peak itself.
    "low_precision_efficiency": (0.0, 2.0, False),
    "fp4_efficiency": (0.0, 2.0, False),
    # Packed 16-bit vector FLOP per FP32 vector FLOP (the lower bound excluded): 2 (BF16) or 4
    # (FP16) on A100 (NVIDIA A100 whitepaper, table 1); 8 is twice the densest packing shipped.
    "vector_16bit_rate": (0.0, 8.0, False),
    # float32 holds integers exactly up to 2^24 = 16,777,216; no scale-up domain (NVL576) or
    # cluster comes near it.
    "scaleup_size": (1.0, 2.0**24, False),
    # A one-hop latency of a second is longer than light takes around the Earth (0.13 s).
    "scaleup_latency": (0.0, 1.0, False),
    # From a 10 Mb/s Ethernet port (1.25 MB/s; 1 MB/s below it) to 100x an 800 Gb/s NIC per
    # chip (ConnectX-8, GB200 NVL72).
    "scaleout_bandwidth": (1.0 * u.MB, 100.0 * 800.0 * u.Gbit, False),
    "scaleout_latency": (0.0, 1.0, False),
    # The path from a chip to its host's memory, which activation offloading uses; 0 = none
    # (offloading is then flagged, never silently free). Up to 100x NVLink-C2C's 450 GB/s per
    # direction (NVIDIA Grace Hopper Superchip datasheet: 900 GB/s bidirectional).
    "host_bandwidth": (1.0 * u.MB, 100.0 * 450.0 * u.GB, True),
    # Host memory a chip may fill, bytes; 0 = none. Up to 1 PiB per chip.
    "host_memory": (1.0 * u.MiB, 1024.0 * u.TiB, True),
})


# The valid ranges of the Network, Reliability and Economics fields (issue 18): (lower, upper,
# whether the lower bound itself is allowed). Their Modules check these; `FIELDS` reads them.
NETWORK_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "tiers": (1.0, 8.0, True),
    "radix": (2.0, 1e5, True),
    "oversubscription": (1.0, 1e3, True),
    "planes": (1.0, 64.0, True),
    "host_chips": (1.0, 1e6, True),
    "rack_chips": (1.0, 1e6, True),
}

_RATE = (0.0, 1.0, True)
RELIABILITY_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "accelerator_failure_rate": _RATE,
    "hbm_failure_rate": _RATE,
    "host_failure_rate": _RATE,
    "nic_failure_rate": _RATE,
    "link_failure_rate": _RATE,
    "switch_failure_rate": _RATE,
    "software_failure_rate": _RATE,
    "maintenance_rate": _RATE,
    "checkpoint_bandwidth": (0.0, 1e18, False),
    "restore_bandwidth": (0.0, 1e18, False),
    "restart_time": (0.0, 1e7, True),
    "repair_time": (0.0, 1e8, True),
    "spare_fraction": (0.0, 10.0, True),
}

_YEAR_S = 365.25 * 86400.0
ECONOMICS_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "chip_price_base": (0.0, 1e7, True),
    "chip_price_multiplier": (0.0, 1e3, False),
    "interposer_cost": (0.0, 1e6, True),
    "interposer_cost_per_extra_die": (0.0, 1e6, True),
    "host_cost": (0.0, 1e8, True),
    "host_power": (0.0, 1e6, True),
    "switch_cost": (0.0, 1.0, True),
    "switch_power": (0.0, 1.0, True),
    "optics_cost": (0.0, 1.0, True),
    "optics_power": (0.0, 1.0, True),
    "copper_power": (0.0, 1e3, True),
    "scaleup_switch_cost": (0.0, 1.0, True),
    "scaleup_switch_power": (0.0, 1.0, True),
    "storage_cost": (0.0, 1.0, True),
    "facility_cost": (0.0, 1e4, True),
    "pue": (1.0, 5.0, True),
    "electricity_price": (0.0, 1e-5, True),
    "it_lifetime": (0.0, 100.0 * _YEAR_S, False),
    "facility_lifetime": (0.0, 200.0 * _YEAR_S, False),
}

# LIMITS rows whose lower bound is not itself allowed.
_EXCLUSIVE_LOWER = frozenset({"matmul_fraction", "low_precision_efficiency", "fp4_efficiency",
                              "vector_16bit_rate"})

_OWNER_BOUNDS = {"Network": NETWORK_BOUNDS, "Reliability": RELIABILITY_BOUNDS,
                 "Economics": ECONOMICS_BOUNDS}


def _field(owner, name, label, unit, kind, resource, low, high, scale, **more) -> Field:
    if owner in _OWNER_BOUNDS:
        min_value, max_value, min_inclusive = _OWNER_BOUNDS[owner][name]
        zero_allowed = False
    else:
        (min_value, max_value, zero_allowed), min_inclusive = (LIMITS[name],
                                                               name not in _EXCLUSIVE_LOWER)
    return Field(owner=owner, name=name, label=label, unit=unit, kind=kind, resource=resource,
                 low=float(low), high=float(high), scale=scale, min_value=float(min_value),
                 max_value=float(max_value), zero_allowed=zero_allowed,
                 min_inclusive=min_inclusive, **more)


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
# ranges for a study, not limits of the model (those are LIMITS).
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
    # Narrow matrix engines: MACs per cycle per 16-bit MAC unit. From none (0) to twice the
    # widest shipping ratio of each (FP8 2, FP6 4 on MI355X, FP4 6.2 on B300, INT8 4 on Groq).
    _chip("fp8_rate", "FP8 engine rate", "", "compute", "FP8 engine", 0.0, 4.0, "linear",
          description="FP8 MACs per cycle per 16-bit MAC unit (0: no FP8 engine)"),
    _chip("fp6_rate", "FP6 engine rate", "", "compute", "FP6 engine", 0.0, 8.0, "linear",
          description="FP6 MACs per cycle per 16-bit MAC unit (0: no FP6 engine)"),
    _chip("fp4_rate", "FP4 engine rate", "", "compute", "FP4 engine", 0.0, 12.0, "linear",
          description="FP4 MACs per cycle per 16-bit MAC unit (0: no FP4 engine)"),
    _chip("int8_rate", "INT8 engine rate", "", "compute", "INT8 engine", 0.0, 8.0, "linear",
          description="INT8 MACs per cycle per 16-bit MAC unit (0: no INT8 engine)"),
    # Measured FP8 / BF16 sustained-fraction ratios: 0.88 (H100) to 1.04 (Gaudi 3).
    _chip("low_precision_efficiency", "low-precision efficiency", "", "compute", None, 0.8, 1.05,
          "linear", description="sustained fraction of the FP8 / FP6 / INT8 engines' peak "
          "relative to the 16-bit engine's"),
    # NVFP4 K-loop share relative to the 16-bit engine's, fitted on B300: 0.70
    # (data/gemm_kernels.csv).
    _chip("fp4_efficiency", "FP4 efficiency", "", "compute", None, 0.4, 1.05, "linear",
          description="K-loop share of the FP4 engine's peak relative to the 16-bit engine's "
          "sustained share (GPU FP4 GEMMs also pay a fixed time per wave)"),
    # Packed 16-bit vector math: none (1) to A100's FP16 rate (4).
    _chip("vector_16bit_rate", "16-bit vector rate", "", "compute", "vector compute", 1.0, 4.0,
          "linear", description="16-bit vector FLOP per FP32 vector FLOP"),
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
    # Half a PCIe Gen4 x16 link (31.5 GB/s per direction, DGX A100) to twice NVLink-C2C's
    # 450 GB/s.
    _system("host_bandwidth", "host link bandwidth", "B/s", "memory", "host link", 16 * u.GB,
            900 * u.GB, "log", display_unit="GB/s", display_scale=u.GB,
            description="per-chip bandwidth to host memory, one direction (activation "
            "offloading)"),
    # Half a DGX A100 320 GB's 128 GB per GPU (1 TB / 8) to a GH200's 480 GB.
    _system("host_memory", "host memory", "B", "memory", "host memory", 64 * u.GB,
            512 * u.GB, "log", display_unit="GB", display_scale=u.GB,
            description="host memory per chip for offloaded activations"),
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


# The valid range of every continuous field, as the Modules' `__check_init__` reads it.
CHIP_BOUNDS: Mapping[str, Bounds] = types.MappingProxyType(
    {f.name: f.bounds for f in _FIELDS if f.owner == "Chip"})
SYSTEM_BOUNDS: Mapping[str, Bounds] = types.MappingProxyType(
    {f.name: f.bounds for f in _FIELDS if f.owner == "System"})
