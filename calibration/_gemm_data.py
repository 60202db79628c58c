"""The FP4 GEMM constants, fitted to the published NVFP4 GEMM measurements of
data/gemm_kernels.csv with the block-scaled GEMM model (`dse.models.gemm`: waves of 128 x 256
tiles on a GPU's FP4 engine, each its K-loop plus a fixed time).

- `fit_fp4_gemm`: the fixed clock cycles per wave (`dse.models.FP4_WAVE_CYCLES`), by least
  squares on log time over vLLM's B200 NVFP4 table (N = 6144, K = 4096, M = 1 ... 16,384) with
  the B200's K-loop at its stored `Chip.fp4_efficiency` (1: the table has one K, which cannot
  tell a slower K-loop from a longer fixed time), and the table's median |error| at the fit;
- `fit_fp4_layer_efficiency`: a chip's `Chip.fp4_efficiency` (its K-loop's share of the FP4
  peak relative to the 16-bit engine's sustained share) with those cycles, from the total time
  of the 12 NVFP4 GEMMs of a Transformer Engine layer profile (the B300's).

Run `python -m dse.calibration._gemm_data [DATA_DIR]` to print them; the stored values in
`models/_operators.py` and `hardware/_presets.py` are what these return, and
`tests/test_precision.py` checks that they still do.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import CHIPS, Chip
from dse.models import DEFAULT, FP4_WAVE_CYCLES, gemm

# NVFP4 operands (4-bit elements) with 16-bit outputs: the measured kernels' formats.
FP4_BYTES, OUTPUT_BYTES = 0.5, 2.0
B200_SOURCE = "vllm_pr20646_b200"


def gemm_kernel_rows(data_dir: str | Path | None = None, source_key: str | None = None,
                     engine: str | None = None) -> list[dict]:
    """Rows of gemm_kernels.csv (m, n, k, tflops as floats), optionally of one source and
    engine."""
    path = Path(default_data_dir() if data_dir is None else data_dir) / "gemm_kernels.csv"
    with open(path, newline="") as f:
        rows = [dict(r) for r in csv.DictReader(f)]
    for r in rows:
        for key in ("m", "n", "k", "tflops"):
            r[key] = float(r[key])
    return [r for r in rows if (source_key is None or r["source_key"] == source_key)
            and (engine is None or r["engine"] == engine)]


def layer_gemms(tokens: float, ffn: float, hidden: float) -> list[tuple[float, float, float]]:
    """(m, n, k) of the 12 GEMMs of one transformer layer in training (a `kind=layer` row):
    forward, data-gradient and weight-gradient products of QKV (3 x hidden outputs), the
    projection, FC1 (ffn outputs) and FC2."""
    linears = [(3.0 * hidden, hidden), (hidden, hidden), (ffn, hidden), (hidden, ffn)]
    out = []
    for n_out, k_in in linears:
        out += [(tokens, n_out, k_in), (tokens, k_in, n_out), (k_in, n_out, tokens)]
    return out


def row_shapes(row) -> list[tuple[float, float, float]]:
    """The (m, n, k) products a row times: one GEMM, or a layer's 12 (`layer_gemms`)."""
    if row["kind"] == "layer":
        return layer_gemms(row["m"], row["n"], row["k"])
    return [(row["m"], row["n"], row["k"])]


def measured_time(row) -> float:
    """A row's measured time, s (its FLOP over its TFLOP/s)."""
    return sum(2.0 * m * n * k for m, n, k in row_shapes(row)) / (row["tflops"] * 1e12)


def modelled_time(chip: Chip, row, wave_cycles: float = FP4_WAVE_CYCLES) -> float:
    """Modelled time of a row's products on `chip` in its engine, s (FP4: NVFP4 operands
    pre-quantized, 16-bit outputs, `wave_cycles` per wave; kernels only: the stored calibration
    without per-op start-up times, as a fused runtime runs them)."""
    cal = DEFAULT.with_fused_runtime()
    kw = (dict(bytes_per_element=FP4_BYTES, output_bytes_per_element=OUTPUT_BYTES,
               fp4_wave_cycles=wave_cycles) if row["engine"] == "fp4" else {})
    return sum(float(gemm(chip, m, n, k, engine=row["engine"], calibration=cal, **kw).time)
               for m, n, k in row_shapes(row))


def fit_fp4_gemm(data_dir: str | Path | None = None) -> dict[str, float]:
    """{"wave_cycles", "median_abs_error"}: the fixed cycles per FP4 wave that reproduce
    vLLM's B200 NVFP4 GEMM table best in log time (the B200 preset's K-loop rate), and the
    table's median |error| at them."""
    from scipy.optimize import least_squares  # here: scipy.optimize costs ~1 s to import

    rows = gemm_kernel_rows(data_dir, B200_SOURCE, "fp4")
    measured = np.log([measured_time(r) for r in rows])
    chip = CHIPS["B200"]

    def residuals(p):
        return np.log([modelled_time(chip, r, p[0]) for r in rows]) - measured

    # Finite-difference steps well above float32 rounding (the model runs in float32).
    fit = least_squares(residuals, x0=[4000.0], bounds=([0.0], [1e6]), x_scale=[1000.0],
                        diff_step=1e-3)
    error = np.exp(residuals(fit.x)) - 1.0
    return {"wave_cycles": float(fit.x[0]),
            "median_abs_error": float(np.median(np.abs(error)))}


def fit_fp4_layer_efficiency(chip_name: str, wave_cycles: float,
                             data_dir: str | Path | None = None) -> float:
    """`Chip.fp4_efficiency` of `chip_name` at which the modelled NVFP4 GEMMs of its
    Transformer Engine layer profile (its `kind=layer` FP4 row) take the measured time, with
    `wave_cycles` per wave."""
    from scipy.optimize import brentq

    (row,) = [r for r in gemm_kernel_rows(data_dir, engine="fp4")
              if r["kind"] == "layer" and r["chip"] == chip_name]
    chip, target = CHIPS[chip_name], measured_time(row)
    return float(brentq(lambda e: modelled_time(chip.replace(fp4_efficiency=e), row,
                                                    wave_cycles) - target, 0.05, 2.0, xtol=1e-6))


if __name__ == "__main__":
    where = sys.argv[1] if len(sys.argv) > 1 else None
    fitted = fit_fp4_gemm(where)
    print(fitted)
    print({"b300_fp4_efficiency": fit_fp4_layer_efficiency("B300", fitted["wave_cycles"], where)})
