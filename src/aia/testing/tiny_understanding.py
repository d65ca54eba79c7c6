"""Tiny random *reference* models (understanding-only VLMs) with offline processors, for tests and demos.

The paper takes its understanding targets from a strong understanding-only model
(Qwen3-VL-8B). :mod:`aia.adapters.understanding` profiles such models; the builders here make
tiny random ones from the real transformers config classes, with the family's real
processor and image processor classes around a byte-level BPE tokenizer trained in code
(:func:`aia.testing.tiny.tiny_tokenizer`) that carries the released checkpoints' special tokens.

Sizes follow :mod:`aia.testing.tiny`: 2 language-model layers, hidden size 64, 4 query and 2
key/value heads, 32x32 images. Nothing is downloaded; each builds in well under a second.

The Qwen-VL processors also hold a video processor, which transformers
only builds with torchvision; these builders make image-only processors
(:func:`aia.adapters.understanding.image_only_processor`). Save a tiny model with
:func:`save_understanding_model` (``processor.save_pretrained`` cannot write an image-only processor);
:func:`aia.adapters.load_model` reads it back.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import (
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextProcessor,
    LlavaProcessor,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLProcessor,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
    Qwen3VLProcessor,
)
from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil
from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from aia.adapters.understanding import image_only_processor
from aia.testing.tiny import _LM, _seeded, tiny_tokenizer

__all__ = [
    "TINY_UNDERSTANDING_MODELS",
    "save_understanding_model",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_qwen2_5_vl",
    "tiny_qwen2_vl",
    "tiny_qwen3_vl",
]

_QWEN_TOKENS = {
    "eos_token": "<|im_end|>",
    "pad_token": "<|endoftext|>",
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}
_LLAVA_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "image_token": "<image>"}


def _qwen_tokenizer():
    return tiny_tokenizer(_QWEN_TOKENS, extra_tokens=["<|im_start|>"])


def _qwen_ids(tok) -> dict:
    return dict(
        image_token_id=tok.image_token_id,
        video_token_id=tok.video_token_id,
        vision_start_token_id=tok.vision_start_token_id,
        vision_end_token_id=tok.vision_end_token_id,
    )


def _qwen_text(tok, num_layers: int, **extra) -> dict:
    # M-RoPE: the (temporal, height, width) sections of the rotary half-dimension, 16 / 2 = 2 + 3 + 3
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3], **extra.pop("rope", {})}
    return dict(
        _LM,
        num_hidden_layers=num_layers,
        vocab_size=len(tok),
        rope_parameters=rope,
        pad_token_id=tok.pad_token_id,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        **extra,
    )


def _qwen_processor(cls, tok, image_size: int, patch: int):
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch, merge_size=2, temporal_patch_size=2, min_pixels=image_size**2, max_pixels=image_size**2
    )
    return image_only_processor(cls, tokenizer=tok, image_processor=image_processor)


def _tiny_qwen(seed: int, num_layers: int, image_size: int, classes: tuple, vision: dict, **text):
    """A tiny random Qwen-VL model and its image-only processor.

    ``classes`` are the (config, model, processor) classes; ``vision`` the vision tower's
    settings (patches of 4 pixels); ``text`` goes to :func:`_qwen_text`.
    """
    config_cls, model_cls, processor_cls = classes
    tok = _qwen_tokenizer()
    config = config_cls(
        text_config=_qwen_text(tok, num_layers, **text),
        vision_config=dict(vision, patch_size=4),
        **_qwen_ids(tok),
    )
    processor = _qwen_processor(processor_cls, tok, image_size, patch=4)
    return _seeded(seed, lambda: model_cls(config)), processor


# the vision tower of the tiny Qwen2.5-VL and Qwen3-VL
_QWEN_VISION = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=_LM["hidden_size"])


def tiny_qwen2_vl(seed: int = 0, num_layers: int = 2, image_size: int = 32):
    """A tiny random ``Qwen2VLForConditionalGeneration`` and its (image-only) ``Qwen2VLProcessor``.

    Patches of 4 pixels merged 2x2: a 32x32 image gives 16 image tokens (8x8 patches).
    """
    classes = (Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor)
    vision = dict(depth=1, embed_dim=32, hidden_size=_LM["hidden_size"], num_heads=2, mlp_ratio=2)
    return _tiny_qwen(seed, num_layers, image_size, classes, vision)


def tiny_qwen2_5_vl(seed: int = 0, num_layers: int = 2, image_size: int = 32):
    """A tiny random ``Qwen2_5_VLForConditionalGeneration`` and its (image-only) ``Qwen2_5_VLProcessor``."""
    classes = (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor)
    vision = dict(_QWEN_VISION, window_size=16, fullatt_block_indexes=[1])
    return _tiny_qwen(seed, num_layers, image_size, classes, vision)


def tiny_qwen3_vl(seed: int = 0, num_layers: int = 2, image_size: int = 32):
    """A tiny random ``Qwen3VLForConditionalGeneration`` (DeepStack on vision layer 0) and its processor."""
    classes = (Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor)
    vision = dict(_QWEN_VISION, num_position_embeddings=64, deepstack_visual_indexes=[0])
    return _tiny_qwen(seed, num_layers, image_size, classes, vision, head_dim=16, rope={"mrope_interleaved": True})


def _clip_vision(image_size: int, patch: int) -> dict:
    return dict(
        model_type="clip_vision_model",
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch,
        projection_dim=32,
    )


def _llama_text(tok, num_layers: int) -> dict:
    return dict(
        _LM,
        model_type="llama",
        num_hidden_layers=num_layers,
        vocab_size=len(tok),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def tiny_llava(seed: int = 0, num_layers: int = 2, image_size: int = 32):
    """A tiny random ``LlavaForConditionalGeneration`` (CLIP tower, Llama LM) and its ``LlavaProcessor``.

    Patches of 8 pixels: a 32x32 image gives 16 image tokens (the CLS feature dropped, as
    ``vision_feature_select_strategy="default"`` does).
    """
    tok = tiny_tokenizer(_LLAVA_TOKENS)
    patch = 8
    config = LlavaConfig(
        text_config=_llama_text(tok, num_layers),
        vision_config=_clip_vision(image_size, patch),
        image_token_index=tok.image_token_id,
        image_seq_length=(image_size // patch) ** 2,
        pad_token_id=tok.pad_token_id,
    )
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return _seeded(seed, lambda: LlavaForConditionalGeneration(config)), processor


def tiny_llava_next(seed: int = 0, num_layers: int = 2, image_size: int = 32):
    """A tiny random ``LlavaNextForConditionalGeneration`` (any-resolution tiling) and its processor.

    Grid pinpoints of one and two tiles of ``image_size``: an image gives the base tile's
    features plus its tiles' features with one ``image_newline`` per row, a number the
    processor computes from the image size.
    """
    tok = tiny_tokenizer(_LLAVA_TOKENS)
    patch = 8
    pinpoints = [[image_size, image_size], [image_size, 2 * image_size], [2 * image_size, image_size]]
    config = LlavaNextConfig(
        text_config=_llama_text(tok, num_layers),
        vision_config=_clip_vision(image_size, patch),
        image_token_index=tok.image_token_id,
        image_grid_pinpoints=pinpoints,
        image_seq_length=(image_size // patch) ** 2,
        pad_token_id=tok.pad_token_id,
    )
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=pinpoints,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
    )
    return _seeded(seed, lambda: LlavaNextForConditionalGeneration(config)), processor


TINY_UNDERSTANDING_MODELS = {
    "qwen2_vl": tiny_qwen2_vl,
    "qwen2_5_vl": tiny_qwen2_5_vl,
    "qwen3_vl": tiny_qwen3_vl,
    "llava": tiny_llava,
    "llava_next": tiny_llava_next,
}


def save_understanding_model(model: torch.nn.Module, processor, directory: str | Path) -> Path:
    """Save a (tiny) reference model and its processor so that :func:`aia.adapters.load_model` reads them.

    Writes the model, the tokenizer, the image processor, and ``processor_config.json`` naming
    the processor class; works for image-only processors, which ``save_pretrained`` refuses.
    """
    directory = Path(directory)
    model.save_pretrained(directory)
    processor.tokenizer.save_pretrained(directory)
    processor.image_processor.save_pretrained(directory)
    config = {"processor_class": type(processor).__name__}  # an image-only processor keeps its class name
    for key in ("patch_size", "vision_feature_select_strategy", "num_additional_image_tokens", "image_token"):
        if getattr(processor, key, None) is not None:
            config[key] = getattr(processor, key)
    (directory / "processor_config.json").write_text(json.dumps(config, indent=1) + "\n")
    return directory
