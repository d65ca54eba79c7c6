"""Adapter for ``GlmImageForConditionalGeneration`` (GLM-Image): a generation-only reference model.

The paper takes its generation targets from a strong generation-only model (HunyuanImage, which
transformers does not have). GLM-Image's autoregressive part is in transformers: a GLM language model
whose head (``lm_head``, ``vision_vocab_size`` outputs) writes an image as VQ codes, a small preview
grid first and then the full grid; a diffusion decoder outside transformers (diffusers'
``GlmImagePipeline``) turns the codes into pixels. This adapter profiles the language model while it
writes those codes, so that its profile can become generation targets (``aia targets``).

Sequence (text-to-image), as ``GlmImageProcessor`` writes the prompt and the model generates the rest::

    {chat template around the prompt}<sop>{h} {w}<eop><sop>{ph} {pw}<eop><image start> {ph*pw codes} {h*w codes} <image end>

* the prompt part is the processor's own: the chat template of the checkpoint's processor (when it has
  one) renders the prompt as a user message with the generation prompt added, and
  ``GlmImageProcessor`` appends the grid header and the image start (its ``bos_token``,
  ``<|dit_token_16384|>`` in the release) for ``target_h`` x ``target_w`` pixels: ``h`` x ``w`` =
  ``target / 32`` and the preview ``ph`` x ``pw`` (about 16 x 16). The token ids are the processor's
  (:meth:`GlmImageAdapter.prompt_tokens` checks them against it); the roles come from the characters
  each token covers: the prompt's text PROMPT, the template's TEMPLATE, the header and the image
  start IMAGE_MARKER;
* the codes: the preview grid, then the full grid, in reading order, as ``generate`` writes them
  (diffusers' ``GlmImagePipeline`` keeps the full grid, after the preview's ``ph * pw`` tokens), then
  the image end (``config.image_end_token_id``), which the model writes last. Teacher forcing takes
  each grid's codes from the model's own image tokenizer (``get_image_features`` then
  ``get_image_tokens``: the vision encoder, then the VQ quantizer): the full grid from the record's
  image as the model's image processor prepares an input image (which halves it, so that its patch
  grid is the ``target / 32`` grid), the preview from the image resized to the preview grid's
  pixels. GLM-Image's training code is not public: how it tokenized its training images is our
  reading (``docs/FIDELITY.md``);
* positions: GLM-Image's 3D rotary positions (``GlmImageModel.get_rope_index``): text positions
  count the real tokens (the same on the three axes); a grid starting at position ``p`` has
  ``(p, p + row, p + column)``, and the next grid (or the image end) starts at ``p + max(rows,
  columns)``. The adapter computes them from the roles and the grids (:func:`rope_positions`), so
  left and right padding, a cut prompt and decoding (which feeds the planned positions) give the
  model's own.

Roles and spans: the codes of both grids are IMAGE, one image block with the header, the image
start and the image end (IMAGE_MARKER), so the generation keys are the text before the header and
the queries the codes (``image-but-last`` leaves out the full grid's last code). Labels: the codes
and the image end.

Decoding (``aia profile --mode decode``, ``aia generate``) follows the checkpoint's
``generation_config``: sampling with its ``temperature`` / ``top_p`` / ``top_k`` (diffusers'
``GlmImagePipeline.generate_prior_tokens`` calls ``generate(..., do_sample=True)`` with them), no
classifier-free guidance (GLM-Image guides its diffusion decoder, not the autoregressive model: the
pipeline's ``generate`` call has none), the head restricted to the codes. ``aia generate`` writes the
token grids (:class:`~aia.adapters.base.ImageTokens`), not pixels: the pixel decoder is not part of
the transformers class. Understanding is refused; input images (GLM-Image's image editing) are not
supported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from aia.adapters.base import (
    IGNORE_INDEX,
    AdapterBase,
    AdapterOutput,
    Batch,
    DecodeRunner,
    Example,
    ImageDefaults,
    ImageOptions,
    ImageTokens,
    check_encode_args,
    fill_image_tokens,
    id_tensor,
    language_model_loss,
    module_dtype,
    token_id,
    unwrap,
)
from aia.adapters.imagegen import check_seeds, generation_config, seeded_sampler
from aia.adapters.prompts import PromptConfig
from aia.core.spans import Role, SpanConfig
from aia.data.records import generation_prompt, image_path, load_image

__all__ = ["GlmImageAdapter", "GlmImageExample", "rope_positions"]

#: ``GlmImageProcessor._get_target_shape``'s factor: pixels per token of the full grid
TARGET_FACTOR = 32
#: the image area ``aia generate`` asks for by default (diffusers' ``GlmImagePipeline``: 1024 x 1024)
DEFAULT_AREA = 1024 * 1024


@dataclass
class GlmImageExample(Example):
    """An :class:`~aia.adapters.base.Example` with GLM-Image's image inputs: ``vision`` holds
    ``pixel_values`` ``[P, D]`` (the patches of both grids' images, preview first) and ``image_grid_thw``
    ``[2, 3]``; ``grids`` the two token grids ``((ph, pw), (h, w))``."""

    vision: dict[str, torch.Tensor] = field(default_factory=dict)
    grids: tuple[tuple[int, int], ...] = ()


def rope_positions(roles: torch.Tensor, attention_mask: torch.Tensor, grids: list[tuple]) -> torch.Tensor:
    """GLM-Image's 3D rotary positions ``[3, B, T]`` of a batch, from its roles ``[B, T]``, attention mask
    and each row's token grids (in the order they appear; the row's IMAGE positions fill them one after
    the other, a shorter run fills a prefix): text positions count the real tokens; a grid of ``r`` x
    ``c`` codes starting at ``p`` has ``(p, p + i // c, p + i % c)`` at its ``i``-th code, and what
    follows starts at ``p + max(r, c)``, as ``GlmImageModel.get_rope_index`` gives the tokens it
    generates. Padding positions hold 0."""
    batch, length = roles.shape
    out = torch.zeros(3, batch, length, dtype=torch.long)
    roles, real = roles.cpu(), attention_mask.cpu().bool()
    for b in range(batch):
        where = real[b].nonzero().flatten()
        row_roles = roles[b, where]
        image = (row_roles == Role.IMAGE).nonzero().flatten()
        pos = torch.arange(len(where)).expand(3, -1).clone()  # [3, n]: text counts every real token
        if len(image):
            start = int(image[0])
            p, k = start, start  # position of the next grid; index of its first code
            for rows, cols in grids[b]:
                n = min(rows * cols, len(where) - k)
                if n <= 0 or not bool((row_roles[k : k + n] == Role.IMAGE).all()):
                    break
                i = torch.arange(n)
                pos[0, k : k + n] = p
                pos[1, k : k + n] = p + i // cols
                pos[2, k : k + n] = p + i % cols
                k, p = k + n, p + max(rows, cols)
            pos[:, k:] = torch.arange(len(where) - k) + p  # after the grids: text positions again
        out[:, b, where] = pos
    return out.to(attention_mask.device)


class GlmImageAdapter(AdapterBase):
    """GLM-Image: text -> VQ codes, a preview grid then the full grid (generation only)."""

    family = "glm-image"
    tasks = ("gen",)
    #: GLM-Image guides its diffusion decoder, not the autoregressive model: no prompt is blanked
    cfg_drop = 0.0
    #: the image tokenizer: the vision encoder and the VQ quantizer
    frozen_modules = ("vqmodel", "visual")
    #: no guidance (module docstring); the sampling settings are the checkpoint's (set per instance)
    image_defaults = ImageDefaults(guidance=1.0, top_k=None, options=("image_area", "ratio"), guided=False)
    image_output = "tokens"

    def __init__(
        self,
        model: nn.Module,
        processor,
        span_config: SpanConfig = SpanConfig(),
        padding_side: str = "right",
        prompt_config: PromptConfig | None = None,
    ):
        base = unwrap(model)
        super().__init__(model, processor, span_config, padding_side, prompt_config)
        config = base.config
        tok = self.tokenizer
        self.image_token_id = config.image_token_id
        if token_id(tok, processor.image_token) != self.image_token_id:
            raise ValueError(f"processor image token {processor.image_token!r} is not "
                             f"config.image_token_id={self.image_token_id}")
        self.start_id, self.end_id = config.image_start_token_id, config.image_end_token_id
        if tok.convert_tokens_to_ids(processor.bos_token) != self.start_id:
            raise ValueError(f"the processor's image start {processor.bos_token!r} is not "
                             f"config.image_start_token_id={self.start_id}")
        self.codebook = config.vq_config.num_embeddings
        self.image_defaults = _sampling(base, type(self).image_defaults)

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        check_encode_args(task, cfg_blank)
        if task != "gen":
            from aia.errors import InputError

            raise InputError(self.task_refusal(task, self.model_class), field="task")
        if image is None:
            image = load_image(image_path(record, base_dir))
        full = self._patches(image)  # the image as the model's image processor prepares an input image
        rows, cols = (int(v) for v in full["image_grid_thw"][0, 1:])
        ids, roles, grids = self.prompt_tokens("" if cfg_blank else generation_prompt(record),
                                               rows * TARGET_FACTOR, cols * TARGET_FACTOR)
        (prows, pcols), (grows, gcols) = grids
        if (grows, gcols) != (rows, cols):
            raise RuntimeError(f"the processor's target grid {grows}x{gcols} is not the image's {rows}x{cols}")
        preview = self._patches(image, size=(prows, pcols))
        codes = prows * pcols + rows * cols
        ids += [self.image_token_id] * codes + [self.end_id]
        roles += [int(Role.IMAGE)] * codes + [int(Role.IMAGE_MARKER)]
        labels = [IGNORE_INDEX] * (len(ids) - codes - 1) + [self.image_token_id] * codes + [self.end_id]
        vision = {"pixel_values": torch.cat([preview["pixel_values"], full["pixel_values"]]),
                  "image_grid_thw": torch.cat([preview["image_grid_thw"], full["image_grid_thw"]])}
        long = torch.long
        return GlmImageExample(
            task=task, input_ids=torch.tensor(ids, dtype=long), roles=torch.tensor(roles, dtype=long),
            labels=torch.tensor(labels, dtype=long), cfg_blank=cfg_blank, vision=vision, grids=tuple(grids),
        )

    def _patches(self, image, size: tuple[int, int] | None = None) -> dict[str, torch.Tensor]:
        """The image processor's patches and grid of ``image``; ``size``: a ``(rows, columns)`` patch grid,
        the image resized to it first (bicubic, the image processor's own resampling)."""
        from aia.errors import ImageError

        ip = self.processor.image_processor
        try:
            if size is None:
                out = ip(image.convert("RGB"), return_tensors="pt")
            else:
                patch = ip.patch_size * ip.merge_size
                resized = image.convert("RGB").resize((size[1] * patch, size[0] * patch), ip.resample)
                out = ip(resized, do_resize=False, return_tensors="pt")
        except ValueError as err:  # smart_resize: too small, or more than 4:1
            raise ImageError(f"{self.model_class}'s image processor refuses the image: {err}") from None
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"].long()}

    def prompt_text(self, prompt: str) -> str:
        """``prompt`` as the checkpoint's chat template renders a user message with the generation prompt
        added; the prompt itself without a template."""
        if getattr(self.processor, "chat_template", None):
            messages = [{"role": "user", "content": [{"type": "text", "text": prompt}]}]
            return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return prompt

    def prompt_tokens(self, prompt: str, target_h: int, target_w: int) -> tuple[list[int], list[int], list]:
        """The processor's prompt for an image of ``target_h`` x ``target_w`` pixels: ``(ids, roles, grids)``,
        ``grids`` = ``[(ph, pw), (h, w)]`` the preview and full token grids the processor asks for.

        The ids are ``GlmImageProcessor``'s, checked; each token's role comes from the characters it
        covers (module docstring).

        Raises:
            RuntimeError: the tokenizer alone does not give the processor's ids (the processor's prompt
                format changed).
        """
        text = self.prompt_text(prompt)
        out = self.processor(text=[text], target_h=target_h, target_w=target_w)
        ids = list(out["input_ids"][0])
        grids = [tuple(int(v) for v in g[1:]) for g in out["image_grid_thw"]]  # [full, preview]
        p = self.processor
        (h, w), (ph, pw) = grids
        whole = text + f"{p.grid_bos_token}{h} {w}{p.grid_eos_token}{p.grid_bos_token}{ph} {pw}{p.grid_eos_token}"
        whole += p.bos_token
        enc = self.tokenizer(whole, return_offsets_mapping=True)
        if list(enc["input_ids"]) != ids:
            raise RuntimeError(f"{type(p).__name__}'s prompt is not {whole!r} as its tokenizer encodes it; "
                               "the adapter cannot tell its tokens' roles")
        start = text.rfind(prompt) if prompt else -1
        roles = []
        for a, b in enc["offset_mapping"]:
            if b == a:
                roles.append(int(Role.TEMPLATE))  # added by the tokenizer (no characters)
            elif a >= len(text):
                roles.append(int(Role.IMAGE_MARKER))  # the grid header and the image start
            elif start >= 0 and start <= a < start + len(prompt):
                roles.append(int(Role.PROMPT))
            else:
                roles.append(int(Role.TEMPLATE))
        return ids, roles, [(ph, pw), (h, w)]

    # -- batches and forward ----------------------------------------------------------------
    def collate(self, examples: list[Example], padding_side: str | None = None) -> Batch:
        """The base collation, the images' patches and grids (``pixel_values`` ``[P, D]``,
        ``image_grid_thw`` ``[2B, 3]``) and GLM-Image's 3D positions (:func:`rope_positions`)."""
        batch = super().collate(examples, padding_side)
        batch.inputs["pixel_values"] = torch.cat([ex.vision["pixel_values"] for ex in examples])
        batch.inputs["image_grid_thw"] = torch.cat([ex.vision["image_grid_thw"] for ex in examples])
        batch.inputs["position_ids"] = rope_positions(batch.roles, batch.attention_mask, [ex.grids for ex in examples])
        return batch

    def language_model(self, model: nn.Module) -> nn.Module:
        return unwrap(model).model.language_model

    def image_tokens(self, model: nn.Module, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
        """The codes of every grid, in order (``[sum of rows * columns]``): the vision encoder, then the VQ."""
        inner = unwrap(model).model
        inner.vqmodel.eval()
        with torch.no_grad():
            features = inner.get_image_features(pixel_values.to(module_dtype(inner.visual)), image_grid_thw)
            return inner.get_image_tokens(features.pooler_output)

    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        m = unwrap(model)
        codes = self.image_tokens(m, batch.inputs["pixel_values"], batch.inputs["image_grid_thw"])
        input_ids, labels = fill_image_tokens(batch.inputs["input_ids"], batch.labels, self.image_token_id, codes)
        return language_model_loss(m.model.language_model, batch, m.lm_head, labels, input_ids=input_ids)

    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        """Generation: the image head restricted to the codes, the image end forced after the grids."""
        if task != "gen":
            raise ValueError(f"{self.model_class} is a generation-only model: no {task!r} decoding")
        m = unwrap(model)
        return DecodeRunner(m.model.language_model, m.lm_head, allowed=id_tensor(range(self.codebook), m.device),
                            forced={int(Role.IMAGE_MARKER): self.end_id})

    def decode_sampling(self) -> dict:
        """The checkpoint's sampling settings, no guidance (module docstring)."""
        d = self.image_defaults
        return {"cfg_weight": d.guidance, "temperature": d.temperature, "top_k": d.top_k, "top_p": d.top_p}

    # -- text to image ----------------------------------------------------------------------
    def target_size(self, options: ImageOptions) -> tuple[int, int]:
        """``(height, width)`` in pixels, multiples of 32: ``options.image_area`` pixels (default 1024 x 1024,
        diffusers' ``GlmImagePipeline``'s) at ``options.ratio`` (width:height)."""
        from aia.errors import InputError

        area = options.image_area or DEFAULT_AREA
        try:
            w_part, h_part = (float(v) for v in options.ratio.split(":"))
            ratio = w_part / h_part
        except (ValueError, ZeroDivisionError):
            raise InputError(f"ratio must be W:H with positive numbers, got {options.ratio!r}", field="ratio") from None
        height = int(math.sqrt(area / ratio)) // TARGET_FACTOR * TARGET_FACTOR
        width = int(math.sqrt(area * ratio)) // TARGET_FACTOR * TARGET_FACTOR
        if height < TARGET_FACTOR or width < TARGET_FACTOR:
            raise InputError(f"{area} pixels at ratio {options.ratio} is less than one {TARGET_FACTOR}-pixel token "
                             "per side; ask for more pixels", field="image_area")
        return height, width

    def generate_images(self, model: nn.Module, prompts: list[str], seeds: list[int], options: ImageOptions) -> list:
        """``model.generate`` on the processor's prompt for the target size (the model computes its 3D positions),
        every step restricted to the codes until both grids are written, then the image end; sampled by
        :func:`~aia.adapters.imagegen.seeded_sampler` with the options (the checkpoint's by default). Returns
        one :class:`~aia.adapters.base.ImageTokens` per prompt: the preview grid and the full grid."""
        from transformers import LogitsProcessor, LogitsProcessorList

        check_seeds(prompts, seeds)
        height, width = self.target_size(options)
        inputs = self.processor(text=[self.prompt_text(p) for p in prompts], target_h=height, target_w=width,
                                return_tensors="pt", padding=True, padding_side="left")
        grids = [tuple(int(v) for v in g[1:]) for g in inputs["image_grid_thw"][:2]]  # [full, preview]
        (h, w), (ph, pw) = grids
        codes = ph * pw + h * w
        prompt_length = inputs["input_ids"].shape[1]
        inputs = {k: v.to(model.device) for k, v in inputs.items()}
        allowed_codes = torch.zeros(unwrap(model).lm_head.out_features, dtype=torch.bool, device=model.device)
        allowed_codes[: self.codebook] = True
        end = self.end_id

        class Grammar(LogitsProcessor):
            """Codes until both grids are written, then the image end."""

            def __call__(self, input_ids, scores):
                keep = allowed_codes if input_ids.shape[1] - prompt_length < codes else None
                if keep is None:
                    keep = torch.zeros_like(allowed_codes)
                    keep[end] = True
                return scores.masked_fill(~keep, float("-inf"))

        if options.guidance != 1:
            from aia.errors import InputError

            raise InputError("GLM-Image guides its diffusion decoder, not its autoregressive model; "
                             f"the token generation takes no guidance (got {options.guidance})", field="guidance")
        config = generation_config(model, max_new_tokens=codes + 1)
        sampler = seeded_sampler(seeds, options.temperature, options.top_k, options.top_p)
        out = model.generate(**inputs, generation_config=config, logits_processor=LogitsProcessorList([Grammar(), sampler]))
        written = out[:, prompt_length:].cpu()
        if written.shape[1] != codes + 1:
            raise RuntimeError(f"GLM-Image generated {written.shape[1]} tokens, expected {codes + 1}")
        return [ImageTokens(grids=((ph, pw), (h, w)),
                            tokens=(tuple(row[: ph * pw].tolist()), tuple(row[ph * pw : codes].tolist())))
                for row in written]


def _sampling(model: nn.Module, defaults: ImageDefaults) -> ImageDefaults:
    """``defaults`` with the model's ``generation_config`` sampling settings: its temperature, top-p and top-k
    when it samples (``do_sample``), greedy when it does not."""
    from dataclasses import replace

    gc = getattr(model, "generation_config", None)
    if gc is None or not gc.do_sample:
        return replace(defaults, temperature=0.0)
    return replace(defaults, temperature=float(gc.temperature if gc.temperature is not None else 1.0),
                   top_p=gc.top_p if gc.top_p is not None and gc.top_p < 1 else None,
                   top_k=gc.top_k if gc.top_k else None)
