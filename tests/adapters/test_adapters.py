"""Model-family adapters on tiny random models: sequences, roles, spans, labels, losses, kwargs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AttentionInterface, AutoProcessor
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from aia.adapters import IGNORE_INDEX, get_adapter
from aia.adapters.janus import DEFAULT_SYSTEM_PROMPT as JANUS_SYSTEM
from aia.core.spans import Role, SpanConfig
from aia.data.records import infer_task, read_records
from aia.testing.tiny import TINY_MODELS
from tests.helpers import GEN, UND, gen_record, save_model, und_record

# shorter and longer variants, so that the hand-made samples UND and GEN get padded in a batch
SHORT_UND = und_record(("what?", "red"))
SHORT_GEN = gen_record("red")
LONG_UND = {**UND, "conversations": UND["conversations"] + UND["conversations"][2:]}
LONG_GEN = gen_record("a red circle on a blue background " * 3)
IMAGE = Image.new("RGB", (32, 32), (200, 20, 20))
GRID = 4  # 32x32 pixels, downsampling 8 -> 4x4 image tokens in every tiny family

# The expected sequences, piece by piece: (text, role letter, supervised). Their token
# positions come from tokenizing the whole string at once, independently of the adapter.
ROLE = {"T": Role.TEMPLATE, "P": Role.PROMPT, "I": Role.IMAGE, "M": Role.IMAGE_MARKER, "A": Role.ANSWER}


pytestmark = pytest.mark.usefixtures("one_thread")


def expected_pieces(family: str, task: str, cfg_blank: bool = False) -> list[tuple[str, str, bool]]:
    gen = task == "gen"
    if family == "janus":
        bos, eos, ph = "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<image_placeholder>"
        if gen:
            user = [("<|User|>:", "T", False), (" a red circle on a blue background", "P", False)]
            user += [("\n\n<|Assistant|>:", "T", False)]
            if cfg_blank:  # same length, every token between <bos> and <begin_of_image> is padding
                n = len(TOKENIZERS[family]("".join(t for t, _, _ in user), add_special_tokens=False)["input_ids"])
                user = [("<｜▁pad▁｜>" * n, "T", False)]
            return [(bos, "T", False), *user, ("<begin_of_image>", "M", False), (ph * 16, "I", True)]
        return [
            (bos, "T", False),
            # the hub checkpoint's processor adds its default system prompt to understanding prompts
            (JANUS_SYSTEM + "\n\n<|User|>:", "T", False),
            (" ", "T", False),
            ("<begin_of_image>", "M", False),
            (ph * 16, "I", False),
            ("<end_of_image>", "M", False),
            ("\n", "T", False),
            ("what color is the circle?", "P", False),
            ("\n\n<|Assistant|>:", "T", False),
            (" red", "A", True),
            (eos, "T", True),
            ("<|User|>:", "T", False),
            (" where is it?", "P", False),
            ("\n\n<|Assistant|>:", "T", False),
            (" at the top", "A", True),
            (eos, "T", True),
        ]
    if family == "emu3":
        bos, eos, ph = "<|extra_203|>", "<|extra_204|>", "<image>"
        image = [("<|image start|>4*4<|image token|>", "M", False)]
        for _ in range(GRID):  # codes of one row, then its end-of-line
            image += [(ph * GRID, "I", gen), (ph, "M", False)]  # generation supervises the codes only
        image += [("<|extra_201|><|image end|>", "M", False)]
        if gen:
            prompt = [] if cfg_blank else [("a red circle on a blue background", "P", False)]
            return [(bos, "T", False), *prompt, *image, (eos, "T", False)]
        return [
            (bos, "T", False),
            ("You are a helpful assistant. USER:", "T", False),
            (" ", "T", False),
            *image,
            ("what color is the circle?", "P", False),
            (" ASSISTANT:", "T", False),
            (" red", "A", True),
            (eos, "T", True),
            ("USER:", "T", False),
            (" where is it?", "P", False),
            (" ASSISTANT:", "T", False),
            (" at the top", "A", True),
            (eos, "T", True),
        ]
    assert family == "chameleon"
    image = [("<racm3:break>", "M", False), ("<image>" * 16, "I", gen), ("<eoss>", "M", gen)]
    if gen:
        prompt = [] if cfg_blank else [("a red circle on a blue background", "P", False)]
        return [("<s>", "T", False), *prompt, ("<reserved08706>", "T", False), *image, ("</s>", "T", False)]
    return [
        ("<s>", "T", False),
        *image,
        ("what color is the circle?", "P", False),
        ("<reserved08706>", "T", False),
        ("red", "A", True),
        ("</s>", "T", True),
        ("where is it?", "P", False),
        ("<reserved08706>", "T", False),
        ("at the top", "A", True),
        ("</s>", "T", True),
    ]


TOKENIZERS = {name: build(seed=0)[1].tokenizer for name, build in TINY_MODELS.items()}


def expected_sequence(family: str, task: str, cfg_blank: bool = False):
    """(input_ids, roles, supervised) of the expected sequence, by whole-string tokenization."""
    tok = TOKENIZERS[family]
    text, roles, supervised = "", [], []
    for piece, role, sup in expected_pieces(family, task, cfg_blank):
        before = len(tok(text, add_special_tokens=False)["input_ids"])
        text += piece
        n = len(tok(text, add_special_tokens=False)["input_ids"]) - before
        roles += [ROLE[role]] * n
        supervised += [sup] * n
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(roles)
    return torch.tensor(ids), torch.tensor(roles), torch.tensor(supervised)


def encode_file(adapter, path, **kw):
    return [adapter.encode(r, infer_task(r), path.parent, **kw) for r in read_records(path)]


@pytest.mark.parametrize("task", ["und", "gen"])
def test_exact_sequence_roles_and_labels(tiny_model, family, task):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    ex = adapter.encode(UND if task == "und" else GEN, task, base_dir=None, image=IMAGE)
    ids, roles, supervised = expected_sequence(family, task)
    placeholder = adapter.image_token_id
    assert ex.input_ids.tolist() == ids.tolist()
    assert [Role(r).name for r in ex.roles.tolist()] == [Role(r).name for r in roles.tolist()]
    assert ((ex.labels != IGNORE_INDEX) == supervised).all()
    # supervised positions carry their own token (image slots: the placeholder, filled in by the forward)
    assert (ex.labels[supervised] == ex.input_ids[supervised]).all()
    assert (ex.input_ids[ex.roles == Role.IMAGE] == placeholder).all()
    assert int((ex.roles == Role.IMAGE).sum()) == GRID * GRID
    assert ex.pixel_values.shape == (3, 32, 32)


#: every image position in Q (generation) / K (understanding), the answers alone in Q (the released
#: sets, the defaults, differ at the edges: tests/core/test_spans.py)
WHOLE_SPANS = SpanConfig(gen_queries="image", und_queries="answer", und_keys="image")


@pytest.mark.parametrize("padding_side", ["right", "left"])
@pytest.mark.parametrize("task", ["und", "gen"])
def test_span_positions_in_padded_batch(tiny_model, family, task, padding_side):
    model, processor = tiny_model
    adapter = get_adapter(model, processor, padding_side=padding_side, span_config=WHOLE_SPANS)
    records = (SHORT_UND, UND, LONG_UND) if task == "und" else (SHORT_GEN, GEN, LONG_GEN)
    examples = [adapter.encode(record, task, None, image=IMAGE) for record in records]
    batch = adapter.collate(examples)
    _, roles, _ = expected_sequence(family, task)
    n, width = len(roles), batch.labels.shape[1]
    assert width == len(examples[2]) > n > len(examples[0])
    offset = width - n if padding_side == "left" else 0
    real = torch.zeros(width, dtype=torch.bool)
    real[offset : offset + n] = True

    image = torch.zeros(width, dtype=torch.bool)
    image[offset : offset + n] = roles == Role.IMAGE
    prompt = torch.zeros(width, dtype=torch.bool)
    prompt[offset : offset + n] = roles == Role.PROMPT
    answer = torch.zeros(width, dtype=torch.bool)
    answer[offset : offset + n] = roles == Role.ANSWER
    # generation keys (gen_keys="text"): every real text position before the image's first token
    first_image = int(((roles == Role.IMAGE) | (roles == Role.IMAGE_MARKER)).nonzero()[0])
    text = torch.zeros(width, dtype=torch.bool)
    text[offset : offset + first_image] = True
    query, key = (answer, image) if task == "und" else (image, text)
    assert batch.query_mask[1].nonzero().flatten().tolist() == query.nonzero().flatten().tolist()
    assert batch.key_mask[1].nonzero().flatten().tolist() == key.nonzero().flatten().tolist()
    assert query.any() and key.any()

    assert (batch.attention_mask[1].bool() == real).all()
    assert (batch.roles[1][~real] == Role.PAD).all()
    assert (batch.labels[batch.roles == Role.PAD] == IGNORE_INDEX).all()
    assert (batch.labels[batch.roles == Role.PROMPT] == IGNORE_INDEX).all()
    assert not (batch.query_mask | batch.key_mask)[batch.roles == Role.PAD].any()
    # position ids count real tokens only, whatever the padding side
    assert batch.inputs["position_ids"][1][real].tolist() == list(range(n))


def test_span_config_reaches_masks(tiny_model, family):
    model, processor = tiny_model
    cfg = SpanConfig(image_markers_are_image=True, question_in_query=True, und_queries="answer", und_keys="image")
    adapter = get_adapter(model, processor, span_config=cfg)
    batch = adapter.collate([adapter.encode(UND, "und", None, image=IMAGE)])
    roles = batch.roles[0]
    assert batch.key_mask[0].tolist() == ((roles == Role.IMAGE) | (roles == Role.IMAGE_MARKER)).tolist()
    assert batch.query_mask[0].tolist() == ((roles == Role.ANSWER) | (roles == Role.PROMPT)).tolist()


def test_cfg_blank_has_no_prompt_key_and_no_query(tiny_model, family):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    blank = adapter.encode(GEN, "gen", None, image=IMAGE, cfg_blank=True)
    ids, roles, supervised = expected_sequence(family, "gen", cfg_blank=True)
    assert blank.input_ids.tolist() == ids.tolist()
    assert blank.roles.tolist() == roles.tolist()
    assert ((blank.labels != IGNORE_INDEX) == supervised).all()
    prompt_keys = get_adapter(model, processor, span_config=SpanConfig(gen_keys="prompt", gen_queries="image"))
    batch = prompt_keys.collate([blank, adapter.encode(GEN, "gen", None, image=IMAGE)])
    assert not batch.key_mask[0].any() and batch.key_mask[1].any()  # prompt-only keys: none left when blanked
    # the cfg_blank flag empties the query set too: the blanked sample carries no AIA term
    assert not batch.query_mask[0].any() and batch.query_mask[1].sum() == GRID * GRID
    assert torch.isfinite(adapter.forward(model, batch).loss)
    with pytest.raises(ValueError, match="cfg_blank"):
        adapter.encode(UND, "und", None, image=IMAGE, cfg_blank=True)


# parameters that training updates, per family and task, and the frozen VQ
TRAINED = {
    ("janus", "und"): [  # lm_head is tied to the input embeddings
        "model.language_model.layers.0.self_attn.q_proj",
        "model.language_model.embed_tokens",
        "model.aligner",
    ],
    ("janus", "gen"): [
        "model.language_model.layers.0.self_attn.q_proj",
        "model.generation_embeddings",
        "model.generation_aligner",
        "model.generation_head",
    ],
    ("emu3", "und"): ["model.text_model.layers.0.self_attn.k_proj", "model.text_model.embed_tokens", "lm_head"],
    ("chameleon", "und"): ["model.layers.1.self_attn.v_proj", "model.embed_tokens", "lm_head"],
}
TRAINED[("emu3", "gen")] = TRAINED[("emu3", "und")]
TRAINED[("chameleon", "gen")] = TRAINED[("chameleon", "und")]


@pytest.mark.parametrize("task", ["und", "gen"])
def test_forward_loss_and_gradients(tiny_model, family, task, tiny_data):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    path = tiny_data[0] if task == "und" else tiny_data[1]
    batch = adapter.collate(encode_file(adapter, path)[:4])
    model.train()
    out = adapter.forward(model, batch)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert out.num_tokens == int((batch.labels[:, 1:] != IGNORE_INDEX).sum()) > 0
    out.loss.backward()
    params = dict(model.named_parameters())
    for prefix in TRAINED[(family, task)]:
        grads = [p.grad for name, p in params.items() if name.startswith(prefix + ".")]
        assert grads and all(g is not None for g in grads), prefix
        assert any(g.abs().sum() > 0 for g in grads), prefix
    vq = [p for name, p in params.items() if name.startswith("model.vqmodel.")]
    assert vq and all(p.grad is None for p in vq)
    assert not model.model.vqmodel.training  # the frozen tokenizer stays in eval mode under model.train()


def test_train_mode_keeps_vq_codes(tiny_model, family, tiny_data):
    """Emu3's VQ has BatchNorm: model.train() must not change the codes or the running stats."""
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    batch = adapter.collate(encode_file(adapter, tiny_data[1])[:3])
    buffers = {k: v.clone() for k, v in model.model.vqmodel.named_buffers()}
    eval_loss = adapter.forward(model, batch).loss
    model.train()
    train_loss = adapter.forward(model, batch).loss
    torch.testing.assert_close(train_loss, eval_loss)
    for k, v in model.model.vqmodel.named_buffers():
        assert torch.equal(v, buffers[k]), k


@pytest.mark.parametrize("task", ["und", "gen"])
def test_padding_side_and_batching_do_not_change_loss(tiny_model, family, task, tiny_data):
    model, processor = tiny_model
    path = tiny_data[0] if task == "und" else tiny_data[1]
    right = get_adapter(model, processor, padding_side="right")
    left = get_adapter(model, processor, padding_side="left")
    examples = encode_file(right, path)[:4]  # understanding: the 4th image is not square
    out_right = right.forward(model, right.collate(examples))
    out_left = left.forward(model, left.collate(examples))
    torch.testing.assert_close(out_left.loss, out_right.loss, rtol=1e-4, atol=1e-5)
    singles = [right.forward(model, right.collate([ex])) for ex in examples]
    mean = sum(o.loss * o.num_tokens for o in singles) / sum(o.num_tokens for o in singles)
    torch.testing.assert_close(out_right.loss, mean, rtol=1e-4, atol=1e-5)


def test_understanding_loss_matches_transformers_forward(tiny_model, family, tiny_data):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    # images of one size: transformers' Emu3 encodes a mixed-size batch zero-padded, the adapter
    # by size (see test_padding_side_and_batching_do_not_change_loss, whose batch mixes sizes)
    batch = adapter.collate(encode_file(adapter, tiny_data[0])[:3])
    extra = {"image_sizes": batch.inputs["image_sizes"]} if family == "emu3" else {}
    reference = model(
        input_ids=batch.inputs["input_ids"],
        pixel_values=batch.inputs["pixel_values"],
        attention_mask=batch.attention_mask,
        position_ids=batch.inputs["position_ids"],
        labels=batch.labels,
        **extra,
    ).loss
    torch.testing.assert_close(adapter.forward(model, batch).loss, reference, rtol=1e-5, atol=1e-5)


def test_generation_loss_matches_reference(tiny_model, family):
    """Teacher forcing on one sample, written out from the model's parts."""
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    ex = adapter.encode(GEN, "gen", None, image=IMAGE)
    pixels = ex.pixel_values[None]
    image_slots = ex.input_ids == adapter.image_token_id
    if family == "janus":  # [prompt ; <begin_of_image> ; codes[:-1]] -> generation head -> codes
        codes = model.model.vqmodel.encode(pixels).image_tokens.view(1, -1)
        prefix = ex.input_ids[~image_slots][None]
        embeds = torch.cat(
            [model.get_input_embeddings()(prefix), model.prepare_embeddings_for_image_generation(codes[:, :-1])], 1
        )
        hidden = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        logits = model.model.generation_head(hidden[0, prefix.shape[1] - 1 :])
        reference = F.cross_entropy(logits, codes[0])
    else:  # full-vocabulary next-token loss on the image codes (Chameleon: and its end-of-image marker)
        if family == "emu3":
            tokens = model.model.get_image_tokens(pixels, ex.image_sizes[None])
            lm = model.model.text_model
        else:
            tokens = model.model.get_image_tokens(pixels)
            lm = model.model
        ids = ex.input_ids.clone()
        ids[image_slots] = tokens.flatten().long()
        logits = model.lm_head(lm(input_ids=ids[None]).last_hidden_state)[0]
        if family == "emu3":  # the codes only, as Emu3's fine-tuning (apply_loss_on_only_vision)
            targets = (ex.roles == Role.IMAGE).nonzero().flatten()
        else:
            first = int(image_slots.nonzero()[0])
            last = int((ids == adapter.eoi_id).nonzero()[-1])
            targets = torch.arange(first, last + 1)
        reference = F.cross_entropy(logits[targets - 1], ids[targets])
    out = adapter.forward(model, adapter.collate([ex]))
    torch.testing.assert_close(out.loss, reference, rtol=1e-5, atol=1e-5)


_CALLS: list[dict] = []


def _recording_attention(module, query, key, value, attention_mask, **kwargs):
    _CALLS.append(
        {
            "module": type(module).__name__,
            "layer": getattr(module, "layer_idx", None),
            "query_mask": kwargs.get("aia_query_mask"),
            "key_mask": kwargs.get("aia_key_mask"),
            "has_mask": attention_mask is not None,
        }
    )
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("aia_test_recorder", _recording_attention)
AttentionMaskInterface.register("aia_test_recorder", sdpa_mask)


@pytest.mark.parametrize("task", ["und", "gen"])
def test_aia_kwargs_reach_every_language_model_layer(family, task, tiny_data):
    model, processor = TINY_MODELS[family](seed=0, num_layers=3)
    adapter = get_adapter(model, processor)
    path = tiny_data[0] if task == "und" else tiny_data[1]
    hand_made = adapter.encode(UND if task == "und" else GEN, task, None, image=IMAGE)
    batch = adapter.collate([*encode_file(adapter, path)[:2], hand_made])
    assert not batch.attention_mask.all()
    expected = adapter.forward(model, batch).loss
    lm_attention = {type(m).__name__ for m in adapter.language_model(model).modules() if hasattr(m, "layer_idx")}

    # everything through the recorder: only language-model attention sees the span masks
    model.set_attn_implementation("aia_test_recorder")
    _CALLS.clear()
    torch.testing.assert_close(adapter.forward(model, batch).loss, expected)
    lm_calls = [c for c in _CALLS if c["module"] in lm_attention]
    assert sorted(c["layer"] for c in lm_calls) == [0, 1, 2]
    for call in lm_calls:
        assert call["query_mask"] is batch.query_mask and call["key_mask"] is batch.key_mask
        assert call["has_mask"]  # padded batch: the mask function gave a mask
    others = [c for c in _CALLS if c not in lm_calls]  # Janus's vision tower (und), Emu3's VQ encoder (both)
    assert bool(others) == (family == "emu3" or (family == "janus" and task == "und")), {c["module"] for c in others}
    assert all(c["query_mask"] is None and c["key_mask"] is None for c in others)

    # language model only, as aia.capture does
    model.set_attn_implementation("sdpa")
    adapter.language_model(model).set_attn_implementation("aia_test_recorder")
    _CALLS.clear()
    adapter.forward(model, batch)
    assert sorted(c["layer"] for c in _CALLS) == [0, 1, 2]
    assert all(c["module"] in lm_attention for c in _CALLS)


def test_save_load_round_trip(tiny_model, family, tmp_path):
    model, processor = tiny_model
    save_model(model, processor, tmp_path)
    loaded_processor = AutoProcessor.from_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert type(loaded_processor) is type(processor)
    for task, record in (("und", UND), ("gen", GEN)):
        a, b = get_adapter(model, processor), get_adapter(loaded, loaded_processor)
        ex_a, ex_b = (x.encode(record, task, None, image=IMAGE) for x in (a, b))
        assert torch.equal(ex_a.input_ids, ex_b.input_ids) and torch.equal(ex_a.roles, ex_b.roles)
        assert torch.equal(ex_a.pixel_values, ex_b.pixel_values)
        loss_a = a.forward(model, a.collate([ex_a])).loss
        torch.testing.assert_close(b.forward(loaded, b.collate([ex_b])).loss, loss_a)


def test_tiny_builders_are_small_and_deterministic(family):
    model, processor = TINY_MODELS[family](seed=0)
    again, _ = TINY_MODELS[family](seed=0)
    other, _ = TINY_MODELS[family](seed=1)
    state, state_again, state_other = model.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not all(torch.equal(state[k], state_other[k]) for k in state)
    text = getattr(model.config, "text_config", model.config)
    assert text.num_key_value_heads < text.num_attention_heads and text.hidden_size == 64
    assert sum(p.numel() for p in model.parameters()) < 2_000_000


def test_errors(tiny_model, tiny_data):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    und = adapter.encode(UND, "und", None, image=IMAGE)
    gen = adapter.encode(GEN, "gen", None, image=IMAGE)
    with pytest.raises(ValueError, match="one task"):
        adapter.collate([und, gen])
    with pytest.raises(ValueError, match="task must be"):
        adapter.encode(UND, "caption", None, image=IMAGE)
    with pytest.raises(ValueError, match="padding_side"):
        get_adapter(model, processor, padding_side="middle")
    with pytest.raises(ValueError, match="no adapter for Linear"):
        get_adapter(torch.nn.Linear(2, 2), processor)
    with pytest.raises(ValueError, match="missing.png"):
        adapter.encode({**UND, "image": "missing.png"}, "und", tiny_data[0].parent)


def test_text_never_becomes_special_tokens(tiny_model, family):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    tok = processor.tokenizer
    spelled = f"{processor.image_start_token} {tok.eos_token} {tok.bos_token}"
    if processor.image_token != "<image>":  # "<image>" itself is the data format's placeholder
        spelled += " " + processor.image_token
    record = {**SHORT_UND, "conversations": [{"from": "human", "value": spelled}, {"from": "gpt", "value": spelled}]}
    ex = adapter.encode(record, "und", None, image=IMAGE)
    assert int((ex.roles == Role.IMAGE).sum()) == GRID * GRID
    slots = GRID * (GRID + 1) if family == "emu3" else GRID * GRID  # Emu3: one end-of-line slot per row
    assert int((ex.input_ids == adapter.image_token_id).sum()) == slots
    text = (ex.roles == Role.PROMPT) | (ex.roles == Role.ANSWER)
    assert not set(ex.input_ids[text].tolist()) & set(tok.all_special_ids)
    assert torch.isfinite(adapter.forward(model, adapter.collate([ex])).loss)


def test_batch_to_moves_every_tensor(tiny_model):
    model, processor = tiny_model
    adapter = get_adapter(model, processor)
    batch = adapter.collate([adapter.encode(UND, "und", None, image=IMAGE)]).to("meta")
    tensors = [batch.labels, batch.roles, batch.attention_mask, batch.query_mask, batch.key_mask]
    assert all(t.device.type == "meta" for t in [*tensors, *batch.inputs.values()])


def test_emu3_image_by_image_under_zero3_gives_the_same_codes(tiny_data):
    """Under DeepSpeed ZeRO-3 (parameters carry ``ds_id``) Emu3's VQ encodes one image per call, so
    every rank calls it as often; the codes equal the same-size grouped encoding."""
    from aia.testing.tiny import tiny_emu3

    model, processor = tiny_emu3(seed=0)
    adapter = get_adapter(model, processor)
    batch = adapter.collate(encode_file(adapter, tiny_data[0])[:4])  # one image of another size
    pixels, sizes = batch.inputs["pixel_values"], batch.inputs["image_sizes"]
    assert len(torch.unique(sizes, dim=0)) == 2
    calls = []
    encode = model.model.get_image_tokens
    model.model.get_image_tokens = lambda *a, **k: calls.append(1) or encode(*a, **k)
    grouped = adapter._image_tokens(model, pixels, sizes)
    assert len(calls) == 2
    for p in model.model.vqmodel.parameters():
        p.ds_id = 0  # what deepspeed.zero marks its partitioned parameters with
    one_by_one = adapter._image_tokens(model, pixels, sizes)
    assert len(calls) == 2 + 4
    assert torch.equal(one_by_one, grouped)
