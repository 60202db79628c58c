"""dse: differentiable design-space exploration of AI hardware, in JAX."""

from . import hardware as hardware
from . import models as models
from . import optimizers as optimizers
from ._optimize import OptimizeResult as OptimizeResult
from ._optimize import optimize as optimize
