"""Preset chips and systems from public specifications. Presets are data, never fitted results.

Unless a line says otherwise, a number is the chips.csv row of that chip in `data/`
(its `source` column names the vendor document). Derived fields are arithmetic on those:
`mac_units` = dense 16-bit peak FLOP/s / (2 * clock). Fields that no source used here states
are listed in `PRESET_ASSUMPTIONS` with the reasoning, so a user sees which numbers are firm.
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
    # chips.csv H100: measured max-achievable BF16 matmul 794.5 TFLOP/s; the same MAMF table
    # notes "H200 is the same" (stas00/ml-engineering compute/accelerator/README.md @744d01e1).
    matmul_fraction=794.5 / 989.4,
)
_add(Chip(name="H100-SXM", sram_bytes=79.39 * u.MiB, hbm_bandwidth=3352 * u.GB,
          hbm_bytes=80 * u.GiB, hbm_generation="HBM3", **_H100),
     Published(die_area_mm2=814, tdp_w=700, is_gpu=True))
# H200: the same GH100 die and compute as H100 (chips.csv notes), HBM3e.
_add(Chip(name="H200", sram_bytes=83.0 * u.MiB, hbm_bandwidth=4800 * u.GB,
          hbm_bytes=141 * u.GiB, hbm_generation="HBM3e", **_H100),
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
# matmul_fraction: chips.csv measured max-achievable BF16 matmul, 1745 (B200) and 1822 (GB200)
# TFLOP/s: the GB200's higher quoted peak (its clock) is not sustained under load.
for _name, _peak, _clock, _hbm, _tdp, _mamf in (("B200", 2250, 1.965, 180, 1000, 1745),
                                                ("GB200", 2500, 2.062, 186, 1200, 1822)):
    _add(Chip(
        name=_name, mac_units=_macs(_peak, _clock), clock_hz=_clock * u.GHz,
        vector_flops=_peak * TFLOP * 66.9 / 989.4, sram_bytes=2 * 79.39 * u.MiB,
        hbm_bandwidth=8000 * u.GB, hbm_bytes=_hbm * u.GiB, link_count=18,
        link_bandwidth=50 * u.GB, node_nm=4, core_count=144, compute_redundancy=1.0,
        sram_kind="cache", core_kind="simt", hbm_generation="HBM3e", die_count=2,
        matmul_fraction=_mamf / _peak,
    ), Published(die_area_mm2=None, tdp_w=_tdp, is_gpu=True), _BLACKWELL_ASSUMPTIONS)

# AMD MI250X: two CDNA2 GCDs on TSMC N6 (AMD CDNA2 whitepaper); FP32 vector 47.9 TFLOP/s
# (AMD Instinct MI250X data sheet).
_add(Chip(
    name="MI250X", mac_units=_macs(383, 1.7), clock_hz=1.7 * u.GHz, vector_flops=47.9 * TFLOP,
    sram_bytes=29.75 * u.MiB, hbm_bandwidth=3280 * u.GB, hbm_bytes=128 * u.GiB, link_count=7,
    link_bandwidth=50 * u.GB, node_nm=6, core_count=220, compute_redundancy=1.0,
    sram_kind="cache", core_kind="simt", hbm_generation="HBM2e", die_count=2,
), Published(die_area_mm2=None, tdp_w=560, is_gpu=True))

# AMD MI300X: 8 XCDs (TSMC N5) of 40 CUs with 38 enabled (AMD CDNA3 whitepaper), FP32 vector
# 163.4 TFLOP/s (AMD Instinct MI300X data sheet). The 256 MiB Infinity Cache sits on the IODs.
_add(Chip(
    name="MI300X", mac_units=_macs(1307.4, 2.1), clock_hz=2.1 * u.GHz,
    vector_flops=163.4 * TFLOP, sram_bytes=307.0 * u.MiB, hbm_bandwidth=5300 * u.GB,
    hbm_bytes=192 * u.GiB, link_count=7, link_bandwidth=64 * u.GB, node_nm=5, core_count=304,
    compute_redundancy=320 / 304, sram_kind="cache", core_kind="simt", hbm_generation="HBM3",
    die_count=8,
    # chips.csv: measured max-achievable BF16 matmul 668.4 TFLOP/s (ROCm 6.3, tunable ops on).
    matmul_fraction=668.4 / 1307.4,
), Published(die_area_mm2=None, tdp_w=750, is_gpu=True),
    ["die_count: 8 compute dies (XCDs); the 4 I/O dies are not modelled separately"])

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
), Published(die_area_mm2=None, tdp_w=192, is_gpu=False),
    _TPU_ASSUMPTIONS + ["link_count / link_bandwidth: 6 ICI links (3D torus) at 50 GB/s per "
                        "direction assumed (Jouppi et al. 2023 quote 6 links)"])
_add(Chip(
    name="TPUv5p", mac_units=2 * 4 * 128 * 128, clock_hz=459 * TFLOP / (2 * 2 * 4 * 128 * 128),
    vector_flops=2 * 1024 * 2 * 459 * TFLOP / (2 * 2 * 4 * 128 * 128),
    sram_bytes=160 * u.MiB, hbm_bandwidth=2765 * u.GB,
    hbm_bytes=95 * u.GB, link_count=6, link_bandwidth=1200 * u.GB / 2 / 6, node_nm=5,
    core_count=2, sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2e",
), Published(die_area_mm2=None, tdp_w=None, is_gpu=False),
    _TPU_ASSUMPTIONS + ["link_count: 6 (3D torus neighbours) sharing the 1200 GB/s "
                        "bidirectional ICI figure", "node_nm: not in the sources used; 5 nm"])
_add(Chip(
    name="TPUv5e", mac_units=4 * 128 * 128, clock_hz=197 * TFLOP / (2 * 4 * 128 * 128),
    vector_flops=1024 * 2 * 197 * TFLOP / (2 * 4 * 128 * 128),
    sram_bytes=48 * u.MiB, hbm_bandwidth=819 * u.GB,
    hbm_bytes=16 * u.GB, link_count=4, link_bandwidth=400 * u.GB / 2 / 4, node_nm=5,
    core_count=1, sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2",
), Published(die_area_mm2=None, tdp_w=None, is_gpu=False),
    _TPU_ASSUMPTIONS[:1] + ["sram_bytes: not in the sources used; 48 MiB assumed",
                            "node_nm: not in the sources used; 5 nm"])

# Intel Gaudi 2 / Gaudi 3 (Hot Chips 2024, chips.csv). Ethernet ports: 24 x 100 GbE on
# Gaudi 2 (600 GB/s bidirectional / 24 / 2 = 12.5 GB/s per direction), 24 x 200 GbE on Gaudi 3.
_add(Chip(
    name="Gaudi2", mac_units=_macs(432, 1.65), clock_hz=1.65 * u.GHz,
    vector_flops=24 * 28.7 * TFLOP / 64, sram_bytes=48 * u.MiB, hbm_bandwidth=2460 * u.GB,
    hbm_bytes=96 * u.GB, link_count=24, link_bandwidth=12.5 * u.GB, node_nm=7, core_count=26,
    sram_kind="scratchpad", core_kind="spatial", hbm_generation="HBM2e",
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
    matmul_fraction=1243 / 1835,  # chips.csv measured max-achievable BF16 matmul
), Published(die_area_mm2=None, tdp_w=900, is_gpu=False),
    ["clock_hz: 1.75 GHz reproduces the 1835 TFLOP/s spec (shipping parts run 1.6 GHz, "
     "chips.csv notes)", "core_count: 8 MME + 64 TPC engines"])

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

# Systems. Latencies: NVLink/NVSwitch one-hop ~ 1 us and InfiniBand ~ 5 us end-to-end are
# typical NCCL small-message latencies (NCCL tests on DGX A100, NVIDIA "Doubling all2all
# performance with NVIDIA Collective Communication Library 2.12" blog), used for both systems.
_SYSTEMS = {
    # DGX A100: 8 GPUs on NVSwitch; 8 x 200 Gb/s HDR InfiniBand per node (training_runs.csv
    # hardware column) = 25 GB/s per GPU per direction.
    "DGX-A100": System(chip=_CHIPS["A100-80GB"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=200 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", name="DGX-A100"),
    # DGX H100: 8 GPUs on NVSwitch gen3; 8 x 400 Gb/s ConnectX-7 per node (NVIDIA DGX H100
    # datasheet) = 50 GB/s per GPU per direction.
    "DGX-H100": System(chip=_CHIPS["H100-SXM"], num_chips=8, scaleup_size=8,
                       scaleup_latency=1 * u.us, scaleout_bandwidth=400 * u.Gbit,
                       scaleout_latency=5 * u.us, topology="switch", name="DGX-H100"),
    # GB200 NVL72: 72 GPUs in one NVLink domain (chips.csv GB200 source: NVL72 spec page);
    # 800 Gb/s ConnectX-8 per GPU for scale-out (NVIDIA GB200 NVL72 spec).
    "GB200-NVL72": System(chip=_CHIPS["GB200"], num_chips=72, scaleup_size=72,
                          scaleup_latency=1 * u.us, scaleout_bandwidth=800 * u.Gbit,
                          scaleout_latency=5 * u.us, topology="switch", name="GB200-NVL72"),
    # TPU v4 pod slice: 3D torus over ICI, 4096 chips per pod (chips.csv TPU v4 notes); the
    # data-centre network is not used inside a slice (scale-out = ICI rate).
    "TPUv4-pod": System(chip=_CHIPS["TPUv4"], num_chips=64, scaleup_size=4096,
                        scaleup_latency=1 * u.us, scaleout_bandwidth=50 * u.GB,
                        scaleout_latency=5 * u.us, topology="torus3d", fabric="ici",
                        name="TPUv4-pod"),
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
    "Gaudi2": "Intel Gaudi 2",
    "Gaudi3": "Intel Gaudi 3",
    "Groq-TSP": "Groq TSP (LPU v1)",
    "WSE-2": "Cerebras WSE-2",
    "GC200": "Graphcore Colossus MK2 GC200 IPU",
}
