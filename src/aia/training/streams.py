"""Training data: validated per-task sample streams and a deterministic und:gen schedule.

Files are read by :func:`aia.data.read_records` (JSON list, JSON Lines or parquet). Before
training, every record is encoded once by the record encoder that ``aia profile`` and ``aia
answer`` use too (:class:`aia.data.encoder.RecordEncoder`: ``data.image_root`` containment, the
image transform built from ``data.image_area`` and ``data.gen_image_transform``, the model's
adapter, the length policy): records whose image is missing or unreadable or outside
``data.image_root``, that have no image, or that cannot fit ``max_length`` without cutting
their image are dropped and counted; if more than ``max_bad_fraction`` of a file is bad,
training stops with an error naming examples. A sample longer than ``max_length`` whose image
ends before the limit is truncated after it.

Everything that picks data is a pure function of ``(seed, step)``, so a resumed run
draws exactly what the uninterrupted run would have drawn, and every rank agrees on
the task of every micro-batch:

* the tasks of an optimizer step follow ``data.mixing`` (:func:`step_schedule`): under
  ``both`` a step is ``grad_accum`` rounds of ``ratio_und`` understanding micro-batches then
  ``ratio_gen`` generation micro-batches; under ``random`` and ``alternate`` a step is
  ``grad_accum`` micro-batches of one task, drawn by a generator seeded by ``(seed, step)``
  or taken from a fixed cycle; a task's micro-batches are numbered over the whole run by
  counting the steps of that task before the step, so no data position repeats or is skipped;
* micro-batch ``c`` of a task on rank ``r`` of ``W`` takes stream positions
  ``(c * W + r) * bs ... + bs - 1``; position ``p`` is record ``perm_e[p mod N]`` of epoch
  ``e = p // N``, with a fresh permutation per epoch;
* a generation sample at position ``p`` is CFG-blanked iff a generator seeded by
  ``(seed, p)`` draws below ``cfg_drop``.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from aia.adapters import AdapterBase, Batch, Example
from aia.data.encoder import LengthPolicy, OverLong, Preprocessing, RecordEncoder, contained, truncate
from aia.data.records import infer_task, read_records
from aia.errors import DataError, ImageError
from aia.training.config import MIXINGS

__all__ = ["TaskStream", "contained", "micro_batches_per_step", "step_schedule", "step_task", "truncate"]


@dataclass
class Rejected:
    index: int
    reason: str


class TaskStream:
    """The usable samples of one task's data file, drawn by stream position.

    Args:
        path: the data file.
        task: ``"und"`` or ``"gen"``.
        adapter: the model family's adapter (encodes records).
        max_length: longest sequence.
        max_bad_fraction: largest tolerated share of unusable records.
        seed: shuffling seed.
        cfg_drop: share of CFG-blanked generation prompts.
        progress: show a progress bar while validating.
        cache: keep the validation pass's encoded samples and draw from them (memory grows
            with the data); blanked generation prompts are encoded when drawn.
        image_transform: a PIL image -> PIL image function applied to every record's image
            before the adapter's processor (None: the adapter loads the image itself).
        image_root: every image must lie inside this folder (``data.image_root``); None: anywhere.
        over_long: what happens to a sample longer than ``max_length``
            (:class:`aia.data.encoder.LengthPolicy`; ``truncate``: cut after its image, dropped
            when its image would be cut).
        gen_prompt_length: generation prompts of this many tokens or more are cut first
            (:class:`aia.data.encoder.LengthPolicy`); None: no such cut.

    Records are encoded by :class:`aia.data.encoder.RecordEncoder` (:attr:`encoder`), the encoder
    ``aia profile`` and ``aia answer`` use too.
    """

    def __init__(
        self,
        path: str | Path,
        task: str,
        adapter: AdapterBase,
        max_length: int,
        max_bad_fraction: float,
        seed: int,
        cfg_drop: float = 0.0,
        progress: bool = True,
        cache: bool = False,
        image_transform: Callable[[Image.Image], Image.Image] | None = None,
        image_root: str | Path | None = None,
        over_long: str = "truncate",
        gen_prompt_length: int | None = None,
    ):
        self.path, self.task, self.adapter = Path(path), task, adapter
        policy = Preprocessing(image_root=image_root, length=LengthPolicy(max_length, over_long, gen_prompt_length))
        self.encoder = RecordEncoder(adapter, task, self.path.parent, policy, transform=image_transform)
        self.max_length, self.seed, self.cfg_drop = max_length, seed, cfg_drop
        self._order: tuple[int, np.ndarray] | None = None  # (epoch, permutation) of the last draw
        records = read_records(self.path)
        self.rejected: list[Rejected] = []
        good: list[int] = []
        encoded: list[Example] = []
        truncated = 0
        for i, record in enumerate(tqdm(records, desc=f"check {task} data", disable=not progress, file=sys.stderr)):
            try:
                if infer_task(record) != task:
                    raise DataError(f"a {infer_task(record)!r} record in the {task!r} file")
                example = self.encoder.encode(record)
                cut = self.encoder.length.fit(example)
            except OverLong as err:
                self.rejected.append(Rejected(i, str(err)))
                continue
            except (ImageError, DataError, KeyError, TypeError) as err:
                self.rejected.append(Rejected(i, f"{type(err).__name__}: {err}"))
                continue
            truncated += cut is not example
            good.append(i)
            if cache:
                encoded.append(cut)
        self.records = [records[i] for i in good]
        self.examples = encoded if cache else None
        self.truncated = truncated
        bad = len(self.rejected)
        if bad:
            print(f"aia train: {self.path}: {bad} of {len(records)} samples skipped", file=sys.stderr)
        if not self.records:
            raise DataError(f"{self.path}: no usable {task!r} samples; first problems: {self._examples()}")
        if bad / len(records) > max_bad_fraction:
            raise DataError(
                f"{self.path}: {bad} of {len(records)} samples are unusable "
                f"(> data.max_bad_fraction={max_bad_fraction}); e.g. {self._examples()}"
            )

    def _examples(self, n: int = 3) -> str:
        return "; ".join(f"record {r.index}: {r.reason}" for r in self.rejected[:n])

    def __len__(self) -> int:
        return len(self.records)

    def index_at(self, position: int) -> int:
        """Index into :attr:`records` of stream position ``position`` (a new permutation every epoch)."""
        n = len(self.records)
        epoch, offset = divmod(position, n)
        if self._order is None or self._order[0] != epoch:
            self._order = epoch, np.random.default_rng([self.seed, epoch, 0 if self.task == "und" else 1]).permutation(n)
        return int(self._order[1][offset])

    def record_at(self, position: int) -> dict:
        """The record at stream position ``position``."""
        return self.records[self.index_at(position)]

    def blanked(self, position: int) -> bool:
        """Whether the generation sample at ``position`` has its prompt blanked for CFG."""
        return self.task == "gen" and random.Random(f"{self.seed}/cfg/{position}").random() < self.cfg_drop

    def batch(self, counter: int, batch_size: int, rank: int = 0, world: int = 1) -> Batch:
        """Micro-batch number ``counter`` of this task, for ``rank`` of ``world`` processes."""
        start = (counter * world + rank) * batch_size
        examples = []
        for p in range(start, start + batch_size):
            i, blank = self.index_at(p), self.blanked(p)
            if self.examples is not None and not blank:
                examples.append(self.examples[i])
                continue
            examples.append(self.encoder(self.records[i], cfg_blank=blank))
        return self.adapter.collate(examples)


def micro_batches_per_step(grad_accum: int, ratio: dict[str, int], mixing: str = "both") -> int:
    """How many micro-batches one optimizer step has (the length of every :func:`step_schedule`)."""
    return grad_accum * (sum(ratio.values()) if mixing == "both" else 1)


def _is_und(step: int, seed: int, p_und: float) -> bool:
    """``data.mixing=random``: whether step ``step`` is an understanding step."""
    return random.Random(f"{seed}/task/{step}").random() < p_und


#: (seed, ratio_und, ratio_gen) -> the draws of steps 0, 1, ... (1: und), extended on demand
_DRAWS: dict[tuple[int, int, int], bytearray] = {}


def _und_steps_before(step: int, ratio: dict[str, int], mixing: str, seed: int) -> int:
    """How many of steps ``0 .. step - 1`` are understanding steps (``random`` or ``alternate``)."""
    und, gen = ratio.get("und", 0), ratio.get("gen", 0)
    if mixing == "alternate":
        full, rest = divmod(step, und + gen)
        return full * und + min(rest, und)
    draws = _DRAWS.setdefault((seed, und, gen), bytearray())
    p_und = und / (und + gen)
    while len(draws) <= step:  # a memo of the pure draws: 1 byte per step
        draws.append(_is_und(len(draws), seed, p_und))
    return draws.count(1, 0, step)


def step_task(step: int, ratio: dict[str, int], mixing: str, seed: int = 0) -> str:
    """The one task of optimizer step ``step`` under ``random`` or ``alternate`` mixing."""
    und, gen = ratio.get("und", 0), ratio.get("gen", 0)
    if mixing == "alternate":
        is_und = step % (und + gen) < und
    elif mixing == "random":
        is_und = _is_und(step, seed, und / (und + gen))
    else:
        raise ValueError(f"step_task: mixing {mixing!r} has no single task per step")
    return "und" if is_und else "gen"


def step_schedule(
    step: int, grad_accum: int, ratio: dict[str, int], mixing: str = "both", seed: int = 0
) -> list[tuple[str, int]]:
    """The micro-batches of optimizer step ``step`` (0-based): ``[(task, counter), ...]``.

    ``counter`` numbers the task's micro-batches over the whole run, so it also gives the
    data position. Tasks with ratio 0 are absent (``ratio`` holds the tasks that run).

    * ``both``: ``grad_accum`` rounds of ``ratio["und"]`` und then ``ratio["gen"]`` gen micro-batches;
    * ``random``: ``grad_accum`` micro-batches of one task, und with probability
      ``ratio_und / (ratio_und + ratio_gen)`` from ``random.Random(f"{seed}/task/{step}")``;
    * ``alternate``: ``grad_accum`` micro-batches of one task; steps cycle through
      ``ratio_und`` und steps then ``ratio_gen`` gen steps.

    Under ``random``/``alternate`` a task's counters continue from its steps before ``step``
    (counted, not stored), so the result depends on ``step`` alone: the same on every rank,
    and after a resume.
    """
    if mixing not in MIXINGS:
        raise ValueError(f"step_schedule: mixing must be one of {MIXINGS}, got {mixing!r}")
    if mixing != "both":
        task = step_task(step, ratio, mixing, seed)
        und_before = _und_steps_before(step, ratio, mixing, seed)
        before = und_before if task == "und" else step - und_before
        return [(task, before * grad_accum + j) for j in range(grad_accum)]
    out = []
    for round_ in range(grad_accum):
        for task in ("und", "gen"):
            k = ratio.get(task, 0)
            for j in range(k):
                out.append((task, (step * grad_accum + round_) * k + j))
    return out
