"""The intensity engine: softmax mass that query rows put on a key set, exactly, without T x T maps.

Paper Eq. 1 for one layer and one sample::

    I = 1/(H |Q|) * sum_h sum_{q in Q} sum_{k in K} A(h, q, k)

``mass[h, q] = sum_{k in K} A(h, q, k)`` is what every route below computes; the
per-sample statistic is its mean over heads and over the query set.

Routes (all exact, all differentiable):

* ``reference``: materialises the probabilities. Memory ``O(B H T^2)``; for tests.
* ``sdpa``: the *indicator column* trick. ``sum_k A[q, k] * 1[k in K]`` is the
  attention output of a value column holding ``1[k in K]``; appending that column
  to ``V`` (and zero columns to ``Q`` and ``K`` so all widths match) makes the fused
  SDPA kernel return the mass next to the ordinary output, and the ordinary SDPA
  backward differentiates it. Works on CPU and GPU with any SDPA backend.
* ``flex``: FlexAttention returns the log-sum-exp over all keys, differentiably
  (compiled Triton kernels on CUDA; elsewhere flex's eager forward only, no backward). The log-sum-exp over the small key set is a
  ``|Q| x |K|`` matmul on gathered rows, and ``mass = exp(LSE_K - LSE_all)``.

Everything here is pure tensors in, tensors out.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

__all__ = [
    "METHODS",
    "attention_with_mass",
    "flex_attention_with_mass",
    "flex_available",
    "mass_reference",
    "reduce_mass",
    "span_mass",
    "span_valid",
]

METHODS = ("auto", "reference", "sdpa", "flex")
# Head-dim multiple of the padded width: CUDA's fused kernels want multiples of 8; the CPU
# flash kernel runs d + 1 as fast as d + 8 and every padded column costs activation memory.
_PAD_MULTIPLE = {"cuda": 8}


def span_valid(query_mask: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Samples that carry the statistic: non-empty query set and non-empty key set. Bool ``[B]``."""
    return query_mask.any(-1) & key_mask.any(-1)


def reduce_mass(mass: torch.Tensor, query_mask: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of the mass over heads and query rows.

    Args:
        mass: ``[B, H, Tq]`` mass of each query row on the key set.
        query_mask: bool ``[B, Tq]`` (or ``[B, Tk]``, of which the last ``Tq`` are taken).
        key_mask: bool ``[B, Tk]``, only used to zero samples with an empty key set.

    Returns:
        ``[B]`` in fp32 (fp64 for fp64 inputs); 0 for samples with an empty query or key set.
    """
    dtype = torch.promote_types(mass.dtype, torch.float32)
    qmask = _last(query_mask, mass.shape[-1])  # [B, Tq]
    per_row = mass.to(dtype).mean(1)  # [B, Tq]
    count = qmask.sum(-1).to(dtype)
    valid = (count > 0) & key_mask.any(-1)
    # where, not multiply: fully masked (padding) rows may hold NaN and must not leak into the sum
    total = torch.where(qmask, per_row, torch.zeros_like(per_row)).sum(-1)
    return torch.where(valid, total / count.clamp(min=1), torch.zeros_like(total))


def _last(mask: torch.Tensor, length: int) -> torch.Tensor:
    if mask.shape[-1] < length:
        raise ValueError(f"mask covers {mask.shape[-1]} positions but the queries have {length}")
    return mask[..., mask.shape[-1] - length :]


def _expand_kv(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, Hkv, T, d]`` -> ``[B, H, T, d]`` (GQA)."""
    hkv = x.shape[1]
    if heads % hkv:
        raise ValueError(f"{heads} query heads are not a multiple of {hkv} key/value heads")
    return x if hkv == heads else x.repeat_interleave(heads // hkv, dim=1)


def _allowed(
    attention_mask: torch.Tensor | None, causal: bool, b: int, tq: int, tk: int, device: torch.device
) -> torch.Tensor | None:
    """Dense bool ``[B|1, 1, Tq, Tk]`` of allowed pairs, or ``None`` for "everything"."""
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            mask = attention_mask
        else:  # additive float mask
            mask = attention_mask > torch.finfo(attention_mask.dtype).min / 2
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        return mask
    if causal and tq > 1:
        qpos = torch.arange(tk - tq, tk, device=device)
        return (torch.arange(tk, device=device)[None, :] <= qpos[:, None])[None, None]
    return None


def mass_reference(
    query: torch.Tensor,
    key: torch.Tensor,
    key_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    causal: bool = True,
) -> torch.Tensor:
    """Mass of each query row on the key set, by materialising the probabilities.

    Args:
        query: ``[B, H, Tq, d]``; key: ``[B, Hkv, Tk, d]``; key_mask: bool ``[B, Tk]``.

    Returns:
        ``[B, H, Tq]`` in the inputs' dtype (fp32 for half inputs).
    """
    dtype = torch.float32 if query.dtype in (torch.float16, torch.bfloat16) else query.dtype
    b, h, tq, d = query.shape
    tk = key.shape[2]
    scale = scaling if scaling is not None else d**-0.5
    scores = query.to(dtype) @ _expand_kv(key, h).to(dtype).transpose(-1, -2) * scale  # [B, H, Tq, Tk]
    allowed = _allowed(attention_mask, causal, b, tq, tk, query.device)
    if allowed is not None:
        scores = scores.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # fully masked rows -> 0
    return (probs * key_mask[:, None, None, :].to(dtype)).sum(-1)


def _sdpa(query, key, value, attention_mask, scaling, causal, dropout):
    """Stock SDPA with GQA handled the way transformers does it."""
    h, hkv = query.shape[1], key.shape[1]
    kwargs = {}
    if h != hkv:
        if attention_mask is None:
            kwargs["enable_gqa"] = True
        else:
            key, value = _expand_kv(key, h), _expand_kv(value, h)
    is_causal = causal and attention_mask is None and query.shape[2] > 1
    if is_causal and key.shape[2] > query.shape[2]:
        raise ValueError("causal attention without a mask needs as many keys as queries; pass attention_mask")
    return F.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal, **kwargs
    )


def attention_with_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    key_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    causal: bool = True,
    dropout: float = 0.0,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Attention output and the key-set mass from one fused SDPA call (indicator column).

    Args:
        query: ``[B, H, Tq, d]``, post-RoPE.
        key: ``[B, Hkv, Tk, d]`` (GQA not expanded).
        value: ``[B, Hkv, Tk, dv]``, or ``None`` to compute the mass alone.
        key_mask: bool ``[B, Tk]``, the key set K.
        attention_mask: bool (True = attend) or additive float mask broadcastable to
            ``[B, H, Tq, Tk]``, already causal, as transformers' ``sdpa_mask`` builds it;
            ``None`` means plain causal (if ``causal``) or full attention.
        scaling: softmax scale; default ``d ** -0.5`` (of the unpadded ``d``).
        dropout: attention dropout probability. With dropout the mass is computed
            by a second, dropout-free call so that it stays the statistic of Eq. 1.

    Returns:
        ``(output [B, H, Tq, dv] or None, mass [B, H, Tq])``, both in the input dtype.
    """
    d = query.shape[-1]
    scale = scaling if scaling is not None else d**-0.5
    ind = key_mask[:, None, :, None].to(query.dtype).expand(key.shape[0], key.shape[1], -1, 1)  # [B, Hkv, Tk, 1]
    if value is None or dropout > 0.0:
        # Mass alone: the indicator in column 0 of a width-d value, no padding of q or k needed.
        v = F.pad(ind, (0, d - 1))
        mass = _sdpa(query, key, v, attention_mask, scale, causal, 0.0)[..., 0]
        out = None if value is None else _sdpa(query, key, value, attention_mask, scale, causal, dropout)
        return out, mass
    dv = value.shape[-1]
    multiple = _PAD_MULTIPLE.get(query.device.type, 1)
    width = -(-(max(d, dv) + 1) // multiple) * multiple
    q = F.pad(query, (0, width - d))
    k = F.pad(key, (0, width - d))
    v = torch.cat([value, ind, value.new_zeros(*value.shape[:-1], width - dv - 1)], dim=-1)
    out = _sdpa(q, k, v, attention_mask, scale, causal, 0.0)  # [B, H, Tq, width]
    return out[..., :dv], out[..., dv]


# ---------------------------------------------------------------------------------------------
# FlexAttention route (CUDA)


def flex_available(device: torch.device | str) -> bool:
    """Whether the FlexAttention route can run on ``device`` (CUDA with Triton)."""
    if torch.device(device).type != "cuda":
        return False
    try:
        from torch.nn.attention.flex_attention import AuxRequest  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _flex(compiled: bool) -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=None: training batches change length; after the first recompile the kernel
    # is traced with a symbolic length instead of being recompiled for every new length.
    return torch.compile(flex_attention) if compiled else flex_attention


def _gather_rows(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True positions per row, padded: ``(idx [B, M], valid [B, M])``."""
    count = mask.sum(-1)
    m = max(int(count.max()), 1)
    order = torch.argsort((~mask).to(torch.int8), dim=-1, stable=True)[:, :m]  # True positions first, in order
    valid = torch.arange(m, device=mask.device)[None, :] < count[:, None]
    return order, valid


def flex_attention_with_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor | None,
    query_mask: torch.Tensor,
    key_mask: torch.Tensor,
    block_mask=None,
    mask_mod: Callable | None = None,
    scaling: float | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """Attention output and the per-query-row mass via FlexAttention's differentiable LSE.

    Args:
        query: ``[B, H, Tq, d]``; key/value: ``[B, Hkv, Tk, d]``; masks bool ``[B, Tq|Tk]``.
        block_mask: FlexAttention ``BlockMask`` of the attention pattern.
        mask_mod: the mask function behind ``block_mask`` (``block_mask.mask_mod`` if omitted),
            evaluated on the gathered (q, k) pairs of the key-set LSE.

    Returns:
        ``(output [B, H, Tq, dv] or None, mass_q [B, H, Mq])`` where ``Mq`` indexes the query
        set's rows (gathered in position order, padded with zeros past each sample's count).
    """
    from torch.nn.attention.flex_attention import AuxRequest

    b, h, tq, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    scale = scaling if scaling is not None else d**-0.5
    v = value if value is not None else key.new_zeros(b, hkv, tk, d)
    # CUDA runs the compiled Triton kernels; elsewhere flex's eager reference (forward only,
    # which lets the CPU test suite check this route's values without a GPU).
    out, aux = _flex(query.device.type == "cuda")(
        query, key, v, block_mask=block_mask, scale=scale, enable_gqa=h != hkv, return_aux=AuxRequest(lse=True)
    )
    lse_all = aux.lse  # [B, H, Tq], fp32, natural log

    qmask = _last(query_mask, tq)
    qi, qv = _gather_rows(qmask)  # [B, Mq]
    ki, kv = _gather_rows(key_mask)  # [B, Mk]
    q_rows = query.gather(2, qi[:, None, :, None].expand(b, h, -1, d)).float()  # [B, H, Mq, d]
    k_rows = key.gather(2, ki[:, None, :, None].expand(b, hkv, -1, d)).float()  # [B, Hkv, Mk, d]
    scores = q_rows @ _expand_kv(k_rows, h).transpose(-1, -2) * scale  # [B, H, Mq, Mk]
    allowed = qv[:, :, None] & kv[:, None, :]  # [B, Mq, Mk]
    mod = mask_mod if mask_mod is not None else getattr(block_mask, "mask_mod", None)
    if mod is not None:
        bidx = torch.arange(b, device=query.device)[:, None, None]
        hidx = torch.zeros((), dtype=torch.long, device=query.device)
        q_pos = qi[:, :, None]  # flex's q_idx counts query rows, as qi does
        k_pos = ki[:, None, :]
        allowed = allowed & mod(bidx, hidx, q_pos, k_pos).to(torch.bool)
    scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    lse_k = torch.logsumexp(scores, dim=-1)  # [B, H, Mq], -inf where no allowed key
    lse_q = lse_all.gather(2, qi[:, None, :].expand(b, h, -1))  # [B, H, Mq]
    mass = torch.where(qv[:, None, :], torch.exp(lse_k - lse_q), torch.zeros_like(lse_k))
    return (out if value is not None else None), mass


def _flex_block_mask(attention_mask, causal, b, tq, tk, device):
    from torch.nn.attention.flex_attention import create_block_mask

    allowed = _allowed(attention_mask, causal, b, tq, tk, device)
    if allowed is None:
        return None, None
    dense = allowed[:, 0].expand(b, tq, tk).contiguous()

    def mask_mod(bi, hi, qi, ki):
        return dense[bi, qi, ki]

    return create_block_mask(mask_mod, b, None, tq, tk, device=device), mask_mod


# ---------------------------------------------------------------------------------------------
# Public entry point


def span_mass(
    query: torch.Tensor,
    key: torch.Tensor,
    query_mask: torch.Tensor,
    key_mask: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    causal: bool = True,
    method: str = "auto",
    return_valid: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-sample cross-modal interaction intensity (paper Eq. 1) of one attention layer.

    Args:
        query: ``[B, H, Tq, d]`` post-RoPE queries.
        key: ``[B, Hkv, Tk, d]`` post-RoPE keys (GQA not expanded).
        query_mask: bool ``[B, Tq]`` (or ``[B, Tk]``; queries are the last ``Tq`` positions), the query set Q.
        key_mask: bool ``[B, Tk]``, the key set K.
        attention_mask: optional padding/causal mask as transformers passes it to attention
            functions: bool (True = attend) or additive float, broadcastable to ``[B, H, Tq, Tk]``,
            causality included. ``None`` means causal (``causal=True``) or full attention.
        scaling: softmax scale, default ``d ** -0.5``.
        causal: apply a causal mask when ``attention_mask`` is ``None``.
        method: ``"reference"``, ``"sdpa"``, ``"flex"`` (CUDA; falls back to ``"sdpa"`` with a
            warning elsewhere) or ``"auto"`` (``"sdpa"``).
        return_valid: also return which samples carry the statistic.

    Returns:
        ``[B]`` in fp32 (fp64 for fp64 inputs): mean over heads and query rows of the softmax mass on K. Samples with an
        empty query or key set give 0 and are excluded (``valid[b] = False``). With
        ``return_valid``, ``(intensity, valid)``.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if query.dim() != 4 or key.dim() != 4:
        raise ValueError(f"query and key must be [B, H, T, d], got {tuple(query.shape)} and {tuple(key.shape)}")
    if query_mask.dtype != torch.bool or key_mask.dtype != torch.bool:
        raise TypeError("query_mask and key_mask must be bool tensors")
    if key_mask.shape != (key.shape[0], key.shape[2]):
        raise ValueError(f"key_mask must be [B, Tk] = {(key.shape[0], key.shape[2])}, got {tuple(key_mask.shape)}")
    if method == "flex" and not flex_available(query.device):
        warnings.warn("FlexAttention route needs CUDA; using the SDPA route", stacklevel=2)
        method = "sdpa"
    if method == "auto":
        method = "sdpa"
    b, _, tq, _ = query.shape
    valid = span_valid(_last(query_mask, tq), key_mask)
    if method == "reference":
        mass = mass_reference(query, key, key_mask, attention_mask, scaling, causal)
        out = reduce_mass(mass, query_mask, key_mask)
    elif method == "sdpa":
        _, mass = attention_with_mass(query, key, None, key_mask, attention_mask, scaling, causal)
        out = reduce_mass(mass, query_mask, key_mask)
    else:
        block_mask, mask_mod = _flex_block_mask(attention_mask, causal, b, tq, key.shape[2], query.device)
        _, mass = flex_attention_with_mass(query, key, None, query_mask, key_mask, block_mask, mask_mod, scaling)
        gathered_q = torch.ones(mass.shape[0], mass.shape[-1], dtype=torch.bool, device=mass.device)
        _, qv = _gather_rows(_last(query_mask, tq))
        out = reduce_mass(mass, gathered_q & qv, key_mask)
    return (out, valid) if return_valid else out
