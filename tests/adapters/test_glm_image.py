"""GLM-Image, a generation-only reference: its prompt is the processor's, token for token; its positions are
the model's own (``get_rope_index`` and the decode positions ``generate`` feeds); the capture equals eager
attention maps; decoding equals teacher forcing on the model's own output and ``generate``'s tokens; the CLI
profiles a saved one in both modes, and its profile becomes generation targets that a Janus run trains toward."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import aia
from aia.adapters import get_adapter
from aia.adapters.base import ImageOptions, ImageTokens
from aia.adapters.glm_image import GlmImageAdapter, rope_positions
from aia.cli import main
from aia.core.loss import huber
from aia.core.spans import Role, SpanConfig
from aia.data import read_records
from aia.data.encoder import RecordEncoder
from aia.data.records import generation_prompt
from aia.errors import InputError
from aia.measure.decode import DecodeSettings, decode_batch, decode_example
from aia.testing.tiny import tiny_janus
from aia.testing.tiny_glm_image import GLM_IMAGE_CHAT_TEMPLATE, tiny_glm_image
from aia.testing.tiny_understanding import TINY_UNDERSTANDING_MODELS, save_understanding_model
from tests.helpers import gen_record, run_cli, save_model, span_intensity, teacher_forced_intensity
from tests.measure.test_profile_vs_eager import MAPS  # registers the recording eager attention

CODEBOOK = 32


@pytest.fixture(scope="module")
def glm():
    return tiny_glm_image(seed=0)


def _messages(prompt):
    return [{"role": "user", "content": [{"type": "text", "text": prompt}]}]


@pytest.mark.parametrize("template", [GLM_IMAGE_CHAT_TEMPLATE, None], ids=["chat-template", "no-template"])
@pytest.mark.parametrize("prompt", ["a red square on a blue background", "", "what is in the image? a bar"])
def test_prompt_is_the_processors_token_for_token(template, prompt):
    model, processor = tiny_glm_image(seed=0)
    processor.chat_template = template
    adapter = get_adapter(model, processor)
    ids, roles, grids = adapter.prompt_tokens(prompt, 128, 96)
    text = processor.apply_chat_template(_messages(prompt), add_generation_prompt=True, tokenize=False) \
        if template else prompt
    want = processor(text=[text], target_h=128, target_w=96)
    assert ids == list(want["input_ids"][0])
    # the processor's grids: the full one (128/32 x 96/32), then the preview it generates first
    assert [tuple(int(v) for v in g[1:]) for g in want["image_grid_thw"]] == [(4, 3), grids[0]] and grids[1] == (4, 3)
    tok = processor.tokenizer
    assert tok.decode([i for i, r in zip(ids, roles, strict=True) if r == Role.PROMPT]) == prompt
    header = [i for i, r in zip(ids, roles, strict=True) if r == Role.IMAGE_MARKER]
    assert tok.decode(header) == f"<sop>4 3<eop><sop>{grids[0][0]} {grids[0][1]}<eop><|dit_token_{CODEBOOK}|>"
    assert ids[-1] == model.config.image_start_token_id and roles[-len(header):] == [int(Role.IMAGE_MARKER)] * len(header)
    assert set(roles[: -len(header)]) <= {int(Role.TEMPLATE), int(Role.PROMPT)}
    assert (int(Role.TEMPLATE) in roles) == (template is not None)


def test_encode_sequence_labels_and_refusals(glm, tiny_data):
    model, processor = glm
    adapter = get_adapter(model, processor)
    assert isinstance(adapter, GlmImageAdapter) and adapter.tasks == ("gen",)
    record = read_records(tiny_data[1])[0]
    ex = adapter.encode(record, "gen", tiny_data[1].parent)
    assert ex.grids == ((16, 16), (4, 4))  # a 32x32 image: the 4x4 grid of 32-pixel tokens, the 16x16 preview
    prompt, _, _ = adapter.prompt_tokens(generation_prompt(record), 128, 128)
    n = len(prompt)
    assert ex.input_ids[:n].tolist() == prompt
    assert ex.input_ids[n:-1].tolist() == [model.config.image_token_id] * (256 + 16)
    assert ex.roles[n:-1].eq(Role.IMAGE).all() and ex.roles[-1] == Role.IMAGE_MARKER
    assert ex.input_ids[-1] == model.config.image_end_token_id == ex.labels[-1]
    assert (ex.labels[:n] == -100).all() and (ex.labels[n:-1] == model.config.image_token_id).all()
    assert ex.vision["image_grid_thw"].tolist() == [[1, 16, 16], [1, 4, 4]]
    blank = adapter.encode(record, "gen", tiny_data[1].parent, cfg_blank=True)
    assert not (blank.roles == Role.PROMPT).any() and blank.cfg_blank
    # understanding is refused, naming the model class, before any record is read
    with pytest.raises(InputError, match="GlmImageForConditionalGeneration is a generation-only model"):
        adapter.encode(read_records(tiny_data[0])[0], "und", tiny_data[0].parent)
    refusal = r"GlmImageForConditionalGeneration is a generation-only model \(glm-image\): it takes no 'und' samples"
    with pytest.raises(InputError, match=refusal):
        RecordEncoder(adapter, "und", tiny_data[0].parent)
    with pytest.raises(ValueError, match="generation-only"):
        adapter.decode_runner(model, "und")


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_positions_are_the_models_own(glm, tiny_data, padding_side):
    """The 3D positions of a padded batch equal GLM-Image's: ``get_rope_index`` on the prompt, then the
    positions ``generate`` feeds the codes and the image end at (``_cached_decode_position_ids``)."""
    model, processor = glm
    adapter = get_adapter(model, processor, padding_side=padding_side)
    prompts = ["a red square", "a green bar on a purple background at the bottom", ""]
    records = [gen_record(p, image=r["image"]) for p, r in zip(prompts, read_records(tiny_data[1]), strict=False)]
    examples = [adapter.encode(r, "gen", tiny_data[1].parent) for r in records]
    assert len({len(ex) for ex in examples}) == 3  # prompts of different lengths: padding
    batch = adapter.collate(examples)
    inner = model.model
    for row, record in enumerate(records):
        text = adapter.prompt_text(generation_prompt(record))
        inputs = processor(text=[text], target_h=128, target_w=128, return_tensors="pt")
        prompt_positions, _ = inner.get_rope_index(inputs["input_ids"], inputs["image_grid_thw"],
                                                   inputs["images_per_sample"], inputs["attention_mask"])
        decode_positions = inner._cached_decode_position_ids[0]  # [3, codes + 1]
        want = torch.cat([prompt_positions[:, 0], decode_positions], -1)
        real = batch.attention_mask[row].bool()
        assert torch.equal(batch.inputs["position_ids"][:, row, real], want)
    # a cut prompt (the released trainer's gen_prompt_length) counts its positions again
    short = rope_positions(examples[0].roles[None, 5:], torch.ones(1, len(examples[0]) - 5), [examples[0].grids])
    assert torch.equal(short[..., 0, :], batch.inputs["position_ids"][:, 0, batch.attention_mask[0].bool()][:, 5:] - 5)


def test_capture_equals_eager_maps_and_loss_trains(glm, tiny_data):
    model, processor = glm
    adapter = get_adapter(model, processor, padding_side="left")
    examples = [adapter.encode(r, "gen", tiny_data[1].parent) for r in read_records(tiny_data[1])[:2]]
    examples.append(adapter.encode(read_records(tiny_data[1])[2], "gen", tiny_data[1].parent, cfg_blank=True))
    batch = adapter.collate(examples)
    with torch.no_grad(), aia.capture(model) as cap:
        out = adapter.forward(model, batch)
    lm = adapter.language_model(model)
    lm.config._attn_implementation = "aia_test_recording_eager"
    MAPS.clear()
    try:
        with torch.no_grad():
            eager = adapter.forward(model, batch)
    finally:
        lm.config._attn_implementation = "sdpa"
    assert len(MAPS) == cap.num_layers == 2
    assert cap.valid.tolist() == [True, True, False]  # a blanked prompt carries no term
    torch.testing.assert_close(cap.intensity[:, :2], span_intensity(MAPS, batch.query_mask, batch.key_mask)[:, :2],
                               rtol=0, atol=1e-5)
    torch.testing.assert_close(out.loss, eager.loss, rtol=0, atol=1e-5)
    assert out.num_tokens == 3 * (256 + 16 + 1)  # the codes and the image end, each predicted
    # the loss trains the language model; the image tokenizer stays frozen (no gradient reaches it)
    model.zero_grad()
    adapter.forward(model, batch).loss.backward()
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.model.visual.parameters())
    model.zero_grad()


@pytest.mark.parametrize("predictive", [False, True], ids=["own", "predictive"])
def test_decode_equals_teacher_forcing_on_own_output(glm, tiny_data, predictive):
    model, processor = glm
    adapter = get_adapter(model, processor, span_config=SpanConfig(predictive=predictive))
    assert adapter.decode_sampling() == {"cfg_weight": 1.0, "temperature": 0.9, "top_k": None, "top_p": 0.75}
    for index, record in enumerate(read_records(tiny_data[1])[:2]):
        example = adapter.encode(record, "gen", tiny_data[1].parent)
        decoded = decode_example(model, adapter, example, DecodeSettings(seed=index))  # the checkpoint's sampling
        assert len(decoded.tokens) == 272 and decoded.tokens.max() < CODEBOOK and decoded.steps == 271
        assert (decoded.roles == Role.IMAGE).all()
        adapter.image_tokens = lambda model, pixels, grids, own=decoded.tokens: own  # teacher forcing on its own codes
        try:
            want = teacher_forced_intensity(model, adapter, example)
        finally:
            del adapter.image_tokens
        torch.testing.assert_close(decoded.intensity, want, rtol=0, atol=1e-5)


def test_decode_and_generate_agree_and_do_not_depend_on_the_batch(glm, tiny_data):
    """Greedy decoding (our positions) gives ``generate``'s tokens (the model's own positions); sampled images do
    not depend on the batch they are generated in."""
    model, processor = glm
    adapter = get_adapter(model, processor)
    records = read_records(tiny_data[1])[:2]
    greedy = ImageOptions(guidance=1.0, temperature=0.0, top_k=None, image_area=128 * 128)
    images = adapter.generate_images(model, [generation_prompt(r) for r in records], [0, 1], greedy)
    for record, image in zip(records, images, strict=True):
        assert isinstance(image, ImageTokens) and image.grids == ((16, 16), (4, 4))
        decoded = decode_example(model, adapter, adapter.encode(record, "gen", tiny_data[1].parent),
                                 DecodeSettings(temperature=0.0))
        assert decoded.tokens.tolist() == list(image.tokens[0] + image.tokens[1])
    sampled = ImageOptions(guidance=1.0, temperature=0.9, top_k=None, top_p=0.75, image_area=128 * 128)
    both = adapter.generate_images(model, [generation_prompt(r) for r in records], [3, 4], sampled)
    alone = adapter.generate_images(model, [generation_prompt(records[1])], [4], sampled)
    assert both[1] == alone[0] and both[0] != both[1]
    assert all(max(max(t) for t in image.tokens) < CODEBOOK for image in both)
    with pytest.raises(InputError, match="guidance"):
        adapter.generate_images(model, ["x"], [0], ImageOptions(guidance=3.0, temperature=1.0, top_k=None))
    # decode batches equal one sample at a time
    examples = [adapter.encode(r, "gen", tiny_data[1].parent) for r in records]
    batched = decode_batch(model, adapter, examples, DecodeSettings(seed=5), sample_indices=[0, 1])
    for i, got in enumerate(batched):
        one = decode_example(model, adapter, examples[i], DecodeSettings(seed=5), sample_index=i)
        assert torch.equal(got.tokens, one.tokens)
        torch.testing.assert_close(got.intensity, one.intensity, rtol=0, atol=1e-5)


def test_reference_workflow_glm_image_and_qwen_vl_targets_a_janus_run(glm, tiny_data, tmp_path, capsys):
    """The README's reference workflow on tiny models: GLM-Image profiled for generation (both modes), Qwen2-VL
    for understanding, ``aia targets`` from the two, and a Janus run whose AIA term is the Huber distance to them."""
    model, processor = glm
    glm_dir = save_model(model, processor, tmp_path / "glm")
    qwen, qwen_processor = TINY_UNDERSTANDING_MODELS["qwen2_vl"](seed=0)
    qwen_dir = save_understanding_model(qwen, qwen_processor, tmp_path / "qwen")
    und, gen = tiny_data
    common = ["--samples", "2", "--quiet"]
    assert main(["profile", str(glm_dir), "--data", str(gen), "--task", "gen", "--out", str(tmp_path / "g.json"),
                 *common]) == 0
    assert main(["profile", str(glm_dir), "--data", str(gen), "--task", "gen", "--mode", "decode",
                 "--out", str(tmp_path / "gd.json"), *common]) == 0
    decoded = json.loads((tmp_path / "gd.json").read_text())
    settings = decoded["settings"]
    assert (settings["cfg_weight"], settings["temperature"], settings["top_p"]) == (1.0, 0.9, 0.75)
    assert len(decoded["per_sample"]) == 2 and decoded["task"] == "gen"
    capsys.readouterr()
    code, err = run_cli(capsys, "profile", glm_dir, "--data", und, "--task", "und", "--out", tmp_path / "u.json")
    assert code == 2 and "GlmImageForConditionalGeneration is a generation-only model (glm-image)" in err
    assert len(err.strip().splitlines()) == 1
    questions = tmp_path / "questions.jsonl"  # aia answer: refused from config.json, before the questions are read
    code, err = run_cli(capsys, "answer", glm_dir, "--bench", "custom", "--data", questions, "--out", tmp_path / "a")
    assert code == 2 and "is a generation-only model (glm-image): it takes no 'und' samples" in err
    assert not questions.exists() and not (tmp_path / "a").exists()
    assert main(["profile", str(qwen_dir), "--data", str(und), "--task", "und", "--out", str(tmp_path / "q.json"),
                 *common]) == 0
    targets = tmp_path / "targets.yaml"
    assert main(["targets", str(tmp_path / "gd.json"), str(tmp_path / "q.json"), "--stages", "1",
                 "--out", str(targets)]) == 0
    derived = yaml.safe_load(targets.read_text())
    gen_stage = derived["gen"][0]
    assert gen_stage["target"] == pytest.approx(sum(decoded["mean"]) / len(decoded["mean"]), abs=1e-9)

    from aia.training.config import load_config
    from aia.training.trainer import train

    janus, janus_processor = tiny_janus(seed=0)
    cfg = load_config(None, [f"data.und={und}", f"data.gen={gen}", f"train.output_dir={tmp_path / 'run'}",
                             "data.batch_size=1", "data.cfg_drop=0", "train.max_steps=2", "train.intensity_every=1",
                             "train.progress=false", "optim.lr=0", "optim.min_lr=0", "optim.warmup_ratio=0",
                             "optim.scheduler=constant", f"aia.targets={targets}"], check_paths=False)
    train(cfg, janus, janus_processor)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    target = torch.tensor([gen_stage["target"]] * 2, dtype=torch.float64)
    delta = torch.tensor([gen_stage["delta"]] * 2, dtype=torch.float64)
    for row in rows:  # one gen sample per step: its AIA term is the mean Huber distance to the GLM-Image targets
        intensity = torch.tensor(row["intensity/gen"], dtype=torch.float64)
        assert row["loss/aia/gen"] == pytest.approx(float(huber(intensity - target, delta).mean()), abs=1e-6)


def test_tiny_builder_is_deterministic_and_round_trips(tmp_path):
    """Same seed, same weights (another seed, others); ``load_model`` reads a saved one back with its processor,
    which gives the same prompt tokens."""
    from aia.adapters import load_model

    model, processor = tiny_glm_image(seed=0)
    again, _ = tiny_glm_image(seed=0)
    other, _ = tiny_glm_image(seed=1)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(),
                                                     strict=True))
    assert sum(p.numel() for p in model.parameters()) < 500_000
    loaded, loaded_processor = load_model(save_model(model, processor, tmp_path / "glm"))
    assert type(get_adapter(loaded, loaded_processor)) is GlmImageAdapter
    assert loaded.generation_config.top_p == 0.75 and loaded.generation_config.do_sample
    want = get_adapter(model, processor).prompt_tokens("a red square", 64, 128)
    assert get_adapter(loaded, loaded_processor).prompt_tokens("a red square", 64, 128) == want


def test_a_wide_image_gets_its_own_grids_and_the_models_positions(glm, tiny_data):
    """A 64x32 image: the image processor's 4x8 grid (it halves, then patches at 4 pixels), so the processor's
    target 128x256 with its 11x22 preview; the positions equal ``get_rope_index`` and ``generate``'s."""
    from PIL import Image

    model, processor = glm
    adapter = get_adapter(model, processor)
    record = gen_record("a wide red bar")
    ex = adapter.encode(record, "gen", tiny_data[1].parent, image=Image.new("RGB", (64, 32), (200, 20, 20)))
    assert ex.grids == ((11, 22), (4, 8))
    inputs = processor(text=[adapter.prompt_text("a wide red bar")], target_h=128, target_w=256, return_tensors="pt")
    n = inputs["input_ids"].shape[1]
    assert ex.input_ids[:n].tolist() == inputs["input_ids"][0].tolist() and len(ex) == n + 11 * 22 + 4 * 8 + 1
    prompt_positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["image_grid_thw"],
                                                     inputs["images_per_sample"], inputs["attention_mask"])
    want = torch.cat([prompt_positions[:, 0], model.model._cached_decode_position_ids[0]], -1)
    assert torch.equal(adapter.collate([ex]).inputs["position_ids"][:, 0], want)
    with torch.no_grad():
        assert torch.isfinite(adapter.forward(model, adapter.collate([ex])).loss)
