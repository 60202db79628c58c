"""Designs across the whole valid range of every field: what robustness runs and property tests
evaluate (`benchmarks/robustness.py`, `tests/test_properties.py`)."""

from __future__ import annotations

import numpy as np

from ._fields import FIELDS
from ._system import System

# The fields a `System` carries (its chip's and its own), in `FIELDS` order: the columns of
# `span_systems`'s unit coordinates. Network, reliability and economics fields belong to a
# `Cluster` and are not spanned here.
SPAN_FIELDS: tuple[str, ...] = tuple(name for name, f in FIELDS.items()
                                     if f.owner in ("Chip", "System"))


def span_systems(base: System, u, *, with_hbm: bool = True, with_links: bool = True) -> System:
    """A batch of systems: `base` with every continuous field of its chip and of itself set from
    unit coordinates, over the field's whole valid range (`Field.from_unit`).

    **Arguments:**

    - `base`: the system whose static structure (chip count, topology, fabric, ...) is kept.
    - `u`: `[n, len(SPAN_FIELDS)]` unit coordinates in [0, 1], one column per field of
      `dse.hardware.SPAN_FIELDS` (the chip's and the system's fields, in `FIELDS` order); 0 and
      1 are the far corners of a field's bounds.
    - `with_hbm`: chips with HBM (its two fields from `u`), or without (both 0,
      `hbm_generation="none"`, operands in SRAM): a chip is one or the other.
    - `with_links`: chips with scale-up links, or without (`link_count` 0, scale-up domain 1).

    **Returns:** one `System` with `[n]` leaves, validated like any other (concrete values).
    """
    u = np.asarray(u, np.float64)
    if u.ndim != 2 or u.shape[1] != len(SPAN_FIELDS):
        raise ValueError(f"span_systems: u must have shape [n, {len(SPAN_FIELDS)}] (one column "
                         f"per field of dse.hardware.SPAN_FIELDS); got {u.shape}")
    values = {name: FIELDS[name].from_unit(u[:, j]) for j, name in enumerate(SPAN_FIELDS)}
    if not with_hbm:
        values["hbm_bandwidth"] = values["hbm_bytes"] = np.zeros(len(u))
    if not with_links:
        values["link_count"] = np.zeros(len(u))
        values["scaleup_size"] = np.ones(len(u))
    chip = base.chip.replace(
        **{k: v for k, v in values.items() if FIELDS[k].owner == "Chip"},
        hbm_generation=(base.chip.hbm_generation if with_hbm and
                        base.chip.hbm_generation != "none" else
                        "HBM3" if with_hbm else "none"))
    return base.replace(chip=chip, **{k: v for k, v in values.items()
                                      if FIELDS[k].owner == "System"})
