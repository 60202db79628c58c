"""`Network`: the scale-out fabric as a design (tiers, radix, oversubscription, planes, rails).

A multi-tier fat-tree (folded Clos) of identical switches. With radix k (ports per switch, at
one plane's port speed) and T tiers, a non-blocking tree connects 2 (k/2)^T endpoints with
(2T - 1) N / k switches and N links across every tier boundary (Al-Fares, Loukissas & Vahdat,
"A scalable, commodity data center network architecture", SIGCOMM 2008, Sec. 3; Leiserson,
"Fat-trees", IEEE Trans. Computers C-34(10), 1985). NVIDIA's DGX SuperPOD tables follow these
counts exactly (data/network_designs.csv: 2-tier up to 2,048 GPUs, 3-tier beyond, radix 64,
cables = GPUs per tier boundary).

Oversubscription o >= 1 sits at the uplinks of the second-highest tier, the boundary of a
*pod*: inside a pod the tree is non-blocking, between pods each pod has 1/o of its endpoints'
bandwidth (Llama 3's 24K-GPU cluster: 3,072-GPU pods at full bisection joined 1:7 by the
aggregation tier, Dubey et al. 2024, arXiv 2407.21783 Sec. 3.3.1). Those switches give
k o / (1 + o) ports down and k / (1 + o) up, so a pod holds (k/2)^(T-2) k o / (1 + o)
endpoints, the network k times that, and the top tier carries N / o links.

Every count is a smooth function of the tiers, radix and oversubscription, so they are design
knobs relaxed like the other integers (snapped by the explorer). Between T = 1 (one switch, no
uplinks, no oversubscription) and T = 2 the oversubscription fades in linearly.

Planes: each chip's scale-out bandwidth is split over `planes` ports, one per independent
plane (Alibaba HPN's dual-plane, Qian et al., SIGCOMM 2024); a switch of the same capacity then
has `planes` times the radix at the lower port speed, so fewer tiers reach the same size.
`radix` is counted at one plane's port speed.

Rails: with `rail_optimized` the leaf switches serve one rail each (chip i of every host on
leaf i, NVIDIA DGX SuperPOD) and sit outside the hosts' rack, so host-to-leaf links are
optical; otherwise a top-of-rack switch in the rack takes them on copper (Meta's RoCE
clusters: "RTSW leaves connect GPUs in the rack via copper DAC", Gangidi et al., SIGCOMM
2024). Switch-to-switch links are optical in both.
"""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from ._fields import NETWORK_BOUNDS
from ._validate import as_float_array, check_range


class Network(eqx.Module):
    """The scale-out network of a `System`: a fat-tree with oversubscription, planes and rails.

    **Fields** (counts are floats, relaxed while optimizing):

    - `tiers`: switch tiers of the fat-tree (1 = one switch; 2 = leaf-spine; 3 = leaf-spine-core).
    - `radix`: ports per switch at one plane's port speed (64 for a 51.2 Tb/s switch at 800G,
      or a Quantum-2 at 400G).
    - `oversubscription`: down : up bandwidth at the pod boundary (1 = non-blocking; Llama 3's
      aggregation tier is 7).
    - `planes`: independent planes each chip's scale-out bandwidth is split across (1 = one).
    - `host_chips`: chips per host (server); hosts carry the CPUs and NICs.
    - `rack_chips`: chips per rack; links inside a rack are copper, between racks optical.
    - `rail_optimized` (static): leaves per rail outside the rack (True) or per rack (False).
    - `name` (static): label.
    """

    tiers: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    radix: Float[Array, "*batch"] = eqx.field(converter=as_float_array)
    oversubscription: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    planes: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=1.0)
    # 8 GPUs per host: DGX / HGX H100 and B200 (NVIDIA DGX datasheets); Meta's Grand Teton
    # (Llama 3, Sec. 3.3.1: "Each server is equipped with eight GPUs").
    host_chips: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=8.0)
    # 4 DGX (32 GPUs) per rack: NVIDIA DGX SuperPOD B300 reference architecture ("four DGX B300
    # fit within a single rack").
    rack_chips: Float[Array, "*batch"] = eqx.field(converter=as_float_array, default=32.0)
    rail_optimized: bool = eqx.field(static=True, default=True)
    name: str = eqx.field(static=True, default="custom")

    def __check_init__(self):
        for field, (lo, hi, lo_inc) in NETWORK_BOUNDS.items():
            check_range("Network", field, getattr(self, field), lower=lo, upper=hi,
                        lower_inclusive=lo_inc)
        if not isinstance(self.rail_optimized, bool):
            raise ValueError(f"Network.rail_optimized must be True or False; got "
                             f"{self.rail_optimized!r}")

    def replace(self, **changes) -> Network:
        """A copy with some fields changed (validated like a new Network)."""
        return dataclasses.replace(self, **changes)


class FatTree(eqx.Module):
    """What a `Network` takes to connect some chips (counts over all planes; floats).

    **Fields:**

    - `capacity`: most chips the tree can connect (per plane every chip has one port).
    - `pod_chips`: chips inside one non-blocking pod (all of them when T = 1).
    - `switches`: switches.
    - `switch_ports`: switch ports in use (both ends of every switch-to-switch link, and the
      leaf end of every host link).
    - `host_links`, `fabric_links`: host-to-leaf and switch-to-switch links.
    - `copper_links`, `optical_links`: the same links by reach (in-rack copper, or optics).
    - `oversubscription`: the effective oversubscription (1 when T <= 1).
    """

    capacity: Float[Array, "*batch"]
    pod_chips: Float[Array, "*batch"]
    switches: Float[Array, "*batch"]
    switch_ports: Float[Array, "*batch"]
    host_links: Float[Array, "*batch"]
    fabric_links: Float[Array, "*batch"]
    copper_links: Float[Array, "*batch"]
    optical_links: Float[Array, "*batch"]
    oversubscription: Float[Array, "*batch"]


def fat_tree(network: Network, chips: ArrayLike) -> FatTree:
    """The switches and links `network` needs to connect `chips` chips.

    Counts grow in proportion to `chips` (a partly filled top tier is counted by the ports it
    uses), which is how the DGX SuperPOD tables count them too.

    **Arguments:**

    - `network`: the `Network`.
    - `chips`: chips connected (float; the cluster size, spares included when they are cabled).

    **Returns:** a `FatTree`.
    """
    k, t, planes = network.radix, network.tiers, network.planes
    n = jnp.asarray(chips, dtype=jnp.result_type(k))
    # Uplinks exist from T = 2; between one switch and two tiers the oversubscription fades in.
    ramp = jnp.clip(t - 1.0, 0.0, 1.0)
    o = 1.0 + (network.oversubscription - 1.0) * ramp
    capacity = 2.0 * (0.5 * k) ** t * (2.0 * o / (1.0 + o))
    pod = capacity / k**ramp
    # Per plane: tiers below the pod boundary k/2 down + k/2 up, the boundary tier k o/(1+o)
    # down, the top tier k down: N/k (2 (T - 2) + (1 + o)/o + 1/o) = N/k (2T - 3 + 2/o).
    switches = planes * n / k * (2.0 * t - 3.0 + 2.0 / o)
    host_links = planes * n
    fabric_links = planes * n * (t - 2.0 + 1.0 / o)
    copper = 0.0 if network.rail_optimized else host_links
    optical = host_links + fabric_links - copper
    return FatTree(capacity=capacity, pod_chips=pod, switches=switches,
                   switch_ports=host_links + 2.0 * fabric_links, host_links=host_links,
                   fabric_links=fabric_links, copper_links=copper + 0.0 * n,
                   optical_links=optical, oversubscription=o)


def scaleup_links(*, chips: ArrayLike, domain: ArrayLike, link_count: ArrayLike,
                  rack_chips: ArrayLike, dims: int) -> tuple[Array, Array, Array]:
    """Links of the scale-up domains of `chips` chips: (copper links, optical links, switch
    ports), counted one per chip link end that is wired (a domain of one chip wires none).

    Switched domains (`dims` 0, NVSwitch) end every link on a switch port; a domain larger
    than a rack leaves it through optics for the share of its peers outside the rack,
    1 - rack / domain (the second NVSwitch level of a multi-rack domain). A d-dimensional torus
    (TPU ICI) links chips directly; cut into racks of side a = rack^(1/d), 1/a of its links
    cross a rack face (a cube of a^d chips has d a^d links, d a^(d-1) of them on its faces),
    which is TPU v4's layout: 4x4x4 cubes with optical links between them (Jouppi et al., ISCA
    2023, Sec. 2).
    """
    chips = jnp.asarray(chips)
    wired = jnp.clip(domain - 1.0, 0.0, 1.0) * chips * link_count
    if dims == 0:
        cables = wired
        optical = wired * jnp.clip(1.0 - rack_chips / domain, 0.0, 1.0)
        # Every chip link ends on a first-level switch port; an optical uplink to the second
        # level takes a port at each end.
        ports = wired + 2.0 * optical
    else:
        cables = 0.5 * wired  # a torus link joins two chips
        # The rack-face share 1/a applies once the domain spans racks; it rises smoothly from
        # 0 at one rack to its value at two.
        beyond = jnp.clip((domain - rack_chips) / rack_chips, 0.0, 1.0)
        optical = cables * beyond * rack_chips ** (-1.0 / dims)
        ports = 0.0 * wired
    return cables - optical, optical, ports


# Published scale-out networks (each as its source describes it).
NETWORKS: dict[str, Network] = {
    # NVIDIA DGX SuperPOD (H100 / B200 reference architectures): NDR 400 Gb/s InfiniBand,
    # 64-port Quantum-2 switches, one leaf per rail (8 per scalable unit of 32 hosts),
    # non-blocking; 2 tiers up to 8 SU (2,048 GPUs), 3 beyond (data/network_designs.csv).
    "dgx-superpod": Network(tiers=3.0, radix=64.0, oversubscription=1.0, host_chips=8.0,
                            rack_chips=32.0, rail_optimized=True, name="dgx-superpod"),
    # Meta's 24K-GPU RoCE cluster of Llama 3 (Dubey et al. 2024, Sec. 3.3.1): 3-layer Clos,
    # 16 GPUs per rack on one Minipack2 ToR (64 x 400G, read second-hand), pods at full
    # bisection, 1:7 at the aggregation layer. The pods (3,072 GPUs) use modular cluster
    # switches of larger radix than the ToR; with one radix of 64 the model's pod is 1,792.
    "llama3-roce": Network(tiers=3.0, radix=64.0, oversubscription=7.0, host_chips=8.0,
                           rack_chips=16.0, rail_optimized=False, name="llama3-roce"),
    # ByteDance MegaScale (Jiang et al., NSDI 2024, Sec. 3.6): Tomahawk 4, 64 x 400G, three
    # layers, 1:1 down : up at every layer, multi-rail (eight NICs to eight switches).
    "megascale": Network(tiers=3.0, radix=64.0, oversubscription=1.0, host_chips=8.0,
                         rack_chips=32.0, rail_optimized=True, name="megascale"),
}
