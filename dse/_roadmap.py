"""`roadmap`: one workload on a chip re-targeted across process nodes and memory generations.

Each step of a roadmap moves the chip to a node and an HBM generation. The re-targeted chip keeps
its architecture (MAC units, clock, SRAM, links, the number of HBM stacks); the node changes its
area, power and cost through `dse.hardware.technology`, and the new memory generation gives each
stack its bandwidth and capacity. With a design space and budgets, every step is also
re-optimized (a Sobol sweep of the space around the re-targeted chip, best feasible design), so
the roadmap shows how the optimum design moves. At each step `dse.sensitivity` names the binding
resource, before and after re-optimization. Steps whose node lies outside the published
technology data are flagged with the quantities that were extrapolated
(`dse.hardware.extrapolated_quantities`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from dse.hardware import Chip, extrapolated_quantities, hbm_stacks, technology

from ._sensitivity import sensitivity
from ._space import Param, Space
from ._sweep import sweep

# N7 -> N5 -> N3 -> N2 paired with HBM2e -> HBM3 -> HBM3e -> HBM4: the nodes and memory
# generations of successive data-centre accelerator generations (A100: N7 + HBM2e; H100: 4N (N5
# family) + HBM3; H200/B200: HBM3e, chips.csv; HBM4 per JEDEC JESD270-4, 2025).
ROADMAP_STEPS: tuple[tuple[float, str], ...] = (
    (7.0, "HBM2e"), (5.0, "HBM3"), (3.0, "HBM3e"), (2.0, "HBM4"))


def retarget(chip: Chip, node_nm: float, hbm_generation: str | None = None) -> Chip:
    """The same chip architecture at another process node and HBM generation.

    MAC units, clock, vector rate, SRAM, links and cores are kept. The HBM stack count is kept
    (`dse.hardware.hbm_stacks` of the original), and bandwidth and capacity become that many
    stacks of the new generation.

    **Arguments:**

    - `chip`: one `Chip`.
    - `node_nm`: the new process node, nm.
    - `hbm_generation`: the new memory generation (default: unchanged).

    **Returns:** the re-targeted `Chip`.
    """
    gen = chip.hbm_generation if hbm_generation is None else hbm_generation
    changes: dict[str, Any] = {"node_nm": float(node_nm)}
    if gen != chip.hbm_generation:
        if chip.hbm_generation == "none" or gen == "none":
            raise ValueError(f"retarget: cannot move between HBM and no HBM "
                             f"({chip.hbm_generation!r} -> {gen!r}); build that chip explicitly")
        stacks = float(hbm_stacks(chip))
        new = technology(float(node_nm), gen)
        changes["hbm_bandwidth"] = stacks * float(new.hbm_stack_bandwidth)
        changes["hbm_bytes"] = stacks * float(new.hbm_stack_capacity)
    return dataclasses.replace(chip, hbm_generation=gen, **changes)


@dataclasses.dataclass(frozen=True)
class RoadmapStep:
    """One step of a roadmap.

    **Fields:**

    - `node_nm`, `hbm_generation`, `label` (e.g. "N5 / HBM3").
    - `extrapolated`: technology quantities with no published data at this node (empty when the
      step is inside the data).
    - `chip`: the re-targeted chip; `metrics`: its metrics; `binding`: the resource that limits
      the roadmap metric on it; `top`: its three largest elasticities, `(field, elasticity)`.
    - `optimum`: the best feasible design of the space at this step (None without a space or
      when no sampled design is feasible); `optimum_params`: its parameter values;
      `optimum_metrics`, `optimum_binding`, `optimum_top`: as above for it.
    - `n_feasible`: sampled designs that met every constraint.
    """

    node_nm: float
    hbm_generation: str
    label: str
    extrapolated: tuple[str, ...]
    chip: Chip
    metrics: dict[str, float]
    binding: str
    top: tuple[tuple[str, float], ...]
    optimum: Chip | None
    optimum_params: dict[str, float]
    optimum_metrics: dict[str, float]
    optimum_binding: str
    optimum_top: tuple[tuple[str, float], ...]
    n_feasible: int


@dataclasses.dataclass(frozen=True)
class RoadmapResult:
    """A roadmap: the steps in order, the metric followed and which way is better."""

    metric: str
    direction: str
    steps: tuple[RoadmapStep, ...]

    def to_dataframe(self):
        """One row per step: node, memory, extrapolation flag, metrics of the re-targeted chip
        (`<metric>`), of the optimum (`opt_<metric>`), its parameters (`opt_<param>`) and both
        binding resources."""
        import pandas as pd

        rows = []
        for s in self.steps:
            row: dict[str, Any] = {"step": s.label, "node_nm": s.node_nm,
                                   "hbm_generation": s.hbm_generation,
                                   "extrapolated": bool(s.extrapolated),
                                   "binding": s.binding}
            row.update(s.metrics)
            row.update({f"opt_{k}": v for k, v in s.optimum_metrics.items()})
            row.update({f"opt_{k}": v for k, v in s.optimum_params.items()})
            row["opt_binding"] = s.optimum_binding
            row["n_feasible"] = s.n_feasible
            rows.append(row)
        return pd.DataFrame(rows)


def _top(result, metric: str, k: int = 3) -> tuple[tuple[str, float], ...]:
    e = np.asarray(result.elasticity[metric], np.float64)
    order = np.argsort(-np.nan_to_num(np.abs(e), nan=-1.0), kind="stable")[:k]
    return tuple((result.fields[j], float(e[j])) for j in order)


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(np.asarray(v)) for k, v in metrics.items()}


def roadmap(
    objective: Callable[[Chip], Mapping[str, Any]],
    chip: Chip,
    *,
    metric: str,
    direction: str = "min",
    steps: Sequence[tuple[float, str]] = ROADMAP_STEPS,
    params: Sequence[Param] | Mapping[str, Any] | None = None,
    constraints: Mapping[str, tuple[str, float]] | None = None,
    n: int = 4096,
    seed: int = 0,
    fields: Sequence[str] | None = None,
) -> RoadmapResult:
    """The same workload on `chip` re-targeted across nodes and HBM generations.

    **Arguments:**

    - `objective`: `chip -> {metric: scalar}`, pure JAX (the workload on that chip); it must
      return `metric` and every metric named in `constraints`.
    - `chip`: the starting `Chip` (one design).
    - `metric`: the figure the roadmap follows (e.g. "step_time"); `direction`: "min" / "max".
    - `steps`: `(node_nm, hbm_generation)` pairs in order (default `ROADMAP_STEPS`:
      N7/HBM2e -> N5/HBM3 -> N3/HBM3e -> N2/HBM4).
    - `params`: a design space over chip fields (as `dse.Space`), re-optimized at every step;
      None follows the re-targeted chip only.
    - `constraints`: `{metric: ("<=" | ">=", bound)}` budgets of the re-optimization (area,
      power, ...), as in `dse.sweep`.
    - `n`: designs sampled per step (Sobol); `seed`: the sample stream.
    - `fields`: chip fields whose elasticities name the binding resource (default: every
      continuous field; fewer fields compile faster).

    **Returns:** a `RoadmapResult`.
    """
    if direction not in ("min", "max"):
        raise ValueError(f"direction must be 'min' or 'max'; got {direction!r}")
    steps = [(float(node), str(gen)) for node, gen in steps]
    if not steps:
        raise ValueError("roadmap needs at least one (node_nm, hbm_generation) step")
    constraints = dict(constraints or {})
    out = []
    for node, gen in steps:
        target = retarget(chip, node, gen)
        sens = sensitivity(objective, target, fields=fields, directions={metric: direction})
        if metric not in sens.values:
            raise ValueError(f"objective returns no metric {metric!r}; it returns "
                             f"{list(sens.metrics)}")
        opt_chip, opt_params, opt_metrics, opt_binding, opt_top, n_feasible = (
            None, {}, {}, "", (), 0)
        if params is not None:
            space = Space(target, params)
            res = sweep(objective, space, n, seed=seed, constraints=constraints,
                        progress=False)
            feasible = np.asarray(res.feasible)
            n_feasible = int(feasible.sum())
            if n_feasible:
                v = np.asarray(res[metric], np.float64)
                key = np.where(feasible, v if direction == "min" else -v, np.inf)
                best = int(np.argmin(key))
                x = np.array([res[p][best] for p in space.names], np.float64)
                opt_chip = space.build(x)
                opt_params = {p: float(x[j]) for j, p in enumerate(space.names)}
                opt_sens = sensitivity(objective, opt_chip, fields=fields,
                                       directions={metric: direction})
                opt_metrics = _floats(opt_sens.values)
                opt_binding = str(opt_sens.binding[metric])
                opt_top = _top(opt_sens, metric)
        out.append(RoadmapStep(
            node_nm=node, hbm_generation=gen, label=f"N{node:g} / {gen}",
            extrapolated=tuple(extrapolated_quantities(node)), chip=target,
            metrics=_floats(sens.values), binding=str(sens.binding[metric]),
            top=_top(sens, metric), optimum=opt_chip, optimum_params=opt_params,
            optimum_metrics=opt_metrics, optimum_binding=opt_binding, optimum_top=opt_top,
            n_feasible=n_feasible))
    return RoadmapResult(metric=metric, direction=direction, steps=tuple(out))
