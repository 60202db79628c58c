"""Plain-text tables with SI prefixes: the terminal face of reports (no models here)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

_PREFIXES = [(1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""),
             (1e-3, "m"), (1e-6, "u"), (1e-9, "n"), (1e-12, "p")]

# Units of the metrics and fields that appear in tables (SI base units).
UNITS: dict[str, str] = {
    "step_time": "s", "tokens_per_s": "tok/s", "mfu": "", "memory_margin": "B", "area": "mm2",
    "power": "W", "cost": "$", "reticle_margin": "mm2", "shoreline_margin": "mm",
    "energy_per_token": "J", "ttft": "s", "tpot": "s", "tokens_per_s_per_chip": "tok/s",
    "tokens_per_s_per_dollar": "tok/s/$", "sram_bytes": "B", "hbm_bandwidth": "B/s",
    "hbm_bytes": "B", "link_count": "", "link_bandwidth": "B/s", "mac_units": "",
    "clock_hz": "Hz", "vector_flops": "FLOP/s", "node_nm": "nm", "core_count": "",
    "compute_redundancy": "", "peak_flops": "FLOP/s",
}


def si(value: float, unit: str = "", digits: int = 3) -> str:
    """`3.35e12, "B/s"` -> "3.35 TB/s"; plain numbers for mm2, $, nm and unitless ratios."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    value = float(value)
    if unit in ("mm2", "mm", "$", "nm", "") or value == 0 or not math.isfinite(value):
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
    units = {**UNITS, **(units or {})}
    cells = [[c for c in columns]]
    for row in rows:
        line = []
        for c in columns:
            v = row.get(c, "")
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                line.append(si(v, units.get(c, "")))
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
