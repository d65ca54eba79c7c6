"""transformers integration: per-layer interaction intensity from an ordinary forward pass.

``aia.capture(model)`` switches the *language model's* attention to an implementation
registered with transformers' ``AttentionInterface`` and ``AttentionMaskInterface``
(the mask function is transformers' own ``sdpa_mask`` / ``flex_attention_mask``, so
padded batches keep their masks). Inside the context a forward pass that carries the
span masks as keyword arguments::

    with aia.capture(model) as cap:
        out = model(**inputs, aia_query_mask=Q, aia_key_mask=K)   # bool [B, T]
        cap.intensity   # fp32 [num_layers, B], differentiable

returns the same outputs as plain SDPA and records, per decoder layer, the intensity
of paper Eq. 1 for every sample. The attention output and the statistic come from one
fused kernel call (see :mod:`aia.core.intensity`); no attention map is stored. Without the
span kwargs (vision towers, cached decoding steps, ``generate``) the function is plain
SDPA / FlexAttention. On exit the previous implementation is restored. The two
implementations are registered with transformers when the first capture is made, so
importing this module imports no transformers.

Results are keyed by layer index, so non-reentrant activation checkpointing, which
calls the attention function again during backward, overwrites a layer's entry with
an identical recomputation. With activation checkpointing, call ``backward`` *inside*
the ``with`` block: the recomputation must find the same attention implementation.
Reentrant checkpointing runs the forward without autograd and cannot give a
differentiable statistic: it is refused with a message.
"""

from __future__ import annotations

import functools
import warnings
import weakref

import torch
from torch import nn

from aia.core.intensity import (
    attention_with_mass,
    flex_attention_with_mass,
    flex_available,
    flex_verified,
    reduce_flex_mass,
    reduce_mass,
    span_valid,
)

__all__ = ["ATTN_FLEX", "ATTN_SDPA", "Capture", "capture", "language_model_config"]

ATTN_SDPA = "aia_sdpa"
ATTN_FLEX = "aia_flex"

# id(attention module config) -> active Capture. Entries live exactly as long as a `with capture(...)` block.
_ACTIVE: dict[int, Capture] = {}


def _check_masks(query: torch.Tensor, key: torch.Tensor, qmask: torch.Tensor, kmask: torch.Tensor) -> None:
    b, tk = key.shape[0], key.shape[2]
    for name, m in (("aia_query_mask", qmask), ("aia_key_mask", kmask)):
        if m.dtype != torch.bool or m.shape != (b, tk):
            raise ValueError(
                f"{name} must be a bool tensor [batch, seq_len] = {(b, tk)} over the language model's positions, "
                f"got {m.dtype} {tuple(m.shape)}"
            )


def _aia_sdpa_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    is_causal: bool | None = None,
    aia_query_mask: torch.Tensor | None = None,
    aia_key_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    cap = _ACTIVE.get(id(getattr(module, "config", None)))
    unsupported = kwargs.get("position_bias") is not None or kwargs.get("cache") is not None
    if cap is None or aia_query_mask is None or aia_key_mask is None or unsupported:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal, **kwargs
        )
    if kwargs.get("softcap") is not None:
        raise ValueError("aia: attention softcapping is not supported by the SDPA route")
    _check_masks(query, key, aia_query_mask, aia_key_mask)
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    tq = query.shape[2]
    qmask, kmask = aia_query_mask, aia_key_mask
    if causal and attention_mask is None and tq > 1 and key.shape[2] > tq:
        # Prefill into an empty static cache: the slots past tq are empty (as transformers' sdpa crops them).
        key, value, kmask = key[:, :, :tq], value[:, :, :tq], kmask[:, :tq]
        qmask = qmask[:, :tq]
    out, mass = attention_with_mass(query, key, value, kmask, attention_mask, scaling, causal, dropout)
    valid = cap._span_valid(qmask[:, -1] if tq == 1 else qmask[:, -tq:], kmask, qmask)  # [B]
    if tq == 1:  # a decoding step: one query row, so the mean over the query set is that row's
        per_sample = mass[:, :, 0].to(torch.promote_types(mass.dtype, torch.float32)).mean(1)
        per_sample = torch.where(valid, per_sample, torch.zeros_like(per_sample))  # = reduce_mass, fewer ops
    else:
        per_sample = reduce_mass(mass, qmask, kmask)
    cap._record(module.layer_idx, per_sample, valid)
    return out.transpose(1, 2).contiguous(), None


def _aia_flex_attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask,
    scaling: float | None = None,
    aia_query_mask: torch.Tensor | None = None,
    aia_key_mask: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    cap = _ACTIVE.get(id(getattr(module, "config", None)))
    special = any(kwargs.get(k) is not None for k in ("softcap", "s_aux", "position_bias"))
    if cap is None or aia_query_mask is None or aia_key_mask is None or special:
        from transformers.integrations.flex_attention import flex_attention_forward

        return flex_attention_forward(module, query, key, value, attention_mask, scaling=scaling, **kwargs)
    if kwargs.get("dropout", 0.0) > 0:
        raise ValueError("aia: the FlexAttention route does not support attention dropout; use method='sdpa'")
    _check_masks(query, key, aia_query_mask, aia_key_mask)
    if attention_mask is not None and not hasattr(attention_mask, "mask_mod"):
        raise TypeError("aia: the FlexAttention route expects a BlockMask from transformers' flex_attention_mask")
    out, mass = flex_attention_with_mass(query, key, value, aia_query_mask, aia_key_mask, attention_mask, None, scaling)
    qmask = aia_query_mask[:, -query.shape[2] :]
    cap._record(module.layer_idx, reduce_flex_mass(mass, qmask, aia_key_mask), span_valid(qmask, aia_key_mask))
    return out.transpose(1, 2).contiguous(), None


@functools.cache
def _register() -> None:
    """Register both implementations with transformers (once, at the first capture).

    The mask functions are transformers' own, so padded batches keep their masks."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flex_attention_mask, sdpa_mask

    AttentionInterface.register(ATTN_SDPA, _aia_sdpa_attention)
    AttentionMaskInterface.register(ATTN_SDPA, sdpa_mask)
    AttentionInterface.register(ATTN_FLEX, _aia_flex_attention)
    AttentionMaskInterface.register(ATTN_FLEX, flex_attention_mask)


def language_model_config(model: nn.Module):
    """The config of the language model inside ``model`` (``text_config`` if it has one)."""
    config = model.config
    text = getattr(config, "text_config", None) if "text_config" in getattr(config, "sub_configs", {}) else None
    return text if text is not None else config


def _implementation_request(model: nn.Module, name: str) -> dict:
    """``set_attn_implementation`` argument that sets ``name`` on the language model only."""
    config = model.config
    if language_model_config(model) is not config:
        return {"text_config": name}
    request = {"": name}
    for key in getattr(config, "sub_configs", {}):  # keep the other sub-models (VQ, vision) as they are
        sub = getattr(config, key, None)
        if sub is not None:
            request[key] = sub._attn_implementation
    return request


def _reentrant_checkpointing(model: nn.Module) -> bool:
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) is True:
            fn = getattr(module, "_gradient_checkpointing_func", None)
            if fn is None:
                continue
            keywords = getattr(fn, "keywords", None) or {}
            if keywords.get("use_reentrant", True) is not False:
                return True
    return False


_REENTRANT_MESSAGE = (
    "aia.capture needs non-reentrant activation checkpointing (reentrant checkpointing runs the forward "
    "without autograd, so the intensity could not be differentiated). Enable it with "
    "model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={'use_reentrant': False})."
)


class Capture:
    """Per-layer intensities of the last forward pass inside ``aia.capture``.

    Attributes:
        num_layers: decoder layers of the language model.
        method: ``"sdpa"`` or ``"flex"``.
    """

    def __init__(self, model: nn.Module, method: str = "auto"):
        if method not in ("auto", "sdpa", "flex"):
            raise ValueError(f"method must be 'auto', 'sdpa' or 'flex', got {method!r}")
        _register()
        device = next(model.parameters()).device
        if method == "flex" and not flex_available(device):
            warnings.warn(
                f"method='flex' on {device}: FlexAttention runs unfused there and has no backward; "
                "use it for checks only (method='sdpa' is the fast route off CUDA)",
                stacklevel=2,
            )
        self.model = model
        self.lm_config = language_model_config(model)
        if method == "flex" and flex_available(device):
            head_dim = getattr(self.lm_config, "head_dim", None) or (
                self.lm_config.hidden_size // self.lm_config.num_attention_heads
            )
            if not flex_verified(device, next(model.parameters()).dtype, int(head_dim)):
                method = "sdpa"  # the self-check warned, naming the case
        self.method = "sdpa" if method == "auto" else method
        self.num_layers = int(self.lm_config.num_hidden_layers)
        self._layers: dict[int, torch.Tensor] = {}
        self._valid: torch.Tensor | None = None
        self._valid_key: tuple | None = None  # the masks behind _valid_value (_span_valid)
        self._valid_value: torch.Tensor | None = None
        self._previous: str | None = None
        self._config_ids: list[int] = []

    # -- context manager -------------------------------------------------------------------
    def __enter__(self) -> Capture:
        if _reentrant_checkpointing(self.model):
            raise RuntimeError(_REENTRANT_MESSAGE)
        self._previous = self.lm_config._attn_implementation
        name = ATTN_FLEX if self.method == "flex" else ATTN_SDPA
        self.model.set_attn_implementation(_implementation_request(self.model, name))
        configs = {
            id(m.config): m.config
            for m in self.model.modules()
            if hasattr(m, "layer_idx") and getattr(getattr(m, "config", None), "_attn_implementation", None) == name
        }
        if not configs:
            self.model.set_attn_implementation(_implementation_request(self.model, self._previous))
            raise RuntimeError(f"aia.capture found no attention layers of the language model in {type(self.model)}")
        busy = [i for i in configs if i in _ACTIVE]
        if busy:
            self.model.set_attn_implementation(_implementation_request(self.model, self._previous))
            raise RuntimeError("aia.capture is already active on this model; nesting is not supported")
        for i in configs:
            _ACTIVE[i] = self
        self._config_ids = list(configs)
        return self

    def __exit__(self, *exc) -> None:
        for i in self._config_ids:
            _ACTIVE.pop(i, None)
        self._config_ids = []
        self.model.set_attn_implementation(_implementation_request(self.model, self._previous))

    # -- results -----------------------------------------------------------------------------
    def _span_valid(self, qmask: torch.Tensor, kmask: torch.Tensor, whole: torch.Tensor) -> torch.Tensor:
        """:func:`span_valid` of the call's query rows, kept for the mask objects of the forward pass
        (every layer gets the same ``whole`` query mask and key mask): computed once per forward."""
        held = self._valid_key
        versions = (whole._version, kmask._version, qmask.shape)
        if held is None or held[0]() is not whole or held[1]() is not kmask or held[2] != versions:
            self._valid_value = span_valid(qmask if qmask.dim() == 2 else qmask[:, None], kmask)
            self._valid_key = (weakref.ref(whole), weakref.ref(kmask), versions)  # weak: a freed mask never matches
        return self._valid_value

    def _record(self, layer_idx: int, per_sample: torch.Tensor, valid: torch.Tensor) -> None:
        if not torch.is_grad_enabled() and self.model.training and _reentrant_checkpointing(self.model):
            raise RuntimeError(_REENTRANT_MESSAGE)
        self._layers[int(layer_idx)] = per_sample
        self._valid = valid

    @property
    def intensity(self) -> torch.Tensor:
        """fp32 ``[num_layers, B]``: intensity of every layer and sample (0 for excluded samples)."""
        missing = [i for i in range(self.num_layers) if i not in self._layers]
        if missing:
            raise RuntimeError(
                f"no intensity recorded for layers {missing[:8]}{'...' if len(missing) > 8 else ''}: run a forward "
                "pass inside the capture with aia_query_mask= and aia_key_mask= keyword arguments"
            )
        return torch.stack([self._layers[i] for i in range(self.num_layers)])

    @property
    def valid(self) -> torch.Tensor:
        """bool ``[B]``: samples with non-empty query and key sets (the others carry no AIA term)."""
        if self._valid is None:
            raise RuntimeError("no forward pass with AIA span masks has run inside this capture")
        return self._valid


def capture(model: nn.Module, method: str = "auto") -> Capture:
    """Context manager measuring per-layer cross-modal interaction intensity of ``model``'s language model.

    Args:
        model: a transformers ``PreTrainedModel`` (a unified multimodal model or a plain causal LM).
        method: ``"sdpa"`` (indicator column in the fused SDPA kernel; CPU and GPU), ``"flex"``
            (FlexAttention's differentiable LSE; CUDA) or ``"auto"`` (``"sdpa"``).

    Returns:
        A :class:`Capture`; use it with ``with``.
    """
    return Capture(model, method)
