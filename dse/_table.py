"""`SweepResult`: the columnar table a sweep returns (to pandas, CSV, `.npz`)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


def atomic_savez(path: str | os.PathLike, **arrays) -> None:
    """Write an uncompressed `.npz` to a temporary file, then `os.replace` it into place.

    A reader sees either the old file or the complete new one, never a partial write, even if
    the process is killed mid-write.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class SweepResult:
    """Columns of a sweep: point index, parameters, metrics, constraint margins, feasibility.

    **Attributes:**

    - `columns`: dict name -> 1-D numpy array, all of the same length (one row per point;
      with `keep="pareto"`, one row per point of the front), rows sorted by `index`.
    - `params`, `metrics`, `constraints`: the column names of each kind (a constraint on metric
      `c` gives the column `margin_c`, >= 0 when satisfied).
    - `directions`: metric -> "min"/"max" of the objectives.
    - `keep`: "all" or "pareto".
    - `n_points`: points evaluated (rows of the full sweep).
    - `nan_count`: points with a NaN metric; `nan_index` (int64) and `nan_metrics` (tuple of
      metric-name tuples) list the first of them, which point and which metric.
    - `compile_s`, `run_s`: seconds spent compiling and evaluating (this call).
    """

    def __init__(
        self,
        columns: Mapping[str, np.ndarray],
        *,
        params: Sequence[str],
        metrics: Sequence[str],
        constraints: Sequence[str] = (),
        directions: Mapping[str, str] | None = None,
        keep: str = "all",
        n_points: int | None = None,
        nan_count: int = 0,
        nan_index: np.ndarray | None = None,
        nan_metrics: Sequence[Sequence[str]] = (),
        compile_s: float = 0.0,
        run_s: float = 0.0,
    ):
        self.columns = {k: np.asarray(v) for k, v in columns.items()}
        lengths = {len(v) for v in self.columns.values()}
        if len(lengths) > 1:
            raise ValueError(f"SweepResult columns differ in length: "
                             f"{ {k: len(v) for k, v in self.columns.items()} }")
        self.params = tuple(params)
        self.metrics = tuple(metrics)
        self.constraints = tuple(constraints)
        self.directions = dict(directions or {})
        self.keep = keep
        self.n_points = len(self) if n_points is None else int(n_points)
        self.nan_count = int(nan_count)
        self.nan_index = np.zeros(0, np.int64) if nan_index is None else \
            np.asarray(nan_index, np.int64)
        self.nan_metrics = tuple(tuple(m) for m in nan_metrics)
        self.compile_s = float(compile_s)
        self.run_s = float(run_s)

    def __len__(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def __getitem__(self, name: str) -> np.ndarray:
        return self.columns[name]

    def __repr__(self) -> str:
        return (f"SweepResult({len(self)} rows of {self.n_points} points, keep={self.keep!r}, "
                f"params={list(self.params)}, metrics={list(self.metrics)}, "
                f"nan_count={self.nan_count})")

    @property
    def points_per_s(self) -> float:
        """Points evaluated per second of evaluation (compilation excluded)."""
        return self.n_points / self.run_s if self.run_s > 0 else float("nan")

    @property
    def feasible(self) -> np.ndarray:
        """Bool per row: constraints met and no NaN metric."""
        return self.columns["feasible"]

    def pareto(self) -> SweepResult:
        """The rows on the Pareto front of `directions` (feasible first)."""
        from .optimizers import pareto_mask

        if not self.directions:
            raise ValueError("this sweep has no directions; pass directions={metric: 'min'|'max'}")
        names = list(self.directions)
        values = np.stack([self.columns[k] for k in names], axis=1)
        mask = pareto_mask(values, [self.directions[k] for k in names], self.feasible)
        return self._replace_columns({k: v[mask] for k, v in self.columns.items()},
                                     keep="pareto")

    def _replace_columns(self, columns, **changes) -> SweepResult:
        kw = dict(params=self.params, metrics=self.metrics, constraints=self.constraints,
                  directions=self.directions, keep=self.keep, n_points=self.n_points,
                  nan_count=self.nan_count, nan_index=self.nan_index,
                  nan_metrics=self.nan_metrics, compile_s=self.compile_s, run_s=self.run_s)
        kw.update(changes)
        return SweepResult(columns, **kw)

    def to_pandas(self):
        """A pandas DataFrame with one column per table column (index column included)."""
        import pandas as pd

        return pd.DataFrame(self.columns)

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write the table as CSV (header row of column names; full float precision)."""
        self.to_pandas().to_csv(path, index=False, float_format="%.9g")

    def _meta(self) -> dict:
        return {"params": self.params, "metrics": self.metrics, "constraints": self.constraints,
                "directions": self.directions, "keep": self.keep, "n_points": self.n_points,
                "nan_count": self.nan_count, "nan_metrics": self.nan_metrics,
                "compile_s": self.compile_s, "run_s": self.run_s}

    def to_npz(self, path: str | os.PathLike) -> None:
        """Write columns and metadata to one `.npz` (atomically); read back with `from_npz`."""
        arrays = {f"col:{k}": v for k, v in self.columns.items()}
        arrays["nan_index"] = self.nan_index
        arrays["meta"] = np.array(json.dumps(self._meta()))
        arrays["order"] = np.array(json.dumps(list(self.columns)))
        atomic_savez(path, **arrays)

    @classmethod
    def from_npz(cls, path: str | os.PathLike) -> SweepResult:
        """Read a table written by `to_npz`."""
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            order = json.loads(str(data["order"]))
            columns = {k: data[f"col:{k}"] for k in order}
            nan_index = data["nan_index"]
        return cls(columns, nan_index=nan_index, **meta)
