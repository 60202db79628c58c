"""`Cluster`: the whole machine as one design: the system (chips, scale-up domains, scale-out
network), how it fails and recovers, and what it costs to own and run.

A `Cluster` is the base of a `dse.Space` whose knobs are chip, network, reliability and economics
fields together (`dse.hardware.FIELDS` gives each one's path: `system.chip.hbm_bandwidth`,
`system.network.oversubscription`, `reliability.checkpoint_bandwidth`, `economics.pue`).
"""

from __future__ import annotations

import dataclasses

import equinox as eqx

from ._reliability import Reliability
from ._system import System
from ._tco import Economics


class Cluster(eqx.Module):
    """A training or serving cluster as a design.

    **Fields:**

    - `system`: the `System`; it must have a `network` (`dse.hardware.Network`).
    - `reliability`: failure rates, checkpoint and restart machinery (`Reliability()`: the
      Llama 3 run's rates).
    - `economics`: prices, power figures, lifetimes (`Economics()`: the sourced defaults).
    """

    system: System
    reliability: Reliability = eqx.field(default_factory=Reliability)
    economics: Economics = eqx.field(default_factory=Economics)

    def __check_init__(self):
        if not isinstance(self.system, System):
            raise ValueError(f"Cluster.system must be a System; got {type(self.system).__name__}")
        if self.system.network is None:
            raise ValueError("Cluster.system.network must be a dse.hardware.Network (tiers, "
                             "radix, oversubscription); got None")
        for field, kind in (("reliability", Reliability), ("economics", Economics)):
            value = getattr(self, field)
            if not isinstance(value, kind):
                raise ValueError(f"Cluster.{field} must be a {kind.__name__}; got "
                                 f"{type(value).__name__}")

    def replace(self, **changes) -> Cluster:
        """A copy with some fields changed (validated like a new Cluster)."""
        return dataclasses.replace(self, **changes)
