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

Kind = Literal["compute", "memory", "network", "process"]
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

    - `name`: the field's name on its Module; `owner`: "Chip" or "System".
    - `kind`: "compute", "memory", "network" or "process".
    - `resource`: the resource `dse.sensitivity` names when this field binds a metric
      ("HBM bandwidth", "scale-up links"); None for a field that is not a resource (the
      process node, spare cores).
    - `low`, `high`, `scale`: default sweep bounds (SI) and scale ("linear", "log" or
      "integer"), the ranges a study starts from unless it names its own.
    - `min_value`, `max_value`, `zero_allowed`: the values the Module accepts (SI): finite and
      in [min_value, max_value], or exactly 0 where `zero_allowed` (0 means "absent": no HBM,
      no links). Physical limits, see `LIMITS`.
    """

    name: str
    owner: Literal["Chip", "System"]
    kind: Kind
    resource: str | None
    low: float
    high: float
    scale: Scale
    min_value: float
    max_value: float
    zero_allowed: bool

    def __post_init__(self):
        super().__post_init__()
        if not self.min_value <= self.low < self.high <= self.max_value:
            raise ValueError(f"Field {self.name!r}: default sweep range [{self.low:g}, "
                             f"{self.high:g}] must lie inside the field's valid range "
                             f"{self.allowed}")

    @property
    def bounds(self) -> Bounds:
        """The valid range, as the Modules' `__check_init__` reads it."""
        return Bounds(self.min_value, self.max_value, self.zero_allowed)

    @property
    def allowed(self) -> str:
        """The valid range in words, as errors print it ("finite and in [1, 1e+10]")."""
        return range_text(self.min_value, self.max_value, zero_allowed=self.zero_allowed)

    def from_unit(self, u: Any) -> Any:
        """Values across the whole valid range from unit coordinates (numpy): log-spaced from
        `min_value` (u = 0) to `max_value` (u = 1); a field whose lower bound is 0 spans
        [max_value * 1e-12, max_value] with u = 0 exactly 0."""
        import numpy as np

        u = np.asarray(u, np.float64)
        floor = self.min_value if self.min_value > 0 else self.max_value * 1e-12
        x = floor * (self.max_value / floor) ** u
        # Exactly on the bounds at the ends (the power rounds).
        return np.where(u <= 0, self.min_value, np.where(u >= 1, self.max_value, x))

    def path(self, design: Any) -> str:
        """Dotted path of this field in `design` (a `Chip`, or a `System`: "chip.<name>")."""
        kind = type(design).__name__
        if kind == self.owner:
            return self.name
        if kind == "System" and self.owner == "Chip":
            return f"chip.{self.name}"
        raise ValueError(f"field {self.name!r} is a field of {self.owner}; a {kind} has no "
                         f"such field")


class Bounds(NamedTuple):
    """Valid values of a field: finite and in [low, high], or 0 where `zero_allowed`."""

    low: float
    high: float
    zero_allowed: bool = False


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
    # 1 B/s: the placeholder of presets without links (the models never use it when
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
    # float32 holds integers exactly up to 2^24 = 16,777,216; no scale-up domain (NVL576) or
    # cluster comes near it.
    "scaleup_size": (1.0, 2.0**24, False),
    # A one-hop latency of a second is longer than light takes around the Earth (0.13 s).
    "scaleup_latency": (0.0, 1.0, False),
    # From a 10 Mb/s Ethernet port (1.25 MB/s; 1 MB/s below it) to 100x an 800 Gb/s NIC per
    # chip (ConnectX-8, GB200 NVL72).
    "scaleout_bandwidth": (1.0 * u.MB, 100.0 * 800.0 * u.Gbit, False),
    "scaleout_latency": (0.0, 1.0, False),
})


def _field(owner, name, label, unit, kind, resource, low, high, scale, **more) -> Field:
    min_value, max_value, zero_allowed = LIMITS[name]
    return Field(owner=owner, name=name, label=label, unit=unit, kind=kind, resource=resource,
                 low=float(low), high=float(high), scale=scale, min_value=float(min_value),
                 max_value=float(max_value), zero_allowed=zero_allowed, **more)


_chip = functools.partial(_field, "Chip")
_system = functools.partial(_field, "System")


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
)

FIELDS: Mapping[str, Field] = types.MappingProxyType({f.name: f for f in _FIELDS})


# The valid range of every continuous field, as the Modules' `__check_init__` reads it.
CHIP_BOUNDS: Mapping[str, Bounds] = types.MappingProxyType(
    {f.name: f.bounds for f in _FIELDS if f.owner == "Chip"})
SYSTEM_BOUNDS: Mapping[str, Bounds] = types.MappingProxyType(
    {f.name: f.bounds for f in _FIELDS if f.owner == "System"})
