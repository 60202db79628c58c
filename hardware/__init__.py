"""dse.hardware: what the machine is (Chip, System, Technology; area, power, cost; presets)."""

from . import units as units
from ._chip import CONTINUOUS_CHIP_FIELDS as CONTINUOUS_CHIP_FIELDS
from ._chip import Chip as Chip
from ._chip import stack_chips as stack_chips
from ._system import System as System
