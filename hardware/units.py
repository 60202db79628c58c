"""Named unit constants. Human units appear only in presets and configs, through these names.

Everything inside dse is SI: bytes, seconds, FLOP, FLOP/s, bytes/s, watts, joules, dollars; area is
in mm^2 (the unit every die-area source uses).
"""

# Decimal (SI) prefixes: vendors quote bandwidth and FLOP/s in these.
KB = 1e3
MB = 1e6
GB = 1e9
TB = 1e12
PB = 1e15

# Binary prefixes: memory capacities (HBM stacks, SRAM macros) are powers of two.
KiB = 2.0**10
MiB = 2.0**20
GiB = 2.0**30
TiB = 2.0**40

# Bits: SerDes and network ports are quoted in bits per second.
Gbit = 1e9 / 8  # bytes
Tbit = 1e12 / 8  # bytes

GHz = 1e9
MHz = 1e6
TFLOPS = 1e12
PFLOPS = 1e15

ns = 1e-9
us = 1e-6
ms = 1e-3

pJ = 1e-12
nJ = 1e-9

# Area
um2 = 1e-6  # mm^2 per square micrometre
