"""Training data: validated per-task sample streams and a deterministic und:gen schedule.

Files are read by :func:`aia.data.read_records` (JSON list, JSON Lines or parquet). Before training, every record is encoded once by the
model's adapter: records whose image is missing or unreadable, that have no image, or
that cannot fit ``max_length`` without cutting their image are dropped and counted; if
more than ``max_bad_fraction`` of a file is bad, training stops with an error naming
examples. A sample longer than ``max_length`` whose image ends before the limit is
truncated after it.

Everything that picks data is a pure function of ``(seed, step)``, so a resumed run
draws exactly what the uninterrupted run would have drawn, and every rank agrees on
the task of every micro-batch:

* an optimizer step is ``grad_accum`` rounds; a round is ``ratio_und`` understanding
  micro-batches then ``ratio_gen`` generation micro-batches (:func:`step_schedule`);
* micro-batch ``c`` of a task on rank ``r`` of ``W`` takes stream positions
  ``(c * W + r) * bs ... + bs - 1``; position ``p`` is record ``perm_e[p mod N]`` of epoch
  ``e = p // N``, with a fresh permutation per epoch;
* a generation sample at position ``p`` is CFG-blanked iff a generator seeded by
  ``(seed, p)`` draws below ``cfg_drop``.
"""

from __future__ import annotations

import random
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from aia.adapters import Adapter, Batch, Example
from aia.core.spans import Role
from aia.data.records import infer_task, read_records
from aia.errors import DataError, ImageError

__all__ = ["TaskStream", "step_schedule", "truncate"]


def truncate(example: Example, max_length: int) -> Example | None:
    """``example`` cut to ``max_length`` tokens, or ``None`` if that would cut its image."""
    if len(example) <= max_length:
        return example
    image = (example.roles == Role.IMAGE) | (example.roles == Role.IMAGE_MARKER)
    last_image = int(image.nonzero().max()) if image.any() else -1
    if last_image >= max_length:
        return None
    return replace(
        example,
        input_ids=example.input_ids[:max_length],
        roles=example.roles[:max_length],
        labels=example.labels[:max_length],
    )


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
    """

    def __init__(
        self,
        path: str | Path,
        task: str,
        adapter: Adapter,
        max_length: int,
        max_bad_fraction: float,
        seed: int,
        cfg_drop: float = 0.0,
        progress: bool = True,
        cache: bool = False,
    ):
        self.path, self.task, self.adapter = Path(path), task, adapter
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
                example = adapter.encode(record, task, self.path.parent)
            except (ImageError, DataError, KeyError, TypeError) as err:
                self.rejected.append(Rejected(i, f"{type(err).__name__}: {err}"))
                continue
            cut = truncate(example, max_length)
            if cut is None:
                self.rejected.append(Rejected(i, f"too long ({len(example)} > {max_length} tokens) to fit its image"))
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
            example = self.adapter.encode(self.records[i], self.task, self.path.parent, cfg_blank=blank)
            examples.append(truncate(example, self.max_length))
        return self.adapter.collate(examples)


def step_schedule(step: int, grad_accum: int, ratio: dict[str, int]) -> list[tuple[str, int]]:
    """The micro-batches of optimizer step ``step``: ``[(task, counter), ...]``.

    ``counter`` numbers the task's micro-batches over the whole run, so it also gives the
    data position. Tasks with ratio 0 are absent.
    """
    out = []
    for round_ in range(grad_accum):
        for task in ("und", "gen"):
            k = ratio.get(task, 0)
            for j in range(k):
                out.append((task, (step * grad_accum + round_) * k + j))
    return out
