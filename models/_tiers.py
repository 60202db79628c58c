"""What both collective models (two-tier and networked) read of a system's scale-up tier."""

from __future__ import annotations

import jax.numpy as jnp

from dse.hardware import System
from dse.hardware._once import once_per_evaluation
from dse.hardware._system import TOPOLOGY_DIMS

from ._calibration import Calibration


def dims(system: System) -> int:
    """Torus dimensions of the scale-up topology (0 for a switch)."""
    return TOPOLOGY_DIMS[system.topology]


def scaleup_steps(system: System, p):
    """Latency steps of one reduce-scatter over p members of the scale-up tier."""
    d = dims(system)
    if d == 0:
        return jnp.log2(p)
    return d * (p ** (1.0 / d) - 1.0)


@once_per_evaluation
def link_efficiency(system: System, calibration: Calibration):
    """The calibrated fraction of the scale-up links' bandwidth, for the system's fabric."""
    return calibration.link_efficiency[system.fabric]
