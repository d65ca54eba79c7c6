"""Teacher-forced measurement of a model's layer-wise interaction intensity on a data file.

``profile_model`` runs N samples of one task through the model's adapter inside
:func:`aia.capture` and returns a :class:`~aia.measure.profile.IntensityProfile` (mean and std across
samples per layer, and every sample's curve). ``aia profile`` is a thin CLI over it.

Records whose image is missing or unreadable, or that are malformed, are skipped and
counted; samples whose query or key set is empty (no prompt text, no answer) carry no statistic and are
counted as excluded. Zero usable samples is an error.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from aia.adapters import get_adapter
from aia.attention import capture
from aia.core.spans import SpanConfig
from aia.data.records import task_records
from aia.errors import DataError, ImageError
from aia.measure.profile import IntensityProfile, check_samples, stack_samples

__all__ = ["profile_model"]

log = logging.getLogger(__name__)


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


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

    Returns:
        The :class:`~aia.measure.profile.IntensityProfile`; ``skipped`` counts records that could not be used.

    Raises:
        DataError: if not one sample could be measured.
    """
    check_samples(samples)
    data = Path(data)
    records = task_records(data, task)
    adapter = get_adapter(model, processor, span_config=span_config)
    device = next(model.parameters()).device
    rows: list[torch.Tensor] = []
    bad, excluded = 0, 0
    examples: list = []
    bar = tqdm(total=samples, desc=f"profile {task}", unit="sample", disable=not progress, file=sys.stderr)

    def flush():
        nonlocal excluded
        batch = adapter.collate(examples).to(device)
        with capture(model, method=method) as cap:
            adapter.forward(model, batch)
            intensity, valid = cap.intensity.float().cpu(), cap.valid.cpu()  # [L, B], [B]
        for b in range(intensity.shape[1]):
            if valid[b] and len(rows) < samples:
                rows.append(intensity[:, b])
                bar.update(1)
            elif not valid[b]:
                excluded += 1
        examples.clear()

    for record in records:
        if len(rows) >= samples:
            break
        try:
            examples.append(adapter.encode(record, task, data.parent))
        except (ImageError, DataError) as err:
            bad += 1
            print(f"aia profile: skipped: {err}", file=sys.stderr)
            continue
        if len(examples) >= min(batch_size, samples - len(rows)):
            flush()
    if examples and len(rows) < samples:
        flush()
    bar.close()
    skipped = bad + excluded
    if skipped:
        print(
            f"aia profile: {bad} sample(s) skipped for missing/unreadable images or bad records, "
            f"{excluded} excluded for an empty query or key set",
            file=sys.stderr,
        )
    per_sample = stack_samples(rows, data, len(records), task, samples)  # [N, L]
    name = model_name or getattr(model.config, "name_or_path", "") or type(model).__name__
    return IntensityProfile.from_per_sample(name, task, per_sample, skipped=skipped, mode="teacher")
