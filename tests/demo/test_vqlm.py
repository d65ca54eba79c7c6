"""The VQ-LM adapter of the demo's model family (:mod:`aia.demo.vqlm`)."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM

import aia
from aia.adapters import IGNORE_INDEX, get_adapter
from aia.core.spans import Role, SpanConfig
from aia.demo import VQLMAdapter
from aia.measure.decode import DecodeSettings, decode_example
from tests.demo.helpers import CODES, GEN, UND

UND_TWO_TURNS = {
    "image": "unused.png",
    "conversations": [
        {"from": "human", "value": "what is this <image> ?"},
        {"from": "gpt", "value": "a digit"},
        {"from": "human", "value": "which digit?"},
        {"from": "gpt", "value": "7"},
    ],
}


def _tokens(processor, *words) -> list[int]:
    return processor.tokenizer.convert_tokens_to_ids(list(words))


def test_vqlm_exact_sequences_roles_and_labels(hand_made):
    processor, model, adapter, image = hand_made
    assert isinstance(adapter, VQLMAdapter)
    codes = [processor.image_code_token_ids[c] for c in CODES]
    bos, eos, boi, eoi = _tokens(processor, "<bos>", "<eos>", "<boi>", "<eoi>")
    T, P, IM, M, A = Role.TEMPLATE, Role.PROMPT, Role.IMAGE, Role.IMAGE_MARKER, Role.ANSWER

    und = adapter.encode(UND, "und", None, image=image)
    ids = [bos, *_tokens(processor, "user", ":"), boi, *codes, eoi]
    ids += [*_tokens(processor, "what", "digit", "is", "this", "?", "assistant", ":", "7"), eos]
    roles = [T, T, T, M] + [IM] * 16 + [M, P, P, P, P, P, T, T, A, T]
    assert und.input_ids.tolist() == ids
    assert und.roles.tolist() == [int(r) for r in roles]
    supervised = und.labels != IGNORE_INDEX
    assert supervised.nonzero().flatten().tolist() == [len(ids) - 2, len(ids) - 1]  # the answer and its <eos>
    assert (und.labels[supervised] == und.input_ids[supervised]).all()
    assert und.pixel_values is None

    gen = adapter.encode(GEN, "gen", None, image=image)
    assert gen.input_ids.tolist() == [bos, *_tokens(processor, "draw", "digit", "7"), boi, *codes, eoi, eos]
    assert gen.roles.tolist() == [int(r) for r in [T, P, P, P, M] + [IM] * 16 + [M, T]]
    assert (gen.labels != IGNORE_INDEX).nonzero().flatten().tolist() == list(range(5, 22))  # codes and <eoi>

    blank = adapter.encode(GEN, "gen", None, image=image, cfg_blank=True)
    assert blank.input_ids.tolist() == [bos, boi, *codes, eoi, eos]

    two = adapter.encode(UND_TWO_TURNS, "und", None, image=image)
    ids = [bos, *_tokens(processor, "user", ":", "what", "is", "this"), boi, *codes, eoi, *_tokens(processor, "?")]
    ids += [*_tokens(processor, "assistant", ":", "a", "digit"), eos]
    ids += [*_tokens(processor, "user", ":", "which", "digit", "?", "assistant", ":", "7"), eos]
    assert two.input_ids.tolist() == ids
    assert int((two.roles == Role.ANSWER).sum()) == 3 and int((two.labels != IGNORE_INDEX).sum()) == 5


#: the whole-image span sets (answers, image tokens, every code), whose masks the test writes by role
WHOLE = SpanConfig(gen_queries="image", und_queries="answer", und_keys="image")


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_vqlm_spans_loss_and_intensity_match_an_eager_reference(hand_made, padding_side):
    processor, model, _, image = hand_made
    adapter = get_adapter(model, processor, padding_side=padding_side, span_config=WHOLE)
    for task, records in (("und", [UND, UND_TWO_TURNS]), ("gen", [GEN, {**GEN, "conversations": UND["conversations"][:1] * 0 + GEN["conversations"]}])):
        examples = [adapter.encode(r, task, None, image=image) for r in records]
        if task == "gen":
            examples[1] = adapter.encode(GEN, "gen", None, image=image, cfg_blank=True)
        batch = adapter.collate(examples)
        roles = batch.roles
        if task == "und":
            assert (batch.query_mask == (roles == Role.ANSWER)).all() and (batch.key_mask == (roles == Role.IMAGE)).all()
        else:
            carries_term = torch.tensor([not ex.cfg_blank for ex in examples])[:, None]  # CFG-blanked: Q emptied
            assert (batch.query_mask == ((roles == Role.IMAGE) & carries_term)).all()
            before_image = (((roles == Role.IMAGE) | (roles == Role.IMAGE_MARKER)).long().cumsum(-1) == 0)
            text = before_image & ((roles == Role.TEMPLATE) | (roles == Role.PROMPT))
            assert (batch.key_mask == text).all()  # gen_keys="text": BOS and prompt before <boi>
        with torch.no_grad(), aia.capture(model) as cap:
            loss = adapter.forward(model, batch).loss
        # NTP: plain cross-entropy of the model's own logits on the supervised next tokens
        with torch.no_grad():
            ref = model(
                input_ids=batch.inputs["input_ids"],
                attention_mask=batch.attention_mask,
                position_ids=batch.inputs["position_ids"],
                output_attentions=True,
                attn_implementation="eager",
            )
        logits, targets = ref.logits[:, :-1], batch.labels[:, 1:]
        expected = torch.nn.functional.cross_entropy(logits[targets != IGNORE_INDEX], targets[targets != IGNORE_INDEX])
        torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
        # Eq. 1 by hand from eager attention maps [B, H, T, T]
        for layer, attn in enumerate(ref.attentions):
            for b in range(batch.batch_size):
                q, k = batch.query_mask[b], batch.key_mask[b]
                if not (q.any() and k.any()):
                    assert not cap.valid[b]  # CFG-blanked: its query set is emptied, no statistic
                    continue
                by_hand = attn[b][:, q][:, :, k].sum(-1).mean()
                torch.testing.assert_close(cap.intensity[layer, b], by_hand, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("predictive", [False, True], ids=["own", "predictive"])
@pytest.mark.parametrize("task", ["und", "gen"])
def test_vqlm_decode_equals_teacher_forcing_on_its_own_output(hand_made, task, predictive):
    """KV-cached decoding (``aia profile --mode decode``; generation sampled with CFG) against one
    teacher-forced pass with the same query positions."""
    processor, model, _, image = hand_made
    adapter = get_adapter(model, processor, span_config=SpanConfig(predictive=predictive))
    record = UND_TWO_TURNS if task == "und" else GEN
    example = adapter.encode(record, task, None, image=image)
    uncond = adapter.encode(record, task, None, image=image, cfg_blank=True) if task == "gen" else None
    settings = DecodeSettings(max_new_tokens=4 if task == "und" else None)
    decoded = decode_example(model, adapter, example, settings, uncond=uncond)
    tokens = decoded.tokens
    if task == "und":
        assert decoded.steps == len(tokens) == 4 and (decoded.roles == Role.ANSWER).all()
        assert not set(tokens.tolist()) & {*adapter.code_ids, adapter.boi_id, adapter.eoi_id}
        ids = torch.cat([decoded.prompt.input_ids, tokens])
        roles = torch.cat([decoded.prompt.roles, decoded.roles])
    else:
        assert len(tokens) == 16 and set(tokens.tolist()) <= set(adapter.code_ids)
        assert decoded.steps == 15  # gen_queries="image-but-last": codes 0..N-2 are the queries
        image_at = example.roles == Role.IMAGE
        ids = example.input_ids.clone()
        ids[image_at] = tokens  # the record with the model's own image in place of the data's
        roles = example.roles
    forced = replace(example, input_ids=ids, roles=roles, labels=torch.full_like(ids, IGNORE_INDEX))
    with torch.no_grad(), aia.capture(model) as cap:
        adapter.forward(model, adapter.collate([forced]))
    torch.testing.assert_close(decoded.intensity, cap.intensity[:, 0].double(), rtol=0, atol=1e-5)


def _plain_llama(vocab_size: int = 64) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab_size, hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))


def test_get_adapter_needs_a_processor_with_an_image_tokenizer(hand_made):
    processor, model, _, _ = hand_made
    with pytest.raises(ValueError, match="image tokenizer"):
        get_adapter(model, processor.tokenizer)


def test_a_plain_llama_is_not_taken_for_the_demo_family(hand_made, tmp_path):
    """The demo family is found by the marker its models carry (config.json's aia_family), never by
    the class alone: a plain Llama, in memory or saved with a digits processor, has no adapter."""
    from aia.adapters import FAMILY_MARKER, load_model
    from aia.errors import InputError

    processor, model, _, _ = hand_made
    assert getattr(model.config, FAMILY_MARKER) == VQLMAdapter.family
    plain = _plain_llama(len(processor.tokenizer))
    with pytest.raises(InputError, match="no adapter for LlamaForCausalLM"):
        get_adapter(plain, processor)
    for name, which in (("plain", plain), ("demo", model)):
        which.save_pretrained(tmp_path / name)
        processor.save_pretrained(tmp_path / name)
    with pytest.raises(InputError, match="config.json: no adapter for LlamaForCausalLM"):
        load_model(tmp_path / "plain")
    loaded, loaded_processor = load_model(tmp_path / "demo")
    assert isinstance(get_adapter(loaded, loaded_processor), VQLMAdapter)
    marked_unknown = json.loads((tmp_path / "demo" / "config.json").read_text())
    (tmp_path / "demo" / "config.json").write_text(json.dumps({**marked_unknown, FAMILY_MARKER: "nope"}))
    with pytest.raises(InputError, match="marked as family 'nope'.*not registered"):
        load_model(tmp_path / "demo")


# ----------------------------------------------------------------- text-to-image (aia generate)
def _greedy_codes(model, adapter, prompt: str, guidance: float) -> list[int]:
    """The reference: one prompt, no padding, the argmax over the code tokens of the guided logits."""
    code_ids = torch.tensor(adapter.code_ids)
    seqs = [adapter.generation_prefix(prompt)] + [adapter.generation_prefix(prompt, cfg_blank=True)] * (guidance > 1)
    codes = []
    with torch.no_grad():
        for _ in range(adapter.image_tokenizer.tokens_per_image):
            scores = [model(input_ids=torch.tensor([s]), use_cache=False).logits[0, -1, code_ids] for s in seqs]
            guided = scores[0] if guidance == 1 else scores[1] + guidance * (scores[0] - scores[1])
            codes.append(int(guided.argmax()))
            seqs = [s + [adapter.code_ids[codes[-1]]] for s in seqs]
    return codes


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_vqlm_generates_images_through_generate_images(hand_made, tmp_path, guidance):
    """``aia.evaluate.generate_images`` on a demo model: greedy images equal a one-prompt reference
    decoding (prompts of different lengths batched with left padding), sampled ones do not depend on
    the batch size, and the digits' own sampler shares the adapter's generation prefix."""
    from aia.demo.digits import DigitsVQ
    from aia.evaluate import generate_images
    from tests.demo.helpers import CODEBOOK

    processor, model, adapter, _ = hand_made
    prompts = ["draw digit seven", "draw seven", "digit"]
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    out = tmp_path / "greedy"
    summary = generate_images(model, tmp_path / "p.txt", out, processor=processor, temperature=0, guidance=guidance,
                              batch_size=3, progress=False)
    assert summary["family"] == "vqlm" and summary["images_generated"] == 3
    vq = DigitsVQ(CODEBOOK)
    for i, prompt in enumerate(prompts):
        with Image.open(out / f"{i:05d}_0.png") as image:
            assert image.size == (8, 8) and image.mode == "L"
            assert list(vq.encode_image(image)) == _greedy_codes(model, adapter, prompt, guidance)
    one, three = tmp_path / "one", tmp_path / "three"
    for folder, batch in ((one, 1), (three, 3)):
        generate_images(model, tmp_path / "p.txt", folder, processor=processor, images_per_prompt=2, seed=5,
                        guidance=guidance, batch_size=batch, progress=False)
    assert {p.name: p.read_bytes() for p in one.glob("*.png")} == {p.name: p.read_bytes() for p in three.glob("*.png")}


def test_vqlm_without_decoder_is_one_clear_error(hand_made, tmp_path):
    from aia.errors import InputError
    from aia.evaluate import generate_images

    processor, model, adapter, _ = hand_made

    class EncodeOnly:  # an image tokenizer that cannot decode
        num_codes, tokens_per_image = processor.image_tokenizer.num_codes, 16
        encode_image = processor.image_tokenizer.encode_image

    blind = copy.copy(processor)
    blind.image_tokenizer = EncodeOnly()
    (tmp_path / "p.txt").write_text("digit\n")
    with pytest.raises(InputError, match="EncodeOnly.*no decode_image"):
        generate_images(model, tmp_path / "p.txt", tmp_path / "out", processor=blind, progress=False)


def test_aia_generate_on_a_saved_demo_model(hand_made, tmp_path):
    """``aia generate`` loads a saved digits model (its processor included) and writes its PNGs."""
    from aia.cli import main

    processor, model, _, _ = hand_made
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    (tmp_path / "p.txt").write_text("draw digit seven\ndraw digit one\n")
    assert main(["generate", str(tmp_path / "model"), "--prompts", str(tmp_path / "p.txt"), "--out",
                 str(tmp_path / "img"), "--images-per-prompt", "2", "--quiet"]) == 0
    assert sorted(p.name for p in (tmp_path / "img").glob("*.png")) == [f"0000{i}_{k}.png" for i in (0, 1) for k in (0, 1)]


@pytest.mark.parametrize("cfg_blank", [False, True])
def test_vqlm_generation_prefix_is_what_encode_writes(hand_made, cfg_blank):
    processor, _, adapter, image = hand_made
    record = {"conversations": [{"from": "human", "value": " draw digit seven "}, {"from": "gpt", "value": "<image>"}]}
    example = adapter.encode(record, "gen", Path("."), image=image, cfg_blank=cfg_blank)
    first_code = int((example.roles == Role.IMAGE).int().argmax())
    assert adapter.generation_prefix(" draw digit seven ", cfg_blank=cfg_blank) == example.input_ids[:first_code].tolist()
    # a text-to-image prompt may hold any text, '<image>' included (not a data record)
    assert adapter.generation_prefix("a <image> of seven")[-1] == adapter.boi_id
    with pytest.raises(ValueError, match="one seed per prompt: 2 prompts, 1 seeds"):
        adapter.generate_images(hand_made[1], ["a", "b"], [0], None)
