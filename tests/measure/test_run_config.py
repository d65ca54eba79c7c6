"""``aia profile --config RUN.yaml`` measures exactly what ``aia train`` trains on: the profiled
sequence of every record (ids, roles, labels, pixels) equals the training stream's, per family,
with the run's image settings and length policy; without them it differs."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import aia.measure.decode as decode_mod
import aia.measure.teacher as teacher_mod
from aia.adapters import get_adapter
from aia.core.spans import Role
from aia.data.encoder import LengthPolicy, Preprocessing
from aia.data.records import read_records
from aia.errors import ConfigError
from aia.measure.decode import DecodeSettings
from aia.measure.run import profile_run, run_inputs
from aia.measure.teacher import profile_model
from aia.testing.tiny import TINY_MODELS, write_tiny_dataset
from aia.training.config import load_config
from aia.training.setup import _stream

pytestmark = pytest.mark.usefixtures("one_thread")

#: case -> (family, task, run overrides); "truncate" sets data.max_length so that long samples are cut
CASES = {
    "janus-und-truncated": ("janus", "und", ["truncate"]),
    "janus-gen-center_crop": ("janus", "gen", ["data.gen_image_transform=center_crop"]),
    "chameleon-gen-center_crop": ("chameleon", "gen", ["data.gen_image_transform=center_crop"]),
    "emu3-und-image_area": ("emu3", "und", ["data.image_area=400"]),
    "emu3-gen-image_area": ("emu3", "gen", ["data.image_area=400"]),
}


@pytest.fixture(scope="module")
def wide_data(tmp_path_factory):
    """The tiny data set with every generation image made 80x48 (a crop differs from a resize), and
    one understanding record whose image comes after a long text (a cut would reach it)."""
    und, gen = write_tiny_dataset(tmp_path_factory.mktemp("wide"), n_und=8, n_gen=6, image_size=32, seed=1)
    for record in read_records(gen):
        path = gen.parent / record["image"]
        Image.open(path).convert("RGB").resize((80, 48)).save(path)
    late = {
        "image": read_records(und)[0]["image"],
        "conversations": [
            {"from": "human", "value": "look " * 40 + "<image> what is it?"},
            {"from": "gpt", "value": "a shape"},
        ],
    }
    with open(und, "a") as f:
        f.write(json.dumps(late) + "\n")
    return und, gen


def _run_config(family, task, overrides, und, gen, model, processor):
    overrides = list(overrides)
    if "truncate" in overrides:  # a limit that cuts answers after their image and drops the late image's record
        adapter = get_adapter(model, processor)
        examples = [adapter.encode(r, task, und.parent) for r in read_records(und)[:-1]]
        limit = max(int((e.roles == Role.ANSWER).nonzero().min()) for e in examples) + 1
        overrides[overrides.index("truncate")] = f"data.max_length={limit}"
    return load_config(
        None,
        [f"data.und={und}", f"data.gen={gen}", "data.cache_examples=true", "data.max_bad_fraction=1.0", *overrides],
        check_paths=False,
    )


def _training_stream(cfg, task, model, processor):
    """The stream ``aia train`` builds for ``task`` (``setup`` calls ``_stream`` so)."""
    adapter = get_adapter(
        model, processor, span_config=cfg.spans, padding_side=cfg.data.padding_side, prompt_config=cfg.prompts
    )
    return _stream(cfg, task, adapter, progress=False)


def _same(a, b) -> bool:
    same = all(torch.equal(getattr(a, k), getattr(b, k)) for k in ("input_ids", "roles", "labels"))
    for key in ("pixel_values", "image_sizes"):
        x, y = getattr(a, key), getattr(b, key)
        same = same and (
            (x is None and y is None) or (x is not None and y is not None and x.shape == y.shape and torch.equal(x, y))
        )
    return same and a.cfg_blank == b.cfg_blank


def _teacher_examples(monkeypatch, run) -> list:
    """The examples a teacher-forced profile feeds the model, in order (``run()`` profiles)."""
    seen, real = [], teacher_mod._measure_batch

    def spy(model, adapter, examples, method, tally):
        seen.extend(examples)
        return real(model, adapter, examples, method, tally)

    monkeypatch.setattr(teacher_mod, "_measure_batch", spy)
    run()
    monkeypatch.undo()
    return seen


@pytest.mark.parametrize("case", sorted(CASES))
def test_profiled_sequence_is_the_training_streams(case, wide_data, monkeypatch):
    family, task, overrides = CASES[case]
    model, processor = TINY_MODELS[family](seed=0)
    und, gen = wide_data
    cfg = _run_config(family, task, overrides, und, gen, model, processor)
    stream = _training_stream(cfg, task, model, processor)
    if case == "janus-und-truncated":
        assert stream.truncated > 0 and stream.rejected  # both sides of the length policy are exercised
    trained = stream.examples  # the validation pass's samples, in file order: what the run draws

    profiled = _teacher_examples(
        monkeypatch,
        lambda: profile_run(cfg, task, model=model, processor=processor, samples=len(stream), progress=False),
    )
    assert len(profiled) == len(trained)
    for i, (a, b) in enumerate(zip(profiled, trained, strict=True)):
        assert _same(a, b), f"record {i} of {case}"

    # the same records profiled without the run's settings are not what it trained on
    data = und if task == "und" else gen
    default = _teacher_examples(
        monkeypatch, lambda: profile_model(model, processor, data, task, samples=len(stream), progress=False)
    )
    assert len(default) != len(trained) or not all(_same(a, b) for a, b in zip(default, trained, strict=True))


@pytest.mark.parametrize("case", ["emu3-gen-image_area", "janus-und-truncated"])
def test_decode_mode_decodes_the_training_streams_sequence(case, wide_data, monkeypatch):
    family, task, overrides = CASES[case]
    model, processor = TINY_MODELS[family](seed=0)
    und, gen = wide_data
    cfg = _run_config(family, task, overrides, und, gen, model, processor)
    stream = _training_stream(cfg, task, model, processor)
    seen, real = [], decode_mod.decode_batch

    def spy(model, adapter, examples, settings, method, unconds=None, *args, **kwargs):
        seen.extend(zip(examples, unconds or [None] * len(examples), strict=True))
        return real(model, adapter, examples, settings, method, unconds, *args, **kwargs)

    monkeypatch.setattr(decode_mod, "decode_batch", spy)
    profile = profile_run(
        cfg,
        task,
        model=model,
        processor=processor,
        mode="decode",
        samples=3,
        settings=DecodeSettings(max_new_tokens=2),
        progress=False,
    )
    assert profile.mode == "decode" and len(seen) >= 3
    for i, (example, uncond) in enumerate(seen):
        assert _same(example, stream.examples[i]), f"record {i}"
        if task == "gen":  # CFG's unconditional branch: the run's blanked prompt
            assert _same(uncond, stream.encoder(stream.records[i], cfg_blank=True))


def test_run_inputs_take_the_run_config(wide_data, tmp_path):
    und, gen = wide_data
    run = tmp_path / "run.yaml"
    run.write_text(
        json.dumps(
            {
                "model": {"path": "base", "dtype": "bfloat16"},
                "data": {
                    "gen": str(gen),
                    "image_area": 400,
                    "gen_image_transform": "center_crop",
                    "max_length": 300,
                    "image_root": str(gen.parent),
                },
                "spans": {"gen_keys": "text+boi"},
                "prompts": {"system_prompt": "none"},
            }
        )
    )
    inputs = run_inputs(run)
    assert (inputs.task, inputs.data, inputs.dtype) == ("gen", gen, "bfloat16")
    assert inputs.model == str(tmp_path / "base")  # relative to the config file, as aia train reads it
    assert inputs.span_config.gen_keys == "text+boi" and inputs.prompt_config.system_prompt == "none"
    assert inputs.preprocessing == Preprocessing(400, "center_crop", str(gen.parent), LengthPolicy(300, "truncate"))
    with pytest.raises(ConfigError, match="no 'und' data"):
        run_inputs(run, "und")
    both = load_config(None, [f"data.und={und}", f"data.gen={gen}"], check_paths=False)
    with pytest.raises(ConfigError, match="name the task"):
        run_inputs(both)
    assert run_inputs(both, "und").data == und


def test_profile_records_its_preprocessing(wide_data):
    model, processor = TINY_MODELS["janus"](seed=0)
    und, gen = wide_data
    cfg = load_config(None, [f"data.gen={gen}", "data.gen_image_transform=center_crop"], check_paths=False)
    profile = profile_run(cfg, model=model, processor=processor, samples=2, progress=False)
    assert profile.settings["preprocessing"]["gen_image_transform"] == "center_crop"
    assert profile.settings["preprocessing"]["length"] == {"max_length": 4096, "over_long": "truncate", "gen_prompt_length": None}
    plain = profile_model(model, processor, gen, "gen", samples=2, progress=False)
    assert plain.settings["preprocessing"]["length"]["over_long"] == "skip"
