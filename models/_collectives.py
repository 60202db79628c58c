"""Collectives on a two-tier `System`: all-reduce, all-gather, reduce-scatter, all-to-all, send.

Costs are the alpha-beta (latency-bandwidth) model of Thakur, Rabenseifner & Gropp 2005
("Optimization of collective communication operations in MPICH", IJHPCA 19(1)), per tier:

- all-reduce (reduce-scatter + all-gather in one collective): s + 2 L(p) alpha
  + 2 (p-1)/p n beta;
- reduce-scatter / all-gather: s + L(p) alpha + (p-1)/p n beta;
- all-to-all: (p-1)/p n beta (pairwise exchange volume) with the sends posted at once (NCCL
  groups them; TPU ICI routes them dimension by dimension), so s + log2 p alpha of latency on a
  switch;
- send/recv: alpha + n beta.

with n the full buffer (NCCL's convention: all-gather counts the gathered output, reduce-scatter
the input, so all-reduce = reduce-scatter + all-gather, less one start-up and one pipeline
fill), beta = 1 / per-chip bandwidth, s the collective's fixed start-up
(`Calibration.collective_latency`: the library's launch and set-up) and L(p) the latency steps
of one reduce-scatter: on a switch the fewer of a ring's p - 1 and a logarithmic schedule's
2 log2 p (NCCL's one-node floors rise about one step per member from 2 to 8 GPUs), and
d (p^(1/d) - 1) on a d-dimensional torus (one bucket ring per dimension; Chan et al. 2007,
"Collective communication: theory, practice, and experience", CCPE 19(13), Sec. 6). The
scale-up tier's bytes are pipelined: n bytes at bandwidth w take (n + 2 sqrt(D n)) / w, the
optimal segmentation of a pipelined transfer whose chunks each cost D bytes' worth of link time
(`Calibration.pipeline_overhead_bytes`; Johnsson & Ho 1989, IEEE Trans. Computers 38(9)),
which is NCCL's bus-bandwidth ramp from mid-size messages to its plateau. s, the per-step
alpha and D on NVLink are fitted to NVIDIA's one-node NCCL sweeps
(`dse.calibration.fit_collective_latency`, data/collective_sweeps.csv); NVLink SHARP (NCCL's
in-switch all-reduce on eight H100s) is not modelled. On a torus the all-to-all is also
bounded by the bisection: a k-ary d-cube cut in half severs 2 k^(d-1) links per direction and
each half sends p n / 4 across it, so t >= k n / (8 link_bandwidth) (Dally & Towles 2004,
"Principles and practices of interconnection networks", Sec. 3.3).

Hierarchy: `group_size` members sit on chips 0, stride, 2 stride, ... A scale-up domain holds
g_in = clip(scaleup_size / stride, 1, group_size) of them and the group spans
g_out = group_size / g_in domains. Reductions run in-domain first (every chip of a domain drives
its own scale-out port with its 1 / g_in shard, as NCCL's rail-aligned hierarchical algorithms do),
so the scale-out tier carries n / g_in per chip. The two tiers run one after the other:
time = scaleup_time + scaleout_time.

The scale-up tier runs at `Calibration.link_efficiency` of the links' bandwidth and at
`Calibration.latency_scale` times the stated latency, both for the system's fabric
(`System.fabric`); the scale-out tier at `Calibration.scaleout_efficiency` of its stated per-chip
bandwidth and at its stated latency.

A `System` with a `network` (`dse.hardware.Network`: tiers, radix, oversubscription) is costed
by `_network_collectives.py` instead: rings pipelined over the tiers, each at the bandwidth it
has under oversubscription. Without one, the model above applies. A flat ring
(`hierarchical=0`) is a property of the two-tier model.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from dse.hardware import System

from . import _network_collectives as _net
from ._calibration import DEFAULT, Calibration
from ._operators import _f
from ._tiers import all_to_all_steps as _all_to_all_steps
from ._tiers import dims as _dims
from ._tiers import link_efficiency as _link_efficiency
from ._tiers import pipelined as _pipelined
from ._tiers import scaleup_steps as _scaleup_steps
from ._tiers import start_up as _start_up


class CommCost(eqx.Module):
    """Cost of one collective (SI units; arrays broadcast over a batch).

    **Fields:**

    - `time`: total time, s (= scaleup_time + scaleout_time).
    - `scaleup_time`, `scaleout_time`: time spent in each tier, s.
    - `scaleup_bytes`, `scaleout_bytes`: bytes each chip sends over each tier.
    """

    time: Float[Array, "..."]
    scaleup_time: Float[Array, "..."]
    scaleout_time: Float[Array, "..."]
    scaleup_bytes: Float[Array, "..."]
    scaleout_bytes: Float[Array, "..."]

    def __add__(self, other: CommCost) -> CommCost:
        """Two collectives one after the other: every field adds."""
        return CommCost(self.time + other.time, self.scaleup_time + other.scaleup_time,
                        self.scaleout_time + other.scaleout_time,
                        self.scaleup_bytes + other.scaleup_bytes,
                        self.scaleout_bytes + other.scaleout_bytes)

    def scale(self, factor) -> CommCost:
        """`factor` identical collectives one after the other."""
        return CommCost(self.time * factor, self.scaleup_time * factor,
                        self.scaleout_time * factor, self.scaleup_bytes * factor,
                        self.scaleout_bytes * factor)


def _tiers(system: System, group_size, stride):
    g = jnp.maximum(_f(group_size), 1.0)
    stride = jnp.maximum(_f(stride), 1.0)
    g_in = jnp.clip(system.scaleup_domain / stride, 1.0, g)
    g_out = g / g_in
    return g, g_in, g_out


def _cost(up_bytes, up_steps, out_bytes, out_steps, system: System, calibration: Calibration,
          up_floor=None, start=(0.0, 0.0)) -> CommCost:
    bw_up = system.scaleup_bandwidth * _link_efficiency(system, calibration)
    latency_up = system.scaleup_latency * calibration.latency_scale[system.fabric]
    # No scale-up links only happens with a scale-up domain of one chip (System checks it),
    # where no bytes cross them: 0 bytes take 0 s, not 0 / 0.
    t_up = _pipelined(up_bytes, bw_up, system, calibration) + up_steps * latency_up
    if up_floor is not None:
        t_up = jnp.maximum(t_up, up_floor)
    t_out = out_bytes / (system.scaleout_bandwidth * calibration.scaleout_efficiency) \
        + out_steps * system.scaleout_latency
    t_up, t_out = t_up + start[0], t_out + start[1]
    return CommCost(t_up + t_out, t_up, t_out, up_bytes, out_bytes)


def _start(system, calibration, group_size, stride):
    g, g_in, _ = _tiers(system, group_size, stride)
    return _start_up(system, calibration, g, g_in)


def _reduce_scatter_parts(system, n, group_size, stride, hierarchical=True):
    g, g_in, g_out = _tiers(system, group_size, stride)
    up_bytes = (g_in - 1.0) / g_in * n
    out_bytes = (g_out - 1.0) / g_out * n / g_in
    parts = (up_bytes, _scaleup_steps(system, g_in), out_bytes, jnp.log2(g_out))
    if hierarchical is True:
        return parts
    # A flat ring over the whole group: once it spans domains, every member's (g-1)/g share
    # crosses the scale-out network and nothing is reduced in the domain first.
    spans = (g_out > 1.0) & (jnp.asarray(hierarchical) < 0.5)
    flat = (0.0 * up_bytes, 0.0 * up_bytes, (g - 1.0) / g * n, jnp.log2(g))
    return tuple(jnp.where(spans, f, h) for f, h in zip(flat, parts, strict=True))


def reduce_scatter(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
                   stride: ArrayLike = 1.0, calibration: Calibration = DEFAULT,
                   hierarchical: ArrayLike = True) -> CommCost:
    """Reduce-scatter of a `message_bytes` buffer over `group_size` chips (each keeps 1/p).

    **Arguments:**

    - `system`: the `System` (scale-up and scale-out tiers, topology).
    - `message_bytes`: bytes of the full input buffer on each chip.
    - `group_size`: chips in the group (1: no communication).
    - `stride`: chip-index spacing of the members (a data-parallel group beside tensor
      parallel 8 has stride 8 and crosses the scale-out network).
    - `calibration`: the fitted factors (`dse.models.Calibration`); the scale-up tier uses its
      `link_efficiency` and `latency_scale` for `system.fabric` (a traced calibration
      differentiates).
    - `hierarchical`: True (or 1): in the scale-up domain first, then across domains with
      each chip driving its own scale-out port with its 1 / g_in share (NCCL's rail-aligned
      rings); 0: a flat ring, every member's whole share crossing the scale-out network once
      the group spans domains.

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    if system.network is not None:
        return CommCost(*_net.ring_parts(system, n, group_size, stride, calibration))
    return _cost(*_reduce_scatter_parts(system, n, group_size, stride, hierarchical), system,
                 calibration, start=_start(system, calibration, group_size, stride))


def all_gather(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
               stride: ArrayLike = 1.0, calibration: Calibration = DEFAULT,
               hierarchical: ArrayLike = True) -> CommCost:
    """All-gather into a `message_bytes` buffer (each chip contributes 1/p) over the group.

    **Arguments:** as `reduce_scatter`; `message_bytes` is the full gathered output.

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    if system.network is not None:
        return CommCost(*_net.ring_parts(system, n, group_size, stride, calibration))
    return _cost(*_reduce_scatter_parts(system, n, group_size, stride, hierarchical), system,
                 calibration, start=_start(system, calibration, group_size, stride))


def all_reduce(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
               stride: ArrayLike = 1.0, calibration: Calibration = DEFAULT,
               hierarchical: ArrayLike = True) -> CommCost:
    """All-reduce of a `message_bytes` buffer: reduce-scatter then all-gather, per tier.

    **Arguments:** as `reduce_scatter`.

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    if system.network is not None:
        return CommCost(*_net.ring_parts(system, n, group_size, stride, calibration, passes=2.0))
    up_bytes, up_steps, out_bytes, out_steps = _reduce_scatter_parts(system, n, group_size,
                                                                     stride, hierarchical)
    # One collective (one start-up) of two passes: reduce-scatter then all-gather.
    return _cost(2.0 * up_bytes, 2.0 * up_steps, 2.0 * out_bytes, 2.0 * out_steps, system,
                 calibration, start=_start(system, calibration, group_size, stride))


def all_to_all(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
               stride: ArrayLike = 1.0, calibration: Calibration = DEFAULT,
               scaleup_scale: ArrayLike = 1.0, scaleout_scale: ArrayLike = 1.0) -> CommCost:
    """All-to-all: each chip sends `message_bytes` split evenly over the group (MoE dispatch).

    **Arguments:** as `reduce_scatter`; `message_bytes` is each chip's send buffer (its own
    share included). `scaleup_scale` / `scaleout_scale` multiply the bytes each tier carries
    (not its latency steps): a dispatch that sends fewer or more copies over a tier than the
    even split (MoE's hierarchical dispatch, `dse.models.expert_dispatch`).

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    if system.network is not None:
        return CommCost(*_net.all_to_all_parts(system, n, group_size, stride, calibration,
                                               scaleup_scale, scaleout_scale))
    g, g_in, g_out = _tiers(system, group_size, stride)
    up_bytes = (g_in - 1.0) / g * n * scaleup_scale
    out_bytes = (g - g_in) / g * n * scaleout_scale
    floor = None
    d = _dims(system)
    if d:
        side = g_in ** (1.0 / d)
        # Bisection bound on the in-domain share, scaled by the (p-1)/p that leaves the chip
        # so that it vanishes continuously for a group of one.
        floor = side * up_bytes / (8.0 * system.chip.link_bandwidth
                                   * _link_efficiency(system, calibration))
    return _cost(up_bytes, _all_to_all_steps(system, g_in), out_bytes, jnp.log2(g_out), system,
                 calibration, up_floor=floor, start=_start_up(system, calibration, g, g_in))


def send_recv(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
              stride: ArrayLike = 1.0, calibration: Calibration = DEFAULT) -> CommCost:
    """Point-to-point transfer of `message_bytes` between neighbouring members (pipeline stages).

    The slowest neighbour pair sets the time: it crosses the scale-out network when the group
    spans more than one scale-up domain.

    **Arguments:** as `reduce_scatter`; `message_bytes` is the message each member sends.

    **Returns:** `CommCost` (zero for a group of one).
    """
    n = _f(message_bytes)
    if system.network is not None:
        return CommCost(*_net.send_parts(system, n, group_size, stride, calibration))
    g, g_in, g_out = _tiers(system, group_size, stride)
    active = jnp.where(g > 1.0, 1.0, 0.0)
    crosses = jnp.where(g_out > 1.0, 1.0, 0.0)
    up_bytes = active * (1.0 - crosses) * n
    out_bytes = active * crosses * n
    return _cost(up_bytes, active * (1.0 - crosses), out_bytes, active * crosses, system,
                 calibration)
