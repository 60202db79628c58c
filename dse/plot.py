"""Plots for design-space studies: Pareto fronts, sensitivities, rooflines, breakdowns, roadmaps.

Every function returns a `matplotlib.figure.Figure` and, given `path`, also writes it (PNG or SVG
by the suffix). Figures are built without pyplot, on the Agg canvas, so plotting never changes a
user's backend or leaks figures in a long sweep; in a notebook the returned Figure displays
itself. Axes carry labels and units from the one table of metrics and hardware fields
(`dse.hardware.FIELDS` and the metrics beside it): "HBM bandwidth [TB/s]", values shown in that
unit. An axis switches to log scale when its data span more than a decade.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from . import _format
from ._format import UNITS as UNITS
from .optimizers import pareto_mask

_FRONT = "#1f4e9c"
_FEASIBLE = "#9ec5e8"
_INFEASIBLE = "#c8c8c8"
_PRESET = "#d62728"
_BLOCK_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                 "#7f7f7f", "#bcbd22", "#17becf")
# Points drawn per scatter layer; a million-point sweep is thinned (evenly, deterministically)
# for drawing only: the front is always drawn in full.
MAX_SCATTER_POINTS = 20_000


def pretty(name: str) -> str:
    """A metric's, field's or block's label ("chip.mac_units" -> "MAC units"); else the last
    part of the name with spaces for "_" (no internal dotted paths on a plot)."""
    q = _format.quantity(name)
    if q is not None:
        return q.label
    last = name.rsplit(".", 1)[-1]
    return _format.BLOCK_LABELS.get(last, last.replace("_", " "))


def label(name: str, units: Mapping[str, str] | None = None) -> str:
    """Axis label `"label [unit]"`: the display unit of the table, or `units[name]` if given.

    A name the table does not know shows with spaces for underscores (and its unit from
    `units`, if any).
    """
    q = _format.quantity(name)
    unit = units[name] if units and name in units else (q.display_unit if q else "")
    return f"{pretty(name)} [{unit}]" if unit else pretty(name)


def _scale(name: str, units: Mapping[str, str] | None = None) -> float:
    """SI units per displayed unit (1 where `units` names the unit: values are shown as given)."""
    q = _format.quantity(name)
    return 1.0 if (units and name in units) or q is None else q.display_scale


def new_figure(width: float = 6.4, height: float = 4.8) -> Figure:
    """A Figure on the Agg canvas with constrained layout (labels never overlap the axes)."""
    fig = Figure(figsize=(width, height), layout="constrained", dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write `fig` to `path` (format from the suffix: .png at 150 dpi, .svg, .pdf); returns it."""
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ValueError(f"save: path must end in .png, .svg or .pdf; got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


def _finish(fig: Figure, path) -> Figure:
    if path is not None:
        save(fig, path)
    return fig


def _spans_decades(values) -> bool:
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return bool(v.size > 1 and np.all(v > 0) and v.max() / v.min() > 10.0)


def _log_axis(ax, which: str, values) -> None:
    """Log scale with plain numbers (400, 600, 1000) instead of 4x10^2 where the span allows."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    if v.size == 0:
        return
    decades = np.log10(v.max() / v.min())
    if 1e-3 <= v.min() and v.max() < 1e6:
        plain = FuncFormatter(lambda x, _: f"{x:g}")

        def some(x, _):
            # Only the 2x and 5x minor ticks: every one of them would crowd the axis.
            mantissa = round(x / 10 ** np.floor(np.log10(x)), 6)
            return f"{x:g}" if mantissa in (2.0, 5.0) else ""

        axis.set_major_formatter(plain)
        # Label minor ticks too when the axis holds less than two decades.
        axis.set_minor_formatter(FuncFormatter(some) if decades < 2 else NullFormatter())


def _columns(data: Any) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Columns and the feasibility mask of a SweepResult, OptimizeResult, DataFrame or dict."""
    if hasattr(data, "columns") and isinstance(data.columns, dict):  # SweepResult
        return {k: np.asarray(v) for k, v in data.columns.items()}, np.asarray(data.feasible)
    if hasattr(data, "metrics") and hasattr(data, "x") and hasattr(data, "names"):  # Optimize
        cols = {k: np.asarray(v) for k, v in data.metrics.items()}
        cols.update({n: np.asarray(data.x[:, i]) for i, n in enumerate(data.names)})
        return cols, np.asarray(data.feasible)
    if hasattr(data, "to_dict") and hasattr(data, "columns"):  # pandas DataFrame
        cols = {str(k): np.asarray(data[k]) for k in data.columns}
        return cols, cols.get("feasible")
    if isinstance(data, Mapping):
        cols = {str(k): np.asarray(v) for k, v in data.items()}
        return cols, cols.get("feasible")
    raise ValueError(f"cannot read columns from a {type(data).__name__}; pass a SweepResult, "
                     "OptimizeResult, DataFrame or dict of arrays")


def _thin(idx: np.ndarray) -> np.ndarray:
    if idx.size <= MAX_SCATTER_POINTS:
        return idx
    return idx[np.linspace(0, idx.size - 1, MAX_SCATTER_POINTS).astype(np.int64)]


def pareto_front(
    data: Any,
    x: str,
    y: str,
    *,
    directions: Sequence[str] = ("min", "min"),
    presets: Mapping[str, Mapping[str, float] | tuple[float, float]] | None = None,
    units: Mapping[str, str] | None = None,
    budgets: str | None = None,
    region: Any | None = None,
    title: str | None = None,
    log: bool | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Designs in two objectives: infeasible, feasible, the Pareto front, and named presets.

    **Arguments:**

    - `data`: a `SweepResult`, `OptimizeResult`, DataFrame or dict of columns (with an optional
      bool column "feasible").
    - `x`, `y`: the two metric columns; `directions`: "min" / "max" of each.
    - `presets`: name -> `{x: value, y: value}` (or `(x, y)`): real chips placed against the
      front (e.g. H100's step time and die area).
    - `units`: metric -> unit for the axis labels, values shown as given (default: the table's
      display unit, values converted to it).
    - `budgets`: text describing the budgets, shown in the legend title.
    - `region`: another table (same kinds as `data`) whose points draw the feasible and
      infeasible region, when `data` holds only a front (a `keep="pareto"` sweep): e.g. a
      smaller `keep="all"` sweep of the same space. The front is always drawn from `data`.
    - `title`; `log`: force log axes (default: each axis log if its data span > 10x).
    - `path`: write the figure there (.png / .svg).

    **Returns:** the `Figure`.
    """
    cols, feasible = _columns(data)
    for name in (x, y):
        if name not in cols:
            raise ValueError(f"no column {name!r}; columns are {sorted(cols)}")
    sx, sy = _scale(x, units), _scale(y, units)
    xv = np.asarray(cols[x], np.float64) / sx
    yv = np.asarray(cols[y], np.float64) / sy
    feasible = np.ones(xv.shape, bool) if feasible is None else np.asarray(feasible, bool)
    finite = np.isfinite(xv) & np.isfinite(yv)
    front = pareto_mask(np.stack([np.where(finite, xv, np.nan), np.where(finite, yv, np.nan)],
                                 axis=1), list(directions), feasible & finite) & finite

    fig = new_figure()
    ax = fig.add_subplot()
    cx, cy, cfeas, cfin = xv, yv, feasible, finite
    if region is not None:
        rcols, rfeas = _columns(region)
        for name in (x, y):
            if name not in rcols:
                raise ValueError(f"region has no column {name!r}; columns are {sorted(rcols)}")
        cx = np.asarray(rcols[x], np.float64) / sx
        cy = np.asarray(rcols[y], np.float64) / sy
        cfeas = np.ones(cx.shape, bool) if rfeas is None else np.asarray(rfeas, bool)
        cfin = np.isfinite(cx) & np.isfinite(cy)
    bad = _thin(np.flatnonzero(~cfeas & cfin))
    good = _thin(np.flatnonzero(cfeas & cfin))
    # Dots shrink as the cloud grows: a few designs stay visible, a million stay a region.
    size = float(np.clip(3000.0 / max(bad.size + good.size, 1), 4.0, 25.0))
    if bad.size:
        ax.scatter(cx[bad], cy[bad], s=size, c=_INFEASIBLE, lw=0, rasterized=True,
                   label=f"infeasible ({int((~cfeas & cfin).sum()):,})")
    if good.size:
        ax.scatter(cx[good], cy[good], s=size, c=_FEASIBLE, lw=0, rasterized=True,
                   label=f"feasible ({int((cfeas & cfin).sum()):,})")
    fi = np.flatnonzero(front)
    fi = fi[np.argsort(xv[fi], kind="stable")]
    if fi.size:
        # With no feasible design the front is that of the least-bad ones: say so.
        name = "Pareto front" if (feasible & finite).any() else "front (none feasible)"
        ax.plot(xv[fi], yv[fi], "-o", color=_FRONT, ms=3.5, lw=1.4, drawstyle="steps-post",
                label=f"{name} ({fi.size})")
    px, py = [], []
    for k, (name, p) in enumerate((presets or {}).items()):
        pxv, pyv = (float(p[x]), float(p[y])) if isinstance(p, Mapping) else map(float, p)
        pxv, pyv = pxv / sx, pyv / sy
        px.append(pxv)
        py.append(pyv)
        ax.scatter([pxv], [pyv], marker="*", s=160, c=_PRESET, edgecolors="k", lw=0.6,
                   zorder=5, label="presets" if k == 0 else None)
        # Alternate label sides so that neighbouring presets do not write over each other.
        ax.annotate(name, (pxv, pyv), xytext=(8, 8 if k % 2 == 0 else -14),
                    textcoords="offset points", fontsize=9, color=_PRESET, zorder=6)
    allx = np.concatenate([xv[finite], cx[cfin], px])
    ally = np.concatenate([yv[finite], cy[cfin], py])
    if log if log is not None else _spans_decades(allx):
        _log_axis(ax, "x", allx)
    if log if log is not None else _spans_decades(ally):
        _log_axis(ax, "y", ally)
    ax.set_xlabel(label(x, units))
    ax.set_ylabel(label(y, units))
    better = {"min": "lower", "max": "higher"}
    # Two lines, so that long metric names never run past the figure's edge.
    ax.set_title(title or f"{pretty(y)} vs {pretty(x)}\n"
                 f"({better[directions[0]]} {pretty(x)} and "
                 f"{better[directions[1]]} {pretty(y)} are better)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="best", fontsize=8, title=budgets, title_fontsize=8, framealpha=0.9)
    return _finish(fig, path)


def sensitivity_bars(
    result: Any,
    metric: str | None = None,
    *,
    index: int | None = None,
    top: int = 8,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Elasticities of one metric to the fields that move it most (horizontal bars).

    Green bars help when the field grows (for a "min" metric, negative elasticity), red bars
    hurt; the binding resource is in the title.

    **Arguments:**

    - `result`: a `dse.SensitivityResult`; `metric`: which metric (default the first).
    - `index`: the design of a batched result; `top`: how many fields.
    - `title`, `path`: as in `pareto_front`.

    **Returns:** the `Figure`.
    """
    metric = result.metrics[0] if metric is None else metric
    table = result.table(metric, index)
    e_all = table["elasticity"].to_numpy()
    # Fields with no effect (|e| below 1e-4 %/%) carry no information for a bar chart.
    table = table[np.isfinite(e_all) & (np.abs(e_all) > 1e-4)]
    table = table.iloc[:top][::-1]
    e = table["elasticity"].to_numpy()
    helps = np.where(e == 0, True, (e < 0) if result.directions[metric] == "min" else (e > 0))
    fig = new_figure(6.4, 0.45 * len(table) + 1.6)
    ax = fig.add_subplot()
    ax.barh(np.arange(len(table)), e, color=np.where(helps, "#2ca02c", "#d62728"))
    ax.set_yticks(np.arange(len(table)), [pretty(f) for f in table["field"]])
    ax.axvline(0.0, color="k", lw=0.8)
    ax.set_xlabel(f"elasticity of {pretty(metric)} [% per % of the field]")
    binding = result.binding[metric]
    binding = binding if result.batch_shape == () else binding[index]
    ax.set_title(title or f"{pretty(metric)}: binding resource = {binding}",
                 fontsize=10)
    lim = max(1e-3, float(np.max(np.abs(e))) if e.size else 1.0) * 1.25
    ax.set_xlim(-lim, lim)
    for i, v in enumerate(e):
        ax.annotate(f"{v:+.2g}", (v, i), xytext=(4 if v >= 0 else -4, 0),
                    textcoords="offset points", va="center",
                    ha="left" if v >= 0 else "right", fontsize=8)
    ax.grid(True, axis="x", alpha=0.3)
    return _finish(fig, path)


def roofline(
    chip: Any,
    ops: Mapping[str, Any],
    *,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """The chip's roofline (HBM bandwidth slope, peak matrix FLOP/s) with operators placed.

    Each op sits at its arithmetic intensity (FLOP per HBM byte) and the throughput it attains
    (FLOP / time, start-up and efficiency included), so its distance below the roof is what the
    model says it loses.

    **Arguments:**

    - `chip`: one `dse.hardware.Chip`.
    - `ops`: name -> `dse.models.OpCost` (on that chip).
    - `title`, `path`: as in `pareto_front`.

    **Returns:** the `Figure`.
    """
    peak = float(np.asarray(chip.peak_flops))
    bw = float(np.asarray(chip.hbm_bandwidth))
    names = list(ops)
    flops = np.array([float(np.asarray(ops[n].flops)) for n in names])
    nbytes = np.array([float(np.asarray(ops[n].hbm_bytes)) for n in names])
    times = np.array([float(np.asarray(ops[n].time)) for n in names])
    intensity = flops / np.maximum(nbytes, 1e-30)
    attained = flops / np.maximum(times, 1e-30)
    ridge = peak / bw if bw > 0 else np.inf
    lo = min(0.1, float(np.min(intensity)) / 3 if names else 0.1)
    hi = max(10.0 * ridge if np.isfinite(ridge) else 1e4,
             float(np.max(intensity)) * 3 if names else 1e4)
    grid = np.geomspace(lo, hi, 256)
    roof = np.minimum(peak, bw * grid) if bw > 0 else np.full_like(grid, peak)

    fig = new_figure()
    ax = fig.add_subplot()
    ax.plot(grid, roof / 1e12, color="k", lw=1.6, label="roofline")
    ax.axhline(peak / 1e12, color="k", lw=0.6, ls=":")
    if np.isfinite(ridge):
        ax.axvline(ridge, color="grey", lw=0.8, ls="--",
                   label=f"ridge {ridge:.0f} FLOP/B")
    for i, n in enumerate(names):
        bound = "compute" if float(np.asarray(ops[n].compute_time)) >= float(
            np.asarray(ops[n].memory_time)) else "memory"
        ax.scatter([intensity[i]], [attained[i] / 1e12], s=40, zorder=5,
                   color=_BLOCK_COLORS[i % len(_BLOCK_COLORS)],
                   marker="o" if bound == "compute" else "s",
                   label=f"{n} ({bound}-bound)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(max(1e-3, float(np.min(attained)) / 1e12 / 5) if names else 1e-3,
                peak / 1e12 * 2.5)
    ax.set_xlabel("arithmetic intensity [FLOP/byte of HBM traffic]")
    ax.set_ylabel("attained throughput [TFLOP/s]")
    ax.set_title(title or f"roofline of {getattr(chip, 'name', 'chip')}: "
                 f"{peak / 1e12:.0f} TFLOP/s, {bw / 1e12:.2f} TB/s", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _finish(fig, path)


def _blocks(item: Any) -> tuple[dict[str, float], str]:
    """Additive parts of a report (or a dict) and the quantity they add up to."""
    if isinstance(item, Mapping):
        return {str(k): float(np.asarray(v)) for k, v in item.items()}, ""
    if hasattr(item, "breakdown"):  # TrainReport: step time by where it went
        return {k: float(np.asarray(v)) for k, v in item.breakdown.items()}, "step_time"
    name = type(item).__name__
    if hasattr(item, "blocks"):
        kind = {"AreaReport": "area", "PowerReport": "power"}.get(name, "")
        return {k: float(np.asarray(v)) for k, v in item.blocks.items()}, kind
    if name == "InferenceReport":
        parts = ("matmul_time", "attention_time", "elementwise_time", "tp_comm_time",
                 "pp_comm_time")
        return {p.removesuffix("_time"): float(np.asarray(getattr(item, p))) for p in parts}, \
            "time"
    raise ValueError(f"cannot break down a {name}; pass a dict, TrainReport, InferenceReport, "
                     "AreaReport or PowerReport")


def breakdown(
    items: Mapping[str, Any],
    *,
    quantity: str | None = None,
    units: Mapping[str, str] | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Stacked bars: where the step time, area or power of each design goes.

    **Arguments:**

    - `items`: bar label -> a `TrainReport` (step time by compute / communication / bubble...),
      `InferenceReport`, `AreaReport` (mm² by block), `PowerReport` (W by block) or a dict
      part -> value.
    - `quantity`: the name on the y axis (default from the report type: "step_time", "area",
      "power"); its label and unit come from the table (or `units`).
    - `title`, `path`: as in `pareto_front`.

    **Returns:** the `Figure`.
    """
    if not items:
        raise ValueError("breakdown needs at least one item")
    parsed = {k: _blocks(v) for k, v in items.items()}
    kinds = {kind for _, kind in parsed.values() if kind}
    quantity = quantity or (kinds.pop() if len(kinds) == 1 else "value")
    parts: list[str] = []
    for blocks, _ in parsed.values():
        parts += [p for p in blocks if p not in parts]
    # Parts that are zero in every bar are left out of the legend.
    parts = [p for p in parts if any(abs(b.get(p, 0.0)) > 0 for b, _ in parsed.values())]
    labels = list(parsed)
    fig = new_figure(max(5.0, 1.3 * len(labels) + 3.0), 4.6)
    ax = fig.add_subplot()
    bottom = np.zeros(len(labels))
    scale = _scale(quantity, units)
    for j, p in enumerate(parts):
        vals = np.array([parsed[k][0].get(p, 0.0) for k in labels]) / scale
        ax.bar(np.arange(len(labels)), vals, bottom=bottom, width=0.6,
               color=_BLOCK_COLORS[j % len(_BLOCK_COLORS)], label=pretty(p))
        bottom += vals
    for i, total in enumerate(bottom):
        ax.annotate(f"{total:.3g}", (i, total), xytext=(0, 3), textcoords="offset points",
                    ha="center", fontsize=8)
    ax.set_xticks(np.arange(len(labels)), labels, rotation=0 if len(labels) < 6 else 30,
                  ha="center" if len(labels) < 6 else "right")
    ax.set_ylabel(label(quantity, units))
    ax.set_ylim(0, float(bottom.max()) * 1.15 if bottom.size and bottom.max() > 0 else 1.0)
    ax.set_title(title or f"{pretty(quantity)} breakdown", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, path)


def roadmap(
    result: Any,
    metrics: Sequence[str] | None = None,
    *,
    units: Mapping[str, str] | None = None,
    title: str | None = None,
    path: str | os.PathLike | None = None,
) -> Figure:
    """Metrics along a roadmap: the re-targeted chip and the re-optimized design per step.

    Steps that rely on extrapolated technology data are shaded and marked "extrap."; each point
    is annotated with its binding resource.

    **Arguments:**

    - `result`: a `dse.RoadmapResult`.
    - `metrics`: metrics to draw, one panel each (default: the roadmap metric).
    - `units`, `title`, `path`: as in `pareto_front`.

    **Returns:** the `Figure`.
    """
    steps = result.steps
    metrics = [result.metric] if metrics is None else list(metrics)
    xs = np.arange(len(steps))
    fig = new_figure(max(6.4, 1.7 * len(steps) + 2.0), 3.4 * len(metrics) + 0.6)
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, m in zip(axes, metrics, strict=True):
        base = np.array([s.metrics.get(m, np.nan) for s in steps], np.float64) / _scale(m, units)
        opt = np.array([s.optimum_metrics.get(m, np.nan) for s in steps],
                       np.float64) / _scale(m, units)
        for i, s in enumerate(steps):
            if s.extrapolated:
                ax.axvspan(i - 0.5, i + 0.5, color="#f2e6c9", zorder=0,
                           label="extrapolated technology" if i == next(
                               k for k, t in enumerate(steps) if t.extrapolated) else None)
        ax.plot(xs, base, "-o", color="#555555", label="re-targeted chip")
        if np.isfinite(opt).any():
            ax.plot(xs, opt, "-s", color=_FRONT, label="re-optimized design")
        if m == result.metric:
            for i, s in enumerate(steps):
                ax.annotate(s.binding, (i, base[i]), xytext=(0, 7), textcoords="offset points",
                            ha="center", fontsize=7, color="#555555")
                if s.optimum_binding:
                    ax.annotate(s.optimum_binding, (i, opt[i]), xytext=(0, -13),
                                textcoords="offset points", ha="center", fontsize=7,
                                color=_FRONT)
        vals = np.concatenate([base, opt])
        if _spans_decades(vals[np.isfinite(vals)]):
            _log_axis(ax, "y", vals)
        finite = vals[np.isfinite(vals)]
        if finite.size and ax.get_yscale() == "linear":
            span = float(finite.max() - finite.min()) or abs(float(finite.max())) or 1.0
            ax.set_ylim(float(finite.min()) - 0.2 * span, float(finite.max()) + 0.2 * span)
        ax.set_ylabel(label(m, units))
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    axes[-1].set_xticks(xs, [s.label.replace(" / ", "\n") for s in steps])
    axes[-1].set_xlabel("process node / HBM generation [nm / JEDEC generation]")
    axes[-1].set_xlim(-0.5, len(steps) - 0.5)
    axes[0].set_title(title or f"roadmap: {pretty(result.metric)} "
                      f"({'lower' if result.direction == 'min' else 'higher'} is better)",
                      fontsize=10)
    return _finish(fig, path)
