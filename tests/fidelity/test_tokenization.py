"""aia writes a Janus sequence piece by piece; the release tokenizes whole strings (issue 22).

The Janus adapter tokenizes each piece of the deepseek chat format on its own (``<|User|>:``,
`` {text}``, ``\\n``, ``\\n\\n<|Assistant|>:``, ...) so that every position has its role. The
released code encodes ``"<|User|>: {content}\\n\\n<|Assistant|>:"`` as one string
(``t2i_dataset.py:78,144,162``). The two agree when no BPE merge crosses a piece boundary.

Two tiny byte-level BPE tokenizers, trained here on the released format, with Janus-Pro's
special tokens:

* ``split``: the pre-tokenizer of DeepSeek-LLM's tokenizer (the language model of Janus-Pro),
  as llama.cpp writes it (``src/llama-vocab.cpp``, ``LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM``): newlines
  alone, then ``\\s?`` + letters, ``\\s?`` + punctuation, trailing spaces, CJK, digits; the
  letter class is cut to ASCII here, the data being ASCII. It merges a space with a word and
  ``\\n`` runs are single newlines, but a pre-token never spans ``:`` and the next word, nor a
  newline and ``<|Assistant``, so the ids are equal.
* ``merging``: no pre-tokenizer split, so BPE learns merges across every boundary
  (``: a``, `` a``, ``\\n\\n<|Assistant|>:``). There the ids differ at the piece boundaries
  (the text is the same): docs/FIDELITY.md, "Prompts per family", says where and why.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from aia.adapters import get_adapter
from aia.testing.tiny import tiny_janus
from aia.training.config import load_config
from tests.fidelity import released
from tests.helpers import gen_record, und_record

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "janus-pro-7b.yaml"
SPECIAL = {
    "bos_token": "<｜begin▁of▁sentence｜>",
    "eos_token": "<｜end▁of▁sentence｜>",
    "pad_token": "<｜▁pad▁｜>",
    "image_token": "<image_placeholder>",
    "boi_token": "<begin_of_image>",
    "eoi_token": "<end_of_image>",
}
PROMPTS = ["a red circle on a blue background", "a green square at the top", "a small blue triangle"]
TURNS = [("what color is the circle?", "red"), ("where is it?", "at the top of the image")]

#: DeepSeek-LLM's pre-tokenizer (llama.cpp src/llama-vocab.cpp, LLAMA_VOCAB_PRE_TYPE_DEEPSEEK_LLM),
#: the letter class cut to ASCII
DEEPSEEK_SPLITS = [r"[\r\n]", r"\s?[A-Za-z]+", r"\s?[!-/:-~！-／：-～‘-‟　-。]+", r"\s+$", r"[一-龥ࠀ-一가-퟿]+", r"\p{N}+"]


def _corpus() -> list[str]:
    lines = []
    for text in PROMPTS + [q for q, _ in TURNS] + [a for _, a in TURNS]:
        lines += [released.deepseek_prompt(text), released.deepseek_prompt("\n" + text), text] * 20
    return lines


def bpe(split: bool) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the released format, Janus-Pro's special tokens, BOS added."""
    tok = Tokenizer(models.BPE())
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if split:
        splits = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in DEEPSEEK_SPLITS]
        tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=700, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    named = {k: v for k, v in SPECIAL.items() if k in ("bos_token", "eos_token", "pad_token")}
    extra = {k: v for k, v in SPECIAL.items() if k not in named}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, **named, extra_special_tokens=extra)
    bos = tokenizer.bos_token
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.bos_token_id)]
    )
    return tokenizer


def adapter_with(tokenizer):
    """The Janus adapter of configs/janus-pro-7b.yaml on a tiny Janus whose processor has ``tokenizer``."""
    cfg = load_config(CONFIG, check_paths=False)
    model, processor = tiny_janus(seed=0)
    processor.tokenizer = tokenizer
    model.config.image_token_id = tokenizer.image_token_id  # only encoding runs here, not the model
    return get_adapter(model, processor, span_config=cfg.spans, prompt_config=cfg.prompts)


def ids_both_ways(tokenizer) -> list[tuple[list[int], list[int]]]:
    """``(aia's ids, the released whole-string ids)`` of each generation prompt and the understanding sample."""
    adapter = adapter_with(tokenizer)
    image = Image.new("RGB", (32, 32), (120, 30, 200))
    pairs = []
    for prompt in PROMPTS:
        ours = adapter.encode(gen_record(prompt), "gen", Path("."), image=image).input_ids
        ours = ours[: int((ours == adapter.image_token_id).nonzero()[0])]  # up to <begin_of_image>
        theirs = released.gen_sample(tokenizer, prompt, blanked=False).input_ids
        pairs.append((ours.tolist(), theirs.tolist()))
    ours = adapter.encode(und_record(*TURNS), "und", Path("."), image=image)
    theirs = released.und_sample(tokenizer, TURNS, adapter.num_und_tokens)
    pairs.append((ours.input_ids.tolist(), theirs.input_ids.tolist()))
    return pairs


def test_merges_within_pieces_equal_whole_string_tokenization():
    tokenizer = bpe(split=True)
    vocab = tokenizer.get_vocab()
    assert "Ġred" in vocab and "Ġcircle" in vocab  # a space merged with its word
    for ours, theirs in ids_both_ways(tokenizer):
        assert ours == theirs


def test_merges_across_piece_boundaries_differ_only_in_segmentation():
    tokenizer = bpe(split=False)
    whole = tokenizer.convert_ids_to_tokens(tokenizer.encode(released.deepseek_prompt(PROMPTS[0])))
    # the tokenizer merges across the boundaries aia writes between pieces: ":" with the word after
    # it, a space with a word, "\n\n" with the role
    assert any(":Ġa" in t and "ĠaĠred" in t and "ĊĊ<|Assistant" in t for t in whole)
    for ours, theirs in ids_both_ways(tokenizer):
        assert tokenizer.decode(ours) == tokenizer.decode(theirs)  # the same text
        assert ours != theirs  # segmented at aia's piece boundaries


@pytest.mark.parametrize("split", [True, False], ids=["split", "merging"])
def test_special_tokens_are_never_merged(split):
    tokenizer = bpe(split)
    ids = tokenizer.encode(released.deepseek_prompt("<image_placeholder>\nwhat?") + "<begin_of_image>")
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.convert_tokens_to_ids("<begin_of_image>")
    assert ids.count(tokenizer.image_token_id) == 1
