"""Derivative-free baselines on the unit cube: random / Sobol search and NSGA-II (pymoo).

They solve the same problem as the gradient search, through the same model, so that a race
between them is honest: a batched `fun(u [n, dim]) -> (f [n, m], g [n, k])` on the unit cube
[0, 1]^dim (the caller maps the cube to its parameters and rounds its integer knobs), all
objectives minimized, feasible where every g_j <= 0. Every evaluated point is returned in the
order it was evaluated, so that a caller can trace quality against evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import numpy as np
from jaxtyping import Float, Int

from ._multiobjective import sobol_unit

BatchFun = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class SearchResult(eqx.Module):
    """Every point a baseline evaluated, in evaluation order.

    **Fields:**

    - `u`: points in the unit cube, `[n, dim]`.
    - `objectives`: `[n, m]` (minimized); `constraints`: `[n, k]` (feasible where <= 0).
    - `generation`: batch index in which each point was evaluated, `[n]` (0 for one batch).
    """

    u: Float[np.ndarray, "n dim"]
    objectives: Float[np.ndarray, "n m"]
    constraints: Float[np.ndarray, "n k"]
    generation: Int[np.ndarray, " n"]

    @property
    def feasible(self) -> np.ndarray:
        """Points whose objectives are finite and whose constraints all hold, `[n]`."""
        ok = np.all(np.isfinite(self.objectives), axis=1)
        if self.constraints.shape[1]:
            ok &= np.all(self.constraints <= 0, axis=1)
        return ok


def _evaluate(fun: BatchFun, u: np.ndarray):
    f, g = fun(u)
    f = np.asarray(f, dtype=np.float64).reshape(u.shape[0], -1)
    g = np.asarray(g, dtype=np.float64).reshape(u.shape[0], -1)
    return f, g


def random_search(
    fun: BatchFun,
    dim: int,
    n: int,
    *,
    method: str = "sobol",
    seed: int = 0,
    batch_size: int = 65536,
) -> SearchResult:
    """Evaluate `n` points of the unit cube: scrambled Sobol ("sobol") or i.i.d. ("uniform").

    **Arguments:**

    - `fun`: batched `u [b, dim] -> (f [b, m], g [b, k])`.
    - `dim`: number of parameters; `n`: number of points.
    - `method`: "sobol" or "uniform"; `seed`: random seed.
    - `batch_size`: points per call of `fun` (bounds memory).

    **Returns:** a `SearchResult` with `generation` = batch index.
    """
    if method not in ("sobol", "uniform"):
        raise ValueError(f"method must be 'sobol' or 'uniform'; got {method!r}")
    if n < 1 or dim < 1 or batch_size < 1:
        raise ValueError(f"n, dim and batch_size must be >= 1; got {n}, {dim}, {batch_size}")
    if method == "sobol":
        u = sobol_unit(n, dim, seed=seed)
    else:
        u = np.random.default_rng(seed).random((n, dim))
    fs, gs, gens = [], [], []
    for b, start in enumerate(range(0, n, batch_size)):
        f, g = _evaluate(fun, u[start:start + batch_size])
        fs.append(f)
        gs.append(g)
        gens.append(np.full(f.shape[0], b))
    return SearchResult(u=u, objectives=np.concatenate(fs), constraints=np.concatenate(gs),
                        generation=np.concatenate(gens))


def nsga2(
    fun: BatchFun,
    dim: int,
    *,
    pop_size: int = 100,
    n_generations: int = 100,
    seed: int = 0,
) -> SearchResult:
    """NSGA-II (Deb et al., IEEE TEVC 6(2), 2002) through pymoo, with its default operators
    (SBX crossover, polynomial mutation, constraint-domination for g <= 0).

    **Arguments:**

    - `fun`: batched `u [b, dim] -> (f [b, m], g [b, k])`; called once per generation.
    - `dim`: number of parameters.
    - `pop_size`: population (and offspring) size; `n_generations`: generations.
    - `seed`: random seed (pymoo is deterministic for a seed).

    **Returns:** a `SearchResult` of every evaluated point, `generation` = generation index.
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.config import Config
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize

    Config.warnings["not_compiled"] = False
    probe_f, probe_g = _evaluate(fun, np.full((1, dim), 0.5))
    n_obj, n_con = probe_f.shape[1], probe_g.shape[1]
    # The probe that sizes the problem is an evaluation too: it is recorded and counted.
    record: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = [
        (np.full((1, dim), 0.5), probe_f, probe_g)
    ]

    class _Problem(Problem):
        def __init__(self):
            super().__init__(n_var=dim, n_obj=n_obj, n_ieq_constr=n_con, xl=0.0, xu=1.0)

        def _evaluate(self, x, out, *args, **kwargs):
            f, g = _evaluate(fun, np.asarray(x))
            record.append((np.array(x), f, g))
            # A non-finite objective is a failed design: worst possible, never selected.
            out["F"] = np.where(np.isfinite(f), f, 1e300)
            if n_con:
                out["G"] = np.where(np.isfinite(g), g, 1e300)

    minimize(_Problem(), NSGA2(pop_size=pop_size), ("n_gen", int(n_generations)), seed=seed,
             verbose=False)
    return SearchResult(
        u=np.concatenate([r[0] for r in record]),
        objectives=np.concatenate([r[1] for r in record]),
        constraints=np.concatenate([r[2] for r in record]),
        generation=np.concatenate([np.full(r[1].shape[0], i) for i, r in enumerate(record)]),
    )
