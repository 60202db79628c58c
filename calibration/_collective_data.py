"""The collectives' latency, fitted to NVIDIA's one-node NCCL sweeps (data/collective_sweeps.csv).

aiconfigurator's tables time NCCL's all-reduce, all-gather, reduce-scatter and all-to-all on
2, 4 and 8 GPUs of one H100 and one A100 node from 512 B to 512 MB. Up to 64 KiB a collective is
latency-bound (its bandwidth term is under 3% of the measured time at the stored link
efficiency), and the floors follow NCCL's rings: a fixed start-up plus about one per-step
latency per member (fitted per chip: H100 5.5 us + 0.92 us per step, A100 9.6 us + 1.05 us).
Two constants of the
NVLink fabric are fitted to those rows, in log space (every row weighs the same relative
error): `Calibration.latency_scale["nvlink"]` (the per-step latency over the systems' stated
1 us) and `Calibration.collective_latency["nvlink"]` (the start-up). Both chips share them: the
fit sits between the two generations' floors, and each chip left out of the fit is predicted
from the other (`leave_one_chip_out`).

Larger messages are not fitted here: the link efficiency comes from a 403 MB all-reduce
(`fit_link_efficiency`); NCCL's protocol ramp between 64 KiB and ~32 MB and NVLink SHARP on
eight H100s are not modelled (tests/test_collectives.py measures both).
"""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import jax
import numpy as np

from dse.data import data_dir as default_data_dir
from dse.hardware import SYSTEMS
from dse.models import DEFAULT, Calibration, all_gather, all_reduce, all_to_all, reduce_scatter

# The sweeps' NCCL sources and the one-node systems they ran on.
NCCL_SWEEPS = {"aic_h100_nccl": "DGX-H100", "aic_a100_nccl": "DGX-A100"}
LATENCY_BOUND_BYTES = 65536.0
_OPS = {"all_reduce": all_reduce, "all_gather": all_gather, "reduce_scatter": reduce_scatter,
        "alltoall": all_to_all}
FITTED = ("latency_scale", "collective_latency")


def collective_sweep_rows(data_dir: Path | None = None, *, max_bytes: float = np.inf,
                          sources: tuple[str, ...] = tuple(NCCL_SWEEPS)) -> list[dict]:
    """NCCL rows of data/collective_sweeps.csv up to `max_bytes`: dicts with "source_key",
    "system" (the `dse.hardware.SYSTEMS` name), "op", "gpus", "message_bytes", "time_s"."""
    data_dir = default_data_dir() if data_dir is None else Path(data_dir)
    with open(data_dir / "collective_sweeps.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["source_key"] in sources
                and float(r["message_bytes"]) <= max_bytes]
    return [dict(source_key=r["source_key"], system=NCCL_SWEEPS[r["source_key"]], op=r["op"],
                 gpus=float(r["gpus"]), message_bytes=float(r["message_bytes"]),
                 time_s=float(r["time_us"]) * 1e-6) for r in rows]


@functools.cache
def _runner(op: str):
    """Jitted (system, sizes, GPU counts, calibration) -> times of one op, kept so that a fit's
    every evaluation reuses one compiled program per system."""
    fn = _OPS[op]
    return jax.jit(jax.vmap(lambda s, b, p, c: fn(s, b, p, calibration=c).time,
                            in_axes=(None, 0, 0, None)))


def model_times(rows: list[dict], calibration: Calibration = DEFAULT) -> np.ndarray:
    """The collective models' time of every row, s (one jitted vmap per system x op)."""
    out = np.full(len(rows), np.nan)
    groups: dict[tuple[str, str], list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault((r["system"], r["op"]), []).append(i)
    for (name, op), idx in groups.items():
        size = np.array([rows[i]["message_bytes"] for i in idx])
        gpus = np.array([rows[i]["gpus"] for i in idx])
        out[idx] = np.asarray(_runner(op)(SYSTEMS[name].with_num_chips(8), size, gpus, calibration))
    return out


def _with(fitted: dict[str, float], calibration: Calibration = DEFAULT) -> Calibration:
    """`calibration` with the NVLink values of a `fit_collective_latency` result."""
    return calibration.replace(
        latency_scale={**calibration.latency_scale, "nvlink": fitted["latency_scale.nvlink"]},
        collective_latency={**calibration.collective_latency,
                            "nvlink": fitted["collective_latency.nvlink"]})


def fit_collective_latency(data_dir: Path | None = None, *,
                           sources: tuple[str, ...] = tuple(NCCL_SWEEPS)) -> dict[str, float]:
    """`latency_scale["nvlink"]` and `collective_latency["nvlink"]` (s) fitted to the
    latency-bound NCCL rows (<= 64 KiB) of `sources` by least squares of log time.

    **Returns:** `{"latency_scale.nvlink": ..., "collective_latency.nvlink": ...}`, rounded to
    4 significant digits as stored in `dse.models.DEFAULT`.
    """
    from scipy.optimize import least_squares

    rows = collective_sweep_rows(data_dir, max_bytes=LATENCY_BOUND_BYTES, sources=sources)
    measured = np.log([r["time_s"] for r in rows])

    def residual(z):
        scale, start = np.exp(z)
        fitted = {"latency_scale.nvlink": scale, "collective_latency.nvlink": start}
        with jax.enable_x64(True):
            return np.log(model_times(rows, _with(fitted))) - measured

    fit = least_squares(residual, x0=np.log([2.0, 5e-6]), x_scale=1.0)
    scale, start = np.exp(fit.x)
    return {"latency_scale.nvlink": float(f"{scale:.4g}"),
            "collective_latency.nvlink": float(f"{start:.4g}")}


def leave_one_chip_out(data_dir: Path | None = None) -> dict[str, float]:
    """Median |relative error| of each chip's latency-bound rows, fitted on the other chip's
    rows only: `{source_key: error}`."""
    out = {}
    for held in NCCL_SWEEPS:
        fitted = fit_collective_latency(data_dir, sources=tuple(k for k in NCCL_SWEEPS
                                                                if k != held))
        rows = collective_sweep_rows(data_dir, max_bytes=LATENCY_BOUND_BYTES, sources=(held,))
        err = model_times(rows, _with(fitted)) / np.array([r["time_s"] for r in rows]) - 1.0
        out[held] = float(np.median(np.abs(err)))
    return out


def report(data_dir: Path | None = None) -> None:
    """Print the fitted constants, the in-sample error per chip x op and the held-out errors."""
    fitted = fit_collective_latency(data_dir)
    print("fitted", fitted)
    rows = collective_sweep_rows(data_dir, max_bytes=LATENCY_BOUND_BYTES)
    err = model_times(rows, _with(fitted)) / np.array([r["time_s"] for r in rows]) - 1.0
    for key in NCCL_SWEEPS:
        for op in _OPS:
            e = [x for x, r in zip(err, rows, strict=True)
                 if r["source_key"] == key and r["op"] == op]
            print(f"{key:16s} {op:15s} median {100 * np.median(e):+6.1f}%  "
                  f"range {100 * min(e):+6.1f} .. {100 * max(e):+6.1f}%")
    print("leave one chip out, median |error|:", leave_one_chip_out(data_dir))


if __name__ == "__main__":
    report()
