"""Run length, epochs and the LR curve: the released code's formula, bit for bit."""

from __future__ import annotations

import math

import pytest
import torch

from aia.training.config import ConfigError, load_config
from aia.training.schedule import LRSchedule, learning_rate, plan, steps_per_epoch


def released_lr(it, init_lr, warmup_iter, max_iter, scheduler, minimum_lr=1.0e-6):
    """``LRScheduler.calc_learning_rate`` of the release (``trainer/utils/scheduler.py:15-29``), as written."""
    if it < warmup_iter:
        return (it + 1) / warmup_iter * (init_lr - minimum_lr) + minimum_lr
    if scheduler == "linear":
        return minimum_lr + (init_lr - minimum_lr) * ((max_iter - it) / (max_iter - warmup_iter))
    if scheduler == "cosine":
        return minimum_lr + 0.5 * (init_lr - minimum_lr) * (
            1 + math.cos(math.pi * (it - warmup_iter) / (max_iter - warmup_iter))
        )
    return init_lr


def cfg(*overrides):
    return load_config(None, ["data.und=u.jsonl", "data.gen=g.jsonl", *overrides], check_paths=False)


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant_with_warmup"])
@pytest.mark.parametrize("warmup", [0, 3, 19.700000000000003, 0.4])
def test_learning_rate_is_the_released_formula(kind, warmup):
    total = 200
    for it in range(total):
        ours = learning_rate(it, 2e-5, 1e-6, warmup, total, kind)
        assert ours == released_lr(it, 2e-5, warmup, total, kind), (it, kind)
    assert learning_rate(5, 2e-5, 1e-6, 3, total, "constant") == 2e-5


def test_scheduler_sets_the_formula_value_each_step():
    param = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.AdamW([{"params": [param]}, {"params": [], "weight_decay": 0.0}], lr=2e-5)
    scheduler = LRSchedule(optimizer, "cosine", warmup=2.5, total=30, floor=1e-6)
    seen = []
    for _ in range(30):
        seen.append(scheduler.get_last_lr()[0])
        assert all(g["lr"] == seen[-1] for g in optimizer.param_groups)
        optimizer.step()
        scheduler.step()
    assert seen == [released_lr(it, 2e-5, 2.5, 30, "cosine") for it in range(30)]
    assert seen[0] == 1 / 2.5 * (2e-5 - 1e-6) + 1e-6  # the warm-up starts above the floor, not at 0
    assert min(seen) > 1e-6 and seen[-1] < 1e-6 + 0.01 * 2e-5  # decays to just above the floor



def test_resumed_scheduler_continues_on_the_configured_curve():
    def make(total):
        param = torch.nn.Parameter(torch.zeros(2))
        optimizer = torch.optim.AdamW([param], lr=2e-5)
        return optimizer, LRSchedule(optimizer, "cosine", warmup=2.5, total=total, floor=1e-6)

    optimizer, scheduler = make(30)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    assert state["last_epoch"] == 10 and "total" not in state  # the step, not the curve's shape
    # the same config: the same value, on the scheduler and the optimizer's groups
    optimizer2, same = make(30)
    same.load_state_dict(state)
    assert same.get_last_lr() == scheduler.get_last_lr() == [optimizer2.param_groups[0]["lr"]]
    # train.max_steps raised on resume: step 10 of the longer curve
    optimizer3, longer = make(60)
    longer.load_state_dict(state)
    assert longer.get_last_lr() == [released_lr(10, 2e-5, 2.5, 60, "cosine")] == [optimizer3.param_groups[0]["lr"]]


def test_the_step_after_the_last_does_not_divide_by_zero():
    assert learning_rate(10, 1.0, 0.1, 10, 10, "cosine") == 0.1
    assert learning_rate(10, 1.0, 0.1, 10, 10, "constant_with_warmup") == 1.0


def test_an_epoch_is_the_released_iter_per_epoch():
    # released: iter_per_epoch = len(gen loader) // p_gen, len = ceil(N / world) // batch_size
    gen_loader_len = math.ceil(1003 / 8) // 4
    assert steps_per_epoch({"und": 50, "gen": 1003}, {"und": 10, "gen": 10}, "random", 1, 4, 8) == (
        gen_loader_len // (10 / 20),
        "gen",
    )
    # under `both` every step takes grad_accum * ratio_gen generation micro-batches
    assert steps_per_epoch({"und": 50, "gen": 1003}, {"und": 1, "gen": 2}, "both", 2, 4, 8) == (gen_loader_len // 4, "gen")
    assert steps_per_epoch({"und": 64}, {"und": 1}, "random", 1, 4, 2) == (8, "und")  # no gen data: und
    assert steps_per_epoch({"und": 9, "gen": 9}, {"und": 1, "gen": 3}, "alternate", 1, 2, 1) == (4 // 0.75, "gen")


def test_plan_from_epochs_and_warmups():
    sizes, ratio = {"und": 800, "gen": 1000}, {"und": 10, "gen": 10}
    p = plan(cfg("data.mixing=random", "train.epochs=4", "optim.warmup_epochs=0.1"), sizes, ratio, world=2)
    per_epoch = (math.ceil(1000 / 2) // 4) // 0.5  # 250.0
    assert (p.steps_per_epoch, p.total_steps, p.warmup_steps) == (per_epoch, int(4 * per_epoch), 0.1 * per_epoch)
    p = plan(cfg("train.max_steps=100", "optim.warmup_ratio=0.05"), sizes, ratio, world=1)
    assert (p.total_steps, p.warmup_steps) == (100, 0.05 * 100)
    p = plan(cfg("train.max_steps=100", "optim.warmup_steps=7"), sizes, ratio, world=1)
    assert (p.total_steps, p.warmup_steps) == (100, 7)
    assert plan(cfg(), sizes, ratio, world=1).total_steps == 1000  # neither set
    assert plan(cfg(), sizes, ratio, world=1).warmup_steps == 0  # no warm-up set
    with pytest.raises(ConfigError, match="train.epochs: .* 0 steps.*one epoch of the gen data"):
        plan(cfg("train.epochs=1", "data.batch_size=4"), {"gen": 3, "und": 3}, {"und": 1, "gen": 1}, world=1)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["optim.warmup_ratio=0.1", "optim.warmup_steps=10"], "set at most one of optim.warmup_ratio"),
        (["optim.warmup_epochs=0.1", "optim.warmup_ratio=0.1"], r"optim.warmup_ratio / optim.warmup_epochs"),
        (["train.epochs=0"], "train.epochs: must be > 0"),
        (["optim.min_lr=1e-3"], "optim.min_lr: must not exceed optim.lr"),
        (["optim.scheduler=constant", "optim.warmup_steps=5"], "optim.warmup_steps: optim.scheduler=constant has no"),
        (["optim.warmup_steps=-1"], "optim.warmup_steps: must be >= 0"),
        (["data.mixing=shuffle"], "data.mixing: must be one of both, random, alternate"),
        (["data.gen_image_transform=crop"], "data.gen_image_transform"),
        (["data.image_area=0"], "data.image_area"),
    ],
)
def test_schedule_fields_fail_with_their_names(overrides, match):
    with pytest.raises(ConfigError, match=match):
        cfg(*overrides)


def test_schedule_fields_load():
    c = cfg("train.epochs=2.5", "optim.warmup_epochs=0.1", "optim.min_lr=0", "data.mixing=alternate")
    assert (c.train.epochs, c.train.max_steps, c.optim.warmup_epochs, c.optim.min_lr) == (2.5, None, 0.1, 0.0)
    assert cfg().train.max_steps == 1000 and cfg().optim.min_lr == 1e-6
    # a file's max_steps is replaced by epochs when the override clears it
    assert cfg("train.max_steps=5", "train.max_steps=null", "train.epochs=1").train.epochs == 1.0
    assert cfg("optim.scheduler=constant", "optim.lr=0").optim.lr == 0  # the floor does not apply
    # overrides of the run length: the later one replaces the earlier (see --help-config)
    later = cfg("train.max_steps=10", "train.epochs=2").train
    assert (later.max_steps, later.epochs) == (None, 2.0)
    later = cfg("train.epochs=2", "train.max_steps=10").train
    assert (later.max_steps, later.epochs) == (10, None)
