"""Pareto filters against a brute-force O(n^2) reference; hypervolume; knee point."""

import itertools

import moocore
import numpy as np
import pytest

from dse import ParetoFront, hypervolume, knee_point, pareto_mask
from dse._pareto import order_key


def brute_force_mask(values, directions, feasible=None):
    """Reference: a point is on the front iff no other valid point dominates it."""
    x = np.asarray(values, float) * np.array([1 if d == "min" else -1 for d in directions])
    n = len(x)
    valid = ~np.isnan(x).any(axis=1)
    if feasible is not None and (valid & feasible).any():
        valid &= feasible
    out = np.zeros(n, bool)
    for i in range(n):
        if not valid[i]:
            continue
        out[i] = not any(valid[j] and np.all(x[j] <= x[i]) and np.any(x[j] < x[i])
                         for j in range(n) if j != i)
    return out


def random_values(rng, n, m, duplicates=True, nans=True):
    # Integer-valued points produce ties and exact duplicates, the hard cases.
    x = rng.integers(0, 12, (n, m)).astype(float) if duplicates else rng.random((n, m))
    if nans:
        x[rng.random(n) < 0.05, rng.integers(0, m)] = np.nan
    return x


@pytest.mark.parametrize("m", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pareto_mask_equals_brute_force(m, seed):
    rng = np.random.default_rng(seed)
    x = random_values(rng, 150, m, duplicates=seed != 2)
    directions = [rng.choice(["min", "max"]) for _ in range(m)]
    feasible = rng.random(150) < 0.7
    np.testing.assert_array_equal(pareto_mask(x, directions), brute_force_mask(x, directions))
    np.testing.assert_array_equal(pareto_mask(x, directions, feasible),
                                  brute_force_mask(x, directions, feasible))


def test_feasible_first_and_all_infeasible():
    x = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.5], [0.5, 2.0]])
    feasible = np.array([False, True, True, False])
    np.testing.assert_array_equal(pareto_mask(x, "min", feasible), [False, True, True, False])
    # No feasible point: the least-bad designs are still shown (front of all points).
    np.testing.assert_array_equal(pareto_mask(x, "min", np.zeros(4, bool)),
                                  [True, False, False, False])


def test_duplicates_are_all_kept_and_nan_never():
    x = np.array([[1.0, 1.0], [1.0, 1.0], [0.0, np.nan], [2.0, 2.0]])
    np.testing.assert_array_equal(pareto_mask(x), [True, True, False, False])


def test_bad_directions_raise():
    with pytest.raises(ValueError, match="one of 'min'/'max' per objective"):
        pareto_mask(np.zeros((3, 2)), ["min"])
    with pytest.raises(ValueError, match="'min' or 'max'"):
        pareto_mask(np.zeros((3, 2)), ["min", "up"])


@pytest.mark.parametrize("m", [2, 3])
def test_streaming_front_equals_brute_force_whatever_the_chunking(m):
    rng = np.random.default_rng(m)
    x = random_values(rng, 400, m)
    feasible = rng.random(400) < 0.8
    directions = ["min", "max", "min"][:m]
    front = ParetoFront(directions, columns=["index"])
    start = 0
    while start < 400:
        stop = min(400, start + int(rng.integers(1, 60)))
        front.update(x[start:stop], feasible[start:stop],
                     {"index": np.arange(start, stop)})
        start = stop
    ref = np.flatnonzero(brute_force_mask(x, directions, feasible))
    np.testing.assert_array_equal(np.sort(front.columns["index"]).astype(int), ref)
    assert front.seen == 400 and len(front) == len(ref)


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_dominance_table_never_discards_a_non_dominated_point(m):
    """The kernel's prefilter, replayed in numpy: a discarded point is truly dominated."""
    rng = np.random.default_rng(10 + m)
    directions = ["min", "max", "min", "max"][:m]
    scale = np.array([1.0, -3.0, 1e6, 1e-3])[:m]
    front_src = rng.random((300, m)) * scale
    front_src[rng.random(300) < 0.05, 0] = np.inf * (1 if directions[0] == "min" else -1)
    front = ParetoFront(directions)
    front.update(front_src)
    for bins in (1, 3, 40):
        low, scale_, table, ff = front.dominance_table(bins, np.float32)
        assert bool(ff)
        pts = (rng.random((3000, m)) * scale).astype(np.float32).astype(float)
        obj = pts * np.array([1 if d == "min" else -1 for d in directions])
        cell = np.zeros(len(pts), np.int64)
        for j in range(m - 1):
            c = np.floor((order_key(obj[:, j], np) - low[j]) * scale_[j])
            cell = cell * (bins + 2) + np.clip(c, 0, bins + 1).astype(np.int64)
        beaten = obj[:, -1] > table[cell]
        fx = front.values * np.array([1 if d == "min" else -1 for d in directions])
        for i in np.flatnonzero(beaten)[:300]:
            assert np.any(np.all(fx <= obj[i], axis=1) & np.any(fx < obj[i], axis=1))
        if bins == 40 and m > 1:
            truly = np.array([np.any(np.all(fx <= o, axis=1) & np.any(fx < o, axis=1))
                              for o in obj])
            assert beaten.sum() > 0.5 * truly.sum()  # it does prune most of what it may


def test_order_key_is_monotone_across_signs_and_infinities():
    v = np.array([-np.inf, -1e30, -2.0, -1e-30, -0.0, 0.0, 1e-30, 3.0, 1e30, np.inf])
    k = order_key(v, np)
    assert np.all(np.diff(k) >= 0) and k[0] < k[3] < k[6] < k[-1]


def test_hypervolume_2d_by_hand_and_directions():
    pts = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.5, 3.5], [5.0, 0.0]])
    # Staircase of the first three below (4, 4): 1*3 + 1*2 + 1*1 = 6 (the 4th is dominated,
    # the 5th does not dominate the reference).
    assert hypervolume(pts, [4.0, 4.0]) == pytest.approx(6.0)
    assert hypervolume(pts * [1, -1], [4.0, -4.0], ["min", "max"]) == pytest.approx(6.0)
    assert hypervolume(np.array([[5.0, 5.0]]), [4.0, 4.0]) == 0.0


def unit_cube_count(pts, ref):
    """Brute force on an integer lattice: count unit cells dominated by some point."""
    axes = [np.arange(0, r) + 0.5 for r in ref]
    cells = np.array(list(itertools.product(*axes)))
    dominated = np.zeros(len(cells), bool)
    for p in pts:
        dominated |= np.all(cells >= p, axis=1)
    return dominated.sum()


@pytest.mark.parametrize("m", [2, 3])
def test_hypervolume_exact_against_lattice_count_and_moocore(m):
    rng = np.random.default_rng(m)
    pts = rng.integers(0, 8, (40, m)).astype(float)
    ref = np.full(m, 8.0)
    assert hypervolume(pts, ref) == pytest.approx(unit_cube_count(pts, ref.astype(int)))
    cont = rng.random((200, m))
    assert hypervolume(cont, np.ones(m) * 1.1) == pytest.approx(
        moocore.hypervolume(cont, ref=np.ones(m) * 1.1), rel=1e-12)


def test_hypervolume_four_objectives_uses_exact_algorithm():
    rng = np.random.default_rng(4)
    pts = rng.integers(0, 5, (25, 4)).astype(float)
    assert hypervolume(pts, np.full(4, 5.0)) == pytest.approx(unit_cube_count(pts, [5] * 4))


def test_knee_point():
    front = np.array([[0.0, 1.0], [0.1, 0.5], [0.5, 0.2], [1.0, 0.0]])
    assert knee_point(front) == 1  # normalized sums: 1, 0.6, 0.7, 1
    assert knee_point(front * [1, -1], ["min", "max"]) == 1
    with_dominated = np.vstack([front, [[0.05, 0.45]], [[2.0, 2.0]]])
    assert knee_point(with_dominated) == 4


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_chunk_front_on_device_keeps_the_exact_front(m):
    """The in-kernel chunk filter: survivors hold the whole front (ties, duplicates, NaN,
    infeasible points included) and it discards most dominated points."""
    import jax
    import jax.numpy as jnp

    from dse._sweep import _chunk_dominated

    rng = np.random.default_rng(m)
    n = 2000
    x = rng.integers(0, 12, size=(n, m)).astype(np.float32)  # many ties and duplicates
    x[:50] = x[50:100]  # exact duplicates
    x[100:110, 0] = np.nan
    feasible = rng.random(n) < 0.8
    valid = ~np.isnan(x).any(axis=1)
    dominated = np.asarray(jax.jit(_chunk_dominated, static_argnums=3)(
        jnp.asarray(x.T), jnp.asarray(feasible & valid), jnp.asarray(valid), 16))
    front = brute_force_mask(x, ["min"] * m, feasible)
    assert not (dominated & front).any()
    assert not dominated[~valid].any()  # NaN rows are left to the host, which reports them
    survivors = ~dominated & valid
    assert dominated[valid & ~feasible].all()  # feasible first
    kept = np.zeros(n, bool)
    kept[np.flatnonzero(survivors)] = pareto_mask(x[survivors], "min", feasible[survivors])
    np.testing.assert_array_equal(kept, front)
    # Most dominated points go (70-100% here); the cells coarsen with each objective (16 bins
    # per axis), so with four objectives a quarter of the chunk still passes to the host.
    beaten = valid & ~front
    assert (dominated & beaten).sum() > 0.5 * beaten.sum()
    if m <= 3:
        assert survivors.sum() < 0.25 * n
