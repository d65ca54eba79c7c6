"""Model-family adapters: from a data record to the language model's sequence, its labels
and its token roles, and the training forward that hands the AIA span masks to the
language model's attention.

:class:`~aia.adapters.base.AdapterBase` is the contract: every hook and per-family default
the rest of the package uses, declared with its default. One subclass per family;
:func:`get_adapter` picks it from the model's class (and, for a family registered ``marked``,
the :data:`FAMILY_MARKER` in its config), :func:`load_model` loads a saved model with its
processor. A new family is one new file: its subclass, plus its line in :data:`ADAPTERS`
or a :func:`register_adapter` call from the package that defines it (as the digits demo
does for its VQ-LM family).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aia._lazy import lazy_names

if TYPE_CHECKING:
    from aia.adapters.base import IGNORE_INDEX, AdapterBase, AdapterOutput, Batch, DecodeRunner, Example, unwrap
    from aia.adapters.chameleon import ChameleonAdapter
    from aia.adapters.emu3 import Emu3Adapter
    from aia.adapters.glm_image import GlmImageAdapter
    from aia.adapters.janus import JanusAdapter
    from aia.adapters.loading import (
        ADAPTERS,
        FAMILY_MARKER,
        adapter_class,
        adapter_class_of,
        get_adapter,
        load_model,
        register_adapter,
    )
    from aia.adapters.prompts import PromptConfig
    from aia.adapters.understanding import UnderstandingAdapter

__all__ = [
    "ADAPTERS",
    "FAMILY_MARKER",
    "IGNORE_INDEX",
    "AdapterBase",
    "AdapterOutput",
    "Batch",
    "ChameleonAdapter",
    "DecodeRunner",
    "Emu3Adapter",
    "Example",
    "GlmImageAdapter",
    "JanusAdapter",
    "PromptConfig",
    "UnderstandingAdapter",
    "adapter_class",
    "adapter_class_of",
    "get_adapter",
    "load_model",
    "register_adapter",
    "unwrap",
]

# imported at first use: ``import aia.adapters.prompts`` (the CLI's flags) loads neither torch nor transformers
__getattr__, __dir__ = lazy_names(
    __name__,
    {
        "aia.adapters.base": ("IGNORE_INDEX", "AdapterBase", "AdapterOutput", "Batch", "DecodeRunner", "Example",
                              "unwrap"),
        "aia.adapters.chameleon": ("ChameleonAdapter",),
        "aia.adapters.emu3": ("Emu3Adapter",),
        "aia.adapters.glm_image": ("GlmImageAdapter",),
        "aia.adapters.janus": ("JanusAdapter",),
        "aia.adapters.loading": ("ADAPTERS", "FAMILY_MARKER", "adapter_class", "adapter_class_of", "get_adapter",
                                 "load_model", "register_adapter"),
        "aia.adapters.prompts": ("PromptConfig",),
        "aia.adapters.understanding": ("UnderstandingAdapter",),
    },
)
