"""What several test modules share: sample records, small writers, a tiny Llama, and the one
eager attention-map reference of the intensity (paper Eq. 1), written independently of the package."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

import aia
from aia.adapters.base import IGNORE_INDEX
from aia.measure.profile import IntensityProfile, save_profile
from aia.targets.presets import TargetProfile

# -- records of the data format ----------------------------------------------------------------


def und_record(*turns: tuple[str, str], image: str = "unused.png") -> dict:
    """An understanding record of ``(question, answer)`` turns."""
    conversations = []
    for question, answer in turns:
        conversations += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return {"image": image, "conversations": conversations}


def gen_record(prompt: str, image: str = "unused.png") -> dict:
    """A generation record: ``prompt`` answered by the image."""
    return {"conversations": [{"from": "human", "value": prompt}, {"from": "gpt", "value": "<image>"}], "image": image}


UND = und_record(("<image>\nwhat color is the circle?", "red"), ("where is it?", "at the top"))
GEN = gen_record("a red circle on a blue background")


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """``records`` as JSON Lines at ``path`` (parent folders made); returns the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# -- profiles and the CLI ----------------------------------------------------------------------


def random_profile(task: str = "gen", model: str = "tiny", layers: int = 4, n: int = 3, seed: int = 0):
    """An :class:`IntensityProfile` of ``n`` random curves in [0.1, 0.6)."""
    per_sample = np.random.default_rng(seed).uniform(0.1, 0.6, (n, layers))
    return IntensityProfile.from_per_sample(model, task, per_sample)


def write_profile(path: Path, task: str = "gen", layers: int = 4, n: int = 3, seed: int = 0) -> Path:
    """:func:`random_profile` saved at ``path``; returns the path."""
    return save_profile(random_profile(task, layers=layers, n=n, seed=seed), path)


#: edits that break a :func:`write_profile` file (4 layers, 3 samples), and the error they give
BROKEN_PROFILES = [
    ({"per_sample": [[0.1, 0.2]]}, r"per_sample must be \[n=3, num_layers=4\]"),
    ({"mean": [0.9] * 4}, "mean does not match per_sample"),
    ({"task": "both"}, "task must be one of"),
    ({"layers": 4}, r"unknown key\(s\) \['layers'\]"),
]


def write_broken_profile(path: Path, edit: dict) -> Path:
    """A :func:`write_profile` file with ``edit`` (one of :data:`BROKEN_PROFILES`) applied."""
    write_profile(path)
    path.write_text(json.dumps({**json.loads(path.read_text()), **edit}))
    return path


def write_targets_with_delta(path: Path, delta: float) -> Path:
    """The janus-pro targets resized to 4 layers, the first understanding stage's delta set to ``delta``."""
    data = TargetProfile.preset("janus-pro").resize(4).to_dict()
    data["und"][0]["delta"] = delta
    path.write_text(yaml.safe_dump(data))
    return path


def run_cli(capsys, *argv) -> tuple[int, str]:
    """``aia *argv``: its exit code and what it wrote on stderr."""
    from aia.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def save_model(model, processor, directory: Path) -> Path:
    """``model`` and ``processor`` saved in ``directory``, as ``aia profile`` loads them."""
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


# -- the eager reference -----------------------------------------------------------------------


def tiny_llama(dtype: torch.dtype = torch.float64, layers: int = 3, seed: int = 0) -> LlamaForCausalLM:
    """A random 6-head (2 key/value heads) Llama of ``layers`` layers, SDPA attention, eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=97,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=layers,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).to(dtype).eval()


def softmax_maps(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    """Attention maps ``softmax(Q K^T * scale)`` ``[B, H, Tq, Tk]`` in the inputs' dtype.

    ``key`` ``[B, Hkv, Tk, D]`` is repeated for grouped-query heads; ``mask`` (broadcastable to
    the scores) is bool (True: may attend) or additive. Rows without an allowed key are zero.
    """
    k = key.repeat_interleave(query.shape[1] // key.shape[1], 1)
    scores = query @ k.transpose(-1, -2) * scale
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    return torch.softmax(scores, -1).nan_to_num(0.0)


def span_intensity(maps, query_mask: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
    """Eq. 1 sliced out of attention maps: per layer (``maps``: ``[B, H, T, T]`` each) and sample,
    the mass the query rows put on the key columns, summed over keys and averaged over heads
    and queries; 0 where a set is empty. ``[L, B]`` in the maps' dtype."""
    rows = []
    for a in maps:
        per = [
            a[i][:, q][:, :, k].sum(-1).mean() if q.any() and k.any() else a.new_zeros(())
            for i, (q, k) in enumerate(zip(query_mask, key_mask, strict=True))
        ]
        rows.append(torch.stack(per))
    return torch.stack(rows)


def eager_attentions(model, implementation="eager", call=None, **inputs):
    """``(call or model)(**inputs, output_attentions=True)``'s attention maps with attention
    ``implementation`` set on ``model`` (a dict: per sub-config), SDPA restored afterwards."""
    restore = {k: "sdpa" for k in implementation} if isinstance(implementation, dict) else "sdpa"
    model.set_attn_implementation(implementation)
    try:
        return (call or model)(**inputs, output_attentions=True).attentions
    finally:
        model.set_attn_implementation(restore)


# -- teacher forcing on a decoded sample -------------------------------------------------------


def with_decoded_answer(decoded):
    """The decoded sample's prompt followed by its own decoded answer, nothing supervised."""
    prompt = decoded.prompt
    ids = torch.cat([prompt.input_ids, decoded.tokens])
    roles = torch.cat([prompt.roles, decoded.roles])
    return replace(prompt, input_ids=ids, roles=roles, labels=torch.full_like(ids, IGNORE_INDEX))


def teacher_forced_intensity(model, adapter, example) -> torch.Tensor:
    """fp64 ``[L]`` intensity of one example through the adapter's training forward; asserts it is valid."""
    with torch.no_grad(), aia.capture(model) as cap:
        adapter.forward(model, adapter.collate([example]))
        assert bool(cap.valid[0])
        return cap.intensity[:, 0].double()
