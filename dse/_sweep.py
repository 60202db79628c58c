"""`sweep`: evaluate an objective at n points of a `Space`, chunk by chunk, on every device.

How it is fast and bounded:

- One jitted kernel per sweep evaluates a whole chunk: it draws the chunk's points itself from a
  counter-based stream (scrambled Sobol' through a per-chunk XOR of a resident table, a hash, or
  grid digits), maps them to parameter units, builds the designs and evaluates the objective with
  `vmap`, so XLA fuses sampling, model and constraints into one elementwise loop and no point
  array is shipped from the host. The last chunk is padded, so the kernel compiles once.
- The chunk axis is sharded over a 1-D `jax.sharding.Mesh` of every device JAX sees (every
  process's devices under `jax.distributed`); results are identical to one device because every
  point is computed by the same elementwise code from its own index.
- Memory is bounded by the chunk: with `keep="pareto"` only the running front is kept, and the
  kernel already discards points that a staircase table of the current front dominates, and
  points that another point of the same chunk dominates (the chunk-local front, a staircase of
  the chunk's own points); only the survivors' rows are compacted and sent to the host, so the
  host-side merge costs what the front costs, not what the chunk does.
- With `path`, every finished chunk (or, every `checkpoint_s`, the running front) is written
  atomically; a sweep that was interrupted resumes from its last saved chunk and returns what an
  uninterrupted one does (same seed, same chunking, same result). The folder's manifest holds
  the sampling settings and fingerprints of the objective, the base design, the calibration and
  the library version (`_fingerprint.py`): a resume of anything else is an error naming what
  changed, never the old results under a new question.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from . import _distributed as dist
from ._fingerprint import FINGERPRINT_NAMES, sweep_fingerprint
from ._format import REASON_METRIC
from ._pareto import ParetoFront, order_key
from ._space import (
    Space,
    _check_n,
    grid_size,
    grid_unit,
    random_bits,
    sobol_directions,
    sobol_xor,
    to_unit_float,
)
from ._table import SweepResult, atomic_savez
from .optimizers import direction_signs

_FORMAT = 1  # version of the files a sweep writes under `path`


class SweepNaNWarning(RuntimeWarning):
    """Some points of a sweep gave NaN metrics (they are reported, never dropped silently)."""


class SweepInfeasibleWarning(RuntimeWarning):
    """No point of a sweep is feasible: what it returns is flagged (`feasible` False, with its
    `reason` and margins), the closest misses, not an answer."""


def _next_pow2(k: int) -> int:
    return 1 << max(0, (k - 1).bit_length())


def _metric_names(objective, space: Space, dtype) -> list[str]:
    shapes = jax.eval_shape(lambda x: objective(space.build(x)),
                            jax.ShapeDtypeStruct((space.dim,), dtype))
    if not isinstance(shapes, Mapping) or not shapes:
        raise ValueError("objective(design) must return a non-empty dict of named scalar metrics; "
                         f"got {type(shapes).__name__}")
    for name, s in shapes.items():
        if not isinstance(name, str):
            raise ValueError(f"objective metric names must be strings; got {name!r}")
        if getattr(s, "shape", None) != ():
            raise ValueError(f"objective metric {name!r} must be a scalar per design; got "
                             f"shape {getattr(s, 'shape', None)} (of type {type(s).__name__})")
    return list(shapes)


def _check_constraints(constraints, metrics) -> dict[str, tuple[str, float]]:
    out = {}
    for name, spec in dict(constraints or {}).items():
        if name not in metrics:
            raise ValueError(f"constraint on unknown metric {name!r}; metrics are {metrics}")
        if (not isinstance(spec, (tuple, list)) or len(spec) != 2
                or spec[0] not in ("<=", ">=")):
            raise ValueError(f"constraint {name!r} must be ('<=', bound) or ('>=', bound); got "
                             f"{spec!r}")
        bound = float(spec[1])
        if not math.isfinite(bound):
            raise ValueError(f"constraint {name!r}: bound must be finite; got {spec[1]!r}")
        out[name] = (spec[0], bound)
    return out


def _check_directions(directions, metrics, keep) -> dict[str, str]:
    directions = dict(directions or {})
    for name, d in directions.items():
        if name not in metrics:
            raise ValueError(f"direction for unknown metric {name!r}; metrics are {metrics}")
        if d not in ("min", "max"):
            raise ValueError(f"direction of {name!r} must be 'min' or 'max'; got {d!r}")
    if keep == "pareto" and not directions:
        raise ValueError("keep='pareto' needs directions={metric: 'min' | 'max', ...}")
    return directions


def sweep(
    objective: Callable[[Any], Mapping[str, Float[Array, ""]]],
    space: Space,
    n: int,
    *,
    chunk_size: int = 1 << 16,
    method: str = "sobol",
    seed: int = 0,
    directions: Mapping[str, str] | None = None,
    constraints: Mapping[str, tuple] | None = None,
    keep: str = "all",
    path: str | os.PathLike | None = None,
    progress: bool = True,
    callback: Callable[[int, int], None] | None = None,
    checkpoint_s: float = 10.0,
    prefilter_bins: int | None = None,
    max_nan_records: int = 1000,
    devices=None,
) -> SweepResult:
    """Evaluate `objective` at `n` points of `space`; a table, or only its Pareto front.

    **Arguments:**

    - `objective`: `design -> {metric: scalar}`, a pure JAX function of one design (any model,
      `best_plan` inside included); it is vmapped and jitted once.
    - `space`: the `Space` to sample.
    - `n`: number of points (< 2**31).
    - `chunk_size`: points per kernel call, a power of two (memory is bounded by it).
    - `method`: `"sobol"` (scrambled, seeded; point i = `space.sample(n)[i]`), `"random"`
      (counter-based uniform), `"grid"` (n = k**dim) or `"lhs"` (a Latin hypercube per chunk).
    - `seed`: seeds the sample stream; a sweep is deterministic for a seed.
    - `directions`: `{metric: "min" | "max"}`, the objectives of the Pareto front.
    - `constraints`: `{metric: ("<=" | ">=", bound)}`; each adds a column `margin_<metric>`
      (>= 0 when met) and a point is feasible when every margin is >= 0, no metric is NaN and,
      when the objective returns a metric named `"reason"` (the `dse.hardware.Reason` flags of
      its reports, as the objectives of `dse` studies do), that reason is 0. An infeasible point
      is never on the front while a feasible one exists.
    - `keep`: `"all"` (every row) or `"pareto"` (only the front, memory bounded by the chunk).
    - `path`: a folder where chunks (or the running front) are written atomically; rerunning
      the same call resumes from the last finished chunk. Resuming a different sweep (other
      sampling, objective, base design, calibration or library version) is a `ValueError`
      naming what changed; temporary files a killed run left behind are removed.
    - `progress`: a tqdm bar with points/s.
    - `callback`: `callback(chunks_done, points_done)` after each chunk is committed.
    - `checkpoint_s`: with `keep="pareto"` and `path`, the running front is written at most
      this often (and always on exit, Ctrl-C and errors included); a killed process loses
      at most this much work. With `keep="all"` every chunk is written when it finishes.
    - `prefilter_bins`: with `keep="pareto"`, the kernel discards points that the current
      front dominates through a staircase table with this many cells per objective (default:
      about 65536 cells in all); it is exact, the cells only change how many points pass.
    - `max_nan_records`: how many NaN points are listed (all are counted).
    - `devices`: devices to shard over (default: all of `jax.devices()`, every process's).

    Under `jax.distributed` (one call per process, same arguments) the chunk is split over the
    devices of every process and each process gets the whole result. On CPU, set
    `jax.config.update("jax_cpu_collectives_implementation", "gloo")` before initializing.

    **Returns:** `SweepResult` with columns `index`, the parameters, the metrics (in name order,
    as JAX orders dict keys), `margin_<metric>` per constraint and `feasible`; points whose
    metrics are NaN are listed in `nan_index` / `nan_metrics` (and a `SweepNaNWarning` names the
    first ones), never dropped. When no point is feasible, a `SweepInfeasibleWarning` says so:
    the front (`keep="pareto"`, or `.pareto()`) is then of infeasible points, each flagged.
    """
    n = _check_n(n)
    if not isinstance(space, Space):
        raise ValueError(f"space must be a dse.Space; got {type(space).__name__}")
    if keep not in ("all", "pareto"):
        raise ValueError(f"keep must be 'all' or 'pareto'; got {keep!r}")
    if method not in ("sobol", "lhs", "grid", "random"):
        raise ValueError(f"method must be one of ['sobol', 'lhs', 'grid', 'random']; got "
                         f"{method!r}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1 \
            or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two; got {chunk_size!r}")
    mesh = dist.point_mesh(devices)
    ndev = mesh.devices.size
    chunk = max(min(chunk_size, _next_pow2(n)), _next_pow2(ndev))
    if chunk % ndev:
        raise ValueError(f"chunk_size {chunk} must be a multiple of the {ndev} devices; pass "
                         "devices=jax.devices()[:k] with k a power of two")
    grid_k = grid_size(space.dim, n) if method == "grid" else 0
    dtype = jnp.result_type(float)
    metrics = _metric_names(objective, space, dtype)
    directions = _check_directions(directions, metrics, keep)
    constraints = _check_constraints(constraints, metrics)
    margin_names = [f"margin_{c}" for c in constraints]
    clash = set(space.names) & (set(metrics) | set(margin_names) | {"index", "feasible"})
    if clash:
        raise ValueError(f"parameter names {sorted(clash)} clash with metric/table column names")
    n_chunks = -(-n // chunk)
    d = max(len(directions) - 1, 1)
    if prefilter_bins is None:
        # About 64K cells: the table stays in L2 while the gather into it stays cheap.
        prefilter_bins = min(4096, int(65536 ** (1.0 / d) + 1e-9) - 2)
    if isinstance(prefilter_bins, bool) or not isinstance(prefilter_bins, int) \
            or prefilter_bins < 1:
        raise ValueError(f"prefilter_bins must be an integer >= 1; got {prefilter_bins!r}")

    kernel, aux_for, base_arrays = _make_kernel(objective, space, method, seed, chunk, n_chunks,
                                                grid_k, metrics, constraints, directions, keep,
                                                prefilter_bins, mesh, dtype, n=n)

    run = _Run(space=space, n=n, chunk=chunk, metrics=metrics, margin_names=margin_names,
               directions=directions, keep=keep, bins=prefilter_bins,
               max_nan_records=max_nan_records)
    store = None
    if path is not None:
        manifest = {"format": _FORMAT, "n": n, "chunk": chunk, "method": method, "seed": seed,
                    "space": space.describe(), "metrics": metrics,
                    "constraints": {k: list(v) for k, v in constraints.items()},
                    "directions": directions, "keep": keep, "dtype": str(np.dtype(dtype)),
                    "fingerprint": sweep_fingerprint(objective, space.base)}
        store = _Store(Path(path), manifest, checkpoint_s)
        store.load_into(run)
    todo = [c for c in range(n_chunks) if c not in run.done]

    t0 = time.perf_counter()
    compiled = kernel.lower(np.int32(0), aux_for(0), *run.prefilter(), base_arrays).compile()
    compile_s = time.perf_counter() - t0

    from tqdm.auto import tqdm

    bar = tqdm(total=n, initial=run.points_done, unit="pt", unit_scale=True, desc="sweep",
               disable=not progress or jax.process_index() != 0, smoothing=0.1)
    t1 = time.perf_counter()
    try:
        def launch(c):
            return c, compiled(np.int32(c * chunk), aux_for(c), *run.prefilter(), base_arrays)

        full = None
        pending = launch(todo[0]) if todo else None
        for i in range(len(todo)):
            # Dispatch the next chunk before reading this one back, so the device keeps busy
            # while the host merges (the prefilter is a chunk stale: pruning stays exact).
            nxt = launch(todo[i + 1]) if i + 1 < len(todo) else None
            c, outs = pending
            host = [dist.to_host(o) for o in outs]
            if keep == "pareto" and host[5].max() > len(host[4]) // len(host[5]):
                # More survivors than the compacted output holds: rerun the chunk in full.
                if full is None:
                    full = _make_kernel(objective, space, method, seed, chunk, n_chunks,
                                        grid_k, metrics, constraints, directions, keep,
                                        prefilter_bins, mesh, dtype, n=n, compact=False)[0]
                host = [dist.to_host(o) for o in full(np.int32(c * chunk), aux_for(c),
                                                      *run.prefilter(), base_arrays)]
            rows = run.absorb(c, host)
            if store is not None:
                store.commit(run, c, rows)
            bar.update(min(chunk, n - c * chunk))
            if callback is not None:
                callback(len(run.done), run.points_done)
            pending = nxt
        if store is not None:
            store.commit(run, None, None, force=True)
    except BaseException:
        # Ctrl-C or an error: save the front of every finished chunk before leaving.
        if store is not None:
            store.commit(run, None, None, force=True)
        raise
    finally:
        bar.close()
    run_s = time.perf_counter() - t1
    result = run.result(compile_s=compile_s, run_s=run_s)
    if len(result) and not np.any(result.feasible):
        warnings.warn(SweepInfeasibleWarning(
            f"none of the {n} points is feasible (every one breaks a constraint, is flagged by "
            f"the objective's reason or gave NaN); the {len(result)} rows returned are "
            "infeasible, each flagged with feasible=False"), stacklevel=2)
    if result.nan_count:
        shown = zip(result.nan_index[:5], result.nan_metrics[:5], strict=True)
        first = ", ".join(f"point {i} ({', '.join(m)})" for i, m in shown)
        warnings.warn(SweepNaNWarning(
            f"{result.nan_count} of {n} points gave NaN metrics (marked infeasible, kept out of "
            f"the front); first: {first}; all listed in result.nan_index / nan_metrics"),
            stacklevel=2)
    return result


def _make_kernel(objective, space, method, seed, chunk, n_chunks, grid_k, metrics, constraints,
                 directions, keep, bins, mesh, dtype, n=None, compact=True):
    """The jitted chunk kernel and the host function giving its per-chunk input.

    With keep="pareto" and `compact`, the kernel sends only the points that survive its
    filters: per device, the first `chunk / devices / 8` survivors' rows, their positions in the
    chunk and the survivor count (`_Run.absorb`); when a count exceeds that room the sweep
    reruns the chunk with `compact=False` (every row and a keep mask).
    """
    n = n_chunks * chunk if n is None else n
    ndev = mesh.devices.size
    room = max(1, chunk // ndev // 8)
    dim = space.dim
    # Python floats: a weakly typed factor keeps the kernel's dtype.
    sign = {k: float(s) for k, s in zip(directions, direction_signs(list(directions.values()),
                                                                   len(directions)), strict=True)}

    if method == "sobol":
        directions_int, shift = sobol_directions(dim, seed)
        bits = chunk.bit_length() - 1
        r = np.arange(chunk, dtype=np.uint32)
        # gray(c*chunk + r) = gray(c*chunk) ^ gray(r) (disjoint bits), so one resident table of
        # the low bits plus one [dim] XOR per chunk gives every point.
        table = dist.put_sharded(sobol_xor(directions_int, r ^ (r >> 1), np, bits=bits), mesh)

        starts = np.arange(n_chunks, dtype=np.uint32) * np.uint32(chunk)
        highs = (sobol_xor(directions_int, starts ^ (starts >> 1), np) ^ shift[:, None]).T.copy()

        def aux_for(c):
            return (table, highs[c])
    elif method == "lhs":
        from scipy.stats import qmc

        def aux_for(c):
            rng = np.random.default_rng([seed, c])
            u = qmc.LatinHypercube(dim, seed=rng).random(chunk).T.astype(np.dtype(dtype))
            return (dist.put_sharded(np.ascontiguousarray(u), mesh),)
    else:
        def aux_for(c):
            return ()

    # The base design's arrays are an argument, not constants of the program: spaces over
    # different base designs of one structure (the steps of a roadmap, a study's variants) then
    # lower to the same program, which the persistent compilation cache loads instead of
    # compiling again.
    base_arrays, base_static = eqx.partition(space.base, eqx.is_array)

    def kernel(start, aux, low, scale, table, front_feasible, base_arrays):
        base = eqx.combine(base_arrays, base_static)
        index = start + jax.lax.iota(jnp.int32, chunk)
        if method == "sobol":
            low_bits, high = aux
            u = to_unit_float(low_bits ^ high[:, None], jnp, dtype)
        elif method == "random":
            u = to_unit_float(random_bits(index.astype(jnp.uint32), dim, seed, jnp), jnp, dtype)
        elif method == "grid":
            u = grid_unit(index, dim, grid_k, jnp, dtype)
        else:
            (u,) = aux
        xs = space.box.draw(u.T)  # [chunk, dim]: the map of space.sample on the host
        out = jax.vmap(lambda xi: objective(space.build(xi, base=base)))(xs)
        m = jnp.stack([jnp.asarray(out[k]).astype(dtype) for k in metrics])
        nan = jnp.isnan(m).any(axis=0)
        margins = [(bound - out[k] if op == "<=" else out[k] - bound).astype(dtype)
                   for k, (op, bound) in constraints.items()]
        g = jnp.stack(margins) if margins else jnp.zeros((0, chunk), dtype)
        feasible = ~nan
        if REASON_METRIC in out:
            feasible = feasible & (jnp.asarray(out[REASON_METRIC]) == 0)
        for mg in margins:
            feasible = feasible & (mg >= 0)
        x = xs.T.astype(dtype)
        if keep != "pareto":
            return x, m, g, feasible
        # Materialize the metrics once: without the barrier XLA fuses the whole model into each
        # consumer of the table lookup below and evaluates it several times per point.
        m, feasible, nan = jax.lax.optimization_barrier((m, feasible, nan))
        obj = jnp.stack([sign[k] * m[metrics.index(k)] for k in directions])
        size = bins + 2
        cell = jnp.zeros(chunk, jnp.int32)
        for j in range(obj.shape[0] - 1):
            c = jnp.floor((order_key(obj[j], jnp) - low[j]) * scale[j])
            cell = cell * size + jnp.clip(c, 0.0, float(size - 1)).astype(jnp.int32)
        beaten = obj[-1] > table[cell]
        dominated = jnp.where(feasible == front_feasible, beaten, front_feasible & ~feasible)
        real = index < n  # the padding of the last chunk must not dominate a real point
        dominated = dominated | _chunk_dominated(obj, feasible & ~nan & real, ~nan & real, bins)
        keep_mask = (~dominated | nan) & real
        if not compact:
            return x, m, g, feasible, keep_mask
        per = chunk // ndev
        blocks = keep_mask.reshape(ndev, per)
        count = blocks.sum(axis=1, dtype=jnp.int32)
        pos = jax.vmap(lambda b: jnp.nonzero(b, size=room, fill_value=0)[0])(blocks)
        at = (pos + per * jnp.arange(ndev, dtype=pos.dtype)[:, None]).reshape(-1).astype(
            jnp.int32)
        return x[:, at], m[:, at], g[:, at], feasible[at], at, count

    rep = dist.replicated(mesh)
    aux_sh = {"sobol": (dist.sharded(mesh, 2), rep), "lhs": (dist.sharded(mesh, 2),)}
    outs = (dist.sharded(mesh, 2),) * 3 + (dist.sharded(mesh, 1),) * (
        1 if keep != "pareto" else 3 if compact else 2)
    jitted = jax.jit(kernel,
                     in_shardings=(rep, aux_sh.get(method, ()), rep, rep, rep, rep, rep),
                     out_shardings=outs)
    return jitted, aux_for, dist.put_replicated(base_arrays, mesh)


def _chunk_dominated(obj, feasible, valid, bins: int):
    """True where another point of the same chunk dominates the point (exact, conservative).

    The chunk-local front on the device: the staircase of `ParetoFront.dominance_table` built
    from the chunk's own points inside the kernel. Cells are cut over the chunk's own range of
    `order_key` per objective but the last; a point `a` is entered at `cell(a) + 1` (a
    scatter-min of its last objective), the table is the prefix minimum along every axis, and
    `p` is dominated when `p[-1] > table[cell(p)]`: some `a` has `cell(a) < cell(p)`, hence
    `a < p`, on every binned axis and `a[-1] < p[-1]`. "Feasible first": when the chunk has a
    feasible point, only feasible points enter and every infeasible one is dominated. Points
    with NaN (`~valid`) neither enter nor are judged here.

    **Arguments:** `obj` [m, chunk] (smaller is better), `feasible`, `valid` bool [chunk],
    `bins` cells per axis. **Returns:** bool [chunk].
    """
    d = obj.shape[0] - 1
    any_feasible = jnp.any(feasible)
    enters = jnp.where(any_feasible, feasible, valid)
    if d == 0:
        best = jnp.min(jnp.where(enters, obj[0], jnp.inf))
        dominated = obj[0] > best
    else:
        size = bins + 2
        cell_in = jnp.zeros(obj.shape[1], jnp.int32)
        cell_at = jnp.zeros(obj.shape[1], jnp.int32)
        inside = enters
        for j in range(d):
            key = order_key(obj[j], jnp)
            lo = jnp.min(jnp.where(enters, key, jnp.inf))
            hi = jnp.max(jnp.where(enters, key, -jnp.inf))
            scale = jnp.where(hi > lo, bins / jnp.where(hi > lo, hi - lo, 1.0), 1.0)
            c = jnp.floor((key - jnp.where(jnp.isfinite(lo), lo, 0.0)) * scale)
            inside = inside & (c <= bins)
            cell_in = cell_in * size + (jnp.clip(c, 0.0, float(bins)).astype(jnp.int32) + 1)
            cell_at = cell_at * size + jnp.clip(c, 0.0, float(size - 1)).astype(jnp.int32)
        table = jnp.full(size ** d, jnp.inf, obj.dtype).at[
            jnp.where(inside, cell_in, size ** d)].min(obj[-1], mode="drop")
        table = table.reshape((size,) * d)
        for axis in range(d):
            table = _prefix_min(table, axis)
        dominated = obj[-1] > table.reshape(-1)[cell_at]
    dominated = jnp.where(feasible, dominated, any_feasible | dominated)
    return dominated & valid


def _prefix_min(table, axis: int):
    """Running minimum of `table` along `axis` (`lax.cummin`, the same values).

    On a table of two or more axes a sequential scan over `axis`, each step a whole slice,
    runs 3-4x faster on CPU than `lax.cummin`'s associative scan (measured on the chunk
    tables: 256 x 256, 0.61 -> 0.19 ms for both axes; 40^3, 0.98 -> 0.26 ms), whose strided
    slices XLA does not vectorize; a 1-D table has no slice to vectorize over and keeps it.
    """
    if table.ndim < 2:
        return jax.lax.cummin(table, axis=axis)
    rows = jnp.moveaxis(table, axis, 0)
    _, out = jax.lax.scan(lambda low, row: (jnp.minimum(low, row),) * 2,
                          jnp.full(rows.shape[1:], jnp.inf, rows.dtype), rows)
    return jnp.moveaxis(out, 0, axis)


def _prefaulted_empty(n: int, dtype) -> np.ndarray:
    """`np.empty(n, dtype)` with its pages mapped up front (Linux `MAP_POPULATE`).

    Filling a fresh table takes one page fault per 4 KiB page; in sandboxed kernels (gVisor) a
    fault costs tens of microseconds, which made first-touch dominate `keep="all"` sweeps
    (3 s per 400 MB measured, against 0.3 s populated in one call).
    """
    import mmap

    dtype = np.dtype(dtype)
    flags = getattr(mmap, "MAP_POPULATE", 0)
    nbytes = n * dtype.itemsize
    if not flags or nbytes < 1 << 20:
        return np.empty(n, dtype)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    return np.frombuffer(buf, dtype=dtype)


class _Run:
    """Host-side state of one sweep: finished chunks, the table or the front, NaN records."""

    def __init__(self, *, space, n, chunk, metrics, margin_names, directions, keep, bins,
                 max_nan_records):
        self.space, self.n, self.chunk = space, n, chunk
        self.metrics, self.margin_names = metrics, margin_names
        self.directions, self.keep = directions, keep
        self.max_nan_records = max_nan_records
        self.bins = bins
        self.done: set[int] = set()
        self.points_done = 0
        self.nan_count = 0
        self.nan_index: list[np.ndarray] = []
        self.nan_mask: list[np.ndarray] = []
        self.objectives = list(directions)
        self.dtype = np.dtype(jnp.result_type(float))
        self._no_prefilter = (np.zeros(0, np.float32), np.zeros(0, np.float32),
                              np.zeros(1, self.dtype), np.False_)
        self.carried = ["index", *space.names,
                        *[k for k in metrics if k not in directions], *margin_names, "feasible"]
        if keep == "all":
            self.table: dict[str, np.ndarray] | None = None
        else:
            self.front = ParetoFront([directions[k] for k in self.objectives],
                                     columns=self.carried)

    def prefilter(self):
        """The kernel's inputs for discarding dominated points (dummies with keep='all')."""
        if self.keep != "pareto":
            return self._no_prefilter
        return self.front.dominance_table(self.bins, self.dtype)

    def _record_nan(self, index, nan_rows):
        if not len(index):
            return
        self.nan_count += len(index)
        room = self.max_nan_records - sum(len(i) for i in self.nan_index)
        if room > 0:
            self.nan_index.append(index[:room].astype(np.int64))
            self.nan_mask.append(nan_rows[:room])

    def absorb(self, c, outs) -> dict[str, np.ndarray]:
        """Merge chunk c's kernel outputs; return the rows to persist."""
        valid = min(self.chunk, self.n - c * self.chunk)
        if len(outs) < 6:
            x, m, g, feasible = (o[..., :valid] for o in outs[:4])
            index = np.arange(c * self.chunk, c * self.chunk + valid, dtype=np.int64)
        if self.keep == "pareto" and len(outs) == 6:
            # Compacted: per device, `room` rows of which the first `count` are survivors.
            at, count = outs[4], outs[5]
            room = len(at) // len(count)
            sel = np.concatenate([np.arange(b * room, b * room + k) for b, k in
                                  enumerate(count)]).astype(np.int64)
            x, m, g, feasible = (o[..., sel] for o in outs[:4])
            index = c * self.chunk + at[sel].astype(np.int64)
        elif self.keep == "pareto":
            keep = np.flatnonzero(outs[4][:valid])
            x, m, g, feasible, index = x[:, keep], m[:, keep], g[:, keep], feasible[keep], \
                index[keep]
        nan_rows = np.isnan(m).T
        nan_pts = np.flatnonzero(nan_rows.any(axis=1))
        rows = {"index": index, **{p: x[j] for j, p in enumerate(self.space.names)},
                **{k: m[i] for i, k in enumerate(self.metrics)},
                **{k: g[i] for i, k in enumerate(self.margin_names)}, "feasible": feasible,
                "nan_index": index[nan_pts], "nan_mask": nan_rows[nan_pts]}
        self._merge(c, rows, seen=valid)
        return rows

    def _merge(self, c, rows, seen):
        self._record_nan(rows["nan_index"], rows["nan_mask"])
        if self.keep == "all":
            if self.table is None:
                self.table = {k: _prefaulted_empty(self.n, rows[k].dtype) for k in self.columns()}
            lo = c * self.chunk
            for k in self.columns():
                self.table[k][lo:lo + len(rows["index"])] = rows[k]
        else:
            values = np.stack([rows[k] for k in self.objectives], axis=1)
            self.front.update(values, rows["feasible"],
                              {k: rows[k] for k in self.carried}, seen=seen)
        self.done.add(c)
        self.points_done += seen

    def columns(self) -> list[str]:
        return ["index", *self.space.names, *self.metrics, *self.margin_names, "feasible"]

    def state(self) -> dict[str, np.ndarray]:
        """The running front (keep='pareto') and the chunks it holds, to persist."""
        values, feasible, columns = self.front.snapshot()
        arrays = {f"front:{k}": v for k, v in columns.items()}
        arrays.update({"front_values": values, "front_feasible": feasible,
                       "done": np.array(sorted(self.done), np.int64),
                       "points_done": np.array(self.points_done),
                       "nan_count": np.array(self.nan_count)})
        arrays.update(self._nan_arrays())
        return arrays

    def _nan_arrays(self):
        idx = np.concatenate(self.nan_index) if self.nan_index else np.zeros(0, np.int64)
        mask = np.concatenate(self.nan_mask) if self.nan_mask else \
            np.zeros((0, len(self.metrics)), bool)
        return {"nan_index": idx, "nan_mask": mask}

    def result(self, *, compile_s, run_s) -> SweepResult:
        dtype = np.dtype(jnp.result_type(float))
        if self.keep == "all":
            columns = self.table if self.table is not None else {}
        else:
            f = self.front
            order = np.argsort(f.columns["index"], kind="stable")
            columns = {}
            for k in self.columns():
                if k in self.objectives:
                    v = f.values[:, self.objectives.index(k)]
                else:
                    v = f.columns[k]
                v = v[order]
                if k == "index":
                    v = v.astype(np.int64)
                elif k == "feasible":
                    v = v.astype(bool)
                else:
                    v = v.astype(dtype)
                columns[k] = v
        nan = self._nan_arrays()
        order = np.argsort(nan["nan_index"], kind="stable")
        names = [tuple(k for k, bad in zip(self.metrics, row, strict=True) if bad)
                 for row in nan["nan_mask"][order]]
        return SweepResult(columns, params=self.space.names, metrics=self.metrics,
                           constraints=self.margin_names, directions=self.directions,
                           keep=self.keep, n_points=self.n, nan_count=self.nan_count,
                           nan_index=nan["nan_index"][order], nan_metrics=names,
                           compile_s=compile_s, run_s=run_s)


class _Store:
    """Atomic chunk files (keep='all') or front snapshots (keep='pareto') under one folder."""

    def __init__(self, root: Path, manifest: dict, checkpoint_s: float):
        self.root = root
        self.writer = jax.process_index() == 0
        self.checkpoint_s = checkpoint_s
        self.last_write = -math.inf
        root.mkdir(parents=True, exist_ok=True)
        if self.writer:
            # A run killed mid-write leaves its temporary file (atomic_savez); nothing reads it.
            for stray in root.glob(".*.tmp.*"):
                stray.unlink(missing_ok=True)
        self.manifest_path = root / "manifest.json"
        text = json.dumps(manifest, sort_keys=True)
        if self.manifest_path.exists():
            old = json.loads(self.manifest_path.read_text())
            new = json.loads(text)
            if old != new:
                raise ValueError(f"{root} holds a different sweep (differs in "
                                 f"{_differences(old, new)}); use another path, or delete it "
                                 "to start again")
        elif self.writer:
            tmp = root / f".manifest.json.tmp.{os.getpid()}"
            tmp.write_text(text)
            os.replace(tmp, self.manifest_path)

    def _chunk_path(self, c: int) -> Path:
        return self.root / f"chunk_{c:09d}.npz"

    def load_into(self, run: _Run) -> None:
        if run.keep == "pareto":
            state = self.root / "front.npz"
            if not state.exists():
                return
            with np.load(state) as s:
                f = run.front
                f.set_state(s["front_values"], s["front_feasible"],
                            {k: s[f"front:{k}"] for k in f.column_names}, int(s["points_done"]))
                run.done = set(int(c) for c in s["done"])
                run.points_done = int(s["points_done"])
                run.nan_count = int(s["nan_count"])
                run.nan_index = [s["nan_index"]]
                run.nan_mask = [s["nan_mask"]]
            return
        for c in range(-(-run.n // run.chunk)):
            p = self._chunk_path(c)
            if p.exists():
                with np.load(p) as z:
                    rows = {k: z[k] for k in z.files}
                run._merge(c, rows, seen=len(rows["index"]))

    def commit(self, run: _Run, c: int | None, rows: dict[str, np.ndarray] | None,
               force: bool = False) -> None:
        """Persist chunk c (keep='all'), or the front when `checkpoint_s` has passed / forced."""
        if not self.writer:
            return
        if run.keep == "all":
            if c is not None:
                atomic_savez(self._chunk_path(c), **rows)
        elif force or time.monotonic() - self.last_write >= self.checkpoint_s:
            atomic_savez(self.root / "front.npz", **run.state())
            self.last_write = time.monotonic()


def _differences(old: dict, new: dict) -> list[str]:
    """What differs between two sweep manifests, in words (fingerprints by what they stand for,
    the library with both versions)."""
    out = [k for k in sorted(set(old) | set(new))
           if k != "fingerprint" and old.get(k) != new.get(k)]
    was, now = old.get("fingerprint") or {}, new.get("fingerprint") or {}
    for key, words in FINGERPRINT_NAMES.items():
        if was.get(key) != now.get(key):
            out.append(f"{words}: was {was.get(key)}, now {now.get(key)}" if key == "library"
                       else words)
    return out
