"""Model-family adapters: from a data record to the language model's sequence, its labels
and its token roles, and the training forward that hands the AIA span masks to the
language model's attention.

One adapter per family, all with the shape of :class:`~aia.adapters.base.Adapter`;
:func:`get_adapter` picks it from the model's class name.
"""

from __future__ import annotations

from torch import nn

from ..spans import SpanConfig
from .base import IGNORE_INDEX, Adapter, AdapterOutput, Batch, Example, unwrap
from .chameleon import ChameleonAdapter
from .emu3 import Emu3Adapter
from .janus import JanusAdapter
from .reference import ReferenceAdapter
from .vqlm import VQLMAdapter

__all__ = [
    "ADAPTERS",
    "IGNORE_INDEX",
    "Adapter",
    "AdapterOutput",
    "Batch",
    "ChameleonAdapter",
    "Emu3Adapter",
    "Example",
    "JanusAdapter",
    "ReferenceAdapter",
    "VQLMAdapter",
    "get_adapter",
]

#: transformers model class name -> adapter class
ADAPTERS: dict[str, type] = {
    "JanusForConditionalGeneration": JanusAdapter,
    "Emu3ForConditionalGeneration": Emu3Adapter,
    "ChameleonForConditionalGeneration": ChameleonAdapter,
    "Qwen2VLForConditionalGeneration": ReferenceAdapter,
    "Qwen2_5_VLForConditionalGeneration": ReferenceAdapter,
    "Qwen3VLForConditionalGeneration": ReferenceAdapter,
    "LlavaForConditionalGeneration": ReferenceAdapter,
    "LlavaNextForConditionalGeneration": ReferenceAdapter,
    "LlamaForCausalLM": VQLMAdapter,  # needs a processor with an image tokenizer (aia.digits)
}


def get_adapter(
    model: nn.Module, processor, span_config: SpanConfig = SpanConfig(), padding_side: str = "right"
) -> Adapter:
    """The adapter for ``model`` (a transformers model, possibly PEFT-wrapped).

    Args:
        model: the unified model; only its config is kept.
        processor: the model's processor (tokenizer + image processor).
        span_config: choices of the AIA query/key sets.
        padding_side: ``"right"`` or ``"left"``.
    """
    name = type(unwrap(model)).__name__
    if name not in ADAPTERS:
        raise ValueError(f"no adapter for {name}; supported: {', '.join(ADAPTERS)}")
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    return ADAPTERS[name](model, processor, span_config=span_config, padding_side=padding_side)
