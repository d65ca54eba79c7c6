"""Profiling exactly what a run trains on: ``aia profile --config RUN.yaml``.

An ``aia train`` config (:class:`aia.training.config.RunConfig`) fixes the model, the data
files, the prompt and span choices and the image preprocessing (``data.image_area``,
``data.gen_image_transform``, ``data.image_root``, ``data.max_length`` with training's
truncation). :func:`run_inputs` reads them for one task and :func:`profile_run` profiles with
them, so every record is encoded by the same :class:`~aia.data.encoder.RecordEncoder` policy
as in training: the profiled sequence of a record is the training stream's, token for token
and pixel for pixel (``tests/measure/test_run_config.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from aia.adapters.prompts import PromptConfig
from aia.core.spans import SpanConfig
from aia.data.encoder import Preprocessing
from aia.errors import ConfigError
from aia.measure.decode import DecodeSettings, decode_profile
from aia.measure.profile import PROFILE_MODES, IntensityProfile
from aia.measure.teacher import profile_model
from aia.training.config import RunConfig, load_config

__all__ = ["RunInputs", "profile_run", "run_inputs"]


@dataclass(frozen=True)
class RunInputs:
    """What a run config fixes for profiling one task.

    Attributes:
        model: the run's ``model.path``.
        dtype: the run's ``model.dtype``.
        task: ``"und"`` or ``"gen"``.
        data: the task's data file (``data.und`` or ``data.gen``).
        span_config: the run's ``spans``.
        prompt_config: the run's ``prompts``.
        preprocessing: the run's image steps and length policy
            (:meth:`~aia.data.encoder.Preprocessing.from_data_config`).
    """

    model: str
    dtype: str
    task: str
    data: Path
    span_config: SpanConfig
    prompt_config: PromptConfig
    preprocessing: Preprocessing

    def encoding(self) -> dict:
        """The keyword arguments of :func:`~aia.measure.teacher.profile_model` and
        :func:`~aia.measure.decode.decode_profile` that shape a record's sequence."""
        return {
            "span_config": self.span_config,
            "prompt_config": self.prompt_config,
            "preprocessing": self.preprocessing,
        }


def run_inputs(cfg: RunConfig | str | Path, task: str | None = None) -> RunInputs:
    """The profiling inputs of a run config (a :class:`RunConfig`, or the path of its YAML).

    Args:
        cfg: the run config.
        task: ``"und"`` or ``"gen"``; None: the run's only task with data.

    Raises:
        ConfigError: the run has no data for ``task``, or data for both tasks and no ``task``
            was given.
    """
    if not isinstance(cfg, RunConfig):
        cfg = load_config(cfg, check_paths=False)
    tasks = [t for t in ("und", "gen") if getattr(cfg.data, t)]
    if task is None:
        if len(tasks) != 1:
            have = "both und and gen data" if tasks else "no data (data.und, data.gen)"
            raise ConfigError(f"the run config has {have}; name the task to profile (--task und|gen)")
        task = tasks[0]
    if task not in tasks:
        raise ConfigError(f"data.{task}: the run config has no {task!r} data to profile")
    return RunInputs(
        model=cfg.model.path,
        dtype=cfg.model.dtype,
        task=task,
        data=Path(getattr(cfg.data, task)),
        span_config=cfg.spans,
        prompt_config=cfg.prompts,
        preprocessing=Preprocessing.from_data_config(cfg.data),
    )


def profile_run(
    cfg: RunConfig | str | Path,
    task: str | None = None,
    *,
    model: nn.Module | str | Path | None = None,
    processor=None,
    mode: str = "teacher",
    samples: int = 100,
    settings: DecodeSettings = DecodeSettings(),
    data: str | Path | None = None,
    device: str = "cpu",
    **kwargs,
) -> IntensityProfile:
    """Profile ``task`` of a run as it trains: its model (unless ``model`` is given, e.g. the
    run's fine-tuned checkpoint), data, prompts, spans and image preprocessing.

    Args:
        cfg: the run config (or its YAML path).
        task: ``"und"`` or ``"gen"`` (None: the run's only task).
        model, processor: the model to profile, or a model directory (e.g. the run's fine-tuned
            ``final/``) loaded in ``model.dtype``; None: the run's ``model.path``.
        mode: ``"teacher"`` (:func:`~aia.measure.teacher.profile_model`) or ``"decode"``
            (:func:`~aia.measure.decode.decode_profile`, with ``settings``).
        samples: how many usable samples to measure.
        settings: decode mode's :class:`~aia.measure.decode.DecodeSettings`.
        data: another data file of the task, preprocessed by the run's policy (None: the run's).
        device: where a model loaded here goes.
        **kwargs: the other arguments of the profiling function (``method``, ``batch_size``,
            ``progress``, ``model_name``, ``max_length``).
    """
    if mode not in PROFILE_MODES:
        raise ValueError(f"mode must be one of {PROFILE_MODES}, got {mode!r}")
    inputs = run_inputs(cfg, task)
    if model is None or isinstance(model, str | Path):
        import torch

        from aia.adapters import load_model

        model, processor = load_model(model or inputs.model, dtype=getattr(torch, inputs.dtype), device=device)
    model.eval()
    args = (model, processor, data if data is not None else inputs.data, inputs.task, samples)
    if mode == "decode":
        return decode_profile(*args, settings, **inputs.encoding(), **kwargs)
    return profile_model(*args, **inputs.encoding(), **kwargs)
