"""Adapter for ``JanusForConditionalGeneration`` (Janus / Janus-Pro).

Chat format: Janus-Pro's ``deepseek`` format, as the chat template of the transformers
checkpoints (``convert_janus_weights_to_hf.py``) and ``JanusProcessor`` write it::

    und  <bos>{system}\n\n<|User|>: <begin_of_image><image_placeholder>*N<end_of_image>\n{Q1}\n\n<|Assistant|>: {A1}<eos><|User|>: {Q2}\n\n<|Assistant|>: {A2}<eos>
    gen  <bos><|User|>: {prompt}\n\n<|Assistant|>:<begin_of_image>{code_1 .. code_N}

``{system}`` is ``JanusProcessor``'s default system prompt ("You are a helpful language and
vision assistant. ..."), which the processor adds to understanding prompts when its
``use_default_system_prompt`` is set (as on the hub checkpoints); generation prompts have
none, as in the processor's image mode. Question text before an ``<image>`` placeholder goes
before the image, with ``\n`` on both sides as in the HF template. ``<|User|>:`` and
``<|Assistant|>:`` are plain text (they are not special tokens in Janus-Pro's tokenizer).
Every choice where the sources differ (system prompt, image placement, turn separator,
answer space: the released AIA training code writes ``<|Assistant|>:{A1}<bos><|User|>: ...``)
is a field of :class:`~aia.adapters.prompts.PromptConfig`.

Roles: ``<bos>``, the system prompt, role tags, separators and ``<eos>`` are TEMPLATE;
question / prompt text PROMPT; answers ANSWER; the image slots IMAGE (understanding: the N
positions filled with SigLIP features; generation: the N VQ codes); ``<begin_of_image>`` /
``<end_of_image>`` IMAGE_MARKER. The leading space of a question or answer belongs to it
(that is how the byte-level BPE tokenizes the whole string too).

Labels: understanding supervises the answers and the ``<eos>`` closing each of them;
generation supervises the N codes.

Understanding goes through the model's own forward (``model.model``), which puts the
aligned vision features into the ``image_token_id`` slots; only the language model gets
the AIA keyword arguments (the vision tower is called without them). Generation is not
covered by the transformers forward; it is built from the model's parts as the Janus
training code does: the frozen VQ tokenizer gives the codes, ``generation_embeddings`` +
``generation_aligner`` embed them, the language model runs over
``[prompt ; <begin_of_image> ; code_1 .. code_N]`` and ``generation_head`` predicts code
``i`` from position ``i - 1``. The sequence holds all N codes (the output at the last one
is unused by the loss) so that IMAGE marks exactly the N image positions, as for the
VQ-token families.

CFG blanking replaces every token between ``<bos>`` and ``<begin_of_image>`` by the pad
token, as Janus' generation code builds its unconditional branch; those positions are
real (attended) tokens with role TEMPLATE. The sample is flagged ``cfg_blank`` and carries
no AIA term (its query set is emptied at collation), whatever the key set.

The generation image is the processor's output (resized, padded to a square, scaled
to [-1, 1] for Janus-Pro's processor config), which is what the VQ expects.
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
from aia.data.records import IMAGE_PLACEHOLDER, dialogue, generation_prompt, image_path, load_image

__all__ = ["DEFAULT_SYSTEM_PROMPT", "JanusAdapter"]

USER = "<|User|>:"
ASSISTANT = "<|Assistant|>:"
#: transformers ``models/janus/processing_janus.py`` ``DEFAULT_SYSTEM_PROMPT`` without its trailing
#: "\n\n" (the deepseek format's separator); Janus' ``VLChatProcessor.system_prompt`` is the same text
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful language and vision assistant. "
    "You are able to understand the visual content that the user provides, "
    "and assist the user with a variety of tasks using natural language."
)


class JanusAdapter(AdapterBase):
    """Janus / Janus-Pro: SigLIP features for understanding, VQ codes for generation."""

    family = "janus"
    #: the sources of each choice: :mod:`aia.adapters.prompts`
    prompt_defaults = PromptConfig(
        image_placement="as_written",
        turn_separator="eos",
        answer_space=True,
        question_suffix="",
        gen_supervision="codes",
        cfg_drop=0.1,
    )
    #: the released AIA code's (``trainer_t2i.py``): the VQ tokenizer and the SigLIP tower
    frozen_modules = ("vqmodel", "vision_model")
    #: the understanding aligner; the generation embedding, aligner and head
    task_specific_modules = ("aligner", "generation_embeddings", "generation_aligner", "generation_head")
    #: Janus' own ``generation_inference.py``: guidance 5, sampling over the whole codebook
    image_defaults = ImageDefaults(guidance=5.0, top_k=None)

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
        # "default": what JanusProcessor adds to a text-mode prompt (use_default_system_prompt)
        default = DEFAULT_SYSTEM_PROMPT if getattr(processor, "use_default_system_prompt", False) else ""
        self.system_prompt = self.prompt_config.system_text(default)
        self.prompt_config = replace(self.prompt_config, system_prompt=self.system_prompt or "none")
        tok = self.tokenizer
        self.image_token_id = config.image_token_id
        if token_id(tok, processor.image_token) != self.image_token_id:
            raise ValueError(
                f"processor image token {processor.image_token!r} is not config.image_token_id={self.image_token_id}"
            )
        self.boi_id = token_id(tok, processor.image_start_token)
        self.eoi_id = token_id(tok, processor.image_end_token)
        vision = config.vision_config
        self.num_und_tokens = (vision.image_size // vision.patch_size) ** 2
        self.vq_factor = 2 ** (len(config.vq_config.channel_multiplier) - 1)

    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        check_encode_args(task, cfg_blank)
        if image is None:
            image = load_image(image_path(record, base_dir))
        pixel_values = self.processor.image_processor(image, return_tensors="pt")["pixel_values"][0]  # [3, H, W]
        b = SequenceBuilder(self.tokenizer).tokens(self.bos_id, Role.TEMPLATE)
        if task == "und":
            p, turns = self.prompt_config, dialogue(record)
            # verbatim: the question's own whitespace next to its placeholder; without one, as as_written
            verbatim = p.image_placement == "verbatim" and IMAGE_PLACEHOLDER in turns[0][0]
            b.dialogue(
                turns,
                partial(self._question, verbatim=verbatim),
                self.eos_id,
                user=USER,
                first_user=f"{self.system_prompt}\n\n{USER}" if self.system_prompt else USER,
                assistant="\n\n" + ASSISTANT,
                space=" ",
                answer_space=" " if p.answer_space else "",
                separator=p.turn_separator,
                bos_id=self.bos_id,
                question_suffix=p.question_suffix,
                split=partial(place_image, placement=p.image_placement),
            )
        else:
            b.template(USER).text(" " + generation_prompt(record), Role.PROMPT)
            b.template("\n\n" + ASSISTANT)
            if cfg_blank:  # everything between <bos> and <begin_of_image> becomes padding tokens
                n = len(b.ids) - 1
                b.ids[1:] = [self.pad_id] * n
                b.roles[1:] = [int(Role.TEMPLATE)] * n
            num_codes = (pixel_values.shape[-2] // self.vq_factor) * (pixel_values.shape[-1] // self.vq_factor)
            b.tokens(self.boi_id, Role.IMAGE_MARKER)
            b.tokens([self.image_token_id] * num_codes, Role.IMAGE, supervised=True)
        return b.build(task, pixel_values=pixel_values, cfg_blank=cfg_blank)

    def _question(self, b: SequenceBuilder, before: str, after: str, verbatim: bool = False) -> None:
        """The first question, the understanding image between ``before`` and ``after``: ``\n`` on
        the sides where there is text, as the HF template writes an image between text parts
        (``verbatim``: the question's own whitespace, as Janus' ``VLChatProcessor`` keeps it)."""
        if before:
            b.text(" " + before, Role.PROMPT)
            if not verbatim:
                b.template("\n")
        else:
            b.template(" ")
        b.tokens(self.boi_id, Role.IMAGE_MARKER)
        b.tokens([self.image_token_id] * self.num_und_tokens, Role.IMAGE)
        b.tokens(self.eoi_id, Role.IMAGE_MARKER)
        if after:
            if not verbatim:
                b.template("\n")
            b.text(after, Role.PROMPT)

    def generation_settings(self) -> dict:
        """What a saved checkpoint's ``generation_config`` needs for ``generate(generation_mode="image")``:
        the begin-of-image id (transformers reads ``generation_kwargs["boi_token_id"]``) and the pad id."""
        return {"generation_kwargs": {"boi_token_id": self.boi_id}, "pad_token_id": self.pad_id}

    def plain_text_prompt(self, question: str) -> str:
        return f"{USER} {question}\n\n{ASSISTANT}"

    def generate_images(self, model: nn.Module, prompts: list[str], seeds: list[int], options: ImageOptions) -> list:
        """``model.generate(..., generation_mode="image")`` on the text-only prompt followed by
        ``<begin_of_image>``, classifier-free guidance on the unconditional rows transformers builds (the
        prompt replaced by padding), the codes decoded with ``decode_image_tokens``."""
        from transformers import LogitsProcessorList
        from transformers.generation.logits_process import ClassifierFreeGuidanceLogitsProcessor

        check_seeds(prompts, seeds)

        processor = self.processor
        inputs = processor(text=[self.text_prompt(p)[0] for p in prompts], generation_mode="image",
                           return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
        inputs = {k: v.to(model.device) for k, v in inputs.items() if k in ("input_ids", "attention_mask")}
        config = generation_config(model, guidance_scale=1)  # guidance is applied below, before the sampler
        config.generation_kwargs = {**(getattr(config, "generation_kwargs", None) or {}), "boi_token_id": self.boi_id}
        if options.guidance > 1:
            guide = ClassifierFreeGuidanceLogitsProcessor(options.guidance)
        else:  # no guidance: keep the conditional half of the doubled batch
            def guide(input_ids, scores):
                return scores[: scores.shape[0] // 2]
        processors = LogitsProcessorList([guide, seeded_sampler(seeds, options.temperature, options.top_k, options.top_p)])
        codes = model.generate(**inputs, generation_mode="image", generation_config=config, logits_processor=processors)
        # one image at a time: the decoder's arithmetic then does not depend on the batch size
        pixels = torch.cat([unwrap(model).decode_image_tokens(row[None]) for row in codes])  # [B, H, W, C]
        return to_pil(pixels, processor.image_processor)

    def language_model(self, model: nn.Module) -> nn.Module:
        return unwrap(model).model.language_model

    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        """Generation: the generation head over the codebook, codes fed back through the generation
        embedding; understanding: ``lm_head``, never the image placeholder."""
        m = unwrap(model)
        if task == "gen":
            return DecodeRunner(
                m.model.language_model,
                m.model.generation_head,
                embed_prefill=m.get_input_embeddings(),
                embed_step=m.prepare_embeddings_for_image_generation,
            )
        blocked = id_tensor([self.image_token_id], m.device)
        return DecodeRunner(m.model, m.lm_head, ("input_ids", "pixel_values"), blocked=blocked)

    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        model = unwrap(model)
        model.model.vqmodel.eval()  # frozen tokenizer: keep it in eval mode whatever model.train() did
        if batch.task == "und":
            return self._understanding(model, batch)
        return self._generation(model, batch)

    def _understanding(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        pixel_values = batch.inputs["pixel_values"].to(module_dtype(model.model.vision_model))
        return language_model_loss(model.model, batch, model.lm_head, input_ids=batch.inputs["input_ids"],
                                   pixel_values=pixel_values)

    def _generation(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        input_ids = batch.inputs["input_ids"]  # [B, T], image_token_id at the N code slots
        vq = model.model.vqmodel
        with torch.no_grad():
            codes = vq.encode(batch.inputs["pixel_values"].to(module_dtype(vq))).image_tokens  # [B * N]
        codes = codes.view(input_ids.shape[0], -1)  # [B, N]
        _, labels = fill_image_tokens(input_ids, batch.labels, self.image_token_id, codes)
        text_embeds = model.get_input_embeddings()(input_ids)  # [B, T, D]
        image_embeds = model.prepare_embeddings_for_image_generation(codes)  # [B, N, D]
        slots = (input_ids == self.image_token_id).unsqueeze(-1)
        inputs_embeds = text_embeds.masked_scatter(slots, image_embeds.to(text_embeds.dtype))
        return language_model_loss(model.model.language_model, batch, model.model.generation_head, labels,
                                   inputs_embeds=inputs_embeds)
