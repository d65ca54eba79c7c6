"""The shipped Janus-Pro-7B config computes the released code's loss (issue 22).

:mod:`tests.fidelity.released` ports the released training computation (data set, trainer
batches, model forward and loss). Here it runs beside aia's training step, configured by
``configs/janus-pro-7b.yaml`` (its ``spans``, ``prompts``, ``aia`` and ``data.padding_side``),
on the same tiny 30-layer Janus in fp32 and the same records and pixels: a generation batch
with one CFG-blanked sample, an understanding batch with a 1-turn, a 2-turn and a
non-square-image sample. The total loss ``NTP + lambda * AIA`` of each task must agree to
1e-6 relative, and so must token ids, labels and the two terms.

Padding width: the release pads generation prompts to 1000 and understanding samples to 3000
(``trainer_t2i.py:146``). The port runs at two small widths instead (the longest sample + 1,
and + 9) and the test asserts they give the same loss: padding columns are masked and the
release passes no position ids, so a wider batch shifts every position by the same amount,
which rotary embeddings do not see.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from aia.adapters import get_adapter
from aia.data.encoder import LengthPolicy
from aia.targets.presets import TargetProfile
from aia.testing.tiny import tiny_janus
from aia.training.config import load_config
from aia.training.step import StepNorm, UnifiedStep, batch_tensors
from tests.fidelity import released
from tests.helpers import gen_record, und_record

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "janus-pro-7b.yaml"
CONFIG_1B = CONFIG.with_name("janus-pro-1b.yaml")
LAYERS = 30  # Janus-Pro-7B's depth: the released bands apply as written
RTOL = 1e-6

GEN_PROMPTS = ["a red circle on a blue background", "a green square at the top", "a blue triangle at the left"]
BLANKED = [False, True, False]  # the second prompt blanked for classifier-free guidance
UND_TURNS = [
    [("what color is the circle?", "red")],
    [("what shape is in the image?", "a square"), ("where is the square?", "at the top")],
    [("is there a shape in the picture?", "yes")],  # its image is not square
]
UND_SIZES = [(32, 32), (32, 32), (48, 24)]

SINGLE = SimpleNamespace(num_processes=1, device=torch.device("cpu"), reduce=lambda t, reduction: t)


def _image(size: tuple[int, int], seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=g, dtype=torch.uint8)
    return Image.fromarray(pixels.numpy())


def build(cfg, layers: int = LAYERS):
    """aia's pieces for ``cfg`` on a tiny Janus of ``layers`` layers (seed 0), in fp32."""
    model, processor = tiny_janus(seed=0, num_layers=layers)
    return with_config(SimpleNamespace(model=model, processor=processor), cfg)


def with_config(s, cfg):
    adapter = get_adapter(
        s.model, s.processor, span_config=cfg.spans, padding_side=cfg.data.padding_side, prompt_config=cfg.prompts
    )
    depth = s.model.config.get_text_config().num_hidden_layers
    targets = TargetProfile.load(cfg.aia.targets, num_layers=depth, layer_map=cfg.aia.layer_map)
    step = UnifiedStep(s.model, adapter, targets, cfg)
    return SimpleNamespace(cfg=cfg, model=s.model, processor=s.processor, adapter=adapter, step=step)


@pytest.fixture(scope="module")
def setup():
    return build(load_config(CONFIG, check_paths=False))


def gen_examples(s):
    images = [_image((32, 32), seed=i) for i in range(len(GEN_PROMPTS))]
    return [
        s.adapter.encode(gen_record(p), "gen", Path("."), image=im, cfg_blank=b)
        for p, im, b in zip(GEN_PROMPTS, images, BLANKED, strict=True)
    ]


def und_examples(s):
    return [
        s.adapter.encode(und_record(*turns), "und", Path("."), image=_image(size, seed=10 + i))
        for i, (turns, size) in enumerate(zip(UND_TURNS, UND_SIZES, strict=True))
    ]


def aia_step_loss(s, task: str, examples) -> dict:
    """aia's loss of a step made of this one micro-batch (StepNorm places it in its global batch)."""
    batch = s.adapter.collate(examples)
    norm = StepNorm([(task, batch)], SINGLE, s.cfg.aia.denominator)
    ntp_weight, aia_weight = norm.weights(0)
    with torch.no_grad(), s.step.capturing():
        out = s.step(task, ntp_weight=ntp_weight, aia_weight=aia_weight, **batch_tensors(batch))
    return {**out, "batch": batch}


def released_gen(s, pixels: torch.Tensor, num_codes: int, extra: int = 1) -> released.ReleasedLoss:
    """The port's generation loss, the batch padded to the longest prompt + ``extra``."""
    tok = s.processor.tokenizer
    samples = [released.gen_sample(tok, p, b) for p, b in zip(GEN_PROMPTS, BLANKED, strict=True)]
    width = max(len(x.input_ids) for x in samples) + extra
    batch = released.gen_batch(samples, tok.vocab.get(released.PAD_TAG), width, num_codes)
    with torch.no_grad():
        return released.gen_loss(s.model, batch, pixels)


def released_und(s, pixels: torch.Tensor, extra: int = 1) -> released.ReleasedLoss:
    """The port's understanding loss, the batch padded to the longest sample + ``extra``."""
    tok = s.processor.tokenizer
    samples = [released.und_sample(tok, turns, s.adapter.num_und_tokens) for turns in UND_TURNS]
    width = max(len(x.input_ids) for x in samples) + extra
    vocab = tok.vocab
    batch = released.und_batch(samples, vocab.get(released.PAD_TAG), vocab.get(released.IMAGE_TAG), width)
    with torch.no_grad():
        return released.und_loss(s.model, batch, pixels)


def close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    got, want = float(got), float(want)
    assert got == pytest.approx(want, rel=RTOL, abs=1e-9), f"{what}: aia {got!r}, released {want!r}"


def test_config_selects_the_released_options():
    cfg = load_config(CONFIG, check_paths=False)
    assert (cfg.spans.gen_queries, cfg.spans.gen_keys) == ("image-but-last", "text")
    assert (cfg.spans.und_queries, cfg.spans.und_keys) == ("answer+eos", "boi+image-but-last")
    assert not (cfg.spans.predictive or cfg.spans.question_in_query or cfg.spans.image_markers_are_image)
    assert (cfg.aia.targets, cfg.aia.denominator, cfg.aia.mode) == ("janus-pro-released", "all", "huber")
    assert (cfg.aia.weight_gen, cfg.aia.weight_und) == (5.0, 10.0)
    assert (cfg.data.over_long, cfg.data.max_length, cfg.data.padding_side) == ("truncate-no-aia", 3000, "left")
    assert cfg.data.gen_prompt_length == 1000  # trainer_t2i.py:146


def test_1b_config_differs_from_7b_only_in_the_documented_24_layer_choice():
    seven, one = (load_config(path, check_paths=False).to_dict() for path in (CONFIG, CONFIG_1B))
    for cfg in (seven, one):
        cfg["model"].pop("path"), cfg["train"].pop("output_dir")
    assert one["aia"].pop("layer_map") == "relative" and seven["aia"].pop("layer_map") == "relative"
    assert one == seven
    # both mappings are one setting away; they differ in 13 (task, layer) entries at 24 layers
    rel, ab = (TargetProfile.load("janus-pro-released", 24, layer_map=m) for m in ("relative", "absolute"))
    assert rel != ab


def test_generation_loss_equals_the_released_loss(setup):
    s = setup
    tok = s.processor.tokenizer
    examples = gen_examples(s)
    samples = [released.gen_sample(tok, p, b) for p, b in zip(GEN_PROMPTS, BLANKED, strict=True)]
    num_codes = int((examples[0].labels != -100).sum())
    for ex, sample in zip(examples, samples, strict=True):
        # the same prompt tokens, <begin_of_image> last (the image follows in both)
        assert ex.input_ids[: len(sample.input_ids)].tolist() == sample.input_ids.tolist()
        assert len(ex) == len(sample.input_ids) + num_codes
    ours = aia_step_loss(s, "gen", examples)
    pixels = ours["batch"].inputs["pixel_values"]
    want = released_gen(s, pixels, num_codes)
    close(released_gen(s, pixels, num_codes, extra=9).loss, want.loss, "released loss at two padding widths")
    close(ours["ntp"], want.ntp, "generation NTP")
    close(ours["aia"], want.attn, "generation AIA")
    close(ours["loss"], want.loss, "generation NTP + 5 AIA")
    assert float(want.attn) > 0  # the two enabled samples carry a term


def test_understanding_loss_equals_the_released_loss(setup):
    s = setup
    tok = s.processor.tokenizer
    examples = und_examples(s)
    samples = [released.und_sample(tok, turns, s.adapter.num_und_tokens) for turns in UND_TURNS]
    for ex, sample in zip(examples, samples, strict=True):
        assert ex.input_ids.tolist() == sample.input_ids.tolist()
        assert ex.labels.tolist() == sample.labels.tolist()
    ours = aia_step_loss(s, "und", examples)
    pixels = ours["batch"].inputs["pixel_values"]
    want = released_und(s, pixels)
    close(released_und(s, pixels, extra=9).loss, want.loss, "released loss at two padding widths")
    close(ours["ntp"], want.ntp, "understanding NTP")
    close(ours["aia"], want.attn, "understanding AIA")
    close(ours["loss"], want.loss, "understanding NTP + 10 AIA")


def test_an_over_long_understanding_sample_loses_its_term_as_released(setup):
    """trainer_t2i.py:214-219 at a width that cuts the 2-turn sample inside its second answer: the cut
    sample keeps its NTP targets up to the cut and adds 0 to the AIA sum, still counted in the
    denominator; aia's ``data.over_long=truncate-no-aia`` at ``data.max_length`` = that width."""
    s = setup
    tok = s.processor.tokenizer
    samples = [released.und_sample(tok, turns, s.adapter.num_und_tokens) for turns in UND_TURNS]
    lengths = [len(x.input_ids) for x in samples]
    width = lengths[1] - 3  # the 2-turn sample is the longest by more than 3 tokens
    assert sorted(lengths)[-2] < width
    policy = LengthPolicy(width, s.cfg.data.over_long)
    examples = [policy.fit(ex) for ex in und_examples(s)]
    assert [ex.aia_off for ex in examples] == [False, True, False] and len(examples[1]) == width
    ours = aia_step_loss(s, "und", examples)
    assert bool(ours["enabled"] == 2) and bool(ours["aia_samples"] == 3)
    pixels = ours["batch"].inputs["pixel_values"]
    vocab = tok.vocab
    batch = released.und_batch(samples, vocab.get(released.PAD_TAG), vocab.get(released.IMAGE_TAG), width)
    assert batch.use_attn == [1, 0, 1]
    with torch.no_grad():
        want = released.und_loss(s.model, batch, pixels)
    close(ours["ntp"], want.ntp, "understanding NTP")
    close(ours["aia"], want.attn, "understanding AIA")
    close(ours["loss"], want.loss, "understanding NTP + 10 AIA")
    # a sample of exactly the width is over-long too (`seq_len >= input_token_max_len`, :214)
    assert LengthPolicy(lengths[0], "truncate-no-aia").fit(und_examples(s)[0]).aia_off


def test_over_long_generation_prompts_are_cut_as_released(setup):
    """trainer_t2i.py:179-182 at a prompt width that cuts two of the three prompts (the blanked one
    included): the first ``width`` tokens are kept, ``<begin_of_image>`` lost, keys ``[0, width - 1)``;
    aia's ``data.gen_prompt_length`` = that width."""
    s = setup
    tok = s.processor.tokenizer
    samples = [released.gen_sample(tok, p, b) for p, b in zip(GEN_PROMPTS, BLANKED, strict=True)]
    lengths = sorted(len(x.input_ids) for x in samples)
    width = lengths[0] + 1  # the shortest prompt fits, the other two are cut
    policy = LengthPolicy(s.cfg.data.max_length, s.cfg.data.over_long, gen_prompt_length=width)
    examples = gen_examples(s)
    num_codes = int((examples[0].labels != -100).sum())
    cut = [policy.fit(ex) for ex in examples]
    assert sorted(len(ex) - num_codes for ex in cut) == [lengths[0], width, width]
    ours = aia_step_loss(s, "gen", cut)
    pixels = ours["batch"].inputs["pixel_values"]
    batch = released.gen_batch(samples, tok.vocab.get(released.PAD_TAG), width, num_codes)
    boi = tok.vocab.get(released.BOS_IMAGE)
    longer = sum(len(x.input_ids) > width for x in samples)  # these lose <begin_of_image>
    assert longer >= 1 and sum(boi not in ex.input_ids.tolist() for ex in cut) == longer
    with torch.no_grad():
        want = released.gen_loss(s.model, batch, pixels)
    close(ours["ntp"], want.ntp, "generation NTP")
    close(ours["aia"], want.attn, "generation AIA")
    close(ours["loss"], want.loss, "generation NTP + 5 AIA")


def test_1b_config_with_absolute_layer_map_equals_the_released_code_at_24_layers():
    """At Janus-Pro-1B's depth the released code (never run there) applies its bands by layer index:
    ``aia.layer_map=absolute``, one setting away from the config's documented choice, gives its loss."""
    released_map = build(load_config(CONFIG_1B, ["aia.layer_map=absolute"], check_paths=False), layers=24)
    ours_map = with_config(released_map, load_config(CONFIG_1B, check_paths=False))
    for task in ("gen", "und"):
        examples = gen_examples(released_map) if task == "gen" else und_examples(released_map)
        got = aia_step_loss(released_map, task, examples)
        pixels = got["batch"].inputs["pixel_values"]
        num_codes = int((examples[0].labels != -100).sum())
        want = released_gen(released_map, pixels, num_codes) if task == "gen" else released_und(released_map, pixels)
        close(got["loss"], want.loss, f"{task} loss at 24 layers")
        close(got["aia"], want.attn, f"{task} AIA at 24 layers")
        relative = aia_step_loss(ours_map, task, examples)  # the config's choice: other bands
        assert float(relative["aia"]) != pytest.approx(float(want.attn), rel=10 * RTOL)


@pytest.mark.parametrize(
    "task,section,field,value",
    [
        ("gen", "spans", "gen_queries", "image"),  # M1: all N image positions
        ("und", "spans", "und_keys", "image"),  # M2: the N image tokens, no <begin_of_image>
        ("und", "spans", "und_queries", "answer"),  # M3: without the final eos
        ("gen", "aia", "denominator", "enabled"),  # M4: / enabled samples
        ("und", "aia", "targets", "janus-pro"),  # M5: Table S5 (0.30 at layer 20)
    ],
)
def test_each_choice_away_from_the_release_changes_the_aia_term(setup, task, section, field, value):
    """The test above can fail: each option, one setting away from the release, moves the AIA term."""
    cfg = load_config(CONFIG, [f"{section}.{field}={value}"], check_paths=False)
    s = with_config(setup, cfg)
    examples = gen_examples(s) if task == "gen" else und_examples(s)
    ours = aia_step_loss(s, task, examples)
    pixels = ours["batch"].inputs["pixel_values"]
    num_codes = int((examples[0].labels != -100).sum())
    want = released_gen(s, pixels, num_codes) if task == "gen" else released_und(s, pixels)
    assert float(ours["aia"]) != pytest.approx(float(want.attn), rel=10 * RTOL)
