"""Which adapter serves a model, and loading a saved model with its processor, offline.

A family handles one or more transformers model classes (:data:`ADAPTERS`, extended by
:func:`register_adapter`). A family built on a generic class (the digits demo's VQ-LM on
``LlamaForCausalLM``) is registered ``marked``: it serves only the models whose config carries
its name under :data:`FAMILY_MARKER` (the key the family writes into the configs of the models
it builds, so ``save_pretrained`` keeps it in ``config.json``), never every model of that class.

For a saved model the class comes from ``config.json``'s ``architectures`` (and the marker from
the same file); the processor is read by the family's adapter
(:meth:`~aia.adapters.base.AdapterBase.load_processor`), which owns its loading quirks.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from aia.adapters.base import AdapterBase, unwrap
from aia.adapters.chameleon import ChameleonAdapter
from aia.adapters.emu3 import Emu3Adapter
from aia.adapters.glm_image import GlmImageAdapter
from aia.adapters.janus import JanusAdapter
from aia.adapters.prompts import PromptConfig
from aia.adapters.understanding import UnderstandingAdapter
from aia.core.spans import SpanConfig
from aia.errors import InputError

__all__ = [
    "ADAPTERS",
    "FAMILY_MARKER",
    "WEIGHT_FILES",
    "adapter_class",
    "adapter_class_of",
    "check_task",
    "get_adapter",
    "load_model",
    "register_adapter",
    "saved_adapter_class",
]

#: files one of which holds a saved model's weights (sharded checkpoints have an index)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")

#: the model-config key (a ``config.json`` key once saved) naming a marked family
FAMILY_MARKER = "aia_family"

#: transformers model class name -> adapter class
ADAPTERS: dict[str, type[AdapterBase]] = {
    "JanusForConditionalGeneration": JanusAdapter,
    "Emu3ForConditionalGeneration": Emu3Adapter,
    "ChameleonForConditionalGeneration": ChameleonAdapter,
    "GlmImageForConditionalGeneration": GlmImageAdapter,
    "Qwen2VLForConditionalGeneration": UnderstandingAdapter,
    "Qwen2_5_VLForConditionalGeneration": UnderstandingAdapter,
    "Qwen3VLForConditionalGeneration": UnderstandingAdapter,
    "LlavaForConditionalGeneration": UnderstandingAdapter,
    "LlavaNextForConditionalGeneration": UnderstandingAdapter,
}
#: (model class name, family) -> adapter class of the families registered ``marked``
_MARKED: dict[tuple[str, str], type[AdapterBase]] = {}


def register_adapter(model_class: str, adapter: type[AdapterBase], *, marked: bool = False) -> None:
    """Use ``adapter`` (an :class:`~aia.adapters.base.AdapterBase` subclass) for models of the
    transformers class named ``model_class``; ``marked``: only for those whose config says
    ``{FAMILY_MARKER}: adapter.family`` (a family on a generic class such as ``LlamaForCausalLM``)."""
    if not (isinstance(adapter, type) and issubclass(adapter, AdapterBase)):
        raise TypeError(f"an adapter is an AdapterBase subclass, got {adapter!r}")
    if marked:
        _MARKED[(model_class, adapter.family)] = adapter
    else:
        ADAPTERS[model_class] = adapter


def adapter_class(model_class: str, marker: str | None = None) -> type[AdapterBase]:
    """The adapter class for a model of the transformers class named ``model_class`` whose config
    holds ``marker`` under :data:`FAMILY_MARKER` (None: no marker).

    Raises:
        InputError: no adapter handles that class (the message lists the supported ones), or the
            marker names a family that is not registered for it.
    """
    if marker is not None:
        if (model_class, marker) in _MARKED:
            return _MARKED[(model_class, marker)]
        if model_class not in ADAPTERS or ADAPTERS[model_class].family != marker:
            raise InputError(f"{model_class} marked as family {marker!r} ({FAMILY_MARKER}), whose adapter is not "
                             "registered; import the package that registers it")
    if model_class not in ADAPTERS:
        raise InputError(f"no adapter for {model_class}; supported: {', '.join(ADAPTERS)}")
    return ADAPTERS[model_class]


def adapter_class_of(model: nn.Module) -> type[AdapterBase]:
    """The adapter class for ``model`` (a transformers model, possibly PEFT-wrapped): its class and
    its config's :data:`FAMILY_MARKER`."""
    base = unwrap(model)
    return adapter_class(type(base).__name__, getattr(getattr(base, "config", None), FAMILY_MARKER, None))


def get_adapter(
    model: nn.Module,
    processor,
    span_config: SpanConfig = SpanConfig(),
    padding_side: str = "right",
    prompt_config: PromptConfig | None = None,
) -> AdapterBase:
    """The adapter for ``model`` (a transformers model, possibly PEFT-wrapped).

    Args:
        model: the unified model; only its config is kept.
        processor: the model's processor (tokenizer + image processor).
        span_config: choices of the AIA query/key sets.
        padding_side: ``"right"`` or ``"left"``.
        prompt_config: prompt choices where the sources differ (None: the family's defaults);
            a family without prompt choices accepts only None or the all-default ``PromptConfig()``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    cls = adapter_class_of(model)
    return cls(model, processor, span_config=span_config, padding_side=padding_side, prompt_config=prompt_config)


def load_model(model_dir: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a saved unified (or understanding-only) model and its processor from a directory.

    Args:
        model_dir: a directory written by ``save_pretrained`` (model and processor).
        dtype: weights dtype (default: as saved).
        device: where to put the model.

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``.

    Raises:
        InputError: the directory holds no ``config.json``, or names a model class without an adapter.
    """
    import transformers

    model_dir = Path(model_dir)
    adapter, architecture = _saved_adapter(model_dir)
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise InputError(f"no weights ({' or '.join(WEIGHT_FILES)}); was the save interrupted?", path=model_dir)
    try:  # the processor first: it is quick, and a missing one should not cost a model load
        processor = adapter.load_processor(model_dir)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"cannot load the processor saved with the model: {_first_line(err)}", path=model_dir) from None
    cls = getattr(transformers, architecture)
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model = cls.from_pretrained(model_dir, attn_implementation="sdpa", **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # truncated or corrupt weight files
        raise InputError(f"cannot load the weights: {_first_line(err)}", path=model_dir) from None
    except pickle.UnpicklingError:  # torch's weights-only loader met other objects than tensors: not run
        raise InputError("cannot load the weights: a .bin weights file holds other objects than tensors and "
                         "numbers (refused, not run); save the model as safetensors", path=model_dir) from None
    return model.to(device).eval(), processor


def saved_adapter_class(model_dir: str | Path) -> type[AdapterBase]:
    """The adapter class of the model saved in ``model_dir``, read from its ``config.json`` alone (no weights
    loaded): what it can do (``tasks``, ``image_defaults``...) is known before the model loads.

    Raises:
        InputError: as :func:`load_model` for a folder without a usable ``config.json``.
    """
    return _saved_adapter(Path(model_dir))[0]


def check_task(model_dir: str | Path, task: str) -> None:
    """An :class:`~aia.errors.InputError` naming the model class when the family saved in ``model_dir`` does not
    take ``task`` (a generation-only reference asked for understanding...), before the model loads."""
    cls, architecture = _saved_adapter(Path(model_dir))
    if task not in cls.tasks:
        raise InputError(cls.task_refusal(task, architecture), field="task")


def _saved_adapter(model_dir: Path) -> tuple[type[AdapterBase], str]:
    """``(adapter class, model class name)`` from ``model_dir/config.json``."""
    import transformers

    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InputError("no config.json; expected a directory written by save_pretrained", path=model_dir)
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=config_path, record=f"line {e.lineno}") from None
    architectures = config.get("architectures") or []
    if not architectures or not hasattr(transformers, architectures[0]):
        raise InputError(f"names no transformers model class: {architectures}", path=config_path,
                         field="architectures")
    try:
        return adapter_class(architectures[0], config.get(FAMILY_MARKER)), architectures[0]
    except InputError as err:
        raise InputError(err.reason, path=config_path) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
