"""The math of AIA, on tensors only: span masks from token roles, the exact span-attention
mass of fused attention kernels, and the loss. Nothing here imports transformers or any
config, trainer or CLI code."""

from aia.core.intensity import METHODS, attention_with_mass, mass_reference, reduce_mass, span_mass, span_valid
from aia.core.loss import LOSS_MODES, aia_loss, huber, total_loss
from aia.core.spans import TASKS, Role, SpanConfig, check_task, generation_spans, task_spans, understanding_spans

__all__ = [
    "LOSS_MODES",
    "METHODS",
    "TASKS",
    "Role",
    "SpanConfig",
    "aia_loss",
    "attention_with_mass",
    "check_task",
    "generation_spans",
    "huber",
    "mass_reference",
    "reduce_mass",
    "span_mass",
    "span_valid",
    "task_spans",
    "total_loss",
    "understanding_spans",
]
