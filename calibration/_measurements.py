"""Measured rows: `Measurements`, the kernel / collective CSV schema, a JAX micro-benchmark that
writes kernel rows, and the models the rows calibrate (`docs/measurements.md` documents the
schema).

A kernel row is one timed operator on one chip: a GEMM (m, n, k) or a memory-bound element-wise
op (elements, reads, writes). `operator_model(calibration, inputs)` predicts such rows with
`dse.models.gemm` / `elementwise`, so `calibrate(operator_model, DEFAULT, kernel_measurements(rows,
chip), fit=OPERATOR_FIELDS)` fits the operator efficiency curve to a user's own machine. A
collective row is one timed collective on one system; `collective_model(calibration, inputs)`
predicts it with the `dse.models` collectives (`collective_measurements`).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from dse.hardware import Chip, System, stack_chips
from dse.models import (
    DEFAULT,
    Calibration,
    all_gather,
    all_reduce,
    all_to_all,
    elementwise,
    gemm,
    reduce_scatter,
    send_recv,
)

from ._operator_data import operator_rows


class Measurements(eqx.Module):
    """Measured rows to calibrate against, and what a model needs to predict them.

    **Fields:**

    - `inputs`: any pytree of arrays with a leading row axis (n); `model_fn(params, inputs)`
      must return the n predicted values.
    - `measured`: the n measured values (positive; seconds, or any positive metric in the units
      the model returns).
    - `group`: integer source index of each row (leave-one-source-out folds), shape (n,).
    - `sources` (static): name of each source, `sources[group[i]]`.
    - `features`: optional (n, f) array of row features for the learned residual
      (`dse.fit_residual`); `None` if unused.
    - `description` (static): what the data is and where it comes from (saved with a result).
    """

    inputs: Any
    measured: Float[Array, " n"]
    group: Int[Array, " n"]
    sources: tuple[str, ...] = eqx.field(static=True)
    features: Float[Array, "n f"] | None = None
    description: str = eqx.field(static=True, default="")

    def __check_init__(self):
        measured = np.asarray(self.measured)
        if measured.ndim != 1 or measured.size == 0:
            raise ValueError(f"Measurements.measured must be a non-empty 1-D array; got shape "
                             f"{measured.shape}")
        if not np.all(np.isfinite(measured)) or np.any(measured <= 0):
            raise ValueError(f"Measurements.measured must be finite and > 0; got "
                             f"{measured[~(np.isfinite(measured) & (measured > 0))][:5]}")
        group = np.asarray(self.group)
        if group.shape != measured.shape:
            raise ValueError(f"Measurements.group must have shape {measured.shape}; got "
                             f"{group.shape}")
        if group.min() < 0 or group.max() >= len(self.sources):
            raise ValueError(f"Measurements.group must index sources (0..{len(self.sources) - 1})"
                             f"; got range {group.min()}..{group.max()}")
        for leaf in jax.tree.leaves(self.inputs):
            if np.shape(leaf)[:1] != measured.shape:
                raise ValueError(f"Measurements.inputs leaves need a leading row axis of "
                                 f"{measured.size}; got a leaf of shape {np.shape(leaf)}")
        if self.features is not None and np.shape(self.features)[:1] != measured.shape:
            raise ValueError(f"Measurements.features must have {measured.size} rows; got shape "
                             f"{np.shape(self.features)}")

    @property
    def n(self) -> int:
        """Number of rows."""
        return int(np.shape(self.measured)[0])

    def subset(self, rows) -> Measurements:
        """The rows selected by an index or boolean array (same sources)."""
        rows = np.asarray(rows)
        take = lambda x: jnp.asarray(x)[rows]
        return Measurements(jax.tree.map(take, self.inputs), take(self.measured),
                            take(self.group), self.sources,
                            None if self.features is None else take(self.features),
                            self.description)


# Columns of a kernel CSV, in order (docs/measurements.md). Empty cells are "not applicable".
KERNEL_COLUMNS = ("kind", "m", "n", "k", "elements", "bytes_per_element", "flops_per_element",
                  "reads", "writes", "time_s", "repeats", "device", "chip", "source", "notes")
# Columns of a collective CSV (docs/measurements.md); read and validated by
# `read_measurement_csv`, predicted by `collective_model` (`collective_measurements`).
COLLECTIVE_COLUMNS = ("kind", "message_bytes", "group_size", "stride", "time_s", "repeats",
                      "system", "source", "notes")
KERNEL_KINDS = ("gemm", "elementwise")
COLLECTIVE_KINDS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")

# Default kernel set of `measure_kernels`: square GEMMs from launch-bound to compute-bound,
# skinny (decode-like, m = 16) GEMMs that are bound by weight traffic, and element-wise ops from
# 64 KiB to 1 GiB of traffic. Shapes are powers of two so tiles divide them.
DEFAULT_GEMMS = tuple((s, s, s) for s in (256, 512, 1024, 2048, 4096, 8192)) + tuple(
    (16, s, s) for s in (1024, 4096, 8192)) + ((8192, 8192, 1024), (1024, 8192, 8192))
DEFAULT_ELEMENTS = tuple(2**e for e in range(14, 29, 2))


def _num(x: str) -> float:
    return float(x) if x not in ("", None) else float("nan")


def read_measurement_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of a kernel or collective CSV, checked against the schema.

    **Arguments:**

    - `path`: a CSV with the `KERNEL_COLUMNS` or `COLLECTIVE_COLUMNS` header (extra columns are
      kept, missing required ones raise).

    **Returns:** list of dicts (numbers as floats, text as str).
    """
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"read_measurement_csv: {path} has no rows")
    kind = rows[0].get("kind", "")
    required = ({"kind", "time_s", "m", "n", "k", "elements"} if kind in KERNEL_KINDS else
                {"kind", "time_s", "message_bytes", "group_size"})
    missing = sorted(required - set(rows[0]))
    if missing:
        raise ValueError(f"read_measurement_csv: {path} lacks columns {missing}")
    text = {"kind", "device", "chip", "source", "notes", "system"}
    out = []
    for i, row in enumerate(rows):
        if row["kind"] not in KERNEL_KINDS + COLLECTIVE_KINDS:
            raise ValueError(f"read_measurement_csv: {path} row {i + 2}: kind {row['kind']!r} "
                             f"not in {KERNEL_KINDS + COLLECTIVE_KINDS}")
        parsed = {k: (v if k in text else _num(v)) for k, v in row.items()}
        if not parsed["time_s"] > 0:
            raise ValueError(f"read_measurement_csv: {path} row {i + 2}: time_s must be > 0; "
                             f"got {row['time_s']!r}")
        out.append(parsed)
    return out


def write_kernel_csv(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Write kernel rows (dicts with `KERNEL_COLUMNS` keys; missing ones left empty)."""
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=KERNEL_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for row in rows:
            w.writerow({k: ("" if isinstance(v, float) and np.isnan(v) else v)
                        for k, v in row.items()})


def _median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_kernels(gemms: Sequence[tuple[int, int, int]] = DEFAULT_GEMMS,
                    elements: Sequence[int] = DEFAULT_ELEMENTS, *, dtype=None,
                    repeats: int = 20, chip_name: str = "", device=None) -> list[dict]:
    """Time GEMMs and an element-wise op with JAX on one local device (median of `repeats`).

    The element-wise op is y = 2 x + 1 (one read, one write, 2 FLOP per element). Each call is
    timed from dispatch to `block_until_ready`, so launch and dispatch overhead is part of the
    time, as it is for the kernels of a real step.

    **Arguments:**

    - `gemms`: (m, n, k) shapes.
    - `elements`: element-wise sizes, elements.
    - `dtype`: element type (default bfloat16 on GPU/TPU, float32 on CPU).
    - `repeats`: timed calls per kernel.
    - `chip_name`: written in the `chip` column (the `dse.hardware.CHIPS` preset it runs on).
    - `device`: a `jax.Device` (default the first).

    **Returns:** rows with `KERNEL_COLUMNS` keys.
    """
    device = jax.devices()[0] if device is None else device
    if dtype is None:
        dtype = jnp.float32 if device.platform == "cpu" else jnp.bfloat16
    width = float(jnp.dtype(dtype).itemsize)
    kind_name = getattr(device, "device_kind", device.platform)
    source = f"dse measure_kernels, jax {jax.__version__}, {jnp.dtype(dtype).name}"
    matmul = jax.jit(jnp.matmul)
    axpb = jax.jit(lambda x: 2 * x + 1)
    key = jax.random.PRNGKey(0)
    rows = []
    for m, n, k in gemms:
        a = jax.device_put(jax.random.normal(key, (m, k), dtype), device)
        b = jax.device_put(jax.random.normal(key, (k, n), dtype), device)
        t = _median_time(matmul, (a, b), repeats)
        rows.append(dict(kind="gemm", m=m, n=n, k=k, elements="", bytes_per_element=width,
                         flops_per_element="", reads="", writes="", time_s=t, repeats=repeats,
                         device=kind_name, chip=chip_name, source=source, notes=""))
        del a, b
    for e in elements:
        x = jax.device_put(jnp.ones((e,), dtype), device)
        t = _median_time(axpb, (x,), repeats)
        rows.append(dict(kind="elementwise", m="", n="", k="", elements=e,
                         bytes_per_element=width, flops_per_element=2.0, reads=1.0, writes=1.0,
                         time_s=t, repeats=repeats, device=kind_name, chip=chip_name,
                         source=source, notes="y = 2x + 1"))
        del x
    return rows


def _column(rows, name, default):
    """Column `name` of the rows as a float array; empty or NaN cells take `default`."""
    out = []
    for r in rows:
        v = r.get(name, "")
        v = float(v) if v not in ("", None) else float("nan")
        out.append(default if np.isnan(v) else v)
    return jnp.asarray(out, jnp.result_type(float))


def operator_model(calibration: Calibration, inputs: dict) -> Float[Array, " n"]:
    """Modelled time of each kernel row, s: `gemm` or `elementwise` with `calibration`.

    **Arguments:**

    - `calibration`: the `dse.models.Calibration` (scalar leaves).
    - `inputs`: the `Measurements.inputs` of `kernel_measurements`: a batched `Chip` ("chip")
      and per-row arrays "is_gemm", "m", "n", "k", "elements", "bytes_per_element",
      "flops_per_element", "reads", "writes".

    **Returns:** seconds, shape (n,).
    """
    x = inputs
    g = gemm(x["chip"], x["m"], x["n"], x["k"], bytes_per_element=x["bytes_per_element"],
             calibration=calibration).time
    e = elementwise(x["chip"], x["elements"], flops_per_element=x["flops_per_element"],
                    bytes_per_element=x["bytes_per_element"], reads=x["reads"],
                    writes=x["writes"], calibration=calibration).time
    return jnp.where(x["is_gemm"] > 0.5, g, e)


def kernel_features(inputs: dict) -> np.ndarray:
    """Row features for `dse.fit_residual`: log10 of FLOPs, HBM bytes, ideal compute and
    memory times (at the row's chip peaks), and is-GEMM; shape (n, 5)."""
    x = inputs
    ideal = DEFAULT.replace(matrix_max=1.0, matrix_overhead_s=0.0, memory_max=1.0,
                            memory_overhead_s=0.0)
    g = gemm(x["chip"], x["m"], x["n"], x["k"], bytes_per_element=x["bytes_per_element"],
             calibration=ideal)
    e = elementwise(x["chip"], x["elements"], flops_per_element=x["flops_per_element"],
                    bytes_per_element=x["bytes_per_element"], reads=x["reads"],
                    writes=x["writes"], calibration=ideal)
    is_g = np.asarray(x["is_gemm"]) > 0.5
    pick = lambda a, b: np.where(is_g, np.asarray(a), np.asarray(b))
    cols = [pick(g.flops, e.flops), pick(g.hbm_bytes, e.hbm_bytes),
            pick(g.compute_time, e.compute_time), pick(g.memory_time, e.memory_time)]
    return np.stack([np.log10(np.maximum(c, 1e-30)) for c in cols] + [is_g.astype(float)], 1)


def kernel_measurements(rows: Sequence[dict], chips: Chip | Sequence[Chip], *,
                        sources: Sequence[str] | None = None,
                        description: str = "") -> Measurements:
    """`Measurements` of kernel rows for `calibrate(operator_model, ...)`.

    **Arguments:**

    - `rows`: kernel rows (`read_measurement_csv` or `measure_kernels`).
    - `chips`: the `Chip` the rows ran on, or one per row.
    - `sources`: source name of each row (default the rows' "source" column); rows of one
      source form one leave-one-source-out fold.
    - `description`: what the data is (saved with the calibration).

    **Returns:** `Measurements` with `features` from `kernel_features`.
    """
    rows = [r for r in rows if r["kind"] in KERNEL_KINDS]
    if not rows:
        raise ValueError("kernel_measurements: no gemm or elementwise rows")
    per_row = [chips] * len(rows) if isinstance(chips, Chip) else list(chips)
    if len(per_row) != len(rows):
        raise ValueError(f"kernel_measurements: {len(per_row)} chips for {len(rows)} rows")
    # Static fields (name, ...) must agree to stack; the rows' chips differ only in numbers.
    base = per_row[0]
    statics = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)
               if f.metadata.get("static", False)}
    chip = stack_chips([dataclasses.replace(c, **statics) for c in per_row])

    col = lambda name, default: _column(rows, name, default)

    is_gemm = np.array([r["kind"] == "gemm" for r in rows], float)
    # Rows of the other kind get unit sizes: computed and discarded by `operator_model`.
    inputs = dict(chip=chip, is_gemm=jnp.asarray(is_gemm), m=col("m", 1.0), n=col("n", 1.0),
                  k=col("k", 1.0), elements=col("elements", 1.0),
                  bytes_per_element=col("bytes_per_element", 2.0),
                  flops_per_element=col("flops_per_element", 1.0), reads=col("reads", 1.0),
                  writes=col("writes", 1.0))
    names = list(sources) if sources is not None else [str(r.get("source", "")) for r in rows]
    uniq = list(dict.fromkeys(names))
    return Measurements(inputs, col("time_s", float("nan")),
                        jnp.asarray([uniq.index(s) for s in names]), tuple(uniq),
                        features=jnp.asarray(kernel_features(inputs), jnp.result_type(float)),
                        description=description)


_COLLECTIVES = dict(all_reduce=all_reduce, all_gather=all_gather, reduce_scatter=reduce_scatter,
                    all_to_all=all_to_all, send_recv=send_recv)


def collective_model(calibration: Calibration, inputs: dict) -> Float[Array, " n"]:
    """Modelled time of each collective row, s, with the calibration's link efficiency and
    latency factor for the rows' fabric.

    **Arguments:**

    - `calibration`: the `dse.models.Calibration`.
    - `inputs`: the `Measurements.inputs` of `collective_measurements`: a `System` whose leaves
      have the row axis ("system") and per-row arrays "kind" (index into
      `COLLECTIVE_KINDS`), "message_bytes", "group_size", "stride".

    **Returns:** seconds, shape (n,).
    """
    x = inputs
    times = jnp.stack([
        _COLLECTIVES[kind](x["system"], x["message_bytes"], x["group_size"], stride=x["stride"],
                           calibration=calibration).time
        for kind in COLLECTIVE_KINDS])
    return jnp.take_along_axis(times, x["kind"][None, :], axis=0)[0]


def collective_measurements(rows: Sequence[dict], system: System, *,
                            sources: Sequence[str] | None = None,
                            description: str = "") -> Measurements:
    """`Measurements` of collective rows for `calibrate(collective_model, ...)`.

    **Arguments:**

    - `rows`: collective rows (`read_measurement_csv`; dicts with `COLLECTIVE_COLUMNS` keys,
      `stride` 1 where empty). Kernel rows among them are skipped.
    - `system`: the `System` the rows ran on (one system for all rows; its scalar leaves are
      repeated along the row axis).
    - `sources`: source name of each row (default the rows' "source" column).
    - `description`: what the data is (saved with the calibration).

    **Returns:** `Measurements` (no residual features).
    """
    rows = [r for r in rows if r["kind"] in COLLECTIVE_KINDS]
    if not rows:
        raise ValueError(f"collective_measurements: no rows of kinds {COLLECTIVE_KINDS}")
    n = len(rows)
    dtype = jnp.result_type(float)
    col = lambda name, default: _column(rows, name, default)

    batched = jax.tree.map(lambda leaf: jnp.broadcast_to(jnp.asarray(leaf, dtype), (n,)),
                           system)
    inputs = dict(system=batched,
                  kind=jnp.asarray([COLLECTIVE_KINDS.index(r["kind"]) for r in rows]),
                  message_bytes=col("message_bytes", float("nan")),
                  group_size=col("group_size", float("nan")), stride=col("stride", 1.0))
    names = list(sources) if sources is not None else [str(r.get("source", "")) for r in rows]
    if len(names) != n:
        raise ValueError(f"collective_measurements: {len(names)} sources for {n} rows")
    uniq = list(dict.fromkeys(names))
    return Measurements(inputs, col("time_s", float("nan")),
                        jnp.asarray([uniq.index(s) for s in names]), tuple(uniq),
                        description=description)


def data_kernel_measurements(data_dir: str | os.PathLike | None = None) -> Measurements:
    """The single-chip kernel rows of the repository's data (`dse.data`) as `Measurements`.

    The LLMCompass A100 per-operator latencies (inference_runs.csv, llmcompass_fig5 rows,
    notes column) and the A100 40GB measured max-achievable matmul (chips.csv, stas00/ml-
    engineering), as `fit_operator_efficiency` reads them.
    """
    points = operator_rows(None if data_dir is None else Path(data_dir))
    rows, chips, sources = [], [], []
    for label, chip, kind, shape, seconds in points:
        if kind == "gemm":
            row = dict(kind="gemm", m=shape[0], n=shape[1], k=shape[2])
        else:
            row = dict(kind="elementwise", elements=shape[0])
        rows.append(row | dict(time_s=seconds, bytes_per_element=2.0))
        chips.append(chip)
        sources.append("stas00_mamf" if label.startswith("mamf") else "llmcompass_fig5")
    return kernel_measurements(
        rows, chips, sources=sources,
        description="data/: LLMCompass A100 80GB per-operator latencies "
                    "(inference_runs.csv llmcompass_fig5 rows; GEMMs and element-wise ops over "
                    "1 us ideal) and the A100 40GB measured max-achievable matmul (chips.csv)")
