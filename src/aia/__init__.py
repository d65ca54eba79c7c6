"""aia: Attention Interaction Alignment for unified multimodal models.

Measure the layer-wise cross-modal interaction intensity of a transformers model
exactly (fused attention kernels, no attention maps), turn it into the AIA loss,
and fine-tune with it. Layers of the package, each depending only on those before it:
``core`` (tensors) <- ``attention`` / ``adapters`` (transformers models) <- ``data``,
``targets``, ``measure``, ``training`` <- ``plots``, ``demo``, ``cli``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from aia.errors import ConfigError, DataError, ImageError, InputError

if TYPE_CHECKING:
    from aia.attention import Capture, capture
    from aia.core.intensity import span_mass, span_valid
    from aia.core.loss import aia_loss, huber, total_loss
    from aia.core.spans import TASKS, Role, SpanConfig, generation_spans, task_spans, understanding_spans

# Public names imported on first use, so that ``import aia`` (and with it ``aia --help``)
# loads neither torch nor transformers: {name: the module that defines it}.
_LAZY = {
    "Capture": "aia.attention",
    "capture": "aia.attention",
    "span_mass": "aia.core.intensity",
    "span_valid": "aia.core.intensity",
    "aia_loss": "aia.core.loss",
    "huber": "aia.core.loss",
    "total_loss": "aia.core.loss",
    "TASKS": "aia.core.spans",
    "Role": "aia.core.spans",
    "SpanConfig": "aia.core.spans",
    "generation_spans": "aia.core.spans",
    "task_spans": "aia.core.spans",
    "understanding_spans": "aia.core.spans",
}

__all__ = [
    "TASKS",
    "Capture",
    "ConfigError",
    "DataError",
    "ImageError",
    "InputError",
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

__version__ = "0.2.0"


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'aia' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
