"""Training data: bad samples, truncation, the und:gen schedule, determinism."""

import json

import pytest
import torch

from aia.adapters import get_adapter
from aia.core.spans import Role
from aia.data.records import read_records
from aia.data.records import read_records as read_table
from aia.errors import DataError as BadDataError
from aia.testing.tiny import TINY_MODELS
from aia.training.streams import TaskStream, step_schedule, truncate


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
    assert int((~batch.key_mask.any(-1)).sum()) == n_blank  # blanked prompts carry no AIA term


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
