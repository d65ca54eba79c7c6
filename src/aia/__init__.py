"""aia: Attention Interaction Alignment for unified multimodal models.

Measure the layer-wise cross-modal interaction intensity of a transformers model
exactly (fused attention kernels, no attention maps), turn it into the AIA loss,
and fine-tune with it.
"""

from .attention import Capture, capture
from .intensity import span_mass, span_valid
from .loss import aia_loss, huber, total_loss
from .spans import Role, SpanConfig, generation_spans, task_spans, understanding_spans

__all__ = [
    "Capture",
    "Role",
    "SpanConfig",
    "aia_loss",
    "capture",
    "generation_spans",
    "huber",
    "span_mass",
    "span_valid",
    "task_spans",
    "total_loss",
    "understanding_spans",
]

__version__ = "0.1.0"
