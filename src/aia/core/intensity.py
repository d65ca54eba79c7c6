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
import weakref
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

__all__ = [
    "METHODS",
    "attention_with_mass",
    "flex_attention_with_mass",
    "flex_available",
    "flex_verified",
    "kernel_routes",
    "mass_reference",
    "reduce_flex_mass",
    "reduce_mass",
    "span_mass",
    "span_valid",
]

METHODS = ("auto", "reference", "sdpa", "flex")


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
        ``(output [B, H, Tq, dv] or None, mass [B, H, Tq])``, both in the input dtype. The
        output is laid out ``[B, Tq, H, dv]`` in memory, as SDPA's own output, so that
        ``output.transpose(1, 2).contiguous()`` costs no copy.

    Where the fused op and its backward can be called directly (:func:`_fused_backend`), this
    runs :class:`_MassAttention`, whose saved state is what plain SDPA saves plus ``O(B H Tq)``;
    elsewhere (autocast, the math backend, cuDNN, ...) the padded tensors go through
    ``F.scaled_dot_product_attention`` and its own autograd (:func:`_attention_with_mass_sdpa`).
    """
    d = query.shape[-1]
    scale = scaling if scaling is not None else d**-0.5
    grad = torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (query, key, value))
    if query.shape[2] == 1 and dropout == 0.0 and not grad:
        # one query row (a decoding step): no padded copy of the whole cache per token
        return _one_row(query, key, value, key_mask, attention_mask, scale)
    if value is None or dropout > 0.0:
        # Mass alone: the indicator in column 0 of a width-d value, no padding of q or k needed.
        mass = _attention_with_mass(query, key, None, key_mask, attention_mask, scale, causal)[1]
        out = None if value is None else _sdpa(query, key, value, attention_mask, scale, causal, dropout)
        return out, mass
    return _attention_with_mass(query, key, value, key_mask, attention_mask, scale, causal)


def _one_row(query, key, value, key_mask, attention_mask, scale):
    """Output and mass of a single query row per sample and head, from the unpadded cache.

    A decoding step's query row against ``Tk`` cached keys: the scores ``[B, Hkv, G, Tk]`` (GQA
    groups of ``G`` query heads share a kv head, nothing expanded), their softmax in fp32, the
    output ``p @ v`` and the mass ``sum_{k in K} p``. The same work as the attention itself (two
    products over the cache), where the indicator-column routes would first copy the whole cache
    at width ``d + 1`` for every token. No autograd state is kept (callers decode without grad).
    """
    b, h, _, d = query.shape
    hkv, tk = key.shape[1], key.shape[2]
    if h % hkv:
        raise ValueError(f"{h} query heads are not a multiple of {hkv} key/value heads")
    g = h // hkv
    _ran(_case(query.device, query.dtype, None, d, 0 if value is None else value.shape[-1]), "one-row math")
    acc = torch.promote_types(query.dtype, torch.float32)  # softmax in fp32 (fp64 for fp64 inputs)
    scores = torch.matmul(query.reshape(b, hkv, g, d) * scale, key.transpose(-1, -2)).to(acc)  # [B, Hkv, G, Tk]
    if attention_mask is not None:
        mask = attention_mask
        while mask.dim() < 4:
            mask = mask.unsqueeze(0)
        mask = mask[..., -1:, :]  # the query's row, [B|1, H|1, 1, Tk]
        if mask.shape[1] == h:
            mask = mask.reshape(mask.shape[0], hkv, g, tk)
        if mask.dtype == torch.bool:
            scores.masked_fill_(~mask, float("-inf"))
        else:
            scores += mask.to(acc)
    probs = torch.softmax(scores, dim=-1).nan_to_num_(0.0)  # a fully masked row -> 0
    indicator = key_mask.to(acc)[:, None, :, None]  # [B, 1, Tk, 1]
    mass = torch.matmul(probs, indicator).reshape(b, h, 1).to(query.dtype)  # [B, H, 1]
    if value is None:
        return None, mass
    out = torch.matmul(probs.to(value.dtype), value)  # [B, Hkv, G, dv]
    return out.reshape(b, h, 1, value.shape[-1]), mass


# The padded head width: d + 1 on CPU, a multiple of 8 on CUDA (FlashAttention and memory-efficient
# kernels need it). With _MassAttention the width costs time and transient memory only (the padded
# tensors live for one layer's forward or backward). On CPU d + 1 is measured fastest at 640, 2048
# and 4096 tokens (docs/PERFORMANCE.md, "The route rule"), so no rounding there.
_PAD_MULTIPLE = {"cuda": 8}
_FLASH, _EFFICIENT = 1, 2  # torch's SDPBackend enum values, as torch._fused_sdp_choice returns them
_USE_MASS_FUNCTION = True  # False: always the portable route (benchmarks/bench_step.py's "aia-portable")


def _pad_width(d: int, dv: int, device: torch.device) -> int:
    """Common head width of the padded q, k and ``[v, 1[k in K], 0...]``: at least ``max(d, dv + 1)``."""
    multiple = _PAD_MULTIPLE.get(device.type, 1)
    return -(-max(d, dv + 1) // multiple) * multiple


def _attention_with_mass(query, key, value, key_mask, attention_mask, scale, causal):
    tq, tk = query.shape[2], key.shape[2]
    is_causal = causal and attention_mask is None and tq > 1
    if is_causal and tk > tq:
        raise ValueError("causal attention without a mask needs as many keys as queries; pass attention_mask")
    d, dv = query.shape[-1], (0 if value is None else value.shape[-1])
    width = _pad_width(d, dv, query.device)
    backend, padded = _mass_route(query, key, value, key_mask, attention_mask, is_causal, width)
    if backend is None:
        return _attention_with_mass_sdpa(query, key, value, key_mask, attention_mask, scale, is_causal, width)
    out, mass = _MassAttention.apply(
        query, key, value, key_mask, attention_mask, scale, is_causal, width, backend, padded
    )
    return (None if value is None else out.transpose(1, 2)), mass


def _mass_route(query, key, value, key_mask, attention_mask, is_causal, width):
    """``(backend, padded)`` for :class:`_MassAttention`, or ``(None, None)`` for the portable route.

    ``padded`` is a list ``[q, k, v]`` of the padded tensors, built once here (without autograd)
    for torch's kernel choice and handed to the Function, which empties the list so that they
    are freed as soon as the fused op has run. A fused op is taken only once it has passed its
    self-check for this case (:func:`_verified`).
    """
    device = query.device.type
    dv = 0 if value is None else value.shape[-1]
    case = _case(query.device, query.dtype, None, query.shape[-1], dv)
    if not _USE_MASS_FUNCTION or device not in ("cpu", "cuda") or torch.is_autocast_enabled(device):
        _ran(case, "sdpa")
        return None, None
    with torch.no_grad():
        padded = list(_padded_inputs(query, key, value, key_mask, width))
    grad = query.requires_grad or key.requires_grad or (value is not None and value.requires_grad)
    backend = _fused_backend(*padded, attention_mask, is_causal, grad)
    if backend is None:
        _ran(case, "sdpa")
        return None, None
    kernel, d = _KERNELS[backend], query.shape[-1]
    check = functools.partial(_check_fused, query.device, query.dtype, kernel, d, dv)
    if not _verified(_case(query.device, query.dtype, kernel, d, dv), check):
        _ran(case, f"sdpa (fused {kernel} failed its self-check)")
        return None, None
    _ran(case, f"fused {kernel}")
    return backend, padded


# ---------------------------------------------------------------------------------------------
# Self-check of the fused routes
#
# The fused ops are torch's private entry points (their signatures and return values are not a
# public contract), and the GPU kernels only run on hardware the test suite may never see. So
# the first time a fused route is about to run for a (device type, dtype, kernel, head dims), it
# runs once on a small problem against the explicit softmax math in fp64 (values and gradients).
# A disagreement or an exception makes that case take the portable route (public
# ``F.scaled_dot_product_attention`` and its autograd; ``span_mass``'s flex route: the SDPA
# route) with one warning naming the case. What ran is kept per case for the profile's
# settings and the training run's ``attention_routes.json`` (:func:`kernel_routes`).

_KERNELS = {_FLASH: "flash", _EFFICIENT: "efficient"}
# max |fused - fp64 math| allowed, relative to the largest reference value (+ the same absolute)
_TOLERANCE = {torch.float64: 1e-6, torch.float32: 2e-3, torch.float16: 2e-2, torch.bfloat16: 6e-2}
_VERDICTS: dict[str, str | None] = {}  # case -> None (agrees) or why it fell back
_ROUTES: dict[str, set[str]] = {}  # case (device/dtype/head dims) -> the routes that ran


def _case(device: torch.device, dtype: torch.dtype, kernel: str | None, d: int, dv: int) -> str:
    """``"cuda/bfloat16/efficient/d=64,dv=64"`` (no kernel part when ``kernel`` is None)."""
    parts = [device.type, str(dtype).removeprefix("torch."), kernel, f"d={d},dv={dv}"]
    return "/".join(p for p in parts if p)


def _ran(case: str, route: str) -> None:
    routes = _ROUTES.get(case)
    if routes is None:
        _ROUTES[case] = {route}
    elif route not in routes:
        routes.add(route)


def kernel_routes() -> dict[str, dict]:
    """What the intensity routes ran so far in this process, for a profile's or a run's metadata.

    Returns:
        ``{"routes": {case: route}, "self_checks": {case: "passed" | "failed: <why>"}}``, cases
        named ``device/dtype[/kernel]/d=..,dv=..`` (``dv=0``: the mass alone). A case's routes
        (comma-separated when several ran) are ``"fused flash"``, ``"fused efficient"``,
        ``"flex"``, ``"one-row math"`` (a decoding step), ``"sdpa"`` (the portable route, where
        torch chose no fused op) or ``"sdpa (fused ... failed its self-check)"``.
    """
    checks = {case: "passed" if why is None else f"failed: {why}" for case, why in sorted(_VERDICTS.items())}
    return {"routes": {case: ", ".join(sorted(r)) for case, r in sorted(_ROUTES.items())}, "self_checks": checks}


def _verified(case: str, check: Callable[[], None]) -> bool:
    """Whether the fused route of ``case`` agrees with the math: ``check()`` (which raises on a
    disagreement) runs at the case's first use; a failure warns once and is remembered."""
    if case not in _VERDICTS:
        try:
            # the first call may come under inference_mode or no_grad (profiling, evaluation): the check
            # builds its own tensors and differentiates them
            with torch.inference_mode(False), torch.enable_grad():
                check()
            _VERDICTS[case] = None
        except Exception as err:  # noqa: BLE001 - any failure of a private op means: do not use it
            text = str(err).strip()
            why = f"{type(err).__name__}: {text.splitlines()[0] if text else ''}"[:300]
            _VERDICTS[case] = why
            warnings.warn(
                f"aia: the fused attention route {case} disagrees with the reference math or fails ({why}); "
                "using the portable SDPA route for it",
                RuntimeWarning,
                stacklevel=4,
            )
    return _VERDICTS[case] is None


def _check_problem(device, dtype, d, dv, value=True):
    """A small GQA problem (B 2, H 4, Hkv 2, T 21: rows not 16-aligned), fp64 leaves on ``device``
    from a private generator (the global RNG is left alone), and random output gradients."""
    g = torch.Generator().manual_seed(0)
    b, h, hkv, t = 2, 4, 2, 21

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device)

    q, k = rand(b, h, t, d), rand(b, hkv, t, d)
    v = rand(b, hkv, t, dv) if value else None
    kmask = (torch.rand(b, t, generator=g) < 0.5).to(device)
    keep = torch.rand(b, 1, t, t, generator=g) < 0.8  # [B, 1, T, T]: broadcast over heads, as sdpa_mask
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    mask = ((keep & causal) | torch.eye(t, dtype=torch.bool)).to(device)  # no fully masked row
    grads = rand(b, h, t, max(dv, 1)), rand(b, h, t)  # d out, d mass
    return q, k, v, kmask, mask, grads


def _math(q, k, v, kmask, mask, scale):
    """fp64 ``(out [B, H, T, dv] or None, mass [B, H, T])`` from explicit softmax maps."""
    h = q.shape[1]
    scores = q @ _expand_kv(k, h).transpose(-1, -2) * scale
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    out = None if v is None else probs @ _expand_kv(v, h)
    return out, (probs * kmask[:, None, None, :].to(probs.dtype)).sum(-1)


def _check_fused(device: torch.device, dtype: torch.dtype, kernel: str, d: int, dv: int) -> None:
    """Raise unless :class:`_MassAttention` on ``kernel`` matches :func:`_math` (values and gradients)
    with a bool mask and plain causal (CUDA flash: plain causal only, torch never picks it with a mask)."""
    backend = {v: k for k, v in _KERNELS.items()}[kernel]
    q64, k64, v64, kmask, mask, (gout, gmass) = _check_problem(device, dtype, d, dv, value=dv > 0)
    scale = d**-0.5
    t = q64.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()[None, None]
    masks = [None] if device.type == "cuda" and backend == _FLASH else [None, mask]
    width = _pad_width(d, dv, device)
    with torch.inference_mode(False), torch.enable_grad():
        for attn in masks:
            leaves = [x.detach().requires_grad_() for x in (q64, k64, v64) if x is not None]
            v_leaf = leaves[2] if v64 is not None else None
            want_out, want_mass = _math(leaves[0], leaves[1], v_leaf, kmask, causal if attn is None else attn, scale)
            want = [want_mass] + ([] if want_out is None else [want_out])
            loss = (want_mass * gmass).sum() + (0 if want_out is None else (want_out * gout[..., :dv]).sum())
            want += list(torch.autograd.grad(loss, leaves))
            inputs = [x.detach().to(dtype).requires_grad_() for x in leaves]
            q, k, v = inputs[0], inputs[1], inputs[2] if v64 is not None else None
            with torch.no_grad():
                padded = list(_padded_inputs(q, k, v, kmask, width))
            out, mass = _MassAttention.apply(q, k, v, kmask, attn, scale, attn is None, width, backend, padded)
            got = [mass] + ([] if out is None else [out.transpose(1, 2)])
            loss = (mass.double() * gmass).sum()
            if out is not None:
                loss = loss + (out.transpose(1, 2).double() * gout[..., :dv]).sum()
            got += list(torch.autograd.grad(loss, inputs))
            names = ["mass", "output", "grad q", "grad k", "grad v"] if v is not None else ["mass", "grad q", "grad k"]
            for name, g, w in zip(names, got, want, strict=True):
                _agree(f"{name} ({'causal' if attn is None else 'bool mask'})", g, w, dtype)


def flex_verified(device: torch.device | str, dtype: torch.dtype, head_dim: int) -> bool:
    """Whether the FlexAttention route agrees with the math for this case (checked at first use,
    values and gradients; a failure warns once and the callers take the SDPA route)."""
    device = torch.device(device)
    check = functools.partial(_check_flex, device, dtype, head_dim)
    return _verified(_case(device, dtype, "flex", head_dim, head_dim), check)


def _check_flex(device: torch.device, dtype: torch.dtype, d: int) -> None:
    """Raise unless :func:`flex_attention_with_mass` matches :func:`_math` (values and gradients)."""
    q64, k64, v64, kmask, mask, (gout, gmass) = _check_problem(device, dtype, d, d)
    b, _, t, _ = q64.shape
    scale = d**-0.5
    qmask = torch.ones(b, t, dtype=torch.bool, device=device)
    block_mask, mask_mod = _flex_block_mask(mask, True, b, t, t, device)
    with torch.inference_mode(False), torch.enable_grad():
        leaves = [x.detach().requires_grad_() for x in (q64, k64, v64)]
        want_out, want_mass = _math(*leaves, kmask, mask, scale)
        want = [want_mass, want_out]
        want += torch.autograd.grad((want_mass * gmass).sum() + (want_out * gout).sum(), leaves)
        inputs = [x.detach().to(dtype).requires_grad_() for x in leaves]
        out, mass = flex_attention_with_mass(*inputs, qmask, kmask, block_mask, mask_mod, scale)
        got = [mass, out]
        got += torch.autograd.grad((mass.double() * gmass).sum() + (out.double() * gout).sum(), inputs)
        for name, g, w in zip(["mass", "output", "grad q", "grad k", "grad v"], got, want, strict=True):
            _agree(f"{name} (flex)", g, w, dtype)


def _agree(name: str, got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    tol = _TOLERANCE.get(dtype, 6e-2)
    if got.shape != want.shape:
        raise AssertionError(f"{name}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    err = (got.double() - want).abs().max().item()
    bound = tol * (1 + want.abs().max().item())
    if not err <= bound:  # also catches NaN
        raise AssertionError(f"{name} differs from the reference math by {err:.3g} (allowed {bound:.3g})")


def _kernel_heads(query: torch.Tensor, key: torch.Tensor) -> int:
    """Heads of the padded k and v: CPU's flash op takes GQA as is; CUDA's kernels get kv expanded."""
    return key.shape[1] if query.device.type == "cpu" else query.shape[1]


def _padded_inputs(query, key, value, key_mask, width):
    """``(q, k, [v, 1[k in K], 0...])`` at head width ``width`` for the fused op."""
    heads = _kernel_heads(query, key)
    ind = key_mask[:, None, :].to(query.dtype).expand(-1, heads, -1)
    dv = 0 if value is None else value.shape[-1]
    q, k = _widen(query, query.shape[1], width), _widen(key, heads, width)
    return q, k, _columns(None if value is None else _widen(value, heads, dv), ind, width)


def _attention_with_mass_sdpa(query, key, value, key_mask, attention_mask, scale, is_causal, width):
    """The portable route: padded tensors through ``F.scaled_dot_product_attention`` and its autograd.

    SDPA saves the padded q, k, v and output for backward (``width / d`` times plain SDPA's) and the
    output slice needs a copy for the caller's ``transpose(1, 2).contiguous()``.
    """
    d = query.shape[-1]
    dv = 0 if value is None else value.shape[-1]
    q = F.pad(query, (0, width - d))
    k = F.pad(key, (0, width - d))
    v = _padded_value(value, key_mask, key.shape[1], width, query.dtype)
    out = _sdpa(q, k, v, attention_mask, scale, is_causal, 0.0)  # [B, H, Tq, width]
    return (None if value is None else out[..., :dv]), out[..., dv]


def _padded_value(value, key_mask, hkv, width, dtype):
    """``[value, 1[k in K], 0 ...]``, ``[B, Hkv, Tk, width]``."""
    b, tk = key_mask.shape
    ind = key_mask[:, None, :, None].to(dtype).expand(b, hkv, tk, 1)
    if value is None:
        return F.pad(ind, (0, width - 1))
    return torch.cat([value, ind, value.new_zeros(*value.shape[:-1], width - value.shape[-1] - 1)], dim=-1)


def _fused_backend(q, k, v, attention_mask, is_causal, grad) -> int | None:
    """Which fused op :class:`_MassAttention` calls on the padded ``q, k, v``, or ``None`` for the
    portable SDPA route.

    The choice is torch's own (``torch._fused_sdp_choice`` on the padded tensors, so that
    ``torch.nn.attention.sdpa_kernel`` and every kernel constraint apply as they would to
    ``F.scaled_dot_product_attention``); only the kernels whose forward returns the log-sum-exp
    and whose backward is callable are taken: CPU flash; CUDA flash and memory-efficient.
    """
    device = q.device.type
    choose = getattr(torch, "_fused_sdp_choice", None)  # private: absent or changed means the portable route
    if device not in ("cpu", "cuda") or choose is None or q.is_nested or k.is_nested:
        return None
    if device == "cuda" and attention_mask is not None and attention_mask.dtype not in (torch.bool, q.dtype):
        return None
    key = (
        choose,
        q.device,
        q.dtype,
        q.shape,
        k.shape,
        v.shape,
        q.stride(),
        k.stride(),
        v.stride(),
        is_causal,
        grad,
        None if attention_mask is None else (attention_mask.dtype, attention_mask.shape, attention_mask.stride()),
        torch.backends.cuda.flash_sdp_enabled(),
        torch.backends.cuda.mem_efficient_sdp_enabled(),
        torch.backends.cuda.math_sdp_enabled(),
        torch.backends.cuda.cudnn_sdp_enabled(),
    )  # what torch's choice reads (the enabled backends: sdpa_kernel), so the choice is made once per shape
    if key in _CHOICES:
        return _CHOICES[key]
    if len(_CHOICES) > 256:
        _CHOICES.clear()
    _CHOICES[key] = choice = _choose(choose, q, k, v, attention_mask, is_causal, grad, device)
    return choice


_CHOICES: dict[tuple, int | None] = {}


def _choose(choose, q, k, v, attention_mask, is_causal, grad, device) -> int | None:
    try:
        choice = choose(
            q.detach().requires_grad_(grad),
            k,
            v,
            attn_mask=attention_mask,
            dropout_p=0.0,
            is_causal=is_causal,
            enable_gqa=k.shape[1] != q.shape[1],
        )
        choice = int(choice)
    except Exception:  # noqa: BLE001 - a changed private signature or return type
        return None
    allowed = (_FLASH,) if device == "cpu" else (_FLASH, _EFFICIENT)
    return choice if choice in allowed else None


_ADDITIVE: dict[tuple, tuple] = {}  # (id(bool mask), dtype) -> (weakref(mask), version, float mask)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A bool mask as SDPA converts it for its fused kernels (0 where allowed, -inf elsewhere).

    transformers builds one mask per forward and hands it to every layer, and the backward needs
    it again: the float mask is built once per mask object and dtype, and lives as long as the
    bool mask does (a weak reference drops it with the mask).
    """
    if mask is None or mask.dtype != torch.bool:
        return mask
    key = (id(mask), dtype)
    held = _ADDITIVE.get(key)
    if held is not None and held[0]() is mask and held[1] == mask._version:
        return held[2]
    additive = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))
    _ADDITIVE[key] = (weakref.ref(mask, lambda _, key=key: _ADDITIVE.pop(key, None)), mask._version, additive)
    return additive


def _efficient_bias(mask: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor | None:
    """The additive bias for the CUDA memory-efficient kernel: ``[B, H, Tq, Tk]`` with its rows
    16-aligned (as SDPA's ``preprocess_mask``), but padded *before* the expansion, which stays a
    view: one ``[B|1, 1, Tq, Tk]`` copy instead of one per head (the kernel reads broadcast dims
    through stride 0; the route's self-check runs it with a head-broadcast mask)."""
    bias = _additive(mask, q.dtype)
    if bias is None:
        return None
    while bias.dim() < 4:
        bias = bias.unsqueeze(0)
    tk = k.shape[2]
    if tk % 16 or bias.shape[-1] != tk or bias.stride(-1) != 1 or bias.stride(-2) % 16:
        aligned = -(-tk // 16) * 16
        padded = bias.new_empty(*bias.shape[:-2], bias.shape[-2], aligned)  # [B|1, H|1, Tq|1, aligned]
        padded[..., :tk] = bias
        padded[..., tk:] = 0
        bias = padded[..., :tk]
    return bias.expand(q.shape[0], q.shape[1], q.shape[2], tk)


def _blank(like: torch.Tensor, b: int, h: int, t: int, width: int) -> torch.Tensor:
    """Uninitialised ``[B, h, T, width]`` laid out in ``like``'s order of the head and time dims
    (transformers' queries and SDPA's outputs are ``[B, T, H, d]`` in memory), so that filling it
    from ``like`` is a plain row copy."""
    if like.stride(1) < like.stride(2):
        return like.new_empty(b, t, h, width).transpose(1, 2)
    return like.new_empty(b, h, t, width)


def _widen(x: torch.Tensor, heads: int, width: int) -> torch.Tensor:
    """``[B, Hx, T, dx]`` -> ``[B, heads, T, width]``: zero columns appended, kv heads repeated (GQA)."""
    b, hx, t, dx = x.shape
    if hx == heads and dx == width:
        return x
    out = _blank(x, b, heads, t, width)
    grouped = out.view(b, hx, heads // hx, t, width)
    grouped[..., :dx] = x[:, :, None]
    grouped[..., dx:] = 0
    return out


def _columns(x: torch.Tensor | None, col: torch.Tensor, width: int) -> torch.Tensor:
    """``[x, col, 0 ...]``: ``x`` ``[B, H, T, dx]`` (or ``None``, ``dx = 0``), ``col`` ``[B, H, T]``."""
    dx = 0 if x is None else x.shape[-1]
    b, h, t = col.shape
    out = col.new_empty(b, h, t, width) if x is None else _blank(x, b, h, t, width)
    if x is not None:
        out[..., :dx] = x
    out[..., dx] = col
    out[..., dx + 1 :] = 0
    return out


def _fused_forward(backend, q, k, v, attn_mask, scale, is_causal):
    """``(out, lse, aux)`` of the fused op ``backend`` on the padded tensors."""
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            q, k, v, 0.0, is_causal, attn_mask=_additive(attn_mask, q.dtype), scale=scale
        )
        return out, lse, ()
    if backend == _FLASH:  # CUDA FlashAttention-2 (no mask: torch never picks it with one)
        out, lse, cum_q, cum_k, max_q, max_k, seed, offset, _ = torch.ops.aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, is_causal, False, scale=scale
        )
        return out, lse, (cum_q, cum_k, max_q, max_k, seed, offset)
    out, lse, seed, offset = torch.ops.aten._scaled_dot_product_efficient_attention(
        q, k, v, _efficient_bias(attn_mask, q, k), True, 0.0, is_causal, scale=scale
    )
    return out, lse, (seed, offset)


def _fused_backward(backend, grad, q, k, v, out, lse, aux, attn_mask, scale, is_causal):
    """``(grad_q, grad_k, grad_v)`` of :func:`_fused_forward`'s op."""
    if q.device.type == "cpu":
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward(
            grad, q, k, v, out, lse, 0.0, is_causal, attn_mask=_additive(attn_mask, q.dtype), scale=scale
        )
    if backend == _FLASH:
        cum_q, cum_k, max_q, max_k, seed, offset = aux
        return torch.ops.aten._scaled_dot_product_flash_attention_backward(
            grad, q, k, v, out, lse, cum_q, cum_k, max_q, max_k, 0.0, is_causal, seed, offset, scale=scale
        )
    seed, offset = aux
    grads = torch.ops.aten._scaled_dot_product_efficient_attention_backward(
        grad,
        q,
        k,
        v,
        _efficient_bias(attn_mask, q, k),
        out,
        lse,
        seed,
        offset,
        0.0,
        [True, True, True, False],
        is_causal,
        scale=scale,
    )
    return grads[:3]


class _MassAttention(torch.autograd.Function):
    """Indicator-column attention whose saved state is plain SDPA's plus ``O(B H Tq)``.

    Forward runs the fused op on the padded ``q``, ``k`` and ``[v, 1[k in K], 0...]`` and keeps the
    unpadded inputs, the unpadded output (laid out ``[B, Tq, H, dv]``, the caller's next layout),
    the mass column and the log-sum-exp. Backward rebuilds the padded tensors for the duration of
    the call, the padded output as ``[out, mass, 0...]`` (the zero value columns give exactly zero
    output columns) and the padded output gradient as ``[grad_out, grad_mass, 0...]``, and calls the
    op's own backward: the gradients are those of SDPA on the padded tensors, bit for bit the
    values the portable route's autograd computes. The padded gradients are sliced, not copied.
    CPU keeps GQA unexpanded (the CPU flash op takes ``Hkv < H``); CUDA expands kv for the op
    and sums the key/value gradients over each group.
    """

    @staticmethod
    def forward(ctx, query, key, value, key_mask, attn_mask, scale, is_causal, width, backend, padded):
        dv = 0 if value is None else value.shape[-1]
        q, k, v = padded
        padded.clear()
        out_p, lse, aux = _fused_forward(backend, q, k, v, attn_mask, scale, is_causal)
        del q, k, v
        mass = out_p[..., dv].contiguous()  # [B, H, Tq]
        out = None if value is None else out_p[..., :dv].transpose(1, 2).contiguous()  # [B, Tq, H, dv]
        del out_p
        ctx.save_for_backward(query, key, value, key_mask, attn_mask, out, mass)
        ctx.lse, ctx.aux = lse, aux
        ctx.scale, ctx.is_causal, ctx.width, ctx.backend = scale, is_causal, width, backend
        return out, mass

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, grad_mass):
        query, key, value, key_mask, attn_mask, out, mass = ctx.saved_tensors
        width = ctx.width
        d, hkv, heads = query.shape[-1], key.shape[1], _kernel_heads(query, key)
        dv = 0 if value is None else value.shape[-1]
        if grad_mass is None:
            grad_mass = torch.zeros_like(mass)
        if value is not None and grad_out is None:
            grad_out = torch.zeros_like(out)
        q, k, v = _padded_inputs(query, key, value, key_mask, width)
        out_p = _columns(None if out is None else out.transpose(1, 2), mass, width)
        grad_p = _columns(None if grad_out is None else grad_out.transpose(1, 2), grad_mass, width)
        gq, gk, gv = _fused_backward(
            ctx.backend, grad_p, q, k, v, out_p, ctx.lse, ctx.aux, attn_mask, ctx.scale, ctx.is_causal
        )
        del q, k, v, out_p, grad_p
        gq, gk = gq[..., :d], gk[..., :d]
        gv = None if value is None else gv[..., :dv]
        if heads != hkv:
            gk = gk.unflatten(1, (hkv, heads // hkv)).sum(2)
            gv = None if gv is None else gv.unflatten(1, (hkv, heads // hkv)).sum(2)
        needs = ctx.needs_input_grad
        return (
            gq if needs[0] else None,
            gk if needs[1] else None,
            gv if needs[2] else None,
            *([None] * 7),
        )


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


_GATHERED: list[tuple] = []  # the last few (weakref(mask), version, length, result) of _gather_rows


def _gather_rows(mask: torch.Tensor, length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the True positions per row of ``mask[..., -length:]``, padded: ``(idx [B, M], valid [B, M])``.

    Every layer of a forward pass gets the same span masks, so the result is kept for the mask
    object (until it is modified in place or freed): ``M`` is read on the host (a device sync, it
    sizes the ``|Q| x |K|`` product), once per forward instead of twice per layer.
    """
    for ref, version, n, result in _GATHERED:
        if ref() is mask and mask._version == version and n == length:
            return result
    result = _gather(_last(mask, length) if length is not None else mask)
    _GATHERED.insert(0, (weakref.ref(mask), mask._version, length, result))
    del _GATHERED[4:]
    return result


def _gather(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    count = mask.sum(-1)
    m = max(int(count.max()), 1)  # host sync: the gather width
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
    _ran(_case(query.device, query.dtype, None, d, 0 if value is None else value.shape[-1]), "flex")

    qi, qv = _gather_rows(query_mask, tq)  # [B, Mq]
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


def reduce_flex_mass(mass: torch.Tensor, query_mask: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """:func:`reduce_mass` of :func:`flex_attention_with_mass`'s mass, whose rows are the gathered query set.

    Args:
        mass: ``[B, H, Mq]``, row ``m`` the ``m``-th query of the sample (zeros past its count).
        query_mask: bool ``[B, Tq]``, the query set over the call's query rows (the last ``Tq``
            positions of the mask given to :func:`flex_attention_with_mass`).
        key_mask: bool ``[B, Tk]``.

    Returns:
        ``[B]``, as :func:`reduce_mass`.
    """
    count = query_mask.sum(-1, keepdim=True)  # [B, 1]
    rows = torch.arange(mass.shape[-1], device=mass.device)[None, :] < count  # [B, Mq]
    return reduce_mass(mass, rows, key_mask)


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
    if method == "flex" and not flex_verified(query.device, query.dtype, query.shape[-1]):
        method = "sdpa"  # the self-check warned
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
        out = reduce_flex_mass(mass, _last(query_mask, tq), key_mask)
    return (out, valid) if return_valid else out
