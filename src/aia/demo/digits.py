"""scikit-learn's handwritten digits as a micro unified-model world: VQ, processor, data, model.

``sklearn.datasets.load_digits`` ships 1,797 real 8x8 grayscale scans (values 0..16) with
the package, so nothing is downloaded. Everything the demo (:mod:`aia.demo`) needs to run
the paper's pipeline on them through the ordinary code paths lives here:

* :func:`load_split`: a stratified train/test split fixed by a seed.
* :class:`DigitsVQ`: the image tokenizer. An image is cut into a 4x4 grid of 2x2-pixel
  patches; each patch becomes the index of its nearest codebook vector (16 codes in
  reading order). The codebook is k-means (``sklearn.cluster.KMeans``, fixed
  ``random_state``) over the patches of the training split; decoding puts each code's
  patch back. Encoding is a plain nearest-neighbour search in numpy.
* :class:`DigitsProcessor`: a word-level text tokenizer made in code (the demo's few
  words, the digits ``0``..``9``, ``<bos> <eos> <pad> <unk> <boi> <eoi>`` and one token
  ``<img_NNN>`` per VQ code) plus the VQ. It saves to and loads from a model directory
  (``save_pretrained`` / ``from_pretrained``; the VQ goes to :data:`VQ_FILE`), which is
  how :func:`aia.adapters.load_model` recognises it. The model family's adapter is
  :class:`aia.demo.vqlm.VQLMAdapter`.
* :func:`write_digits_data`: PNG files and JSONL records in the project's data format
  (:mod:`aia.data`), so that ``aia train`` / ``aia profile`` read them like user data.
* :func:`build_digits_model`: a tiny random ``LlamaForCausalLM`` over that vocabulary:
  a purely unified model of Emu3's kind (image codes are ordinary tokens).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from aia.jsonl import write_jsonl

__all__ = [
    "DIGIT_WORDS",
    "FAMILY",
    "GEN_PROMPT",
    "UND_QUESTION",
    "VQ_FILE",
    "DigitsProcessor",
    "DigitsSplit",
    "DigitsVQ",
    "build_digits_model",
    "digits_tokenizer",
    "from_image",
    "load_split",
    "to_image",
    "write_digits_data",
]

SIZE = 8  #: image side in pixels
PATCH = 2  #: patch side in pixels: a 4x4 grid of codes
GRID = SIZE // PATCH
MAX_VALUE = 16.0  #: pixel values of the data set are 0..16
VQ_FILE = "digits_vq.json"  #: the VQ codebook inside a saved model directory
#: the demo's model family (:class:`aia.demo.vqlm.VQLMAdapter`), the marker its models carry
FAMILY = "vqlm"

DIGIT_WORDS = [str(d) for d in range(10)]
GEN_PROMPT = "draw digit {digit}"
UND_QUESTION = "<image>\nwhat digit is this?"
_SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>", "<boi>", "<eoi>"]
# Every word of the demo's prompts and chat template, and a few more so that users can vary them.
_WORDS = [
    "user",
    "assistant",
    ":",
    "?",
    ".",
    ",",
    "draw",
    "write",
    "show",
    "digit",
    "number",
    "a",
    "the",
    "of",
    "what",
    "which",
    "is",
    "this",
    "image",
    *DIGIT_WORDS,
]


@dataclass
class DigitsSplit:
    """A fixed train/test split: ``[N, 8, 8]`` float images in 0..16 and ``[N]`` int labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def load_split(seed: int = 0, test_fraction: float = 0.2) -> DigitsSplit:
    """The bundled digits, split stratified by label with ``random_state=seed``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x, y = digits.images.astype(np.float64), digits.target.astype(np.int64)
    train, test = train_test_split(np.arange(len(y)), test_size=test_fraction, stratify=y, random_state=seed)
    return DigitsSplit(x[train], y[train], x[test], y[test])


def to_image(pixels: np.ndarray) -> Image.Image:
    """``[8, 8]`` values in 0..16 -> an 8-bit grayscale PIL image (lossless for integer values)."""
    scaled = np.clip(np.rint(np.asarray(pixels, dtype=np.float64) * (255.0 / MAX_VALUE)), 0, 255)
    return Image.fromarray(scaled.astype(np.uint8), mode="L")


def from_image(image: Image.Image) -> np.ndarray:
    """A PIL image (any mode, any size: box-resized to 8x8) -> ``[8, 8]`` float values in 0..16."""
    gray = image.convert("L")
    if gray.size != (SIZE, SIZE):
        gray = gray.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(gray, dtype=np.float64) * (MAX_VALUE / 255.0)


def _patches(images: np.ndarray) -> np.ndarray:
    """``[N, 8, 8]`` -> ``[N, 16, 4]``: 2x2 patches in reading order (row of the grid, then column)."""
    n = images.shape[0]
    return images.reshape(n, GRID, PATCH, GRID, PATCH).transpose(0, 1, 3, 2, 4).reshape(n, GRID * GRID, PATCH * PATCH)


def _unpatch(patches: np.ndarray) -> np.ndarray:
    """Inverse of :func:`_patches`: ``[N, 16, 4]`` -> ``[N, 8, 8]``."""
    n = patches.shape[0]
    return patches.reshape(n, GRID, GRID, PATCH, PATCH).transpose(0, 1, 3, 2, 4).reshape(n, SIZE, SIZE)


class DigitsVQ:
    """Image tokenizer of the digits: 8x8 image <-> 16 codes (a 4x4 grid of 2x2-patch codes).

    Args:
        codebook: ``[K, 4]`` patch vectors (pixel values 0..16, row-major within a patch).
    """

    def __init__(self, codebook: np.ndarray):
        codebook = np.asarray(codebook, dtype=np.float64)
        if codebook.ndim != 2 or codebook.shape[1] != PATCH * PATCH or codebook.shape[0] < 2:
            raise ValueError(f"codebook must be [K >= 2, {PATCH * PATCH}], got shape {codebook.shape}")
        self.codebook = codebook

    @property
    def num_codes(self) -> int:
        return self.codebook.shape[0]

    @property
    def tokens_per_image(self) -> int:
        return GRID * GRID

    @classmethod
    def fit(cls, images: np.ndarray, num_codes: int = 32, seed: int = 0) -> DigitsVQ:
        """k-means (``n_init=4``, ``random_state=seed``) over every 2x2 patch of ``images`` ``[N, 8, 8]``."""
        from sklearn.cluster import KMeans

        patches = _patches(np.asarray(images, dtype=np.float64)).reshape(-1, PATCH * PATCH)
        kmeans = KMeans(n_clusters=num_codes, n_init=4, random_state=seed).fit(patches)
        return cls(kmeans.cluster_centers_)

    def encode(self, images: np.ndarray) -> np.ndarray:
        """``[N, 8, 8]`` (or one ``[8, 8]``) pixel values -> int64 codes ``[N, 16]`` (or ``[16]``)."""
        x = np.asarray(images, dtype=np.float64)
        single = x.ndim == 2
        patches = _patches(x[None] if single else x)  # [N, 16, 4]
        dist = ((patches[:, :, None, :] - self.codebook[None, None]) ** 2).sum(-1)  # [N, 16, K]
        codes = dist.argmin(-1).astype(np.int64)  # ties go to the lowest index: deterministic
        return codes[0] if single else codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """int codes ``[N, 16]`` (or ``[16]``) -> pixel values ``[N, 8, 8]`` (or ``[8, 8]``)."""
        c = np.asarray(codes, dtype=np.int64)
        single = c.ndim == 1
        c = c[None] if single else c
        if c.shape[-1] != GRID * GRID or c.min() < 0 or c.max() >= self.num_codes:
            raise ValueError(f"codes must be [N, {GRID * GRID}] in [0, {self.num_codes}), got {c.shape}")
        images = _unpatch(self.codebook[c])
        return images[0] if single else images

    def encode_image(self, image: Image.Image) -> np.ndarray:
        """A PIL image -> its 16 codes (the call the adapter makes)."""
        return self.encode(from_image(image))

    def decode_image(self, codes: np.ndarray) -> Image.Image:
        """16 codes -> the 8x8 grayscale PIL image (what ``aia generate`` writes)."""
        return to_image(self.decode(np.asarray(codes).reshape(-1)))

    def to_dict(self) -> dict:
        return {"kind": "digits-vq", "grid": [GRID, GRID], "patch": PATCH, "codebook": self.codebook.tolist()}

    @classmethod
    def from_dict(cls, data: dict) -> DigitsVQ:
        if not isinstance(data, dict) or data.get("kind") != "digits-vq" or "codebook" not in data:
            raise ValueError("not a digits VQ file (expected kind 'digits-vq' and a codebook)")
        return cls(np.asarray(data["codebook"], dtype=np.float64))


def _code_token(code: int) -> str:
    return f"<img_{code:03d}>"


def digits_tokenizer(num_codes: int):
    """Word-level ``PreTrainedTokenizerFast`` made in code: specials, the demo's words, one token per code.

    Text is split on whitespace and punctuation (``"this?"`` -> ``this``, ``?``); a word
    outside the vocabulary becomes ``<unk>``. Ids: specials first, then words, then the
    ``num_codes`` code tokens ``<img_000>``... in code order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    names = _SPECIALS + _WORDS + [_code_token(i) for i in range(num_codes)]
    tok = Tokenizer(models.WordLevel({name: i for i, name in enumerate(names)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"boi_token": "<boi>", "eoi_token": "<eoi>"},
    )


class DigitsProcessor:
    """The digits model's processor: the word-level tokenizer and the VQ image tokenizer.

    The contract :class:`aia.demo.vqlm.VQLMAdapter` reads: ``tokenizer``,
    ``image_tokenizer`` (``encode_image(PIL) -> codes``, ``num_codes``),
    ``image_code_token_ids`` (token id of each code), ``image_start_token`` and
    ``image_end_token``.
    """

    image_start_token = "<boi>"
    image_end_token = "<eoi>"

    def __init__(self, tokenizer, image_tokenizer: DigitsVQ):
        self.tokenizer = tokenizer
        self.image_tokenizer = image_tokenizer
        ids = tokenizer.convert_tokens_to_ids([_code_token(i) for i in range(image_tokenizer.num_codes)])
        if any(i is None or i == tokenizer.unk_token_id for i in ids):
            raise ValueError(f"the tokenizer lacks code tokens for the VQ's {image_tokenizer.num_codes} codes")
        self.image_code_token_ids: list[int] = list(ids)

    @classmethod
    def build(cls, image_tokenizer: DigitsVQ) -> DigitsProcessor:
        """A processor with a fresh tokenizer sized to ``image_tokenizer``."""
        return cls(digits_tokenizer(image_tokenizer.num_codes), image_tokenizer)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer files and :data:`VQ_FILE` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(directory)
        (directory / VQ_FILE).write_text(json.dumps(self.image_tokenizer.to_dict()) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> DigitsProcessor:
        """Read what :meth:`save_pretrained` wrote (offline)."""
        from transformers import PreTrainedTokenizerFast

        directory = Path(directory)
        vq_path = directory / VQ_FILE
        if not vq_path.is_file():
            raise FileNotFoundError(f"{directory}: no {VQ_FILE}; not a directory saved by DigitsProcessor")
        try:
            vq = DigitsVQ.from_dict(json.loads(vq_path.read_text()))
        except (json.JSONDecodeError, ValueError) as err:
            raise ValueError(f"{vq_path}: {err}") from None
        return cls(PreTrainedTokenizerFast.from_pretrained(directory), vq)


def write_digits_data(directory: str | Path, split: DigitsSplit) -> dict[str, Path]:
    """Write every image as a PNG and the records of both tasks as JSONL, per split.

    Every image of a split gives one generation record (``"draw digit 7"`` -> the image)
    and one understanding record (the image, ``"what digit is this?"`` -> ``"7"``).

    Returns:
        ``{"und_train", "gen_train", "und_test", "gen_test"}`` -> JSONL path, all in
        ``directory`` (images in ``directory/images``, paths relative to ``directory``).
    """
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for part, images, labels in (
        ("train", split.train_images, split.train_labels),
        ("test", split.test_images, split.test_labels),
    ):
        und, gen = [], []
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            name = f"images/{part}_{i:04d}.png"
            to_image(pixels).save(directory / name)
            answer = DIGIT_WORDS[int(label)]
            gen.append(
                {
                    "conversations": [
                        {"from": "human", "value": GEN_PROMPT.format(digit=answer)},
                        {"from": "gpt", "value": "<image>"},
                    ],
                    "image": name,
                }
            )
            und.append(
                {
                    "image": name,
                    "conversations": [{"from": "human", "value": UND_QUESTION}, {"from": "gpt", "value": answer}],
                }
            )
        for task, records in (("und", und), ("gen", gen)):
            path = directory / f"{task}_{part}.jsonl"
            write_jsonl(path, records)
            paths[f"{task}_{part}"] = path
    return paths


def build_digits_model(
    processor: DigitsProcessor,
    num_layers: int = 4,
    hidden_size: int = 128,
    num_heads: int = 4,
    seed: int = 0,
):
    """A tiny random ``LlamaForCausalLM`` over the processor's vocabulary (eval mode).

    Intermediate size ``2 * hidden_size``, one key/value head per query head, no dropout,
    untied input/output embeddings; initialised under ``torch.manual_seed(seed)`` without
    touching the global generator. Its config carries the demo family's marker
    (:data:`aia.adapters.FAMILY_MARKER`: :data:`FAMILY`), which ``save_pretrained`` keeps in
    ``config.json``: that, not the class, is how its adapter (:class:`aia.demo.vqlm.VQLMAdapter`)
    is found.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    from aia.adapters import FAMILY_MARKER

    tok = processor.tokenizer
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        **{FAMILY_MARKER: FAMILY},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()
