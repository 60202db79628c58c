"""Collectives on a two-tier `System`: all-reduce, all-gather, reduce-scatter, all-to-all, send.

Costs are the alpha-beta (latency-bandwidth) model of Thakur, Rabenseifner & Gropp 2005
("Optimization of collective communication operations in MPICH", IJHPCA 19(1)), per tier:

- all-reduce (Rabenseifner: reduce-scatter + all-gather): 2 L(p) alpha + 2 (p-1)/p n beta;
- reduce-scatter / all-gather (recursive halving / doubling, or ring): L(p) alpha + (p-1)/p n beta;
- all-to-all: (p-1)/p n beta (pairwise exchange volume) with the sends posted at once (NCCL
  groups them; TPU ICI routes them dimension by dimension), so L(p) alpha of latency;
- send/recv: alpha + n beta.

with n the full buffer (NCCL's convention: all-gather counts the gathered output, reduce-scatter
the input, so all-reduce = reduce-scatter + all-gather exactly), beta = 1 / per-chip bandwidth and
L(p) the latency steps of one reduce-scatter: log2 p on a switch (recursive halving; any-to-any at
full per-chip bandwidth) and d (p^(1/d) - 1) on a d-dimensional torus (one bucket ring per
dimension; Chan et al. 2007, "Collective communication: theory, practice, and experience",
CCPE 19(13), Sec. 6). On a torus the all-to-all is also bounded by the bisection: a k-ary d-cube
cut in half severs 2 k^(d-1) links per direction and each half sends p n / 4 across it, so
t >= k n / (8 link_bandwidth) (Dally & Towles 2004, "Principles and practices of interconnection
networks", Sec. 3.3).

Hierarchy: `group_size` members sit on chips 0, stride, 2 stride, ... A scale-up domain holds
g_in = clip(scaleup_size / stride, 1, group_size) of them and the group spans
g_out = group_size / g_in domains. Reductions run in-domain first (every chip of a domain drives
its own scale-out port with its 1 / g_in shard, as NCCL's rail-aligned hierarchical algorithms do),
so the scale-out tier carries n / g_in per chip. The two tiers run one after the other:
time = scaleup_time + scaleout_time.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from dse.hardware import System
from dse.hardware._validate import check_range

from ._operators import _f, _safe_div

# Fraction of the scale-up links' bandwidth a collective sustains (NCCL bus bandwidth / link
# bandwidth). Fitted by `models/_fit_efficiency.py: fit_link_efficiency` to the LLMCompass A100
# tensor-parallel all-reduce measurement (data//inference_runs.csv,
# llmcompass_a100x4_gpt3_layer_prefill, AllReduce_MHA: 403 MB over 4 GPUs in 2.89 ms); the
# test re-runs the fit. The scale-out tier is taken at its stated per-chip bandwidth.
SCALEUP_LINK_EFFICIENCY = 0.6964


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


def _dims(system: System) -> int:
    return {"switch": 0, "torus2d": 2, "torus3d": 3}[system.topology]


def _tiers(system: System, group_size, stride):
    g = jnp.maximum(_f(group_size), 1.0)
    stride = jnp.maximum(_f(stride), 1.0)
    g_in = jnp.clip(system.scaleup_domain / stride, 1.0, g)
    g_out = g / g_in
    return g, g_in, g_out


def _scaleup_steps(system: System, p):
    """Latency steps of one reduce-scatter over p members of the scale-up tier."""
    d = _dims(system)
    if d == 0:
        return jnp.log2(p)
    return d * (p ** (1.0 / d) - 1.0)


def _link_efficiency(link_efficiency):
    """The given scale-up link efficiency, or the fitted `SCALEUP_LINK_EFFICIENCY`."""
    return SCALEUP_LINK_EFFICIENCY if link_efficiency is None else link_efficiency


def _scaleup_latency(system: System, latency_scale=None):
    """The scale-up tier's per-step latency, times `latency_scale` when one is given."""
    if latency_scale is None:
        return system.scaleup_latency
    check_range("collective", "latency_scale", latency_scale, lower=0.0, lower_inclusive=True)
    return system.scaleup_latency * latency_scale


def _bandwidths(system: System, link_efficiency=None):
    return (system.scaleup_bandwidth * _link_efficiency(link_efficiency),
            system.scaleout_bandwidth)


def _cost(up_bytes, up_steps, out_bytes, out_steps, system: System, up_floor=None,
          link_efficiency=None, latency_scale=None) -> CommCost:
    bw_up, bw_out = _bandwidths(system, link_efficiency)
    # No scale-up links only happens with a scale-up domain of one chip (System checks it),
    # where no bytes cross them: 0 bytes take 0 s, not 0 / 0.
    t_up = _safe_div(up_bytes, bw_up) + up_steps * _scaleup_latency(system, latency_scale)
    if up_floor is not None:
        t_up = jnp.maximum(t_up, up_floor)
    t_out = out_bytes / bw_out + out_steps * system.scaleout_latency
    return CommCost(t_up + t_out, t_up, t_out, up_bytes, out_bytes)


def _reduce_scatter_parts(system, n, group_size, stride):
    g, g_in, g_out = _tiers(system, group_size, stride)
    up_bytes = (g_in - 1.0) / g_in * n
    out_bytes = (g_out - 1.0) / g_out * n / g_in
    return up_bytes, _scaleup_steps(system, g_in), out_bytes, jnp.log2(g_out)


def reduce_scatter(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
                   stride: ArrayLike = 1.0, link_efficiency: ArrayLike | None = None,
                   latency_scale: ArrayLike | None = None) -> CommCost:
    """Reduce-scatter of a `message_bytes` buffer over `group_size` chips (each keeps 1/p).

    **Arguments:**

    - `system`: the `System` (scale-up and scale-out tiers, topology).
    - `message_bytes`: bytes of the full input buffer on each chip.
    - `group_size`: chips in the group (1: no communication).
    - `stride`: chip-index spacing of the members (a data-parallel group beside tensor
      parallel 8 has stride 8 and crosses the scale-out network).
    - `link_efficiency`: fraction of the scale-up links' bandwidth the collective sustains
      (default `SCALEUP_LINK_EFFICIENCY`, fitted; a calibrated value may be traced).
    - `latency_scale`: factor on the scale-up tier's per-step latency `system.scaleup_latency`
      (the alpha of the alpha-beta model; default None = the stated latency, exactly as
      `latency_scale=1`). Like `link_efficiency` it is a calibratable parameter of the
      scale-up tier; the scale-out tier keeps its stated latency and bandwidth.

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    return _cost(*_reduce_scatter_parts(system, n, group_size, stride), system,
                 link_efficiency=link_efficiency, latency_scale=latency_scale)


def all_gather(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
               stride: ArrayLike = 1.0, link_efficiency: ArrayLike | None = None,
               latency_scale: ArrayLike | None = None) -> CommCost:
    """All-gather into a `message_bytes` buffer (each chip contributes 1/p) over the group.

    **Arguments:** as `reduce_scatter`; `message_bytes` is the full gathered output.

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    return _cost(*_reduce_scatter_parts(system, n, group_size, stride), system,
                 link_efficiency=link_efficiency, latency_scale=latency_scale)


def all_reduce(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
               stride: ArrayLike = 1.0, link_efficiency: ArrayLike | None = None,
               latency_scale: ArrayLike | None = None) -> CommCost:
    """All-reduce of a `message_bytes` buffer: reduce-scatter then all-gather, per tier.

    **Arguments:** as `reduce_scatter`.

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    up_bytes, up_steps, out_bytes, out_steps = _reduce_scatter_parts(system, n, group_size,
                                                                     stride)
    return _cost(2.0 * up_bytes, 2.0 * up_steps, 2.0 * out_bytes, 2.0 * out_steps, system,
                 link_efficiency=link_efficiency, latency_scale=latency_scale)


def all_to_all(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
               stride: ArrayLike = 1.0, link_efficiency: ArrayLike | None = None,
               latency_scale: ArrayLike | None = None) -> CommCost:
    """All-to-all: each chip sends `message_bytes` split evenly over the group (MoE dispatch).

    **Arguments:** as `reduce_scatter`; `message_bytes` is each chip's send buffer (its own
    share included).

    **Returns:** `CommCost`.
    """
    n = _f(message_bytes)
    g, g_in, g_out = _tiers(system, group_size, stride)
    up_bytes = (g_in - 1.0) / g * n
    out_bytes = (g - g_in) / g * n
    floor = None
    d = _dims(system)
    if d:
        side = g_in ** (1.0 / d)
        # Bisection bound on the in-domain share, scaled by the (p-1)/p that leaves the chip
        # so that it vanishes continuously for a group of one.
        floor = side * up_bytes / (8.0 * system.chip.link_bandwidth
                                   * _link_efficiency(link_efficiency))
    return _cost(up_bytes, _scaleup_steps(system, g_in), out_bytes, jnp.log2(g_out), system,
                 up_floor=floor, link_efficiency=link_efficiency, latency_scale=latency_scale)


def send_recv(system: System, message_bytes: ArrayLike, group_size: ArrayLike, *,
              stride: ArrayLike = 1.0, link_efficiency: ArrayLike | None = None,
              latency_scale: ArrayLike | None = None) -> CommCost:
    """Point-to-point transfer of `message_bytes` between neighbouring members (pipeline stages).

    The slowest neighbour pair sets the time: it crosses the scale-out network when the group
    spans more than one scale-up domain.

    **Arguments:** as `reduce_scatter`; `message_bytes` is the message each member sends.

    **Returns:** `CommCost` (zero for a group of one).
    """
    n = _f(message_bytes)
    g, g_in, g_out = _tiers(system, group_size, stride)
    active = jnp.where(g > 1.0, 1.0, 0.0)
    crosses = jnp.where(g_out > 1.0, 1.0, 0.0)
    up_bytes = active * (1.0 - crosses) * n
    out_bytes = active * crosses * n
    return _cost(up_bytes, active * (1.0 - crosses), out_bytes, active * crosses, system,
                 link_efficiency=link_efficiency, latency_scale=latency_scale)
