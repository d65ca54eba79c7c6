"""The math of AIA, on tensors only: span masks from token roles, the exact span-attention
mass of fused attention kernels, and the loss. Nothing here imports transformers or any
config, trainer or CLI code."""

from typing import TYPE_CHECKING

from aia._lazy import lazy_names

if TYPE_CHECKING:
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

# imported at first use: ``import aia.core.spans`` (the CLI's flags) does not load torch
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "aia.core.intensity": (
            "METHODS",
            "attention_with_mass",
            "mass_reference",
            "reduce_mass",
            "span_mass",
            "span_valid",
        ),
        "aia.core.loss": ("LOSS_MODES", "aia_loss", "huber", "total_loss"),
        "aia.core.spans": (
            "TASKS",
            "Role",
            "SpanConfig",
            "check_task",
            "generation_spans",
            "task_spans",
            "understanding_spans",
        ),
    },
)
