"""`System`: many chips, a scale-up domain (NVLink / ICI) and a scale-out network (InfiniBand)."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from ._chip import Chip
from ._fields import SYSTEM_BOUNDS
from ._network import Network
from ._once import once_per_evaluation
from ._validate import as_float_array, check_choice, check_integer, check_range

Topology = Literal["switch", "torus2d", "torus3d"]
# Dimensions of each scale-up topology (0: a switch, any-to-any).
TOPOLOGY_DIMS: dict[str, int] = {"switch": 0, "torus2d": 2, "torus3d": 3}
# Scale-up fabric kinds: NVLink / NVSwitch, TPU inter-chip interconnect, AMD Infinity Fabric
# (xGMI), Ethernet-based scale-up (Gaudi RoCE ports). Each is calibrated on its own
# (`dse.models.Calibration.link_efficiency` / `latency_scale` are per fabric).
Fabric = Literal["nvlink", "ici", "xgmi", "ethernet"]
FABRICS: tuple[str, ...] = get_args(Fabric)

# Chips in one system: float32 holds integers exactly up to 2^24 (the models multiply chip
# counts in the working float type); no cluster comes near 16.8 million chips.
MAX_NUM_CHIPS = 2**24


class System(eqx.Module):
    """A cluster of identical chips in two network tiers.

    **Fields** (SI units):

    - `chip`: the `Chip` every node carries.
    - `num_chips` (static): chips in the system.
    - `scaleup_size`: chips per scale-up domain (8 in a DGX, 72 in an NVL72, the whole slice for a
      TPU torus). Per-chip scale-up bandwidth is the chip's links: `chip.link_count *
      chip.link_bandwidth` per direction.
    - `scaleup_latency`: one-hop latency inside the domain, s.
    - `scaleout_bandwidth`: per-chip bandwidth to the scale-out network, one direction, bytes/s.
    - `scaleout_latency`: one-hop latency of the scale-out network, s.
    - `topology` (static): scale-up topology: "switch" (NVSwitch: any-to-any at full per-chip
      bandwidth), "torus2d" / "torus3d" (TPU ICI: rings along each dimension).
    - `fabric` (static): what the scale-up links are ("nvlink", "ici", "xgmi", "ethernet"); it
      selects the fabric's calibrated link efficiency and latency factor.
    - `name` (static): label.
    - `network`: the scale-out `Network` (tiers, radix, oversubscription, planes, rails), or
      None for the two-tier model (one scale-out bandwidth and latency, as before networks
      existed). With a network, collectives use the bandwidth each tier really has and the
      cluster's network cost, power and failures can be counted (`dse.hardware.Cluster`).
    - `host_bandwidth`: per-chip bandwidth to its host's memory, one direction, bytes/s (PCIe,
      or NVLink-C2C on Grace systems); what activation offloading
      (`TrainingPlan.activation_offload`) moves over. 0 (the default): no such path.
    - `host_memory`: host memory per chip that offloaded activations may fill, bytes; 0 (the
      default): none.
    """

    chip: Chip
    num_chips: int = eqx.field(static=True)
    scaleup_size: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    scaleup_latency: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    scaleout_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    scaleout_latency: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    # Any str: `__check_init__` rejects one outside `Topology` / `Fabric` with a ValueError.
    topology: str = eqx.field(static=True, default="switch")
    fabric: str = eqx.field(static=True, default="nvlink")
    name: str = eqx.field(static=True, default="custom")
    network: Network | None = None
    host_bandwidth: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)
    host_memory: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=0.0)

    def __check_init__(self):
        if not isinstance(self.chip, Chip):
            raise ValueError(f"System.chip must be a Chip; got {type(self.chip).__name__}")
        if not isinstance(self.num_chips, int) or isinstance(self.num_chips, bool):
            raise ValueError(f"System.num_chips must be a whole number in [1, {MAX_NUM_CHIPS}]; "
                             f"got {self.num_chips!r}")
        check_integer("System", "num_chips", self.num_chips, upper=MAX_NUM_CHIPS)
        for field, (lo, hi, zero_allowed, lo_inclusive) in SYSTEM_BOUNDS.items():
            check_range("System", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inclusive, zero_allowed=zero_allowed)
        check_choice("System", "topology", self.topology, get_args(Topology))
        check_choice("System", "fabric", self.fabric, FABRICS)
        if self.network is not None and not isinstance(self.network, Network):
            raise ValueError(f"System.network must be a dse.hardware.Network or None; got "
                             f"{type(self.network).__name__}")
        links, size = self.chip.link_count, self.scaleup_size
        if not isinstance(links, jax.core.Tracer) and not isinstance(size, jax.core.Tracer):
            if np.any((np.asarray(links) == 0) & (np.asarray(size) > 1)):
                raise ValueError(
                    f"System.scaleup_size must be 1 when the chip has no links "
                    f"(chip.link_count = 0); got scaleup_size {np.asarray(size)}")

    @property
    @once_per_evaluation
    def scaleup_bandwidth(self) -> Float[Array, "*batch"]:
        """Per-chip scale-up bandwidth, one direction, bytes/s (all of the chip's links)."""
        return self.chip.link_count * self.chip.link_bandwidth

    @property
    @once_per_evaluation
    def scaleup_domain(self) -> Float[Array, "*batch"]:
        """Chips per scale-up domain, capped at the system size."""
        return jnp.minimum(self.scaleup_size, float(self.num_chips))

    # int | float: a whole float (8.0) is accepted, a fractional one refused with a ValueError.
    def with_num_chips(self, num_chips: int | float) -> System:
        """The same system with `num_chips` chips (the scale-up domain is kept).

        A whole number is required (8 or 8.0); 1.7 chips is an error, never truncated.
        """
        if isinstance(num_chips, (bool, np.bool_)):
            raise ValueError(f"System.num_chips must be a whole number; got {num_chips!r}")
        check_integer("System", "num_chips", num_chips, upper=MAX_NUM_CHIPS)
        return dataclasses.replace(self, num_chips=int(num_chips))

    def replace(self, **changes) -> System:
        """A copy with some fields changed (validated like a new System)."""
        return dataclasses.replace(self, **changes)
