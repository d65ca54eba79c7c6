"""Decode-time profiling: KV-cached decoding inside aia.capture, against teacher forcing.

The reference: teacher forcing with the same ``SpanConfig`` on the prompt followed by the
model's own output runs the same attention rows as the cached decoding steps (the tokens'
own positions by default, the positions predicting them with ``predictive=True``), so the
two intensities must agree to fp32 rounding, with CFG and sampling too: the statistic is
the conditional branch's.
"""

from __future__ import annotations

import json
from dataclasses import replace
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
from aia.measure.decode import DEFAULT_MAX_NEW_TOKENS, DecodeSettings, decode_batch, decode_example, decode_profile
from aia.measure.profile import load_profile
from aia.testing.tiny import TINY_MODELS
from tests.helpers import eager_attentions, span_intensity, teacher_forced_intensity, tiny_llama, with_decoded_answer

PREDICTIVE = SpanConfig(predictive=True)
GREEDY = DecodeSettings(cfg_weight=1.0, temperature=0.0)


def decode(model, adapter, record, task, base_dir, settings=DecodeSettings(), **kw):
    """decode_example on a record, with the unconditional branch that generation with CFG needs."""
    example = adapter.encode(record, task, base_dir)
    guided = task == "gen" and settings.cfg_weight != 1
    uncond = adapter.encode(record, task, base_dir, cfg_blank=True) if guided else None
    return example, decode_example(model, adapter, example, settings, uncond=uncond, **kw)


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


@pytest.mark.parametrize("predictive", [False, True], ids=["own", "predictive"])
@pytest.mark.parametrize("task", ["und", "gen"])
def test_decode_equals_teacher_forcing_on_own_output(tiny_model, family, task, predictive, tiny_data):
    model, processor = tiny_model
    adapter = get_adapter(model, processor, span_config=SpanConfig(predictive=predictive))
    data = tiny_data[0] if task == "und" else tiny_data[1]
    settings = DecodeSettings(max_new_tokens=5 if task == "und" else None)  # gen: CFG 5, sampled
    for index, record in enumerate(read_records(data)[:3]):
        example, decoded = decode(model, adapter, record, task, data.parent, settings, sample_index=index)
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
            # the 4x4 image but its last code (gen_queries="image-but-last": codes 0..N-2)
            assert decoded.steps == int((image == Role.IMAGE).sum()) - 1 == 15
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


def test_generation_sampling_is_seeded_and_cfg_changes_the_statistic(tiny_data):
    model, processor = TINY_MODELS["janus"](seed=0)
    adapter = get_adapter(model, processor)
    record = read_records(tiny_data[1])[0]
    base = tiny_data[1].parent
    _, a = decode(model, adapter, record, "gen", base, DecodeSettings(seed=3))
    _, b = decode(model, adapter, record, "gen", base, DecodeSettings(seed=3))
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.intensity, b.intensity)  # same seed, same run
    _, c = decode(model, adapter, record, "gen", base, DecodeSettings(seed=4))
    assert not torch.equal(a.tokens, c.tokens)  # sampled: another seed, other codes
    # greedy, so that only the guidance differs (a tiny random model's logits are nearly flat)
    _, guided = decode(model, adapter, record, "gen", base, DecodeSettings(temperature=0.0))
    _, plain = decode(model, adapter, record, "gen", base, GREEDY)
    assert not torch.equal(guided.tokens, plain.tokens)  # the unconditional branch changes the choices ...
    assert not torch.allclose(guided.intensity, plain.intensity)  # ... and so the measured statistic
    _, g1 = decode(model, adapter, record, "gen", base, GREEDY)
    _, g2 = decode(model, adapter, record, "gen", base, DecodeSettings(cfg_weight=1.0, temperature=0.0, seed=9))
    assert torch.equal(g1.tokens, g2.tokens)  # greedy ignores the seed
    with pytest.raises(ValueError, match="needs the unconditional example"):
        decode_example(model, adapter, adapter.encode(record, "gen", base), DecodeSettings())


def test_understanding_tokens_equal_transformers_generate(tiny_data):
    model, processor = TINY_MODELS["janus"](seed=0)
    adapter = get_adapter(model, processor)
    record = read_records(tiny_data[0])[0]
    _, decoded = decode(model, adapter, record, "und", tiny_data[0].parent, DecodeSettings(max_new_tokens=6))
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


@pytest.mark.parametrize("spans", [SpanConfig(), PREDICTIVE], ids=["own", "predictive"])
def test_understanding_stops_at_end_of_turn(tiny_data, spans):
    model, processor = TINY_MODELS["chameleon"](seed=0)
    adapter = get_adapter(model, processor, span_config=spans)
    model.lm_head = _EndTurnAfter(model.lm_head, adapter.eos_id, after=3)
    example = adapter.encode(read_records(tiny_data[0])[0], "und", tiny_data[0].parent)
    decoded = decode_example(model, adapter, example)
    assert len(decoded.tokens) == 4 and decoded.tokens[-1] == adapter.eos_id
    assert decoded.roles.tolist() == [Role.ANSWER] * 3 + [Role.TEMPLATE]
    assert decoded.steps == 4  # und_queries="answer+eos": the end of turn that closes the answer is a query
    torch.testing.assert_close(
        decoded.intensity, teacher_intensity(model, adapter, example, decoded), rtol=0, atol=1e-5
    )

    model.lm_head.after, model.lm_head.calls = 0, 0  # the end of turn comes first: nothing to measure
    assert decode_example(model, adapter, example).intensity is None
    model.lm_head.after = 10**9  # no end of turn: the answer runs to the default cap
    assert len(decode_example(model, adapter, example).tokens) == DEFAULT_MAX_NEW_TOKENS

    answers = get_adapter(model, processor, span_config=replace(spans, und_queries="answer"))
    model.lm_head.after, model.lm_head.calls = 3, 0
    decoded = decode_example(model, answers, example)
    assert decoded.steps == 3  # und_queries="answer": the end of turn is no query
    torch.testing.assert_close(
        decoded.intensity, teacher_intensity(model, answers, example, decoded), rtol=0, atol=1e-5
    )


def test_generation_prefix_and_image_markers(tiny_data):
    model, processor = TINY_MODELS["emu3"](seed=0)
    record = read_records(tiny_data[1])[0]
    base = tiny_data[1].parent
    adapter = get_adapter(model, processor)
    _, decoded = decode(model, adapter, record, "gen", base, DecodeSettings(max_new_tokens=7))
    assert len(decoded.tokens) == 7 and decoded.steps == 6  # 4 codes, an end-of-line, 2 codes
    markers = get_adapter(model, processor, span_config=SpanConfig(image_markers_are_image=True))
    _, decoded = decode(model, markers, record, "gen", base)
    assert len(decoded.tokens) == 20 and decoded.steps == 19  # the forced end-of-lines count too; the last code not
    every = get_adapter(model, processor, span_config=SpanConfig(image_markers_are_image=True, gen_queries="image"))
    _, decoded = decode(model, every, record, "gen", base)
    assert decoded.steps == len(decoded.tokens) == 20


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
            input_ids=ids[:, :-1], attention_mask=attn[:, :-1], position_ids=position_ids[:, :-1], cache=cache
        )
        with aia.capture(model) as cap:
            model(
                input_ids=ids[:, -1:],
                attention_mask=attn,
                position_ids=position_ids[:, -1:],
                cache=cache,
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
    assert raw["settings"]["decoding"] == "greedy" and raw["settings"]["max_new_tokens"] == 4
    assert raw["settings"]["spans"]["predictive"] is False and raw["settings"]["spans"]["gen_keys"]
    # the same numbers from the library
    adapter = get_adapter(model, processor)
    records = read_records(tiny_data[0])[:2]
    settings = DecodeSettings(max_new_tokens=4)
    rows = [decode(model, adapter, r, "und", tiny_data[0].parent, settings)[1].intensity for r in records]
    np.testing.assert_allclose(raw["per_sample"], torch.stack(rows).numpy(), atol=1e-6)
    assert load_profile(out).mode == "decode"

    assert main([*args, "--out", str(tmp_path / "x.json"), "--max-new-tokens", "4"]) == 2
    assert "--max-new-tokens applies to --mode decode only" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x.json"), "--guidance", "3"]) == 2
    assert "--guidance applies to --mode decode only" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
    batched = tmp_path / "batched.json"
    flags = ["--mode", "decode", "--max-new-tokens", "4", "--batch-size", "2", "--quiet"]
    assert main([*args, "--out", str(batched), *flags]) == 0  # both samples in one batch
    np.testing.assert_allclose(json.loads(batched.read_text())["per_sample"], raw["per_sample"], rtol=0, atol=1e-5)


def test_decode_profile_with_no_usable_sample(tiny_data):
    model, processor = TINY_MODELS["chameleon"](seed=0)
    adapter = get_adapter(model, processor)
    model.lm_head = _EndTurnAfter(model.lm_head, adapter.eos_id, after=0)
    with pytest.raises(NoUsableSamples, match="could be measured"):
        decode_profile(model, processor, tiny_data[0], "und", samples=2, progress=False)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        DecodeSettings(max_new_tokens=0)
    with pytest.raises(ValueError, match="cfg_weight must be a finite number"):
        DecodeSettings(cfg_weight=float("nan"))


@pytest.mark.parametrize("task", ["und", "gen"])
def test_batch_of_four_gives_the_profile_of_batch_one(tiny_model, family, task, tiny_data):
    """Left-padded rows, both CFG branches in one forward, per-sample seeds: the same tokens and the
    same per-sample intensities (1e-5) as one sample at a time; 5 samples: a batch of 4, then 1."""
    model, processor = tiny_model
    data = tiny_data[0] if task == "und" else tiny_data[1]
    settings = DecodeSettings(max_new_tokens=6 if task == "und" else None, seed=2)  # gen: CFG 5, sampled
    one = decode_profile(model, processor, data, task, samples=5, settings=settings, progress=False, batch_size=1)
    four = decode_profile(model, processor, data, task, samples=5, settings=settings, progress=False, batch_size=4)
    assert one.n == four.n == 5
    np.testing.assert_allclose(four.per_sample, one.per_sample, rtol=0, atol=1e-5)
    adapter = get_adapter(model, processor)
    records = read_records(data)[:4]
    examples = [adapter.encode(r, task, data.parent) for r in records]
    unconds = [adapter.encode(r, task, data.parent, cfg_blank=True) for r in records] if task == "gen" else None
    batched = decode_batch(model, adapter, examples, settings, unconds=unconds, sample_indices=[0, 1, 2, 3])
    for i, got in enumerate(batched):
        alone = decode_example(model, adapter, examples[i], settings, uncond=unconds and unconds[i], sample_index=i)
        assert torch.equal(got.tokens, alone.tokens) and torch.equal(got.roles, alone.roles)
        assert got.steps == alone.steps
        torch.testing.assert_close(got.intensity, alone.intensity, rtol=0, atol=1e-5)
