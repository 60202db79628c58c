"""Number formats, the matrix engines that compute on them, and what a MAC of each costs.

Two tables, both static data:

- `FORMATS`: every number format a tensor can be stored in (weights, activations, gradients, KV
  cache, optimizer state): bits per element *including* its share of block scales, and the
  matrix engine that multiplies it natively. Block-scaled formats (MXFP8 / MXFP4: 32 elements
  share one 8-bit E8M0 scale; NVFP4: 16 elements share one FP8 E4M3 scale) need an engine that
  applies the scales in its datapath (`Chip.block_scaling`).
- `ENGINES`: the matrix engines a chip may carry ("bf16" is the 16-bit array `Chip.mac_units`
  counts; "fp8", "fp6", "fp4", "int8" are the narrower ones whose rates are `Chip.fp8_rate`, ...).

The area and energy of one MAC of each engine relative to a 16-bit MAC come from Horowitz's
45 nm operation table (ISSCC 2014 keynote "Computing's energy problem"; transcribed identically
by Gholami et al. 2021, "A Survey of Quantization Methods", Fig. 15, and by Hennessy & Patterson,
Computer Architecture 6e, Fig. 1.13). Floating-point multipliers and adders scale as a power of
the significand width, the power fixed by Horowitz's FP16 and FP32 pair (multiplier area
exponent 1.98: an array multiplier is quadratic in its width); narrower formats extrapolate it.

- **Energy** of a MAC: its multiplier plus an FP32 accumulate (INT32 for INT8): the part of a
  MAC's energy that does not narrow with the inputs. Checked, not fitted: an FP8 MAC then costs
  0.564 of a 16-bit MAC, and H100's measured max-achievable matmul rates at its 700 W limit
  imply 794.5 / 1402.6 = 0.566 (BF16 vs FP8, data/chips.csv).
- **Area** of a MAC: its multiplier plus an adder as wide as its product (the adder tree of a
  dot-product unit; the one wide accumulator per dot product is shared by all its products).
  Checked, not fitted: with it the per-MAC transistor fit (`fit_compute_transistors`) puts B200
  and B300, whose FP4 engines are the largest, at reticle-sized dies ("2 x reticle sized GPUs")
  rather than past the reticle, as an FP32 adder per MAC would.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

# Horowitz 2014, 45 nm, 0.9 V: (energy pJ, area um^2) per operation.
HOROWITZ_45NM: Mapping[str, tuple[float, float]] = MappingProxyType({
    "int8_add": (0.03, 36.0),
    "int16_add": (0.05, 67.0),
    "int32_add": (0.1, 137.0),
    "fp16_add": (0.4, 1360.0),
    "fp32_add": (0.9, 4184.0),
    "int8_mult": (0.2, 282.0),
    "int32_mult": (3.1, 3495.0),
    "fp16_mult": (1.1, 1640.0),
    "fp32_mult": (3.7, 7700.0),
})

# Significand width (with the hidden bit) of the floating-point formats: IEEE FP16 11, FP32 24;
# the element formats of the OCP Microscaling (MX) specification v1.0 (2023): FP8 E4M3 4,
# FP6 E2M3 4, FP4 E2M1 2 (E4M3 and E2M1 as Transformer Engine's FP8 and NVFP4 docs state). An
# engine is sized by the widest significand it multiplies (FP16 for the 16-bit array, E4M3 for
# FP8).
SIGNIFICAND_BITS: Mapping[str, int] = MappingProxyType(
    {"fp32": 24, "fp16": 11, "fp8": 4, "fp6": 4, "fp4": 2})


def _exponent(unit: str, kind: int) -> float:
    """Power of the significand width in Horowitz's FP16 -> FP32 `unit` ("mult" or "add");
    kind 0: energy, 1: area."""
    ratio = HOROWITZ_45NM[f"fp32_{unit}"][kind] / HOROWITZ_45NM[f"fp16_{unit}"][kind]
    return math.log(ratio) / math.log(SIGNIFICAND_BITS["fp32"] / SIGNIFICAND_BITS["fp16"])


MULTIPLIER_ENERGY_EXPONENT = _exponent("mult", 0)  # 1.555
MULTIPLIER_AREA_EXPONENT = _exponent("mult", 1)  # 1.982
ADDER_AREA_EXPONENT = _exponent("add", 1)  # 1.440


def _fp(unit: str, bits: int | float, kind: int) -> float:
    """Horowitz's FP16 `unit` scaled to a `bits`-wide significand (kind 0 energy, 1 area)."""
    exponent = {("mult", 0): MULTIPLIER_ENERGY_EXPONENT, ("mult", 1): MULTIPLIER_AREA_EXPONENT,
                ("add", 1): ADDER_AREA_EXPONENT}[unit, kind]
    return HOROWITZ_45NM[f"fp16_{unit}"][kind] * (bits / SIGNIFICAND_BITS["fp16"]) ** exponent


def mac_cost_45nm(engine: str) -> tuple[float, float]:
    """(energy pJ, area um^2) of one MAC of `engine` at 45 nm (see the module docstring)."""
    if engine == "int8":
        energy = HOROWITZ_45NM["int8_mult"][0] + HOROWITZ_45NM["int32_add"][0]
        area = HOROWITZ_45NM["int8_mult"][1] + HOROWITZ_45NM["int16_add"][1]
        return energy, area
    bits = SIGNIFICAND_BITS["fp16" if engine == "bf16" else engine]
    energy = _fp("mult", bits, 0) + HOROWITZ_45NM["fp32_add"][0]
    area = _fp("mult", bits, 1) + _fp("add", 2 * bits, 1)
    return energy, area


Engine = Literal["bf16", "fp8", "fp6", "fp4", "int8"]
ENGINE_NAMES: tuple[str, ...] = get_args(Engine)
LOW_PRECISION_ENGINES: tuple[str, ...] = ENGINE_NAMES[1:]

# The Chip field holding each narrow engine's rate (MACs per cycle per 16-bit MAC unit).
ENGINE_RATE_FIELD: Mapping[str, str] = MappingProxyType(
    {e: f"{e}_rate" for e in LOW_PRECISION_ENGINES})

# Which wider engines can run an engine's format at their own rate (a narrow operand fits a wide
# multiplier): the 16-bit array runs every format; FP8 and FP6 engines run FP6 and FP4. INT8
# runs on the 16-bit array (an 8-bit integer fits an 11-bit significand) but not on FP engines.
WIDER_ENGINES: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "bf16": (), "fp8": ("bf16",), "fp6": ("bf16", "fp8"), "fp4": ("bf16", "fp8", "fp6"),
    "int8": ("bf16",)})


@dataclasses.dataclass(frozen=True)
class EngineCost:
    """What one MAC of an engine costs relative to one 16-bit MAC (dimensionless)."""

    energy: float
    area: float


def _relative(engine: str) -> EngineCost:
    e, a = mac_cost_45nm(engine)
    e16, a16 = mac_cost_45nm("bf16")
    return EngineCost(energy=e / e16, area=a / a16)


# Energy / area: bf16 1 / 1; fp8 0.564 / 0.203; fp6 as fp8; fp4 0.489 / 0.070; int8 0.150 / 0.065.
ENGINES: Mapping[str, EngineCost] = MappingProxyType({e: _relative(e) for e in ENGINE_NAMES})


Format = Literal["fp32", "bf16", "fp16", "fp8", "fp8_block", "mxfp8", "mxfp6", "mxfp4", "nvfp4",
                 "int8", "int4"]
FORMAT_NAMES: tuple[str, ...] = get_args(Format)


@dataclasses.dataclass(frozen=True)
class FormatSpec:
    """A number format as stored in memory and multiplied by a matrix engine.

    **Fields:** `bits` per element, block scales included; `engine` that multiplies it natively
    (None: no matrix engine takes it as an operand: FP32 here, INT4 weights, which current
    engines de-quantize); `block` elements sharing one scale (0: one scale per tensor or none);
    `block_scaled`: the engine must apply per-block scales inside the dot product
    (`Chip.block_scaling`), or a kernel emulates it.
    """

    bits: float
    engine: str | None
    block: int = 0
    block_scaled: bool = False

    @property
    def bytes(self) -> float:
        """Bytes per element, block scales included."""
        return self.bits / 8.0


FORMATS: Mapping[str, FormatSpec] = MappingProxyType({
    "fp32": FormatSpec(32.0, None),
    "bf16": FormatSpec(16.0, "bf16"),
    "fp16": FormatSpec(16.0, "bf16"),
    # Per-tensor FP8 (E4M3 / E5M2) with one FP32 scale per tensor: 8 bits per element.
    "fp8": FormatSpec(8.0, "fp8"),
    # DeepSeek-V3-style 1 x 128 blocks with an FP32 scale (Transformer Engine `fp8_blockwise`
    # docs: 128-element blocks, FP32 scales): 8 + 32 / 128 bits.
    "fp8_block": FormatSpec(8.0 + 32.0 / 128.0, "fp8", block=128, block_scaled=True),
    # OCP MX v1.0: 32 elements share an 8-bit E8M0 scale.
    "mxfp8": FormatSpec(8.0 + 8.0 / 32.0, "fp8", block=32, block_scaled=True),
    "mxfp6": FormatSpec(6.0 + 8.0 / 32.0, "fp6", block=32, block_scaled=True),
    "mxfp4": FormatSpec(4.0 + 8.0 / 32.0, "fp4", block=32, block_scaled=True),
    # NVFP4: E2M1 elements, an FP8 E4M3 scale per 16 (Transformer Engine `nvfp4.rst`; the FP32
    # per-tensor scale is negligible): 4 + 8 / 16 bits.
    "nvfp4": FormatSpec(4.0 + 8.0 / 16.0, "fp4", block=16, block_scaled=True),
    "int8": FormatSpec(8.0, "int8"),
    # INT4 weights with a 16-bit scale and zero point per group of 128 (AWQ, Lin et al. 2024,
    # MLSys: "INT4-g128"): 4 + 32 / 128 bits. No current engine multiplies INT4: de-quantized.
    "int4": FormatSpec(4.0 + 32.0 / 128.0, None, block=128),
})
assert set(FORMATS) == set(FORMAT_NAMES)


def check_format(owner: str, field: str, value, allowed=FORMAT_NAMES) -> FormatSpec:
    """The `FormatSpec` of `value`, or a `ValueError` naming the field and the allowed names."""
    if value not in allowed:
        raise ValueError(f"{owner}.{field} must be one of {sorted(allowed)}; got {value!r}")
    return FORMATS[value]
