"""Everything a run needs before its first step, built in a fixed order (:func:`setup`).

The order matters for reproducibility: the seed is set before anything draws random
numbers (LoRA initialisation, dropout), and a resumed run reloads the same pieces.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from aia.adapters import adapter_class_of, get_adapter
from aia.adapters.base import AdapterBase, unwrap
from aia.data import encoder
from aia.data.encoder import Preprocessing
from aia.errors import ConfigError
from aia.targets.presets import TargetProfile
from aia.training.config import RunConfig
from aia.training.schedule import LRSchedule, Plan, plan
from aia.training.step import UnifiedStep
from aia.training.streams import TaskStream, micro_batches_per_step

__all__ = [
    "Run",
    "add_lora",
    "check_deepspeed",
    "describe",
    "freeze",
    "image_transform",
    "make_accelerator",
    "make_optimizer",
    "setup",
    "task_ratios",
]

@dataclass
class Run:
    """A prepared run: what :func:`aia.training.trainer.train` and
    :func:`aia.training.step.optimizer_step` work with."""

    cfg: RunConfig
    accelerator: object
    step_module: nn.Module
    """The :class:`UnifiedStep`, as ``accelerator.prepare`` wrapped it (DDP, FSDP, DeepSpeed)."""
    core: UnifiedStep
    """The same module unwrapped."""
    optimizer: torch.optim.Optimizer
    scheduler: object
    """The LR scheduler (:class:`aia.training.schedule.LRSchedule`), stepped once per optimizer
    step (registered for checkpointing)."""
    plan: Plan
    """The run's length and warm-up in optimizer steps."""
    processor: object
    streams: dict[str, TaskStream]
    ratio: dict[str, int]
    """``data.ratio_*`` of the tasks that run (with data and a ratio > 0)."""
    trainable: int
    frozen: int

    @functools.cached_property
    def params(self) -> list[nn.Parameter]:
        """The trainable parameters (clipped together), listed at first use (after a resume's load)."""
        return [p for p in self.step_module.parameters() if p.requires_grad]

    @property
    def progress(self) -> bool:
        """Whether this process shows progress bars."""
        return self.cfg.train.progress and self.accelerator.is_main_process

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes


def freeze(model: nn.Module, patterns: list[str] | tuple[str, ...] | None) -> tuple[int, int]:
    """Freeze parameters whose name contains one of ``patterns`` (None: the family adapter's
    :attr:`~aia.adapters.base.AdapterBase.frozen_modules`, e.g. the released AIA code's VQ tokenizer
    and understanding vision tower).

    Returns:
        ``(trainable, frozen)`` parameter counts.
    """
    patterns = adapter_class_of(model).frozen_modules if patterns is None else tuple(patterns)
    trainable = frozen = 0
    for name, p in model.named_parameters():
        if any(s in name for s in patterns):
            p.requires_grad_(False)
            frozen += p.numel()
        else:
            trainable += p.numel() if p.requires_grad else 0
    return trainable, frozen


def task_ratios(cfg: RunConfig) -> dict[str, int]:
    """``{task: micro-batches per accumulation round}`` of the tasks that have data and a ratio > 0."""
    tasks = [t for t in ("und", "gen") if getattr(cfg.data, t) and getattr(cfg.data, f"ratio_{t}") > 0]
    return {t: getattr(cfg.data, f"ratio_{t}") for t in tasks}


def make_accelerator(cfg: RunConfig, micro_batches: int):
    """The run's ``accelerate.Accelerator``, accumulating over ``micro_batches`` per optimizer step."""
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = not torch.cuda.is_available()  # under torchrun on CPU-only machines: gloo, not a silent single process
    if cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        # DeepSpeed on CPU (its gloo backend): accelerate finds no backend for it and would count one
        # process per rank; name the backend, and keep cpu=False, which would drop the DeepSpeed plugin
        from accelerate import PartialState

        PartialState(backend="gloo")
        cpu = False
    # Each micro-batch is one task and leaves the other task's parts (generation head,
    # understanding aligner) without gradients: DDP must be told to expect that.
    return Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=micro_batches,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        cpu=cpu,
    )


def _lora_targets(model: nn.Module, processor, names: list[str]) -> list[str]:
    """Full names of the language model's modules whose last name part is in ``names``
    (LoRA goes on the language model only: never the vision tower or the VQ)."""
    lm = get_adapter(model, processor).language_model(model)
    lm_name = next(n for n, m in model.named_modules() if m is lm)
    found = [f"{lm_name}.{n}" if lm_name else n for n, _ in lm.named_modules() if n.rsplit(".", 1)[-1] in names]
    if not found:
        raise ValueError(f"lora.target_modules={names} matches no module of the language model")
    return found


def add_lora(model: nn.Module, processor, cfg: RunConfig) -> nn.Module:
    """``model`` with PEFT LoRA adapters on its language model (``cfg.lora``)."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=_lora_targets(model, processor, cfg.lora.target_modules),
    )
    return get_peft_model(model, lora)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(module: nn.Module, cfg: RunConfig, run_plan: Plan):
    """AdamW over ``module``'s trainable parameters (weight decay on matrices only) and its LR
    scheduler (:class:`aia.training.schedule.LRSchedule` over ``run_plan``)."""
    optimizer = torch.optim.AdamW(
        _param_groups(module, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
    )
    scheduler = LRSchedule(
        optimizer, cfg.optim.scheduler, run_plan.warmup_steps, run_plan.total_steps, cfg.optim.min_lr
    )
    return optimizer, scheduler


def check_deepspeed(accelerator, model: nn.Module, adapter: AdapterBase) -> None:
    """Refuse DeepSpeed ZeRO-3 when a trainable parameter lies in a module that only one task
    runs through (``adapter.task_specific_modules``, e.g. Janus's generation head).

    ZeRO-3 keeps a parameter's gradient partition from one optimizer step to the next and
    overwrites it only when the parameter gets a gradient in the step's first micro-batch
    (``deepspeed/runtime/zero/stage3.py``, ``micro_step_id``); a parameter that gets none in a
    step, or none in its first micro-batch, is updated with (or has added) the gradient of an
    earlier step. Measured on a tiny Janus (CPU, 2 processes, deepspeed 0.19.8): the gradient
    norm of step 2 was 2.62 against 2.28 for one process with ``data.mixing=both``, and 5.32
    against 4.59 with ``random``; with understanding data only (every parameter used by every
    micro-batch) the runs agree to 1e-5.
    """
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds is None or getattr(ds, "zero_stage", None) != 3:
        return
    parts = set(adapter.task_specific_modules)
    hit = next(
        (n for n, p in model.named_parameters() if p.requires_grad and parts & set(n.split("."))), None
    )
    if hit is not None:
        raise ConfigError(
            f"DeepSpeed ZeRO-3 would update {hit} (a module one task does not use) with an earlier step's "
            "gradient; train this model with FSDP (configs/accelerate/fsdp.yaml) or DDP, or freeze the "
            f"task-specific modules ({', '.join(sorted(parts))}) with model.frozen"
        )


def _configure_deepspeed(accelerator, cfg: RunConfig, micro_batches: int) -> None:
    ds = accelerator.state.deepspeed_plugin
    if ds is not None:  # no dataloader goes through prepare: tell DeepSpeed the micro-batch, accumulation, clipping
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds.deepspeed_config["gradient_accumulation_steps"] = micro_batches
        ds.deepspeed_config["gradient_clipping"] = cfg.optim.max_grad_norm


def setup(cfg: RunConfig, model: nn.Module | None = None, processor=None, accelerator=None) -> Run:
    """Build and ``accelerator.prepare`` everything a run needs, in this order: accelerator,
    seed, model (loaded from ``cfg.model.path`` unless given), frozen parameters, activation
    checkpointing, LoRA, adapter, data streams, targets, the run's length and warm-up
    (:func:`aia.training.schedule.plan`, which needs the streams' sizes), step module,
    optimizer, scheduler.
    """
    from accelerate.utils import set_seed


    ratio = task_ratios(cfg)
    micro_batches = micro_batches_per_step(cfg.train.grad_accum, ratio, cfg.data.mixing)
    accelerator = accelerator or make_accelerator(cfg, micro_batches)
    accelerator.gradient_accumulation_steps = micro_batches
    if cfg.train.skip_nonfinite and getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        raise ConfigError("train.skip_nonfinite must be 0 under DeepSpeed: its engine steps the optimizer inside "
                          "backward, before the gradient norm can be checked")
    set_seed(cfg.train.seed)
    if model is None:
        model, processor = _load(cfg, accelerator)
    model.train()
    trainable, frozen = freeze(model, cfg.model.frozen)
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        model = add_lora(model, processor, cfg)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    adapter = get_adapter(
        model, processor, span_config=cfg.spans, padding_side=cfg.data.padding_side, prompt_config=cfg.prompts
    )
    check_deepspeed(accelerator, model, adapter)
    show = cfg.train.progress and accelerator.is_main_process
    streams = {t: _stream(cfg, t, adapter, progress=show) for t in ratio}
    targets = None
    if cfg.aia.enabled:
        depth = unwrap(model).config.get_text_config().num_hidden_layers
        targets = TargetProfile.load(cfg.aia.targets, num_layers=depth, layer_map=cfg.aia.layer_map)
    run_plan = plan(cfg, {t: len(s) for t, s in streams.items()}, ratio, accelerator.num_processes)
    step_module = UnifiedStep(model, adapter, targets, cfg)
    optimizer, scheduler = make_optimizer(step_module, cfg, run_plan)
    _configure_deepspeed(accelerator, cfg, micro_batches)
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us: once per optimizer step
    return Run(
        cfg=cfg,
        accelerator=accelerator,
        step_module=step_module,
        core=accelerator.unwrap_model(step_module),
        optimizer=optimizer,
        scheduler=scheduler,
        plan=run_plan,
        processor=processor,
        streams=streams,
        ratio=ratio,
        trainable=trainable,
        frozen=frozen,
    )


def _load(cfg: RunConfig, accelerator):
    """``(model, processor)`` from ``cfg.model.path``.

    Under DeepSpeed ZeRO-3 without ``zero3_init_flag``, accelerate still registers its config with
    transformers, which then builds the model partitioned (``deepspeed.zero.Init``) and runs
    ``_init_weights`` on empty shards (Emu3's VQ-VAE fails there: "Fan in and fan out can not be
    computed"); the model is loaded whole instead, as the flag says, and partitioned by ``prepare``.
    """
    from aia.adapters import load_model

    dtype = getattr(torch, cfg.model.dtype)
    ds = getattr(accelerator.state, "deepspeed_plugin", None)
    if ds is None or ds.zero3_init_flag:
        return load_model(cfg.model.path, dtype=dtype)
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        return load_model(cfg.model.path, dtype=dtype)
    finally:
        ds.set_deepspeed_weakref()


def image_transform(cfg: RunConfig, task: str, processor) -> Callable | None:
    """The PIL transform ``task``'s images get before the processor (``data.image_area``, then
    for generation ``data.gen_image_transform``), or None when there is none: the record
    encoder's (:func:`aia.data.encoder.image_transform`), which ``aia profile --config`` uses too."""
    return encoder.image_transform(Preprocessing.from_data_config(cfg.data), task, processor)


def _stream(cfg: RunConfig, task: str, adapter, progress: bool) -> TaskStream:
    """The validated sample stream of ``task``'s data file, preprocessed by the run's policy
    (:meth:`aia.data.encoder.Preprocessing.from_data_config`, which ``aia profile --config`` uses too)."""
    policy = Preprocessing.from_data_config(cfg.data)
    return TaskStream(
        getattr(cfg.data, task),
        task,
        adapter,
        policy.length.max_length,
        cfg.data.max_bad_fraction,
        cfg.train.seed,
        cfg_drop(cfg, adapter),
        progress=progress,
        cache=cfg.data.cache_examples,
        image_transform=encoder.image_transform(policy, task, adapter.processor),
        image_root=policy.image_root,
        over_long=policy.length.over_long,
        gen_prompt_length=policy.length.gen_prompt_length,
    )


def cfg_drop(cfg: RunConfig, adapter: AdapterBase) -> float:
    """``data.cfg_drop``, else the adapter's :attr:`~aia.adapters.base.AdapterBase.cfg_drop` (``prompts.cfg_drop``
    resolved against the family's default)."""
    return cfg.data.cfg_drop if cfg.data.cfg_drop is not None else adapter.cfg_drop


def describe(run: Run, resumed_from: Path | None) -> str:
    """One line on what the run trains, for the log."""
    cfg = run.cfg
    return (
        f"aia train: {run.trainable / 1e6:.2f}M trainable, {run.frozen / 1e6:.2f}M frozen parameters; tasks "
        f"{', '.join(f'{t} ({len(s)} samples)' for t, s in run.streams.items())}; AIA "
        f"{'on' if cfg.aia.enabled else 'off'}; mixing {cfg.data.mixing}; {run.plan.describe()}; "
        f"{run.world} process(es)"
        + (f"; resumed from {resumed_from.name}" if resumed_from else "")
    )
