"""aia.capture inside a real transformers model, against eager attention maps."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

import aia
from aia.attention import ATTN_SDPA
from tests.helpers import eager_attentions, softmax_maps, span_intensity, tiny_llama


def eager_full_precision(module, query, key, value, attention_mask, scaling, dropout=0.0, **kwargs):
    """transformers' eager attention, except that the softmax runs in the input dtype.

    transformers' own eager path takes the softmax in fp32, which caps an fp64 reference
    at ~1e-8; this one keeps fp64 maps fp64.
    """
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    weights = softmax_maps(query, key, mask, scaling)
    v = value.repeat_interleave(module.num_key_value_groups, 1)
    return (weights @ v).transpose(1, 2).contiguous(), weights


AttentionInterface.register("eager_full_precision", eager_full_precision)
AttentionMaskInterface.register("eager_full_precision", eager_mask)


def batch(pad_side="right", b=3, t=29, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 97, (b, t), generator=g)
    lengths = torch.tensor([t, t - 6, t - 11])[:b]
    pos = torch.arange(t)
    keep = pos[None] < lengths[:, None] if pad_side == "right" else pos[None] >= (t - lengths)[:, None]
    q = (torch.rand(b, t, generator=g) < 0.5) & keep
    k = (torch.rand(b, t, generator=g) < 0.3) & keep
    return ids, keep.long(), q, k


def eager_intensity(model, ids, attn, qmask, kmask):
    """Released-code style: eager attention, output_attentions, slice the maps. ``[L, B]``.

    The mask is passed in 4D with padding rows attending to themselves: transformers' eager
    path otherwise turns fully masked padding rows into NaN in fp64, which then leak into
    later layers' maps through 0 * NaN.
    """
    t, device, dtype = ids.shape[1], ids.device, model.dtype
    causal = torch.ones(t, t, dtype=torch.bool, device=device).tril()
    allowed = causal[None] & attn.bool()[:, None, :] | torch.eye(t, dtype=torch.bool, device=device)
    mask4d = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)[
        :, None
    ]
    maps = eager_attentions(model, "eager_full_precision", input_ids=ids, attention_mask=mask4d)
    return span_intensity(maps, qmask, kmask)


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_capture_matches_eager_maps_fp64(pad_side):
    model = tiny_llama()
    ids, attn, q, k = batch(pad_side)
    q[1] = False  # an empty query set
    want = eager_intensity(model, ids, attn, q, k)
    with aia.capture(model) as cap:
        out = model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k)
        got = cap.intensity
        assert cap.valid.tolist() == [True, False, True]
    assert got.shape == (3, 3)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    ref = model(input_ids=ids, attention_mask=attn).logits
    keep = attn.bool()
    torch.testing.assert_close(out.logits[keep], ref[keep], rtol=0, atol=1e-10)


def test_capture_fp32_outputs_equal_sdpa():
    model = tiny_llama(torch.float32)
    ids, attn, q, k = batch("left")
    want = eager_intensity(model, ids, attn, q, k)
    ref = model(input_ids=ids, attention_mask=attn).logits
    with aia.capture(model) as cap:
        out = model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k)
    keep = attn.bool()
    torch.testing.assert_close(out.logits[keep], ref[keep], rtol=0, atol=1e-5)
    torch.testing.assert_close(cap.intensity, want, rtol=0, atol=1e-5)


def test_capture_restores_implementation_and_is_a_noop_without_masks():
    model = tiny_llama(torch.float32)
    ids, attn, _, _ = batch()
    ref = model(input_ids=ids, attention_mask=attn).logits
    with aia.capture(model) as cap:
        assert model.config._attn_implementation == ATTN_SDPA
        out = model(input_ids=ids, attention_mask=attn).logits
        with pytest.raises(RuntimeError, match="no intensity recorded"):
            cap.intensity  # noqa: B018
    assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(out, ref)


def test_gradients_wrt_projections_match_eager():
    ids, attn, q, k = batch("right")
    weights = torch.randn(3, 3, dtype=torch.float64)
    grads = []
    for route in ("eager", "aia"):
        model = tiny_llama()
        if route == "eager":
            got = eager_intensity(model, ids, attn, q, k)
        else:
            with aia.capture(model) as cap:
                model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k)
                got = cap.intensity
        (got * weights).sum().backward()
        layer = model.model.layers[1].self_attn
        grads.append((layer.q_proj.weight.grad.clone(), layer.k_proj.weight.grad.clone()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-10)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=0, atol=1e-10)
    assert grads[0][0].abs().sum() > 0


def test_non_reentrant_checkpointing_gives_same_values_and_grads():
    ids, attn, q, k = batch("left")
    results = []
    for ckpt in (False, True):
        model = tiny_llama()
        model.train()
        if ckpt:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        with aia.capture(model) as cap:
            out = model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k)
            inten = cap.intensity
            (inten.sum() + out.logits.float().mean()).backward()
            after = cap.intensity  # recomputation overwrote layers by index, not appended
        assert after.shape == inten.shape
        results.append((inten.detach(), model.model.layers[0].self_attn.q_proj.weight.grad.clone()))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=0, atol=1e-12)
    torch.testing.assert_close(results[1][1], results[0][1], rtol=0, atol=1e-10)


def test_reentrant_checkpointing_is_refused():
    model = tiny_llama()
    model.train()
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(RuntimeError, match="non-reentrant"), aia.capture(model):
        pass
    assert model.config._attn_implementation == "sdpa"


def test_cached_decoding_unchanged_inside_capture():
    model = tiny_llama(torch.float32)
    ids = torch.randint(1, 97, (2, 7))
    ref = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with aia.capture(model):
        got = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(got, ref)


def test_bad_mask_shape_is_named():
    model = tiny_llama(torch.float32)
    ids, attn, q, k = batch()
    with aia.capture(model), pytest.raises(ValueError, match="aia_key_mask"):
        model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k[:, :-1])


def test_nested_capture_refused():
    model = tiny_llama(torch.float32)
    with aia.capture(model), pytest.raises(RuntimeError, match="already active"), aia.capture(model):
        pass


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["sdpa", "flex"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_capture_on_gpu_matches_eager(method, dtype):
    model = tiny_llama(torch.float64).cuda()
    ids, attn, q, k = (x.cuda() for x in batch("left", t=150))
    want = eager_intensity(model, ids, attn, q, k)
    model = model.to(dtype)
    ref = model(input_ids=ids, attention_mask=attn).logits
    with aia.capture(model, method=method) as cap:
        out = model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k)
        got = cap.intensity
        got.sum().backward()
    tol = 1e-5 if dtype == torch.float32 else 3e-2
    torch.testing.assert_close(got.double(), want, rtol=0, atol=tol)
    keep = attn.bool()
    torch.testing.assert_close(out.logits[keep].float(), ref[keep].float(), rtol=0, atol=tol * 10)
    assert model.model.layers[0].self_attn.q_proj.weight.grad.isfinite().all()


def test_flex_capture_whose_self_check_fails_runs_sdpa(monkeypatch):
    """A GPU where the compiled flex kernels disagree with the math: one warning, the SDPA route."""
    import aia.attention as attention
    import aia.core.intensity as intensity

    monkeypatch.setattr(intensity, "_VERDICTS", {})
    monkeypatch.setattr(attention, "flex_available", lambda device: True)
    wrong = torch.ones(1), torch.zeros(1, dtype=torch.float64)
    monkeypatch.setattr(intensity, "_check_flex", lambda *a: intensity._agree("mass", *wrong, torch.float32))
    model = tiny_llama(torch.float32)
    ids, attn, q, k = batch("left", t=40)
    want = eager_intensity(model, ids, attn, q, k)
    with pytest.warns(RuntimeWarning, match=r"cpu/float32/flex/d=8,dv=8 .*AssertionError: mass differs"):
        cap = aia.capture(model, method="flex")
    assert cap.method == "sdpa"
    with torch.no_grad(), cap:
        model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k)
    torch.testing.assert_close(cap.intensity, want.float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("pad_side", ["left", "right"])
def test_flex_capture_forward_on_cpu_matches_eager(pad_side):
    """The flex route through transformers' own BlockMask (padding + causal mask_mod), forward only."""
    model = tiny_llama(torch.float32)
    ids, attn, q, k = batch(pad_side, t=40)
    want = eager_intensity(model, ids, attn, q, k)
    with pytest.warns(UserWarning, match="unfused"):
        cap = aia.capture(model, method="flex")
    with torch.no_grad(), cap:
        out = model(input_ids=ids, attention_mask=attn, aia_query_mask=q, aia_key_mask=k)
        got = cap.intensity
    torch.testing.assert_close(got.double(), want.double(), rtol=0, atol=1e-5)
    ref = model(input_ids=ids, attention_mask=attn).logits
    keep = attn.bool()
    torch.testing.assert_close(out.logits[keep], ref[keep], rtol=0, atol=1e-4)


LAZY = textwrap.dedent(
    """
    import sys
    import aia
    from aia import ConfigError, DataError, InputError  # the errors are plain names
    import aia.core.spans, aia.data.records, aia.jsonl  # what the CLI's flags and readers need
    heavy = sorted(m for m in ("torch", "transformers") if m in sys.modules)
    assert not heavy, f"import aia imported {heavy}"
    from aia.attention import ATTN_SDPA
    assert "transformers" not in sys.modules, "aia.attention imported transformers"

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from tests.helpers import tiny_llama
    import torch
    assert ATTN_SDPA not in ALL_ATTENTION_FUNCTIONS, "registered at import"
    model = tiny_llama(torch.float32)
    ids = torch.randint(1, 97, (2, 9))
    mask = torch.zeros(2, 9, dtype=torch.bool)
    with aia.capture(model) as cap:
        assert ATTN_SDPA in ALL_ATTENTION_FUNCTIONS
        model(input_ids=ids, aia_query_mask=mask | (torch.arange(9) >= 5), aia_key_mask=mask | (torch.arange(9) < 3))
    assert cap.intensity.shape == (3, 2) and aia.span_valid is aia.core.intensity.span_valid
    print("ok")
    """
)


def test_import_aia_is_lazy_and_capture_registers_on_first_use():
    """`import aia` loads neither torch nor transformers; the first capture() registers the attention."""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run([sys.executable, "-c", LAZY], cwd=root, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_lazy_names_are_the_modules_own():
    import aia.core
    import aia.data
    from aia.core import loss, spans

    assert aia.capture is aia.attention.capture and aia.Capture is aia.attention.Capture
    assert (aia.total_loss, aia.TASKS) == (loss.total_loss, spans.TASKS)
    for package in (aia, aia.core, aia.data):
        assert set(package.__all__) <= set(dir(package))
        assert all(getattr(package, name) is not None for name in package.__all__)
    assert aia.core.span_mass is aia.core.intensity.span_mass and aia.data.read_records is aia.data.records.read_records
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        aia.nope  # noqa: B018
