"""`power(chip, activity)`: power by block at the utilization a workload reports."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, Float

from ._area import area
from ._chip import Chip
from ._precision import ENGINES, LOW_PRECISION_ENGINES
from ._technology import HBM_ENERGY_PER_BYTE, LINK_ENERGY_PER_BYTE, Technology, technology
from ._validate import as_float_array, check_range

# Energy of one 16-bit MAC at 7 nm including operand delivery from registers and on-chip SRAM
# (J), and static power per mm^2 of silicon (W/mm^2: leakage, clock tree, always-on uncore).
# Fitted by `dse.calibration.fit_power_constants` to the TDPs of V100, A100 40/80GB, H100 and
# H200 in chips.csv, each at the matmul rate it sustains at TDP; `tests/test_hardware_fit.py`
# re-runs the fit. Other nodes scale the MAC energy with `Technology.energy_scale`. The
# non-negative fit puts no weight on an area-proportional static term (TDPs alone cannot
# separate it from activity-proportional power), so static power is 0 until calibrated to
# idle-power measurements. `fit_mma_size_term` asks the same TDPs whether operand delivery per
# MAC falls with the per-core MMA size (as n^(-1/3)): they give that term 0 weight (V100, A100
# and H100 at 512, 1024 and 2048 MACs/SM/clock imply the same energy per MAC), so the held-out
# B200 / GB200 stay 50% / 29% above TDP: their energy per MAC is ~45% below Hopper's on the same
# N4-family node, which nothing in this model explains.
ENERGY_PER_MAC_7NM = 2.1906e-12
STATIC_POWER_PER_MM2 = 0.0
# A vector (non-matrix) FLOP is charged half a MAC (a MAC is 2 FLOP): an assumption, since no
# source used here separates the two.
VECTOR_FLOP_ENERGY_RATIO = 0.5


class Activity(eqx.Module):
    """Utilization of each resource, as a fraction of its peak (0 = idle, 1 = saturated).

    **Fields:** `compute` (16-bit matrix MAC rate), `vector` (vector FLOP rate), `hbm` (HBM
    bandwidth), `link` (off-chip link bandwidth, both directions), `fp8`, `fp6`, `fp4`, `int8`
    (each narrow engine's MAC rate as a fraction of its own peak, `Chip.matrix_peak`). The
    matrix fractions may add up to at most 1 between them in a real workload (one engine
    issues at a time); each is checked alone.
    """

    compute: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    vector: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    hbm: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    link: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    fp8: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    fp6: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    fp4: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    int8: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)

    def __check_init__(self):
        for field in ("compute", "vector", "hbm", "link") + LOW_PRECISION_ENGINES:
            check_range("Activity", field, getattr(self, field), lower=0.0, upper=1.0,
                        lower_inclusive=True)


FULL_ACTIVITY = Activity()


class PowerReport(eqx.Module):
    """Power by block, watts; the blocks sum to `total`."""

    # Broadcast-compatible batches: `static` follows the chip, the others also the activity.
    compute: Float[Array, "*#batch"]
    vector: Float[Array, "*#batch"]
    hbm: Float[Array, "*#batch"]
    link: Float[Array, "*#batch"]
    static: Float[Array, "*#batch"]
    total: Float[Array, "*#batch"]

    @property
    def blocks(self) -> dict[str, Float[Array, "*#batch"]]:
        """The additive blocks, in W."""
        return {"compute": self.compute, "vector": self.vector, "hbm": self.hbm,
                "link": self.link, "static": self.static}


def power(chip: Chip, activity: Activity | None = None,
          tech: Technology | None = None) -> PowerReport:
    """Power drawn by `chip` (die + HBM) at `activity`, in watts.

    **Arguments:**

    - `chip`: one chip or a batch.
    - `activity`: utilization fractions; default `Activity()` = full 16-bit matrix compute, HBM
      and links (the TDP operating point). `Activity(compute=0, fp8=1)` is the FP8 engine at
      its peak instead.
    - `tech`: per-node constants; default from `chip.node_nm`.

    **Returns:** a `PowerReport`.
    """
    tech = technology(chip.node_nm, chip.hbm_generation) if tech is None else tech
    activity = FULL_ACTIVITY if activity is None else activity
    energy_per_mac = ENERGY_PER_MAC_7NM * tech.energy_scale
    # A MAC of a narrow engine costs its Horowitz energy relative to a 16-bit MAC.
    mac_equivalents = activity.compute
    for engine in LOW_PRECISION_ENGINES:
        mac_equivalents = mac_equivalents + (getattr(activity, engine) * chip.rate(engine)
                                             * ENGINES[engine].energy)
    compute = mac_equivalents * energy_per_mac * chip.mac_units * chip.clock_hz
    vector = (activity.vector * VECTOR_FLOP_ENERGY_RATIO * energy_per_mac
              * chip.vector_flops)
    hbm = activity.hbm * HBM_ENERGY_PER_BYTE * chip.hbm_bandwidth
    link = activity.link * LINK_ENERGY_PER_BYTE * 2.0 * chip.link_count * chip.link_bandwidth
    static = STATIC_POWER_PER_MM2 * area(chip, tech).total
    return PowerReport(compute=compute, vector=vector, hbm=hbm, link=link, static=static,
                       total=compute + vector + hbm + link + static)
