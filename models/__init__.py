"""dse.models: what a workload costs on a machine (operators, collectives, training, inference)."""

from ._transformer import TRANSFORMERS as TRANSFORMERS
from ._transformer import Transformer as Transformer
