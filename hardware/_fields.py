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
    """

    name: str
    owner: Literal["Chip", "System"]
    kind: Kind
    resource: str | None
    low: float
    high: float
    scale: Scale

    def path(self, design: Any) -> str:
        """Dotted path of this field in `design` (a `Chip`, or a `System`: "chip.<name>")."""
        kind = type(design).__name__
        if kind == self.owner:
            return self.name
        if kind == "System" and self.owner == "Chip":
            return f"chip.{self.name}"
        raise ValueError(f"field {self.name!r} is a field of {self.owner}; a {kind} has no "
                         f"such field")


def _field(owner, name, label, unit, kind, resource, low, high, scale, **more) -> Field:
    return Field(owner=owner, name=name, label=label, unit=unit, kind=kind, resource=resource,
                 low=float(low), high=float(high), scale=scale, **more)


_chip = functools.partial(_field, "Chip")
_system = functools.partial(_field, "System")


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
)

FIELDS: Mapping[str, Field] = types.MappingProxyType({f.name: f for f in _FIELDS})
