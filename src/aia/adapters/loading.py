"""Loading a saved model and its processor, offline, with the adapter of its family.

The model class comes from ``config.json``'s ``architectures``; the processor is read by
the family's adapter (:meth:`load_processor`), which owns its loading quirks.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError

from aia.errors import InputError

__all__ = ["WEIGHT_FILES", "load_model"]

#: files one of which holds a saved model's weights (sharded checkpoints have an index)
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


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

    from aia.adapters import adapter_class

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise InputError("no config.json; expected a directory written by save_pretrained", path=model_dir)
    try:
        architectures = json.loads(config_path.read_text()).get("architectures") or []
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=config_path, record=f"line {e.lineno}") from None
    if not architectures or not hasattr(transformers, architectures[0]):
        raise InputError(f"names no transformers model class: {architectures}", path=config_path,
                         field="architectures")
    adapter = adapter_class(architectures[0])
    if not any((model_dir / name).is_file() for name in WEIGHT_FILES):
        raise InputError(f"no weights ({' or '.join(WEIGHT_FILES)}); was the save interrupted?", path=model_dir)
    try:  # the processor first: it is quick, and a missing one should not cost a model load
        processor = adapter.load_processor(model_dir)
    except (OSError, ValueError, TypeError) as err:
        raise InputError(f"cannot load the processor saved with the model: {_first_line(err)}", path=model_dir) from None
    cls = getattr(transformers, architectures[0])
    kwargs = {"dtype": dtype} if dtype is not None else {}
    try:
        model = cls.from_pretrained(model_dir, attn_implementation="sdpa", **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:  # truncated or corrupt weight files
        raise InputError(f"cannot load the weights: {_first_line(err)}", path=model_dir) from None
    return model.to(device).eval(), processor


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
