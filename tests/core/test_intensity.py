"""The intensity engine against a naive reference written here from Eq. 1."""

import pytest
import torch

from aia.core.intensity import attention_with_mass, mass_reference, span_mass, span_valid
from tests.helpers import softmax_maps, span_intensity


def naive_intensity(q, k, qmask, kmask, allowed, scale):
    """Eq. 1 from explicit fp64 softmax(QK^T) maps (the shared reference of tests.helpers). ``[B]``."""
    maps = softmax_maps(q.double(), k.double(), allowed[:, None], scale)
    return span_intensity([maps], qmask, kmask)[0]


def make_case(b=3, h=4, hkv=2, t=23, d=16, dtype=torch.float64, seed=0, pad="right"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=dtype)
    k = torch.randn(b, hkv, t, d, generator=g, dtype=dtype)
    lengths = torch.tensor([t, t - 5, t - 9])[:b]
    pos = torch.arange(t)
    if pad == "right":
        keep = pos[None, :] < lengths[:, None]
    else:
        keep = pos[None, :] >= (t - lengths)[:, None]
    causal = pos[None, :] <= pos[:, None]
    allowed = causal[None] & keep[:, None, :]  # [B, T, T]
    # padding query rows attend to themselves only (never counted)
    allowed = allowed | torch.eye(t, dtype=torch.bool)[None]
    qmask = (torch.rand(b, t, generator=g) < 0.4) & keep
    kmask = (torch.rand(b, t, generator=g) < 0.3) & keep
    return q, k, qmask, kmask, allowed, keep


@pytest.mark.parametrize("method", ["reference", "sdpa"])
@pytest.mark.parametrize("pad", ["left", "right"])
def test_span_mass_matches_naive_fp64(method, pad):
    q, k, qmask, kmask, allowed, _ = make_case(pad=pad)
    got = span_mass(q, k, qmask, kmask, attention_mask=allowed[:, None], method=method)
    want = naive_intensity(q, k, qmask, kmask, allowed, q.shape[-1] ** -0.5)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


def test_span_mass_output_is_fp32_for_fp32_and_accurate():
    q, k, qmask, kmask, allowed, _ = make_case(dtype=torch.float32)
    got = span_mass(q, k, qmask, kmask, attention_mask=allowed[:, None], method="sdpa")
    assert got.dtype == torch.float32
    want = naive_intensity(q, k, qmask, kmask, allowed, q.shape[-1] ** -0.5)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)


def test_causal_default_without_mask_and_float_mask():
    q, k, qmask, kmask, _, _ = make_case(b=2, pad="right")
    t = q.shape[2]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    want = naive_intensity(q, k, qmask, kmask, causal.expand(2, t, t), q.shape[-1] ** -0.5)
    for method in ("reference", "sdpa"):
        got = span_mass(q, k, qmask, kmask, method=method)
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-10)
    additive = torch.zeros(t, t, dtype=torch.float64).masked_fill(~causal, torch.finfo(torch.float64).min)
    got = span_mass(q, k, qmask, kmask, attention_mask=additive[None, None], method="sdpa")
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-10)


def test_empty_sets_give_zero_and_are_excluded():
    q, k, qmask, kmask, allowed, _ = make_case()
    qmask[0] = False
    kmask[1] = False
    got, valid = span_mass(q, k, qmask, kmask, attention_mask=allowed[:, None], method="sdpa", return_valid=True)
    assert valid.tolist() == [False, False, True]
    assert got[0] == 0 and got[1] == 0 and got[2] > 0
    assert torch.isfinite(got).all()
    assert span_valid(qmask, kmask).tolist() == [False, False, True]


def test_gradients_match_reference():
    q, k, qmask, kmask, allowed, _ = make_case()
    weights = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    grads = {}
    for method in ("reference", "sdpa"):
        qq, kk = q.clone().requires_grad_(), k.clone().requires_grad_()
        (
            span_mass(qq, kk, qmask, kmask, attention_mask=allowed[:, None], method=method).double() * weights
        ).sum().backward()
        grads[method] = (qq.grad, kk.grad)
    torch.testing.assert_close(grads["sdpa"][0], grads["reference"][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads["sdpa"][1], grads["reference"][1], rtol=0, atol=1e-10)


def test_attention_with_mass_output_equals_plain_sdpa():
    q, k, qmask, kmask, allowed, _ = make_case(dtype=torch.float32)
    v = torch.randn(k.shape[0], k.shape[1], k.shape[2], 12)  # dv != d
    out, mass = attention_with_mass(q, k, v, kmask, allowed[:, None])
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed[:, None]
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(mass, mass_reference(q, k, kmask, allowed[:, None]), rtol=0, atol=1e-5)


def test_bad_inputs_are_named():
    q, k, qmask, kmask, allowed, _ = make_case()
    with pytest.raises(ValueError, match="method"):
        span_mass(q, k, qmask, kmask, method="eager")
    with pytest.raises(TypeError, match="bool"):
        span_mass(q, k, qmask.long(), kmask)
    with pytest.raises(ValueError, match="key_mask"):
        span_mass(q, k, qmask, kmask[:, :-1])


def test_flex_falls_back_on_cpu():
    q, k, qmask, kmask, allowed, _ = make_case()
    with pytest.warns(UserWarning, match="SDPA"):
        got = span_mass(q, k, qmask, kmask, attention_mask=allowed[:, None], method="flex")
    want = span_mass(q, k, qmask, kmask, attention_mask=allowed[:, None], method="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_flex_route_on_gpu_matches_reference(dtype):
    q, k, qmask, kmask, allowed, _ = make_case(b=3, h=8, hkv=2, t=300, d=64, dtype=torch.float32, seed=3)
    q, k, qmask, kmask, allowed = (x.cuda() for x in (q, k, qmask, kmask, allowed))
    q, k = q.to(dtype).requires_grad_(), k.to(dtype).requires_grad_()
    got = span_mass(q, k, qmask, kmask, attention_mask=allowed[:, None], method="flex")
    (got * torch.arange(1, 4, device="cuda")).sum().backward()
    gq, gk = q.grad.clone(), k.grad.clone()
    q.grad = k.grad = None
    want = span_mass(q, k, qmask, kmask, attention_mask=allowed[:, None], method="reference")
    (want * torch.arange(1, 4, device="cuda")).sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(got, want, rtol=0, atol=tol)
    torch.testing.assert_close(gq.float(), q.grad.float(), rtol=0, atol=tol * 10)
    torch.testing.assert_close(gk.float(), k.grad.float(), rtol=0, atol=tol * 10)


@pytest.mark.parametrize("pad", ["left", "right"])
def test_flex_route_values_on_cpu_forward_only(pad):
    """FlexAttention has no CPU backward, but its eager forward checks the LSE/gather logic here."""
    from aia.core.intensity import flex_attention_with_mass, reduce_flex_mass

    q, k, qmask, kmask, allowed, _ = make_case(b=3, h=4, hkv=2, t=40, d=16, dtype=torch.float32, seed=5, pad=pad)
    v = torch.randn(k.shape[0], k.shape[1], k.shape[2], 16)
    from torch.nn.attention.flex_attention import create_block_mask

    dense = allowed.clone()

    def mask_mod(b, h, qi, ki):
        return dense[b, qi, ki]

    block_mask = create_block_mask(mask_mod, 3, None, 40, 40, device="cpu")
    with torch.no_grad():
        out, mass = flex_attention_with_mass(q, k, v, qmask, kmask, block_mask, None, None)
    got = reduce_flex_mass(mass, qmask, kmask)
    want = naive_intensity(q, k, qmask, kmask, allowed, 16**-0.5)
    torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-5)
    ref = torch.nn.functional.scaled_dot_product_attention(
        q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=allowed[:, None]
    )
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


@pytest.mark.parametrize("t", [1001, 1024])
def test_efficient_bias_is_padded_once_and_expanded_as_a_view(t):
    """The CUDA memory-efficient kernel's bias: 16-aligned rows, one copy for all heads (not one per head)."""
    import aia.core.intensity as intensity

    b, h = 2, 16
    keep = torch.ones(b, t, dtype=torch.bool)
    keep[1, :7] = False
    allowed = torch.ones(t, t, dtype=torch.bool).tril()[None, None] & keep[:, None, None, :]  # [B, 1, T, T]
    q, k = torch.zeros(b, h, t, 8), torch.zeros(b, h, t, 8)
    bias = intensity._efficient_bias(allowed, q, k)
    assert bias.shape == (b, h, t, t)
    assert all(s % 16 == 0 for s in bias.stride()[:-1]) and bias.stride(1) == 0  # heads: a view
    aligned = -(-t // 16) * 16
    assert bias.untyped_storage().nbytes() == b * t * aligned * 4  # one copy, 1/16 of the per-head one
    want = torch.zeros(b, h, t, t).masked_fill(~allowed, float("-inf"))
    assert torch.equal(bias, want)


@pytest.mark.parametrize("mask", ["bool", "additive", None])
@pytest.mark.parametrize("hkv", [4, 2])
def test_one_query_row_without_grad_matches_the_reference_without_padding_the_cache(mask, hkv, monkeypatch):
    """A decoding step (one query row, no autograd): the one-row route, equal to plain SDPA and the maps."""
    import torch.nn.functional as F

    import aia.core.intensity as intensity

    monkeypatch.setattr(intensity, "_ROUTES", {})
    g = torch.Generator().manual_seed(0)
    b, h, t, d = 3, 4, 23, 8
    q = torch.randn(b, h, 1, d, generator=g, dtype=torch.float64)
    k = torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64)
    v = torch.randn(b, hkv, t, 6, generator=g, dtype=torch.float64)
    kmask = torch.rand(b, t, generator=g) < 0.4
    keep = torch.ones(b, 1, 1, t, dtype=torch.bool)
    keep[1, ..., :5] = False  # left padding of sample 1
    attn = {
        "bool": keep,
        "additive": torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min),
        None: None,
    }[mask]
    monkeypatch.setattr(intensity, "_widen", lambda *a: pytest.fail("the cache was widened"))
    with torch.no_grad():
        out, mass = attention_with_mass(q, k, v, kmask, attn, causal=True)
        _, alone = attention_with_mass(q, k, None, kmask, attn, causal=True)
    plain = F.scaled_dot_product_attention(
        q, k.repeat_interleave(h // hkv, 1), v.repeat_interleave(h // hkv, 1), attn_mask=attn
    )
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-12)
    want = mass_reference(q, k, kmask, attn, causal=True)
    torch.testing.assert_close(mass, want, rtol=0, atol=1e-12)
    torch.testing.assert_close(alone, want, rtol=0, atol=1e-12)
    assert intensity.kernel_routes()["routes"] == {
        "cpu/float64/d=8,dv=6": "one-row math",
        "cpu/float64/d=8,dv=0": "one-row math",
    }


def test_the_float_mask_is_built_once_per_mask_and_dropped_with_it():
    import gc

    import aia.core.intensity as intensity

    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool).tril()
    first = intensity._additive(mask, torch.float32)
    assert intensity._additive(mask, torch.float32) is first  # every layer, forward and backward
    assert torch.equal(first, torch.zeros(2, 1, 5, 5).masked_fill(~mask, float("-inf")))
    mask[0, 0, 0, 1] = True  # changed in place: built again
    assert intensity._additive(mask, torch.float32)[0, 0, 0, 1] == 0
    key = (id(mask), torch.float32)
    del mask
    gc.collect()
    assert key not in intensity._ADDITIVE


def test_the_kernel_choice_is_made_once_per_shape(monkeypatch):
    import aia.core.intensity as intensity

    monkeypatch.setattr(intensity, "_CHOICES", {})
    calls = []
    real = torch._fused_sdp_choice
    monkeypatch.setattr(torch, "_fused_sdp_choice", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    q, k = torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8)
    kmask = torch.rand(1, 9) < 0.5
    for _ in range(3):
        attention_with_mass(q.requires_grad_(), k, k, kmask)
    assert len(calls) == 1
    attention_with_mass(
        torch.randn(1, 2, 10, 8).requires_grad_(),
        torch.randn(1, 2, 10, 8),
        k[:, :, :1].expand(1, 2, 10, 8),
        torch.rand(1, 10) < 0.5,
    )
    assert len(calls) == 2  # another shape
