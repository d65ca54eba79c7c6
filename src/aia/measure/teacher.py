"""Teacher-forced measurement of a model's layer-wise interaction intensity on a data file.

``profile_model`` runs N samples of one task through the model's adapter inside
:func:`aia.capture` and returns a :class:`~aia.measure.profile.IntensityProfile` (mean and std across
samples per layer, and every sample's curve). ``aia profile`` is a thin CLI over it.

Records are encoded by :class:`aia.data.encoder.RecordEncoder`, the encoder ``aia train`` uses,
with the preprocessing given (a run's, :meth:`~aia.data.encoder.Preprocessing.from_data_config`:
then a record is measured exactly as that run trained on it) or, by default, images as they are
and over-long samples skipped. Records whose image is missing or unreadable, or that are
malformed, are skipped and counted; samples whose query or key set is empty (no prompt text, no
answer) carry no statistic and are counted as excluded. Zero usable samples is an error.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from aia.adapters import get_adapter
from aia.adapters.base import AdapterBase, Example
from aia.adapters.prompts import PromptConfig
from aia.attention import capture
from aia.core.spans import SpanConfig
from aia.data.encoder import Preprocessing, RecordEncoder
from aia.data.records import task_records
from aia.errors import DataError, ImageError
from aia.measure.profile import IntensityProfile
from aia.measure.samples import SampleTally, measure_policy, prompts_of

__all__ = ["profile_model"]


@torch.no_grad()
def profile_model(
    model: nn.Module,
    processor,
    data: str | Path,
    task: str,
    samples: int = 100,
    batch_size: int = 1,
    span_config: SpanConfig = SpanConfig(),
    method: str = "auto",
    model_name: str | None = None,
    progress: bool = True,
    max_length: int | None = None,
    prompt_config: PromptConfig | None = None,
    preprocessing: Preprocessing | None = None,
) -> IntensityProfile:
    """Teacher-forced per-layer intensity of ``model`` on the first ``samples`` usable records of ``task``.

    Args:
        model: a unified model with an adapter (:func:`aia.adapters.get_adapter`).
        processor: its processor.
        data: a JSON/JSONL file in the AIA data format (image paths relative to it).
        task: ``"und"`` or ``"gen"``; records of the other task are ignored.
        samples: how many usable samples to measure.
        batch_size: samples per forward pass (padding never enters a span).
        span_config: span choices.
        method: capture route (``"auto"``, ``"sdpa"``, ``"flex"``).
        model_name: recorded in the profile (default: the model's ``name_or_path``).
        progress: show a progress bar on stderr.
        max_length: longest sample in tokens (default: ``preprocessing``'s, else the model's
            ``max_position_embeddings``).
        prompt_config: prompt choices (:class:`~aia.adapters.prompts.PromptConfig`; default: the
            family's, which equal the checkpoint's own chat template).
        preprocessing: image steps and length policy (:class:`~aia.data.encoder.Preprocessing`;
            a run's: :meth:`~aia.data.encoder.Preprocessing.from_data_config`). Default: images
            as they are, samples longer than ``max_length`` skipped and counted
            (:func:`~aia.measure.samples.measure_policy`).

    Returns:
        The :class:`~aia.measure.profile.IntensityProfile`; ``skipped`` counts records that could not be used.

    Raises:
        DataError: if not one sample could be measured.
    """
    data = Path(data)
    records = task_records(data, task)
    adapter = get_adapter(model, processor, span_config=span_config, prompt_config=prompt_config)
    policy = measure_policy(model, max_length, preprocessing)
    encode = RecordEncoder(adapter, task, data.parent, policy)
    tally = SampleTally(task, samples, "teacher", progress, records=len(records))
    examples: list[Example] = []
    for record in records:
        if tally.full:
            break
        try:
            examples.append(encode(record))
        except (ImageError, DataError) as err:
            tally.skip(err)
            continue
        if len(examples) >= min(batch_size, tally.missing):
            _measure_batch(model, adapter, examples, method, tally)
            examples = []
    if examples and not tally.full:
        _measure_batch(model, adapter, examples, method, tally)
    settings = {
        "spans": asdict(span_config),
        "prompts": prompts_of(adapter),
        "method": method,
        "batch_size": batch_size,
        "max_length": policy.length.max_length,
        "preprocessing": policy.to_dict(),
    }
    return tally.profile(model, model_name, data, len(records), settings)


def _measure_batch(model: nn.Module, adapter: AdapterBase, examples: list[Example], method: str, tally: SampleTally):
    """One forward pass over ``examples`` inside :func:`aia.capture`; every sample's curve (None
    where its query or key set is empty) goes to ``tally``."""
    batch = adapter.collate(examples).to(next(model.parameters()).device)
    with capture(model, method=method) as cap:
        adapter.forward(model, batch)
        intensity, valid = cap.intensity.float().cpu(), cap.valid.cpu()  # [L, B], [B]
    for b in range(intensity.shape[1]):
        tally.add(intensity[:, b] if valid[b] else None)
