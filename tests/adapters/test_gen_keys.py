"""The generation key set per family, and CFG-blanked samples carrying no AIA term (flag, not key set)."""

import pytest
import torch
from PIL import Image

import aia
from aia.adapters import get_adapter
from aia.core.intensity import span_valid
from aia.core.spans import Role, SpanConfig
from tests.helpers import gen_record

GEN = gen_record("a red square")
IMAGE = Image.new("RGB", (32, 32), (200, 20, 20))


def _first_image_position(roles: torch.Tensor) -> int:
    return int(((roles == Role.IMAGE) | (roles == Role.IMAGE_MARKER)).nonzero()[0])


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_text_keys_hold_bos_template_and_prompt(tiny_model, family, padding_side):
    model, processor = tiny_model
    adapter = get_adapter(model, processor, span_config=SpanConfig(gen_keys="text"), padding_side=padding_side)
    short = gen_record("red")
    batch = adapter.collate([adapter.encode(GEN, "gen", None, image=IMAGE), adapter.encode(short, "gen", None, image=IMAGE)])
    for row in range(2):
        roles, ids = batch.roles[row], batch.inputs["input_ids"][row]
        real = (roles != Role.PAD).nonzero().flatten()
        start, boi = int(real[0]), _first_image_position(roles)
        assert batch.key_mask[row].nonzero().flatten().tolist() == list(range(start, boi))
        assert ids[start] == adapter.bos_id and batch.key_mask[row, start]  # BOS (the attention sink) is a key
        assert (roles[batch.key_mask[row]] == Role.TEMPLATE).any()
    prompt_only = get_adapter(model, processor, span_config=SpanConfig(gen_keys="prompt"), padding_side=padding_side)
    batch = prompt_only.collate([prompt_only.encode(GEN, "gen", None, image=IMAGE)])
    assert batch.key_mask.tolist() == (batch.roles == Role.PROMPT).tolist()


def test_cfg_blanked_sample_carries_no_term_whatever_its_keys(tiny_model, family):
    model, processor = tiny_model
    adapter = get_adapter(model, processor, span_config=SpanConfig(gen_keys="text"))
    blank = adapter.encode(GEN, "gen", None, image=IMAGE, cfg_blank=True)
    assert blank.cfg_blank and not adapter.encode(GEN, "gen", None, image=IMAGE).cfg_blank
    batch = adapter.collate([blank, adapter.encode(GEN, "gen", None, image=IMAGE)])
    assert batch.key_mask[0].any()  # BOS and template stay keys ...
    assert not batch.query_mask[0].any()  # ... but the flag empties the query set
    assert span_valid(batch.query_mask, batch.key_mask).tolist() == [False, True]
    with torch.no_grad(), aia.capture(model) as cap:
        adapter.forward(model, batch)
    assert cap.valid.tolist() == [False, True]
