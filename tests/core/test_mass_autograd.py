"""The mass autograd Function (``_MassAttention``): values, gradients and saved state.

References: the output of plain SDPA on the unpadded tensors and ``mass_reference`` (explicit
softmax maps), both in fp64, with autograd through them; and the portable route
(``_attention_with_mass_sdpa``: SDPA's own autograd on the padded tensors), whose gradients the
Function must reproduce.
"""

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers.masking_utils import eager_mask, sdpa_mask

import aia.core.intensity as intensity
from aia.core.intensity import _attention_with_mass_sdpa, attention_with_mass, mass_reference


def route(q, k, v, kmask, attn):
    """The fused op the Function would call (torch's SDPBackend number), or None (portable route)."""
    width = intensity._pad_width(q.shape[-1], v.shape[-1], q.device)
    return intensity._mass_route(q, k, v, kmask, attn, attn is None, width)[0]


def make(b=3, h=4, hkv=2, t=13, d=8, dv=6, dtype=torch.float64, pad="left", mask="bool", seed=0, device="cpu"):
    """Inputs and an attention mask as transformers builds it for a padded batch.

    ``mask``: ``"bool"`` (``sdpa_mask``), ``"additive"`` (``eager_mask``, finfo.min) or ``None``
    (plain causal, no padding). With padding, the padded query rows are fully masked.
    """
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, t, d, generator=g, dtype=torch.float64).to(device, dtype)
    k = torch.randn(b, hkv, t, d, generator=g, dtype=torch.float64).to(device, dtype)
    v = torch.randn(b, hkv, t, dv, generator=g, dtype=torch.float64).to(device, dtype)
    lengths = torch.tensor([t, t - 4, t - 7, t - 1][:b])
    pos = torch.arange(t)
    keep = pos[None] < lengths[:, None] if pad == "right" else pos[None] >= (t - lengths)[:, None]
    kmask = ((torch.rand(b, t, generator=g) < 0.4) & keep).to(device)
    if mask is None:
        attn = None
    elif mask == "bool":
        attn = sdpa_mask(batch_size=b, q_length=t, kv_length=t, attention_mask=keep, allow_is_causal_skip=False)
    else:
        attn = eager_mask(batch_size=b, q_length=t, kv_length=t, attention_mask=keep, dtype=dtype)
    attn = None if attn is None else attn.to(device)
    return q, k, v, kmask, attn, keep.to(device)


def reference(q, k, v, kmask, attn):
    """fp64 ``(out, mass)`` from plain SDPA (unpadded, kv expanded) and the explicit maps."""
    h, hkv = q.shape[1], k.shape[1]
    q64, k64, v64 = q.double(), k.double(), v.double()
    mask64 = attn if attn is None or attn.dtype == torch.bool else attn.double()
    with sdpa_kernel(SDPBackend.MATH):
        out = F.scaled_dot_product_attention(
            q64,
            k64.repeat_interleave(h // hkv, 1),
            v64.repeat_interleave(h // hkv, 1),
            attn_mask=mask64,
            is_causal=attn is None,
        )
    return out, mass_reference(q64, k64, kmask, mask64, causal=attn is None)


def loss_of(out, mass, keep, w_out, w_mass):
    """A scalar of both outputs, blind to padded query rows (as every caller is)."""
    rows = keep[:, None, :].to(mass.dtype)
    return (out.to(w_out.dtype) * w_out * rows[..., None]).sum() + (mass.to(w_mass.dtype) * w_mass * rows).sum()


def grads(fn, q, k, v, keep, seed=7):
    q, k, v = (x.detach().clone().requires_grad_() for x in (q, k, v))
    out, mass = fn(q, k, v)
    g = torch.Generator().manual_seed(seed)
    w_out = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device)
    w_mass = torch.randn(mass.shape, generator=g, dtype=torch.float64).to(out.device)
    loss_of(out, mass, keep, w_out, w_mass).backward()
    return out.detach(), mass.detach(), q.grad, k.grad, v.grad


@pytest.mark.parametrize("mask", ["bool", "additive", None])
@pytest.mark.parametrize("pad", ["left", "right"])
@pytest.mark.parametrize("hkv", [4, 2])
def test_values_and_gradients_equal_fp64_reference(mask, pad, hkv):
    q, k, v, kmask, attn, keep = make(hkv=hkv, pad=pad, mask=mask)
    assert route(q.requires_grad_(), k, v, kmask, attn) is not None  # the Function runs
    got = grads(lambda q, k, v: attention_with_mass(q, k, v, kmask, attn, causal=attn is None), q, k, v, keep)
    want = grads(lambda q, k, v: reference(q, k, v, kmask, attn), q, k, v, keep)
    rows = keep[:, None, :, None]
    # padded (fully masked) query rows: the output is whatever plain SDPA gives there, never NaN
    torch.testing.assert_close(got[0] * rows, want[0] * rows, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[1] * rows[..., 0], want[1] * rows[..., 0], rtol=0, atol=1e-12)
    for g, w in zip(got[2:], want[2:], strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)
    assert got[3].shape == k.shape and got[4].shape == v.shape  # GQA gradients come back per kv head


@pytest.mark.parametrize("mask", ["bool", "additive", None])
def test_output_equals_plain_sdpa_on_padded_rows_too(mask):
    """Fully masked rows included: the output is exactly what transformers' plain SDPA call returns."""
    q, k, v, kmask, attn, _ = make(hkv=2, mask=mask, dtype=torch.float32)
    out, _ = attention_with_mass(q, k, v, kmask, attn, causal=attn is None)
    if attn is None:
        plain = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    else:
        plain = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), attn_mask=attn)
    torch.testing.assert_close(out, plain, rtol=0, atol=2e-6)


@pytest.mark.parametrize("mask", ["bool", "additive", None])
def test_gradcheck_fp64(mask):
    q, k, v, kmask, attn, keep = make(b=2, h=2, hkv=1, t=7, d=3, dv=2, mask=mask, seed=3)
    rows = keep[:, None, :].double()

    def fn(q, k, v):
        out, mass = attention_with_mass(q, k, v, kmask, attn, causal=attn is None)
        return out * rows[..., None], mass * rows

    inputs = tuple(x.detach().clone().requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def test_mass_only_gradcheck_fp64():
    q, k, _, kmask, attn, keep = make(b=2, h=2, hkv=1, t=7, d=3, mask="bool", seed=4)
    rows = keep[:, None, :].double()
    inputs = tuple(x.detach().clone().requires_grad_() for x in (q, k))
    assert torch.autograd.gradcheck(
        lambda q, k: attention_with_mass(q, k, None, kmask, attn)[1] * rows, inputs, eps=1e-6, atol=1e-8
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", ["bool", None])
def test_gradients_equal_the_portable_route(dtype, mask):
    """The Function calls the op's own backward on the rebuilt padded tensors: SDPA's gradients."""
    q, k, v, kmask, attn, keep = make(hkv=2, mask=mask, dtype=dtype, t=21, d=16, dv=16)
    width = 17
    scale = 16**-0.5
    got = grads(lambda q, k, v: attention_with_mass(q, k, v, kmask, attn, causal=attn is None), q, k, v, keep)
    want = grads(
        lambda q, k, v: _attention_with_mass_sdpa(q, k, v, kmask, attn, scale, attn is None, width), q, k, v, keep
    )
    # bf16: the portable route expands kv for the mask, the CPU op groups heads itself (1 ulp apart)
    rtol, atol = {torch.float64: (0, 1e-13), torch.float32: (0, 1e-6), torch.bfloat16: (1.6e-2, 1e-2)}[dtype]
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g.double(), w.double(), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_low_precision_against_fp64_reference(dtype):
    q, k, v, kmask, attn, keep = make(hkv=2, mask="bool", dtype=dtype, t=33, d=16, dv=16, seed=5)
    got = grads(lambda q, k, v: attention_with_mass(q, k, v, kmask, attn), q, k, v, keep)
    want = grads(lambda q, k, v: reference(q, k, v, kmask, attn), q.double(), k.double(), v.double(), keep)
    tol = 2e-5 if dtype == torch.float32 else 5e-2
    rows = keep[:, None, :]
    assert got[0].dtype == dtype and got[1].dtype == dtype
    torch.testing.assert_close((got[0].double() * rows[..., None]), want[0] * rows[..., None], rtol=0, atol=tol)
    torch.testing.assert_close((got[1].double() * rows), want[1] * rows, rtol=0, atol=tol)
    for g, w in zip(got[2:], want[2:], strict=True):
        assert g.dtype == dtype and torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w, rtol=0, atol=tol * 4)


def saved_bytes(fn):
    """Bytes of the distinct storages autograd saves while ``fn`` runs (hooks see save_for_backward).

    ``fn`` runs once before: a case's first call runs the fused route's self-check, whose own
    small problem autograd saves too."""
    fn()
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(seen.values()), result


@pytest.mark.parametrize("mask", ["bool", None])
def test_saved_state_is_plain_sdpa_plus_the_mass(mask):
    b, h, t, d = 2, 4, 64, 16
    q, k, v, kmask, attn, _ = make(b=b, h=h, hkv=h, t=t, d=d, dv=d, mask=mask, dtype=torch.float32)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    plain, _ = saved_bytes(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=attn, is_causal=attn is None))
    ours, (out, mass) = saved_bytes(lambda: attention_with_mass(q, k, v, kmask, attn, causal=attn is None))
    # plain SDPA keeps q, k, v, out and the fp32 lse (and the float version of a bool mask);
    # the Function keeps q, k, v, out, the mass column and the key mask (and the bool mask as given)
    lse_node = mass.grad_fn
    assert lse_node is not None and lse_node.lse.numel() == b * h * t
    mass_and_kmask = b * h * t * 4 + b * t
    assert ours <= plain + mass_and_kmask
    portable, _ = saved_bytes(lambda: _attention_with_mass_sdpa(q, k, v, kmask, attn, d**-0.5, attn is None, d + 1))
    assert portable > ours + 3 * b * h * t * 4  # the padded q, k, v and output are gone
    # the output is laid out [B, T, H, dv]: the caller's transpose(1, 2).contiguous() is free
    assert out.transpose(1, 2).is_contiguous()


def test_mass_only_saves_no_value_tensor():
    q, k, _, kmask, attn, _ = make(b=2, h=4, hkv=2, t=64, d=16, mask="bool", dtype=torch.float32)
    q, k = q.requires_grad_(), k.requires_grad_()
    ours, _ = saved_bytes(lambda: attention_with_mass(q, k, None, kmask, attn))
    portable, _ = saved_bytes(lambda: _attention_with_mass_sdpa(q, k, None, kmask, attn, 0.25, False, 16))
    # the portable route keeps a width-d value, its output and (GQA with a mask) expanded keys
    assert ours + 2 * q.numel() * 4 <= portable


def test_dropout_keeps_the_mass_dropout_free():
    q, k, v, kmask, attn, keep = make(hkv=2, mask="bool", dtype=torch.float64)
    q, k, v = (x.requires_grad_() for x in (q, k, v))
    torch.manual_seed(0)
    out, mass = attention_with_mass(q, k, v, kmask, attn, dropout=0.5)
    _, want = reference(q, k, v, kmask, attn)
    rows = keep[:, None, :]
    torch.testing.assert_close(mass * rows, want * rows, rtol=0, atol=1e-12)
    (out.sum() + mass.sum()).backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_falls_back_where_the_op_is_not_torch_s_choice(monkeypatch):
    q, k, v, kmask, attn, keep = make(hkv=2, mask="bool", dtype=torch.float64)
    with sdpa_kernel(SDPBackend.MATH):
        assert route(q, k, v, kmask, attn) is None
        got = grads(lambda q, k, v: attention_with_mass(q, k, v, kmask, attn), q, k, v, keep)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert route(q, k, v, kmask, attn) is None
    monkeypatch.setattr(intensity, "_USE_MASS_FUNCTION", False)
    assert route(q, k, v, kmask, attn) is None
    want = grads(lambda q, k, v: reference(q, k, v, kmask, attn), q, k, v, keep)
    rows = keep[:, None, :]
    torch.testing.assert_close(got[1] * rows, want[1] * rows, rtol=0, atol=1e-12)
    for g, w in zip(got[2:], want[2:], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)


def test_pad_width_rule():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert intensity._pad_width(64, 64, cuda) == 72
    assert intensity._pad_width(64, 0, cuda) == 64  # mass alone: no padding of q or k
    assert intensity._pad_width(64, 0, cpu) == 64
    assert intensity._pad_width(64, 64, cpu) == 65  # d + 1 at every length: measured fastest
    assert intensity._pad_width(64, 80, cpu) == 81


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mask", ["bool", "additive", None])
def test_cuda_function_against_reference(dtype, mask):
    """CUDA flash (bf16, no mask) and memory-efficient (fp32, or a mask) kernels through the Function."""
    q, k, v, kmask, attn, keep = make(b=3, h=8, hkv=2, t=300, d=64, dv=64, dtype=dtype, mask=mask, device="cuda")
    if attn is not None and attn.dtype != torch.bool:
        attn = attn.to(dtype)
    assert route(q.requires_grad_(), k, v, kmask, attn) is not None
    got = grads(lambda q, k, v: attention_with_mass(q, k, v, kmask, attn, causal=attn is None), q, k, v, keep)
    want = grads(lambda q, k, v: reference(q, k, v, kmask, attn), q.double(), k.double(), v.double(), keep)
    tol = 2e-5 if dtype == torch.float32 else 3e-2
    rows = keep[:, None, :]
    torch.testing.assert_close(got[0].double() * rows[..., None], want[0] * rows[..., None], rtol=0, atol=tol)
    torch.testing.assert_close(got[1].double() * rows, want[1] * rows, rtol=0, atol=tol)
    for g, w in zip(got[2:], want[2:], strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), w, rtol=0, atol=tol * 10)


# -- the fused route checks itself (what a first GPU run relies on) -------------------------------


@pytest.fixture
def fresh_checks(monkeypatch):
    """Self-check verdicts and routes as in a new process."""
    monkeypatch.setattr(intensity, "_VERDICTS", {})
    monkeypatch.setattr(intensity, "_ROUTES", {})


def _faulty_forward(real):
    def forward(backend, q, k, v, attn_mask, scale, is_causal):
        out, lse, aux = real(backend, q, k, v, attn_mask, scale, is_causal)
        return out * 1.5, lse, aux  # a kernel with a wrong layout or scale: wrong values, no error

    return forward


def _raising_forward(*args):
    raise RuntimeError("aten::_scaled_dot_product_flash_attention_for_cpu: no such op\nsecond line")


@pytest.mark.parametrize("fault", [_faulty_forward(intensity._fused_forward), _raising_forward])
def test_a_failing_fused_route_falls_back_with_one_warning(fault, fresh_checks, monkeypatch):
    q, k, v, kmask, attn, keep = make(hkv=2, mask="bool", dtype=torch.float64)
    monkeypatch.setattr(intensity, "_fused_forward", fault)
    with pytest.warns(RuntimeWarning, match=r"cpu/float64/flash/d=8,dv=6 .*portable SDPA route"):
        assert route(q.requires_grad_(), k, v, kmask, attn) is None
    got = grads(lambda q, k, v: attention_with_mass(q, k, v, kmask, attn), q, k, v, keep)  # no second warning
    want = grads(lambda q, k, v: reference(q, k, v, kmask, attn), q, k, v, keep)
    rows = keep[:, None, :]
    torch.testing.assert_close(got[1] * rows, want[1] * rows, rtol=0, atol=1e-12)
    for g, w in zip(got[2:], want[2:], strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=1e-11)
    routes = intensity.kernel_routes()
    assert routes["routes"] == {"cpu/float64/d=8,dv=6": "sdpa (fused flash failed its self-check)"}
    assert routes["self_checks"]["cpu/float64/flash/d=8,dv=6"].startswith("failed: ")
    assert "\n" not in routes["self_checks"]["cpu/float64/flash/d=8,dv=6"]


def test_a_passing_self_check_runs_once_per_case_and_is_recorded(fresh_checks, monkeypatch):
    calls = []
    real = intensity._check_fused
    monkeypatch.setattr(intensity, "_check_fused", lambda *a: calls.append(a) or real(*a))
    for dtype in (torch.float64, torch.float64, torch.float32):
        q, k, v, kmask, attn, _ = make(hkv=2, mask="bool", dtype=dtype)
        attention_with_mass(q, k, v, kmask, attn)
    assert [(a[1], a[2], a[3], a[4]) for a in calls] == [(torch.float64, "flash", 8, 6), (torch.float32, "flash", 8, 6)]
    routes = intensity.kernel_routes()
    assert routes["self_checks"] == {"cpu/float32/flash/d=8,dv=6": "passed", "cpu/float64/flash/d=8,dv=6": "passed"}
    assert routes["routes"]["cpu/float32/d=8,dv=6"] == "fused flash"


def test_self_check_leaves_the_global_rng_alone(fresh_checks):
    q, k, v, kmask, attn, _ = make(hkv=2, mask="bool", dtype=torch.float32)
    state = torch.get_rng_state()
    attention_with_mass(q, k, v, kmask, attn)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("dv", [6, 0])
def test_self_check_passes_on_the_real_cpu_op(dtype, dv):
    intensity._check_fused(torch.device("cpu"), dtype, "flash", 8, dv)


def test_self_check_catches_a_small_error():
    with pytest.raises(AssertionError, match="differs from the reference math"):
        intensity._agree(
            "mass", torch.full((3,), 0.5 + 1e-2), torch.full((3,), 0.5, dtype=torch.float64), torch.float32
        )
    with pytest.raises(AssertionError, match="differs"):
        intensity._agree("mass", torch.full((3,), float("nan")), torch.zeros(3, dtype=torch.float64), torch.float32)


@pytest.mark.parametrize(
    "choice",
    [
        None,  # the private API removed
        lambda q, k, v: 1,  # a changed signature: TypeError
        lambda *a, **kw: object(),  # a changed return type
    ],
)
def test_missing_or_changed_private_kernel_choice_falls_back(choice, fresh_checks, monkeypatch):
    q, k, v, kmask, attn, keep = make(hkv=2, mask="bool", dtype=torch.float64)
    if choice is None:
        monkeypatch.delattr(torch, "_fused_sdp_choice")
    else:
        monkeypatch.setattr(torch, "_fused_sdp_choice", choice, raising=False)
    assert route(q, k, v, kmask, attn) is None
    got = grads(lambda q, k, v: attention_with_mass(q, k, v, kmask, attn), q, k, v, keep)
    want = grads(lambda q, k, v: reference(q, k, v, kmask, attn), q, k, v, keep)
    rows = keep[:, None, :]
    torch.testing.assert_close(got[1] * rows, want[1] * rows, rtol=0, atol=1e-12)
    torch.testing.assert_close(got[2], want[2], rtol=0, atol=1e-11)
    assert intensity.kernel_routes()["routes"] == {"cpu/float64/d=8,dv=6": "sdpa"}


def test_span_mass_flex_falls_back_to_sdpa_when_its_self_check_fails(fresh_checks, monkeypatch):
    q, k, v, kmask, attn, keep = make(hkv=2, mask="bool", dtype=torch.float64)
    qmask = keep & (torch.arange(q.shape[2]) > 5)
    monkeypatch.setattr(intensity, "flex_available", lambda device: True)

    def broken(*args):
        raise RuntimeError("triton: no kernel for this GPU")

    monkeypatch.setattr(intensity, "_check_flex", broken)
    with pytest.warns(RuntimeWarning, match=r"cpu/float64/flex/d=8,dv=8 .*RuntimeError: triton"):
        got = intensity.span_mass(q, k, qmask, kmask, attn, method="flex")
    want = intensity.span_mass(q, k, qmask, kmask, attn, method="reference")
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert intensity.kernel_routes()["self_checks"]["cpu/float64/flex/d=8,dv=8"].startswith("failed: RuntimeError")


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_self_check_passes_when_the_first_call_runs_without_autograd(mode, fresh_checks):
    """Profiling and evaluation run under inference_mode / no_grad: the check must not fail there."""
    import warnings

    q, k, v, kmask, attn, _ = make(hkv=2, mask="bool", dtype=torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with getattr(torch, mode)():
            attention_with_mass(q, k, v, kmask, attn)
    assert intensity.kernel_routes()["self_checks"] == {"cpu/float32/flash/d=8,dv=6": "passed"}
