"""aia: Attention Interaction Alignment for unified multimodal models.

Measure the layer-wise cross-modal interaction intensity of a transformers model
exactly (fused attention kernels, no attention maps), turn it into the AIA loss,
and fine-tune with it. Layers of the package, each importing only those before it (README's
Layout table; ``tests/test_layers.py`` checks it): the helpers ``errors``, ``jsonl``, ``locks``,
``fields`` -> ``core`` (tensors) -> ``attention`` (the transformers integration) ->
``data`` (records) -> ``adapters`` (model families) -> ``options`` -> ``measure``
(profiling) -> ``targets`` -> ``training`` -> ``measure.run`` (profiling with a run config),
``evaluate``, ``plots`` -> ``demo``, ``testing``, ``cli``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aia._lazy import lazy_names
from aia.errors import ConfigError, DataError, ImageError, InputError

if TYPE_CHECKING:
    from aia.attention import Capture, capture
    from aia.core.intensity import span_mass, span_valid
    from aia.core.loss import aia_loss, huber, total_loss
    from aia.core.spans import TASKS, Role, SpanConfig, generation_spans, task_spans, understanding_spans

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


# imported at first use: ``import aia`` (and with it ``aia --help``) loads neither torch nor transformers
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "aia.attention": ("Capture", "capture"),
        "aia.core.intensity": ("span_mass", "span_valid"),
        "aia.core.loss": ("aia_loss", "huber", "total_loss"),
        "aia.core.spans": ("TASKS", "Role", "SpanConfig", "generation_spans", "task_spans", "understanding_spans"),
    },
)
