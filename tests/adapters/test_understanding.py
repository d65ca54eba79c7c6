"""Understanding-only reference models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA, LLaVA-NeXT) on tiny random configs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import aia
from aia.adapters import UnderstandingAdapter, get_adapter, load_model
from aia.adapters.base import IGNORE_INDEX
from aia.cli import main
from aia.core.spans import Role, SpanConfig
from aia.data.records import read_records
from aia.measure.decode import DecodeSettings, decode_batch, decode_example
from aia.measure.profile import load_profile
from aia.measure.teacher import profile_model
from aia.testing.tiny_understanding import TINY_UNDERSTANDING_MODELS, save_understanding_model
from tests.helpers import eager_attentions, span_intensity, teacher_forced_intensity, und_record, with_decoded_answer

NAMES = sorted(TINY_UNDERSTANDING_MODELS)
RECORD = und_record(("look at this <image> and tell me: what color is the square?", "red"), ("where is it?", "at the top"))
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(params=NAMES)
def reference(request):
    """``(name, model, processor)`` of each tiny reference model."""
    model, processor = TINY_UNDERSTANDING_MODELS[request.param](seed=0)
    return request.param, model, processor


def encode_all(adapter, path, n):
    return [adapter.encode(r, "und", path.parent) for r in read_records(path)[:n]]


def test_sequence_roles_and_labels(reference, tiny_data):
    name, model, processor = reference
    adapter = get_adapter(model, processor)
    image = read_records(tiny_data[0])[0]["image"]
    ex = adapter.encode({**RECORD, "image": image}, "und", tiny_data[0].parent)
    tok = processor.tokenizer
    roles = ex.roles.tolist()
    image_pos = [i for i, r in enumerate(roles) if r == Role.IMAGE]
    # one contiguous image block of the processor's size, holding the model's image token only
    assert image_pos == list(range(image_pos[0], image_pos[0] + len(image_pos)))
    assert (ex.input_ids[image_pos] == model.config.image_token_id).all()
    assert int((ex.input_ids == model.config.image_token_id).sum()) == len(image_pos)
    answers = tok.decode(ex.input_ids[ex.roles == Role.ANSWER])
    assert answers.replace(" ", "") == "redatthetop"
    prompt = tok.decode(ex.input_ids[ex.roles == Role.PROMPT])
    assert prompt.replace(" ", "") == "lookatthisandtellme:whatcoloristhesquare?whereisit?"
    supervised = ex.labels != IGNORE_INDEX
    assert torch.equal(ex.labels[supervised], ex.input_ids[supervised])
    closing = ex.input_ids[supervised & (ex.roles == Role.TEMPLATE)].tolist()
    assert closing == [adapter.eos_id, adapter.eos_id]  # the end of each answer turn is a target
    markers = ex.roles == Role.IMAGE_MARKER
    if name.startswith("qwen"):  # <|vision_start|> ... <|vision_end|> around the block
        assert ex.input_ids[markers].tolist() == [model.config.vision_start_token_id, model.config.vision_end_token_id]
        assert markers[image_pos[0] - 1] and markers[image_pos[-1] + 1]
    else:
        assert not markers.any()
    # the number of image tokens is what the vision tower produces: the forward checks it
    with torch.no_grad():
        adapter.forward(model, adapter.collate([ex]))


def eager_intensity(model, batch) -> torch.Tensor:
    """Released-code style: eager attention with output_attentions, maps sliced by the span masks. ``[L, B]``."""
    with torch.no_grad():
        maps = eager_attentions(
            model, {"text_config": "eager"}, call=model.model, **batch.inputs, attention_mask=batch.attention_mask
        )
    return span_intensity(maps, batch.query_mask, batch.key_mask)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_capture_matches_eager_maps(reference, tiny_data, padding_side):
    _, model, processor = reference
    adapter = get_adapter(model, processor, padding_side=padding_side)
    batch = adapter.collate(encode_all(adapter, tiny_data[0], 4))  # mixed lengths and image sizes
    assert (batch.attention_mask == 0).any()
    want = eager_intensity(model, batch)
    with torch.no_grad():
        ref = model.model(**batch.inputs, attention_mask=batch.attention_mask).last_hidden_state
        with aia.capture(model) as cap:
            out = model.model(
                **batch.inputs,
                attention_mask=batch.attention_mask,
                aia_query_mask=batch.query_mask,
                aia_key_mask=batch.key_mask,
            ).last_hidden_state
    assert cap.num_layers == model.config.text_config.num_hidden_layers == want.shape[0]
    assert cap.valid.all()
    torch.testing.assert_close(cap.intensity, want, rtol=0, atol=1e-5)
    keep = batch.attention_mask.bool()
    torch.testing.assert_close(out[keep], ref[keep], rtol=0, atol=1e-5)  # observed, not changed
    # padding does not change a sample's intensity
    single = adapter.collate(encode_all(adapter, tiny_data[0], 1))
    with torch.no_grad(), aia.capture(model) as cap1:
        adapter.forward(model, single)
    torch.testing.assert_close(cap1.intensity[:, 0], cap.intensity[:, 0], rtol=0, atol=1e-5)


def test_llava_next_mixed_tile_counts(tiny_data):
    """Images of different aspect ratios get different tile counts; the batch zero-pads the tiles."""
    model, processor = TINY_UNDERSTANDING_MODELS["llava_next"](seed=0)
    adapter = get_adapter(model, processor)
    tall, square = Image.new("RGB", (32, 64), (200, 20, 20)), Image.new("RGB", (32, 32), (20, 20, 200))
    examples = [adapter.encode(RECORD, "und", tiny_data[0].parent, image=im) for im in (tall, square)]
    assert [ex.vision["pixel_values"].shape[1] for ex in examples] == [3, 2]
    assert (examples[0].roles == Role.IMAGE).sum() > (examples[1].roles == Role.IMAGE).sum()
    batch = adapter.collate(examples)
    assert batch.inputs["pixel_values"].shape[:2] == (2, 3) and not batch.inputs["pixel_values"][1, 2].any()
    with torch.no_grad(), aia.capture(model) as cap:
        adapter.forward(model, batch)
    torch.testing.assert_close(cap.intensity, eager_intensity(model, batch), rtol=0, atol=1e-5)


def test_decode_batch_equals_one_row_at_a_time(reference, tiny_data):
    """Understanding references through the batched decode (their own collate: vision inputs, M-RoPE
    positions, left padding): the same tokens and intensities as each row alone."""
    name, model, processor = reference
    adapter = get_adapter(model, processor)
    examples = encode_all(adapter, tiny_data[0], 3)
    settings = DecodeSettings(max_new_tokens=4)
    batched = decode_batch(model, adapter, examples, settings, sample_indices=[0, 1, 2])
    for i, got in enumerate(batched):
        alone = decode_example(model, adapter, examples[i], settings, sample_index=i)
        assert torch.equal(got.tokens, alone.tokens), name
        torch.testing.assert_close(got.intensity, alone.intensity, rtol=0, atol=1e-5)


@pytest.mark.parametrize("predictive", [False, True], ids=["own", "predictive"])
def test_decode_matches_teacher_forcing_and_generate(reference, tiny_data, predictive):
    name, model, processor = reference
    adapter = get_adapter(model, processor, span_config=SpanConfig(predictive=predictive))
    for ex in encode_all(adapter, tiny_data[0], 2):
        decoded = decode_example(model, adapter, ex, DecodeSettings(max_new_tokens=5))
        assert decoded.steps == 5
        # teacher forcing on the model's own answer, the same query positions
        want = teacher_forced_intensity(model, adapter, with_decoded_answer(decoded))
        torch.testing.assert_close(decoded.intensity, want, rtol=0, atol=1e-5)
        # the tokens are transformers' own greedy decoding (its positions, M-RoPE included)
        batch = adapter.collate([decoded.prompt])
        generated = model.generate(
            **batch.inputs, attention_mask=batch.attention_mask, max_new_tokens=5, do_sample=False
        )
        assert generated[0, len(decoded.prompt) :].tolist() == decoded.tokens.tolist(), name


def test_understanding_only_and_missing_pieces(reference, tiny_data):
    name, model, processor = reference
    adapter = get_adapter(model, processor)
    assert isinstance(adapter, UnderstandingAdapter)
    record = read_records(tiny_data[1])[0]
    with pytest.raises(ValueError, match=f"{type(model).__name__} is an understanding-only model"):
        adapter.encode(record, "gen", tiny_data[1].parent)
    with pytest.raises(ValueError, match="understanding-only"):
        profile_model(model, processor, tiny_data[1], "gen", samples=1, progress=False)
    config = model.config
    key = "image_token_index" if "image_token_index" in config.to_dict() else "image_token_id"
    original = getattr(config, key)
    object.__setattr__(config, key, None)
    try:
        with pytest.raises(ValueError, match="no image_token_id in config"):
            get_adapter(model, processor)
    finally:
        object.__setattr__(config, key, original)


def test_unsupported_model_is_named():
    with pytest.raises(ValueError, match="no adapter for Linear; supported: .*Qwen3VLForConditionalGeneration"):
        get_adapter(torch.nn.Linear(2, 2), processor=None)


@pytest.mark.parametrize("name", ["qwen2_vl", "llava"])
def test_profile_cli_on_saved_reference(name, tiny_data, tmp_path, capsys):
    model, processor = TINY_UNDERSTANDING_MODELS[name](seed=0)
    directory = save_understanding_model(model, processor, tmp_path / name)
    loaded, loaded_processor = load_model(directory)
    assert type(loaded_processor).__name__ == type(processor).__name__
    assert type(loaded_processor.image_processor) is type(processor.image_processor)
    base = ["profile", str(directory), "--data", str(tiny_data[0]), "--task", "und", "--samples", "3", "--quiet"]
    for mode in ("teacher", "decode"):
        out = tmp_path / f"{mode}.json"
        assert main([*base, "--out", str(out), "--mode", mode]) == 0
        raw = json.loads(out.read_text())
        assert raw["mode"] == mode and raw["n"] == 3 and raw["num_layers"] == 2
        per = np.array(raw["per_sample"])
        assert np.all((per > 0) & (per < 1))
    assert "(paper Table 1)" in capsys.readouterr().out
    # the same teacher numbers as the in-memory model with its in-memory processor
    want = profile_model(model, processor, tiny_data[0], "und", samples=3, progress=False)
    np.testing.assert_allclose(load_profile(tmp_path / "teacher.json").per_sample, want.per_sample, atol=1e-6)
    gen = main([*base[:3], str(tiny_data[1]), "--task", "gen", "--out", str(tmp_path / "gen.json")])
    assert gen == 2 and "understanding-only" in capsys.readouterr().err
