"""`Reason`: why a result is infeasible, one set of flags for hardware, training and inference.

A report's `reason` is a bit set: 0 means feasible, and every check that fails adds its flag,
so a design that is both out of memory and over its chip count says both. `describe_reason`
turns it into words for tables and messages.
"""

from __future__ import annotations

import enum

import numpy as np


class Reason(enum.IntFlag):
    """Infeasibility flags (combine with `|`; 0 = feasible)."""

    OK = 0
    CHIPS = 1  # the plan does not fill the system's chips (tp*pp*dp, or replicas of tp*pp)
    BATCH = 2  # the global batch does not split into whole micro-batches per replica
    MEMORY = 4  # weights, gradients, optimizer state, activations or KV cache exceed the HBM
    NETWORK = 8  # the scale-out network's tiers and radix cannot connect that many chips
    SPLIT = 16  # the plan does not divide the model (heads over tp, layers over pp, ...)
    SRAM = 32  # a chip without HBM: what it must hold exceeds its on-chip SRAM
    UNMANUFACTURABLE = 64  # a die larger than a wafer, or fewer good dies than a fab can make
    WORKLOAD = 128  # a batch or sequence length outside its range (traced values)
    # Serving (dse.models.serve_continuous): high values leave room for the flags of other
    # layers. SATURATED: the arrival rate is at or above what the deployment can serve, so the
    # queue grows without bound; SLO: no load meets the latency objective.
    SATURATED = 256
    SLO = 512
    # The chip has no matrix engine for a format the plan computes in (FP8 / FP4 rate 0, or a
    # block-scaled format without `Chip.block_scaling`).
    PRECISION = 1024
    # Activation offloading (`TrainingPlan.activation_offload`) on a system without a host link
    # (`System.host_bandwidth` 0), or offloaded activations beyond `System.host_memory`.
    HOST_MEMORY = 2048


REASON_TEXT: dict[Reason, str] = {
    Reason.CHIPS: "plan does not use exactly the system's chips",
    Reason.BATCH: "global batch does not split into whole micro-batches per replica",
    Reason.MEMORY: "memory per chip exceeds the HBM capacity",
    Reason.NETWORK: "network tiers and radix cannot connect the cluster's chips",
    Reason.SPLIT: "plan does not divide the model (heads over tp, layers over pp and "
                  "interleave, experts over ep)",
    Reason.SRAM: "chip without HBM: memory per chip exceeds its on-chip SRAM",
    Reason.UNMANUFACTURABLE: "die cannot be made (larger than a 300 mm wafer, or fewer than "
                             "one good die per year of a foundry's wafers)",
    Reason.WORKLOAD: "batch or sequence length outside its valid range",
    Reason.SATURATED: "arrival rate at or above the deployment's capacity (unbounded queue)",
    Reason.SLO: "latency objective not met at any load",
    Reason.PRECISION: "chip has no matrix engine for the plan's number format",
    Reason.HOST_MEMORY: "offloaded activations exceed the host memory per chip (or the system "
                        "has no host link)",
}


def describe_reason(reason) -> str:
    """The failed checks of a `reason` value, in words ("ok" when there are none)."""
    code = int(np.asarray(reason))
    words = [text for flag, text in REASON_TEXT.items() if code & flag]
    return "; ".join(words) if words else "ok"
