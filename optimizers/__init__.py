"""dse.optimizers: generic search over unconstrained arrays (knows neither chips nor models)."""

from ._baselines import SearchResult as SearchResult
from ._baselines import nsga2 as nsga2
from ._baselines import random_search as random_search
from ._bijections import Box as Box
from ._constraints import LagrangianState as LagrangianState
from ._constraints import augmented_lagrangian as augmented_lagrangian
from ._constraints import constraint_violation as constraint_violation
from ._constraints import init_lagrangian as init_lagrangian
from ._constraints import quadratic_penalty as quadratic_penalty
from ._constraints import update_lagrangian as update_lagrangian
from ._continuation import TraceResult as TraceResult
from ._continuation import trace_front as trace_front
from ._multiobjective import CHEBYSHEV_AUGMENTATION as CHEBYSHEV_AUGMENTATION
from ._multiobjective import MultiStartResult as MultiStartResult
from ._multiobjective import chebyshev as chebyshev
from ._multiobjective import multistart_minimize as multistart_minimize
from ._multiobjective import preference_vectors as preference_vectors
from ._multiobjective import sobol_unit as sobol_unit
from ._multiobjective import weighted_sum as weighted_sum
from ._pareto import direction_signs as direction_signs
from ._pareto import hypervolume as hypervolume
from ._pareto import knee_point as knee_point
from ._pareto import oriented as oriented
from ._pareto import pareto_indices as pareto_indices
from ._pareto import pareto_mask as pareto_mask
