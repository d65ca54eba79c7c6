"""``aia train``: unified fine-tuning with NTP + lambda_task * AIA, on accelerate.

One optimizer step = ``grad_accum`` rounds of ``ratio_und`` understanding and
``ratio_gen`` generation micro-batches (:func:`aia.training.streams.step_schedule`), the same
schedule on every rank. Each micro-batch is one task; its loss is the adapter's NTP
loss plus ``lambda_task * L_AIA`` (Eq. 2/3) from the intensities that
:func:`aia.capture` records during the same forward pass. With ``aia.enabled=false``
the capture is not entered at all: the run is the plain NTP baseline.

Distribution (DDP, FSDP, DeepSpeed ZeRO-3) is accelerate's: launch with
``accelerate launch --config_file configs/accelerate/<...>.yaml -m aia train CONFIG``.
Gradient accumulation is accelerate's ``accumulate``; the LR scheduler steps once per
optimizer step whatever the number of processes.

Outputs in ``train.output_dir``:

* ``metrics.jsonl``: one JSON object per logged step (keys in :data:`METRIC_KEYS`),
  values averaged over ranks and over the step's micro-batches of each task;
* ``tensorboard/``: the same scalars, and per-layer intensities as ``intensity/<task>/layer_<l>``;
* ``checkpoint-<step>/``: ``model/`` (``save_pretrained`` + processor, loadable by plain
  transformers) and accelerate's state (model, optimizer, scheduler, RNG); written under
  a temporary name and renamed when complete; ``latest`` names the newest complete one;
* ``final/``: the trained model and processor.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from aia.adapters import Batch, get_adapter
from aia.adapters.base import unwrap
from aia.attention import capture
from aia.core.loss import aia_loss
from aia.core.spans import SpanConfig
from aia.targets.presets import TargetProfile
from aia.training.config import RunConfig
from aia.training.streams import TaskStream, step_schedule

__all__ = ["METRIC_KEYS", "DEFAULT_FROZEN", "TrainResult", "UnifiedStep", "freeze", "train"]

DEFAULT_FROZEN = ("vqmodel", "vision_model")

#: keys of a metrics.jsonl row (task-specific keys only for tasks in the step)
METRIC_KEYS = {
    "step": "optimizer step (1-based)",
    "lr": "learning rate used by this step",
    "grad_norm": "gradient norm before clipping",
    "loss": "total loss: mean over micro-batches of NTP + lambda_task * AIA",
    "loss/ntp": "mean NTP loss over the step's micro-batches",
    "loss/ntp/und": "NTP loss of understanding micro-batches",
    "loss/ntp/gen": "NTP loss of generation micro-batches",
    "loss/aia/und": "AIA loss (Eq. 2, before lambda) of understanding micro-batches",
    "loss/aia/gen": "AIA loss of generation micro-batches",
    "intensity/und": "per-layer intensity, mean over enabled samples (every train.intensity_every steps)",
    "intensity/gen": "per-layer intensity of generation samples (same)",
    "aia_samples/und": "understanding samples of the step that carried the AIA term, summed over ranks",
    "aia_samples/gen": "generation samples that carried the AIA term (CFG-blanked ones do not), summed over ranks",
    "time/step_s": "wall-clock seconds of the step on the main process (data, forward, backward, optimizer)",
}


def freeze(model: nn.Module, patterns: list[str] | tuple[str, ...] | None) -> tuple[int, int]:
    """Freeze parameters whose name contains one of ``patterns`` (default: the paper's policy).

    Returns:
        ``(trainable, frozen)`` parameter counts.
    """
    patterns = DEFAULT_FROZEN if patterns is None else tuple(patterns)
    trainable = frozen = 0
    for name, p in model.named_parameters():
        if any(s in name for s in patterns):
            p.requires_grad_(False)
            frozen += p.numel()
        else:
            trainable += p.numel() if p.requires_grad else 0
    return trainable, frozen


class UnifiedStep(nn.Module):
    """The model plus the per-micro-batch loss, as one module (so DDP/FSDP wrap the whole step).

    ``forward(task, **tensors)`` returns ``{"loss", "ntp", "aia", "intensity" [L], "aia_samples"}``;
    with AIA on it runs inside ``with step.capturing():``, which also spans the backward.
    """

    def __init__(self, model: nn.Module, adapter, targets: TargetProfile | None, cfg: RunConfig):
        super().__init__()
        self.model = model
        # FSDP's transformer-based auto-wrap looks for the decoder-layer classes here
        self._no_split_modules = getattr(unwrap(model), "_no_split_modules", None)
        self.adapter = adapter
        self.aia_cfg = cfg.aia
        self.method = cfg.model.attn_method
        self.weights = {"und": cfg.aia.weight_und, "gen": cfg.aia.weight_gen}
        self.capture = None
        for task in ("und", "gen"):
            t, d = targets.tensors(task) if targets is not None else (torch.zeros(0), torch.zeros(0))
            self.register_buffer(f"target_{task}", t, persistent=False)
            self.register_buffer(f"delta_{task}", d, persistent=False)

    def forward(self, task: str, **tensors: torch.Tensor) -> dict[str, torch.Tensor]:
        batch = Batch(
            task=task,
            inputs={k[6:]: v for k, v in tensors.items() if k.startswith("input_")},
            **{k: tensors[k] for k in ("labels", "roles", "attention_mask", "query_mask", "key_mask")},
        )
        if not self.aia_cfg.enabled:
            ntp = self.adapter.forward(self.model, batch).loss
            zero = ntp.detach() * 0
            return {"loss": ntp, "ntp": ntp, "aia": zero, "intensity": None, "aia_samples": zero}
        cap = self.capture
        if cap is None:
            raise RuntimeError("UnifiedStep with AIA must run inside `with step.capturing():`")
        ntp = self.adapter.forward(self.model, batch).loss
        intensity, valid = cap.intensity, cap.valid  # [L, B], [B]
        target, delta = getattr(self, f"target_{task}"), getattr(self, f"delta_{task}")
        aia = aia_loss(intensity, target, delta, valid, mode=self.aia_cfg.mode)
        n = valid.sum()
        mean_curve = (intensity.detach() * valid).sum(1) / n.clamp(min=1)  # [L]
        return {
            "loss": ntp + self.weights[task] * aia,
            "ntp": ntp,
            "aia": aia,
            "intensity": mean_curve,
            "aia_samples": n.float(),
        }

    @contextlib.contextmanager
    def capturing(self):
        """Keep :func:`aia.capture` active around forward *and* backward.

        Non-reentrant activation checkpointing re-runs the attention in backward; it must
        find the same attention implementation it ran in forward.
        """
        if not self.aia_cfg.enabled:
            yield None
            return
        with capture(unwrap(self.model), method=self.method) as cap:
            self.capture = cap
            try:
                yield cap
            finally:
                self.capture = None


def batch_tensors(batch: Batch) -> dict[str, torch.Tensor]:
    """A :class:`Batch` as flat keyword tensors for :class:`UnifiedStep` (DDP scatters these)."""
    out = {f"input_{k}": v for k, v in batch.inputs.items()}
    out.update(
        labels=batch.labels,
        roles=batch.roles,
        attention_mask=batch.attention_mask,
        query_mask=batch.query_mask,
        key_mask=batch.key_mask,
    )
    return out


@dataclass
class TrainResult:
    """What a run produced."""

    output_dir: Path
    final_dir: Path
    history: list[dict] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _latest(out: Path) -> Path | None:
    pointer = out / "latest"
    if pointer.is_file():
        ckpt = out / pointer.read_text().strip()
        if (ckpt / "trainer_state.json").is_file():
            return ckpt
    return None


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _save_checkpoint(accelerator, step_module, processor, out: Path, step: int, cfg: RunConfig) -> Path:
    """Write checkpoint-<step> under a temporary name, then rename it and move ``latest``."""
    final = out / f"checkpoint-{step}"
    tmp = out / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    _save_model(accelerator, step_module, processor, tmp / "model")
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_atomic(out / "latest", final.name)
        kept = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -cfg.train.save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _lora_targets(model: nn.Module, processor, names: list[str]) -> list[str]:
    """Full names of the language model's modules whose last name part is in ``names``
    (LoRA goes on the language model only: never the vision tower or the VQ)."""
    lm = get_adapter(model, processor).language_model(model)
    lm_name = next(n for n, m in model.named_modules() if m is lm)
    found = [f"{lm_name}.{n}" if lm_name else n for n, _ in lm.named_modules() if n.rsplit(".", 1)[-1] in names]
    if not found:
        raise ValueError(f"lora.target_modules={names} matches no module of the language model")
    return found


def _save_model(accelerator, step_module, processor, path: Path) -> None:
    """``save_pretrained`` the model (and processor) into ``path``; call it on every rank.

    The weights come from ``accelerator.get_state_dict``, which gathers FSDP / ZeRO-3
    shards on every rank; the main process writes them. PEFT models save their LoRA
    adapter (load with ``peft.AutoPeftModel``), others the full model.
    """
    state = accelerator.get_state_dict(step_module)  # collective under FSDP / ZeRO-3
    if not accelerator.is_main_process:
        return
    state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    accelerator.unwrap_model(step_module).model.save_pretrained(path, state_dict=state, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(path)


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
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from transformers import get_scheduler

    from aia.adapters import load_model

    out = Path(cfg.train.output_dir)
    tasks = [t for t in ("und", "gen") if getattr(cfg.data, t) and getattr(cfg.data, f"ratio_{t}") > 0]
    ratio = {t: getattr(cfg.data, f"ratio_{t}") for t in tasks}
    n_micro = cfg.train.grad_accum * sum(ratio.values())
    # Each micro-batch is one task and leaves the other task's parts (generation head,
    # understanding aligner) without gradients: DDP must be told to expect that.
    accelerator = accelerator or Accelerator(
        mixed_precision=cfg.train.mixed_precision,
        gradient_accumulation_steps=n_micro,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
        cpu=not torch.cuda.is_available(),  # under torchrun on CPU-only machines: gloo, not a silent single process
    )
    accelerator.gradient_accumulation_steps = n_micro
    set_seed(cfg.train.seed)
    if model is None:
        model, processor = load_model(cfg.model.path, dtype=getattr(torch, cfg.model.dtype))
    model.train()
    trainable, frozen = freeze(model, cfg.model.frozen)
    if cfg.model.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if cfg.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=_lora_targets(model, processor, cfg.lora.target_modules),
        )
        model = get_peft_model(model, lora)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    spans = SpanConfig(cfg.aia.image_markers_are_image, cfg.aia.question_in_query, cfg.aia.predictive)
    adapter = get_adapter(model, processor, span_config=spans, padding_side=cfg.data.padding_side)
    show = cfg.train.progress and accelerator.is_main_process
    streams = {
        t: TaskStream(
            getattr(cfg.data, t),
            t,
            adapter,
            cfg.data.max_length,
            cfg.data.max_bad_fraction,
            cfg.train.seed,
            cfg.data.cfg_drop,
            progress=show,
            cache=cfg.data.cache_examples,
        )
        for t in tasks
    }
    targets = None
    if cfg.aia.enabled:
        depth = unwrap(model).config.get_text_config().num_hidden_layers
        targets = TargetProfile.load(cfg.aia.targets, num_layers=depth)
    step_module = UnifiedStep(model, adapter, targets, cfg)
    optimizer = torch.optim.AdamW(
        _param_groups(step_module, cfg.optim.weight_decay),
        lr=cfg.optim.lr,
        betas=tuple(cfg.optim.betas),
        eps=cfg.optim.eps,
    )
    scheduler = get_scheduler(
        cfg.optim.scheduler,
        optimizer,
        num_warmup_steps=math.ceil(cfg.optim.warmup_ratio * cfg.train.max_steps),
        num_training_steps=cfg.train.max_steps,
    )
    ds = accelerator.state.deepspeed_plugin
    if ds is not None:  # no dataloader goes through prepare: tell DeepSpeed the micro-batch, accumulation, clipping
        ds.deepspeed_config["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds.deepspeed_config["gradient_accumulation_steps"] = n_micro
        ds.deepspeed_config["gradient_clipping"] = cfg.optim.max_grad_norm
    step_module, optimizer = accelerator.prepare(step_module, optimizer)
    accelerator.register_for_checkpointing(scheduler)  # stepped by us: once per optimizer step

    start = 0
    resume_from = _latest(out) if cfg.train.resume else None
    stale = sorted(out.glob("checkpoint-*")) if not cfg.train.resume else []
    if stale and accelerator.is_main_process:  # starting over: an old checkpoint must not outlive the new ones
        print(f"aia train: starting over in {out}: removing {len(stale)} earlier checkpoint(s)", file=sys.stderr)
        for old in stale:
            shutil.rmtree(old)
        (out / "latest").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        start = json.loads((resume_from / "trainer_state.json").read_text())["step"]
    history: list[dict] = []
    writer = None
    metrics_path = out / "metrics.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if metrics_path.exists():  # keep what the resumed-from run logged up to its checkpoint
            rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in rows if r["step"] <= start))
        elif start:
            metrics_path.touch()
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out / "tensorboard"), purge_step=start + 1 if start else None)
        print(
            f"aia train: {trainable / 1e6:.2f}M trainable, {frozen / 1e6:.2f}M frozen parameters; tasks "
            f"{', '.join(f'{t} ({len(s)} samples)' for t, s in streams.items())}; AIA "
            f"{'on' if cfg.aia.enabled else 'off'}; {accelerator.num_processes} process(es)"
            + (f"; resumed from {resume_from.name}" if resume_from else ""),
            file=sys.stderr,
        )

    params = [p for p in step_module.parameters() if p.requires_grad]
    core = accelerator.unwrap_model(step_module)
    bar = tqdm(total=cfg.train.max_steps, initial=start, desc="aia train", disable=not show, file=sys.stderr)
    rank, world = accelerator.process_index, accelerator.num_processes

    def _save_if_due(step: int) -> None:
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.max_steps:
            _save_checkpoint(accelerator, step_module, processor, out, step + 1, cfg)

    for step in range(start, cfg.train.max_steps):
        sums: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
        counts: dict[str, int] = defaultdict(int)
        # per task: sum over enabled samples of their per-layer intensity (0, then [L])
        curves: dict[str, torch.Tensor] = defaultdict(lambda: torch.zeros((), device=accelerator.device))
        grad_norm = torch.zeros((), device=accelerator.device)
        lr = scheduler.get_last_lr()[0]
        t0 = time.perf_counter()
        for task, counter in step_schedule(step, cfg.train.grad_accum, ratio):
            batch = streams[task].batch(counter, cfg.data.batch_size, rank, world).to(accelerator.device)
            with accelerator.accumulate(step_module), core.capturing():
                res = step_module(task, **batch_tensors(batch))
                accelerator.backward(res["loss"])
                if accelerator.sync_gradients:
                    norm = accelerator.clip_grad_norm_(params, cfg.optim.max_grad_norm or float("inf"))
                    grad_norm = norm.detach().float() if norm is not None else grad_norm
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            sums["loss"] += res["loss"].detach().float()
            sums["loss/ntp"] += res["ntp"].detach().float()
            sums[f"loss/ntp/{task}"] += res["ntp"].detach().float()
            counts[task] += 1
            if cfg.aia.enabled:
                sums[f"loss/aia/{task}"] += res["aia"].detach().float()
                sums[f"aia_samples/{task}"] += res["aia_samples"].detach()
                curves[task] = curves[task] + res["intensity"].detach().float() * res["aia_samples"].detach()
        scheduler.step()
        step_time = time.perf_counter() - t0
        bar.update(1)
        n_total = sum(counts.values())
        row_t = {"loss": sums["loss"] / n_total, "loss/ntp": sums["loss/ntp"] / n_total, "grad_norm": grad_norm}
        for task, n in counts.items():
            row_t[f"loss/ntp/{task}"] = sums[f"loss/ntp/{task}"] / n
            if cfg.aia.enabled:
                row_t[f"loss/aia/{task}"] = sums[f"loss/aia/{task}"] / n
        log_intensity = cfg.aia.enabled and cfg.train.intensity_every and (step + 1) % cfg.train.intensity_every == 0
        if not ((step + 1) % cfg.train.log_every == 0 or log_intensity):
            _save_if_due(step)
            continue
        # the same on every rank: reductions are collective
        keys = sorted(row_t)
        reduced = accelerator.reduce(torch.stack([row_t[k].float() for k in keys]), reduction="mean")
        row: dict = {"step": step + 1, "lr": lr, "time/step_s": step_time}
        row.update({k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)})
        for task in counts if cfg.aia.enabled else ():
            # an intensity sum [L] and its sample count per task, summed over ranks
            total = accelerator.reduce(torch.cat([curves[task], sums[f"aia_samples/{task}"].view(1)]), "sum")
            row[f"aia_samples/{task}"] = float(total[-1])
            if log_intensity and total[-1] > 0:
                row[f"intensity/{task}"] = [round(float(x), 6) for x in total[:-1] / total[-1]]
        history.append(row)
        if accelerator.is_main_process:
            with metrics_path.open("a") as f:
                f.write(json.dumps(row) + "\n")
            for k, v in row.items():
                if isinstance(v, float) and k != "step":
                    writer.add_scalar(k, v, step + 1)
                elif isinstance(v, list):
                    for layer, x in enumerate(v):
                        writer.add_scalar(f"{k}/layer_{layer:02d}", x, step + 1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", refresh=False)
        _save_if_due(step)
    bar.close()
    if start < cfg.train.max_steps:
        _save_checkpoint(accelerator, step_module, processor, out, cfg.train.max_steps, cfg)
    final = out / "final"
    tmp = out / ".final.tmp"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    _save_model(accelerator, step_module, processor, tmp)
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        writer.close()
    accelerator.wait_for_everyone()
    skipped = {t: len(s.rejected) for t, s in streams.items()}
    return TrainResult(output_dir=out, final_dir=final, history=history, skipped=skipped)
