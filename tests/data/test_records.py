"""Data format: records, tasks, conversations, images."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from aia.data.records import (
    DataError,
    ImageError,
    dialogue,
    generation_prompt,
    image_path,
    infer_task,
    load_image,
    read_records,
    split_at_image,
)
from tests.helpers import gen_record, und_record

GEN = gen_record(" a red cube ", image="a.png")
UND = und_record(("<image>\nwhat is it?", "a cube"), ("color?", " red "), image="b.png")


def test_load_json_list_and_jsonl(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps([GEN, UND], indent=2))
    (tmp_path / "b.jsonl").write_text(json.dumps(GEN) + "\n\n" + json.dumps(UND) + "\n")
    assert read_records(tmp_path / "a.json") == [GEN, UND]
    assert read_records(tmp_path / "b.jsonl") == [GEN, UND]


def test_line_separators_inside_values_stay_in_their_record(tmp_path):
    gen = gen_record("a red\u2028cube\u2029on grass\u0085", image="a.png")
    und = und_record(("<image>\nwhat\u2028is it?", "a cube\u0085"), image="b.png")
    path = tmp_path / "sep.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in (gen, und)), encoding="utf-8")
    assert read_records(path) == [gen, und]
    assert [infer_task(r) for r in read_records(path)] == ["gen", "und"]
    path.write_bytes(b'{"image": "a.png"}\n\x80\x81\xfe junk\n')
    with pytest.raises(DataError, match=r"sep\.jsonl: line 2: not UTF-8 text"):
        read_records(path)


def test_bad_json_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(GEN) + "\n" + '{"image": "x.png", "conversations": [\n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: invalid JSON"):
        read_records(path)
    path = tmp_path / "bad.json"
    path.write_text('[\n {"a": 1},\n {"a": 2,}\n]')
    with pytest.raises(DataError, match=r"bad\.json: line 3: invalid JSON"):
        read_records(path)
    path = tmp_path / "notobj.jsonl"
    path.write_text(json.dumps(GEN) + "\n[1, 2]\n")
    with pytest.raises(DataError, match=r"notobj\.jsonl: line 2: a record must be a JSON object"):
        read_records(path)


def test_infer_task():
    assert infer_task(GEN) == "gen"
    assert infer_task(UND) == "und"
    almost = {"conversations": [{"from": "human", "value": "draw"}, {"from": "gpt", "value": "<image> "}]}
    assert infer_task(almost) == "und"
    with pytest.raises(DataError, match="conversations"):
        infer_task({"image": "x.png"})
    with pytest.raises(DataError, match="each turn"):
        infer_task({"conversations": [{"from": "user", "value": "hi"}]})


def test_conversations():
    assert generation_prompt(GEN) == "a red cube"
    assert dialogue(UND) == [("<image>\nwhat is it?", "a cube"), ("color?", "red")]
    with pytest.raises(DataError, match="alternates"):
        dialogue({"conversations": UND["conversations"][:3]})
    with pytest.raises(DataError, match="only the first question"):
        bad = {"conversations": [dict(t) for t in UND["conversations"]]}
        bad["conversations"][2]["value"] = "<image> again?"
        dialogue(bad)
    with pytest.raises(DataError, match="generation record"):
        generation_prompt({"conversations": [*GEN["conversations"], *GEN["conversations"]]})


def test_split_at_image():
    assert split_at_image("<image>\nwhat is it?") == ("", "what is it?")
    assert split_at_image("what is it?") == ("", "what is it?")
    assert split_at_image("look at <image> now") == ("look at", "now")
    assert split_at_image("describe <image>") == ("describe", "")


def test_images(tmp_path):
    Image.new("L", (5, 4), 128).save(tmp_path / "gray.png")
    image = load_image(image_path({"image": "gray.png"}, tmp_path))
    assert image.mode == "RGB" and image.size == (5, 4)
    with pytest.raises(ImageError, match="missing.png"):
        load_image(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageError, match="broken.png"):
        load_image(tmp_path / "broken.png")
    assert issubclass(ImageError, ValueError)
    with pytest.raises(DataError, match="no 'image'"):
        image_path({"conversations": []}, tmp_path)
