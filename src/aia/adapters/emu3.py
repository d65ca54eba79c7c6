"""Adapter for ``Emu3ForConditionalGeneration``.

Emu3 writes an image as tokens of its shared vocabulary. The image block mirrors what
``Emu3Processor`` builds (and Emu3's own training data)::

    <|image start|>{h}*{w}<|image token|> [code * w, <eol>] * h <|extra_201|><|image end|>

with ``h``, ``w`` the VQ token grid (pixels / 8), ``<eol>`` = ``<|extra_200|>`` after every
row and ``<|extra_201|>`` the end-of-frame token. ``model.model.get_image_tokens`` returns
exactly the ``h * (w + 1)`` tokens of the rows (codes and end-of-lines); they fill the
``<image>`` placeholder slots in the forward.

Chat format: Emu3-Chat's "You are a helpful assistant. USER: ... ASSISTANT: ...", as the
Emu3-Chat-hf chat template renders it (system message, then every image of a message
before its text), with an end-of-sequence token after every answer::

    und  <bos>You are a helpful assistant. USER: {image}{Q1} ASSISTANT: {A1}<eos>USER: {Q2} ASSISTANT: {A2}<eos>
    gen  <bos>{prompt}{image}<eos>

(Emu3-Gen's format: prompt, then the image; ``Emu3Processor(return_for_image_generation=True)``
writes the prompt and the image header.) The image opens the first question, wherever its
``<image>`` placeholder stood, as in both the HF template and BAAI's original processor.
Every choice where the sources differ (BAAI's ``{image}{text}. ASSISTANT:``, the template's
space between turns, the image's place) is a field of
:class:`~aia.adapters.prompts.PromptConfig`.

Roles: ``<bos>``, the system/role text and ``<eos>`` are TEMPLATE; question / prompt
PROMPT; answers ANSWER; the VQ codes IMAGE; every other token of the image block (start,
the ``h*w`` size text, ``<|image token|>``, end-of-line, end-of-frame, end) IMAGE_MARKER.

Labels: understanding supervises the answers and the ``<eos>`` after each; generation
supervises the codes only by default, as Emu3's own fine-tuning does
(``apply_loss_on_only_vision``: the end-of-lines, end-of-frame and end-of-image that
Emu3's decoding constraint forces are not learned); ``gen_supervision="codes+structure"``
adds those. The header ``<|image start|>{h}*{w}<|image token|>`` is what Emu3's processor
puts in the generation prompt and is never supervised.

CFG blanking: the prompt is left out (``<bos>`` then the image block), as Emu3's
fine-tuning writes a null prompt.

The VQ has BatchNorm layers: it is put back in eval mode before every use, so that a
``model.train()`` does not make the codes drift; it runs without autograd.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from torch import nn

from aia.adapters.base import (
    AdapterBase,
    AdapterOutput,
    Batch,
    DecodeRunner,
    Example,
    ImageDefaults,
    ImageOptions,
    SequenceBuilder,
    check_encode_args,
    fill_image_tokens,
    id_tensor,
    language_model_loss,
    module_dtype,
    token_id,
    unwrap,
)
from aia.adapters.imagegen import check_seeds, generation_config, seeded_sampler, to_pil
from aia.adapters.prompts import PromptConfig, place_image
from aia.core.spans import Role, SpanConfig
from aia.data.records import dialogue, generation_prompt, image_path, load_image

__all__ = ["Emu3Adapter"]

#: BAAI's original ``processing_emu3.py`` chat template starts with it; transformers' Emu3 docs pass it as the
#: system message of the Emu3-Chat-hf template
SYSTEM = "You are a helpful assistant."
#: Emu3-Gen's model card: appended to every prompt of text-to-image generation
POSITIVE = " masterpiece, film grained, best quality."
#: Emu3-Gen's model card: the negative prompt of its classifier-free guidance
NEGATIVE = (
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry."
)
EOL = "<|extra_200|>"


def _sharded(param: torch.Tensor) -> bool:
    """Whether ``param`` is a shard gathered at its module's call: DeepSpeed ZeRO-3 (``ds_id``) or an
    FSDP2 unit not yet gathered (a ``DTensor``)."""
    return hasattr(param, "ds_id") or type(param).__name__ == "DTensor" or type(param.data).__name__ == "DTensor"


class Emu3Adapter(AdapterBase):
    """Emu3: images are VQ tokens of the shared vocabulary, one end-of-line per row."""

    family = "emu3"
    #: the sources of each choice: :mod:`aia.adapters.prompts`
    prompt_defaults = PromptConfig(
        image_placement="first",
        turn_separator="eos",
        answer_space=True,
        question_suffix="",
        gen_supervision="codes",
        cfg_drop=0.05,
    )
    #: the VQ tokenizer (Emu3 has no vision tower)
    frozen_modules = ("vqmodel",)
    text_system = SYSTEM  # Emu3-Chat's system message, which its chat template does not add
    #: the Emu3-Gen model card: guidance 3, top-k 2048, its positive suffix and negative prompt
    image_defaults = ImageDefaults(guidance=3.0, top_k=2048, positive=POSITIVE, negative=NEGATIVE,
                                   options=("positive_prompt", "negative_prompt", "image_area", "ratio"))

    def __init__(
        self,
        model: nn.Module,
        processor,
        span_config: SpanConfig = SpanConfig(),
        padding_side: str = "right",
        prompt_config: PromptConfig | None = None,
    ):
        config = unwrap(model).config
        super().__init__(model, processor, span_config, padding_side, prompt_config)
        self.system_prompt = self.prompt_config.system_text(SYSTEM)
        self.prompt_config = replace(self.prompt_config, system_prompt=self.system_prompt or "none")
        tok = self.tokenizer
        vocab = config.vocabulary_map or {}
        self.image_token_id = token_id(tok, processor.image_token)
        if vocab.get(processor.image_token) != self.image_token_id:
            raise ValueError(f"processor image token {processor.image_token!r} disagrees with config.vocabulary_map")
        if EOL not in vocab:
            raise ValueError(f"config.vocabulary_map has no end-of-line token {EOL!r}")
        self.boi_id = token_id(tok, processor.image_start_token)
        self.eoi_id = token_id(tok, processor.image_end_token)
        self.wrapper_id = token_id(tok, processor.fake_token_around_image)
        self.eof_id = token_id(tok, processor.eof_token)
        self.vq_factor = 2 ** (len(config.vq_config.channel_multiplier) - 1)

    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        check_encode_args(task, cfg_blank)
        if image is None:
            image = load_image(image_path(record, base_dir))
        processed = self.processor.image_processor(image, return_tensors="pt")
        pixel_values, image_sizes = processed["pixel_values"][0], processed["image_sizes"][0]  # [3, H, W], [2]
        grid = (int(image_sizes[0]) // self.vq_factor, int(image_sizes[1]) // self.vq_factor)
        b = SequenceBuilder(self.tokenizer).tokens(self.bos_id, Role.TEMPLATE)
        p = self.prompt_config
        if task == "und":
            b.dialogue(
                dialogue(record),
                partial(self._question, grid=grid),
                self.eos_id,
                user="USER:",
                first_user=f"{self.system_prompt} USER:" if self.system_prompt else "USER:",
                assistant=" ASSISTANT:",
                space=" ",
                answer_space=" " if p.answer_space else "",
                separator=p.turn_separator,
                bos_id=self.bos_id,
                question_suffix=p.question_suffix,
                split=partial(place_image, placement=p.image_placement),
            )
        else:
            if not cfg_blank:
                b.text(generation_prompt(record), Role.PROMPT)
            self._image(b, grid, supervised=True, structure=p.gen_supervision == "codes+structure")
            b.tokens(self.eos_id, Role.TEMPLATE)
        return b.build(task, pixel_values=pixel_values, image_sizes=image_sizes.long(), cfg_blank=cfg_blank)

    def _question(self, b: SequenceBuilder, before: str, after: str, grid: tuple[int, int]) -> None:
        """The first question, the image between ``before`` and ``after`` (a space before it;
        ``verbatim``: the question's own whitespace after it)."""
        if before:
            b.text(" " + before, Role.PROMPT)
        if not before or self.prompt_config.image_placement != "verbatim":
            b.template(" ")
        self._image(b, grid, supervised=False)
        b.text(after, Role.PROMPT)

    def _image(self, b: SequenceBuilder, grid: tuple[int, int], supervised: bool, structure: bool = True) -> None:
        """The image block; ``supervised``: the codes are targets, and with ``structure`` the
        end-of-lines, end-of-frame and end-of-image too."""
        h, w = grid
        rest = supervised and structure
        b.tokens(self.boi_id, Role.IMAGE_MARKER).text(f"{h}*{w}", Role.IMAGE_MARKER)
        b.tokens(self.wrapper_id, Role.IMAGE_MARKER)
        for _ in range(h):  # placeholders for w codes and the end-of-line, filled in by the forward
            b.tokens([self.image_token_id] * w, Role.IMAGE, supervised)
            b.tokens(self.image_token_id, Role.IMAGE_MARKER, rest)
        b.tokens(self.eof_id, Role.IMAGE_MARKER, rest).tokens(self.eoi_id, Role.IMAGE_MARKER, rest)

    def plain_text_prompt(self, question: str) -> str:
        return f"{SYSTEM} USER: {question} ASSISTANT:"

    def image_area(self, options: ImageOptions) -> int:
        """Pixels of a generated image: the option, else the processor's ``image_area`` capped at its
        image processor's ``max_pixels`` (720 x 720 for Emu3-Gen)."""
        if options.image_area is not None:
            return options.image_area
        area = getattr(self.processor, "image_area", 518400)
        max_pixels = getattr(self.processor.image_processor, "max_pixels", None)
        return min(area, max_pixels) if max_pixels else area

    def generate_images(self, model: nn.Module, prompts: list[str], seeds: list[int], options: ImageOptions) -> list:
        """``model.generate`` on Emu3's generation prompt (``Emu3Processor(..., return_for_image_generation=True)``:
        the prompt plus the positive suffix, then ``<|image start|>{h}*{w}<|image token|>``), constrained by
        ``prefix_allowed_tokens_fn`` to ``w`` image tokens and an end-of-line per row, then end-of-frame,
        end-of-image and end-of-sequence (as transformers' Emu3 documentation does), classifier-free guidance
        against the negative prompt (``negative_prompt_ids``); the rows decoded with ``decode_image_tokens``."""
        from transformers import LogitsProcessorList

        processor, tok = self.processor, self.tokenizer
        check_seeds(prompts, seeds)
        common = dict(return_for_image_generation=True, image_area=self.image_area(options), ratio=options.ratio,
                      return_tensors="pt", padding=True, padding_side="left")
        inputs = processor(text=[p + options.positive for p in prompts], **common)
        height, width = (int(v) for v in inputs.pop("image_sizes")[0])
        if height < 1 or width < 1:
            from aia.errors import InputError

            raise InputError(f"{common['image_area']} pixels at ratio {options.ratio} give a {height} x {width} grid "
                             "of image tokens; ask for more pixels", field="image_area")
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        vocab = unwrap(model).model.vocabulary_mapping

        def ids(*values) -> torch.Tensor:
            return torch.tensor(values, device=model.device)

        visual, eol = ids(*vocab.image_tokens), ids(vocab.eol_token_id)
        closing = {1: ids(self.eof_id), 2: ids(self.eoi_id), 3: ids(tok.eos_token_id)}
        pad = ids(self.pad_id)
        rows = (width + 1) * height

        def allowed(batch_id: int, input_ids: torch.Tensor) -> torch.Tensor:
            """Emu3's image grammar: ``width`` codes then an end-of-line, ``height`` times; then end-of-frame,
            end-of-image, end-of-sequence (counted from the header's ``<|image token|>``)."""
            offset = input_ids.shape[0] - int(torch.nonzero(input_ids == self.wrapper_id)[-1])
            if offset <= rows:
                return eol if offset % (width + 1) == 0 else visual
            return closing.get(offset - rows, pad)

        guided = {}
        config = generation_config(model, max_new_tokens=rows + 3, guidance_scale=None)
        if options.guidance > 1:
            negative = processor(text=[options.negative] * len(prompts), **common)
            config.guidance_scale = options.guidance
            guided = {"negative_prompt_ids": negative["input_ids"].to(model.device),
                      "negative_prompt_attention_mask": negative["attention_mask"].to(model.device)}
        sampler = seeded_sampler(seeds, options.temperature, options.top_k, options.top_p)
        out = model.generate(**inputs, generation_config=config, prefix_allowed_tokens_fn=allowed,
                             logits_processor=LogitsProcessorList([sampler]), **guided)
        tokens = out[:, inputs["input_ids"].shape[1]:]
        if tokens.shape[1] != rows + 3:
            raise RuntimeError(f"Emu3 generated {tokens.shape[1]} image tokens, expected {rows + 3}")
        pixels = torch.cat([unwrap(model).decode_image_tokens(image_tokens=row[None], height=height, width=width)
                            for row in tokens])  # [B, C, H, W], one image at a time as for Janus
        return to_pil(pixels.permute(0, 2, 3, 1), processor.image_processor)

    def language_model(self, model: nn.Module) -> nn.Module:
        return unwrap(model).model.text_model

    def _image_tokens(self, model: nn.Module, pixel_values: torch.Tensor, image_sizes: torch.Tensor) -> torch.Tensor:
        """Row tokens (codes and end-of-lines) of every image, in batch order.

        Images of one size are encoded together, each cropped to its true size: the VQ's
        convolutions would see the zero padding of a mixed-size batch and change the
        codes near the border, making a sample's tokens depend on its batch.
        """
        per_image: list[torch.Tensor | None] = [None] * len(image_sizes)
        if any(_sharded(p) for p in model.model.vqmodel.parameters()):
            # DeepSpeed ZeRO-3 or FSDP2 gathers the VQ's shards at every call, collectively: every
            # rank must call it as often (one call per image; the same-size grouping varies by rank)
            groups = [[i] for i in range(len(image_sizes))]
        else:
            groups = [(image_sizes == size).all(-1).nonzero().flatten().tolist()
                      for size in torch.unique(image_sizes, dim=0)]
        for idx in groups:
            size = image_sizes[idx[0]]
            h, w = int(size[0]), int(size[1])
            tokens = model.model.get_image_tokens(pixel_values[idx, :, :h, :w], image_sizes[idx])  # [len(idx) * n]
            for i, t in zip(idx, tokens.view(len(idx), -1), strict=True):
                per_image[i] = t
        return torch.cat(per_image)

    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        """Generation: ``lm_head`` restricted to the image codes, end-of-line forced at row ends (as
        Emu3's generation constraint does); understanding: never the image placeholder."""
        m = unwrap(model)
        vocab = m.model.vocabulary_mapping
        if task == "gen":
            forced = {int(Role.IMAGE_MARKER): vocab.eol_token_id}
            return DecodeRunner(m.model, m.lm_head, allowed=id_tensor(vocab.image_tokens, m.device), forced=forced)
        blocked = id_tensor([self.image_token_id], m.device)
        return DecodeRunner(m.model, m.lm_head, ("input_ids", "pixel_values", "image_sizes"), blocked=blocked)

    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        model = unwrap(model)
        vq = model.model.vqmodel
        vq.eval()  # BatchNorm inside: never let model.train() reach the frozen tokenizer
        with torch.no_grad():
            tokens = self._image_tokens(
                model, batch.inputs["pixel_values"].to(module_dtype(vq)), batch.inputs["image_sizes"]
            )
        input_ids, labels = fill_image_tokens(batch.inputs["input_ids"], batch.labels, self.image_token_id, tokens)
        return language_model_loss(model.model.text_model, batch, model.lm_head, labels, input_ids=input_ids)
