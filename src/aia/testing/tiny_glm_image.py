"""A tiny random GLM-Image (a *generation* reference model) with its offline processor.

The paper takes its generation targets from a strong generation-only model (HunyuanImage, not in
transformers). GLM-Image (``GlmImageForConditionalGeneration``) is one that transformers has: a GLM
language model that writes an image as VQ tokens, a small preview grid first, then the full grid
(:mod:`aia.adapters.glm_image`). :func:`tiny_glm_image` builds a tiny random one from the real config
classes, with the real ``GlmImageProcessor`` and image processor around a byte-level BPE tokenizer
trained in code, laid out as the released checkpoint's:

* ids ``0 .. vision_vocab_size - 1`` are the ``<|dit_token_N|>`` tokens, the vocabulary of the
  image head (``lm_head`` has ``vision_vocab_size`` outputs): the VQ codes ``0 .. num_embeddings - 1``
  (an image token's id is its code), then image start (``bos_token``) and image end (``eos_token``),
  ``config.image_start_token_id`` / ``image_end_token_id`` (16384 / 16385 in the released checkpoint,
  which has 16384 codes);
* text tokens after them, and the special tokens the processor reads: ``<sop>`` / ``<eop>`` (the
  grid header's ``grid_bos_token`` / ``grid_eos_token``), ``<|image|>`` (the input-image
  placeholder, ``config.image_token_id``), ``<|endoftext|>`` (padding).

The image processor patchifies at 4 pixels (16 in the release) with no temporal or spatial merge,
as the vision encoder's patch embedding expects; like the release's it halves an image before
rounding it to whole patches, so a 32x32 image gives a 4x4 grid. The processor's target grid uses
transformers' fixed factor 32 and its ~16x16 preview grid, so a tiny square image is 16 + 256 image
tokens. The chat template is a stand-in of ours (the released checkpoint's own template is read from
its processor by the adapter, whatever it is); ``generation_config`` samples (``do_sample``,
``temperature`` 0.9, ``top_p`` 0.75) so that decoding follows a checkpoint's sampling settings.

Sizes follow :mod:`aia.testing.tiny`: 2 language-model layers, hidden size 64, 4 query and 2 key/value
heads. Nothing is downloaded; it builds in well under a second and round-trips through
``save_pretrained`` / ``AutoProcessor.from_pretrained`` / ``GlmImageForConditionalGeneration.from_pretrained``.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    GlmImageConfig,
    GlmImageForConditionalGeneration,
    GlmImageProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.glm_image.image_processing_pil_glm_image import GlmImageImageProcessorPil

from aia.testing.tiny import _LM, _corpus, _seeded

__all__ = ["GLM_IMAGE_CHAT_TEMPLATE", "tiny_glm_image"]

#: A GLM-style chat template (ours, for the tiny model: role tags around the user's prompt, then the
#: assistant's tag); the processor appends the grid header and the image start to what it renders.
GLM_IMAGE_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% for content in message['content'] %}{% if content['type'] == 'image' %}<|image|>"
    "{% else %}{{ content['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _glm_tokenizer(vision_vocab: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE whose first ``vision_vocab`` ids are ``<|dit_token_N|>`` (the trainer's special
    tokens come first, in order), then the text merges, then the named special tokens."""
    dit = [f"<|dit_token_{i}|>" for i in range(vision_vocab)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vision_vocab + 600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=dit, show_progress=False,
    )
    tok.train_from_iterator(_corpus() + ["<|user|>\n<|assistant|>\n 4 16 32 8 2"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=dit[vision_vocab - 8],
        eos_token=dit[vision_vocab - 7],
        pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image|>", "grid_bos_token": "<sop>", "grid_eos_token": "<eop>",
                              "user_token": "<|user|>", "assistant_token": "<|assistant|>"},
    )


def tiny_glm_image(seed: int = 0, num_layers: int = 2, codebook: int = 32):
    """A tiny random ``GlmImageForConditionalGeneration`` and its ``GlmImageProcessor``.

    ``codebook`` VQ codes (ids ``0 .. codebook - 1``); image start / end are ids ``codebook`` and
    ``codebook + 1``; the image head has ``codebook + 8`` outputs. The vision encoder (1 block, width 32,
    patch 4) and the VQ quantizer (8-dimensional codes) are GLM-Image's own classes.

    Returns:
        ``(model, processor)``, the model in eval mode.
    """
    vision_vocab = codebook + 8
    tokenizer = _glm_tokenizer(vision_vocab)
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    assert (start, end) == (codebook, codebook + 1), (start, end)
    head_dim = _LM["hidden_size"] // _LM["num_attention_heads"]
    config = GlmImageConfig(
        text_config=dict(
            _LM,
            num_hidden_layers=num_layers,
            vocab_size=len(tokenizer),
            vision_vocab_size=vision_vocab,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=end,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]},
        ),
        vision_config=dict(depth=1, hidden_size=32, num_heads=2, intermediate_size=64, image_size=64, patch_size=4),
        vq_config=dict(embed_dim=8, num_embeddings=codebook, latent_channels=32),
        image_token_id=tokenizer.convert_tokens_to_ids("<|image|>"),
        image_start_token_id=start,
        image_end_token_id=end,
    )
    image_processor = GlmImageImageProcessorPil(
        patch_size=4, temporal_patch_size=1, merge_size=1, size={"shortest_edge": 16 * 16, "longest_edge": 256 * 256}
    )
    processor = GlmImageProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                  chat_template=GLM_IMAGE_CHAT_TEMPLATE)

    def build():
        model = GlmImageForConditionalGeneration(config)
        model.generation_config = GenerationConfig(
            do_sample=True, temperature=0.9, top_p=0.75, pad_token_id=tokenizer.pad_token_id, eos_token_id=end,
            bos_token_id=start,
        )
        return model

    return _seeded(seed, build), processor
