"""`Chip`: one accelerator die (or a batch of them), as a pytree of continuous SI quantities."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float

from ._fields import CHIP_BOUNDS
from ._once import once_per_evaluation
from ._precision import ENGINE_NAMES, ENGINE_RATE_FIELD
from ._technology import HbmGeneration
from ._validate import as_float_array, check_choice, check_range, concrete, format_value

SramKind = Literal["cache", "scratchpad"]
CoreKind = Literal["simt", "spatial"]
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
    - `fp8_rate`, `fp6_rate`, `fp4_rate`, `int8_rate`: dense MACs per cycle of each narrow
      matrix engine per 16-bit MAC unit (H100: FP8 2, INT8 2; B200: FP8 2, FP6 2, FP4 4;
      TPU v5p: FP8 1, run on the 16-bit array). 0: the chip has no engine for that format.
      Peak FP8 FLOP/s = 2 * mac_units * fp8_rate * clock_hz. Each engine costs area and energy
      per MAC by its operand width (`dse.hardware.ENGINES`; see `area` and `power`).
    - `low_precision_efficiency`: sustained fraction of the narrow engines' peak on large
      GEMMs relative to the 16-bit engine's (measured max-achievable FP8 / BF16 matmul
      fractions: H100 0.88, B200 0.98), for the FP8, FP6 and INT8 engines. 1: as the 16-bit
      engine.
    - `vector_16bit_rate`: 16-bit vector FLOP per FP32 vector FLOP (`vector_flops` is the FP32
      rate): packed BF16 / FP16 arithmetic on the vector units (A100: BF16 2). 1: no packing.
    - `fp4_efficiency`: the same for the K-loop of the FP4 engine's GEMMs, which on a GPU run
      in waves of block-scaled tiles with a fixed time per wave (`dse.models.gemm`); B300 0.70
      (fitted to Transformer Engine's profile with that fixed time; 0.47 without it), B200 1
      (assumed: its one-K measurement cannot separate the two). 1: as the 16-bit engine.
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
    - `block_scaling` (static): the matrix engines apply per-block scales inside the dot
      product (MXFP8 / MXFP4 / NVFP4 natively: Blackwell, CDNA4). Without it a block-scaled
      format is de-quantized or emulated.
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
    fp8_rate: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    fp6_rate: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    fp4_rate: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    int8_rate: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    low_precision_efficiency: Float[Array, "*batch"] = eqx.field(converter=as_float_array,
                                                                 default=1.0)
    fp4_efficiency: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    vector_16bit_rate: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    matmul_fraction: Float[Array, "*batch"] = eqx.field(
        converter=as_float_array, default=TYPICAL_MATMUL_FRACTION
    )
    # Choices take any str: `__check_init__` names the field and the allowed values
    # (`SramKind`, `CoreKind`, `HbmGeneration`) in a ValueError.
    sram_kind: str = eqx.field(static=True, default="cache")
    core_kind: str = eqx.field(static=True, default="simt")
    hbm_generation: str = eqx.field(static=True, default="HBM3")
    die_count: int = eqx.field(static=True, default=1)
    block_scaling: bool = eqx.field(static=True, default=False)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field, (lo, hi, zero_allowed, lo_inclusive) in CHIP_BOUNDS.items():
            check_range("Chip", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inclusive, zero_allowed=zero_allowed)
        check_choice("Chip", "sram_kind", self.sram_kind, get_args(SramKind))
        check_choice("Chip", "core_kind", self.core_kind, get_args(CoreKind))
        check_choice("Chip", "hbm_generation", self.hbm_generation, get_args(HbmGeneration))
        if not isinstance(self.die_count, int) or self.die_count < 1:
            raise ValueError(f"Chip.die_count must be an integer >= 1; got {self.die_count!r}")
        if not isinstance(self.block_scaling, bool):
            raise ValueError(f"Chip.block_scaling must be True or False; got "
                             f"{self.block_scaling!r}")
        self._check_hbm()

    def _check_hbm(self):
        """HBM is all or nothing: capacity and bandwidth both > 0, or both 0 (operands in SRAM).

        A chip with 80 GiB of HBM and 0 B/s to it is not an SRAM-only chip; the models would
        treat it as one and report it faster than it can be.
        """
        bandwidth, capacity = concrete(self.hbm_bandwidth), concrete(self.hbm_bytes)
        if bandwidth is None or capacity is None:
            return
        if self.hbm_generation == "none":
            for field, value in (("hbm_bandwidth", bandwidth), ("hbm_bytes", capacity)):
                if np.any(value != 0):
                    raise ValueError(f"Chip.{field} must be 0 when hbm_generation='none'; got "
                                     f"{format_value(value)}")
        bandwidth, capacity = np.broadcast_arrays(bandwidth, capacity)
        mixed = (bandwidth > 0) != (capacity > 0)
        if np.any(mixed):
            i = np.argwhere(mixed)[0] if mixed.ndim else ()
            where = f" at index {tuple(int(k) for k in i)}" if mixed.ndim else ""
            raise ValueError(
                "Chip.hbm_bandwidth and Chip.hbm_bytes must both be > 0 (a chip with HBM) or "
                f"both 0 (operands in SRAM); got hbm_bandwidth {float(bandwidth[tuple(i)]):g} "
                f"B/s and hbm_bytes {float(capacity[tuple(i)]):g} B{where}")

    # Derived quantities (pure, so they trace and differentiate).
    @property
    @once_per_evaluation
    def peak_flops(self) -> Float[Array, "*batch"]:
        """Peak dense matrix FLOP/s (2 FLOP per MAC per cycle)."""
        return 2.0 * self.mac_units * self.clock_hz

    @once_per_evaluation
    def rate(self, engine: str) -> Float[Array, "*batch"]:
        """MACs per cycle of `engine` ("bf16", "fp8", "fp6", "fp4", "int8") per 16-bit MAC unit
        (1 for "bf16"; 0 where the chip has no such engine)."""
        check_choice("Chip.rate", "engine", engine, ENGINE_NAMES)
        if engine == "bf16":
            return jnp.ones_like(self.mac_units)
        return getattr(self, ENGINE_RATE_FIELD[engine])

    @once_per_evaluation
    def matrix_peak(self, engine: str) -> Float[Array, "*batch"]:
        """Peak dense FLOP/s of `engine` (2 FLOP per MAC per cycle; 0 without the engine)."""
        return self.peak_flops * self.rate(engine)

    @property
    @once_per_evaluation
    def link_bandwidth_total(self) -> Float[Array, "*batch"]:
        """All links together, one direction, bytes/s."""
        return self.link_count * self.link_bandwidth

    @property
    @once_per_evaluation
    def has_hbm(self) -> Bool[Array, "*batch"]:
        """True where the chip has HBM (else its operands and state live in SRAM)."""
        return self.hbm_bytes > 0

    @property
    @once_per_evaluation
    def memory_capacity(self) -> Float[Array, "*batch"]:
        """Where a workload's weights, states and activations live, bytes: the HBM, or the
        SRAM of a chip without HBM."""
        return jnp.where(self.has_hbm, self.hbm_bytes, self.sram_bytes)

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
        for field in ("sram_kind", "core_kind", "hbm_generation", "die_count", "block_scaling"):
            if getattr(chip, field) != getattr(first, field):
                raise ValueError(
                    f"stack_chips: Chip.{field} differs ({getattr(first, field)!r} in "
                    f"{first.name}, {getattr(chip, field)!r} in {chip.name}); only chips that "
                    "share their static fields can form one batch")
    name = "|".join(dict.fromkeys(c.name for c in chips))
    chips = [dataclasses.replace(c, name=name) for c in chips]
    return jax.tree.map(lambda *xs: jnp.stack(xs), *chips)
