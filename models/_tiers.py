"""What both collective models (two-tier and networked) read of a system's scale-up tier."""

from __future__ import annotations

import jax.numpy as jnp

from dse.hardware import System
from dse.hardware._once import once_per_evaluation
from dse.hardware._system import TOPOLOGY_DIMS

from ._calibration import Calibration
from ._operators import _safe_div


def dims(system: System) -> int:
    """Torus dimensions of the scale-up topology (0 for a switch)."""
    return TOPOLOGY_DIMS[system.topology]


def scaleup_steps(system: System, p):
    """Latency steps of one reduce-scatter (or all-gather) over p members of the scale-up tier.

    On a switch, the fewer of a ring's p - 1 and a logarithmic schedule's 2 log2 p: NCCL's
    one-node floors rise about one step per member from 2 to 8 GPUs (ring-like; fitted per chip,
    0.92 us a step on H100 and 1.05 us on A100, data/collective_sweeps.csv), and a large domain
    (NVL72) is not priced as a 71-step ring (NCCL has NVLS, tree and PAT algorithms for those; no
    data here). On a d-dimensional torus, one bucket ring per dimension, d (p^(1/d) - 1) (Chan
    et al. 2007, Sec. 6).
    """
    d = dims(system)
    if d == 0:
        return jnp.minimum(p - 1.0, 2.0 * jnp.log2(p))
    return d * (p ** (1.0 / d) - 1.0)


def all_to_all_steps(system: System, p):
    """Latency steps of one all-to-all over p members of the scale-up tier: its sends are posted
    at once, so on a switch log2 p (NCCL's one-node all-to-all floor barely grows with p: 6.5
    -> 7.4 us from 2 to 8 H100s, data/collective_sweeps.csv); on a torus, dimension by
    dimension as `scaleup_steps`."""
    d = dims(system)
    if d == 0:
        return jnp.log2(p)
    return d * (p ** (1.0 / d) - 1.0)


def start_up(system: System, calibration: Calibration, g, g_in):
    """(scale-up, scale-out) share of one collective's fixed start-up time, s
    (`Calibration.collective_latency` of the fabric): paid once by a group of more than one, in
    the scale-up tier when members share a domain, else in the scale-out tier."""
    base = calibration.collective_latency[system.fabric]
    active = g > 1.0
    in_domain = g_in > 1.0
    return (jnp.where(active & in_domain, base, 0.0),
            jnp.where(active & ~in_domain, base, 0.0))


def pipelined(message_bytes, bandwidth, system: System, calibration: Calibration):
    """Time of `message_bytes` (B) sent at `bandwidth` (B/s) as a pipelined collective in the
    scale-up tier: cut into chunks, each paying a fixed cost that the links would fill with
    `Calibration.pipeline_overhead_bytes` (D) of the fabric, with the first chunk's fill
    exposed. The best chunk count gives b + 2 sqrt(d b), b = n / bandwidth and d = D /
    bandwidth (the optimal segmentation of a pipelined transfer: Johnsson & Ho 1989, IEEE
    Trans. Computers 38(9); Sanders & Sibeyn 2003, IPL 86), so (2 sqrt(D n) + n) / bandwidth:
    the fraction of the plateau a message reaches depends on its size, not on the links' speed
    (data/collective_sweeps.csv: a fifth to a quarter of it at 1 MB on A100 and H100 alike,
    nearing it only at hundreds of MB). No bytes (or no links) take 0 s, with a zero
    gradient."""
    x = calibration.pipeline_overhead_bytes[system.fabric] * message_bytes
    positive = x > 0.0
    fill = 2.0 * jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), 0.0)
    return _safe_div(message_bytes + fill, bandwidth)


@once_per_evaluation
def link_efficiency(system: System, calibration: Calibration):
    """The calibrated fraction of the scale-up links' bandwidth, for the system's fabric."""
    return calibration.link_efficiency[system.fabric]
