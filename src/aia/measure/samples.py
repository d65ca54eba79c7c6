"""The bookkeeping that teacher forcing (:mod:`.teacher`) and decoding (:mod:`.decode`) share:
the measured curves, the records skipped or excluded, the progress bar, the stderr report,
and the :class:`~aia.measure.profile.IntensityProfile` at the end."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from aia.adapters.base import AdapterBase, unwrap
from aia.data.encoder import LengthPolicy, Preprocessing
from aia.errors import DataError
from aia.measure.profile import IntensityProfile

__all__ = [
    "SampleTally",
    "check_samples",
    "measure_policy",
    "model_length_limit",
    "model_name_of",
    "prompts_of",
    "stack_samples",
]


def check_samples(samples: int) -> None:
    """Raise a ValueError unless ``samples`` (how many samples to measure) is >= 1."""
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")


def stack_samples(rows: list, data: str | Path, n_records: int, task: str, samples: int) -> np.ndarray:
    """The measured samples' curves ``[N, L]`` (``rows``: N tensors ``[L]``), with a warning on
    stderr when fewer than ``samples`` could be measured.

    Raises:
        DataError: ``rows`` is empty (none of the ``n_records`` records of ``data`` could be measured).
    """
    if not rows:
        raise DataError(f"none of the {n_records} {task!r} records could be measured", path=data)
    if len(rows) < samples:
        print(f"aia profile: only {len(rows)} usable {task!r} samples (asked for {samples})", file=sys.stderr)
    return np.stack([np.asarray(r, dtype=np.float64) for r in rows])


def model_length_limit(model: nn.Module, max_length: int | None) -> int | None:
    """``max_length``, else the language model's ``max_position_embeddings`` (None if it has none).

    Raises:
        ValueError: ``max_length`` < 1.
    """
    if max_length is not None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        return max_length
    config = unwrap(model).config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def measure_policy(model: nn.Module, max_length: int | None, preprocessing: Preprocessing | None) -> Preprocessing:
    """The preprocessing a profile's records get (:class:`aia.data.encoder.Preprocessing`).

    ``preprocessing`` is a run's (``aia profile --config``: its image steps, and over-long
    samples truncated as ``aia train`` does); without it, images go to the processor as they
    are and samples longer than the limit are skipped and counted (positions beyond the model's
    range give meaningless attention). The limit: ``max_length`` when given, else the policy's,
    else the model's ``max_position_embeddings`` (:func:`model_length_limit`).
    """
    policy = preprocessing if preprocessing is not None else Preprocessing(length=LengthPolicy(over_long="skip"))
    if max_length is not None or policy.length.max_length is None:
        policy = replace(policy, length=replace(policy.length, max_length=model_length_limit(model, max_length)))
    return policy


def prompts_of(adapter: AdapterBase) -> dict | None:
    """The adapter's resolved prompt choices, for the profile's settings (None for families without any)."""
    return dataclasses.asdict(adapter.prompt_config) if adapter.prompt_config is not None else None


def model_name_of(model: nn.Module) -> str:
    """The name a profile records by default: the model's ``name_or_path``, else its class name."""
    base = unwrap(model)
    return getattr(base.config, "name_or_path", "") or type(base).__name__


class SampleTally:
    """Per-sample curves of one task, up to ``samples`` of them, and the records passed over.

    Args:
        task: ``"und"`` or ``"gen"``.
        samples: how many usable samples to collect (>= 1).
        mode: ``"teacher"`` or ``"decode"`` (the progress bar's label and the profile's mode).
        progress: show a progress bar on stderr.
        excluded_note: appended to the stderr line that counts the excluded samples.
        records: how many records of the task the data holds (None: unknown). The bar then counts
            the samples that will be measured, ``min(samples, records)``, and shrinks as records
            are skipped or excluded, so that it ends full and its ETA holds.
    """

    def __init__(
        self, task: str, samples: int, mode: str, progress: bool, excluded_note: str = "", records: int | None = None
    ):
        check_samples(samples)
        self.task, self.samples, self.mode, self.excluded_note = task, samples, mode, excluded_note
        self.rows: list[torch.Tensor] = []
        self.bad = self.excluded = 0
        self.left = records  # records not yet used or passed over
        label = "profile" if mode == "teacher" else mode
        total = samples if records is None else min(samples, records)
        self.bar = tqdm(total=total, desc=f"{label} {task}", unit="sample", disable=not progress, file=sys.stderr)

    def _taken(self) -> None:
        """One record used or passed over: the bar's total becomes what can still be measured."""
        if self.left is None:
            return
        self.left = max(self.left - 1, 0)
        total = len(self.rows) + max(min(self.missing, self.left), 0)
        if total != self.bar.total:
            self.bar.total = total
            self.bar.refresh()

    @property
    def missing(self) -> int:
        """How many more usable samples are wanted."""
        return self.samples - len(self.rows)

    @property
    def full(self) -> bool:
        return self.missing <= 0

    def skip(self, err: Exception) -> None:
        """A record that could not be used (missing/unreadable image, bad record): one stderr line."""
        self.bad += 1
        self._taken()
        print(f"aia profile: skipped: {err}", file=sys.stderr)

    def add(self, curve: torch.Tensor | None) -> None:
        """One sample's ``[L]`` curve; None: its query or key set is empty (excluded). A curve
        beyond ``samples`` is dropped."""
        if curve is None:
            self.excluded += 1
        elif not self.full:
            self.rows.append(curve)
            self.bar.update(1)
        self._taken()

    def profile(
        self, model: nn.Module, model_name: str | None, data: Path, n_records: int, settings: dict | None = None
    ) -> IntensityProfile:
        """Close the bar, report what was passed over on stderr, and build the profile.

        Raises:
            DataError: if not one sample could be measured.
        """
        self.bar.close()
        skipped = self.bad + self.excluded
        if skipped:
            print(
                f"aia profile: {self.bad} sample(s) skipped for missing/unreadable images or bad records, "
                f"{self.excluded} excluded for an empty query or key set{self.excluded_note}",
                file=sys.stderr,
            )
        per_sample = stack_samples(self.rows, data, n_records, self.task, self.samples)  # [N, L]
        name = model_name or model_name_of(model)
        return IntensityProfile.from_per_sample(
            name, self.task, per_sample, skipped=skipped, mode=self.mode, settings=settings
        )
