"""Validate the MoE and context-parallel training model against published rows (out of sample).

Rows: data/training_runs.csv source `megatron_moe_modelzoo_qwen3` (Qwen3-235B-A22B on 256 H100,
BF16: a layout table with step times, a long-context table with CP 1-8 at 16K-128K tokens), as
`dse.calibration.moe_cases` reads them (how each row ran, how its TFLOP/s become a step time,
and how a 94-layer model splits over PP 8: see that module). The one
fitted constant the training model uses (`Calibration.kernel_fraction`) is fitted to other
sources only (`dse.calibration.FIT_SOURCES`), so every error here is out of sample
(leave-one-source-out holds trivially). `benchmarks/validate.py` reports the same source's
median in its MoE table; this script prints each row's breakdown.

Last line: `rows=<n> median_abs_err=<x> within_10pct=<k>`.

    python benchmarks/validate_moe_cp.py
"""

from __future__ import annotations

import numpy as np

from dse.calibration import MOE_SOURCE, moe_cases, predict_moe
from dse.hardware import describe_reason


def main() -> None:
    cases = moe_cases()
    reports = predict_moe(cases)
    errs = []
    for c, rep in zip(cases, reports, strict=True):
        pred = float(rep.step_time)
        err = pred / c.measured - 1.0
        errs.append(err)
        parts = " ".join(f"{k}={float(v):.2f}" for k, v in rep.breakdown.items() if float(v) > 0)
        print(f"{c.run_id:48s} {c.what:22s} measured {c.measured:7.2f} predicted {pred:7.2f} "
              f"err {err:+6.1%} fits={bool(rep.fits)} "
              f"[{parts}]" + ("" if bool(rep.fits) else f" ({describe_reason(rep.reason)})"))
    errs = np.abs(np.asarray(errs))
    print(f"{MOE_SOURCE}: median |err| {np.median(errs):.1%} over {len(errs)} rows "
          f"(out of sample: kernel_fraction is fitted to other sources)")
    print(f"rows={len(errs)} median_abs_err={np.median(errs):.5f} "
          f"within_10pct={int((errs <= 0.10).sum())}")


if __name__ == "__main__":
    main()
