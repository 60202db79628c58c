"""The collectives' NVLink constants, fitted to NVIDIA's one-node NCCL sweeps
(data/collective_sweeps.csv).

aiconfigurator's tables time NCCL's all-reduce, all-gather, reduce-scatter and all-to-all on
2, 4 and 8 GPUs of one H100 and one A100 node from 512 B to 512 MB. Small messages are
latency-bound and their floors follow NCCL's rings: a fixed start-up plus about one per-step
latency per member (fitted per chip: H100 5.5 us + 0.92 us per step, A100 9.6 us + 1.05 us).
From there the bus bandwidth ramps up over three decades (eight A100s' all-reduce: 47 GB/s at
1 MB, 115 at 8 MB, 200 at 128 MB, 222 at 512 MB): the pipelined collective's chunking cost
(`dse.models` prices n bytes at bandwidth w as (n + 2 sqrt(D n)) / w, the optimal
segmentation of a pipelined transfer with a per-chunk cost of D bytes' worth of link time).

Three constants of the NVLink fabric are fitted to every row but NVLink SHARP's (eight H100s'
all-reduce, an in-switch reduction that is not modelled), in log space (every row weighs the
same relative error): `Calibration.latency_scale["nvlink"]` (the per-step latency over the
systems' stated 1 us), `Calibration.collective_latency["nvlink"]` (the start-up) and
`Calibration.pipeline_overhead_bytes["nvlink"]` (D), with
`Calibration.link_efficiency["nvlink"]` re-derived at each D from the LLMCompass 403 MB
all-reduce (`fit_link_efficiency`). Both chips share them: the fit sits between the two
generations (H100's floors are lower; A100's higher), and each chip left out of the fit is
predicted from the other (`leave_one_chip_out`).
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

from ._operator_data import fit_link_efficiency

# The sweeps' NCCL sources and the one-node systems they ran on.
NCCL_SWEEPS = {"aic_h100_nccl": "DGX-H100", "aic_a100_nccl": "DGX-A100"}
_OPS = {"all_reduce": all_reduce, "all_gather": all_gather, "reduce_scatter": reduce_scatter,
        "alltoall": all_to_all}


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
    """`calibration` with the NVLink values of a `fit_collective_latency` result (and, where
    it has one, its link efficiency)."""
    nvlink = {k.split(".")[0]: v for k, v in fitted.items() if k.endswith(".nvlink")}
    return calibration.replace(**{
        field: {**getattr(calibration, field), "nvlink": value}
        for field, value in nvlink.items()})


def _fitted_rows(data_dir, sources):
    """The rows the collective fit weighs: every NCCL row but NVLink SHARP's (eight H100s'
    all-reduce, which NCCL runs as an in-switch reduction: not modelled)."""
    return [r for r in collective_sweep_rows(data_dir, sources=sources)
            if not (r["source_key"] == "aic_h100_nccl" and r["op"] == "all_reduce"
                    and r["gpus"] == 8.0)]


def fit_collective_latency(data_dir: Path | None = None, *,
                           sources: tuple[str, ...] = tuple(NCCL_SWEEPS)) -> dict[str, float]:
    """The NVLink collective constants fitted to NCCL's one-node sweeps of `sources`, 512 B to
    512 MB (`_fitted_rows`), by least squares of log time (every row weighs the same relative
    error): `latency_scale["nvlink"]` (per step), `collective_latency["nvlink"]` (start-up, s)
    and `pipeline_overhead_bytes["nvlink"]` (B), with `link_efficiency["nvlink"]` the value the
    LLMCompass all-reduce gives at that D (`fit_link_efficiency`), so the four hold
    together.

    **Returns:** `{"latency_scale.nvlink": ..., "collective_latency.nvlink": ...,
    "pipeline_overhead_bytes.nvlink": ..., "link_efficiency.nvlink": ...}`, rounded to 4 significant
    digits as stored in `dse.models.DEFAULT`.
    """
    from scipy.optimize import least_squares

    rows = _fitted_rows(data_dir, sources)
    measured = np.log([r["time_s"] for r in rows])

    def constants(z, rounded=False):
        scale, start, overhead = np.exp(z)
        return {"latency_scale.nvlink": scale, "collective_latency.nvlink": start,
                "pipeline_overhead_bytes.nvlink": overhead,
                "link_efficiency.nvlink": fit_link_efficiency(
                    data_dir, pipeline_overhead_bytes=overhead, rounded=rounded)}

    def residual(z):
        with jax.enable_x64(True):
            return np.log(model_times(rows, _with(constants(z)))) - measured

    # Boxes far wider than any fitted value; D stays under the ~29 MB where the LLMCompass
    # all-reduce would need a link efficiency over 1.
    box = (np.log([0.01, 1e-7, 1e2]), np.log([100.0, 1e-4, 1e7]))
    fit = least_squares(residual, x0=np.log([1.0, 5e-6, 1e6]), x_scale=1.0, bounds=box,
                        xtol=1e-12, ftol=1e-12)
    return {k: float(f"{v:.4g}") for k, v in constants(fit.x).items()}


def leave_one_chip_out(data_dir: Path | None = None) -> dict[str, float]:
    """Median |relative error| of each chip's rows (`_fitted_rows`), fitted on the other
    chip's rows only: `{source_key: error}`."""
    out = {}
    for held in NCCL_SWEEPS:
        fitted = fit_collective_latency(data_dir, sources=tuple(k for k in NCCL_SWEEPS
                                                                if k != held))
        rows = _fitted_rows(data_dir, (held,))
        err = model_times(rows, _with(fitted)) / np.array([r["time_s"] for r in rows]) - 1.0
        out[held] = float(np.median(np.abs(err)))
    return out


def report(data_dir: Path | None = None) -> None:
    """Print the fitted constants, the in-sample error per chip x op and the held-out errors."""
    fitted = fit_collective_latency(data_dir)
    print("fitted", fitted)
    rows = _fitted_rows(data_dir, tuple(NCCL_SWEEPS))
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
