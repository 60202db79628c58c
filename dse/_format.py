"""What the numbers are called, and plain-text tables with SI prefixes (no models here).

`METRICS` names the metrics of reports and studies (label, SI unit, display unit) beside
`dse.hardware.FIELDS`, the table of hardware fields; `quantity` looks a name up in both, and
tables and plots take their units and labels from it.
"""

from __future__ import annotations

import math
import types
from collections.abc import Mapping, Sequence

from jaxtyping import ArrayLike, Real

from .hardware import FIELDS, Quantity
from .hardware import units as u

_PREFIXES = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
             (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")]
# Units printed as plain numbers, never with an SI prefix.
_PLAIN_UNITS = ("mm²", "mm2", "mm", "$", "nm", "")


def _q(label: str, unit: str, **more) -> Quantity:
    return Quantity(label=label, unit=unit, **more)


# The metric of a study's objective that holds the `dse.hardware.Reason` flags of its reports
# (0 = feasible). `dse.sweep` and `dse.optimize` count a point with a non-zero reason as
# infeasible; sensitivity does not differentiate it.
REASON_METRIC = "reason"

# The metrics of training, inference and hardware reports (`dse` studies return them by these
# names), in SI units.
METRICS: Mapping[str, Quantity] = types.MappingProxyType({
    "time": _q("time", "s"),
    "step_time": _q("step time", "s", description="one training step"),
    "ttft": _q("time to first token", "s"),
    "tpot": _q("time per output token", "s"),
    "total_latency": _q("total latency", "s"),
    "compute_time": _q("compute time", "s"),
    "memory_time": _q("memory time", "s"),
    "tokens_per_s": _q("throughput", "tokens/s"),
    "tokens_per_s_per_chip": _q("throughput per chip", "tokens/s"),
    "tokens_per_s_per_dollar": _q("throughput per dollar", "tokens/s/$",
                                  description="tokens/s per chip per $ of manufacturing cost"),
    "mfu": _q("MFU", "", description="model FLOPs utilization: model FLOP/s over peak"),
    "area": _q("area", "mm²", description="die area, per die"),
    "die_area": _q("die area", "mm²"),
    "power": _q("power", "W", description="power at full activity (the TDP operating point)"),
    "cost": _q("manufacturing cost", "$", description="manufacturing cost per chip (dies at "
               "their yield, HBM, packaging): what it costs to make, not a price"),
    "energy": _q("energy", "J"),
    "energy_per_token": _q("energy per token", "J"),
    "memory_margin": _q("memory margin", "B", display_unit="GB", display_scale=u.GB,
                        description="capacity left after weights, states and activations (HBM, "
                                    "or SRAM on a chip without HBM); negative when short"),
    "memory_shortfall": _q("memory shortfall", "B", display_unit="GiB", display_scale=u.GiB,
                           description="how far memory per chip exceeds capacity (0 if it fits)"),
    REASON_METRIC: _q("infeasibility", "", description="dse.hardware.Reason flags, 0 = feasible"),
    "memory_per_chip": _q("memory per chip", "B", display_unit="GB", display_scale=u.GB),
    "reticle_margin": _q("reticle margin", "mm²"),
    "shoreline_margin": _q("shoreline margin", "mm"),
    "flops": _q("FLOP", "FLOP"),
    "peak_flops": _q("peak FLOP/s", "FLOP/s", display_unit="TFLOP/s",
                     display_scale=u.TFLOPS),
    # Clusters (`dse.models.ClusterReport.metrics`, `ServeCostReport`).
    "cost_per_token": _q("cost per trained token", "$", display_unit="$/M tokens",
                         display_scale=1e-6, description="capital, energy and storage over "
                         "the run, per trained token"),
    "cost_per_million_tokens": _q("cost per million served tokens", "$"),
    "time_to_train": _q("time to train", "s", display_unit="days", display_scale=86400.0,
                        description="expected elapsed time, failures and checkpoints included"),
    "megawatts": _q("facility power", "MW", description="IT power times PUE"),
    "goodput": _q("goodput", "", description="useful fraction of elapsed time"),
    "mtbf": _q("job MTBF", "s", display_unit="h", display_scale=3600.0,
               description="mean time between unexpected interruptions of the job"),
    "capex": _q("capital cost", "$", display_unit="$B", display_scale=1e9),
    "network_cost": _q("network cost", "$", display_unit="$B", display_scale=1e9),
    "total_cost": _q("cost of the run", "$", display_unit="$M", display_scale=1e6),
})


# Words for the blocks of the reports' breakdowns (area, power, step time), as legends show them.
BLOCK_LABELS: Mapping[str, str] = types.MappingProxyType({
    "compute": "compute", "sram": "SRAM", "hbm_phy": "HBM PHY",
    "hbm_controller": "HBM controller", "link_phy": "link PHY",
    "link_controller": "link controller", "uncore": "uncore (on-chip network, clocks, I/O)",
    "vector": "vector units", "hbm": "HBM", "link": "links", "static": "static (leakage)",
    "tp_comm": "tensor-parallel communication", "pp_comm": "pipeline sends",
    "dp_comm": "data-parallel communication", "ep_comm": "expert all-to-all",
    "bubble": "pipeline bubble", "optimizer": "optimizer step",
})


def quantity(name: str) -> Quantity | None:
    """The `Quantity` of a metric or a hardware field (dotted paths by their last part).

    **Returns:** from `METRICS`, else from `dse.hardware.FIELDS`, else None.
    """
    if name in METRICS:
        return METRICS[name]
    return FIELDS.get(name.rsplit(".", 1)[-1])


def unit_of(name: str) -> str:
    """SI unit of a metric or field by name ("" when unknown)."""
    q = quantity(name)
    return q.unit if q is not None else ""


# SI unit of every named metric and field.
UNITS: Mapping[str, str] = types.MappingProxyType(
    {name: q.unit for table in (FIELDS, METRICS) for name, q in table.items()})


def si(value: Real[ArrayLike, ""] | None, unit: str = "", digits: int = 3) -> str:
    """`3.35e12, "B/s"` -> "3.35 TB/s"; plain numbers for mm², $, nm and unitless ratios.

    `value` is any real scalar (Python, numpy or JAX); None or NaN reads "nan".
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    value = float(value)
    if unit in _PLAIN_UNITS or value == 0 or not math.isfinite(value):
        if unit == "" and abs(value) < 10 and value != int(value):
            return f"{value:.{digits}g}"
        text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.{digits}g}"
        return f"{text} {unit}".rstrip()
    for scale, prefix in _PREFIXES:
        # Round first, so that 999.7 W reads "1 kW" rather than "1e+03 W".
        if abs(float(f"{value / scale:.{digits}g}")) >= 1.0:
            return f"{float(f'{value / scale:.{digits}g}'):g} {prefix}{unit}"
    return f"{value:.{digits}g} {unit}"


def table(rows: Sequence[Mapping[str, object]], columns: Sequence[str] | None = None,
          units: Mapping[str, str] | None = None) -> str:
    """Fixed-width text table; numbers formatted with SI prefixes and their unit."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    units = dict(units or {})
    cells = [[c for c in columns]]
    for row in rows:
        line = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                line.append(si(v, units[c] if c in units else unit_of(c)))
            else:
                line.append(str(v))
        cells.append(line)
    widths = [max(len(r[i]) for r in cells) for i in range(len(columns))]
    out = []
    for k, r in enumerate(cells):
        out.append("  ".join(s.rjust(w) if k and i else s.ljust(w)
                             for i, (s, w) in enumerate(zip(r, widths, strict=True))))
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
