"""Teacher-forced measurement of a model's layer-wise interaction intensity on a data file.

``profile_model`` runs N samples of one task through the model's adapter inside
:func:`aia.capture` and returns a :class:`~aia.profile_io.Profile` (mean and std across
samples per layer, and every sample's curve). ``aia profile`` is a thin CLI over it.

Records whose image is missing or unreadable, or that are malformed, are skipped and
counted; samples whose query or key set is empty (no prompt text, no answer) carry no statistic and are
counted as excluded. Zero usable samples is an error.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .adapters import get_adapter
from .attention import capture
from .data import DataError, ImageError, infer_task, load_records
from .profile_io import Profile
from .spans import SpanConfig

__all__ = ["NoUsableSamples", "load_model", "profile_model"]

log = logging.getLogger(__name__)


class NoUsableSamples(ValueError):
    """Raised when not one sample of the requested task could be measured."""


def load_model(model_dir: str | Path, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """Load a saved unified model and its processor, offline, from a directory.

    The model class comes from ``config.json``'s ``architectures`` (any class transformers
    exports, e.g. ``JanusForConditionalGeneration``).

    Returns:
        ``(model, processor)``, the model in eval mode on ``device``.
    """
    import transformers

    model_dir = Path(model_dir)
    config_path = model_dir / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{model_dir}: no config.json; expected a directory written by save_pretrained")
    architectures = json.loads(config_path.read_text()).get("architectures") or []
    if not architectures or not hasattr(transformers, architectures[0]):
        raise ValueError(f"{config_path}: 'architectures' names no transformers model class: {architectures}")
    cls = getattr(transformers, architectures[0])
    kwargs = {"dtype": dtype} if dtype is not None else {}
    model = cls.from_pretrained(model_dir, attn_implementation="sdpa", **kwargs).to(device).eval()
    from .digits import VQ_FILE, DigitsProcessor

    if (model_dir / VQ_FILE).is_file():  # the digits processor carries its VQ image tokenizer (aia.digits)
        return model, DigitsProcessor.from_pretrained(model_dir)
    try:
        processor = transformers.AutoProcessor.from_pretrained(model_dir)
    except ImportError:
        # Qwen-VL processors need torchvision for their video processor; images need none.
        from .adapters.reference import REFERENCE_MODELS, load_image_only_processor

        if architectures[0] not in REFERENCE_MODELS:
            raise
        processor = load_image_only_processor(model_dir)
    return model, processor


def _task_records(data: str | Path, task: str, samples: int) -> tuple[Path, list[dict]]:
    """Check ``task`` and ``samples`` of a profiling run; ``data`` as a path and its records of ``task``.

    Raises:
        NoUsableSamples: if ``data`` holds no record of ``task``.
    """
    if task not in ("und", "gen"):
        raise ValueError(f"task must be 'und' or 'gen', got {task!r}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    data = Path(data)
    records = [r for r in load_records(data) if infer_task(r) == task]
    if not records:
        raise NoUsableSamples(f"{data}: no {task!r} records")
    return data, records


def _per_sample(rows: list[torch.Tensor], data: Path, records: list[dict], task: str, samples: int) -> np.ndarray:
    """The measured samples' curves ``[N, L]``, with a warning on stderr when fewer than ``samples``.

    Raises:
        NoUsableSamples: if ``rows`` is empty (none of ``records`` could be measured).
    """
    if not rows:
        raise NoUsableSamples(f"{data}: none of the {len(records)} {task!r} records could be measured")
    if len(rows) < samples:
        print(f"aia profile: only {len(rows)} usable {task!r} samples (asked for {samples})", file=sys.stderr)
    return torch.stack(rows).numpy()


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
) -> Profile:
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
        The :class:`~aia.profile_io.Profile`; ``skipped`` counts records that could not be used.

    Raises:
        NoUsableSamples: if not one sample could be measured.
    """
    data, records = _task_records(data, task, samples)
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
    per_sample = _per_sample(rows, data, records, task, samples)  # [N, L]
    name = model_name or getattr(model.config, "name_or_path", "") or type(model).__name__
    return Profile.from_per_sample(name, task, per_sample, skipped=skipped, mode="teacher")
