"""Adapter for understanding-only *reference* models (Qwen2-VL, Qwen2.5-VL, Qwen3-VL, LLaVA, LLaVA-NeXT).

The paper's understanding targets come from a strong understanding-only model
(Qwen3-VL-8B), measured on the same kind of data as the unified model. This adapter lets
``aia profile`` (teacher forcing and decoding) measure such models with the same spans:
queries are the answer tokens, keys the image tokens.

Image tokens are located by the model's image token id (``config.image_token_id``, which
LLaVA configs alias to ``image_token_index``); the processor of the model expands one image
placeholder into as many of them as the vision tower gives features (fixed for LLaVA, from
the image size for Qwen-VL and LLaVA-NeXT), so the adapter asks the processor for each
image's block and never counts itself.

Chat formats (the released chat templates, written piece by piece so that every position's
role is known; special tokens enter by id)::

    chatml  [<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n]   (Qwen2-VL, Qwen2.5-VL only)
            <|im_start|>user\\n{before}<|vision_start|><|image_pad|>*N<|vision_end|>{after}<|im_end|>\\n
            <|im_start|>assistant\\n{A1}<|im_end|>\\n<|im_start|>user\\n{Q2}<|im_end|>\\n ...
    vicuna  <s>USER: {before} <image>*N\\n{after} ASSISTANT: {A1}</s>USER: {Q2} ASSISTANT: {A2}</s>
            (LLaVA-1.5; LLaVA-NeXT as its vicuna checkpoints, not the Mistral/Yi chat formats)

Roles: template pieces TEMPLATE, questions PROMPT, answers ANSWER (supervised with the token
that closes them), image features IMAGE, ``<|vision_start|>`` / ``<|vision_end|>``
IMAGE_MARKER.

Forward: the model's own ``model.model`` forward, so that it puts the vision features in
place and computes its own position ids (Qwen-VL's 3D M-RoPE positions come from the
image grid, ``mm_token_type_ids`` and the attention mask); the AIA keyword arguments reach
the language model's attention. The vision tower gets them too but runs its own attention
implementation, which ignores them.

Qwen-VL processors also hold a video processor, which transformers builds only with
torchvision; :func:`image_only_processor` makes the same processor class without one (the
profiler never sees video), and :func:`load_image_only_processor` reads a saved one.
"""

from __future__ import annotations

import functools
import inspect
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aia.adapters.base import (
    AdapterBase,
    AdapterOutput,
    Batch,
    DecodeRunner,
    Example,
    SequenceBuilder,
    aia_kwargs,
    check_encode_args,
    id_tensor,
    module_dtype,
    next_token_loss,
    token_id,
    unwrap,
)
from aia.adapters.prompts import PromptConfig
from aia.core.spans import Role, SpanConfig
from aia.data.records import dialogue, image_path, load_image, split_at_image

__all__ = [
    "UNDERSTANDING_MODELS",
    "UnderstandingAdapter",
    "UnderstandingExample",
    "image_only_processor",
    "load_image_only_processor",
]

#: model class -> (processor class, chat format, default system prompt or None)
UNDERSTANDING_MODELS: dict[str, tuple[str, str, str | None]] = {
    "Qwen2VLForConditionalGeneration": ("Qwen2VLProcessor", "chatml", "You are a helpful assistant."),
    "Qwen2_5_VLForConditionalGeneration": ("Qwen2_5_VLProcessor", "chatml", "You are a helpful assistant."),
    "Qwen3VLForConditionalGeneration": ("Qwen3VLProcessor", "chatml", None),
    "LlavaForConditionalGeneration": ("LlavaProcessor", "vicuna", None),
    "LlavaNextForConditionalGeneration": ("LlavaNextProcessor", "vicuna", None),
}

# Processor outputs that are the text side (built here) rather than vision inputs.
_TEXT_KEYS = {"input_ids", "attention_mask", "mm_token_type_ids", "token_type_ids"}


@dataclass
class UnderstandingExample(Example):
    """An :class:`~aia.adapters.base.Example` whose image inputs are the processor's own tensors.

    Attributes:
        vision: the image processor's outputs for this sample, with their leading batch (or
            patch) dimension: ``pixel_values`` plus ``image_grid_thw`` (Qwen-VL) or
            ``image_sizes`` (LLaVA-NeXT). ``pixel_values`` of the base class stays None.
    """

    vision: dict[str, torch.Tensor] = field(default_factory=dict)


class UnderstandingAdapter(AdapterBase):
    """Understanding-only vision-language models: vision features fill the image-token slots."""

    family = "understanding"
    tasks = ("und",)

    def __init__(
        self,
        model: nn.Module,
        processor,
        span_config: SpanConfig = SpanConfig(),
        padding_side: str = "right",
        prompt_config: PromptConfig | None = None,
    ):
        super().__init__(model, processor, span_config, padding_side, prompt_config)
        model = unwrap(model)
        name = self.model_class
        if name not in UNDERSTANDING_MODELS:
            raise ValueError(f"no reference-model format for {name}; supported: {', '.join(UNDERSTANDING_MODELS)}")
        _, self.chat_format, self.system = UNDERSTANDING_MODELS[name]
        config = model.config
        self.image_token_id = getattr(config, "image_token_id", None)
        if self.image_token_id is None:
            raise ValueError(f"{name}: no image_token_id in config; cannot locate the image tokens")
        tok = self.tokenizer
        self.image_token = getattr(processor, "image_token", None)
        if self.image_token is None or token_id(tok, self.image_token) != self.image_token_id:
            raise ValueError(
                f"{name}: the processor's image token {self.image_token!r} is not config.image_token_id="
                f"{self.image_token_id}"
            )
        if self.chat_format == "chatml":
            self.im_start_id = token_id(tok, "<|im_start|>")
            self.eos_id = token_id(tok, "<|im_end|>")
            self.boi_id = getattr(config, "vision_start_token_id", None)
            self.eoi_id = getattr(config, "vision_end_token_id", None)
            self.bos_id = None
        else:
            self.eos_id, self.bos_id = tok.eos_token_id, tok.bos_token_id
            self.boi_id = self.eoi_id = None
        if self.eos_id is None:
            raise ValueError(f"{name}: the tokenizer has no end-of-turn token")
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else self.eos_id
        # Qwen-VL: 3D M-RoPE positions computed by the model from the image grid and the token types
        self.mrope = callable(getattr(model.model, "get_rope_index", None))

    # -- encoding ---------------------------------------------------------------------------
    def encode(self, record: dict, task: str, base_dir: Path, image=None, *, cfg_blank: bool = False) -> Example:
        check_encode_args(task, cfg_blank)
        if task != "und":
            raise ValueError(
                f"{self.model_class} is an understanding-only model: it cannot encode generation ('gen') "
                "samples; profile it with task 'und'"
            )
        if image is None:
            image = load_image(image_path(record, base_dir))
        image_ids, vision = self._image(image)
        b = SequenceBuilder(self.tokenizer)
        if self.chat_format == "chatml":
            self._chatml(b, dialogue(record), image_ids)
        else:
            self._vicuna(b, dialogue(record), image_ids)
        ex = b.build(task)
        return UnderstandingExample(**{f: getattr(ex, f) for f in ("task", "input_ids", "roles", "labels")}, vision=vision)

    def _image(self, image) -> tuple[list[int], dict[str, torch.Tensor]]:
        """The processor's image block (token ids) and vision inputs for one image."""
        out = self.processor(text=self.image_token, images=image, return_tensors="pt", add_special_tokens=False)
        ids = out["input_ids"][0].tolist()
        if not ids or any(i != self.image_token_id for i in ids):
            raise ValueError(
                f"{self.model_class}: the processor expanded the image into {ids[:8]}..., not image tokens"
            )
        return ids, {k: v for k, v in out.items() if k not in _TEXT_KEYS}

    def _image_block(self, b: SequenceBuilder, image_ids: list[int]) -> None:
        if self.boi_id is not None:
            b.tokens(self.boi_id, Role.IMAGE_MARKER)
        b.tokens(image_ids, Role.IMAGE)
        if self.eoi_id is not None:
            b.tokens(self.eoi_id, Role.IMAGE_MARKER)

    def _chatml(self, b: SequenceBuilder, turns: list[tuple[str, str]], image_ids: list[int]) -> None:
        if self.system is not None:
            b.tokens(self.im_start_id, Role.TEMPLATE).template(f"system\n{self.system}")
            b.tokens(self.eos_id, Role.TEMPLATE).template("\n")
        for i, (question, answer) in enumerate(turns):
            b.tokens(self.im_start_id, Role.TEMPLATE).template("user\n")
            if i == 0:
                before, after = split_at_image(question)
                b.text(before, Role.PROMPT)
                self._image_block(b, image_ids)
                b.text(after, Role.PROMPT)
            else:
                b.text(question, Role.PROMPT)
            b.tokens(self.eos_id, Role.TEMPLATE).template("\n")
            b.tokens(self.im_start_id, Role.TEMPLATE).template("assistant\n")
            b.text(answer, Role.ANSWER, supervised=True)
            b.tokens(self.eos_id, Role.TEMPLATE, supervised=True).template("\n")

    def _vicuna(self, b: SequenceBuilder, turns: list[tuple[str, str]], image_ids: list[int]) -> None:
        if self.bos_id is not None:
            b.tokens(self.bos_id, Role.TEMPLATE)
        for i, (question, answer) in enumerate(turns):
            b.template("USER:")
            if i == 0:
                before, after = split_at_image(question)
                if before:
                    b.text(" " + before, Role.PROMPT)
                b.template(" ")
                self._image_block(b, image_ids)
                b.template("\n").text(after, Role.PROMPT)
            elif question:
                b.text(" " + question, Role.PROMPT)
            b.template(" ASSISTANT:")
            if answer:
                b.text(" " + answer, Role.ANSWER, supervised=True)
            b.tokens(self.eos_id, Role.TEMPLATE, supervised=True)

    # -- batches and forward ----------------------------------------------------------------
    def collate(self, examples: list[Example], padding_side: str | None = None) -> Batch:
        batch = super().collate(examples, padding_side)
        keys = set(getattr(examples[0], "vision", {}))
        if any(set(getattr(ex, "vision", {})) != keys for ex in examples):
            raise ValueError("every example of a batch needs the same vision inputs")
        for key in sorted(keys):
            batch.inputs[key] = _concat([ex.vision[key] for ex in examples])
        if self.mrope:  # the model computes 3D positions; 1D ones would drop the image grid
            del batch.inputs["position_ids"]
            batch.inputs["mm_token_type_ids"] = (batch.inputs["input_ids"] == self.image_token_id).int()
        return batch

    def language_model(self, model: nn.Module) -> nn.Module:
        return unwrap(model).model.language_model

    @classmethod
    def load_processor(cls, model_dir: Path):
        """``AutoProcessor``; Qwen-VL processors without torchvision through
        :func:`load_image_only_processor` (profiling never needs their video processor)."""
        import transformers

        try:
            return transformers.AutoProcessor.from_pretrained(model_dir)
        except ImportError:
            return load_image_only_processor(model_dir)

    def decode_runner(self, model: nn.Module, task: str) -> DecodeRunner:
        """Understanding only: the model's own forward (vision inputs, M-RoPE token types), never
        the image placeholder."""
        if task != "und":
            raise ValueError(f"{self.model_class} is an understanding-only model: no {task!r} decoding")
        m = unwrap(model)
        return DecodeRunner(m.model, m.lm_head, None, blocked=id_tensor([self.image_token_id], m.device))

    def forward(self, model: nn.Module, batch: Batch) -> AdapterOutput:
        model = unwrap(model)
        dtype = module_dtype(model)
        inputs = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.inputs.items()}
        out = model.model(**inputs, attention_mask=batch.attention_mask, use_cache=False, **aia_kwargs(batch))
        return next_token_loss(out.last_hidden_state, batch.labels, model.lm_head, batch.num_targets)


def _concat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate along dim 0, zero-padding the other dims to the largest (LLaVA-NeXT's tile counts)."""
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    padded = []
    for t in tensors:
        pad = []
        for d in reversed(range(1, t.dim())):
            pad += [0, shape[d - 1] - t.shape[d]]
        padded.append(F.pad(t, pad) if any(pad) else t)
    return torch.cat(padded)


# ---------------------------------------------------------------------------------------------
# Image-only processors (no torchvision needed)


@functools.cache
def _image_only_class(cls: type) -> type:
    def check_argument_for_proper_class(self, argument_name, argument):
        if argument_name == "video_processor" and argument is None:
            return None
        return cls.check_argument_for_proper_class(self, argument_name, argument)

    doc = f"{cls.__name__} without a video processor (images only; built without torchvision)."
    attrs = {"check_argument_for_proper_class": check_argument_for_proper_class, "_aia_image_only": True}
    return type(cls.__name__, (cls,), {**attrs, "__doc__": doc, "__module__": __name__})


def image_only_processor(cls: type, tokenizer, image_processor, **kwargs):
    """An instance of the processor class ``cls`` with a tokenizer and an image processor only.

    Processors whose ``__init__`` also takes a video processor (Qwen-VL) get a subclass of the
    same name whose video processor is None: transformers builds video processors only with
    torchvision, and profiling never uses one. Other classes are built as they are.
    """
    if "video_processor" not in inspect.signature(cls.__init__).parameters:
        return cls(image_processor=image_processor, tokenizer=tokenizer, **kwargs)
    return _image_only_class(cls)(image_processor=image_processor, tokenizer=tokenizer, video_processor=None, **kwargs)


def load_image_only_processor(model_dir: str | Path):
    """Read a reference model's processor without its video processor (see :func:`image_only_processor`).

    The processor class comes from ``processor_config.json`` / ``preprocessor_config.json``
    (``processor_class``) or, failing that, from the model class in ``config.json``.
    """
    import transformers

    model_dir = Path(model_dir)
    settings: dict = {}
    name = None
    for file in ("processor_config.json", "preprocessor_config.json"):
        path = model_dir / file
        if path.is_file():
            data = json.loads(path.read_text())
            name = name or data.get("processor_class")
            if file == "processor_config.json":
                settings = data
    if name is None:
        architectures = json.loads((model_dir / "config.json").read_text()).get("architectures") or [""]
        name = UNDERSTANDING_MODELS.get(architectures[0], (None,))[0]
    if name is None or not hasattr(transformers, name):
        raise ValueError(f"{model_dir}: cannot tell which processor class to build (got {name!r})")
    cls = getattr(transformers, name)
    params = inspect.signature(cls.__init__).parameters
    extra = {k: v for k, v in settings.items() if k in params and k not in ("image_processor", "tokenizer")}
    extra.pop("video_processor", None)
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    image_processor = transformers.AutoImageProcessor.from_pretrained(model_dir)
    return image_only_processor(cls, tokenizer, image_processor, **extra)
