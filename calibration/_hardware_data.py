"""The fits behind the hardware layer's few fitted constants. Each names its data.

Run `python -m dse.calibration._hardware_data [DATA_DIR]` (default: the repository's `data/`)
to print the fitted constants; the stored values in `hardware/_area.py` and `hardware/_power.py`
are what these functions return, and `tests/test_hardware_fit.py` checks that they still do.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import jax
import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS, area, power, technology
from dse.hardware._area import UNCORE_FRACTION, engine_area_factor
from dse.hardware._presets import CHIPS_CSV_NAME

# The chips each fit uses. Area: every chip of a core kind whose die area chips.csv publishes.
# Power: NVIDIA's pre-Blackwell GPUs (B200, GB200, MI250X, MI300X are held out for validation).
AREA_FIT_CHIPS = {"simt": ("V100", "A100-80GB", "H100-SXM"),
                  "spatial": ("Groq-TSP", "WSE-2", "GC200")}
POWER_FIT_CHIPS = ("V100", "A100-40GB", "A100-80GB", "H100-SXM", "H200")


def read_chips_csv(data_dir: str | Path | None = None) -> dict[str, dict[str, str]]:
    """Rows of chips.csv keyed by preset name (only presets that have a row).

    `data_dir` defaults to the repository's data (`dse.data`), as for every fit here.
    """
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    by_csv_name = {}
    with open(data_dir / "chips.csv", newline="") as f:
        for row in csv.DictReader(f):
            by_csv_name[row["name"]] = row
    return {preset: by_csv_name[name] for preset, name in CHIPS_CSV_NAME.items()
            if name in by_csv_name}


def _relative_nnls(features: np.ndarray, target: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Non-negative least squares in relative error: min sum(((F x - t) / s)^2), x >= 0."""
    from scipy.optimize import nnls  # deferred: import time of `import dse`

    solution, _ = nnls(features / scale[:, None], target / scale)
    return solution


def fit_compute_transistors(data_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Transistors per core and per 16-bit-MAC equivalent for each core kind, from published die
    areas.

    For each chip, die area minus the modelled SRAM, HBM, link and uncore blocks is the compute
    block (times 1 + uncore fraction); it is linear in the two constants. A chip's MACs count
    in 16-bit-MAC equivalents (`engine_area_factor`: its FP8 / INT8 engines at their Horowitz
    area), so the constant is the 16-bit MAC's. Relative-error NNLS.
    """
    rows = read_chips_csv(data_dir)
    out = {}
    with jax.enable_x64(True):
        for kind, names in AREA_FIT_CHIPS.items():
            features, target, die = [], [], []
            for name in names:
                chip = CHIPS[name]
                published = float(rows[name]["die_area_mm2"]) * chip.die_count
                report = area(chip)
                fixed = float(report.total - report.compute * (1 + UNCORE_FRACTION))
                density = float(technology(chip.node_nm).logic_density)
                unit = (1 + UNCORE_FRACTION) * float(chip.compute_redundancy) / density
                macs = float(chip.mac_units * engine_area_factor(chip))
                features.append([unit * float(chip.core_count), unit * macs])
                target.append(published - fixed)
                die.append(published)
            per_core, per_mac = _relative_nnls(np.array(features), np.array(target),
                                               np.array(die))
            out[kind] = {"per_core": float(per_core), "per_mac": float(per_mac)}
    return out


def tdp_compute_activity(row: dict[str, str]) -> float:
    """Matrix activity a chip sustains at its TDP: measured max achievable matmul / peak.

    A GPU at its power limit runs matmuls at the MAMF rate (chips.csv
    `measured_max_matmul_*`, stas00/ml-engineering), not at peak clocks; BF16 where measured,
    else FP8 against the FP8 peak; 1.0 where nothing is measured.
    """
    for precision in ("bf16", "fp8"):
        measured = row.get(f"measured_max_matmul_{precision}_tflops", "")
        peak = row.get(f"peak_dense_{precision}_tflops", "") or (
            row.get("peak_dense_fp16_tflops", "") if precision == "bf16" else "")
        if measured and peak:
            return float(measured) / float(peak)
    return 1.0


def _tdp_points(data_dir: str | Path | None = None) -> list[dict[str, float]]:
    """Per `POWER_FIT_CHIPS` chip at its TDP operating point: published TDP (W), HBM + link power
    (W), node-scaled sustained MAC rate (MAC/s x energy_scale), die area (mm^2), MACs per core."""
    rows = read_chips_csv(data_dir)
    points = []
    with jax.enable_x64(True):
        for name in POWER_FIT_CHIPS:
            chip = CHIPS[name]
            report = power(chip)
            scale = float(technology(chip.node_nm).energy_scale)
            mac_rate = tdp_compute_activity(rows[name]) * float(chip.mac_units * chip.clock_hz)
            points.append({"tdp": float(rows[name]["tdp_w"]),
                           "hbm_and_links": float(report.hbm + report.link),
                           "scaled_mac_rate": scale * mac_rate, "area": float(area(chip).total),
                           "macs_per_core": float(chip.mac_units / chip.core_count)})
    return points


def fit_power_constants(data_dir: str | Path | None = None) -> dict[str, float]:
    """Energy per MAC at 7 nm (J) and static power per mm^2 (W) from published TDPs.

    TDP = E_mac * energy_scale(node) * a * MAC/s + HBM + links + P_static * area, with the
    matrix activity a from `tdp_compute_activity` and HBM and links saturated. Relative NNLS.
    """
    points = _tdp_points(data_dir)
    features = [[p["scaled_mac_rate"], p["area"]] for p in points]
    target = [p["tdp"] - p["hbm_and_links"] for p in points]
    tdp = [p["tdp"] for p in points]
    energy_per_mac, static_per_mm2 = _relative_nnls(np.array(features), np.array(target),
                                                    np.array(tdp))
    return {"energy_per_mac_7nm": float(energy_per_mac),
            "static_power_per_mm2": float(static_per_mm2)}


def fit_mma_size_term(data_dir: str | Path | None = None) -> dict[str, float]:
    """Test whether the TDPs support an energy per MAC that falls with the per-core MMA size.

    An n-MAC matrix unit reads O(n^(2/3)) operands per n MACs, so operand delivery per MAC
    could scale as n^(-1/3). This fits E_mac = E_arith + E_fetch * (n / 1024)^(-1/3), n =
    MACs per core per clock (V100 512, A100 1024, H100/H200 2048 from the presets), on the
    same chips and operating points as `fit_power_constants`. The result is a check, not a
    model constant: if `fetch_at_1024` comes out 0 the data give the term no weight and the
    power model keeps one energy per MAC.
    """
    points = _tdp_points(data_dir)
    features = [[p["scaled_mac_rate"],
                 p["scaled_mac_rate"] * (p["macs_per_core"] / 1024) ** (-1 / 3)] for p in points]
    target = [p["tdp"] - p["hbm_and_links"] for p in points]
    tdp = [p["tdp"] for p in points]
    arith, fetch = _relative_nnls(np.array(features), np.array(target), np.array(tdp))
    return {"arith_7nm": float(arith), "fetch_at_1024": float(fetch)}


if __name__ == "__main__":  # pragma: no cover - a maintenance entry point
    data = sys.argv[1] if len(sys.argv) > 1 else None
    print("COMPUTE_TRANSISTORS =", fit_compute_transistors(data))
    print("power constants =", fit_power_constants(data))
    print("MMA-size check =", fit_mma_size_term(data))
