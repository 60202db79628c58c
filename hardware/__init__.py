"""dse.hardware: what the machine is (Chip, System, Technology; area, power, cost; presets)."""

from . import units as units
from ._area import AreaReport as AreaReport
from ._area import area as area
from ._area import hbm_stacks as hbm_stacks
from ._chip import CONTINUOUS_CHIP_FIELDS as CONTINUOUS_CHIP_FIELDS
from ._chip import Chip as Chip
from ._chip import stack_chips as stack_chips
from ._cost import CostReport as CostReport
from ._cost import cost as cost
from ._fields import FIELDS as FIELDS
from ._fields import Field as Field
from ._fields import Quantity as Quantity
from ._power import Activity as Activity
from ._power import PowerReport as PowerReport
from ._power import power as power
from ._presets import CHIPS as CHIPS
from ._presets import PRESET_ASSUMPTIONS as PRESET_ASSUMPTIONS
from ._presets import PUBLISHED as PUBLISHED
from ._presets import SYSTEMS as SYSTEMS
from ._system import System as System
from ._technology import RETICLE_LIMIT_MM2 as RETICLE_LIMIT_MM2
from ._technology import Technology as Technology
from ._technology import extrapolated_quantities as extrapolated_quantities
from ._technology import technology as technology
