"""Held-out evaluation of a digits model (:mod:`aia.demo.digits`), for the demo (:mod:`aia.demo`).

* Understanding accuracy: the understanding record is encoded by the model's adapter as
  in training; the prediction is the digit token (``0``..``9``) with the highest logit
  at the position that predicts the answer (greedy, restricted to the ten digits).
* Generation accuracy: for each digit, images are sampled from the prompt
  ``"draw digit d"`` (the adapter's generation prefix, up to ``<boi>``), one code at a
  time with the logits restricted to the VQ code tokens, at temperature 1 with a seeded
  generator; the 16 codes are decoded by the VQ and a classifier trained on the real
  pixels of the training split (the *judge*, an RBF SVM) names the digit.
* Held-out NTP: the adapter's NTP loss over all targets of a data file (token-weighted).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from aia.adapters.base import Batch
from aia.core.spans import Role
from aia.data.records import read_records
from aia.demo.digits import DIGIT_WORDS, GEN_PROMPT, DigitsSplit

__all__ = ["fit_judge", "heldout_ntp", "sample_codes", "understanding_accuracy"]


def fit_judge(split: DigitsSplit):
    """An ``sklearn.svm.SVC(gamma=0.001)`` on the flattened real training images (values 0..16)."""
    from sklearn.svm import SVC

    return SVC(gamma=0.001).fit(split.train_images.reshape(len(split.train_images), -1), split.train_labels)


def _chunks(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    return model(
        input_ids=batch.inputs["input_ids"],
        attention_mask=batch.attention_mask,
        position_ids=batch.inputs["position_ids"],
        use_cache=False,
    ).logits  # [B, T, V]


@torch.no_grad()
def understanding_accuracy(model: nn.Module, adapter, data: str | Path, batch_size: int = 128) -> float:
    """Share of understanding records whose first answer token is predicted among the ten digits."""
    data = Path(data)
    records = read_records(data)
    device = next(model.parameters()).device
    digit_ids = torch.tensor(adapter.tokenizer.convert_tokens_to_ids(DIGIT_WORDS), device=device)
    correct = 0
    for chunk in _chunks(records, batch_size):
        batch = adapter.collate([adapter.encode(r, "und", data.parent) for r in chunk]).to(device)
        logits = _logits(model, batch)
        first = (batch.roles == Role.ANSWER).int().argmax(-1)  # [B] position of the first answer token
        rows = torch.arange(len(chunk), device=device)
        scores = logits[rows, first - 1][:, digit_ids]  # [B, 10]: the answer is predicted one position earlier
        truth = batch.inputs["input_ids"][rows, first]
        correct += int((digit_ids[scores.argmax(-1)] == truth).sum())
    return correct / len(records)


@torch.no_grad()
def heldout_ntp(model: nn.Module, adapter, data: str | Path, task: str, batch_size: int = 128) -> float:
    """Token-weighted mean NTP loss of ``model`` over every ``task`` record of ``data``."""
    data = Path(data)
    records = read_records(data)
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for chunk in _chunks(records, batch_size):
        batch = adapter.collate([adapter.encode(r, task, data.parent) for r in chunk]).to(device)
        out = adapter.forward(model, batch)
        total += float(out.loss) * out.num_tokens
        tokens += out.num_tokens
    return total / max(tokens, 1)


@torch.no_grad()
def sample_codes(
    model: nn.Module,
    adapter,
    digits: list[int],
    generator: torch.Generator,
    temperature: float = 1.0,
    batch_size: int = 250,
) -> np.ndarray:
    """Sample one image per entry of ``digits`` from ``"draw digit d"``; returns codes ``[N, 16]``.

    Each step feeds the whole sequence so far (no KV cache: 16 steps over ~20 tokens) and
    samples the next code from the softmax over the code tokens only.
    """
    vq = adapter.image_tokenizer
    device = next(model.parameters()).device
    code_ids = torch.tensor(adapter.code_ids, device=device)
    out = []
    prefix = {d: adapter.generation_prefix(GEN_PROMPT.format(digit=DIGIT_WORDS[d])) for d in set(digits)}
    for chunk in _chunks(list(digits), batch_size):
        prefixes = [prefix[d] for d in chunk]
        if len({len(p) for p in prefixes}) != 1:
            raise ValueError("generation prefixes of one batch must have the same length")
        seq = torch.tensor(prefixes, device=device)  # [B, T0]
        codes = []
        for _ in range(vq.tokens_per_image):
            positions = torch.arange(seq.shape[1], device=device).expand_as(seq)
            logits = model(input_ids=seq, position_ids=positions, use_cache=False).logits[:, -1, code_ids]  # [B, K]
            probs = torch.softmax(logits.float() / temperature, dim=-1)
            pick = torch.multinomial(probs, 1, generator=generator)  # [B, 1] code index
            codes.append(pick)
            seq = torch.cat([seq, code_ids[pick]], dim=1)
        out.append(torch.cat(codes, dim=1).cpu().numpy())
    return np.concatenate(out).astype(np.int64)
