"""How long a run is and how its learning rate moves: the epoch, the warm-up, the LR curve.

**The LR curve** is the released AIA code's (``trainer/utils/scheduler.py:15-29``), with
``it`` the 0-based optimizer step, ``W`` the warm-up length in steps (may be fractional),
``S`` the run's steps, ``peak = optim.lr`` and ``floor = optim.min_lr``::

    it < W:                  (it + 1) / W * (peak - floor) + floor          # every kind but constant
    cosine:                  floor + 0.5 * (peak - floor) * (1 + cos(pi * (it - W) / (S - W)))
    linear:                  floor + (peak - floor) * ((S - it) / (S - W))
    constant_with_warmup:    peak
    constant:                peak at every step (no warm-up)

Step ``it`` (metrics row ``step = it + 1``) runs at ``learning_rate(it, ...)``, the value
its row logs as ``lr``. The expressions are evaluated in the released code's order, so the
logged values equal the released formula bit for bit. A fractional ``W`` (the released
``warmup_epochs * iter_per_epoch``) makes the last warm-up step overshoot the peak by up
to a factor ``ceil(W) / W``, as in the released code.

**An epoch** is the released code's ``iter_per_epoch = len(gen loader) // p_gen``
(``trainer_t2i.py:70,74``; loader 0 is the generation loader, ``t2i_dataset.py:193-210``)
adapted to our streams: the optimizer steps after which the *reference task* (generation
if the run has generation data, else understanding) has drawn, on average, one pass of its
data::

    batches = ceil(N / world) // batch_size          # len(DataLoader(DistributedSampler, drop_last=True))
    per_step = grad_accum * ratio_ref                # data.mixing=both: micro-batches of it per step
    per_step = grad_accum * ratio_ref / (ratio_und + ratio_gen)   # random, alternate: expected share
    steps_per_epoch = batches // per_step            # a float under random/alternate, as released

``N`` is the task's usable samples (after bad ones are dropped). ``train.epochs = E`` runs
``int(E * steps_per_epoch)`` steps (``train.py:49``) and ``optim.warmup_epochs = w`` warms up
over ``W = w * steps_per_epoch`` steps (``trainer/__init__.py:12``). The stream itself never
stops at an epoch's end: positions run on into the next epoch's permutation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from torch.optim.lr_scheduler import LRScheduler

from aia.errors import ConfigError
from aia.training.config import DEFAULT_MAX_STEPS

__all__ = ["LRSchedule", "Plan", "learning_rate", "plan", "steps_per_epoch"]

def learning_rate(it: int, peak: float, floor: float, warmup: float, total: int, kind: str = "cosine") -> float:
    """The learning rate of 0-based optimizer step ``it`` (the formula in the module docstring)."""
    if kind == "constant":
        return peak
    if it < warmup:
        return (it + 1) / warmup * (peak - floor) + floor
    if total - warmup <= 0:  # only after the last step (it == total): nothing left to decay over
        return peak if kind == "constant_with_warmup" else floor
    if kind == "cosine":
        return floor + 0.5 * (peak - floor) * (1 + math.cos(math.pi * (it - warmup) / (total - warmup)))
    if kind == "linear":
        return floor + (peak - floor) * ((total - it) / (total - warmup))
    if kind == "constant_with_warmup":
        return peak
    raise ValueError(f"unknown schedule {kind!r}")


class LRSchedule(LRScheduler):
    """:func:`learning_rate` as a torch LR scheduler, stepped once per optimizer step.

    Each parameter group's peak is its initial ``lr``. The value is set as it is computed
    (not as a factor of the peak), so it equals :func:`learning_rate` exactly. ``state_dict``
    holds the step, not the curve's shape (kind, warm-up, length, floor, peaks): those come
    from the run's config, so a resume that may change ``train.max_steps``, ``optim.lr`` or
    ``optim.min_lr``
    (:data:`aia.training.checkpoint.RESUMABLE_CHANGES`) continues on the new curve, and
    loading sets the groups' ``lr`` for the resumed step.
    """

    _SHAPE = ("kind", "warmup", "total", "floor", "base_lrs")

    def __init__(self, optimizer, kind: str, warmup: float, total: int, floor: float, last_epoch: int = -1):
        self.kind, self.warmup, self.total, self.floor = kind, float(warmup), int(total), float(floor)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        it = self.last_epoch
        return [learning_rate(it, peak, self.floor, self.warmup, self.total, self.kind) for peak in self._peaks()]

    def _peaks(self) -> list[float]:
        """The peak of each parameter group the optimizer holds now. DeepSpeed ZeRO-3 regroups the
        parameters into its own partitions after the scheduler is built: one shared peak then
        applies to every group."""
        groups = len(self.optimizer.param_groups)
        if len(self.base_lrs) == groups:
            return self.base_lrs
        if len(set(self.base_lrs)) == 1:
            return [self.base_lrs[0]] * groups
        raise RuntimeError(
            f"the optimizer now has {groups} parameter groups, not the {len(self.base_lrs)} it had with "
            f"different peak learning rates {self.base_lrs}: cannot tell which peak applies to which group"
        )

    def state_dict(self) -> dict:
        return {k: v for k, v in super().state_dict().items() if k not in self._SHAPE}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict({k: v for k, v in state_dict.items() if k not in self._SHAPE})
        values = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, values, strict=True):
            group["lr"] = lr
        self._last_lr = values


@dataclass(frozen=True)
class Plan:
    """A run's length and warm-up in optimizer steps, resolved from the config and the data."""

    total_steps: int
    warmup_steps: float
    """``W`` of the LR formula (fractional under ``warmup_epochs``/``warmup_ratio``, as released)."""
    steps_per_epoch: float
    """Optimizer steps in one epoch (see the module docstring); 0 when the data are too few
    for one batch per process."""
    epoch_task: str
    """The reference task of the epoch."""

    def describe(self) -> str:
        epochs = f" = {self.total_steps / self.steps_per_epoch:.3g} epochs" if self.steps_per_epoch else ""
        return (
            f"{self.total_steps} steps{epochs} ({self.steps_per_epoch:g} steps per {self.epoch_task} epoch), "
            f"warm-up {self.warmup_steps:g} steps"
        )


def steps_per_epoch(
    sizes: dict[str, int], ratio: dict[str, int], mixing: str, grad_accum: int, batch_size: int, world: int
) -> tuple[float, str]:
    """``(steps_per_epoch, reference task)`` for streams of ``sizes`` usable samples per task."""
    task = "gen" if "gen" in ratio else "und"
    batches = math.ceil(sizes[task] / world) // batch_size
    if mixing == "both":
        per_step = grad_accum * ratio[task]
    else:
        per_step = grad_accum * ratio[task] / sum(ratio.values())
    return batches // per_step, task


def plan(cfg, sizes: dict[str, int], ratio: dict[str, int], world: int) -> Plan:
    """The :class:`Plan` of run config ``cfg`` (a :class:`aia.training.config.RunConfig`) on
    data of ``sizes`` usable samples per task, ``ratio`` micro-batches per task (the tasks
    that run), ``world`` processes.

    Raises:
        ConfigError: an epoch-based length or warm-up comes to less than one step.
    """
    t, o = cfg.train, cfg.optim
    per_epoch, task = steps_per_epoch(sizes, ratio, cfg.data.mixing, t.grad_accum, cfg.data.batch_size, world)
    why = (
        f"one epoch of the {task} data is {per_epoch:g} steps ({sizes[task]} samples, {world} process(es), "
        f"batch size {cfg.data.batch_size})"
    )
    if t.epochs is not None:
        total = int(t.epochs * per_epoch)
        if total < 1:
            raise ConfigError(f"train.epochs: {t.epochs} epochs come to {total} steps: {why}")
    else:
        total = t.max_steps if t.max_steps is not None else DEFAULT_MAX_STEPS
    if o.warmup_epochs is not None:
        if o.warmup_epochs > 0 and per_epoch == 0:
            raise ConfigError(f"optim.warmup_epochs: {why}")
        warmup = o.warmup_epochs * per_epoch
    elif o.warmup_steps is not None:
        warmup = o.warmup_steps
    elif o.warmup_ratio is not None:
        warmup = o.warmup_ratio * total
    else:
        warmup = 0
    return Plan(total_steps=total, warmup_steps=warmup, steps_per_epoch=per_epoch, epoch_task=task)
