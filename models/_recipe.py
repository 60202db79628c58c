"""Low-precision training recipes as the frameworks run them, and the precisions of the state.

A recipe (`TrainingPlan.precision`) says which GEMMs run in which format, how their scales are
found and what extra kernels that costs. Facts from NVIDIA Transformer Engine's docs
(github.com/NVIDIA/TransformerEngine @d0067d0d, docs/features/low_precision_training/):

- "Each step down in precision can accelerate the 12 GEMMs per transformer layer (4 Fprop + 4
  Dgrad + 4 Wgrad)" (`speedups.rst`): the QKV, output-projection and two MLP linears, each with
  its forward, data-gradient and weight-gradient GEMM, all in the recipe's format. Attention
  and the other operations (norms, softmax) stay in high precision by default
  (`introduction.rst`); Megatron-Core's output layer is not a Transformer Engine module and
  stays 16-bit.
- **Delayed scaling** (FP8, one FP32 scale per tensor from an amax history): one read of the
  tensor per quantization. **Current scaling**: "reading the tensor twice" (its amax, then the
  cast). **Blockwise** (DeepSeek-V3 style, 1 x 128 / 128 x 128 FP32 scales): on Hopper
  "block-scaled GEMMs are software-emulated". **MXFP8**: 32-element blocks with E8M0 scales;
  the rowwise and columnwise quantizations are separate and both made from the high-precision
  tensor; Blackwell only. **NVFP4**: E2M1 with an E4M3 scale per 16 elements, a random
  Hadamard transform on the wgrad operands, stochastic rounding of gradients; Blackwell only.
- Hopper "cannot efficiently access elements in columnwise fashion, so columnwise tensors need
  to be physically transposed in memory": every quantized GEMM input is written twice (rowwise
  and columnwise), on Hopper by a fused cast-transpose, for MX formats by two quantizations.
- Master weights are FP32 (in the optimizer); "FP8 training does not always reduce memory
  compared to BF16/FP16" (`performance_considerations.rst`): the 16-bit parameters stay, and
  the quantized weights (both orientations) are cached across the micro-batches of a step.

`RECIPES` holds the numbers each recipe implies; `_layer.py` and `_memory.py` read them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, get_args

from dse.hardware._precision import FORMATS, FormatSpec

Recipe = Literal["bf16", "fp8_delayed", "fp8_current", "fp8_blockwise", "mxfp8", "nvfp4"]
RECIPE_NAMES: tuple[str, ...] = get_args(Recipe)
StatePrecision = Literal["fp32", "bf16"]
STATE_PRECISIONS: tuple[str, ...] = get_args(StatePrecision)

# Vector FLOP per element of one quantization pass: amax (one compare), scale (one multiply),
# convert (one op), counted as in `_layer.py`'s element-wise ops.
QUANTIZE_FLOPS = 3.0
# NVFP4's random Hadamard transform multiplies each 16-element block by a 16 x 16 matrix
# (Transformer Engine `nvfp4.rst`): 16 multiply-adds, 32 FLOP per element.
HADAMARD_FLOPS = 2.0 * 16.0
# Blockwise FP8 without block scaling in the tensor cores: each 128-deep slice of the
# reduction is an FP8 MMA whose partial result is scaled and accumulated in FP32 on the vector
# units (DeepSeek-V3 technical report, arXiv:2412.19437, Sec. 3.3.2: promotion to CUDA cores
# every 128 elements; the "DeepSeek-V3 style" recipe of Transformer Engine): 2 vector FLOP per
# output element per 128 of the reduction.
EMULATED_BLOCK = 128.0


@dataclasses.dataclass(frozen=True)
class RecipeSpec:
    """What a training recipe computes in and what it adds (static data).

    **Fields:**

    - `gemm_format`: `dse.hardware.FORMATS` name of the linear layers' GEMM operands.
    - `reads`: HBM reads of a 16-bit tensor to quantize it into both orientations: 1 for
      delayed scaling (the scale is known before the fused cast-transpose); 2 for current
      scaling (an amax pass, then the cast) and for the block-scaled formats (rowwise and
      columnwise quantizations are each made from the 16-bit tensor); 3 for NVFP4 (a
      per-tensor amax for its FP32 global scale, then the rowwise cast and the columnwise
      Hadamard cast). Checked against Transformer Engine's B300 GEMM profile (autocast minus
      pre-quantized time per layer) in `tests/test_precision.py`.
    - `hadamard`: NVFP4's random Hadamard transform on the weight-gradient operands.
    - `description`: one line for tables.
    """

    gemm_format: str
    reads: float = 1.0
    hadamard: bool = False
    description: str = ""

    @property
    def format(self) -> FormatSpec:
        """The `FormatSpec` of the GEMM operands."""
        return FORMATS[self.gemm_format]

    @property
    def engine(self) -> str:
        """The matrix engine the linear layers' GEMMs run on."""
        return self.format.engine

    @property
    def low_precision(self) -> bool:
        """True when the linear layers' GEMMs run narrower than 16 bits."""
        return self.engine != "bf16"


RECIPES: Mapping[str, RecipeSpec] = MappingProxyType({
    "bf16": RecipeSpec("bf16", description="16-bit GEMMs (BF16 / FP16 mixed precision)"),
    "fp8_delayed": RecipeSpec("fp8", description="FP8, per-tensor scales from an amax history"),
    "fp8_current": RecipeSpec("fp8", reads=2.0,
                              description="FP8, per-tensor scales from the current amax"),
    "fp8_blockwise": RecipeSpec("fp8_block", reads=2.0,
                                description="FP8, 1 x 128 / 128 x 128 block scales (FP32)"),
    "mxfp8": RecipeSpec("mxfp8", reads=2.0, description="MXFP8, 32-element blocks, E8M0 scales"),
    "nvfp4": RecipeSpec("nvfp4", reads=3.0, hadamard=True,
                        description="NVFP4, 16-element blocks, E4M3 scales, RHT on wgrad"),
})
assert set(RECIPES) == set(RECIPE_NAMES)

# Bytes per parameter of each state precision.
STATE_BYTES: Mapping[str, float] = MappingProxyType({"fp32": 4.0, "bf16": 2.0})
