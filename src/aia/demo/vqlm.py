"""Adapter for a plain decoder LM whose processor carries an external VQ image tokenizer.

The simplest purely unified model, of Emu3's kind: a transformers causal LM (e.g.
``LlamaForCausalLM``) whose vocabulary holds one token per VQ code, so images are read
and written as ordinary tokens. Unlike Emu3, the image tokenizer is not part of the
model but of the processor, so :meth:`VQLMAdapter.encode` writes the code tokens
straight into ``input_ids`` (no placeholder to fill in the forward; ``pixel_values``
stay ``None``), still without the model's weights.

What the processor must provide (:class:`aia.demo.digits.DigitsProcessor` does):

* ``tokenizer``: with ``bos``/``eos`` tokens (``pad``, else ``eos`` pads);
* ``image_tokenizer``: ``encode_image(PIL image) -> codes`` in reading order,
  ``num_codes`` and ``tokens_per_image`` (codes per image);
* ``image_code_token_ids``: the token id of each code;
* ``image_start_token`` / ``image_end_token``: the begin/end-of-image special tokens;
* for text-to-image (:meth:`VQLMAdapter.generate_images`, ``aia generate``) also
  ``image_tokenizer.decode_image(codes) -> PIL image``.

Sequences (``{codes}`` = one token per code, ``{before}``/``{after}`` the question text
around an ``<image>`` placeholder, see :func:`aia.data.split_at_image`; every piece is
tokenized on its own and nothing is inserted between pieces, which suits a word-level
tokenizer like the digits one)::

    und  <bos>user:{before}<boi>{codes}<eoi>{after}assistant:{A1}<eos>user:{Q2}assistant:{A2}<eos>
    gen  <bos>{prompt}<boi>{codes}<eoi><eos>

Roles: ``<bos>``, ``user:``, ``assistant:`` and ``<eos>`` are TEMPLATE; question and
prompt PROMPT; answers ANSWER; codes IMAGE; ``<boi>``/``<eoi>`` IMAGE_MARKER.

Labels: understanding supervises the answers and the ``<eos>`` after each; generation
supervises the codes and ``<eoi>`` (``<boi>`` is what a generation prompt ends with).

CFG blanking: the prompt is left out (``<bos><boi>{codes}...``).
"""

from __future__ import annotations

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
    id_tensor,
    language_model_loss,
    token_id,
    unwrap,
)
from aia.adapters.imagegen import check_seeds, seeded_sampler
from aia.adapters.prompts import PromptConfig
from aia.core.spans import Role, SpanConfig
from aia.data.records import dialogue, generation_prompt, image_path, load_image
from aia.demo.digits import FAMILY, DigitsProcessor

__all__ = ["VQLMAdapter"]

_CONTRACT = "tokenizer, image_tokenizer, image_code_token_ids, image_start_token, image_end_token"


class VQLMAdapter(AdapterBase):
    """A decoder LM over text and VQ-code tokens; the VQ lives in the processor."""

    family = FAMILY  # "vqlm", written into the config of every model the demo builds
    #: the demo's own sampling (:func:`aia.demo.judge.sample_codes`): no guidance, the whole codebook
    image_defaults = ImageDefaults(guidance=1.0, top_k=None)

    def __init__(
        self,
        model: nn.Module,
        processor,
        span_config: SpanConfig = SpanConfig(),
        padding_side: str = "right",
        prompt_config: PromptConfig | None = None,
    ):
        name = type(unwrap(model)).__name__
        if getattr(processor, "image_tokenizer", None) is None:
            raise ValueError(
                f"{name} is a unified model only with a processor that carries an image tokenizer "
                f"(processor.image_tokenizer; e.g. aia.demo.digits.DigitsProcessor), got {type(processor).__name__}; "
                f"the processor must provide: {_CONTRACT}"
            )
        missing = [a for a in _CONTRACT.split(", ") if getattr(processor, a, None) is None]
        if missing:
            raise ValueError(f"the processor of {name} lacks {', '.join(missing)} (needs: {_CONTRACT})")
        super().__init__(model, processor, span_config, padding_side, prompt_config)
        tok = self.tokenizer
        self.image_tokenizer = processor.image_tokenizer
        self.code_ids = list(processor.image_code_token_ids)
        if len(self.code_ids) != self.image_tokenizer.num_codes:
            raise ValueError(
                f"image_code_token_ids has {len(self.code_ids)} ids for {self.image_tokenizer.num_codes} codes"
            )
        vocab = unwrap(model).config.get_text_config().vocab_size
        if max(self.code_ids) >= vocab:
            raise ValueError(f"code token id {max(self.code_ids)} is outside the model's vocabulary ({vocab})")
        self.boi_id = token_id(tok, processor.image_start_token)
        self.eoi_id = token_id(tok, processor.image_end_token)
        if tok.bos_token_id is None or tok.eos_token_id is None:
            raise ValueError("the tokenizer needs bos and eos tokens")

    def image_token_ids(self, image) -> list[int]:
        """Token ids of an image's codes, in reading order."""
        return [self.code_ids[int(c)] for c in self.image_tokenizer.encode_image(image)]

    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        check_encode_args(task, cfg_blank)
        if image is None:
            image = load_image(image_path(record, base_dir))
        codes = self.image_token_ids(image)
        b = SequenceBuilder(self.tokenizer).tokens(self.bos_id, Role.TEMPLATE)
        if task == "und":
            question = partial(self._question, codes=codes)
            b.dialogue(dialogue(record), question, self.eos_id, user="user:", assistant="assistant:")
        else:
            if not cfg_blank:
                b.text(generation_prompt(record), Role.PROMPT)
            self._image(b, codes, supervised=True)
            b.tokens(self.eos_id, Role.TEMPLATE)
        return b.build(task, cfg_blank=cfg_blank)

    def generation_prefix(self, prompt: str, cfg_blank: bool = False) -> list[int]:
        """The generation sequence of ``prompt`` up to (excluding) the first image code, as :meth:`encode`
        writes it: ``<bos>{prompt}<boi>`` (``cfg_blank``: the unconditional ``<bos><boi>``)."""
        b = SequenceBuilder(self.tokenizer).tokens(self.bos_id, Role.TEMPLATE)
        if not cfg_blank:
            b.text(prompt.strip(), Role.PROMPT)
        return b.tokens(self.boi_id, Role.IMAGE_MARKER).ids

    @torch.no_grad()
    def generate_images(self, model: nn.Module, prompts: list[str], seeds: list[int], options: ImageOptions) -> list:
        """Codes sampled one at a time over the code tokens only (the whole sequence fed at every step: an
        image is a few codes), classifier-free guidance against the prompt-less sequence when
        ``options.guidance > 1``, decoded by the processor's ``image_tokenizer.decode_image``."""
        check_seeds(prompts, seeds)
        decode = getattr(self.image_tokenizer, "decode_image", None)
        if decode is None:
            from aia.errors import InputError

            raise InputError(f"the processor's image tokenizer ({type(self.image_tokenizer).__name__}) has no "
                             "decode_image(codes); it cannot turn generated codes into images")
        device = next(model.parameters()).device
        rows = [self.generation_prefix(p) for p in prompts]
        if options.guidance > 1:
            rows += [self.generation_prefix(p, cfg_blank=True) for p in prompts]
        width = max(len(r) for r in rows)
        seq = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        code_ids = torch.tensor(self.code_ids, device=device)
        sampler = seeded_sampler(seeds, options.temperature, options.top_k, options.top_p)
        codes = []
        for _ in range(self.image_tokenizer.tokens_per_image):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)  # counted over real tokens, as in training
            logits = model(input_ids=seq, attention_mask=mask, position_ids=positions, use_cache=False).logits
            scores = logits[:, -1, code_ids].float()  # [rows, K]
            if options.guidance > 1:
                cond, uncond = scores.chunk(2)
                scores = uncond + options.guidance * (cond - uncond)
            pick = sampler(None, scores).argmax(-1)  # [B] code index
            codes.append(pick)
            step = code_ids[pick].repeat(len(rows) // len(prompts))  # the same code in the unconditional row
            seq = torch.cat([seq, step[:, None]], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return [decode(row) for row in torch.stack(codes, dim=1).cpu().numpy()]

    def _question(self, b: SequenceBuilder, before: str, after: str, codes: list[int]) -> None:
        """The first question, the image where its ``<image>`` placeholder was."""
        b.text(before, Role.PROMPT)
        self._image(b, codes, supervised=False)
        b.text(after, Role.PROMPT)

    def _image(self, b: SequenceBuilder, codes: list[int], supervised: bool) -> None:
        b.tokens(self.boi_id, Role.IMAGE_MARKER)
        b.tokens(codes, Role.IMAGE, supervised)
        b.tokens(self.eoi_id, Role.IMAGE_MARKER, supervised)

    def language_model(self, model: nn.Module) -> nn.Module:
        return unwrap(model).model

    @classmethod
    def load_processor(cls, model_dir: Path):
        """The digits processor (tokenizer + VQ codebook) saved in ``model_dir``."""
        return DigitsProcessor.from_pretrained(model_dir)

    def image_block(self, input_ids: torch.Tensor) -> torch.Tensor:
        """``[T]`` bool: the code tokens of ``input_ids`` (the image is in the sequence itself)."""
        return torch.isin(input_ids, torch.tensor(self.code_ids))

    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        """Generation: ``lm_head`` restricted to the code tokens; understanding: never a code or an
        image marker."""
        m = unwrap(model)
        if task == "gen":
            return DecodeRunner(m.model, m.lm_head, allowed=id_tensor(self.code_ids, m.device))
        blocked = id_tensor([*self.code_ids, self.boi_id, self.eoi_id], m.device)
        return DecodeRunner(m.model, m.lm_head, blocked=blocked)

    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        model = unwrap(model)
        return language_model_loss(model.model, batch, model.lm_head, input_ids=batch.inputs["input_ids"])
