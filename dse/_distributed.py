"""Multi-device and multi-host plumbing for `dse.sweep`: the point mesh and host gathers."""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

POINTS = "points"


def point_mesh(devices=None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process) on the point axis."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.array(devices), (POINTS,))


def sharded(mesh: Mesh, ndim: int) -> NamedSharding:
    """Sharding of a [..., points] array: the last axis split over the mesh."""
    return NamedSharding(mesh, P(*([None] * (ndim - 1)), POINTS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array."""
    return NamedSharding(mesh, P())


def put_sharded(host: np.ndarray, mesh: Mesh) -> jax.Array:
    """A global array from a host array that every process holds in full (multi-host safe)."""
    sharding = sharded(mesh, host.ndim)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def put_replicated(tree, mesh: Mesh):
    """`tree` with every array leaf a global array that each device holds whole (every process
    holds the same values, as with a design every process built alike)."""
    sharding = replicated(mesh)

    def put(leaf):
        host = np.asarray(leaf)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree_util.tree_map(put, tree)


def to_host(array: jax.Array) -> np.ndarray:
    """The whole global array on this host (an all-gather across processes when there are
    several; on one process, a plain device-to-host copy)."""
    if jax.process_count() > 1:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)
