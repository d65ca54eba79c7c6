"""Adapter for ``ChameleonForConditionalGeneration``.

Chameleon writes an image as ``<racm3:break>`` + 1024 VQ code tokens of the shared
vocabulary + ``<eoss>`` (what ``ChameleonProcessor`` builds); ``model.model.get_image_tokens``
gives the codes, which fill the ``<image>`` placeholder slots in the forward.

Chat format: Chameleon has no chat template; ``ChameleonProcessor`` ends a prompt with
the separator ``<reserved08706>`` in chat mode (and its tokenizer starts it with ``<s>``).
We use it between user and assistant and close each assistant turn with ``</s>``::

    und  <s>{image}{Q1}<reserved08706>{A1}</s>{Q2}<reserved08706>{A2}</s>
    gen  <s>{prompt}<reserved08706><racm3:break>{code * N}<eoss></s>

Question text before an ``<image>`` placeholder goes before the image block, right against
it, as in the processor's documented prompts (``"<image>What is shown in this image?"``,
``"...remember now.<image><image>I would like..."``); ``image_placement="verbatim"`` keeps
the question's own whitespace next to the image, as the processor given the raw text does.
These choices are fields of :class:`~aia.adapters.prompts.PromptConfig`.

Roles: ``<s>``, the separator and ``</s>`` are TEMPLATE; question / prompt PROMPT;
answers ANSWER; codes IMAGE; ``<racm3:break>`` / ``<eoss>`` IMAGE_MARKER.

Labels: understanding supervises the answers and the ``</s>`` after each; generation
supervises the codes and ``<eoss>`` (``gen_supervision="codes"``: the codes only). CFG
blanking leaves the prompt out.

Loss: the transformers forward sets the logits of every image-code token to -inf (the
released model does not generate images), so it cannot train generation. Both tasks
take the language model's hidden states and apply ``lm_head`` here; understanding keeps
the forward's behaviour (code logits masked, as at inference), generation uses the full
vocabulary. The HF VQ has only the encoder, which is all training needs.
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
    SequenceBuilder,
    check_encode_args,
    fill_image_tokens,
    id_tensor,
    language_model_loss,
    module_dtype,
    token_id,
    unwrap,
)
from aia.adapters.prompts import PromptConfig, place_image
from aia.core.spans import Role, SpanConfig
from aia.data.records import dialogue, generation_prompt, image_path, load_image

__all__ = ["ChameleonAdapter"]


class ChameleonAdapter(AdapterBase):
    """Chameleon: images are VQ tokens of the shared vocabulary between begin/end markers."""

    family = "chameleon"
    #: the sources of each choice: :mod:`aia.adapters.prompts`
    prompt_defaults = PromptConfig(
        image_placement="as_written",
        turn_separator="eos",
        answer_space=False,
        question_suffix="",
        gen_supervision="codes+structure",
        cfg_drop=0.1,
    )
    #: the VQ tokenizer (Chameleon has no vision tower)
    frozen_modules = ("vqmodel",)
    #: a text-only prompt's chat template already ends the turn: the processor must not append its separator
    text_processor_kwargs = {"return_for_text_completion": True}
    no_images_reason = (
        "cannot generate images: transformers ships no image decoder for Chameleon (its VQ-VAE has only the "
        "encoder), so generated image tokens cannot be turned into pixels; use a Janus-Pro or Emu3 model"
    )

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
        self.system_prompt = self.prompt_config.system_text("")  # ChameleonProcessor adds none
        self.prompt_config = replace(self.prompt_config, system_prompt=self.system_prompt or "none")
        tok = self.tokenizer
        self.image_token_id = token_id(tok, processor.image_token)
        if (config.vocabulary_map or {}).get(processor.image_token) != self.image_token_id:
            raise ValueError(f"processor image token {processor.image_token!r} disagrees with config.vocabulary_map")
        self.boi_id = token_id(tok, processor.image_start_token)
        self.eoi_id = token_id(tok, processor.image_end_token)
        if tok.sep_token is None:
            raise ValueError("Chameleon's tokenizer needs its chat separator as sep_token ('<reserved08706>')")
        self.sep_id = tok.sep_token_id
        self.vq_factor = 2 ** (len(config.vq_config.channel_multiplier) - 1)

    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        check_encode_args(task, cfg_blank)
        if image is None:
            image = load_image(image_path(record, base_dir))
        pixel_values = self.processor.image_processor(image, return_tensors="pt")["pixel_values"][0]  # [3, H, W]
        num_codes = (pixel_values.shape[-2] // self.vq_factor) * (pixel_values.shape[-1] // self.vq_factor)
        b = SequenceBuilder(self.tokenizer).tokens(self.bos_id, Role.TEMPLATE)
        p = self.prompt_config
        if task == "und":
            if self.system_prompt:  # no Chameleon source has one: the text as given, right after <s>
                b.template(self.system_prompt)
            b.dialogue(
                dialogue(record),
                partial(self._question, num_codes=num_codes),
                self.eos_id,
                assistant=[self.sep_id],
                answer_space=" " if p.answer_space else "",
                separator=p.turn_separator,
                bos_id=self.bos_id,
                question_suffix=p.question_suffix,
                split=partial(place_image, placement=p.image_placement),
            )
        else:
            if not cfg_blank:
                b.text(generation_prompt(record), Role.PROMPT)
            b.tokens(self.sep_id, Role.TEMPLATE)
            self._image(b, num_codes, supervised=True, structure=p.gen_supervision == "codes+structure")
            b.tokens(self.eos_id, Role.TEMPLATE)
        return b.build(task, pixel_values=pixel_values, cfg_blank=cfg_blank)

    def _question(self, b: SequenceBuilder, before: str, after: str, num_codes: int) -> None:
        """The first question, the image where its ``<image>`` placeholder was."""
        b.text(before, Role.PROMPT)
        self._image(b, num_codes, supervised=False)
        b.text(after, Role.PROMPT)

    def _image(self, b: SequenceBuilder, num_codes: int, supervised: bool, structure: bool = True) -> None:
        b.tokens(self.boi_id, Role.IMAGE_MARKER)
        b.tokens([self.image_token_id] * num_codes, Role.IMAGE, supervised)
        b.tokens(self.eoi_id, Role.IMAGE_MARKER, supervised and structure)

    def plain_text_prompt(self, question: str) -> str:
        return question  # the processor appends the chat separator

    def language_model(self, model: nn.Module) -> nn.Module:
        return unwrap(model).model

    def _code_ids(self, model: nn.Module, device: torch.device) -> torch.Tensor:
        """The image-code token ids (8192 on the real model) on ``device``, built once per device."""
        cached = getattr(self, "_code_ids_on", None)
        if cached is None or cached.device != device:
            self._code_ids_on = torch.tensor(model.model.vocabulary_mapping.image_tokens, device=device)
        return self._code_ids_on

    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        """Generation: ``lm_head`` restricted to the image codes; understanding: never an image code
        or the placeholder (Chameleon's forward masks the codes too)."""
        m = unwrap(model)
        vocab = m.model.vocabulary_mapping
        if task == "gen":
            return DecodeRunner(m.model, m.lm_head, allowed=id_tensor(vocab.image_tokens, m.device))
        blocked = id_tensor([self.image_token_id, *vocab.image_tokens], m.device)
        return DecodeRunner(m.model, m.lm_head, ("input_ids", "pixel_values"), blocked=blocked)

    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        model = unwrap(model)
        vq = model.model.vqmodel
        vq.eval()  # frozen tokenizer
        with torch.no_grad():
            codes = model.model.get_image_tokens(batch.inputs["pixel_values"].to(module_dtype(vq)))  # [B, N]
        input_ids, labels = fill_image_tokens(batch.inputs["input_ids"], batch.labels, self.image_token_id, codes)
        head = model.lm_head
        if batch.task == "und":
            code_ids = self._code_ids(model, input_ids.device)

            def head(hidden: torch.Tensor) -> torch.Tensor:  # as the transformers forward: no image codes
                logits = model.lm_head(hidden)
                return logits.index_fill(-1, code_ids, torch.finfo(logits.dtype).min)

        return language_model_loss(model.model, batch, head, labels, input_ids=input_ids)
