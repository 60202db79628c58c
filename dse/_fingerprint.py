"""What a sweep computes, as short hashes: a resumed sweep checks that it resumes the same thing.

A sweep written under `path` and resumed later must continue the computation it started. The
sampling settings say where the points are; these fingerprints say what is computed at them:

- `objective`: the objective's jaxpr on the base design (every operation, and the values of
  every constant it closes over: the model, the plan, the workload, the calibration);
- `base_design`: the values and structure of the design every point starts from;
- `calibration`: the objective's `calibration` (when it exposes one, as `dse` studies do);
- `library`: the versions of dse and JAX (a new release may compute other numbers).

Each is a hex digest of 16 characters; a field that cannot be known is None.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

# Words for each fingerprint, as a resumed sweep's error names them.
FINGERPRINT_NAMES = {
    "objective": "objective (what is computed: model, plan, workload, calibration)",
    "base_design": "base design",
    "calibration": "calibration",
    "library": "library version",
}


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()[:16]


def tree_fingerprint(tree: Any) -> str | None:
    """A digest of a pytree's structure (static fields included) and leaf values."""
    if tree is None:
        return None
    leaves, treedef = jax.tree.flatten(tree)
    parts = [str(treedef).encode()]
    for leaf in leaves:
        arr = np.asarray(leaf)
        parts += [str(arr.dtype).encode(), str(arr.shape).encode(), arr.tobytes()]
    return _digest(*parts)


def library_version() -> str:
    """`"dse <version>, jax <version>"` of this installation."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        mine = version("dse")
    except PackageNotFoundError:  # pragma: no cover - running from a bare checkout
        mine = "unknown"
    return f"dse {mine}, jax {jax.__version__}"


def objective_fingerprint(objective: Callable, design: Any) -> str:
    """A digest of what `objective(design)` computes: its jaxpr and its constants' values.

    The design's array leaves are the jaxpr's inputs, so the digest does not depend on their
    values (`tree_fingerprint` of the design covers those), only on the computation.
    """
    closed = jax.make_jaxpr(objective)(design)
    parts = [str(closed.jaxpr).encode()]
    for const in closed.consts:
        arr = np.asarray(const)
        parts += [str(arr.dtype).encode(), str(arr.shape).encode(), arr.tobytes()]
    return _digest(*parts)


def sweep_fingerprint(objective: Callable, base: Any) -> dict[str, str | None]:
    """The four fingerprints of a sweep of `objective` over designs built from `base`."""
    return {"objective": objective_fingerprint(objective, base),
            "base_design": tree_fingerprint(base),
            "calibration": tree_fingerprint(getattr(objective, "calibration", None)),
            "library": library_version()}
