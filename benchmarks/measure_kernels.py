"""Measure GEMM and element-wise kernel times on this machine with JAX, write the kernel CSV
(docs/measurements.md), and optionally calibrate the operator efficiency to it.

    python benchmarks/measure_kernels.py kernels.csv --chip H100-SXM --calibrate h100.json

`--chip` names the `dse.hardware.CHIPS` preset the device is (its peaks are what the efficiency
is a fraction of). On a machine without a preset (a CPU), give the peaks instead:
`--peak-tflops`, `--vector-tflops`, `--bandwidth-gbs` (and `--sram-mb`). The last line is
`rows=<n> [before_mape=<x> after_mape=<y>]`.
"""

from __future__ import annotations

import argparse

import jax

import dse.calibration as dc
from dse.calibration._measurements import DEFAULT_ELEMENTS, DEFAULT_GEMMS
from dse.hardware import CHIPS, Chip
from dse.models import DEFAULT


def _chip(args) -> Chip:
    if args.chip:
        return CHIPS[args.chip]
    if not (args.peak_tflops and args.bandwidth_gbs):
        raise SystemExit("give --chip PRESET, or --peak-tflops and --bandwidth-gbs")
    # Only the peaks, the bandwidth and the SRAM enter the operator models: the other fields
    # are stand-in values that satisfy Chip's validation (mac_units * 2 * clock = peak).
    clock = 1e9
    return Chip(mac_units=args.peak_tflops * 1e12 / (2 * clock), clock_hz=clock,
                vector_flops=(args.vector_tflops or args.peak_tflops) * 1e12,
                sram_bytes=args.sram_mb * 1e6, hbm_bandwidth=args.bandwidth_gbs * 1e9,
                hbm_bytes=1e9, link_count=1.0, link_bandwidth=1e9, node_nm=7.0,
                core_count=1.0, name="local")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="kernel CSV to write")
    p.add_argument("--chip", choices=sorted(CHIPS), help="preset of the local device")
    p.add_argument("--peak-tflops", type=float, help="matrix peak, TFLOP/s (no preset)")
    p.add_argument("--vector-tflops", type=float, help="vector peak, TFLOP/s (no preset)")
    p.add_argument("--bandwidth-gbs", type=float, help="memory bandwidth, GB/s (no preset)")
    p.add_argument("--sram-mb", type=float, default=32.0, help="on-chip SRAM/cache, MB")
    p.add_argument("--max-dim", type=int, default=8192, help="largest GEMM dimension")
    p.add_argument("--max-elements", type=int, default=2**28, help="largest element-wise op")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--calibrate", metavar="JSON",
                   help="fit the operator fields of the Calibration and save it here")
    args = p.parse_args(argv)
    chip = _chip(args) if (args.calibrate or args.chip) else None
    gemms = [s for s in DEFAULT_GEMMS if max(s) <= args.max_dim]
    elements = [e for e in DEFAULT_ELEMENTS if e <= args.max_elements]
    rows = dc.measure_kernels(gemms, elements, repeats=args.repeats,
                               chip_name=args.chip or "")
    dc.write_kernel_csv(rows, args.out)
    for r in rows:
        shape = f"{r['m']}x{r['n']}x{r['k']}" if r["kind"] == "gemm" else f"{r['elements']}"
        print(f"{r['kind']:12s} {shape:>18s} {r['time_s'] * 1e6:12.2f} us")
    tail = f"rows={len(rows)}"
    if args.calibrate:
        data = dc.kernel_measurements(
            dc.read_measurement_csv(args.out), chip,
            description=f"{args.out}: kernels measured by benchmarks/measure_kernels.py on "
                        f"{rows[0]['device']} ({args.chip or 'local chip from flags'})")
        result = dc.calibrate(dc.operator_model, DEFAULT, data, fit=dc.OPERATOR_FIELDS,
                              validation="kfold", uncertainty="laplace")
        result.save(args.calibrate)
        for (name, (v, s)), edge in zip(result.as_dict().items(), result.at_bound,
                                        strict=True):
            print(f"{name:20s} {v:.4g} +- {s:.2g}{'  (at its bound)' if edge else ''}")
        tail += (f" before_mape={100 * float(result.before_mape):.2f}"
                 f" after_mape={100 * float(result.validation_mape):.2f}")
    print(tail)


if __name__ == "__main__":
    jax.config.update("jax_default_matmul_precision", "default")
    main()
