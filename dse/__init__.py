"""dse: differentiable design-space exploration of AI hardware, in JAX."""

from . import calibration as calibration
from . import hardware as hardware
from . import models as models
from . import optimizers as optimizers
from ._cache import compilation_cache as compilation_cache
from ._cache import enable_by_default as _enable_cache
from ._codesign import PlanCandidates as PlanCandidates
from ._codesign import plan_candidates as plan_candidates
from ._codesign import plan_misses as plan_misses
from ._optimize import OptimizeResult as OptimizeResult
from ._optimize import optimize as optimize
from ._pareto import ParetoFront as ParetoFront
from ._roadmap import ROADMAP_STEPS as ROADMAP_STEPS
from ._roadmap import RoadmapResult as RoadmapResult
from ._roadmap import RoadmapStep as RoadmapStep
from ._roadmap import retarget as retarget
from ._roadmap import roadmap as roadmap
from ._sensitivity import SensitivityResult as SensitivityResult
from ._sensitivity import continuous_fields as continuous_fields
from ._sensitivity import sensitivity as sensitivity
from ._space import Param as Param
from ._space import Space as Space
from ._sweep import SweepInfeasibleWarning as SweepInfeasibleWarning
from ._sweep import SweepNaNWarning as SweepNaNWarning
from ._sweep import sweep as sweep
from ._table import SweepResult as SweepResult
from ._workload_mix import Workload as Workload
from ._workload_mix import WorkloadMix as WorkloadMix
from ._workload_mix import recsys_workload as recsys_workload
from ._workload_mix import serving_workload as serving_workload
from ._workload_mix import training_workload as training_workload
from .optimizers import hypervolume as hypervolume
from .optimizers import knee_point as knee_point
from .optimizers import pareto_indices as pareto_indices
from .optimizers import pareto_mask as pareto_mask

# JAX's persistent compilation cache on (unless DSE_COMPILATION_CACHE=0): see dse/_cache.py.
_enable_cache()


def __getattr__(name: str):
    # `dse.plot` loads matplotlib (0.3 s); it is imported on first use, not with `dse`.
    if name == "plot":
        import importlib

        return importlib.import_module(".plot", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
