"""The record encoder: one preprocessing policy (containment, image transform, length policy)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from aia.adapters import get_adapter
from aia.core.spans import Role
from aia.data.encoder import (
    LengthPolicy,
    OverLong,
    Preprocessing,
    RecordEncoder,
    prompt_part,
    question_record,
    truncate,
)
from aia.data.images import center_crop
from aia.data.records import image_path, load_image, read_records
from aia.errors import ConfigError, DataError
from aia.testing.tiny import TINY_MODELS


@pytest.fixture(scope="module")
def janus():
    model, processor = TINY_MODELS["janus"](seed=0)
    return get_adapter(model, processor)


def test_length_policy_truncates_after_the_image_or_skips(tiny_data, janus):
    example = janus.encode(read_records(tiny_data[0])[0], "und", tiny_data[0].parent)
    last_image = int(((example.roles == Role.IMAGE) | (example.roles == Role.IMAGE_MARKER)).nonzero().max())
    assert LengthPolicy(len(example)).fit(example) is example and LengthPolicy().fit(example) is example
    cut = LengthPolicy(last_image + 2).fit(example)
    assert len(cut) == last_image + 2 and torch.equal(cut.labels, example.labels[: last_image + 2])
    with pytest.raises(OverLong, match=r"too long \(\d+ > \d+ tokens\) to fit its image"):
        LengthPolicy(last_image).fit(example)
    with pytest.raises(OverLong, match=f"too long: {len(example)} tokens > max_length {last_image + 2}"):
        LengthPolicy(last_image + 2, "skip").fit(example)
    assert truncate(example, last_image) is None
    with pytest.raises(ValueError, match="over_long must be one of"):
        LengthPolicy(10, "cut")
    with pytest.raises(ValueError, match="max_length must be >= 1"):
        LengthPolicy(0)


def test_policy_values_are_checked_and_read_from_a_run_config():
    from aia.training.config import load_config

    with pytest.raises(ValueError, match="gen_image_transform must be one of"):
        Preprocessing(gen_image_transform="crop")
    with pytest.raises(ValueError, match="image_area must be >= 1"):
        Preprocessing(image_area=0)
    cfg = load_config(
        None,
        ["data.gen=g.jsonl", "data.image_area=400", "data.gen_image_transform=center_crop", "data.max_length=77"],
        check_paths=False,
    )
    policy = Preprocessing.from_data_config(cfg.data)
    assert policy == Preprocessing(400, "center_crop", None, LengthPolicy(77, "truncate"))
    assert policy.to_dict() == {
        "image_area": 400,
        "gen_image_transform": "center_crop",
        "image_root": None,
        "length": {"max_length": 77, "over_long": "truncate", "gen_prompt_length": None},
    }


def test_encoder_transforms_images_and_keeps_them_inside_the_root(tiny_data, janus, tmp_path):
    record = read_records(tiny_data[1])[0]
    base = tiny_data[1].parent
    crop = RecordEncoder(janus, "gen", base, Preprocessing(gen_image_transform="center_crop"))
    image = center_crop(load_image(image_path(record, base)), 32)
    torch.testing.assert_close(
        crop(record).pixel_values, janus.encode(record, "gen", base, image=image).pixel_values, rtol=0, atol=0
    )
    # a given image stands for the record's file and is transformed like it
    wide = Image.new("RGB", (64, 32), (200, 10, 10))
    given = crop(record, image=wide).pixel_values
    torch.testing.assert_close(
        given, janus.encode(record, "gen", base, image=center_crop(wide, 32)).pixel_values, rtol=0, atol=0
    )
    # understanding images are not cropped
    assert RecordEncoder(janus, "und", base, Preprocessing(gen_image_transform="center_crop")).transform is None
    rooted = RecordEncoder(janus, "gen", base, Preprocessing(image_root=str(tmp_path)))
    with pytest.raises(DataError, match="lies outside data.image_root"):
        rooted(record)
    assert RecordEncoder(janus, "gen", base, Preprocessing(image_root=str(base)))(record) is not None
    emu3_model, emu3_processor = TINY_MODELS["emu3"](seed=0)
    with pytest.raises(ConfigError, match="center_crop needs an image processor with a fixed square size"):
        RecordEncoder(
            get_adapter(emu3_model, emu3_processor), "gen", base, Preprocessing(gen_image_transform="center_crop")
        )


def test_prompt_part_ends_where_generation_starts(tiny_data, janus):
    gen = janus.encode(read_records(tiny_data[1])[0], "gen", tiny_data[1].parent)
    prompt = prompt_part(gen)
    assert prompt.roles[-1] == Role.IMAGE_MARKER and (prompt.labels == -100).all()  # <begin_of_image> included
    assert gen.labels[len(prompt)] != -100
    question = RecordEncoder(janus, "und", None)(question_record("Is it red?"), image=Image.new("RGB", (32, 32)))
    asked = prompt_part(question)
    assert asked.roles[-1] == Role.TEMPLATE and Role.ANSWER not in asked.roles.tolist()
    assert torch.equal(asked.input_ids, question.input_ids[: len(asked)])
    with pytest.raises(DataError, match="nothing to generate"):
        prompt_part(prompt)


def test_janus_generation_prompt_is_the_trained_prompt(janus):
    """aia generate's Janus prompt (the text-only chat prompt, then <begin_of_image>) is the prompt
    part of the generation record the run trained on."""
    record = {
        "image": "-",
        "conversations": [{"from": "human", "value": "a red square"}, {"from": "gpt", "value": "<image>"}],
    }
    trained = prompt_part(RecordEncoder(janus, "gen", None)(record, image=Image.new("RGB", (32, 32))))
    text, _ = janus.text_prompt("a red square")
    ids = janus.tokenizer(text, add_special_tokens=False)["input_ids"] + [janus.boi_id]
    assert trained.input_ids.tolist() == ids
