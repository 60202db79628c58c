"""Collectives over a `System` with a scale-out `Network`: every tier at the bandwidth it has.

With a network (`System.network`), a collective is costed as NCCL runs large messages on a
multi-node machine: rings pipelined across the tiers, so the tiers run concurrently and the
slowest one sets the bandwidth time; the latency term is the collective's fixed start-up plus
the scale-up tier's steps (as in the two-tier model) and the log of the domains crossed. Without
a network, `_collectives.py` keeps the serial two-tier model.

Ring all-reduce over g ranks, g_in per scale-up domain, with one scale-out NIC per chip: NCCL
builds g_in rings (channels), each leaving a domain through a different NIC, so every rank sends
2 (g - 1) / g n bytes in all, of which its NIC carries 1 / g_in and its scale-up links the rest
((g_in - 1) / g_in). Bus bandwidth (nccl-tests' busbw = 2 (g - 1) / g n / t) is then the smaller
of g_in x the NIC's and g_in / (g_in - 1) x the links': about 8 x 48 GB/s on a node of eight
400 Gb/s NICs, as NVIDIA states ("around 48GB/s from each CX7 NIC ... aggregated to achieve up
to ~396GB/s with the RING protocol", nccl-tests issue 319) and data/nccl_busbw.csv measures.

Oversubscription: a ring that spans several pods crosses a pod boundary on g_pods of its
g_out inter-domain hops; with every chip in some group (data parallelism runs all groups at
once), a pod needs that share of its endpoints' bandwidth across the boundary, and has 1 / o.
The scale-out tier slows by max(1, o x share). An all-to-all sends (g - pod members) / (g - g_in)
of its network bytes out of the pod and slows the same way.

The scale-out tier runs at `Calibration.scaleout_efficiency` of the stated per-chip bandwidth,
the scale-up tier at `Calibration.link_efficiency` of the fabric, as in the two-tier model.
"""

from __future__ import annotations

import jax.numpy as jnp

from dse.hardware import System
from dse.hardware._network import fat_tree

from ._calibration import Calibration
from ._operators import _f, _safe_div
from ._tiers import all_to_all_steps, dims, link_efficiency, pipelined, scaleup_steps, start_up


def _groups(system: System, group_size, stride):
    """Members per domain, domains, members per pod and pods spanned by a group."""
    g = jnp.maximum(_f(group_size), 1.0)
    stride = jnp.maximum(_f(stride), 1.0)
    g_in = jnp.clip(system.scaleup_domain / stride, 1.0, g)
    pod = fat_tree(system.network, float(system.num_chips)).pod_chips
    # A pod holds whole scale-up domains (the domains are what hang off its leaves).
    in_pod = jnp.clip(jnp.maximum(pod, system.scaleup_domain) / stride, g_in, g)
    return g, g_in, g / g_in, in_pod, g / in_pod


def _bandwidths(system: System, calibration: Calibration):
    up = system.scaleup_bandwidth * link_efficiency(system, calibration)
    out = system.scaleout_bandwidth * calibration.scaleout_efficiency
    return up, out


def _latencies(system: System, calibration: Calibration):
    return (system.scaleup_latency * calibration.latency_scale[system.fabric],
            system.scaleout_latency)


def _pipelined(t_up, t_out, lat_up, lat_out):
    """(time, scale-up part, scale-out part): the bandwidth time of the slower tier, split over
    the tiers in proportion to their own times, plus each tier's latency."""
    bw = jnp.maximum(t_up, t_out)
    share = _safe_div(t_up, t_up + t_out)
    up = bw * share + lat_up
    out = bw * (1.0 - share) + lat_out
    return up + out, up, out


def ring_parts(system: System, n, group_size, stride, calibration: Calibration, passes=1.0):
    """A reduce-scatter (or all-gather; `passes=2`: an all-reduce, both in one collective) of
    an n-byte buffer as a ring over the tiers: (time, scale-up time, scale-out time, scale-up
    bytes, scale-out bytes) per chip."""
    g, g_in, g_out, _, pods = _groups(system, group_size, stride)
    ring = passes * (g - 1.0) / g * n
    # The NICs carry 1/g_in of the ring once the group leaves its domain (rising smoothly to
    # that share between one and two domains); the links carry the rest.
    crosses = jnp.clip(g_out - 1.0, 0.0, 1.0)
    out_bytes = crosses * ring / g_in
    up_bytes = ring - out_bytes
    bw_up, bw_out = _bandwidths(system, calibration)
    share = jnp.clip(_safe_div(pods - 1.0, g_out - 1.0), 0.0, 1.0)
    slow = jnp.maximum(1.0, system.network.oversubscription * share)
    t_up = pipelined(up_bytes, bw_up, system, calibration)
    t_out = out_bytes * slow / bw_out
    lat_up, lat_out = _latencies(system, calibration)
    start_in, start_out = start_up(system, calibration, g, g_in)
    time, up, out = _pipelined(t_up, t_out, passes * scaleup_steps(system, g_in) * lat_up
                               + start_in, passes * jnp.log2(g_out) * lat_out + start_out)
    return time, up, out, up_bytes, out_bytes


def all_to_all_parts(system: System, n, group_size, stride, calibration: Calibration,
                     scaleup_scale=1.0, scaleout_scale=1.0):
    """All-to-all of an n-byte send buffer per chip over the tiers, sent at once (on a torus
    the in-domain share is also bounded by the bisection, as in the two-tier model); each
    tier's bytes times its scale (`dse.models.all_to_all`)."""
    g, g_in, g_out, in_pod, _ = _groups(system, group_size, stride)
    up_bytes = (g_in - 1.0) / g * n * scaleup_scale
    out_bytes = (g - g_in) / g * n * scaleout_scale
    bw_up, bw_out = _bandwidths(system, calibration)
    share = jnp.clip(_safe_div(g - in_pod, g - g_in), 0.0, 1.0)
    slow = jnp.maximum(1.0, system.network.oversubscription * share)
    t_up = pipelined(up_bytes, bw_up, system, calibration)
    d = dims(system)
    if d:
        link = system.chip.link_bandwidth * link_efficiency(system, calibration)
        t_up = jnp.maximum(t_up, g_in ** (1.0 / d) * up_bytes / (8.0 * link))
    t_out = out_bytes * slow / bw_out
    lat_up, lat_out = _latencies(system, calibration)
    start_in, start_out = start_up(system, calibration, g, g_in)
    time, up, out = _pipelined(t_up, t_out, all_to_all_steps(system, g_in) * lat_up + start_in,
                               jnp.log2(g_out) * lat_out + start_out)
    return time, up, out, up_bytes, out_bytes


def send_parts(system: System, n, group_size, stride, calibration: Calibration):
    """Point-to-point send between neighbouring members (pipeline stages are adjacent, so a
    send crosses the scale-out network but not a pod boundary)."""
    g, g_in, g_out, _, _ = _groups(system, group_size, stride)
    active = jnp.where(g > 1.0, 1.0, 0.0)
    crosses = jnp.where(g_out > 1.0, 1.0, 0.0)
    up_bytes = active * (1.0 - crosses) * n
    out_bytes = active * crosses * n
    bw_up, bw_out = _bandwidths(system, calibration)
    lat_up, lat_out = _latencies(system, calibration)
    up = (pipelined(up_bytes, bw_up, system, calibration)
          + active * (1.0 - crosses) * lat_up)
    out = out_bytes / bw_out + active * crosses * lat_out
    return up + out, up, out, up_bytes, out_bytes
