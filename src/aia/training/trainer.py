"""``aia train``: unified fine-tuning with NTP + lambda_task * AIA, on accelerate.

One optimizer step = ``grad_accum`` rounds of ``ratio_und`` understanding and
``ratio_gen`` generation micro-batches (``data.mixing=both``), or ``grad_accum``
micro-batches of one task drawn at random (``random``, as released) or in a fixed cycle
(``alternate``) (:func:`aia.training.streams.step_schedule`), the same schedule on every
rank. The run lasts ``train.max_steps`` steps or ``train.epochs`` epochs, and the LR follows
the released warm-up + decay curve (:mod:`aia.training.schedule`). Each micro-batch is one
task; its loss is the adapter's NTP
loss plus ``lambda_task * L_AIA`` (Eq. 2/3) from the intensities that
:func:`aia.capture` records during the same forward pass. With ``aia.enabled=false``
the capture is not entered at all: the run is the plain NTP baseline.

Distribution (DDP, FSDP, DeepSpeed ZeRO-3) is accelerate's: launch with
``accelerate launch --config_file configs/accelerate/<...>.yaml -m aia train CONFIG``.
Gradient accumulation is accelerate's ``accumulate``; the LR scheduler steps once per
optimizer step whatever the number of processes. The loss is normalised over the step's
global batch (:mod:`aia.training.step`), so ``W`` processes with ``data.batch_size=b`` train
as one process with ``W*b``, and ``train.grad_accum=2`` with ``b/2`` as ``1`` with ``b``.

The loop below reads top to bottom: :func:`aia.training.setup.setup` builds and prepares
the run, :func:`aia.training.checkpoint.start_or_resume` picks up a checkpoint,
:func:`aia.training.step.optimizer_step` runs one step, :class:`aia.training.metrics.MetricsWriter`
logs it, :mod:`aia.training.checkpoint` saves.

Outputs in ``train.output_dir``:

* ``metrics.jsonl``: one JSON object per logged step (keys in :data:`aia.training.metrics.METRIC_KEYS`),
  the losses of the step's global batch (all ranks, all micro-batches; normalisation in
  :mod:`aia.training.step`);
* ``tensorboard/``: the same scalars, and per-layer intensities as ``intensity/<task>/layer_<l>``;
* ``checkpoint-<step>/``: ``model/`` (``save_pretrained`` + processor, loadable by plain
  transformers) and the resumable state (model, optimizer, scheduler, RNG; safetensors, JSON
  and weights-only files, :mod:`aia.training.state`); written under a temporary name and
  renamed when complete; ``latest`` names the newest complete one;
* ``final/``: the trained model and processor;
* ``attention_routes.json``: the intensity routes the first step ran and the fused routes'
  self-check verdicts (:func:`aia.core.intensity.kernel_routes`).

Ctrl-C stops the run with :class:`Interrupted` ("interrupted at step N; rerun the same
command to resume"); the CLI prints that line and exits with status 130.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from aia.core.intensity import kernel_routes
from aia.errors import InputError
from aia.training.checkpoint import run_lock, save_checkpoint, save_final, start_or_resume
from aia.training.config import RunConfig, TrainConfig
from aia.training.metrics import METRIC_KEYS, MetricsWriter
from aia.training.setup import describe, freeze, setup
from aia.training.step import UnifiedStep, batch_tensors, optimizer_step

__all__ = ["METRIC_KEYS", "TrainResult", "UnifiedStep", "batch_tensors", "freeze", "train"]


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    final_dir: Path
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)
    is_main_process: bool = True
    """Whether this process is the run's main one (the one that wrote the files)."""


class DivergedError(InputError):
    """A loss term or the gradient norm became NaN or infinite: the run stops (exit status 2)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says the step and how to resume."""


def _every(n: int, step: int) -> bool:
    """Whether 1-based ``step`` is one of every ``n`` (never when ``n`` is 0)."""
    return bool(n) and step % n == 0


def _logs_intensity(cfg: RunConfig, step: int) -> bool:
    return cfg.aia.enabled and _every(cfg.train.intensity_every, step)


def _skipped_before(checkpoint: Path | None) -> int:
    """The non-finite steps skipped in a row up to ``checkpoint`` (0 for a fresh start)."""
    if checkpoint is None:
        return 0
    return json.loads((checkpoint / "trainer_state.json").read_text()).get("skipped_in_a_row", 0)


def _saves_checkpoint(train_cfg: TrainConfig, step: int, total: int) -> bool:
    """A checkpoint after 1-based ``step``, other than the last one's (step ``total``, always saved)."""
    return _every(train_cfg.save_every, step) and step < total


def train(cfg: RunConfig, model: nn.Module | None = None, processor=None, accelerator=None) -> TrainResult:
    """Fine-tune a unified model with NTP + lambda * AIA (or the NTP baseline).

    Args:
        cfg: the validated run config.
        model, processor: an already built model and processor (otherwise loaded from
            ``cfg.model.path``).
        accelerator: an ``accelerate.Accelerator`` to use (default: a new one).

    Returns:
        A :class:`TrainResult` with the metrics history of this process.
    """
    out = Path(cfg.train.output_dir)
    with run_lock(out):  # one trainer per output folder; also checks that it can be written
        return _train(cfg, out, model, processor, accelerator)


def _train(cfg: RunConfig, out: Path, model, processor, accelerator) -> TrainResult:
    run = setup(cfg, model, processor, accelerator)
    acc = run.accelerator
    start, resumed_from = start_or_resume(run, out, cfg.train.resume)
    if acc.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        print(describe(run, resumed_from), file=sys.stderr)
    metrics = MetricsWriter(out, start, enabled=acc.is_main_process)
    total = run.plan.total_steps
    bar = tqdm(total=total, initial=start, desc="aia train", disable=not run.progress, file=sys.stderr)
    history: list[dict] = []
    streak = _skipped_before(resumed_from)  # non-finite steps skipped in a row
    step = start + 1
    try:
        for step in range(start + 1, total + 1):  # 1-based: the step being taken
            streak = _take_step(run, out, step, total, streak, metrics, bar, history)
            if step == start + 1 and acc.is_main_process:  # the attention routes that ran (self-checked)
                (out / "attention_routes.json").write_text(json.dumps(kernel_routes(), indent=1))
        bar.close()
        if start < total:
            save_checkpoint(run, out, total, skipped_in_a_row=streak)
        final = save_final(run, out, total)
    except KeyboardInterrupt:
        bar.close()
        raise Interrupted(f"interrupted at step {step}; rerun the same command to resume") from None
    metrics.close()
    skipped = {t: len(s.rejected) for t, s in run.streams.items()}
    return TrainResult(output_dir=out, final_dir=final, history=history, skipped=skipped, is_main_process=acc.is_main_process)


def _take_step(run, out: Path, step: int, total: int, streak: int, metrics: MetricsWriter, bar, history: list) -> int:
    """Take 1-based ``step``: log it, checkpoint after it when due. Returns the non-finite steps
    skipped in a row up to it (``streak`` before it)."""
    cfg, acc = run.cfg, run.accelerator
    lr = run.scheduler.get_last_lr()[0]
    t0 = time.perf_counter()
    sums = optimizer_step(run, step - 1)
    bad = sums.non_finite(acc)
    if bad is not None and (not sums.skipped or streak >= cfg.train.skip_nonfinite):
        # stop before anything is logged or saved from a non-finite state
        raise DivergedError(
            f"step {step}: {bad} is not finite (lr {lr:.3g})"
            + (f", after {streak} skipped step(s) in a row" if streak else "")
            + "; nothing was saved from this step, the last good checkpoint is "
            + ((out / "latest").read_text().strip() if (out / "latest").is_file() else "none")
        )
    streak = streak + 1 if bad is not None else 0
    run.scheduler.step()
    step_time = time.perf_counter() - t0
    bar.update(1)
    if bad is not None:  # skipped: parameters and optimizer state as before the step
        row = {"step": step, "lr": lr, "time/step_s": step_time, "skipped": bad}
        if acc.is_main_process:
            print(f"aia train: step {step}: {bad} is not finite; its update was skipped "
                  f"({streak} of train.skip_nonfinite={cfg.train.skip_nonfinite} in a row)", file=sys.stderr)
        history.append(row)
        metrics.write(row)
    elif _every(cfg.train.log_every, step) or _logs_intensity(cfg, step):  # collective: every rank
        row = sums.row(acc, step, lr, step_time, intensity=_logs_intensity(cfg, step))
        history.append(row)
        metrics.write(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
    if _saves_checkpoint(cfg.train, step, total):
        save_checkpoint(run, out, step, skipped_in_a_row=streak)
    return streak
