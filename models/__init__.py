"""dse.models: what a workload costs on a machine (operators, collectives, training, inference)."""

from ._transformer import TRANSFORMERS as TRANSFORMERS
from ._transformer import Transformer as Transformer
from ._operators import Efficiency as Efficiency
from ._operators import OpCost as OpCost
from ._operators import attention as attention
from ._operators import attention_backward as attention_backward
from ._operators import elementwise as elementwise
from ._operators import gemm as gemm
from ._operators import roofline as roofline
from ._collectives import CommCost as CommCost
from ._collectives import all_gather as all_gather
from ._collectives import all_reduce as all_reduce
from ._collectives import all_to_all as all_to_all
from ._collectives import reduce_scatter as reduce_scatter
from ._collectives import send_recv as send_recv
from ._inference import FITS as FITS
from ._inference import OUT_OF_MEMORY as OUT_OF_MEMORY
from ._inference import InferencePlan as InferencePlan
from ._inference import InferenceReport as InferenceReport
from ._inference import ServeReport as ServeReport
from ._inference import decode as decode
from ._inference import prefill as prefill
from ._inference import serve as serve
