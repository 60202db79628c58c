"""`Chip`: one accelerator die (or a batch of them), as a pytree of continuous SI quantities."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._validate import as_float_array, check_choice, check_range

SramKind = Literal["cache", "scratchpad"]
CoreKind = Literal["simt", "spatial"]
HbmGeneration = Literal["none", "HBM2", "HBM2e", "HBM3", "HBM3e", "HBM4"]

# Allowed range of every continuous field: (lower, upper, lower_inclusive).
CHIP_BOUNDS: dict[str, tuple[float, float, bool]] = {
    "mac_units": (0.0, float("inf"), False),
    "clock_hz": (0.0, float("inf"), False),
    "vector_flops": (0.0, float("inf"), False),
    "sram_bytes": (0.0, float("inf"), False),
    "hbm_bandwidth": (0.0, float("inf"), True),
    "hbm_bytes": (0.0, float("inf"), True),
    "link_count": (0.0, float("inf"), True),
    "link_bandwidth": (0.0, float("inf"), False),
    "node_nm": (1.0, 250.0, False),
    "core_count": (0.0, float("inf"), False),
    "compute_redundancy": (1.0, 4.0, True),
    "matmul_fraction": (0.0, 1.0, False),
}

# Median of the measured maximum-achievable matmul rates / dense peaks of the seven chips that
# data/chips.csv has them for (A100 0.869, H100 0.803, B200 0.776, GB200 0.729, MI300X 0.511,
# Gaudi 2 0.969, Gaudi 3 0.677; stas00/ml-engineering MAMF table): the `matmul_fraction` of a
# chip nobody has measured. A statistic of measurements, not a fit.
TYPICAL_MATMUL_FRACTION = 0.7756


class Chip(eqx.Module):
    """An accelerator die: compute, on-chip SRAM, HBM and off-chip links.

    Every continuous field is an array leaf (a scalar for one chip, a leading batch axis for
    many), so `jax.grad` returns a `Chip` of derivatives and `jax.vmap` maps over designs.
    Integer-valued knobs (`link_count`, `core_count`) are stored as floats: the optimizers relax
    them and snap them back explicitly.

    **Fields** (SI units):

    - `mac_units`: matrix multiply-accumulate units enabled, each one 16-bit MAC per cycle
      (dense). Peak matrix FLOP/s = 2 * mac_units * clock_hz.
    - `clock_hz`: clock of the matrix units, Hz.
    - `vector_flops`: peak non-matrix (vector / SIMD) FLOP/s, used by element-wise ops.
    - `sram_bytes`: on-chip SRAM that the workload can use for tiling and for resident weights
      (L2 / LLC + per-core shared memory / scratchpad), bytes.
    - `hbm_bandwidth`: off-chip memory bandwidth, bytes/s (0 for SRAM-only chips).
    - `hbm_bytes`: off-chip memory capacity, bytes (0 for SRAM-only chips).
    - `link_count`: off-chip scale-up links (NVLink, ICI, XGMI, Ethernet ports).
    - `link_bandwidth`: bandwidth of one link in one direction, bytes/s.
    - `node_nm`: process node, nm (continuous: `technology(node_nm)` interpolates).
    - `core_count`: independently scheduled cores enabled (SMs, CUs, tiles).
    - `compute_redundancy`: physical / enabled compute on the die (GA100 has 128 SMs on silicon,
      108 enabled: 1.185). Spare cores cost area and buy yield.
    - `matmul_fraction`: fraction of the peak matrix FLOP/s the chip sustains on its best large
      GEMM: the clock it holds under its power limit times the issue efficiency of its matrix
      pipeline (measured maximum-achievable matmul / dense peak; H100 0.80, A100 0.87). Default
      `TYPICAL_MATMUL_FRACTION`, the median of the measured chips.
    - `sram_kind` (static): "cache" (hardware-managed, with tags, ECC and crossbar, as in GPU L2)
      or "scratchpad" (software-managed macros, as in TPU / IPU / Groq / Cerebras).
    - `core_kind` (static): "simt" (GPU streaming multiprocessors / compute units: large
      register files and schedulers per core) or "spatial" (systolic / tile arrays: TPU, Groq,
      Graphcore, Cerebras). The two have very different area per core and per MAC.
    - `hbm_generation` (static): memory generation whose stacks supply the bandwidth/capacity.
    - `die_count` (static): dies in the package; reticle and yield apply per die.
    - `name` (static): label for tables and plots.
    """

    mac_units: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    clock_hz: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    vector_flops: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    sram_bytes: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    hbm_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    hbm_bytes: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    link_count: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    link_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    node_nm: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    core_count: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    compute_redundancy: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=1.0
    )
    matmul_fraction: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=TYPICAL_MATMUL_FRACTION
    )
    # Choices take any str: `__check_init__` names the field and the allowed values
    # (`SramKind`, `CoreKind`, `HbmGeneration`) in a ValueError.
    sram_kind: str = eqx.field(static=True, default="cache")
    core_kind: str = eqx.field(static=True, default="simt")
    hbm_generation: str = eqx.field(static=True, default="HBM3")
    die_count: int = eqx.field(static=True, default=1)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field, (lo, hi, lo_inc) in CHIP_BOUNDS.items():
            check_range("Chip", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inc)
        check_choice("Chip", "sram_kind", self.sram_kind, get_args(SramKind))
        check_choice("Chip", "core_kind", self.core_kind, get_args(CoreKind))
        check_choice("Chip", "hbm_generation", self.hbm_generation, get_args(HbmGeneration))
        if not isinstance(self.die_count, int) or self.die_count < 1:
            raise ValueError(f"Chip.die_count must be an integer >= 1; got {self.die_count!r}")
        if self.hbm_generation == "none":
            for field in ("hbm_bandwidth", "hbm_bytes"):
                value = getattr(self, field)
                if not isinstance(value, jax.core.Tracer) and bool(np.any(np.asarray(value) != 0)):
                    raise ValueError(
                        f"Chip.{field} must be 0 when hbm_generation='none'; got {value}"
                    )

    # Derived quantities (pure, so they trace and differentiate).
    @property
    def peak_flops(self) -> Float[Array, "*batch"]:
        """Peak dense matrix FLOP/s (2 FLOP per MAC per cycle)."""
        return 2.0 * self.mac_units * self.clock_hz

    @property
    def link_bandwidth_total(self) -> Float[Array, "*batch"]:
        """All links together, one direction, bytes/s."""
        return self.link_count * self.link_bandwidth

    @property
    def batch_shape(self) -> tuple[int, ...]:
        """Leading batch shape shared by every continuous field (() for one chip)."""
        return jnp.shape(self.mac_units)

    def replace(self, **changes) -> Chip:
        """A copy with some fields changed (validated like a new Chip)."""
        return dataclasses.replace(self, **changes)


CONTINUOUS_CHIP_FIELDS: tuple[str, ...] = tuple(CHIP_BOUNDS)


def stack_chips(chips) -> Chip:
    """Stack Chips into one batched Chip (leading axis).

    The chips must share their structural (static) fields; the batch is named after them all.
    """
    chips = list(chips)
    if not chips:
        raise ValueError("stack_chips needs at least one Chip")
    first = chips[0]
    for chip in chips[1:]:
        for field in ("sram_kind", "core_kind", "hbm_generation", "die_count"):
            if getattr(chip, field) != getattr(first, field):
                raise ValueError(
                    f"stack_chips: Chip.{field} differs ({getattr(first, field)!r} in "
                    f"{first.name}, {getattr(chip, field)!r} in {chip.name}); only chips that "
                    "share their static fields can form one batch")
    name = "|".join(dict.fromkeys(c.name for c in chips))
    chips = [dataclasses.replace(c, name=name) for c in chips]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *chips)
