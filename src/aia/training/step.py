"""One optimizer step: the per-micro-batch loss module and the micro-batch loop around it.

:class:`UnifiedStep` computes one micro-batch's loss (NTP plus ``lambda_task * L_AIA``);
:func:`optimizer_step` runs a step's micro-batch schedule
(:func:`aia.training.streams.step_schedule`) through it and returns what the step
accumulated (:class:`StepSums`), which :meth:`StepSums.row` turns into a metrics row.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from typing import TYPE_CHECKING

import torch
from torch import nn

from aia.adapters import Batch
from aia.adapters.base import unwrap
from aia.attention import capture
from aia.core.loss import aia_loss
from aia.targets.presets import TargetProfile
from aia.training.config import RunConfig
from aia.training.streams import step_schedule

if TYPE_CHECKING:
    from aia.training.setup import Run

__all__ = ["StepSums", "UnifiedStep", "batch_tensors", "optimizer_step"]


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


class StepSums:
    """What one optimizer step accumulated on this rank, over its micro-batches.

    ``sums`` holds ``loss``, ``loss/ntp`` and per task ``loss/ntp/<task>`` (with AIA on also
    ``loss/aia/<task>`` and ``aia_samples/<task>``); ``counts`` the micro-batches per task (in
    schedule order; only the step's task under ``data.mixing`` random or alternate, so its row
    has only that task's keys); ``curves`` per task the sum over AIA-carrying samples of their per-layer
    intensity; ``grad_norm`` the norm before clipping.
    """

    def __init__(self, device: torch.device, aia: bool):
        def zero() -> torch.Tensor:
            return torch.zeros((), device=device)

        self.aia = aia
        self.sums: dict[str, torch.Tensor] = defaultdict(zero)
        self.counts: dict[str, int] = defaultdict(int)
        self.curves: dict[str, torch.Tensor] = defaultdict(zero)  # 0, then [L]
        self.grad_norm = zero()

    def add(self, task: str, res: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's :class:`UnifiedStep` output."""
        self.sums["loss"] += res["loss"].detach().float()
        self.sums["loss/ntp"] += res["ntp"].detach().float()
        self.sums[f"loss/ntp/{task}"] += res["ntp"].detach().float()
        self.counts[task] += 1
        if self.aia:
            self.sums[f"loss/aia/{task}"] += res["aia"].detach().float()
            self.sums[f"aia_samples/{task}"] += res["aia_samples"].detach()
            self.curves[task] = self.curves[task] + res["intensity"].detach().float() * res["aia_samples"].detach()

    def non_finite(self, accelerator) -> str | None:
        """The first of this step's terms (NTP or AIA per task, the gradient norm) that is not
        finite on any rank, else None. Collective: call it on every rank after every step."""
        names = sorted(k for k in self.sums if k.startswith(("loss/ntp/", "loss/aia/"))) + ["grad_norm"]
        values = [self.sums[k] for k in names[:-1]] + [self.grad_norm]
        bad = torch.stack([(~torch.isfinite(v.float())).float() for v in values])
        bad = accelerator.reduce(bad, reduction="sum")
        return next((name for name, b in zip(names, bad.tolist(), strict=True) if b > 0), None)

    def row(self, accelerator, step: int, lr: float, step_time: float, intensity: bool) -> dict:
        """The metrics row of optimizer step ``step`` (1-based), averaged or summed over ranks.

        Collective: call it on every rank at the same steps. ``intensity`` adds the per-layer
        intensities.
        """
        n_total = sum(self.counts.values())
        means = {"loss": self.sums["loss"] / n_total, "loss/ntp": self.sums["loss/ntp"] / n_total}
        means["grad_norm"] = self.grad_norm
        for task, n in self.counts.items():
            means[f"loss/ntp/{task}"] = self.sums[f"loss/ntp/{task}"] / n
            if self.aia:
                means[f"loss/aia/{task}"] = self.sums[f"loss/aia/{task}"] / n
        keys = sorted(means)
        reduced = accelerator.reduce(torch.stack([means[k].float() for k in keys]), reduction="mean")
        row: dict = {"step": step, "lr": lr, "time/step_s": step_time}
        row.update({k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)})
        for task in self.counts if self.aia else ():
            # an intensity sum [L] and its sample count per task, summed over ranks
            total = accelerator.reduce(torch.cat([self.curves[task], self.sums[f"aia_samples/{task}"].view(1)]), "sum")
            row[f"aia_samples/{task}"] = float(total[-1])
            if intensity and total[-1] > 0:
                row[f"intensity/{task}"] = [round(float(x), 6) for x in total[:-1] / total[-1]]
        return row


def optimizer_step(run: Run, step: int) -> StepSums:
    """Run optimizer step ``step`` (0-based): forward and backward every micro-batch of its
    schedule, clip and step the optimizer at the last one (accelerate's ``accumulate``).

    The LR scheduler is not stepped here.
    """
    accelerator, cfg = run.accelerator, run.cfg
    sums = StepSums(accelerator.device, aia=cfg.aia.enabled)
    for task, counter in step_schedule(step, cfg.train.grad_accum, run.ratio, cfg.data.mixing, cfg.train.seed):
        batch = run.streams[task].batch(counter, cfg.data.batch_size, run.rank, run.world).to(accelerator.device)
        with accelerator.accumulate(run.step_module), run.core.capturing():
            res = run.step_module(task, **batch_tensors(batch))
            accelerator.backward(res["loss"])
            if accelerator.sync_gradients:
                norm = accelerator.clip_grad_norm_(run.params, cfg.optim.max_grad_norm or float("inf"))
                sums.grad_norm = norm.detach().float() if norm is not None else sums.grad_norm
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        sums.add(task, res)
    return sums
