"""Preset chips and systems from public specifications. Presets are data, never fitted results.

Unless a line says otherwise, a number is the chips.csv row of that chip in `data/`
(its `source` column names the vendor document). Derived fields are arithmetic on those:
`mac_units` = dense 16-bit peak FLOP/s / (2 * clock); a narrow engine's rate = its dense peak /
the dense 16-bit peak; `low_precision_efficiency` = (measured max-achievable FP8 matmul / FP8
peak) / (the same for BF16). Chips without a chips.csv row (B300, GB300, MI325X, MI355X) cite
their sources beside them (the vendor pages and ml-engineering tables named there). Fields that
no source used here states are listed in `PRESET_ASSUMPTIONS` with the reasoning, so a user
sees which numbers are firm.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from . import units as u
from ._chip import TYPICAL_MATMUL_FRACTION, Chip
from ._system import System
from ._validate import PresetMapping

TFLOP = u.TFLOPS


def _macs(peak_tflops: float | int, clock_ghz: float | int) -> float:
    return peak_tflops * TFLOP / (2.0 * clock_ghz * u.GHz)


@dataclass(frozen=True)
class Published:
    """Published figures used to validate the models (not inputs to them)."""

    die_area_mm2: float | int | None  # per die, chips.csv `die_area_mm2`
    tdp_w: float | int | None  # chips.csv `tdp_w`
    is_gpu: bool


_CHIPS: dict[str, Chip] = {}
PUBLISHED: dict[str, Published] = {}
PRESET_ASSUMPTIONS: dict[str, list[str]] = {}


def _add(chip: Chip, published: Published, assumptions: list[str] | None = None) -> None:
    _CHIPS[chip.name] = chip
    PUBLISHED[chip.name] = published
    assumptions = list(assumptions or [])
    if abs(float(chip.matmul_fraction) / TYPICAL_MATMUL_FRACTION - 1.0) < 1e-6:
        assumptions.append("matmul_fraction: no measured max-achievable matmul in the sources "
                           "used; the median of the measured chips (TYPICAL_MATMUL_FRACTION) "
                           "assumed")
    PRESET_ASSUMPTIONS[chip.name] = assumptions


# NVIDIA V100 SXM2 (TSMC 12 nm FFN). FP32 15.7 TFLOP/s and the full GV100 die's 84 SMs (80
# enabled): NVIDIA Tesla V100 whitepaper (2017), Table 1 and Fig. 4.
_add(Chip(
    name="V100", mac_units=_macs(125, 1.53), clock_hz=1.53 * u.GHz, vector_flops=15.7 * TFLOP,
    sram_bytes=13.5 * u.MiB, hbm_bandwidth=900 * u.GB, hbm_bytes=32 * u.GiB, link_count=6,
    link_bandwidth=25 * u.GB, node_nm=12, core_count=80, compute_redundancy=84 / 80,
    sram_kind="cache", core_kind="simt", hbm_generation="HBM2",
), Published(die_area_mm2=815, tdp_w=300, is_gpu=True))

# NVIDIA A100 SXM4 (TSMC N7). FP32 19.5 TFLOP/s and the full GA100's 128 SMs (108 enabled):
# NVIDIA A100 Tensor Core GPU Architecture whitepaper (2020), Table 1 and Fig. 4.
_A100 = dict(
    mac_units=_macs(312, 1.41), clock_hz=1.41 * u.GHz, vector_flops=19.5 * TFLOP,
    sram_bytes=57.3 * u.MiB, link_count=12, link_bandwidth=25 * u.GB, node_nm=7,
    core_count=108, compute_redundancy=128 / 108, sram_kind="cache", core_kind="simt",
    int8_rate=624 / 312,  # dense INT8 624 TOPS (chips.csv)
    # Non-tensor BF16 39 TFLOP/s against FP32 19.5 (A100 whitepaper, "Peak BF16 (non-Tensor)",
    # as transcribed in a public repository's notes: find_string id 62500505134). FP16 packs
    # 4 (78 TFLOP/s); the models' 16-bit activations are BF16.
    vector_16bit_rate=39 / 19.5,
    # chips.csv A100 40GB: measured max-achievable BF16 matmul 271.2 TFLOP/s (stas00 MAMF); the
    # 80GB part has the same GA100 die, clock and 400 W limit.
    matmul_fraction=271.2 / 312,
)
_add(Chip(name="A100-40GB", hbm_bandwidth=1555 * u.GB, hbm_bytes=40 * u.GiB,
          hbm_generation="HBM2", **_A100),
     Published(die_area_mm2=826, tdp_w=400, is_gpu=True))
_add(Chip(name="A100-80GB", hbm_bandwidth=2000 * u.GB, hbm_bytes=80 * u.GiB,
          hbm_generation="HBM2e", **_A100),
     Published(die_area_mm2=826, tdp_w=400, is_gpu=True))

# NVIDIA H100 SXM5 (TSMC 4N). FP32 66.9 TFLOP/s (non-tensor): NVIDIA H100 Tensor Core GPU
# Architecture whitepaper v1.04, Table 3; GH100 full die 144 SMs (chips.csv notes).
_H100 = dict(
    mac_units=_macs(989.4, 1.83), clock_hz=1.83 * u.GHz, vector_flops=66.9 * TFLOP,
    link_count=18, link_bandwidth=25 * u.GB, node_nm=4, core_count=132,
    compute_redundancy=144 / 132, sram_kind="cache", core_kind="simt",
    # Dense FP8 1979 TFLOP/s (chips.csv); dense INT8 1979 TOPS (stas00/ml-engineering
    # compute/accelerator/README.md @744d01e1, TFLOPS table). Hopper has no MX block scaling
    # (Transformer Engine support matrix: MXFP8 / NVFP4 on SM 10.0 / 10.3 only).
    fp8_rate=1979 / 989.4, int8_rate=1979 / 989.4,
    # chips.csv H100: measured max-achievable BF16 matmul 794.5 TFLOP/s; the same MAMF table
    # notes "H200 is the same" (stas00/ml-engineering compute/accelerator/README.md @744d01e1).
    matmul_fraction=794.5 / 989.4,
)
# Measured max-achievable matmul (chips.csv, stas00 MAMF): BF16 794.5 and FP8 1402.6 TFLOP/s.
_H100_BF16_FRACTION = 794.5 / 989.4
_add(Chip(name="H100-SXM", sram_bytes=79.39 * u.MiB, hbm_bandwidth=3352 * u.GB,
          hbm_bytes=80 * u.GiB, hbm_generation="HBM3",
          low_precision_efficiency=(1402.6 / 1979) / _H100_BF16_FRACTION, **_H100),
     Published(die_area_mm2=814, tdp_w=700, is_gpu=True))
# H200: the same GH100 die and compute as H100 (chips.csv notes), HBM3e. Its measured FP8 MAMF
# is 1453.4 TFLOP/s (chips.csv); its BF16 MAMF is H100's (ml-engineering: "H200 is the same").
_add(Chip(name="H200", sram_bytes=83.0 * u.MiB, hbm_bandwidth=4800 * u.GB,
          hbm_bytes=141 * u.GiB, hbm_generation="HBM3e",
          low_precision_efficiency=(1453.4 / 1979) / _H100_BF16_FRACTION, **_H100),
     Published(die_area_mm2=None, tdp_w=700, is_gpu=True))

# NVIDIA B200 / GB200 (two reticle-sized dies per package, TSMC 4NP).
_BLACKWELL_ASSUMPTIONS = [
    "vector_flops: FP32 non-tensor rate not in the sources used; the H100 ratio "
    "(66.9 / 989.4 of dense BF16) is assumed",
    "sram_bytes: not in the sources used; two GH100-sized L2 + shared-memory sets "
    "(2 x 79.39 MiB) are assumed",
    "core_count: not in the sources used; 2 x 72 SMs assumed (half of each die's 144-SM "
    "GH100-class floorplan per die enabled)",
    "node_nm: TSMC 4NP, an N4-family node; 4 nm used",
]
# Dense peaks, TFLOP/s: FP8 = FP6 = 2x BF16, INT8 2x (chips.csv B200 4500; GB200 5000 from
# ml-engineering's TFLOPS table, GB200 NVL72 spec page); FP4: B200 9000 (DGX B200: 72 PFLOPS
# dense FP4 / 8 GPUs; chips.csv notes), GB200 10000 (GB200 NVL72: 1440 PFLOPS sparse FP4 / 72 /
# 2). Blackwell applies MX / NVFP4 block scales in its tensor cores (Transformer Engine support
# matrix: MXFP8 and NVFP4 on SM 10.0). Measured max-achievable matmul (chips.csv): BF16 1745 /
# 1822, FP8 3432.5 / 3615.6 TFLOP/s. matmul_fraction: the BF16 ones over the peaks (the GB200's
# higher quoted peak, its clock, is not sustained under load).
# NVFP4 on B200: an FP4 GEMM on a GPU runs in waves of 128 x 256 block-scaled tiles, each its
# K-loop plus a fixed time (`dse.models.block_scaled_fp4_time`). The K-loop is taken at the FP4
# peak times the 16-bit engine's sustained share (fp4_efficiency 1), and the fixed time
# (`dse.models.FP4_WAVE_CYCLES`) is fitted by `dse.calibration.fit_fp4_gemm` to vLLM's CUTLASS
# NVFP4 GEMM benchmark (vllm-project/vllm PR #20646, benchmarks/kernels/bench_nvfp4_gemm.py, July
# 2025; the SM100 kernel, on the B200 of the same author's FP8 tunings, PR #18778;
# data/gemm_kernels.csv): Llama 3.1 8B N=6144 K=4096, pre-quantized (the activation
# quantization is modelled apart, `InferencePlan.activations`), M = 1 ... 16,384 (4.4 to 3904
# TFLOP/s), within 9.3% at the median. Its one K cannot separate a slower K-loop (0.51 with no
# fixed time fits it as well) from the fixed time, which the larger K of training GEMMs amortize
# (Megatron-Bridge's GB200 NVFP4 runs are 1.31-1.49x their MXFP8 ones, data/precision_pairs.csv:
# more than a 0.51 K-loop allows). The GB200 has no measurement of its own and takes the B200's
# (the same die, as the GB300 takes the B300's): its higher quoted peaks already carry its clock.
_B200_FP4_EFFICIENCY = 1.0
for _name, _peak, _clock, _hbm, _tdp, _fp4, _mamf16, _mamf8 in (
        ("B200", 2250, 1.965, 180, 1000, 9000, 1745.0, 3432.5),
        ("GB200", 2500, 2.062, 186, 1200, 10000, 1822.0, 3615.6)):
    _add(Chip(
        name=_name, mac_units=_macs(_peak, _clock), clock_hz=_clock * u.GHz,
        vector_flops=_peak * TFLOP * 66.9 / 989.4, sram_bytes=2 * 79.39 * u.MiB,
        hbm_bandwidth=8000 * u.GB, hbm_bytes=_hbm * u.GiB, link_count=18,
        link_bandwidth=50 * u.GB, node_nm=4, core_count=144, compute_redundancy=1.0,
        sram_kind="cache", core_kind="simt", hbm_generation="HBM3e", die_count=2,
        fp8_rate=2.0, fp6_rate=2.0, fp4_rate=_fp4 / _peak, int8_rate=2.0,
        low_precision_efficiency=(_mamf8 / (2 * _peak)) / (_mamf16 / _peak),
        block_scaling=True,
        fp4_efficiency=_B200_FP4_EFFICIENCY,
        matmul_fraction=_mamf16 / _peak,
    ), Published(die_area_mm2=None, tdp_w=_tdp, is_gpu=True), _BLACKWELL_ASSUMPTIONS + (
        ["fp4_efficiency: no measured NVFP4 GEMM rate in the sources used; the B200's "
         "(the same die) assumed"] if _name == "GB200" else []))

# NVIDIA B300 (HGX) and GB300 (per GPU): Blackwell Ultra, two reticle-sized dies on TSMC 4NP,
# 160 SMs (NVIDIA Technical Blog, "Inside NVIDIA Blackwell Ultra", 2025). Dense TFLOP/s: BF16
# 2250 / 2500, FP8 = FP6 4500 / 5000 (ml-engineering TFLOPS table, notes 21 and 24); FP4 14000
# for HGX B300 (Blackwell Ultra datasheet, HGX B300 column: "18 | 14 PFLOPS" sparse | dense) and
# 15000 for GB300 ("15 PetaFLOPS dense NVFP4", the blog). INT8 was cut on Blackwell Ultra: 319
# TOPS per B300 package (Tom's Hardware, Hot Chips 2025 report) and 165 TOPS per GB300 (Verda
# GB300 NVL72 article, a third-party table): low-confidence figures. HBM3e: 270 GB at 7.7 TB/s
# (HGX B300) and 279 GB at 8 TB/s (GB300 NVL72 column); up to 1100 W (HGX B300) and 1400 W
# (GB300). NVLink 5: 18 links of 50 GB/s per direction. Measured max-achievable matmul on B300:
# BF16 1769, FP8 3353.3 TFLOP/s (ml-engineering MAMF table).
# NVFP4 K-loop rate on B300 relative to its 16-bit engine's sustained share, with the B200's fixed
# cycles per wave: fitted by `dse.calibration.fit_fp4_layer_efficiency` to Transformer Engine's
# GEMM profile of a 4096 / 16384 transformer layer at 15,872 tokens (NVIDIA/TransformerEngine
# docs/features/low_precision_training/gemm_profiling/gemm_profiling.rst @ce616e1f,
# pre-quantized; data/gemm_kernels.csv): its 12 NVFP4 GEMMs (19.17 TFLOP) in 3.754 ms, 5107
# TFLOP/s, 0.365 of 14000 (BF16: 12.835 ms, 0.664 of 2250). "Well short of the theoretical 2-3x".
_B300_FP4_EFFICIENCY = 0.7006
_BLACKWELL_ULTRA_ASSUMPTIONS = [
    "clock_hz: not disclosed (ml-engineering: 'not disclosed'); the B200 / GB200 clock of the "
    "same package class is assumed (it sets mac_units, not the peaks)",
    "core_count: 160 SMs of the full chip (NVIDIA blog); NVIDIA notes the SM count varies by SKU",
    "vector_flops: the H100 ratio (66.9 / 989.4 of dense BF16) is assumed",
    "sram_bytes: not in the sources used; the B200 assumption (2 x 79.39 MiB) is kept",
    "node_nm: TSMC 4NP, an N4-family node; 4 nm used",
    "int8_rate: INT8 throughput from third-party reports (Tom's Hardware / Verda)",
]
for _name, _peak, _clock, _hbm, _bw, _tdp, _fp4, _int8 in (
        ("B300", 2250, 1.965, 270, 7700, 1100, 14000, 319),
        ("GB300", 2500, 2.062, 279, 8000, 1400, 15000, 165)):
    _add(Chip(
        name=_name, mac_units=_macs(_peak, _clock), clock_hz=_clock * u.GHz,
        vector_flops=_peak * TFLOP * 66.9 / 989.4, sram_bytes=2 * 79.39 * u.MiB,
        hbm_bandwidth=_bw * u.GB, hbm_bytes=_hbm * u.GB, link_count=18,
        link_bandwidth=50 * u.GB, node_nm=4, core_count=160, compute_redundancy=1.0,
        sram_kind="cache", core_kind="simt", hbm_generation="HBM3e", die_count=2,
        fp8_rate=2.0, fp6_rate=2.0, fp4_rate=_fp4 / _peak, int8_rate=_int8 / _peak,
        low_precision_efficiency=(3353.3 / 4500) / (1769.0 / 2250), block_scaling=True,
        fp4_efficiency=_B300_FP4_EFFICIENCY, matmul_fraction=1769.0 / 2250,
    ), Published(die_area_mm2=None, tdp_w=_tdp, is_gpu=True),
        _BLACKWELL_ULTRA_ASSUMPTIONS + (
            ["low_precision_efficiency, fp4_efficiency, matmul_fraction: B300's measured "
             "fractions assumed for the GB300 (the same die)"] if _name == "GB300" else []))

# AMD MI250X: two CDNA2 GCDs on TSMC N6 (AMD CDNA2 whitepaper); FP32 vector 47.9 TFLOP/s
# (AMD Instinct MI250X data sheet).
_add(Chip(
    name="MI250X", mac_units=_macs(383, 1.7), clock_hz=1.7 * u.GHz, vector_flops=47.9 * TFLOP,
    sram_bytes=29.75 * u.MiB, hbm_bandwidth=3280 * u.GB, hbm_bytes=128 * u.GiB, link_count=7,
    link_bandwidth=50 * u.GB, node_nm=6, core_count=220, compute_redundancy=1.0,
    sram_kind="cache", core_kind="simt", hbm_generation="HBM2e", die_count=2,
    int8_rate=383 / 383,  # dense INT8 383 TOPS (chips.csv)
), Published(die_area_mm2=None, tdp_w=560, is_gpu=True))

# AMD's max-achievable FLOPs of hipBLASLt on its own best shapes (ROCm blogs, "Measuring
# Max-Achievable FLOPs - Part 2", 2025, Table 1; ROCm 6.3.0, hipBLASLt db8e93b): MI300X BF16 708,
# FP8 1273 TFLOP/s; MI325X BF16 843, FP8 1519 (its footnote 4 gives 1223.6 / 840.8 / 1527.7 for
# some of the same runs; the table's figures are used). The FP8 sustained fraction relative to
# BF16's, from one source and one library, is what `low_precision_efficiency` holds.
_MI300X_FP8_EFFICIENCY = (1273.0 / 2614.9) / (708.0 / 1307.4)
_MI325X_FP8_EFFICIENCY = (1519.0 / 2614.9) / (843.0 / 1307.4)

# AMD MI300X: 8 XCDs (TSMC N5) of 40 CUs with 38 enabled (AMD CDNA3 whitepaper), FP32 vector
# 163.4 TFLOP/s (AMD Instinct MI300X data sheet). The 256 MiB Infinity Cache sits on the IODs.
_add(Chip(
    name="MI300X", mac_units=_macs(1307.4, 2.1), clock_hz=2.1 * u.GHz,
    vector_flops=163.4 * TFLOP, sram_bytes=307.0 * u.MiB, hbm_bandwidth=5300 * u.GB,
    hbm_bytes=192 * u.GiB, link_count=7, link_bandwidth=64 * u.GB, node_nm=5, core_count=304,
    compute_redundancy=320 / 304, sram_kind="cache", core_kind="simt", hbm_generation="HBM3",
    die_count=8,
    # Dense FP8 and INT8 2614.9 (chips.csv; ROCm mi300.md: 4096 FLOPs/clock/CU for both, 2048
    # for BF16). CDNA3 has no MX block scaling (the CDNA4 whitepaper introduces MXFP4/MXFP6).
    fp8_rate=2614.9 / 1307.4, int8_rate=2614.9 / 1307.4,
    # chips.csv: measured max-achievable BF16 matmul 668.4 TFLOP/s (ROCm 6.3, tunable ops on).
    matmul_fraction=668.4 / 1307.4,
    low_precision_efficiency=_MI300X_FP8_EFFICIENCY,
), Published(die_area_mm2=None, tdp_w=750, is_gpu=True),
    ["die_count: 8 compute dies (XCDs); the 4 I/O dies are not modelled separately"])

# AMD MI325X: MI300X's compute (ml-engineering note 18: "same compute as MI300X") with 256 GB of
# HBM3E at 6.0 TB/s and a 1000 W peak board power (ml-engineering notes 3 and 18, memory table).
_add(Chip(
    name="MI325X", mac_units=_macs(1307.4, 2.1), clock_hz=2.1 * u.GHz,
    vector_flops=163.4 * TFLOP, sram_bytes=307.0 * u.MiB, hbm_bandwidth=6000 * u.GB,
    hbm_bytes=256 * u.GB, link_count=7, link_bandwidth=64 * u.GB, node_nm=5, core_count=304,
    compute_redundancy=320 / 304, sram_kind="cache", core_kind="simt", hbm_generation="HBM3e",
    die_count=8, fp8_rate=2614.9 / 1307.4, int8_rate=2614.9 / 1307.4,
    # AMD's max-achievable BF16 843 TFLOP/s (above): its 1000 W budget sustains more clock.
    matmul_fraction=843.0 / 1307.4, low_precision_efficiency=_MI325X_FP8_EFFICIENCY,
), Published(die_area_mm2=None, tdp_w=1000, is_gpu=True),
    ["die_count: 8 compute dies (XCDs) as MI300X; the I/O dies are not modelled separately",
     "sram_bytes, links, node: MI300X's (the same compute silicon)"])

# AMD MI355X (CDNA4): 256 CUs (32 per XCD x 8) at 2.4 GHz peak engine clock; FLOPs per clock per
# CU: BF16 4096, FP8 8192, FP6 = FP4 (MXFP6 / MXFP4) 16384, INT8 8192 (AMD "Introducing AMD CDNA 4
# Architecture", Table 1, as tabulated in ROCm/xla rocm_core_info_table.cc): 2516.6 TFLOP/s
# dense BF16 (AMD quotes 2500). FP32 157.3 TFLOP/s (ml-engineering note 22). On-chip memory:
# 256 MiB Infinity Cache + 32 MiB L2 (4 MiB per XCD) + 160 KiB LDS per CU (ROCm "AMD GPU
# specifications"). 288 GB HBM3E at 8 TB/s, 1400 W board power (ml-engineering). XCDs on TSMC
# N3P (ISSCC 2026 reports). Infinity Fabric: 7 links of 153 GB/s "peak link bandwidth", read as
# 76.5 GB/s per direction (ml-engineering network README). CDNA4 multiplies MX formats natively.
_add(Chip(
    name="MI355X", mac_units=256 * 4096 / 2, clock_hz=2.4 * u.GHz, vector_flops=157.3 * TFLOP,
    sram_bytes=(256 + 32) * u.MiB + 256 * 160 * u.KiB, hbm_bandwidth=8000 * u.GB,
    hbm_bytes=288 * u.GB, link_count=7, link_bandwidth=76.5 * u.GB, node_nm=3, core_count=256,
    compute_redundancy=1.0, sram_kind="cache", core_kind="simt", hbm_generation="HBM3e",
    die_count=8, fp8_rate=2.0, fp6_rate=4.0, fp4_rate=4.0, int8_rate=2.0, block_scaling=True,
), Published(die_area_mm2=None, tdp_w=1400, is_gpu=True),
    ["die_count: 8 compute dies (XCDs); the 2 I/O dies are not modelled separately",
     "compute_redundancy: spare CUs per XCD not in the sources used; none assumed",
     "node_nm: N3P reported second-hand (ISSCC 2026 coverage); 3 nm used",
     "low_precision_efficiency: no measured FP8 matmul rate in the sources used; 1 assumed",
     "fp4_efficiency: no measured FP4 GEMM in the sources used; 1 assumed, and its FP4 GEMMs "
     "run in waves of the 128 x 256 block-scaled tile, with the fixed cycles per wave, "
     "measured on NVIDIA's B200"])

# Google TPUs: MXUs are 128 x 128 systolic arrays (Jouppi et al., "TPU v4", ISCA 2023, Sec. 2),
# so mac_units = TensorCores x MXUs x 16384 and the clock follows from the peak.
_TPU_ASSUMPTIONS = [
    "vector_flops: VPU rate not in the sources used; each TensorCore is given the 128 x 8 = "
    "1024-lane VPU that chips.csv states for TPU v6e, one FMA (2 FLOP) per lane per cycle",
    "sram_bytes: on-chip memory not in chips.csv; TPU v4 CMEM 128 MiB + VMEM 32 MiB "
    "(Jouppi et al., ISCA 2023) used for v4, and the same for v5p",
]
_add(Chip(
    name="TPUv4", mac_units=2 * 4 * 128 * 128, clock_hz=275 * TFLOP / (2 * 2 * 4 * 128 * 128),
    vector_flops=2 * 1024 * 2 * 275 * TFLOP / (2 * 2 * 4 * 128 * 128),
    sram_bytes=160 * u.MiB, hbm_bandwidth=1200 * u.GB,
    hbm_bytes=32 * u.GiB, link_count=6, link_bandwidth=50 * u.GB, node_nm=7, core_count=2,
    sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2",
    int8_rate=275 / 275,  # INT8 275 TOPS (chips.csv)
), Published(die_area_mm2=None, tdp_w=192, is_gpu=False),
    _TPU_ASSUMPTIONS + ["link_count / link_bandwidth: 6 ICI links (3D torus) at 50 GB/s per "
                        "direction assumed (Jouppi et al. 2023 quote 6 links)"])
_add(Chip(
    name="TPUv5p", mac_units=2 * 4 * 128 * 128, clock_hz=459 * TFLOP / (2 * 2 * 4 * 128 * 128),
    vector_flops=2 * 1024 * 2 * 459 * TFLOP / (2 * 2 * 4 * 128 * 128),
    sram_bytes=160 * u.MiB, hbm_bandwidth=2765 * u.GB,
    hbm_bytes=95 * u.GB, link_count=6, link_bandwidth=1200 * u.GB / 2 / 6, node_nm=5,
    core_count=2, sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2e",
    # FP8 459 TFLOP/s, the BF16 rate (Google Cloud TPU v5p page: "Peak compute per chip (FP8)
    # 459"); INT8 918 TOPS (chips.csv).
    fp8_rate=459 / 459, int8_rate=918 / 459,
), Published(die_area_mm2=None, tdp_w=None, is_gpu=False),
    _TPU_ASSUMPTIONS + ["link_count: 6 (3D torus neighbours) sharing the 1200 GB/s "
                        "bidirectional ICI figure", "node_nm: not in the sources used; 5 nm"])
_add(Chip(
    name="TPUv5e", mac_units=4 * 128 * 128, clock_hz=197 * TFLOP / (2 * 4 * 128 * 128),
    vector_flops=1024 * 2 * 197 * TFLOP / (2 * 4 * 128 * 128),
    sram_bytes=48 * u.MiB, hbm_bandwidth=819 * u.GB,
    hbm_bytes=16 * u.GB, link_count=4, link_bandwidth=400 * u.GB / 2 / 4, node_nm=5,
    core_count=1, sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2",
    int8_rate=393 / 197,  # INT8 393 TOPS (chips.csv)
), Published(die_area_mm2=None, tdp_w=None, is_gpu=False),
    _TPU_ASSUMPTIONS[:1] + ["sram_bytes: not in the sources used; 48 MiB assumed",
                            "node_nm: not in the sources used; 5 nm"])
# TPU v6e (Trillium): one TensorCore of two 256 x 256 MXUs and a 128 x 8 VPU; 918 TFLOP/s BF16,
# 1836 TOPS INT8, 32 GB HBM at 1638 GB/s, 800 GB/s bidirectional ICI over 4 ports (Google Cloud
# TPU v6e page). FP8 918 TFLOP/s, the BF16 rate (Cloud TPU7x page, comparison table).
_add(Chip(
    name="TPUv6e", mac_units=2 * 256 * 256, clock_hz=918 * TFLOP / (2 * 2 * 256 * 256),
    vector_flops=1024 * 2 * 918 * TFLOP / (2 * 2 * 256 * 256), sram_bytes=48 * u.MiB,
    hbm_bandwidth=1638 * u.GB, hbm_bytes=32 * u.GB, link_count=4,
    link_bandwidth=800 * u.GB / 2 / 4, node_nm=5, core_count=1, sram_kind="scratchpad",
    core_kind="spatial", hbm_generation="HBM3", fp8_rate=918 / 918, int8_rate=1836 / 918,
), Published(die_area_mm2=None, tdp_w=None, is_gpu=False),
    ["clock_hz: derived from the peak and two 256 x 256 MXUs (3.5 GHz): higher than any TPU "
     "clock published, so the page's MXU count or peak counts something else; the peak, which "
     "the models use, is right",
     "vector_flops: the 1024-lane VPU, one FMA per lane per cycle at the derived clock",
     "sram_bytes: not in the sources used; TPU v5e's 48 MiB assumed",
     "hbm_generation: not in the sources used; HBM3 assumed (area and cost only)",
     "node_nm: not in the sources used; 5 nm"])

# Intel Gaudi 2 / Gaudi 3 (Hot Chips 2024, chips.csv). Ethernet ports: 24 x 100 GbE on
# Gaudi 2 (600 GB/s bidirectional / 24 / 2 = 12.5 GB/s per direction), 24 x 200 GbE on Gaudi 3.
_add(Chip(
    name="Gaudi2", mac_units=_macs(432, 1.65), clock_hz=1.65 * u.GHz,
    vector_flops=24 * 28.7 * TFLOP / 64, sram_bytes=48 * u.MiB, hbm_bandwidth=2460 * u.GB,
    hbm_bytes=96 * u.GB, link_count=24, link_bandwidth=12.5 * u.GB, node_nm=7, core_count=26,
    sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2e",
    # Dense FP8 865 TFLOP/s; measured max-achievable matmul BF16 418.7, FP8 826.5 (chips.csv).
    fp8_rate=865 / 432, low_precision_efficiency=(826.5 / 865) / (418.7 / 432),
    matmul_fraction=418.7 / 432,  # chips.csv measured max-achievable BF16 matmul
), Published(die_area_mm2=None, tdp_w=600, is_gpu=False),
    ["vector_flops: Gaudi 2 TPC rate not in the sources used; Gaudi 3's per-TPC BF16 vector "
     "rate (28.7 TFLOP/s / 64 TPCs) assumed for each of the 24 TPCs",
     "core_count: 2 MME + 24 TPC engines"])
_add(Chip(
    name="Gaudi3", mac_units=_macs(1835, 1.75), clock_hz=1.75 * u.GHz,
    vector_flops=28.7 * TFLOP, sram_bytes=96 * u.MB, hbm_bandwidth=3670 * u.GB,
    hbm_bytes=128 * u.GB, link_count=24, link_bandwidth=25 * u.GB, node_nm=5, core_count=72,
    sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2e", die_count=2,
    # FP8 1835 TFLOP/s, the BF16 rate; measured max-achievable matmul BF16 1243, FP8 1289.5
    # (chips.csv).
    fp8_rate=1835 / 1835, low_precision_efficiency=1289.5 / 1243,
    matmul_fraction=1243 / 1835,  # chips.csv measured max-achievable BF16 matmul
), Published(die_area_mm2=None, tdp_w=900, is_gpu=False),
    ["clock_hz: 1.75 GHz reproduces the 1835 TFLOP/s spec (shipping parts run 1.6 GHz, "
     "chips.csv notes)", "core_count: 8 MME + 64 TPC engines",
     "int8_rate: INT8 is supported (ml-engineering) but its rate is not published; 0 (no "
     "INT8 engine) assumed"])

# SRAM-heavy dies with published die areas (they test the SRAM area model).
# Groq TSP (GF 14 nm): 4 MXM planes of 320 x 320 int8 MACs (Abts et al., "Think Fast", ISCA
# 2020, Sec. 3) = 409,600 int8 MACs/cycle (chips.csv: ">400,000 integer MACs/cycle"). In FP16
# the MXM runs two [1 x 160] x [160 x 320] sub-operations per cycle instead of four int8
# [1 x 320] x [320 x 320] (Abts et al., "A Software-defined Tensor Streaming Multiprocessor for
# Large-scale Machine Learning", ISCA 2022, matrix-operation mapping: "K=[160,320] i.e. the
# vector lengths of the hardware for FP16 and int8 ... a TSP can run two FP16 or four int8
# sub-operations each cycle"): 2 x 160 x 320 = 102,400 16-bit MACs/cycle, the unit `mac_units`
# counts. That is 184 TFLOP/s FP16 at 900 MHz, against Groq's 188 TFLOP/s FP16 / 750 TOPS int8
# (TechPowerUp, Feb 2024, quoting Groq).
# 900 MHz nominal, 220 MB SRAM, 20 superlanes. No HBM.
_add(Chip(
    name="Groq-TSP", mac_units=2 * 160 * 320, clock_hz=0.9 * u.GHz,
    vector_flops=16 * 320 * 2 * 0.9 * u.GHz, sram_bytes=220 * u.MB, hbm_bandwidth=0.0,
    hbm_bytes=0.0, link_count=0, link_bandwidth=1.0, node_nm=14, core_count=20,
    sram_kind="scratchpad", core_kind="spatial", hbm_generation="none",
    int8_rate=4.0,  # four int8 sub-operations per cycle for two FP16 (Abts et al. 2022, above)
), Published(die_area_mm2=725, tdp_w=300, is_gpu=False),
    ["mac_units counts FP16 MACs (the MXM's int8 rate is 4x this)",
     "vector_flops: 16 VXM ALUs x 320 lanes, one fused op per cycle (ISCA 2020 Sec. 3)",
     "links: the chip-to-chip links are not in the sources used and are not modelled"])
# Cerebras WSE-2 (TSMC N7, one wafer): 850,000 cores, 40 GB SRAM. Each core's datapath does
# 4 FP16 FMACs per cycle (Lie, "Wafer-scale deep learning", Hot Chips 31, 2019).
_add(Chip(
    name="WSE-2", mac_units=850_000 * 4, clock_hz=1.1 * u.GHz,
    vector_flops=850_000 * 4 * 2 * 1.1 * u.GHz, sram_bytes=40 * u.GB, hbm_bandwidth=0.0,
    hbm_bytes=0.0, link_count=0, link_bandwidth=1.0, node_nm=7, core_count=850_000,
    compute_redundancy=1.01, sram_kind="scratchpad", core_kind="spatial",
    hbm_generation="none",
), Published(die_area_mm2=46225, tdp_w=15000, is_gpu=False),
    ["clock_hz: not in the sources used; 1.1 GHz assumed (affects peak FLOP/s only)",
     "compute_redundancy: Cerebras routes around defective cores with spares, count not in "
     "the sources used; 1% spare cores assumed",
     "a wafer-scale die exceeds the reticle by construction (stitched); its reticle margin "
     "is negative"])
# Graphcore GC200 (TSMC N7): 1472 tiles of 624 KiB SRAM each (= 897 MiB; chips.csv's "900 MB"
# is Graphcore's rounded "900 MiBytes") and 320 GB/s of IPU-Link bandwidth to other chips
# (both directions, unchanged from Mk1): Knowles, "Graphcore Colossus Mk2 IPU", Hot Chips 33
# (2021), as reported by Hardwareluxx 2021-08 ("Hot Chips 33: Wie die GC200 Colossus Mk2 IPU
# zusammengesetzt ist"). 250 TFLOP/s FP16 at 1.325 GHz (Graphcore IPU-M2000 datasheet clock).
_add(Chip(
    name="GC200", mac_units=_macs(250, 1.325), clock_hz=1.325 * u.GHz,
    vector_flops=250 * TFLOP / 4, sram_bytes=1472 * 624 * u.KiB, hbm_bandwidth=0.0,
    hbm_bytes=0.0, link_count=10, link_bandwidth=320 * u.GB / 2 / 10, node_nm=7,
    core_count=1472, sram_kind="scratchpad", core_kind="spatial", hbm_generation="none",
), Published(die_area_mm2=823, tdp_w=None, is_gpu=False),
    ["vector_flops: FP32 62.5 TFLOP/s (Graphcore GC200 launch figure) used as vector rate",
     "link_count: 10 IPU-Links (Graphcore IPU-M2000 documentation, not in chips.csv); area and "
     "power depend only on the 320 GB/s total (Hot Chips 33), split evenly over them",
     "links: the PCIe Gen4 x16 host link is not modelled (as for every preset)"])


CHIPS: Mapping[str, Chip] = PresetMapping("chip", _CHIPS)

# Host links and host memory (`System.host_bandwidth` / `host_memory`, for activation
# offloading), per GPU. PCIe x16, one direction: 16 lanes x 16 GT/s (Gen4) or 32 GT/s (Gen5)
# x 128b/130b encoding / 8 bits (PCI-SIG PCI Express 4.0 / 5.0 base specifications): 31.5 and
# 63 GB/s. DGX A100 (640 GB), DGX H100, DGX H200 and DGX B200 carry 2 TB of system memory
# for 8 GPUs (NVIDIA DGX A100, DGX H100 and DGX B200 datasheets; the DGX H100/H200 user guide).
# Grace systems: one Grace CPU serves two Blackwell GPUs over NVLink-C2C, 900 GB/s
# bidirectional (NVIDIA GB200 NVL72 page; the same Grace CPU and C2C in GB300), i.e. 225 GB/s
# per GPU per direction when both GPUs offload at once, and carries 480 GB of LPDDR5X (NVIDIA
# Grace CPU Superchip datasheet; 36 Grace CPUs x 480 GB = the NVL72's 17 TB). Other presets:
# 0 (their host links and host memory are not in the sources used).
_PCIE4_X16 = 16 * 16e9 * 128 / 130 / 8
_PCIE5_X16 = 16 * 32e9 * 128 / 130 / 8
_C2C_PER_GPU = 900 * u.GB / 2 / 2
_GRACE_MEMORY = 480 * u.GB

# Systems. Latencies: NVLink/NVSwitch one-hop ~ 1 us and InfiniBand ~ 5 us end-to-end are
# typical NCCL small-message latencies (NCCL tests on DGX A100, NVIDIA "Doubling all2all
# performance with NVIDIA Collective Communication Library 2.12" blog), used for both systems.
_SYSTEMS = {
    # DGX A100: 8 GPUs on NVSwitch; 8 x 200 Gb/s HDR InfiniBand per node (training_runs.csv
    # hardware column) = 25 GB/s per GPU per direction.
    "DGX-A100": System(chip=_CHIPS["A100-80GB"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=200 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", name="DGX-A100",
                       host_bandwidth=_PCIE4_X16, host_memory=2 * u.TB / 8),
    # DGX H100: 8 GPUs on NVSwitch gen3; 8 x 400 Gb/s ConnectX-7 per node (NVIDIA DGX H100
    # datasheet) = 50 GB/s per GPU per direction.
    "DGX-H100": System(chip=_CHIPS["H100-SXM"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=400 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", name="DGX-H100",
                       host_bandwidth=_PCIE5_X16, host_memory=2 * u.TB / 8),
    # GB200 NVL72: 72 GPUs in one NVLink domain (chips.csv GB200 source: NVL72 spec page);
    # 800 Gb/s ConnectX-8 per GPU for scale-out (NVIDIA GB200 NVL72 spec).
    "GB200-NVL72": System(chip=_CHIPS["GB200"], num_chips=72, scaleup_size=72,
                          scaleup_latency=1 * u.us, scaleout_bandwidth=800 * u.Gbit,
                          scaleout_latency=5 * u.us, topology="switch", name="GB200-NVL72",
                          host_bandwidth=_C2C_PER_GPU, host_memory=_GRACE_MEMORY / 2),
    # TPU v4 pod slice: 3D torus over ICI, 4096 chips per pod (chips.csv TPU v4 notes); the
    # data-centre network is not used inside a slice (scale-out = ICI rate).
    "TPUv4-pod": System(chip=_CHIPS["TPUv4"], num_chips=64, scaleup_size=4096,
                        scaleup_latency=1 * u.us, scaleout_bandwidth=50 * u.GB,
                        scaleout_latency=5 * u.us, topology="torus3d", fabric="ici",
                        name="TPUv4-pod"),
    # DGX H200: DGX H100's NVSwitch tier and 8 x 400 Gb/s ConnectX-7 per node (the DGX H100 /
    # H200 user guide lists one network configuration for both).
    "DGX-H200": System(chip=_CHIPS["H200"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=400 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", name="DGX-H200",
                       host_bandwidth=_PCIE5_X16, host_memory=2 * u.TB / 8),
    # DGX B200: 8 GPUs on two NVLink 5 switch chips (14.4 TB/s aggregate, NVIDIA DGX B200 page
    # as transcribed on the AIPS-Boom wiki); 8 x 400 Gb/s ConnectX-7 per node (DGX B200
    # datasheet).
    "DGX-B200": System(chip=_CHIPS["B200"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=400 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", name="DGX-B200",
                       host_bandwidth=_PCIE5_X16, host_memory=2 * u.TB / 8),
    # DGX B300: 8 GPUs, 2 NVLink switch chips, 8 x ConnectX-8 (800 Gb/s each) per node
    # (nvidia.com DGX B300 page, as transcribed in the sources of the precision notes).
    "DGX-B300": System(chip=_CHIPS["B300"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=800 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", name="DGX-B300"),
    # GB300 NVL72: 72 GPUs in one NVLink domain (18 NVLink switches, 130 TB/s) and 72
    # ConnectX-8 NICs (800 Gb/s), one per GPU (NVIDIA GTC 2025 material, as quoted on
    # glennklockwood.com/garden/processors/B300).
    "GB300-NVL72": System(chip=_CHIPS["GB300"], num_chips=72, scaleup_size=72,
                          scaleup_latency=1 * u.us, scaleout_bandwidth=800 * u.Gbit,
                          scaleout_latency=5 * u.us, topology="switch", name="GB300-NVL72",
                          host_bandwidth=_C2C_PER_GPU, host_memory=_GRACE_MEMORY / 2),
    # AMD 8-GPU platforms: every GPU links to each of the other 7 over Infinity Fabric (xGMI),
    # the 8-GPU scale-up domain (MI355X: Tom's Hardware, ISC 2025). Scale-out per GPU is not in
    # the sources used: one 400 Gb/s NIC per GPU, the DGX H100 class, is assumed.
    **{f"{n}-8": System(chip=_CHIPS[n], num_chips=8, scaleup_size=8, scaleup_latency=1 * u.us,
                        scaleout_bandwidth=400 * u.Gbit, scaleout_latency=5 * u.us,
                        topology="switch", fabric="xgmi", name=f"{n}-8")
       for n in ("MI300X", "MI325X", "MI355X")},
    # TPU v5p: 8960 chips per pod in a 3D torus (Google Cloud TPU v5p page); inside a slice the
    # ICI carries everything (scale-out = ICI rate, as for TPU v4).
    "TPUv5p-pod": System(chip=_CHIPS["TPUv5p"], num_chips=64, scaleup_size=8960,
                         scaleup_latency=1 * u.us, scaleout_bandwidth=100 * u.GB,
                         scaleout_latency=5 * u.us, topology="torus3d", fabric="ici",
                         name="TPUv5p-pod"),
    # TPU v6e: 256 chips per pod in a 2D torus (Google Cloud TPU v6e page).
    "TPUv6e-pod": System(chip=_CHIPS["TPUv6e"], num_chips=256, scaleup_size=256,
                         scaleup_latency=1 * u.us, scaleout_bandwidth=100 * u.GB,
                         scaleout_latency=5 * u.us, topology="torus2d", fabric="ici",
                         name="TPUv6e-pod"),
    # Gaudi 3 node: 8 cards, 21 of each card's 24 x 200 GbE ports for the other 7 cards (3 each)
    # and 3 ports for scale-out: 600 Gb/s per card (ml-engineering network README).
    "Gaudi3-8": System(chip=_CHIPS["Gaudi3"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=600 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", fabric="ethernet",
                       name="Gaudi3-8"),
}
SYSTEMS: Mapping[str, System] = PresetMapping("system", _SYSTEMS)

# Row names of each preset in data/chips.csv (for validation and fitting code).
CHIPS_CSV_NAME: dict[str, str] = {
    "V100": "NVIDIA V100 SXM2",
    "A100-40GB": "NVIDIA A100 SXM4 40GB",
    "A100-80GB": "NVIDIA A100 SXM4 80GB",
    "H100-SXM": "NVIDIA H100 SXM5 80GB",
    "H200": "NVIDIA H200 SXM 141GB",
    "B200": "NVIDIA B200 SXM 180GB",
    "GB200": "NVIDIA GB200 (per Blackwell GPU)",
    "MI250X": "AMD Instinct MI250X",
    "MI300X": "AMD Instinct MI300X",
    "TPUv4": "Google TPU v4",
    "TPUv5p": "Google TPU v5p",
    "TPUv5e": "Google TPU v5e",
    "TPUv6e": "Google TPU v6e (Trillium)",
    "Gaudi2": "Intel Gaudi 2",
    "Gaudi3": "Intel Gaudi 3",
    "Groq-TSP": "Groq TSP (LPU v1)",
    "WSE-2": "Cerebras WSE-2",
    "GC200": "Graphcore Colossus MK2 GC200 IPU",
}
