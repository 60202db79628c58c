"""Energy of a step: the chip's power (`dse.hardware.power`, where the MAC, SRAM, HBM and link
energies live) at the utilizations the step implies, times its duration and its chips."""

from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from dse.hardware import Activity, Chip, power

from ._operators import ratio


def step_energy(chip: Chip, time: ArrayLike, chips: ArrayLike, *, compute_fraction: ArrayLike,
                vector_flops: ArrayLike, hbm_bytes: ArrayLike, link_bytes: ArrayLike,
                low_precision_flops: ArrayLike = 0.0,
                engine: str = "bf16") -> Float[Array, "*batch"]:
    """Energy of `chips` chips busy for `time` seconds, J.

    **Arguments:**

    - `chip`: the `Chip`.
    - `time`: duration of the step, s.
    - `chips`: chips drawing power.
    - `compute_fraction`: 16-bit matrix MAC rate as a fraction of its peak (clipped to [0, 1]).
    - `vector_flops`, `hbm_bytes`, `link_bytes`: per-chip vector FLOP, HBM bytes and bytes sent
      over the scale-up links during `time`.
    - `low_precision_flops`, `engine` (static): per-chip matrix FLOP run on a narrow `engine`
      ("fp8", "fp6", "fp4", "int8") during `time`, charged at that engine's energy per MAC
      (`dse.hardware.ENGINES`); not part of `compute_fraction`.

    **Returns:** energy, J.
    """
    # max(., 1 B/s): a chip with no HBM (or no links) moves no bytes there; without it the
    # 0 / 0 here is NaN in the gradient of the energy. `ratio` and the time last: the
    # derivative of x / (rate * time) as JAX forms it squares (rate * time), which overflows
    # float32 for long steps.
    narrow = {}
    if engine != "bf16":
        peak = jnp.maximum(chip.matrix_peak(engine), 1.0)
        narrow[engine] = jnp.clip(ratio(ratio(low_precision_flops, peak), time), 0.0, 1.0)
    activity = Activity(
        **narrow,
        compute=jnp.clip(compute_fraction, 0.0, 1.0),
        vector=jnp.clip(ratio(ratio(vector_flops, chip.vector_flops), time), 0.0, 1.0),
        hbm=jnp.clip(hbm_bytes / jnp.maximum(chip.hbm_bandwidth, 1.0) / time, 0.0, 1.0),
        link=jnp.clip(link_bytes / jnp.maximum(chip.link_bandwidth_total, 1.0) / time, 0.0,
                      1.0),
    )
    return power(chip, activity).total * time * chips
