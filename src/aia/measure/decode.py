"""Decode-time profiling: the interaction intensity while the model generates, KV cache on.

Teacher forcing (:mod:`aia.measure.teacher`) measures the intensity on the data's own answer or
image tokens in one forward pass. The paper's curves come from the model *generating*, and
:func:`decode_profile` follows the released plot scripts (``gen_plot.py``, ``und_plot.py``;
lines in ``docs/FIDELITY.md``) by default:

1. the record is encoded as for teacher forcing (:class:`aia.data.encoder.RecordEncoder`, with
   the same preprocessing) and the sequence is cut where generation starts (the first
   supervised position, :func:`aia.data.encoder.prompt_part`): for generation the prompt up to and including the
   image's framing tokens (``<begin_of_image>``, Emu3's ``h*w`` header), for understanding
   the conversation up to the first answer of the first turn;
2. a prefill pass fills the cache, then one token per step is chosen by the family's
   decode runner (:meth:`AdapterBase.decode_runner`: Janus's generation head over the
   codebook; ``lm_head`` restricted to the image codes for the VQ-token families, Emu3's
   end-of-line forced at row ends; understanding never emits an image placeholder):

   * generation is **sampled** (multinomial, ``temperature`` 1) with **classifier-free
     guidance** (``cfg_weight`` 5): an unconditional branch, the same record encoded with
     its prompt blanked (``cfg_blank``), runs beside the conditional one and the logits are
     ``uncond + w * (cond - uncond)``; the intensity is the conditional branch's. These are the
     unified families' defaults (:meth:`AdapterBase.decode_sampling
     <aia.adapters.base.AdapterBase.decode_sampling>`); a generation-only reference samples as its
     checkpoint does (GLM-Image: its generation config's temperature / top-p / top-k, no guidance),
     and :class:`DecodeSettings` overrides any of them;
   * understanding is **greedy**, until an end-of-turn token or ``max_new_tokens`` (512);

   sampling draws from a generator seeded by ``(seed, sample index)``, so a run repeats
   exactly;
3. every model call runs inside :func:`aia.capture` with ``aia_query_mask`` = the last
   position and ``aia_key_mask`` = the key set of the roles so far.

The queries are the generated tokens at **the positions that hold them**, as they are fed
back (``SpanConfig.predictive=False``, the released protocol): a token's intensity is read in
the call that takes it as input, and the last token is fed too so that it counts. With
``predictive=True`` the query of a token is the position that predicted it (the call that
chose it). Either way a sample's intensity is the mean over its counted tokens, so it
equals the teacher-forced intensity with the same ``SpanConfig`` on the prompt followed by
the model's own output (``tests/measure/test_decode.py`` checks exactly that).

Samples are decoded in batches (``batch_size``, :func:`decode_batch`): the prompts, and with CFG
their unconditional twins, are the rows of one left-padded batch, one forward per token for
all of them; each sample draws from its own generator, so a batch of 4 gives the profile of
batch 1 (to float rounding). Each step's statistic is one query row against the cache, which
:func:`aia.core.intensity.attention_with_mass` computes from the unpadded cache (no widened
copy of it per token).
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from aia.adapters import get_adapter
from aia.adapters.base import AdapterBase, DecodeRunner, Example, unwrap
from aia.adapters.imagegen import sample_tokens
from aia.adapters.prompts import PromptConfig
from aia.attention import capture
from aia.core.intensity import kernel_routes
from aia.core.spans import Role, SpanConfig, task_spans
from aia.data.encoder import Preprocessing, RecordEncoder, prompt_part
from aia.data.records import task_records
from aia.errors import DataError, ImageError
from aia.measure.profile import IntensityProfile
from aia.measure.samples import SampleTally, measure_policy, prompts_of

__all__ = ["DEFAULT_MAX_NEW_TOKENS", "DecodeSettings", "Decoded", "decode_batch", "decode_example", "decode_profile"]

#: Understanding answers stop here unless the model ends its turn earlier (``und_plot.py``: 512).
DEFAULT_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class DecodeSettings:
    """How tokens are chosen in decode mode. A sampling field left at None takes the family's value
    (:meth:`AdapterBase.decode_sampling <aia.adapters.base.AdapterBase.decode_sampling>`: the released
    plot scripts' for the unified families, the checkpoint's generation config for GLM-Image);
    :meth:`resolve` fills them in.

    Attributes:
        cfg_weight: generation: classifier-free guidance weight; 1 turns the unconditional
            branch off (``gen_plot.py``: 5).
        temperature: generation: sampling temperature; 0 decodes greedily (``gen_plot.py``: 1).
        top_k: generation: sample among the ``top_k`` most likely codes (``gen_plot.py``: all).
        top_p: generation: sample in the nucleus of probability ``top_p`` (``gen_plot.py``: all).
        seed: seed of the sampling generator (per sample: ``(seed, sample index)``).
        max_new_tokens: understanding: answer length cap (``und_plot.py``: 512); generation:
            decode only the first this many image tokens (None: the whole image).
    """

    cfg_weight: float | None = None
    temperature: float | None = None
    seed: int = 0
    max_new_tokens: int | None = None
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        if self.cfg_weight is not None and not (self.cfg_weight >= 0 and self.cfg_weight < float("inf")):
            raise ValueError(f"cfg_weight must be a finite number >= 0, got {self.cfg_weight}")
        if self.temperature is not None and not (self.temperature >= 0 and self.temperature < float("inf")):
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    def resolve(self, family: dict) -> DecodeSettings:
        """These settings with every sampling field left at None taken from ``family``
        (:meth:`AdapterBase.decode_sampling <aia.adapters.base.AdapterBase.decode_sampling>`)."""
        names = ("cfg_weight", "temperature", "top_k", "top_p")
        return replace(self, **{k: family.get(k) for k in names if getattr(self, k) is None})

    def to_dict(self, task: str) -> dict:
        """The settings that apply to ``task`` (recorded in the profile)."""
        if task == "und":
            return {"decoding": "greedy", "max_new_tokens": self.max_new_tokens or DEFAULT_MAX_NEW_TOKENS}
        decoding = "greedy" if self.temperature == 0 else "multinomial"
        out = {
            "decoding": decoding,
            "temperature": self.temperature,
            "cfg_weight": self.cfg_weight,
            "seed": self.seed,
            "max_new_tokens": self.max_new_tokens,
        }
        out.update({k: v for k, v in (("top_k", self.top_k), ("top_p", self.top_p)) if v is not None})
        return out


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


def _stop_ids(model: nn.Module, adapter: AdapterBase) -> set[int]:
    stops = {int(adapter.eos_id)}
    eos = getattr(getattr(unwrap(model), "generation_config", None), "eos_token_id", None)
    stops |= {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
    return stops


def _prompt_and_plan(example: Example, adapter: AdapterBase, task: str) -> tuple[Example, torch.Tensor | None]:
    """Cut the example before its first supervised position; for generation also return the
    roles of the image block to decode (``[N]``), read from the example's placeholder run."""
    prompt = prompt_part(example)
    start = len(prompt)
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


def decode_example(
    model: nn.Module,
    adapter: AdapterBase,
    example: Example,
    settings: DecodeSettings = DecodeSettings(),
    method: str = "auto",
    uncond: Example | None = None,
    sample_index: int = 0,
) -> Decoded:
    """Decode one encoded record and measure its per-layer intensity at every counted token.

    Args:
        model: the model the adapter belongs to (eval mode).
        adapter: its adapter; its ``span_config`` chooses the sets and the query positions.
        example: ``adapter.encode(record, task, ...)`` of a whole record; only the part
            before its first supervised position is used.
        settings: how tokens are chosen (:class:`DecodeSettings`).
        method: capture route.
        uncond: generation with CFG: the same record encoded with ``cfg_blank=True``.
        sample_index: seeds the sampling generator together with ``settings.seed``.

    Returns:
        A :class:`Decoded` (:func:`decode_batch` of one sample).
    """
    return decode_batch(model, adapter, [example], settings, method, [uncond], [sample_index])[0]


@torch.no_grad()
def decode_batch(
    model: nn.Module,
    adapter: AdapterBase,
    examples: list[Example],
    settings: DecodeSettings = DecodeSettings(),
    method: str = "auto",
    unconds: list[Example | None] | None = None,
    sample_indices: list[int] | None = None,
    max_new_tokens: list[int | None] | None = None,
) -> list[Decoded]:
    """Decode several encoded records of one task together, one forward per token for all of them.

    The prompts (and, with CFG, their unconditional twins) are the rows of one left-padded batch:
    ``[cond_0 .. cond_{n-1}, uncond_0 .. uncond_{n-1}]``. Sample ``i`` draws from its own
    generator, seeded by ``(settings.seed, sample_indices[i])``, and only where it chooses a
    token (not at forced tokens, not after its end), so its tokens and its intensity do not
    depend on the batch it is decoded in (up to the float rounding of batched kernels).

    Args:
        examples: encoded records of one task (see :func:`decode_example`).
        unconds: generation with CFG: each record encoded with ``cfg_blank=True``.
        sample_indices: seeds (default ``0 .. n-1``).
        max_new_tokens: per sample, overrides ``settings.max_new_tokens``.

    Returns:
        One :class:`Decoded` per example, in order.
    """
    n = len(examples)
    task = examples[0].task
    settings = settings.resolve(adapter.decode_sampling())
    indices = list(range(n)) if sample_indices is None else list(sample_indices)
    caps = [settings.max_new_tokens] * n if max_new_tokens is None else list(max_new_tokens)
    cut = [_prompt_and_plan(ex, adapter, task) for ex in examples]
    prompts, plans = [c[0] for c in cut], [c[1] for c in cut]
    limits = [
        min(len(plan) if plan is not None else DEFAULT_MAX_NEW_TOKENS, cap or sys.maxsize)
        for plan, cap in zip(plans, caps, strict=True)
    ]
    stops = _stop_ids(model, adapter) if task == "und" else set()
    run = adapter.decode_runner(model, task)
    own = not adapter.span_config.predictive  # the query of a token: its own position, or the one predicting it
    span_cfg = replace(adapter.span_config, predictive=False)
    picker = _Picker(run, settings, task, indices)
    rows = list(prompts)
    if picker.guided:
        if unconds is None or any(u is None for u in unconds):
            raise ValueError(
                "generation with classifier-free guidance needs the unconditional example "
                "(adapter.encode(record, 'gen', ..., cfg_blank=True)); or set cfg_weight=1"
            )
        rows += [_prompt_and_plan(u, adapter, "gen")[0] for u in unconds]
    full = list(examples) + (list(unconds) if picker.guided else [])
    tokens: list[list[int]] = [[] for _ in range(n)]
    roles: list[list[int]] = [[] for _ in range(n)]
    active = list(range(n))  # samples still decoding
    with capture(model, method=method) as cap:
        # the prefill's reading is a token's only with predictive queries (the position predicting token 0)
        sequence, hidden, reading = _prefill(model, adapter, run, rows, span_cfg, cap, n, measure=not own)
        if task == "gen":
            sequence.planned = _planned_positions(adapter, full, rows, sequence.positions)
        readings = [reading]  # per model call: (intensity [L, n], valid [n]) of the conditional rows, on the device
        step = 0
        while active:
            planned = [_planned(plans[i], step) for i in range(n)]
            picked = picker(hidden[:n], hidden[n:] if picker.guided else None, planned, stops, active)
            for i in list(active):
                token, role = picked[i]
                tokens[i].append(token)
                roles[i].append(role)
                if step == limits[i] - 1 or token in stops:
                    active.remove(i)
            if not active and not own:
                break  # the last token's query (the position predicting it) has been read
            feed = [tokens[i][-1] for i in range(n)]  # an ended sample repeats its last token (never read)
            role = [roles[i][-1] for i in range(n)]
            hidden = sequence.feed(feed * (2 if picker.guided else 1), role * (2 if picker.guided else 1))
            readings.append(_reading(cap, n))
            step += 1
    first = 0 if readings[0] is not None else 1  # call 0 (the prefill) unread in "own" mode
    curves = torch.stack([r for r, _ in readings[first:]]).double().cpu()  # [calls, L, n]
    valid = torch.stack([v for _, v in readings[first:]]).cpu()  # [calls, n]
    out = []
    for i in range(n):
        counted = _counted_steps(task, prompts[i].roles, roles[i], plans[i], span_cfg)
        calls = [t + 1 if own else t for t in counted]  # the call that read token t
        out.append(
            Decoded(
                prompt=prompts[i],
                tokens=torch.tensor(tokens[i], dtype=torch.long),
                roles=torch.tensor(roles[i], dtype=torch.long),
                intensity=_mean([(curves[c - first, :, i], bool(valid[c - first, i])) for c in calls]),
                steps=len(calls),
            )
        )
    return out


def _planned(plan: torch.Tensor | None, step: int) -> int | None:
    """The planned role of generation step ``step`` (None: understanding, or past the plan)."""
    return int(plan[step]) if plan is not None and step < len(plan) else None


def _planned_positions(
    adapter: AdapterBase, full: list[Example], prompts: list[Example], positions: torch.Tensor
) -> torch.Tensor | None:
    """The positions the rows' image tokens take, ``[R, N]`` (``[3, R, N]`` for 3D positions), as the
    adapter's collation gives them on each row's whole example (GLM-Image's grids are not counted
    1, 2, 3...); None where the collation leaves positions to the model (they are then counted on)."""
    planned = []
    for example, prompt in zip(full, prompts, strict=True):
        pos = adapter.collate([example], "left").inputs.get("position_ids")
        if pos is None:
            return None
        planned.append(pos[..., 0, len(prompt) :])  # [N] or [3, N]
    width = max(p.shape[-1] for p in planned)

    def extend(p: torch.Tensor) -> torch.Tensor:  # a shorter plan counts on after its last position
        return torch.cat([p, p[..., -1:] + torch.arange(1, width - p.shape[-1] + 1)], -1)

    return torch.stack([extend(p) for p in planned], -2).to(positions.device)


def _reading(cap, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The last call's intensity of the first ``n`` rows (the conditional ones), ``[L, n]``, and
    whether their spans were non-empty, ``[n]``; kept on the device (no sync per token)."""
    return cap.intensity[:, :n], cap.valid[:n]


def _mean(counted: list[tuple[torch.Tensor, bool]]) -> torch.Tensor | None:
    """Mean over the counted tokens; None when none counted or a key set was empty."""
    if not counted or not all(valid for _, valid in counted):
        return None
    return sum(curve for curve, _ in counted) / len(counted)


@dataclass
class _Sequence:
    """The rows being decoded: their roles, attention mask, positions and KV cache so far.

    Every model call queries the last position only (``aia_query_mask``) against the key set
    (``aia_key_mask``), both ``[R, kv_len]``. Rows are left-padded, so the last position is every
    row's newest token. The key set is the prompt's (every ``gen_keys`` / ``und_keys`` choice lies
    in the prompt): read once from the prompt's roles, a decoded position never joins it
    (:func:`_counted_steps` checks that on the whole decoded sequence).
    """

    run: DecodeRunner
    task: str
    span_cfg: SpanConfig  # ``predictive`` off: the query is the position being decoded
    roles: torch.Tensor  # [R, T]
    attention_mask: torch.Tensor  # [R, T]
    positions: torch.Tensor  # [R, T], or [3, R, T] (M-RoPE)
    cache: object = None
    key_mask: torch.Tensor | None = None  # [R, T]; None: read from the roles at the first call
    planned: torch.Tensor | None = None  # [R, N] or [3, R, N]: the positions of the tokens fed (None: counted on)
    fed: int = 0  # tokens fed so far

    def forward(self, inputs: dict, measure: bool = True) -> torch.Tensor:
        """Run ``inputs`` (the positions not in the cache yet); the last position's hidden states ``[R, D]``.
        ``measure=False``: plain attention, no intensity (a prefill whose reading no token needs)."""
        if self.key_mask is None:
            self.key_mask = task_spans(self.task, self.roles, self.span_cfg)[1]
        spans = {}
        if measure:
            qmask = torch.zeros_like(self.roles, dtype=torch.bool)
            qmask[:, -1] = True  # the position being decoded
            spans = {"aia_query_mask": qmask, "aia_key_mask": self.key_mask}
        out = self.run.base(
            **inputs,
            attention_mask=self.attention_mask,
            position_ids=self.positions[..., -_length(inputs) :],
            **{_cache_keyword(type(self.run.base)): self.cache},
            use_cache=True,
            **spans,
        )
        self.cache = out.cache if hasattr(out, "cache") else out.past_key_values
        return out.last_hidden_state[:, -1]

    def feed(self, tokens: list[int], roles: list[int]) -> torch.Tensor:
        """Append one decoded token per row (of ``roles``): they become the positions being decoded."""
        device = self.roles.device
        new = torch.tensor(tokens, device=device)[:, None]  # [R, 1]
        self.roles = torch.cat([self.roles, torch.tensor(roles, dtype=self.roles.dtype, device=device)[:, None]], 1)
        self.attention_mask = torch.cat([self.attention_mask, self.attention_mask.new_ones(len(tokens), 1)], 1)
        if self.planned is not None and self.fed < self.planned.shape[-1]:
            position = self.planned[..., self.fed : self.fed + 1]
        else:
            position = self.positions[..., -1:] + 1
        self.positions = torch.cat([self.positions, position], -1)
        self.fed += 1
        self.key_mask = torch.cat([self.key_mask, self.key_mask.new_zeros(len(tokens), 1)], 1)
        embed = self.run.embed_step
        return self.forward({"inputs_embeds": embed(new)} if embed is not None else {"input_ids": new})


def _prefill(
    model: nn.Module,
    adapter: AdapterBase,
    run: DecodeRunner,
    prompts: list[Example],
    span_cfg: SpanConfig,
    cap,
    n: int,
    measure: bool,
) -> tuple[_Sequence, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The rows' prefill: one left-padded call when their images (if any) are all of one size,
    else every row alone (a batch's images are zero-padded to the largest, which would change an
    image's encoding near its border), the rows' caches, roles, masks and positions then
    left-padded into one :class:`_Sequence` for the batched token steps. Returns it, the rows'
    last hidden states ``[R, D]`` and the prefill's reading of the first ``n`` rows (as
    :func:`_reading`; None without ``measure``: the prefill then runs plain attention)."""
    param = next(unwrap(model).parameters())
    sizes = {None if p.pixel_values is None else tuple(p.pixel_values.shape) for p in prompts}
    groups = [prompts] if len(sizes) == 1 else [[p] for p in prompts]
    parts, hidden, readings = [], [], []
    for group in groups:
        batch = adapter.collate(group, "left").to(param.device)
        inputs = {k: v.to(param.dtype) if v.is_floating_point() else v for k, v in batch.inputs.items()}
        positions = _position_ids(run.base, inputs, batch.attention_mask)
        if run.embed_prefill is not None:
            inputs = {"inputs_embeds": run.embed_prefill(inputs["input_ids"])}
        elif run.prefill_keys is not None:
            inputs = {k: v for k, v in inputs.items() if k in run.prefill_keys}
        inputs.pop("position_ids", None)
        row = _Sequence(run, group[0].task, span_cfg, batch.roles, batch.attention_mask, positions)
        hidden.append(row.forward(inputs, measure))
        if measure:
            readings.append((cap.intensity, cap.valid))
        parts.append(row)
    reading = None
    if measure:
        reading = (torch.cat([r for r, _ in readings], 1)[:, :n], torch.cat([v for _, v in readings])[:n])
    if len(parts) == 1:
        return parts[0], hidden[0], reading
    width = max(p.roles.shape[1] for p in parts)

    def left(x: torch.Tensor, fill) -> torch.Tensor:  # [..., 1, t] -> [..., 1, width]
        return F.pad(x, (width - x.shape[-1], 0), value=fill)

    merged = _Sequence(
        run,
        prompts[0].task,
        span_cfg,
        torch.cat([left(p.roles, int(Role.PAD)) for p in parts]),
        torch.cat([left(p.attention_mask, 0) for p in parts]),
        torch.cat([left(p.positions, 0) for p in parts], dim=-2),
        _merge_caches([p.cache for p in parts], width),
        torch.cat([left(p.key_mask, False) for p in parts]),
    )
    return merged, torch.cat(hidden), reading


def _merge_caches(caches: list, width: int):
    """One ``DynamicCache`` of the rows' single-row caches, each left-padded (zeros) to ``width``."""
    from transformers import DynamicCache

    data = []
    for layers in zip(*(c.layers for c in caches), strict=True):
        keys = [F.pad(layer.keys, (0, 0, width - layer.keys.shape[-2], 0)) for layer in layers]
        values = [F.pad(layer.values, (0, 0, width - layer.values.shape[-2], 0)) for layer in layers]
        data.append((torch.cat(keys), torch.cat(values)))  # [R, Hkv, width, d]
    return DynamicCache(data)


class _Picker:
    """Chooses each sample's token: forced tokens as planned, else sampling (generation,
    ``temperature`` > 0) or the argmax, over the logits of the family's head restricted to what it
    may emit, with CFG ``uncond + w * (cond - uncond)`` when unconditional hidden states are given.
    Sample ``i`` draws from its own generator, only when it chooses."""

    def __init__(self, run: DecodeRunner, settings: DecodeSettings, task: str, sample_indices: list[int]):
        self.run = run
        self.guided = task == "gen" and settings.cfg_weight != 1
        self.weight = settings.cfg_weight
        self.temperature = settings.temperature if task == "gen" else 0.0  # understanding: greedy
        self.top_k, self.top_p = (settings.top_k, settings.top_p) if task == "gen" else (None, None)
        self.generators = [torch.Generator().manual_seed(settings.seed * 1_000_003 + i) for i in sample_indices]

    def __call__(
        self,
        hidden: torch.Tensor,
        uncond: torch.Tensor | None,
        planned: list[int | None],
        stops: set[int],
        active: list[int],
    ) -> dict[int, tuple[int, int]]:
        """``{sample: (token, role)}`` for the ``active`` samples. Generation (``planned[i]``: the role
        of the image slot): the family's forced token for that role, else the chosen code.
        Understanding (``planned[i]`` is None): an ANSWER token unless it ends the turn (TEMPLATE)."""
        run = self.run
        forced = {i: (run.forced[planned[i]], planned[i]) for i in active if run.forced and planned[i] in run.forced}
        choose = [i for i in active if i not in forced]
        if not choose:
            return forced
        logits = run.head(hidden).float()  # [n, V]
        if uncond is not None:
            base = run.head(uncond).float()
            logits = base + self.weight * (logits - base)
        rows = self._restrict(logits[choose])  # [m, V]
        if self.temperature != 0:  # the draw on the CPU, so it does not depend on the device
            rows = rows.cpu()
        picks = sample_tokens(rows, [self.generators[i] for i in choose], self.temperature, self.top_k,
                              self.top_p).tolist()
        for i, token in zip(choose, picks, strict=True):
            if planned[i] is not None:
                forced[i] = (token, planned[i])
            else:
                forced[i] = (token, int(Role.TEMPLATE) if token in stops else int(Role.ANSWER))
        return forced

    def _restrict(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` ``[m, V]`` with what the family may not emit at -inf."""
        if self.run.allowed is not None:
            out = torch.full_like(logits, float("-inf"))
            out[:, self.run.allowed] = logits[:, self.run.allowed]
            return out
        if self.run.blocked is not None:
            return logits.index_fill(1, self.run.blocked, float("-inf"))
        return logits


def _room(example: Example, adapter: AdapterBase, settings: DecodeSettings, limit: int | None) -> int | None:
    """``settings.max_new_tokens``, capped so that an answer never runs past ``limit`` positions."""
    if limit is None or example.task == "gen":
        return settings.max_new_tokens
    prompt, _ = _prompt_and_plan(example, adapter, example.task)
    room = max(1, limit - len(prompt))
    return min(settings.max_new_tokens or DEFAULT_MAX_NEW_TOKENS, room)


@functools.cache
def _cache_keyword(base: type) -> str:
    """The KV cache's keyword of the module class ``base``'s forward: ``cache`` (transformers renamed
    ``past_key_values``, which its models still take with a deprecation warning), or ``past_key_values``
    where that is the one it has."""
    import inspect

    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _length(inputs: dict) -> int:
    return next(v for k, v in inputs.items() if k in ("input_ids", "inputs_embeds")).shape[1]


def _counted_steps(
    task: str, prompt_roles: torch.Tensor, roles: list[int], plan: torch.Tensor | None, cfg: SpanConfig
) -> list[int]:
    """The decoded tokens (steps) in the query set, read from :func:`~aia.core.spans.task_spans` over
    the whole sequence as teacher forcing sees it: the prompt, the decoded tokens and, for
    generation, the rest of the planned image block (``gen_queries="image-but-last"`` leaves out
    the block's last code; understanding's closing end-of-turn follows the answer it closes)."""
    ahead = plan[len(roles) :] if plan is not None else prompt_roles[:0]
    sequence = torch.cat([prompt_roles, torch.tensor(roles, dtype=prompt_roles.dtype), ahead])  # [T]
    query, key = task_spans(task, sequence[None], cfg)
    start = len(prompt_roles)
    if key[0, start:].any():  # _Sequence keeps the prompt's key set
        raise RuntimeError(
            f"the {task} key set reaches into the decoded tokens; decode-time profiling assumes it does not"
        )
    return query[0, start : start + len(roles)].nonzero().flatten().tolist()


def decode_profile(
    model: nn.Module,
    processor,
    data: str | Path,
    task: str,
    samples: int = 100,
    settings: DecodeSettings = DecodeSettings(),
    span_config: SpanConfig = SpanConfig(),
    method: str = "auto",
    model_name: str | None = None,
    progress: bool = True,
    max_length: int | None = None,
    prompt_config: PromptConfig | None = None,
    preprocessing: Preprocessing | None = None,
    batch_size: int = 1,
) -> IntensityProfile:
    """Per-layer intensity of ``model`` while it decodes the first ``samples`` usable records of ``task``.

    Args:
        model: a model with an adapter (:func:`aia.adapters.get_adapter`), in eval mode.
        processor: its processor.
        data: a data file in the AIA data format (image paths relative to it).
        task: ``"und"`` or ``"gen"``.
        samples: how many usable samples to measure.
        settings: how tokens are chosen (:class:`DecodeSettings`; defaults: the released protocol).
        span_config: span choices; ``predictive`` picks the query positions (see the module docstring).
        method: capture route (``"auto"``, ``"sdpa"``, ``"flex"``).
        model_name: recorded in the profile (default: the model's ``name_or_path``).
        progress: show a progress bar on stderr.
        max_length: longest sequence in tokens (default: ``preprocessing``'s, else the model's
            ``max_position_embeddings``); an answer stops there.
        prompt_config: prompt choices (:class:`~aia.adapters.prompts.PromptConfig`; default: the
            family's, which equal the checkpoint's own chat template).
        preprocessing: image steps and length policy of the records, as in
            :func:`aia.measure.teacher.profile_model` (default: images as they are, longer
            records skipped and counted).
        batch_size: records decoded together (:func:`decode_batch`: one forward per token for
            all of them and both CFG branches); the profile equals batch 1's up to float rounding.

    Returns:
        The :class:`~aia.measure.profile.IntensityProfile` with ``mode="decode"``; its
        ``settings`` record the span and prompt choices and the decoding protocol.

    Raises:
        DataError: if not one sample could be measured.
    """
    data = Path(data)
    records = task_records(data, task)
    adapter = get_adapter(model, processor, span_config=span_config, prompt_config=prompt_config)
    settings = settings.resolve(adapter.decode_sampling())
    guided = task == "gen" and settings.cfg_weight != 1
    policy = measure_policy(model, max_length, preprocessing)
    limit = policy.length.max_length
    encode = RecordEncoder(adapter, task, data.parent, policy)
    tally = SampleTally(task, samples, "decode", progress, " (e.g. an immediate end of turn)", records=len(records))
    pending: list[tuple[int, Example, Example | None, int | None]] = []  # (index, example, uncond, token cap)

    def flush() -> None:
        indices, examples, unconds, caps = (list(x) for x in zip(*pending, strict=True))
        for decoded in decode_batch(
            model, adapter, examples, settings, method, unconds if guided else None, indices, caps
        ):
            tally.add(decoded.intensity)
        pending.clear()

    for index, record in enumerate(records):
        if tally.full:
            break
        try:
            example = encode(record)
            uncond = encode(record, cfg_blank=True) if guided else None
            _prompt_and_plan(example, adapter, task)
            cap = _room(example, adapter, settings, limit)
        except (ImageError, DataError) as err:
            tally.skip(err)
            continue
        pending.append((index, example, uncond, cap))
        if len(pending) >= min(batch_size, tally.missing):  # never more than the samples still wanted
            flush()
    if pending:
        flush()
    protocol = {
        "spans": asdict(span_config),
        "prompts": prompts_of(adapter),
        "method": method,
        **settings.to_dict(task),
        "max_length": limit,
        "preprocessing": policy.to_dict(),
        "attention": kernel_routes(),  # the intensity routes that ran and their self-checks
    }
    return tally.profile(model, model_name, data, len(records), protocol)
