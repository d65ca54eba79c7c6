"""Model-family adapters: from a data record to the language model's sequence, its labels
and its token roles, and the training forward that hands the AIA span masks to the
language model's attention.

One adapter per family, all with the shape of :class:`~aia.adapters.base.Adapter`;
:func:`get_adapter` picks it from the model's class name, :func:`load_model` loads a saved
model with its processor. A new family is one new file here plus its line in
:data:`ADAPTERS` (or a :func:`register_adapter` call from the package that defines it,
as the digits demo does for its VQ-LM family).
"""

from __future__ import annotations

import inspect

from torch import nn

from aia.adapters.base import IGNORE_INDEX, Adapter, AdapterOutput, Batch, DecodeRunner, Example, unwrap
from aia.adapters.chameleon import ChameleonAdapter
from aia.adapters.emu3 import Emu3Adapter
from aia.adapters.janus import JanusAdapter
from aia.adapters.loading import load_model
from aia.adapters.prompts import PromptConfig
from aia.adapters.understanding import UnderstandingAdapter
from aia.core.spans import SpanConfig
from aia.errors import InputError

__all__ = [
    "ADAPTERS",
    "IGNORE_INDEX",
    "Adapter",
    "AdapterOutput",
    "Batch",
    "ChameleonAdapter",
    "DecodeRunner",
    "Emu3Adapter",
    "Example",
    "JanusAdapter",
    "PromptConfig",
    "UnderstandingAdapter",
    "adapter_class",
    "get_adapter",
    "load_model",
    "register_adapter",
    "unwrap",
]

#: transformers model class name -> adapter class
ADAPTERS: dict[str, type] = {
    "JanusForConditionalGeneration": JanusAdapter,
    "Emu3ForConditionalGeneration": Emu3Adapter,
    "ChameleonForConditionalGeneration": ChameleonAdapter,
    "Qwen2VLForConditionalGeneration": UnderstandingAdapter,
    "Qwen2_5_VLForConditionalGeneration": UnderstandingAdapter,
    "Qwen3VLForConditionalGeneration": UnderstandingAdapter,
    "LlavaForConditionalGeneration": UnderstandingAdapter,
    "LlavaNextForConditionalGeneration": UnderstandingAdapter,
}


def register_adapter(model_class: str, adapter: type) -> None:
    """Use ``adapter`` for models of the transformers class named ``model_class``."""
    ADAPTERS[model_class] = adapter


def adapter_class(model_class: str) -> type:
    """The adapter class for the transformers model class named ``model_class``.

    Raises:
        InputError: no adapter handles that class; the message lists the supported ones.
    """
    if model_class not in ADAPTERS:
        raise InputError(f"no adapter for {model_class}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[model_class]


def get_adapter(
    model: nn.Module,
    processor,
    span_config: SpanConfig = SpanConfig(),
    padding_side: str = "right",
    prompt_config: PromptConfig | None = None,
) -> Adapter:
    """The adapter for ``model`` (a transformers model, possibly PEFT-wrapped).

    Args:
        model: the unified model; only its config is kept.
        processor: the model's processor (tokenizer + image processor).
        span_config: choices of the AIA query/key sets.
        padding_side: ``"right"`` or ``"left"``.
        prompt_config: prompt choices where the sources differ (None: the family's defaults),
            for the adapters that take one (Janus, Emu3, Chameleon); any other adapter accepts
            only None or the all-default ``PromptConfig()``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    cls = adapter_class(type(unwrap(model)).__name__)
    extra = {}
    if prompt_config is not None:
        if "prompt_config" in inspect.signature(cls).parameters:
            extra["prompt_config"] = prompt_config
        elif prompt_config != PromptConfig():
            raise InputError(f"{cls.__name__} takes no prompt choices; got {prompt_config}")
    return cls(model, processor, span_config=span_config, padding_side=padding_side, **extra)
