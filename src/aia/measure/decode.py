"""Decode-time profiling: the interaction intensity while the model generates, KV cache on.

Teacher forcing (:mod:`aia.measure.teacher`) measures the intensity on the data's own answer or
image tokens in one forward pass. The paper's curves come from the model *generating*: at
every decoding step the query is the one position being decoded and the keys are every
position so far. :func:`decode_profile` does that:

1. the family adapter encodes the record and the sequence is cut where generation starts
   (the first supervised position): for generation the prompt up to and including the
   image's framing tokens (``<begin_of_image>``, Emu3's ``h*w`` header), for understanding
   the conversation up to the first answer of the first turn;
2. a prefill pass fills the cache, then greedy decoding runs one token per step:
   generation decodes the image's token count (Janus: the generation head over the
   codebook; Emu3, Chameleon and the VQ-LM of :mod:`aia.demo.vqlm`: ``lm_head``
   restricted to the image-code tokens, as their generation constraints do, with Emu3's
   end-of-line tokens forced at row ends); understanding decodes until an end-of-turn
   token or ``max_new_tokens``, never emitting an image placeholder (nor, for Chameleon
   and the VQ-LM, an image code: Chameleon's forward masks them too);
3. every model call runs inside :func:`aia.capture` with ``aia_query_mask`` = the last
   position only and ``aia_key_mask`` = the key set (prompt text for generation, image
   tokens for understanding) over all positions so far, both ``[B, kv_len]``.

The query of a step is the position that *predicts* the next token, so a step counts iff
the token it produces belongs to the query set (an image token for generation, an answer
token for understanding; a forced end-of-line counts only with
``image_markers_are_image``). A sample's intensity is the mean over its counted steps, so it
equals the teacher-forced intensity with ``SpanConfig(predictive=True)`` on the prompt
followed by the model's own output (``tests/measure/test_decode.py`` checks exactly that).
``span_config.predictive`` is therefore implied in this mode; its other fields apply.

Decoding runs one sample at a time (no padding inside the cache). Greedy decoding without
classifier-free guidance: the conditional branch's attention is what the statistic
describes, and greedy keeps the profile deterministic.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from aia.adapters import get_adapter
from aia.adapters.base import IGNORE_INDEX, Adapter, DecodeRunner, Example, unwrap
from aia.attention import capture
from aia.core.spans import Role, SpanConfig, task_spans
from aia.data.records import task_records
from aia.errors import DataError, ImageError
from aia.measure.profile import IntensityProfile
from aia.measure.samples import SampleTally

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "Decoded", "decode_example", "decode_profile"]

#: Understanding answers stop here unless the model ends its turn earlier.
DEFAULT_MAX_NEW_TOKENS = 64


@dataclass
class Decoded:
    """One sample decoded greedily, with its intensity.

    Attributes:
        prompt: the encoded prompt (the record's sequence before the first generated position).
        tokens: ``[N]`` generated tokens in the adapter's id space (vocabulary ids; Janus
            generation: codebook indices), forced ones included.
        roles: ``[N]`` their :class:`~aia.core.spans.Role` (IMAGE / IMAGE_MARKER for generation,
            ANSWER / TEMPLATE for understanding).
        intensity: fp64 ``[L]``, mean over the counted steps; None when no step counted or
            the key set is empty (the sample carries no statistic).
        steps: number of counted steps (query positions).
    """

    prompt: Example
    tokens: torch.Tensor
    roles: torch.Tensor
    intensity: torch.Tensor | None
    steps: int


def _stop_ids(model: nn.Module, adapter: Adapter) -> set[int]:
    stops = {int(adapter.eos_id)}
    eos = getattr(getattr(unwrap(model), "generation_config", None), "eos_token_id", None)
    stops |= {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
    return stops


def _prompt_and_plan(example: Example, adapter: Adapter, task: str) -> tuple[Example, torch.Tensor | None]:
    """Cut the example before its first supervised position; for generation also return the
    roles of the image block to decode (``[N]``), read from the example's placeholder run."""
    supervised = (example.labels != IGNORE_INDEX).nonzero()
    if len(supervised) == 0:
        raise DataError("the record has nothing to generate (no supervised position)")
    start = int(supervised[0])
    prompt = replace(
        example,
        input_ids=example.input_ids[:start],
        roles=example.roles[:start],
        labels=torch.full((start,), IGNORE_INDEX, dtype=torch.long),
    )
    if task == "und":
        return prompt, None
    block = adapter.image_block(example.input_ids[start:])
    n = int(block.long().cumprod(0).sum())  # length of the placeholder run
    return prompt, example.roles[start : start + n]


def _position_ids(base: nn.Module, inputs: dict, attention_mask: torch.Tensor) -> torch.Tensor:
    if "position_ids" in inputs:
        return inputs["position_ids"]  # [B, T]
    # Qwen-VL (M-RoPE): the model's own 3D positions from the image grid, [3, B, T]
    rope = {k: inputs[k] for k in ("mm_token_type_ids", "image_grid_thw") if k in inputs}
    return base.get_rope_index(inputs["input_ids"], attention_mask=attention_mask, **rope)[0]


@torch.no_grad()
def decode_example(
    model: nn.Module,
    adapter: Adapter,
    example: Example,
    max_new_tokens: int | None = None,
    method: str = "auto",
) -> Decoded:
    """Greedy-decode one encoded record and measure its per-layer intensity at every step.

    Args:
        model: the model the adapter belongs to (eval mode).
        adapter: its adapter; its ``span_config`` chooses the sets (``predictive`` is implied).
        example: ``adapter.encode(record, task, ...)`` of a whole record; only the part
            before its first supervised position is used.
        max_new_tokens: understanding: answer length cap (default
            :data:`DEFAULT_MAX_NEW_TOKENS`); generation: decode only the first this many
            image tokens (default: the whole image).
        method: capture route.

    Returns:
        A :class:`Decoded`.
    """
    task = example.task
    if max_new_tokens is not None and max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    prompt, plan = _prompt_and_plan(example, adapter, task)
    steps = min(len(plan) if plan is not None else DEFAULT_MAX_NEW_TOKENS, max_new_tokens or sys.maxsize)
    stops = _stop_ids(model, adapter) if task == "und" else set()
    run = adapter.decode_runner(model, task)
    span_cfg = replace(adapter.span_config, predictive=False)
    sequence, inputs = _prefill(model, adapter, run, prompt, span_cfg)
    tokens: list[int] = []
    roles: list[int] = []
    counted: list[torch.Tensor] = []  # fp64 [L] per counted step
    keys_ok = True
    with capture(model, method=method) as cap:
        hidden = sequence.forward(inputs)
        for t in range(steps):
            token, role = _choose(run, hidden, int(plan[t]) if plan is not None else None, stops)
            tokens.append(token)
            roles.append(role)
            if _in_query_set(task, role, span_cfg):
                counted.append(cap.intensity[:, 0].double().cpu())
                keys_ok &= bool(cap.valid[0])
            if t == steps - 1 or token in stops:
                break
            hidden = sequence.feed(token, role)
    return Decoded(
        prompt=prompt,
        tokens=torch.tensor(tokens, dtype=torch.long),
        roles=torch.tensor(roles, dtype=torch.long),
        intensity=sum(counted) / len(counted) if counted and keys_ok else None,
        steps=len(counted),
    )


@dataclass
class _Sequence:
    """The one sequence being decoded: its roles, attention mask, positions and KV cache so far.

    Every model call queries the last position only (``aia_query_mask``) against the key set
    of the roles so far (``aia_key_mask``), both ``[1, kv_len]``.
    """

    run: DecodeRunner
    task: str
    span_cfg: SpanConfig  # ``predictive`` off: the query is the position being decoded
    roles: torch.Tensor  # [1, T]
    attention_mask: torch.Tensor  # [1, T]
    positions: torch.Tensor  # [1, T], or [3, 1, T] (M-RoPE)
    cache: object = None

    def forward(self, inputs: dict) -> torch.Tensor:
        """Run ``inputs`` (the positions not in the cache yet); the last position's hidden state ``[1, D]``."""
        qmask = torch.zeros_like(self.roles, dtype=torch.bool)
        qmask[:, -1] = True  # the position being decoded
        _, kmask = task_spans(self.task, self.roles, self.span_cfg)
        out = self.run.base(
            **inputs,
            attention_mask=self.attention_mask,
            position_ids=self.positions[..., -_length(inputs) :],
            past_key_values=self.cache,
            use_cache=True,
            aia_query_mask=qmask,
            aia_key_mask=kmask,
        )
        self.cache = out.past_key_values
        return out.last_hidden_state[:, -1]

    def feed(self, token: int, role: int) -> torch.Tensor:
        """Append the decoded ``token`` (of ``role``): it becomes the position being decoded."""
        device = self.roles.device
        new = torch.tensor([[token]], device=device)
        self.roles = torch.cat([self.roles, torch.tensor([[role]], device=device)], 1)
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(1, 1)], 1)
        self.positions = torch.cat([self.positions, self.positions[..., -1:] + 1], -1)
        embed = self.run.embed_step
        return self.forward({"inputs_embeds": embed(new)} if embed is not None else {"input_ids": new})


def _prefill(
    model: nn.Module, adapter: Adapter, run: DecodeRunner, prompt: Example, span_cfg: SpanConfig
) -> tuple[_Sequence, dict]:
    """The prompt's :class:`_Sequence` (empty cache) and the inputs of its prefill call."""
    param = next(unwrap(model).parameters())
    batch = adapter.collate([prompt]).to(param.device)
    inputs = {k: v.to(param.dtype) if v.is_floating_point() else v for k, v in batch.inputs.items()}
    positions = _position_ids(run.base, inputs, batch.attention_mask)
    if run.embed_prefill is not None:
        inputs = {"inputs_embeds": run.embed_prefill(inputs["input_ids"])}
    elif run.prefill_keys is not None:
        inputs = {k: v for k, v in inputs.items() if k in run.prefill_keys}
    inputs.pop("position_ids", None)
    sequence = _Sequence(run, prompt.task, span_cfg, batch.roles, batch.attention_mask, positions)
    return sequence, inputs


def _choose(run: DecodeRunner, hidden: torch.Tensor, planned: int | None, stops: set[int]) -> tuple[int, int]:
    """One step's token and its role. Generation (``planned``: the role of the image slot): the
    family's forced token for that role, else the greedy choice. Understanding (``planned`` is
    None): the greedy choice, an ANSWER token unless it ends the turn (TEMPLATE)."""
    if run.forced and planned in run.forced:
        return run.forced[planned], planned
    token = _argmax(run, hidden)
    if planned is not None:
        return token, planned
    return token, int(Role.TEMPLATE) if token in stops else int(Role.ANSWER)


def _length(inputs: dict) -> int:
    return next(v for k, v in inputs.items() if k in ("input_ids", "inputs_embeds")).shape[1]


def _argmax(run: DecodeRunner, hidden: torch.Tensor) -> int:
    logits = run.head(hidden).float()[0]  # [V]
    if run.allowed is not None:
        return int(run.allowed[logits[run.allowed].argmax()])
    if run.blocked is not None:
        logits = logits.index_fill(0, run.blocked, float("-inf"))
    return int(logits.argmax())


def _in_query_set(task: str, role: int, cfg: SpanConfig) -> bool:
    query, _ = task_spans(task, torch.tensor([[role]]), cfg)
    return bool(query[0, 0])


def decode_profile(
    model: nn.Module,
    processor,
    data: str | Path,
    task: str,
    samples: int = 100,
    max_new_tokens: int | None = None,
    span_config: SpanConfig = SpanConfig(),
    method: str = "auto",
    model_name: str | None = None,
    progress: bool = True,
) -> IntensityProfile:
    """Per-layer intensity of ``model`` while it decodes the first ``samples`` usable records of ``task``.

    Args:
        model: a model with an adapter (:func:`aia.adapters.get_adapter`), in eval mode.
        processor: its processor.
        data: a JSON/JSONL file in the AIA data format (image paths relative to it).
        task: ``"und"`` or ``"gen"``.
        samples: how many usable samples to measure.
        max_new_tokens: see :func:`decode_example`.
        span_config: span choices (``predictive`` is implied).
        method: capture route (``"auto"``, ``"sdpa"``, ``"flex"``).
        model_name: recorded in the profile (default: the model's ``name_or_path``).
        progress: show a progress bar on stderr.

    Returns:
        The :class:`~aia.measure.profile.IntensityProfile` with ``mode="decode"``.

    Raises:
        DataError: if not one sample could be measured.
    """
    data = Path(data)
    records = task_records(data, task)
    adapter = get_adapter(model, processor, span_config=span_config)
    tally = SampleTally(task, samples, "decode", progress, " (e.g. an immediate end of turn)")
    for record in records:
        if tally.full:
            break
        try:
            example = adapter.encode(record, task, data.parent)
            decoded = decode_example(model, adapter, example, max_new_tokens=max_new_tokens, method=method)
        except (ImageError, DataError) as err:
            tally.skip(err)
            continue
        tally.add(decoded.intensity)
    return tally.profile(model, model_name, data, len(records))
