"""Decode-time profiling: KV-cached greedy decoding inside aia.capture, against teacher forcing.

The reference: teacher forcing with ``SpanConfig(predictive=True)`` on the prompt followed by
the model's own greedy output runs the same attention rows as the cached decoding steps,
so the two intensities must agree to fp32 rounding.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn
from transformers import DynamicCache

import aia
from aia.adapters import get_adapter
from aia.cli import main
from aia.core.spans import Role, SpanConfig
from aia.data.records import read_records
from aia.errors import DataError as NoUsableSamples
from aia.measure.decode import DEFAULT_MAX_NEW_TOKENS, decode_example, decode_profile
from aia.measure.profile import load_profile
from aia.testing.tiny import TINY_MODELS
from tests.helpers import eager_attentions, span_intensity, teacher_forced_intensity, tiny_llama, with_decoded_answer

PREDICTIVE = SpanConfig(predictive=True)


pytestmark = pytest.mark.usefixtures("one_thread")


def teacher_intensity(model, adapter, example, decoded) -> torch.Tensor:
    """Teacher-forced fp64 ``[L]`` intensity (predictive queries) of one sample through the training forward.

    Understanding: the prompt followed by the decoded answer. Generation: the whole encoded
    record, whose image tokens the forward takes from the VQ tokenizer: here it hands back
    the decoded tokens instead, so the sequence is prompt + the model's own image.
    """
    if example.task == "und":
        example = with_decoded_answer(decoded)
    else:
        tokens = decoded.tokens
        if adapter.family == "janus":
            model.model.vqmodel.encode = lambda pixels: SimpleNamespace(image_tokens=tokens)
        elif adapter.family == "emu3":
            adapter._image_tokens = lambda model, pixels, sizes: tokens
        else:
            model.model.get_image_tokens = lambda pixels: tokens[None]
    return teacher_forced_intensity(model, adapter, example)


@pytest.mark.parametrize("task", ["und", "gen"])
def test_decode_equals_teacher_forcing_on_own_output(tiny_model, family, task, tiny_data):
    model, processor = tiny_model
    adapter = get_adapter(model, processor, span_config=PREDICTIVE)
    data = tiny_data[0] if task == "und" else tiny_data[1]
    for record in read_records(data)[:3]:
        example = adapter.encode(record, task, data.parent)
        decoded = decode_example(model, adapter, example, max_new_tokens=5 if task == "und" else None)
        n = len(decoded.tokens)
        if task == "und":
            assert decoded.steps == n == 5 and (decoded.roles == Role.ANSWER).all()
            assert adapter.image_token_id not in decoded.tokens.tolist()
            # the prompt is the first turn up to its answer
            first_answer = int((example.roles == Role.ANSWER).nonzero()[0])
            assert torch.equal(decoded.prompt.input_ids, example.input_ids[:first_answer])
        else:
            image = example.roles[len(decoded.prompt) :][:n]
            assert torch.equal(decoded.roles, image)
            assert decoded.steps == int((image == Role.IMAGE).sum()) == 16  # the 4x4 image
            assert n == (20 if family == "emu3" else 16)
            if family == "emu3":  # end-of-line forced after every row of 4 codes
                eol = model.model.vocabulary_mapping.eol_token_id
                assert decoded.tokens.view(4, 5)[:, -1].tolist() == [eol] * 4
                assert set(decoded.tokens.view(4, 5)[:, :-1].flatten().tolist()) <= set(
                    model.model.vocabulary_mapping.image_tokens
                )
            if family == "chameleon":
                assert set(decoded.tokens.tolist()) <= set(model.model.vocabulary_mapping.image_tokens)
        want = teacher_intensity(model, adapter, example, decoded)
        torch.testing.assert_close(decoded.intensity, want, rtol=0, atol=1e-5)
        assert ((decoded.intensity > 0) & (decoded.intensity < 1)).all()


def test_understanding_tokens_equal_transformers_generate(tiny_data):
    model, processor = TINY_MODELS["janus"](seed=0)
    adapter = get_adapter(model, processor)
    record = read_records(tiny_data[0])[0]
    decoded = decode_example(model, adapter, adapter.encode(record, "und", tiny_data[0].parent), max_new_tokens=6)
    batch = adapter.collate([decoded.prompt])
    ref = model.generate(
        input_ids=batch.inputs["input_ids"],
        pixel_values=batch.inputs["pixel_values"],
        attention_mask=batch.attention_mask,
        max_new_tokens=6,
        do_sample=False,
    )
    assert ref[0, batch.inputs["input_ids"].shape[1] :].tolist() == decoded.tokens.tolist()


class _EndTurnAfter(nn.Module):
    """An output head whose end-of-turn logit wins from the ``after``-th call on."""

    def __init__(self, head: nn.Module, eos: int, after: int):
        super().__init__()
        self.head, self.eos, self.after, self.calls = head, eos, after, 0

    def forward(self, hidden):
        logits = self.head(hidden)
        self.calls += 1
        if self.calls > self.after:
            logits[..., self.eos] = 1e4
        return logits


def test_understanding_stops_at_end_of_turn(tiny_data):
    model, processor = TINY_MODELS["chameleon"](seed=0)
    adapter = get_adapter(model, processor, span_config=PREDICTIVE)
    model.lm_head = _EndTurnAfter(model.lm_head, adapter.eos_id, after=3)
    example = adapter.encode(read_records(tiny_data[0])[0], "und", tiny_data[0].parent)
    decoded = decode_example(model, adapter, example)
    assert len(decoded.tokens) == 4 and decoded.tokens[-1] == adapter.eos_id
    assert decoded.roles.tolist() == [Role.ANSWER] * 3 + [Role.TEMPLATE]
    assert decoded.steps == 3  # the step that predicts the end of turn is not an answer query
    torch.testing.assert_close(
        decoded.intensity, teacher_intensity(model, adapter, example, decoded), rtol=0, atol=1e-5
    )

    model.lm_head.after, model.lm_head.calls = 0, 0  # the end of turn comes first: nothing to measure
    assert decode_example(model, adapter, example).intensity is None
    model.lm_head.after = 10**9  # no end of turn: the answer runs to the default cap
    assert len(decode_example(model, adapter, example).tokens) == DEFAULT_MAX_NEW_TOKENS


def test_generation_prefix_and_image_markers(tiny_data):
    model, processor = TINY_MODELS["emu3"](seed=0)
    record = read_records(tiny_data[1])[0]
    adapter = get_adapter(model, processor)
    decoded = decode_example(model, adapter, adapter.encode(record, "gen", tiny_data[1].parent), max_new_tokens=7)
    assert len(decoded.tokens) == 7 and decoded.steps == 6  # 4 codes, an end-of-line, 2 codes
    markers = get_adapter(model, processor, span_config=SpanConfig(image_markers_are_image=True))
    decoded = decode_example(model, markers, markers.encode(record, "gen", tiny_data[1].parent))
    assert decoded.steps == len(decoded.tokens) == 20  # the forced end-of-lines count too


def test_cached_single_query_matches_eager_rows():
    """aia.capture on a q_len = 1 step over a cache (masks [B, kv_len]), with left padding, vs eager maps."""
    model = tiny_llama(torch.float32, layers=2)
    ids = torch.randint(1, 97, (2, 12))
    attn = torch.ones(2, 12, dtype=torch.long)
    attn[1, :4] = 0  # left padding
    position_ids = (attn.cumsum(-1) - 1).clamp(min=0)
    keys = torch.zeros(2, 12, dtype=torch.bool)
    keys[:, 5:8] = True
    keys[1, 4] = True
    query = torch.zeros(2, 12, dtype=torch.bool)
    query[:, -1] = True
    with torch.no_grad():
        cache = DynamicCache(config=model.config)
        model(
            input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=position_ids[:, :-1], past_key_values=cache
        )
        with aia.capture(model) as cap:
            model(
                input_ids=ids[:, -1:],
                attention_mask=attn,
                position_ids=position_ids[:, -1:],
                past_key_values=cache,
                aia_query_mask=query,
                aia_key_mask=keys,
            )
        maps = eager_attentions(model, input_ids=ids, attention_mask=attn, position_ids=position_ids)
    torch.testing.assert_close(cap.intensity, span_intensity(maps, query, keys), rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["janus"])
def test_profile_cli_decode_mode(saved_model, tiny_data, tmp_path, capsys):
    model_dir, model, processor = saved_model
    args = ["profile", str(model_dir), "--data", str(tiny_data[0]), "--task", "und", "--samples", "2"]
    out = tmp_path / "und.json"
    assert main([*args, "--out", str(out), "--mode", "decode", "--max-new-tokens", "4", "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "mode=decode" in stdout and "(paper Table 1)" in stdout  # Table 1 statistic printed
    raw = json.loads(out.read_text())
    assert raw["mode"] == "decode" and raw["n"] == 2
    # the same numbers from the library
    adapter = get_adapter(model, processor, span_config=PREDICTIVE)
    records = read_records(tiny_data[0])[:2]
    rows = [decode_example(model, adapter, adapter.encode(r, "und", tiny_data[0].parent), 4).intensity for r in records]
    np.testing.assert_allclose(raw["per_sample"], torch.stack(rows).numpy(), atol=1e-6)
    assert load_profile(out).mode == "decode"

    assert main([*args, "--out", str(tmp_path / "x.json"), "--max-new-tokens", "4"]) == 2
    assert "--max-new-tokens applies to --mode decode only" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x.json"), "--mode", "decode", "--batch-size", "2"]) == 2
    assert "one sample at a time" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_decode_profile_with_no_usable_sample(tiny_data):
    model, processor = TINY_MODELS["chameleon"](seed=0)
    adapter = get_adapter(model, processor)
    model.lm_head = _EndTurnAfter(model.lm_head, adapter.eos_id, after=0)
    with pytest.raises(NoUsableSamples, match="could be measured"):
        decode_profile(model, processor, tiny_data[0], "und", samples=2, progress=False)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        decode_profile(model, processor, tiny_data[1], "gen", samples=1, max_new_tokens=0, progress=False)
