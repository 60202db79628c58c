"""dse.data: the published specifications and measurements dse fits and validates against.

The CSV files beside this module are copies of public sources; every row names its source
(README.md here describes the columns). They install with the package, so fits, validation,
tests and benchmarks read this folder and nothing outside the repository.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

FILES = ("chips.csv", "tech.csv", "training_runs.csv", "inference_runs.csv",
         "cluster_failures.csv", "nccl_busbw.csv", "network_designs.csv", "economics.csv",
         "attention_kernels.csv", "external_checks.csv", "recsys_runs.csv",
         "multimodal_runs.csv", "speculative_runs.csv", "gemm_kernels.csv",
         "allreduce_latency.csv", "collective_sweeps.csv", "precision_pairs.csv",
         "serving_external_checks.csv")
# Published runs kept for checking the models only: no fit may read them (dse.calibration
# refuses their source keys, which start with "ext_").
CHECK_ONLY = ("external_checks.csv",)


def data_dir() -> Path:
    """The folder holding the published data files (installed with the package)."""
    return Path(str(resources.files(__name__)))


def path(name: str) -> Path:
    """Path of one data file, e.g. `path("training_runs.csv")`.

    **Arguments:**

    - `name`: one of `FILES`.

    **Returns:** the file's path.
    """
    if name not in FILES:
        raise ValueError(f"dse.data.path: name must be one of {list(FILES)}; got {name!r}")
    return data_dir() / name
