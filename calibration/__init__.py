"""dse.calibration: fitting the models' `Calibration` to measurements, with uncertainty.

Measurements (`Measurements`, kernel and collective CSVs, the repository's published rows as
modelled cases), the fit (`calibrate`: any subset of `dse.models.Calibration` picked by an
equinox filter, leave-one-source-out validation, Laplace and bootstrap uncertainty), error bars
on anything the models compute (`propagate`), an optional learned residual (`fit_residual`), saved
calibrations that load by name (`load_calibration`), and the scripts that fit the defaults of
`dse.models.DEFAULT` and the hardware layer's fitted constants to `dse.data`.
"""

from ._attention_data import ATTENTION_FIELDS as ATTENTION_FIELDS
from ._attention_data import attention_kernel_ratios as attention_kernel_ratios
from ._attention_data import fit_attention_efficiency as fit_attention_efficiency
from ._attention_data import fit_previous_generation_scale as fit_previous_generation_scale
from ._cluster_data import busbw_checks as busbw_checks
from ._cluster_data import failure_checks as failure_checks
from ._cluster_data import fit_chip_price as fit_chip_price
from ._cluster_data import fit_failure_rates as fit_failure_rates
from ._cluster_data import network_design_checks as network_design_checks
from ._collective_data import collective_sweep_rows as collective_sweep_rows
from ._collective_data import fit_collective_latency as fit_collective_latency
from ._fit import SEARCH_BOUNDS as SEARCH_BOUNDS
from ._fit import calibrate as calibrate
from ._fit import selected_names as selected_names
from ._gemm_data import fit_fp4_gemm as fit_fp4_gemm
from ._gemm_data import fit_fp4_layer_efficiency as fit_fp4_layer_efficiency
from ._gemm_data import gemm_kernel_rows as gemm_kernel_rows
from ._hardware_data import fit_compute_transistors as fit_compute_transistors
from ._hardware_data import fit_mma_size_term as fit_mma_size_term
from ._hardware_data import fit_power_constants as fit_power_constants
from ._hardware_data import read_chips_csv as read_chips_csv
from ._inference_data import inference_rows as inference_rows
from ._inference_data import inference_skipped as inference_skipped
from ._measurements import COLLECTIVE_COLUMNS as COLLECTIVE_COLUMNS
from ._measurements import KERNEL_COLUMNS as KERNEL_COLUMNS
from ._measurements import Measurements as Measurements
from ._measurements import collective_measurements as collective_measurements
from ._measurements import collective_model as collective_model
from ._measurements import data_kernel_measurements as data_kernel_measurements
from ._measurements import kernel_measurements as kernel_measurements
from ._measurements import measure_kernels as measure_kernels
from ._measurements import operator_model as operator_model
from ._measurements import read_measurement_csv as read_measurement_csv
from ._measurements import write_kernel_csv as write_kernel_csv
from ._moe_data import MOE_SOURCE as MOE_SOURCE
from ._moe_data import MoeCase as MoeCase
from ._moe_data import moe_cases as moe_cases
from ._moe_data import predict_moe as predict_moe
from ._multimodal_data import MultimodalCase as MultimodalCase
from ._multimodal_data import multimodal_cases as multimodal_cases
from ._multimodal_data import predict_multimodal as predict_multimodal
from ._operator_data import OPERATOR_FIELDS as OPERATOR_FIELDS
from ._operator_data import fit_link_efficiency as fit_link_efficiency
from ._operator_data import fit_operator_efficiency as fit_operator_efficiency
from ._operator_data import operator_rows as operator_rows
from ._precision_data import PrecisionCase as PrecisionCase
from ._precision_data import PrecisionPair as PrecisionPair
from ._precision_data import precision_pairs as precision_pairs
from ._precision_data import precision_training_rows as precision_training_rows
from ._recsys_data import RecCase as RecCase
from ._recsys_data import predict_recsys as predict_recsys
from ._recsys_data import recsys_cases as recsys_cases
from ._result import CalibrationResult as CalibrationResult
from ._result import load_calibration as load_calibration
from ._result import param_names as param_names
from ._result import saved_calibrations as saved_calibrations
from ._serving_data import BENCH_REQUESTS as BENCH_REQUESTS
from ._serving_data import ServingCase as ServingCase
from ._serving_data import SkippedServingRow as SkippedServingRow
from ._serving_data import finite_run_factor as finite_run_factor
from ._serving_data import predict_online as predict_online
from ._serving_data import predict_serving as predict_serving
from ._serving_data import serving_cases as serving_cases
from ._serving_data import trtllm_bench_limits as trtllm_bench_limits
from ._speculative_data import SpeculativeCase as SpeculativeCase
from ._speculative_data import predict_speculative as predict_speculative
from ._speculative_data import speculative_cases as speculative_cases
from ._training_data import FIT_SOURCES as FIT_SOURCES
from ._training_data import FRAMEWORK_PRIOR_LOG_STD as FRAMEWORK_PRIOR_LOG_STD
from ._training_data import SkippedRow as SkippedRow
from ._training_data import TrainingCase as TrainingCase
from ._training_data import TrainingRows as TrainingRows
from ._training_data import fit_kernel_fraction as fit_kernel_fraction
from ._training_data import fit_training_constants as fit_training_constants
from ._training_data import predict_case as predict_case
from ._training_data import training_cases as training_cases
from ._training_data import training_measurements as training_measurements
from ._training_data import training_rows as training_rows
from ._uncertainty import Interval as Interval
from ._uncertainty import Spread as Spread
from ._uncertainty import bootstrap_weights as bootstrap_weights
from ._uncertainty import parameter_log_std as parameter_log_std
from ._uncertainty import prediction_interval as prediction_interval
from ._uncertainty import propagate as propagate
from ._uncertainty import source_spread as source_spread
from ._uncertainty import spread_dof as spread_dof

# The learned residual is flax (nnx), whose import costs about 0.8 CPU-s: it loads on first use
# of one of its names, not with `dse` (every CLI call, notebook kernel and test process pays
# the import of `dse`).
_RESIDUAL = ("ResidualFit", "compose_residual", "fit_residual")


def __getattr__(name: str):
    if name in _RESIDUAL:
        from . import _residual

        return getattr(_residual, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_RESIDUAL])
