"""A new model family is one file: this one.

It defines a family the package has never heard of ("gray": a plain ``Qwen2ForCausalLM`` that
reads and writes images as four gray-level code tokens, its processor a tokenizer), registers
it with :func:`aia.adapters.register_adapter`, and runs the package's own entry points through
it from a saved model directory: profiling (teacher forcing; ``aia profile --mode decode`` on
the trained model), two ``aia train`` steps, answering questions (``aia eval``'s
:func:`aia.evaluate.answer`) and text-to-image (:func:`aia.evaluate.generate_images`). Nothing outside this file knows the family.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from aia.adapters import ADAPTERS, AdapterBase, register_adapter
from aia.adapters.base import (
    AdapterOutput,
    Batch,
    DecodeRunner,
    Example,
    ImageDefaults,
    ImageOptions,
    SequenceBuilder,
    aia_kwargs,
    check_encode_args,
    id_tensor,
    next_token_loss,
    unwrap,
)
from aia.adapters.imagegen import check_seeds, seeded_sampler
from aia.core.spans import Role, SpanConfig
from aia.data.records import dialogue, generation_prompt, image_path, load_image
from aia.testing.tiny import tiny_tokenizer

MODEL_CLASS = "Qwen2ForCausalLM"
LEVELS = 4  #: gray levels, one code token each
CODES = [f"<gray_{i}>" for i in range(LEVELS)]
SIDE = 2  #: an image is SIDE x SIDE codes


def image_codes(image) -> list[int]:
    """The family's "VQ": the image shrunk to 2x2 gray pixels, each one of 4 levels, in reading order."""
    pixels = np.asarray(image.convert("L").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float64)
    return [int(v) for v in np.minimum(pixels // (256 // LEVELS), LEVELS - 1).reshape(-1)]


class GrayProcessor:
    """A tokenizer is all this family's processor holds."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer

    def save_pretrained(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)


class GrayAdapter(AdapterBase):
    """``<bos>Q:{before}<boi>{codes}<eoi>{after} A:{answer}<eos>`` and ``<bos>{prompt}<boi>{codes}<eoi>``."""

    family = "gray"
    frozen_modules = ()  # nothing frozen: the "VQ" is the function above
    image_defaults = ImageDefaults(guidance=1.0, top_k=None)

    def __init__(self, model, processor, span_config=SpanConfig(), padding_side="right", prompt_config=None):
        super().__init__(model, processor, span_config, padding_side, prompt_config)
        self.code_ids = self.tokenizer.convert_tokens_to_ids(CODES)
        self.boi_id, self.eoi_id = self.tokenizer.convert_tokens_to_ids(["<boi>", "<eoi>"])

    @classmethod
    def load_processor(cls, model_dir: Path):
        from transformers import AutoTokenizer

        return GrayProcessor(AutoTokenizer.from_pretrained(model_dir))

    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        check_encode_args(task, cfg_blank)
        image = load_image(image_path(record, base_dir)) if image is None else image
        codes = [self.code_ids[c] for c in image_codes(image)]
        b = SequenceBuilder(self.tokenizer).tokens(self.bos_id, Role.TEMPLATE)
        if task == "und":
            b.dialogue(dialogue(record), partial(self._question, codes=codes), self.eos_id, user="Q:", assistant=" A:")
        else:
            if not cfg_blank:
                b.text(generation_prompt(record), Role.PROMPT)
            self._image(b, codes, supervised=True)
        return b.build(task, cfg_blank=cfg_blank)

    def _question(self, b: SequenceBuilder, before: str, after: str, codes: list[int]) -> None:
        b.text(before, Role.PROMPT)
        self._image(b, codes, supervised=False)
        b.text(after, Role.PROMPT)

    def _image(self, b: SequenceBuilder, codes: list[int], supervised: bool) -> None:
        b.tokens(self.boi_id, Role.IMAGE_MARKER).tokens(codes, Role.IMAGE, supervised)
        b.tokens(self.eoi_id, Role.IMAGE_MARKER, supervised)

    def image_block(self, input_ids: torch.Tensor) -> torch.Tensor:
        return torch.isin(input_ids, torch.tensor(self.code_ids))

    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        model = unwrap(model)
        out = model.model(input_ids=batch.inputs["input_ids"], attention_mask=batch.attention_mask,
                          position_ids=batch.inputs["position_ids"], use_cache=False, **aia_kwargs(batch))
        return next_token_loss(out.last_hidden_state, batch.labels, model.lm_head)

    def language_model(self, model: nn.Module) -> nn.Module:
        return unwrap(model).model

    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        m = unwrap(model)
        if task == "gen":
            return DecodeRunner(m.model, m.lm_head, allowed=id_tensor(self.code_ids, m.device))
        return DecodeRunner(m.model, m.lm_head, blocked=id_tensor([*self.code_ids, self.boi_id, self.eoi_id], m.device))

    @torch.no_grad()
    def generate_images(self, model: nn.Module, prompts: list[str], seeds: list[int], options: ImageOptions) -> list:
        """Codes drawn one at a time over the code tokens, one prompt at a time (no padding)."""
        check_seeds(prompts, seeds)
        images = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            b = SequenceBuilder(self.tokenizer).tokens(self.bos_id, Role.TEMPLATE).text(prompt, Role.PROMPT)
            seq = torch.tensor([b.tokens(self.boi_id, Role.IMAGE_MARKER).ids])
            sampler, codes = seeded_sampler([seed], options.temperature, options.top_k), []
            for _ in range(SIDE * SIDE):
                scores = model(input_ids=seq, use_cache=False).logits[:, -1, self.code_ids].float()
                codes.append(int(sampler(None, scores).argmax(-1)))
                seq = torch.cat([seq, torch.tensor([[self.code_ids[codes[-1]]]])], dim=1)
            gray = (np.array(codes, dtype=np.uint8).reshape(SIDE, SIDE) * (255 // (LEVELS - 1)))
            images.append(Image.fromarray(gray, mode="L").resize((8, 8), Image.NEAREST))
        return images


def tiny_gray(seed: int = 0):
    """A random 2-layer ``Qwen2ForCausalLM`` over a tokenizer with the family's tokens, and its processor."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tok = tiny_tokenizer({"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>"}, [*CODES, "<boi>", "<eoi>"])
    config = Qwen2Config(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(config).eval(), GrayProcessor(tok)


@pytest.fixture
def gray_family():
    """The family registered for the test's duration (the registry is the package's, shared)."""
    assert MODEL_CLASS not in ADAPTERS
    register_adapter(MODEL_CLASS, GrayAdapter)
    yield
    del ADAPTERS[MODEL_CLASS]


def test_a_new_family_from_one_file(gray_family, tiny_data, tmp_path):
    from aia.evaluate import answer, generate_images
    from aia.measure.teacher import profile_model
    from aia.training.config import load_config
    from aia.training.trainer import train

    model, processor = tiny_gray()
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    und, gen = tiny_data

    # profile: teacher-forced intensities of both tasks
    for task, data in (("und", und), ("gen", gen)):
        profile = profile_model(model, processor, data, task, samples=2, progress=False)
        assert profile.per_sample.shape == (2, 2) and np.isfinite(profile.per_sample).all(), task

    # two training steps from the saved directory (loaded through the family's load_processor)
    cfg = load_config(None, [f"model.path={model_dir}", f"data.und={und}", f"data.gen={gen}",
                             f"train.output_dir={tmp_path / 'run'}", "data.batch_size=2", "train.max_steps=2",
                             "train.progress=false", "optim.lr=1e-3", "optim.warmup_ratio=0"])
    result = train(cfg)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(np.isfinite(r["loss/aia/gen"]) for r in rows)
    trained = Path(result.final_dir)

    # aia profile --mode decode on the trained model (the family's decode runner and image block)
    from aia.cli import main
    from aia.measure.profile import load_profile

    for task, data in (("und", und), ("gen", gen)):
        out = tmp_path / f"decode_{task}.json"
        assert main(["profile", str(trained), "--data", str(data), "--task", task, "--samples", "1", "--mode",
                     "decode", "--max-new-tokens", "3", "--out", str(out), "--quiet"]) == 0
        assert np.isfinite(load_profile(out).per_sample).all(), task

    # answer: the trained model reloaded from its folder
    questions = tmp_path / "questions.jsonl"
    record = json.loads(und.read_text().splitlines()[0])
    questions.write_text(json.dumps({"id": "q0", "image": str(und.parent / record["image"]),
                                     "question": "what color is it?", "answer": "red"}) + "\n")
    summary = answer(trained, "custom", questions, tmp_path / "pred.jsonl", max_new_tokens=3, progress=False)
    predictions = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert summary and [p["id"] for p in predictions] == ["q0"] and isinstance(predictions[0]["prediction"], str)

    # generate: two images from a prompt file, reproducible from the seed
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square\n")
    done = generate_images(trained, tmp_path / "prompts.txt", tmp_path / "images", seed=3, progress=False)
    assert done["family"] == "gray" and done["images_generated"] == 2
    again = generate_images(trained, tmp_path / "prompts.txt", tmp_path / "again", seed=3, progress=False)
    assert again["images_generated"] == 2
    for name in ("00000_0.png", "00001_0.png"):
        assert (tmp_path / "images" / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
