"""Training data: bad samples, truncation, the und:gen schedule, determinism."""

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import aia.training.streams as streams_mod
from aia.adapters import get_adapter
from aia.core.spans import Role
from aia.data import center_crop
from aia.data.records import image_path, load_image, read_records
from aia.data.records import read_records as read_table
from aia.errors import ConfigError
from aia.errors import DataError as BadDataError
from aia.testing.tiny import TINY_MODELS
from aia.training.streams import TaskStream, micro_batches_per_step, step_schedule, truncate


@pytest.fixture(scope="module")
def janus_adapter():
    model, processor = TINY_MODELS["janus"](seed=0)
    return get_adapter(model, processor)


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_bad_samples_are_skipped_and_counted(tiny_data, janus_adapter, tmp_path):
    und = read_records(tiny_data[0])
    base = tiny_data[0].parent
    (base / "images" / "broken.png").write_bytes(b"\x89PNG broken")
    bad = [dict(und[0], image="images/missing.png"), dict(und[1], image="images/broken.png")]
    no_image = {k: v for k, v in und[2].items() if k != "image"}
    path = write(base / "und_mixed.jsonl", und + bad + [no_image])
    stream = TaskStream(path, "und", janus_adapter, 512, max_bad_fraction=0.5, seed=0, progress=False)
    assert len(stream) == len(und)
    reasons = " ".join(r.reason for r in stream.rejected)
    assert len(stream.rejected) == 3 and "missing.png" in reasons and "broken.png" in reasons and "image" in reasons
    with pytest.raises(BadDataError, match="max_bad_fraction") as err:
        TaskStream(path, "und", janus_adapter, 512, max_bad_fraction=0.1, seed=0, progress=False)
    assert "missing.png" in str(err.value)  # names examples


def test_over_long_samples(tiny_data, janus_adapter):
    gen = read_records(tiny_data[1])
    full = janus_adapter.encode(gen[0], "gen", tiny_data[1].parent)
    # generation ends with its image: any cut would cut the image -> every sample dropped
    with pytest.raises(BadDataError, match="too long"):
        TaskStream(tiny_data[1], "gen", janus_adapter, len(full) - 1, 1.0, seed=0, progress=False)
    # understanding: the image comes first, a long answer is truncated after it
    und = read_records(tiny_data[0])
    ex = janus_adapter.encode(und[0], "und", tiny_data[0].parent)
    last_image = int(((ex.roles == Role.IMAGE) | (ex.roles == Role.IMAGE_MARKER)).nonzero().max())
    cut = truncate(ex, last_image + 2)
    assert len(cut) == last_image + 2 and torch.equal(cut.input_ids, ex.input_ids[: last_image + 2])
    assert truncate(ex, last_image) is None
    assert truncate(ex, len(ex)) is ex


def test_empty_file_and_wrong_task(tiny_data, janus_adapter, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(BadDataError, match="empty.jsonl: no records"):
        TaskStream(empty, "und", janus_adapter, 512, 0.1, seed=0, progress=False)
    with pytest.raises(BadDataError, match="no usable"):
        TaskStream(tiny_data[1], "und", janus_adapter, 512, 1.0, seed=0, progress=False)
    with pytest.raises(BadDataError, match="nope.jsonl: no such data file"):
        read_table(tmp_path / "nope.jsonl")


def test_json_list_and_parquet_read_alike(tiny_data, tmp_path):
    records = read_table(tiny_data[1])
    as_list = tmp_path / "gen.json"
    as_list.write_text(json.dumps(records))
    assert read_table(as_list) == records
    import datasets

    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "gen.parquet"))
    assert read_table(tmp_path / "gen.parquet") == records


def test_schedule_holds_the_ratio_every_step():
    sched = step_schedule(3, grad_accum=2, ratio={"und": 1, "gen": 2})
    assert [t for t, _ in sched] == ["und", "gen", "gen", "und", "gen", "gen"]
    counters = [c for t, c in sched if t == "gen"]
    assert counters == [12, 13, 14, 15]  # step 3 continues where step 2 ended
    assert [t for t, _ in step_schedule(0, 1, {"gen": 1})] == ["gen"]


def test_streams_are_deterministic_sharded_and_blank_some_prompts(tiny_data, janus_adapter):
    make = lambda: TaskStream(tiny_data[1], "gen", janus_adapter, 512, 0.0, seed=3, cfg_drop=0.5, progress=False)  # noqa: E731
    a, b = make(), make()
    assert [a.record_at(p) for p in range(20)] == [b.record_at(p) for p in range(20)]
    epoch0 = [json.dumps(a.record_at(p)) for p in range(len(a))]
    assert len(set(epoch0)) == len(a)  # a permutation: each record once per epoch
    blanked = [a.blanked(p) for p in range(200)]
    assert 60 < sum(blanked) < 140
    r0, r1 = a.batch(0, 2, rank=0, world=2), a.batch(0, 2, rank=1, world=2)
    assert not torch.equal(r0.inputs["pixel_values"], r1.inputs["pixel_values"])  # ranks draw different samples
    batch = a.batch(5, 4)
    n_blank = sum(a.blanked(p) for p in range(20, 24))
    assert int((~batch.query_mask.any(-1)).sum()) == n_blank  # blanked prompts carry no AIA term


@pytest.mark.parametrize("task", ["und", "gen"])
def test_cached_examples_give_the_same_batches(tiny_data, janus_adapter, task):
    path = tiny_data[0] if task == "und" else tiny_data[1]
    make = lambda cache: TaskStream(path, task, janus_adapter, 512, 0.0, seed=1, cfg_drop=0.5, progress=False, cache=cache)  # noqa: E731
    plain, cached = make(False), make(True)
    assert plain.examples is None and len(cached.examples) == len(cached)
    for counter in range(3 * len(plain)):  # several epochs, blanked and kept prompts
        a, b = plain.batch(counter, 3), cached.batch(counter, 3)
        for key in ("input_ids", "position_ids", "pixel_values"):
            torch.testing.assert_close(a.inputs[key], b.inputs[key], rtol=0, atol=0)
        for key in ("labels", "roles", "attention_mask", "query_mask", "key_mask"):
            assert torch.equal(getattr(a, key), getattr(b, key)), key
    # a cached sample is never altered by drawing it
    first = cached.examples[0].input_ids.clone()
    cached.batch(0, len(cached))
    assert torch.equal(cached.examples[0].input_ids, first)


def _counters_run_on(schedules):
    """Each task's micro-batch counters over consecutive steps are 0, 1, 2, ...: no repeat, no gap."""
    seen = {"und": [], "gen": []}
    for sched in schedules:
        for task, counter in sched:
            seen[task].append(counter)
    return all(c == list(range(len(c))) for c in seen.values())


def test_random_mixing_one_task_per_step_at_the_ratio():
    ratio = {"und": 10, "gen": 30}
    scheds = [step_schedule(s, 2, ratio, "random", 7) for s in range(4000)]
    assert all(len(sc) == 2 == micro_batches_per_step(2, ratio, "random") and len({t for t, _ in sc}) == 1 for sc in scheds)
    und = sum(sc[0][0] == "und" for sc in scheds) / len(scheds)
    assert abs(und - 0.25) < 4 * (0.25 * 0.75 / 4000) ** 0.5  # ratio_und / (ratio_und + ratio_gen)
    assert _counters_run_on(scheds)
    # released 10:10: a fair coin; another seed gives another draw
    fair = [step_schedule(s, 1, {"und": 10, "gen": 10}, "random", 1024)[0][0] for s in range(2000)]
    assert abs(fair.count("und") / 2000 - 0.5) < 0.05
    other = [step_schedule(s, 1, {"und": 10, "gen": 10}, "random", 1025)[0][0] for s in range(2000)]
    assert fair != other
    # a single task always draws itself
    assert {step_schedule(s, 1, {"gen": 3}, "random", 0)[0][0] for s in range(50)} == {"gen"}


def test_random_mixing_is_a_pure_function_of_the_step(monkeypatch):
    ratio = {"und": 1, "gen": 2}
    forward = [step_schedule(s, 1, ratio, "random", 3) for s in range(300)]
    # another rank, or a resumed run, asks in another order from a fresh process state
    monkeypatch.setattr(streams_mod, "_DRAWS", {})
    backward = [step_schedule(s, 1, ratio, "random", 3) for s in reversed(range(300))][::-1]
    monkeypatch.setattr(streams_mod, "_DRAWS", {})
    resumed = [step_schedule(s, 1, ratio, "random", 3) for s in range(150, 300)]
    assert forward == backward and forward[150:] == resumed
    # and in another interpreter (other hash seed): the draw does not depend on process state
    code = (
        "import json; from aia.training.streams import step_schedule; "
        "print(json.dumps([step_schedule(s, 1, {'und': 1, 'gen': 2}, 'random', 3) for s in range(299, -1, -1)]))"
    )
    env = dict(os.environ, PYTHONHASHSEED="123")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert [[tuple(m) for m in sc] for sc in json.loads(out)][::-1] == forward


def test_alternate_mixing_cycles_through_the_ratio():
    ratio = {"und": 2, "gen": 3}
    scheds = [step_schedule(s, 1, ratio, "alternate") for s in range(20)]
    assert "".join(sc[0][0][0] for sc in scheds) == "uuggg" * 4
    assert _counters_run_on(scheds)
    assert step_schedule(7, 3, ratio, "alternate") == [("gen", 9), ("gen", 10), ("gen", 11)]  # 3 gen steps before


def test_both_mixing_is_unchanged_by_the_seed():
    assert step_schedule(3, 2, {"und": 1, "gen": 2}, "both", 99) == step_schedule(3, 2, {"und": 1, "gen": 2})
    assert micro_batches_per_step(2, {"und": 1, "gen": 2}, "both") == 6
    assert _counters_run_on(step_schedule(s, 2, {"und": 1, "gen": 2}) for s in range(10))
    with pytest.raises(ValueError, match="mixing"):
        step_schedule(0, 1, {"und": 1}, "shuffled")


def test_image_transform_runs_before_the_processor(tiny_data, janus_adapter):
    crop = functools.partial(center_crop, size=32)
    plain = TaskStream(tiny_data[1], "gen", janus_adapter, 512, 0.0, seed=0, progress=False)
    cropped = TaskStream(tiny_data[1], "gen", janus_adapter, 512, 0.0, seed=0, progress=False, image_transform=crop)
    record = plain.record_at(0)
    image = crop(load_image(image_path(record, tiny_data[1].parent)))
    expected = janus_adapter.encode(record, "gen", tiny_data[1].parent, image=image)
    pixels = cropped.batch(0, 1).inputs["pixel_values"][0]
    torch.testing.assert_close(pixels, expected.pixel_values, rtol=0, atol=0)
    # the processor gets an image of its own size: no resize, no padding, only [-1, 1] scaling (as released)
    released = torch.tensor(np.asarray(image)).permute(2, 0, 1).float() / 255 * 2 - 1
    torch.testing.assert_close(pixels, released, rtol=0, atol=1e-6)
    # a transform that changes the image changes the pixels (a wide image is cropped, not padded)
    squash = lambda im: im.resize((32, 8))  # noqa: E731
    padded = TaskStream(tiny_data[1], "gen", janus_adapter, 512, 0.0, seed=0, progress=False, image_transform=squash)
    a, b = plain.batch(0, 2).inputs["pixel_values"], padded.batch(0, 2).inputs["pixel_values"]
    assert a.shape == b.shape and not torch.equal(a, b)


def test_image_transforms_from_the_config(tiny_data):
    from aia.training.config import load_config
    from aia.training.setup import image_transform

    base = [f"data.und={tiny_data[0]}", f"data.gen={tiny_data[1]}"]
    processors = {f: TINY_MODELS[f](seed=0)[1] for f in ("janus", "chameleon", "emu3")}
    crop = load_config(None, [*base, "data.gen_image_transform=center_crop"], check_paths=False)
    assert image_transform(crop, "und", processors["janus"]) is None  # generation only
    wide = Image.new("RGB", (90, 40))
    assert image_transform(crop, "gen", processors["janus"])(wide).size == (32, 32)
    assert image_transform(crop, "gen", processors["chameleon"])(wide).size == (32, 32)  # its crop_size
    with pytest.raises(ConfigError, match="data.gen_image_transform: center_crop needs"):
        image_transform(crop, "gen", processors["emu3"])  # dynamic size
    area = load_config(None, [*base, "data.image_area=400"], check_paths=False)
    for task in ("und", "gen"):  # both tasks
        assert image_transform(area, task, processors["emu3"])(wide).size == (30, 13)
    assert image_transform(load_config(None, base, check_paths=False), "gen", processors["janus"]) is None


def test_image_root_keeps_images_inside_it(tiny_data, janus_adapter, tmp_path):
    import json as _json

    from aia.data.records import read_records as _read

    records = _read(tiny_data[0])
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes((tiny_data[0].parent / records[0]["image"]).read_bytes())
    records[0]["image"] = str(outside)  # absolute, outside the data folder
    records[1]["image"] = "../" + tiny_data[0].parent.name + "/" + records[1]["image"]  # .. but back inside
    path = tiny_data[0].parent / "und_rooted.jsonl"
    path.write_text("".join(_json.dumps(r) + "\n" for r in records))
    free = TaskStream(path, "und", janus_adapter, 512, 1.0, seed=0, progress=False)
    assert not free.rejected  # without a root, paths may point anywhere
    rooted = TaskStream(path, "und", janus_adapter, 512, 1.0, seed=0, progress=False, image_root=tiny_data[0].parent)
    assert [r.index for r in rooted.rejected] == [0] and "lies outside data.image_root" in rooted.rejected[0].reason
