"""The digits VQ, the VQLM adapter, the digits processor, and `aia demo --quick` end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import aia
from aia.adapters import IGNORE_INDEX, get_adapter, load_model
from aia.cli import main
from aia.core.spans import Role, SpanConfig
from aia.data.records import infer_task, load_image, read_records
from aia.demo import VQLMAdapter
from aia.demo.digits import (
    VQ_FILE,
    DigitsProcessor,
    DigitsVQ,
    build_digits_model,
    from_image,
    load_split,
    to_image,
    write_digits_data,
)
from aia.measure.decode import decode_example
from aia.measure.profile import load_profile

# Four patch vectors far apart: images made of them encode back to exactly their codes.
CODEBOOK = np.array([[0, 0, 0, 0], [16, 16, 16, 16], [0, 16, 0, 16], [16, 0, 16, 0]], dtype=float)
CODES = np.array([0, 1, 2, 3, 3, 2, 1, 0, 1, 1, 2, 2, 0, 3, 0, 3])
UND = {
    "image": "unused.png",
    "conversations": [{"from": "human", "value": "<image>\nwhat digit is this?"}, {"from": "gpt", "value": "7"}],
}
UND_TWO_TURNS = {
    "image": "unused.png",
    "conversations": [
        {"from": "human", "value": "what is this <image> ?"},
        {"from": "gpt", "value": "a digit"},
        {"from": "human", "value": "which digit?"},
        {"from": "gpt", "value": "7"},
    ],
}
GEN = {"conversations": [{"from": "human", "value": "draw digit 7"}, {"from": "gpt", "value": "<image>"}], "image": "x"}


@pytest.fixture(scope="module")
def split():
    return load_split(seed=0)


@pytest.fixture(scope="module")
def hand_made():
    """A processor around the four-code VQ, a 2-layer model, its adapter, and the image of CODES."""
    processor = DigitsProcessor.build(DigitsVQ(CODEBOOK))
    model = build_digits_model(processor, num_layers=2, hidden_size=32, num_heads=2, seed=0)
    image = to_image(DigitsVQ(CODEBOOK).decode(CODES))
    return processor, model, get_adapter(model, processor), image


# -- the VQ -----------------------------------------------------------------------------------


def test_vq_round_trip_error_is_small_and_the_fit_deterministic(split):
    vq = DigitsVQ.fit(split.train_images, num_codes=32, seed=0)
    again = DigitsVQ.fit(split.train_images, num_codes=32, seed=0)
    np.testing.assert_array_equal(vq.codebook, again.codebook)
    codes = vq.encode(split.test_images)
    assert codes.shape == (len(split.test_images), 16) and codes.dtype == np.int64
    np.testing.assert_array_equal(codes, again.encode(split.test_images))
    recon = vq.decode(codes)
    rmse = float(np.sqrt(((recon - split.test_images) ** 2).mean()))
    spread = float(split.test_images.std())
    assert rmse < 0.4 * spread, (rmse, spread)  # far better than predicting the mean pixel
    # single images take the same path as batches
    np.testing.assert_array_equal(vq.encode(split.test_images[0]), codes[0])
    np.testing.assert_allclose(vq.decode(codes[0]), recon[0])


def test_vq_encodes_images_made_of_codes_back_to_those_codes():
    vq = DigitsVQ(CODEBOOK)
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 4, size=(20, 16))
    np.testing.assert_array_equal(vq.encode(vq.decode(codes)), codes)
    # the reading order is row-major over the 4x4 grid: code 1 is the top row's second 2x2 patch
    pixels = vq.decode(CODES)
    np.testing.assert_array_equal(pixels[0:2, 2:4], CODEBOOK[CODES[1]].reshape(2, 2))
    np.testing.assert_array_equal(pixels[2:4, 0:2], CODEBOOK[CODES[4]].reshape(2, 2))
    with pytest.raises(ValueError, match="codes must be"):
        vq.decode(np.array([0, 4] * 8))


def test_png_round_trip_keeps_the_pixel_values(split):
    pixels = split.train_images[0]
    back = from_image(to_image(pixels))
    assert np.abs(back - pixels).max() < 1 / 30  # 0..16 values stored on 0..255
    assert from_image(to_image(pixels).convert("RGB").resize((16, 16))).shape == (8, 8)


# -- the VQLM adapter -------------------------------------------------------------------------


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


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_vqlm_spans_loss_and_intensity_match_an_eager_reference(hand_made, padding_side):
    processor, model, _, image = hand_made
    adapter = get_adapter(model, processor, padding_side=padding_side)
    for task, records in (("und", [UND, UND_TWO_TURNS]), ("gen", [GEN, {**GEN, "conversations": UND["conversations"][:1] * 0 + GEN["conversations"]}])):
        examples = [adapter.encode(r, task, None, image=image) for r in records]
        if task == "gen":
            examples[1] = adapter.encode(GEN, "gen", None, image=image, cfg_blank=True)
        batch = adapter.collate(examples)
        roles = batch.roles
        if task == "und":
            assert (batch.query_mask == (roles == Role.ANSWER)).all() and (batch.key_mask == (roles == Role.IMAGE)).all()
        else:
            assert (batch.query_mask == (roles == Role.IMAGE)).all() and (batch.key_mask == (roles == Role.PROMPT)).all()
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
                    assert not cap.valid[b]  # CFG-blanked: no prompt, no statistic
                    continue
                by_hand = attn[b][:, q][:, :, k].sum(-1).mean()
                torch.testing.assert_close(cap.intensity[layer, b], by_hand, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("task", ["und", "gen"])
def test_vqlm_decode_equals_teacher_forcing_on_its_own_output(hand_made, task):
    """KV-cached greedy decoding (``aia profile --mode decode``) against one teacher-forced pass."""
    processor, model, _, image = hand_made
    adapter = get_adapter(model, processor, span_config=SpanConfig(predictive=True))
    example = adapter.encode(UND_TWO_TURNS if task == "und" else GEN, task, None, image=image)
    decoded = decode_example(model, adapter, example, max_new_tokens=4 if task == "und" else None)
    tokens = decoded.tokens
    if task == "und":
        assert decoded.steps == len(tokens) == 4 and (decoded.roles == Role.ANSWER).all()
        assert not set(tokens.tolist()) & {*adapter.code_ids, adapter.boi_id, adapter.eoi_id}
        ids = torch.cat([decoded.prompt.input_ids, tokens])
        roles = torch.cat([decoded.prompt.roles, decoded.roles])
    else:
        assert decoded.steps == len(tokens) == 16 and set(tokens.tolist()) <= set(adapter.code_ids)
        image_at = example.roles == Role.IMAGE
        ids = example.input_ids.clone()
        ids[image_at] = tokens  # the record with the model's own image in place of the data's
        roles = example.roles
    forced = replace(example, input_ids=ids, roles=roles, labels=torch.full_like(ids, IGNORE_INDEX))
    with torch.no_grad(), aia.capture(model) as cap:
        adapter.forward(model, adapter.collate([forced]))
    torch.testing.assert_close(decoded.intensity, cap.intensity[:, 0].double(), rtol=0, atol=1e-5)


def test_get_adapter_needs_a_processor_with_an_image_tokenizer(hand_made):
    processor, _, _, _ = hand_made
    plain = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=2))  # fmt: skip
    with pytest.raises(ValueError, match="image tokenizer"):
        get_adapter(plain, processor.tokenizer)


def test_processor_saves_and_loads_with_the_model(hand_made, tmp_path):
    processor, model, adapter, image = hand_made
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / VQ_FILE).is_file()
    loaded = DigitsProcessor.from_pretrained(tmp_path / "m")
    np.testing.assert_array_equal(loaded.image_tokenizer.codebook, CODEBOOK)
    assert loaded.image_code_token_ids == processor.image_code_token_ids
    assert len(loaded.tokenizer) == len(processor.tokenizer)
    # aia profile / aia train load it through load_model
    model2, proc2 = load_model(tmp_path / "m")
    assert isinstance(proc2, DigitsProcessor) and type(model2).__name__ == "LlamaForCausalLM"
    for record, task in ((UND, "und"), (GEN, "gen")):
        a = adapter.encode(record, task, None, image=image)
        b = get_adapter(model2, proc2).encode(record, task, None, image=image)
        assert a.input_ids.tolist() == b.input_ids.tolist() and a.roles.tolist() == b.roles.tolist()
    with pytest.raises(FileNotFoundError, match=VQ_FILE):
        DigitsProcessor.from_pretrained(tmp_path)


def test_written_data_reads_back_as_records_of_the_data_format(split, tmp_path):
    small = type(split)(split.train_images[:5], split.train_labels[:5], split.test_images[:3], split.test_labels[:3])
    paths = write_digits_data(tmp_path, small)
    assert sorted(paths) == ["gen_test", "gen_train", "und_test", "und_train"]
    for key, path in paths.items():
        records = read_records(path)
        assert len(records) == (5 if key.endswith("train") else 3)
        assert all(infer_task(r) == key[:3] for r in records)
    und = read_records(paths["und_train"])
    for record, pixels, label in zip(und, small.train_images, small.train_labels, strict=True):
        assert record["conversations"][1]["value"] == str(label)
        assert np.abs(from_image(load_image(tmp_path / record["image"])) - pixels).max() < 1 / 30
    gen = read_records(paths["gen_test"])
    assert gen[0]["conversations"][0]["value"] == f"draw digit {small.test_labels[0]}"


# -- aia demo --quick end to end ---------------------------------------------------------------

RUN_KEYS = {
    "und": ("und_acc", "ntp_und", "heldout_ntp_und", "gap_und"),
    "gen": ("gen_acc", "ntp_gen", "heldout_ntp_gen", "gap_gen"),
}
RUN_TASKS = {
    "und_only": ("und",),
    "gen_only": ("gen",),
    "baseline": ("und", "gen"),
    "aia": ("und", "gen"),
    "aia_mse": ("und", "gen"),
    "aia_per_layer": ("und", "gen"),
}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--quick", "--ablations", "--seed", "0"])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.integration
def test_quick_demo_writes_every_file_and_key(quick_demo):
    out, results = quick_demo
    for name in ("report.md", "results.json", "targets.yaml", "targets_per_layer.yaml"):
        assert (out / name).is_file(), name
    for fig in ("intensity", "losses", "losses_aia", "samples"):
        assert (out / f"{fig}.png").stat().st_size > 1000 and (out / f"{fig}.svg").is_file(), fig
    for name, tasks in RUN_TASKS.items():
        assert (out / "runs" / name / "final" / VQ_FILE).is_file()
        assert (out / "configs" / f"{name}.yaml").is_file()
        row = results["runs"][name]
        for task in tasks:
            for key in RUN_KEYS[task]:
                assert _finite(row[key]), (name, key)
            assert len(row[f"curve_{task}"]) == results["settings"]["num_layers"]
            assert load_profile(out / "profiles" / f"{name}_{task}.json").n == results["settings"]["profile_samples"]
        for other in {"und", "gen"} - set(tasks):
            assert not any(k in row for k in RUN_KEYS[other]), (name, other)
    for key in ("train", "test", "num_codes", "vq_rmse_test"):
        assert _finite(results["data"][key]), key
    for key in ("acc_real_test", "acc_vq_test"):
        assert 0.9 < results["judge"][key] <= 1.0, key
    for key in ("und_acc", "gen_acc"):
        cmp = results["aia_vs_baseline"][key]
        assert _finite(cmp["diff"]) and _finite(cmp["se"]) and cmp["verdict"] in ("better", "worse", "no measurable difference")
    assert isinstance(results["aia_vs_baseline"]["helped"], bool)
    assert sorted(results["ablations_vs_baseline"]) == ["aia_mse", "aia_per_layer"]
    for cmps in results["ablations_vs_baseline"].values():
        assert all(_finite(cmps[k]["diff"]) and _finite(cmps[k]["se"]) for k in ("und_acc", "gen_acc"))
    assert _finite(results["timing"]["wall_s"])
    from aia.demo.pipeline import STAGES

    assert list(results["timing"]["stages_s"]) == list(STAGES)
    assert all(_finite(x) and x >= 0 for x in results["timing"]["stages_s"].values())
    report = (out / "report.md").read_text()
    assert "Did AIA help at this scale?" in report
    from aia.demo.pipeline import RUNS

    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith(("| run ", "| ---"))]
    assert [r.split(" | ")[0][2:] for r in rows] == [RUNS[name][0] for name in RUN_TASKS]
    for row, name in zip(rows, RUN_TASKS, strict=True):  # the table shows the numbers of results.json
        for key in ("und_acc", "gen_acc", "gap_und", "gap_gen"):
            if key in results["runs"][name]:
                assert f" {results['runs'][name][key]:.3f} " in row, (name, key)


@pytest.mark.integration
def test_quick_demo_learns_and_the_aia_loss_pulls_the_curves_to_the_targets(quick_demo):
    _, results = quick_demo
    runs = results["runs"]
    n = results["data"]["test"]
    beyond_chance = results["chance"] + 3 * math.sqrt(0.1 * 0.9 / n)
    for name in ("baseline", "aia"):
        assert runs[name]["und_acc"] > beyond_chance, name
    for task in ("und", "gen"):
        assert runs["aia"][f"gap_{task}"] < runs["baseline"][f"gap_{task}"], task


@pytest.mark.integration
def test_quick_demo_is_deterministic(quick_demo, tmp_path):
    _, first = quick_demo
    from aia.demo.pipeline import run_demo

    second = run_demo(tmp_path / "again", quick=True, seed=0, progress=False)  # quick: no ablations by default
    for key in ("data", "judge", "targets", "targets_per_layer", "settings"):
        assert second[key] == first[key], key
    for name in ("und_only", "gen_only", "baseline", "aia"):
        assert second["runs"][name] == first["runs"][name], name
    assert set(second["runs"]) == {"und_only", "gen_only", "baseline", "aia"}
    assert second["aia_vs_baseline"] == first["aia_vs_baseline"] and second["ablations_vs_baseline"] == {}


@pytest.mark.integration
def test_the_demo_outputs_are_what_the_cli_makes_of_them(quick_demo, tmp_path):
    """The demo's runs, profiles and targets go through the user's commands: redo them with the CLI."""
    out, results = quick_demo
    n = results["settings"]["profile_samples"]
    for task in ("und", "gen"):
        data = out / "data" / f"{task}_train.jsonl"
        cli = tmp_path / f"aia_{task}.json"
        args = ["profile", str(out / "runs" / "aia" / "final"), "--data", str(data), "--task", task]
        assert main([*args, "--samples", str(n), "--batch-size", "32", "--out", str(cli), "--quiet"]) == 0
        np.testing.assert_allclose(load_profile(cli).mean, results["runs"]["aia"][f"curve_{task}"], rtol=0, atol=1e-6)
    refs = [str(out / "profiles" / "gen_only_gen.json"), str(out / "profiles" / "und_only_und.json")]
    stages = str(results["settings"]["stages"])
    assert main(["targets", *refs, "--stages", stages, "--out", str(tmp_path / "t.yaml")]) == 0
    from aia.targets.presets import TargetProfile

    redone = TargetProfile.from_yaml(tmp_path / "t.yaml")
    for task in ("und", "gen"):
        np.testing.assert_allclose(redone.per_layer(task)[0], results["targets"][task], rtol=0, atol=1e-12)
    assert main(["plot", "losses", str(out / "runs" / "baseline"), str(out / "runs" / "aia"), "--out", str(tmp_path / "l")]) == 0
    assert (tmp_path / "l.png").stat().st_size > 1000
