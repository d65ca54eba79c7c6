"""Tiny random models, offline processors and a tiny data set, for tests and demos.

Every builder makes a real transformers model from its real config classes (2 LM
layers by default, hidden size 64, grouped-query attention with 4 query and 2 key/value
heads, 32x32 images, 16 image tokens) and the family's real processor class around
a byte-level BPE tokenizer trained in code on a small fixed corpus. The tokenizers
carry the special tokens of the released checkpoints (same strings), so the adapters
see what they would see with the real models. Nothing is downloaded; everything
builds in well under a second and round-trips through ``save_pretrained`` /
``AutoProcessor.from_pretrained`` / ``<ModelClass>.from_pretrained``.

The processors carry the released transformers-format checkpoints' prompt settings too,
so that tests see what users see: Janus-Pro's chat template and
``use_default_system_prompt=True`` (``convert_janus_weights_to_hf.py``), Emu3-Chat-hf's chat
template, no chat template for Chameleon; the Janus and Chameleon tokenizers start an
encoding with BOS (Llama-style, as the real ones), Emu3's does not (``Emu3Processor`` writes
BOS as text).

The weights are random: losses are finite and trainable, the images the VQ tokenizers
produce are noise.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    ChameleonConfig,
    ChameleonForConditionalGeneration,
    ChameleonProcessor,
    Emu3Config,
    Emu3ForConditionalGeneration,
    Emu3ImageProcessor,
    Emu3Processor,
    JanusConfig,
    JanusForConditionalGeneration,
    JanusProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.chameleon.image_processing_pil_chameleon import ChameleonImageProcessorPil
from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil

from aia.jsonl import write_jsonl

__all__ = [
    "EMU3_CHAT_TEMPLATE",
    "JANUS_CHAT_TEMPLATE",
    "TINY_MODELS",
    "tiny_chameleon",
    "tiny_emu3",
    "tiny_janus",
    "tiny_tokenizer",
    "write_tiny_dataset",
]

#: Janus-Pro's chat template, verbatim from transformers' ``models/janus/convert_janus_weights_to_hf.py``
#: (``CHAT_TEMPLATE``), which writes it into the hub checkpoints (deepseek-community/Janus-Pro-1B, -7B) together
#: with ``JanusProcessor(..., use_default_system_prompt=True)``; transformers' ``test_processing_janus.py``
#: checks it against Janus' own ``deepseek`` conversation format.
JANUS_CHAT_TEMPLATE = (
    "{%set seps=['\n\n','<\uff5cend\u2581of\u2581sentence\uff5c>']%}"
    "{%set i=0%}"
    "{%for message in messages%}"
    "{%if message['role']|lower=='user'%}"
    "<|User|>: "
    "{%elif message['role']|lower=='assistant'%}"
    "<|Assistant|>:{%if not (loop.last and not add_generation_prompt and message['content'][0]['type']=='text' and "
    "message['content'][0]['text']=='')%} {%endif%}"
    "{%else%}"
    "{{message['role'].capitalize()}}: "
    "{%endif%}"
    "{%for content in message['content']%}"
    "{%if content['type']=='image'%}"
    "{%if not loop.first%}{{'\n'}}{%endif%}"
    "<image_placeholder>"
    "{%if not loop.last%}{{'\n'}}{%endif%}"
    "{%elif content['type']=='text'%}"
    "{%set text=content['text']%}"
    "{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}"
    "{{' '+text}}"
    "{%else%}"
    "{{text}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if not loop.last or add_generation_prompt%}"
    "{%if message['role']|lower=='user'%}"
    "{{seps[0]}}"
    "{%else%}"
    "{{seps[1]}}"
    "{%endif%}"
    "{%endif%}"
    "{%endfor%}"
    "{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)

#: The chat template of the Emu3-Chat-hf checkpoint (llava-1.5 / vicuna style: ``ROLE: `` prefixes, every image
#: of a message before its text parts, each text part followed by a space, ``ASSISTANT:`` as the generation
#: prompt), as transformers' ``tests/models/emu3/test_processing_emu3.py`` (``prepare_processor_dict``) carries
#: it; transformers' Emu3 docs pass "You are a helpful assistant." as the system message
#: (``Emu3ForConditionalGeneration.forward`` example).
EMU3_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}"
    "{% endif %}{# Render all images first #}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'image') %}{{ '<image>' }}{% endfor %}{# Render all text next #}"
    "{% if message['role'] != 'assistant' %}{% for content in message['content'] | "
    "selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}{% endfor %}{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{% generation %}"
    "{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

COLORS = ["red", "green", "blue", "yellow", "white", "black", "orange", "purple"]
SHAPES = ["square", "circle", "bar"]
PLACES = ["top", "bottom", "left", "right", "center"]
_RGB = {
    "red": (220, 30, 30),
    "green": (30, 180, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "white": (250, 250, 250),
    "black": (10, 10, 10),
    "orange": (250, 140, 20),
    "purple": (140, 40, 180),
}

# Chat-template fragments of the three families, so that they are few tokens each.
_TEMPLATE_TEXT = [
    "<|User|>: hello\n\n<|Assistant|>: hi",
    "<|User|>: \n",
    "You are a helpful assistant. USER: hello ASSISTANT: hi",
    "USER: what ASSISTANT: a",
    " 0 1 2 3 4 5 6 7 8 9 16*16 4*4 4*3 3*4 *",
]

_LM = dict(
    hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024
)


def _corpus() -> list[str]:
    lines = list(_TEMPLATE_TEXT)
    for c in COLORS:
        for s in SHAPES:
            lines += [f"a {c} {s} on a {b} background at the {p}" for b in COLORS[:3] for p in PLACES]
            lines += [f"what color is the {s}? {c}", f"what shape is in the image? a {s}", f"where is the {s}? at the"]
    lines += ["look at this and tell me: which one? is there a shape in the picture? yes no"]
    return lines


def tiny_tokenizer(
    special_tokens: dict[str, str], extra_tokens: list[str] = (), vocab_size: int = 600, add_bos: bool = False
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on a small fixed corpus (deterministic, milliseconds).

    Args:
        special_tokens: named special tokens, e.g. ``{"bos_token": "<s>", "image_token":
            "<image>"}``; the standard names (bos/eos/pad/sep/unk) and any other name,
            which becomes an attribute (``tokenizer.image_token`` / ``image_token_id``).
        extra_tokens: more special tokens without a name (e.g. VQ code tokens), added
            after the named ones in this order.
        vocab_size: size of the trained BPE part (bytes + merges).
        add_bos: start every encoding with the bos token unless ``add_special_tokens=False``
            (a Llama-style tokenizer's ``add_bos_token``).
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer)
    standard = {"bos_token", "eos_token", "pad_token", "sep_token", "unk_token"}
    named = {k: v for k, v in special_tokens.items() if k in standard}
    extra = {k: v for k, v in special_tokens.items() if k not in standard}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **named, extra_special_tokens=extra)
    if extra_tokens:
        tokenizer.add_tokens(list(extra_tokens), special_tokens=True)
    if add_bos:
        bos, bos_id = tokenizer.bos_token, tokenizer.bos_token_id
        tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    return tokenizer


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _lm(num_layers: int, vocab_size: int) -> dict:
    return dict(_LM, num_hidden_layers=num_layers, vocab_size=vocab_size)


def tiny_janus(seed: int = 0, num_layers: int = 2, image_size: int = 32, **lm_overrides):
    """A tiny random ``JanusForConditionalGeneration`` and its ``JanusProcessor``.

    ``lm_overrides`` replace language-model config fields (``hidden_size``,
    ``num_attention_heads``, ``intermediate_size``...), e.g. for benchmarks at a larger width.

    Special tokens are Janus-Pro's: ``<｜begin▁of▁sentence｜>``, ``<｜end▁of▁sentence｜>``,
    ``<｜▁pad▁｜>``, ``<image_placeholder>``, ``<begin_of_image>``, ``<end_of_image>``.
    Understanding: ``(image_size / 8)**2`` SigLIP-style features; generation: a VQ with
    downsampling 8 and 64 codes, so the same number of image tokens. The processor has the
    hub checkpoints' chat template (:data:`JANUS_CHAT_TEMPLATE`) and
    ``use_default_system_prompt=True``; the tokenizer starts an encoding with BOS.

    Returns:
        ``(model, processor)``, the model in eval mode.
    """
    tokenizer = tiny_tokenizer(
        {
            "bos_token": "<｜begin▁of▁sentence｜>",
            "eos_token": "<｜end▁of▁sentence｜>",
            "pad_token": "<｜▁pad▁｜>",
            "image_token": "<image_placeholder>",
            "boi_token": "<begin_of_image>",
            "eoi_token": "<end_of_image>",
        },
        add_bos=True,  # Janus-Pro's LlamaTokenizerFast: add_bos_token
    )
    patch = 8
    hidden = lm_overrides.get("hidden_size", _LM["hidden_size"])
    num_image_tokens = (image_size // patch) ** 2
    config = JanusConfig(
        text_config=dict(model_type="llama", **dict(_lm(num_layers, len(tokenizer)), **lm_overrides)),
        vision_config=dict(
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            mlp_ratio=2.0,
            image_size=image_size,
            patch_size=patch,
            projection_dim=hidden,
            num_image_tokens=num_image_tokens,
        ),
        vq_config=dict(
            embed_dim=8,
            num_embeddings=64,
            latent_channels=32,
            base_channels=32,
            channel_multiplier=[1, 1, 2, 2],  # downsampling 8: same token grid as the vision patches
            num_res_blocks=1,
            projection_dim=hidden,
            image_token_embed_dim=hidden,
            num_hidden_layers=2,
        ),
        image_token_id=tokenizer.image_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    image_processor = JanusImageProcessorPil(
        size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    processor = JanusProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=JANUS_CHAT_TEMPLATE,
        use_default_system_prompt=True,  # as convert_janus_weights_to_hf.py saves the hub checkpoints
        num_image_tokens=num_image_tokens,
    )
    return _seeded(seed, lambda: JanusForConditionalGeneration(config)), processor


def tiny_emu3(seed: int = 0, num_layers: int = 2, image_size: int = 32):
    """A tiny random ``Emu3ForConditionalGeneration`` and its ``Emu3Processor``.

    Special tokens are Emu3's: bos ``<|extra_203|>``, eos ``<|extra_204|>``, pad
    ``<|endoftext|>``, ``<image>``, ``<|image start|>``, ``<|image end|>``,
    ``<|image token|>``, end-of-line ``<|extra_200|>``, end-of-frame ``<|extra_201|>``
    and 64 ``<|visual token NNNNNN|>`` code tokens. The image processor keeps the
    aspect ratio at about ``image_size**2`` pixels, in multiples of 8 (the VQ's
    downsampling), as the real one does at 512**2..1024**2. The processor has Emu3-Chat-hf's
    chat template (:data:`EMU3_CHAT_TEMPLATE`); the tokenizer adds no BOS (the processor
    writes it).

    Returns:
        ``(model, processor)``, the model in eval mode.
    """
    codebook = 64
    tokenizer = tiny_tokenizer(
        {
            "bos_token": "<|extra_203|>",
            "eos_token": "<|extra_204|>",
            "pad_token": "<|endoftext|>",
            "image_token": "<image>",
            "boi_token": "<|image start|>",
            "eoi_token": "<|image end|>",
            "image_wrapper_token": "<|image token|>",
            "eof_token": "<|extra_201|>",
            "eol_token": "<|extra_200|>",
        },
        extra_tokens=[f"<|visual token {i:06d}|>" for i in range(codebook)],
    )
    config = Emu3Config(
        text_config=dict(
            **_lm(num_layers, len(tokenizer)),
            attention_dropout=0.0,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vq_config=dict(
            codebook_size=codebook,
            embed_dim=4,
            latent_channels=4,
            base_channels=32,
            channel_multiplier=[1, 1, 1, 1],  # downsampling 8, as Emu3Processor assumes
            num_res_blocks=1,
            attn_resolutions=[],
            hidden_size=32,
            temporal_downsample_factor=4,
        ),
        vocabulary_map=tokenizer.get_vocab(),
    )
    image_processor = Emu3ImageProcessor(
        min_pixels=image_size * image_size,
        max_pixels=image_size * image_size,
        spatial_factor=8,
        image_mean=[0.5] * 3,
        image_std=[0.5] * 3,
    )
    processor = Emu3Processor(image_processor=image_processor, tokenizer=tokenizer, chat_template=EMU3_CHAT_TEMPLATE)
    return _seeded(seed, lambda: Emu3ForConditionalGeneration(config)), processor


def _chameleon_code_name(code: int) -> str:
    # Chameleon's BPE names VQ code 123 "IMGIMGBCDZ" (digits written A..J, one trailing char).
    return "IMGIMG" + "".join(chr(ord("A") + int(d)) for d in str(code)) + "Z"


def tiny_chameleon(seed: int = 0, num_layers: int = 2, image_size: int = 32):
    """A tiny random ``ChameleonForConditionalGeneration`` and its ``ChameleonProcessor``.

    Special tokens are Chameleon's: ``<s>``, ``</s>``, ``<pad>``, the chat separator
    ``<reserved08706>``, ``<image>``, begin-of-image ``<racm3:break>``, end-of-image
    ``<eoss>`` and 64 ``IMGIMG...Z`` code tokens. Images are center-cropped squares,
    ``(image_size / 8)**2`` codes. No chat template (Chameleon has none: the processor appends
    ``<reserved08706>`` to the text); the tokenizer starts an encoding with ``<s>``.

    Returns:
        ``(model, processor)``, the model in eval mode.
    """
    codebook = 64
    tokenizer = tiny_tokenizer(
        {
            "bos_token": "<s>",
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "sep_token": "<reserved08706>",
            "image_token": "<image>",
            "boi_token": "<racm3:break>",
            "eoi_token": "<eoss>",
        },
        extra_tokens=[_chameleon_code_name(i) for i in range(codebook)],
        add_bos=True,  # Chameleon's tokenizer: add_bos_token
    )
    config = ChameleonConfig(
        **_lm(num_layers, len(tokenizer)),
        vq_config=dict(
            embed_dim=8,
            num_embeddings=codebook,
            latent_channels=8,
            resolution=image_size,
            base_channels=32,
            channel_multiplier=[1, 1, 2, 2],  # downsampling 8
            num_res_blocks=1,
        ),
        vocabulary_map=tokenizer.get_vocab(),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = ChameleonProcessor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=(image_size // 8) ** 2
    )
    return _seeded(seed, lambda: ChameleonForConditionalGeneration(config)), processor


TINY_MODELS = {"janus": tiny_janus, "emu3": tiny_emu3, "chameleon": tiny_chameleon}


def _draw(rng: random.Random, size: int, width: int | None = None) -> tuple[Image.Image, dict]:
    color, background = rng.sample(COLORS, 2)
    shape, place = rng.choice(SHAPES), rng.choice(PLACES)
    w, h = width or size, size
    image = Image.new("RGB", (w, h), _RGB[background])
    draw = ImageDraw.Draw(image)
    cx = {"left": w // 4, "right": 3 * w // 4}.get(place, w // 2)
    cy = {"top": h // 4, "bottom": 3 * h // 4}.get(place, h // 2)
    r = max(2, min(w, h) // 6)
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=_RGB[color])
    elif shape == "bar":
        draw.rectangle([cx - r, cy - r // 2, cx + r, cy + r // 2], fill=_RGB[color])
    else:
        draw.rectangle(box, fill=_RGB[color])
    # a little noise so that PNGs are not trivially flat
    pixels = np.asarray(image).astype(np.int16)
    noise = np.random.default_rng(rng.randrange(2**32)).integers(-8, 9, pixels.shape)
    image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    return image, {"color": color, "background": background, "shape": shape, "place": place}


def write_tiny_dataset(
    directory: str | Path, n_und: int = 8, n_gen: int = 8, image_size: int = 32, seed: int = 0
) -> tuple[Path, Path]:
    """Write a tiny synthetic data set (PNG images of one colored shape + JSONL records).

    Understanding records cycle through the data format's variants: image placeholder
    first (``"<image>\\n..."``), no placeholder, placeholder inside the question, and
    multi-turn; every fourth image is not square (for aspect-preserving processors).

    Returns:
        ``(und_path, gen_path)``: ``directory/und.jsonl`` and ``directory/gen.jsonl``;
        image paths inside are relative to ``directory``.
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    und, gen = [], []
    for i in range(n_und):
        width = image_size * 3 // 4 if i % 4 == 3 else None
        image, f = _draw(rng, image_size, width)
        name = f"images/und_{i:04d}.png"
        image.save(directory / name)
        q_color, a_color = f"what color is the {f['shape']}?", f["color"]
        q_where, a_where = f"where is the {f['shape']}?", f"at the {f['place']}"
        variant = i % 4
        if variant == 0:
            turns = [(f"<image>\n{q_color}", a_color)]
        elif variant == 1:
            turns = [("what shape is in the image?", f"a {f['shape']}")]
        elif variant == 2:
            turns = [(f"look at this <image> and tell me: {q_where}", a_where)]
        else:
            turns = [(q_color, a_color), (q_where, a_where)]
        conversations = []
        for q, a in turns:
            conversations += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
        und.append({"image": name, "conversations": conversations})
    for i in range(n_gen):
        image, f = _draw(rng, image_size)
        name = f"images/gen_{i:04d}.png"
        image.save(directory / name)
        prompt = f"a {f['color']} {f['shape']} on a {f['background']} background at the {f['place']}"
        gen.append(
            {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": "<image>"}], "image": name}
        )
    und_path, gen_path = directory / "und.jsonl", directory / "gen.jsonl"
    for path, records in ((und_path, und), (gen_path, gen)):
        write_jsonl(path, records)
    return und_path, gen_path
