"""One optimizer step: the per-micro-batch loss module and the micro-batch loop around it.

:class:`UnifiedStep` computes one micro-batch's loss (NTP plus ``lambda_task * L_AIA``);
:func:`optimizer_step` runs a step's micro-batch schedule
(:func:`aia.training.streams.step_schedule`) through it and returns what the step
accumulated (:class:`StepSums`), which :meth:`StepSums.row` turns into a metrics row.

Loss normalisation (:class:`StepNorm`): the loss of an optimizer step is that of its
*global batch* (every micro-batch of every rank)::

    J = sum_task share_task * (S_task / N_task + lambda_task * A_task / V_task)

with ``S_task`` the sum of the task's next-token losses over its ``N_task`` supervised
tokens, ``A_task`` the sum of the per-sample AIA losses (Eq. 2) over its ``V_task``
samples (every sample under ``aia.denominator=all``, as released; the samples that carry
the term under ``enabled``), all counted over the global batch, and ``share_task`` the task's share
of the step's micro-batches (``ratio_task / (ratio_und + ratio_gen)`` under
``data.mixing=both``; 1 for the one task of a ``random`` / ``alternate`` step). The
counts are known before the forward passes (labels and span masks), summed over ranks
once per step; each micro-batch then contributes its exact part of ``J``, scaled by
``world x micro-batches`` to undo the averaging of DDP / FSDP / DeepSpeed over ranks and
of accelerate over accumulation rounds. So W ranks x b samples, 1 rank x W*b samples and
accumulation of 2 x b/2 samples all take the same gradient, up to reduction order.
Eq. 3 itself is :func:`aia.core.loss.total_loss`, given each micro-batch's share of ``J``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict

import torch
from torch import nn

from aia.adapters import Batch
from aia.adapters.base import supervised_tokens, unwrap
from aia.attention import capture
from aia.core.intensity import span_valid
from aia.core.loss import aia_loss, total_loss
from aia.targets.presets import TargetProfile
from aia.training.config import RunConfig
from aia.training.streams import step_schedule

__all__ = ["StepNorm", "StepSums", "UnifiedStep", "batch_tensors", "optimizer_step"]


class UnifiedStep(nn.Module):
    """The model plus the per-micro-batch loss, as one module (so DDP/FSDP wrap the whole step).

    ``forward(task, ntp_weight=1, aia_weight=1, **tensors)`` returns ``{"loss", "ntp", "aia",
    "ntp_tokens", "intensity" [L], "aia_samples", "enabled"}``: ``ntp`` is the micro-batch's mean
    over its ``ntp_tokens`` supervised tokens, ``aia`` its mean over its ``aia_samples`` samples
    (``aia.denominator``), ``intensity`` the mean curve of its ``enabled`` samples (those that carry
    the term), and ``loss`` is Eq. 3 (:func:`~aia.core.loss.total_loss`) of ``ntp_weight * ntp``
    and ``aia`` with weight ``lambda_task * aia_weight`` (the weights place the micro-batch in its
    global batch, :class:`StepNorm`). With AIA on it runs inside ``with step.capturing():``, which
    also spans the backward.
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

    def forward(
        self,
        task: str,
        ntp_weight: float = 1.0,
        aia_weight: float = 1.0,
        num_targets: int | None = None,
        **tensors: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        batch = Batch(
            task=task,
            inputs={k[6:]: v for k, v in tensors.items() if k.startswith("input_")},
            **{k: tensors[k] for k in ("labels", "roles", "attention_mask", "query_mask", "key_mask")},
            num_targets=num_targets,
        )
        if not self.aia_cfg.enabled:
            out = self.adapter.forward(self.model, batch)
            zero = out.loss.detach() * 0
            return {
                "loss": ntp_weight * out.loss,
                "ntp": out.loss,
                "ntp_tokens": out.num_tokens,
                "aia": zero,
                "intensity": None,
                "aia_samples": zero,
                "enabled": zero,
            }
        cap = self.capture
        if cap is None:
            raise RuntimeError("UnifiedStep with AIA must run inside `with step.capturing():`")
        out = self.adapter.forward(self.model, batch)
        intensity, valid = cap.intensity, cap.valid  # [L, B], [B]
        target, delta = getattr(self, f"target_{task}"), getattr(self, f"delta_{task}")
        denominator = self.aia_cfg.denominator
        aia = aia_loss(intensity, target, delta, valid, mode=self.aia_cfg.mode, denominator=denominator)
        n = valid.sum()
        mean_curve = (intensity.detach() * valid).sum(1) / n.clamp(min=1)  # [L]
        # the weight is one float, lambda_task * aia_weight, as the step has always rounded it
        loss = total_loss(ntp_weight * out.loss, {task: aia}, {task: self.weights[task] * aia_weight})
        return {
            "loss": loss,
            "ntp": out.loss,
            "ntp_tokens": out.num_tokens,
            "aia": aia,
            "intensity": mean_curve,
            "aia_samples": n.float()
            if denominator == "enabled"
            else torch.full((), float(valid.numel()), device=n.device),
            "enabled": n.float(),
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


def batch_tensors(batch: Batch) -> dict:
    """A :class:`Batch` as flat keyword tensors for :class:`UnifiedStep` (DDP scatters these),
    plus the host's count of its next-token targets (``num_targets``, an int or None)."""
    out: dict = {f"input_{k}": v for k, v in batch.inputs.items()}
    out.update(
        labels=batch.labels,
        roles=batch.roles,
        attention_mask=batch.attention_mask,
        query_mask=batch.query_mask,
        key_mask=batch.key_mask,
        num_targets=batch.num_targets,
    )
    return out


class StepNorm:
    """The global batch of one optimizer step: what each micro-batch's loss is divided by.

    Built on every rank from the step's micro-batches (``[(task, batch), ...]``, the same
    schedule everywhere) with one collective: per task the supervised tokens ``N_task``, the
    AIA-enabled samples (``samples``) and the samples the AIA loss is divided by
    (``denominators``: all of them under ``denominator="all"``, else the enabled ones), summed
    over all micro-batches of all ranks. See the module docstring for the loss it defines.
    """

    def __init__(self, batches: list[tuple[str, Batch]], accelerator, denominator: str = "all"):
        self.world = accelerator.num_processes
        self.micro_batches = len(batches)
        self.share = {task: sum(t == task for t, _ in batches) / len(batches) for task, _ in batches}
        #: per micro-batch of this rank: (task, supervised tokens, enabled samples)
        self.local = [
            (task, supervised_tokens(b.labels), int(span_valid(b.query_mask, b.key_mask).sum())) for task, b in batches
        ]
        #: per micro-batch of this rank: the samples its AIA loss is divided by
        self.local_denominators = [
            v if denominator == "enabled" else b.labels.shape[0]
            for (_, _, v), (_, b) in zip(self.local, batches, strict=True)
        ]
        counts = torch.zeros(6, dtype=torch.long)
        for (task, n, v), d in zip(self.local, self.local_denominators, strict=True):
            col = 0 if task == "und" else 1
            counts[col] += n
            counts[2 + col] += v
            counts[4 + col] += d
        if self.world > 1:  # a collective; its result sizes the weights on the host (one sync per step)
            counts = accelerator.reduce(counts.to(accelerator.device), reduction="sum")
        total = counts.tolist()  # one process: host counts, no device round trip
        self.tokens = {"und": total[0], "gen": total[1]}
        self.samples = {"und": total[2], "gen": total[3]}
        self.denominators = {"und": total[4], "gen": total[5]}

    def weights(self, i: int) -> tuple[float, float]:
        """``(ntp_weight, aia_weight)`` of this rank's micro-batch ``i``: its share of the global
        token and AIA-denominator counts of its task, times ``share_task x world x micro-batches``
        (the factor the ranks' and accumulation rounds' averaging divides by again)."""
        task, n, _ = self.local[i]
        scale = self.share[task] * self.world * self.micro_batches
        d = self.local_denominators[i]
        return scale * n / max(self.tokens[task], 1), scale * d / max(self.denominators[task], 1)


class StepSums:
    """What one optimizer step accumulated on this rank, over its micro-batches.

    ``sums`` holds per task ``loss/ntp/<task>`` (the sum of token losses) and with AIA on
    ``loss/aia/<task>`` (the sum of per-sample AIA losses, 0 for a sample without the term);
    ``curves`` per task the sum over AIA-carrying samples of their per-layer intensity;
    ``grad_norm`` the norm before clipping. :meth:`row` divides the sums of all ranks by the
    global counts of ``norm`` (:class:`StepNorm`). Under ``data.mixing`` random or
    alternate only the step's task has keys.
    """

    def __init__(self, device: torch.device, aia: bool, norm: StepNorm, weights: dict[str, float]):
        def zero() -> torch.Tensor:
            return torch.zeros((), device=device)

        self.aia, self.norm, self.weights = aia, norm, weights
        self.sums: dict[str, torch.Tensor] = defaultdict(zero)
        self.curves: dict[str, torch.Tensor] = defaultdict(zero)  # 0, then [L]
        self.grad_norm = zero()
        self.skipped = False  # the update was dropped (train.skip_nonfinite)

    def add(self, task: str, res: dict[str, torch.Tensor]) -> None:
        """Add one micro-batch's :class:`UnifiedStep` output."""
        self.sums[f"loss/ntp/{task}"] += res["ntp"].detach().float() * res["ntp_tokens"]
        if self.aia:
            self.sums[f"loss/aia/{task}"] += res["aia"].detach().float() * res["aia_samples"].detach()
            self.curves[task] = self.curves[task] + res["intensity"].detach().float() * res["enabled"].detach()

    def non_finite(self, accelerator) -> str | None:
        """The first of this step's terms (NTP or AIA per task, the gradient norm) that is not
        finite on any rank, else None. Collective: call it on every rank after every step."""
        names = sorted(k for k in self.sums if k.startswith(("loss/ntp/", "loss/aia/"))) + ["grad_norm"]
        values = [self.sums[k] for k in names[:-1]] + [self.grad_norm]
        bad = torch.stack([(~torch.isfinite(v.float())).float() for v in values])
        bad = accelerator.reduce(bad, reduction="sum")
        # host sync (one per step, kept): stopping or skipping must be decided before anything is saved
        return next((name for name, b in zip(names, bad.tolist(), strict=True) if b > 0), None)

    def row(self, accelerator, step: int, lr: float, step_time: float, intensity: bool) -> dict:
        """The metrics row of optimizer step ``step`` (1-based): the global batch's losses.

        Collective: call it on every rank at the same steps. ``intensity`` adds the per-layer
        intensities.
        """
        tasks = sorted(self.norm.share)
        keys = [f"loss/ntp/{t}" for t in tasks] + ([f"loss/aia/{t}" for t in tasks] if self.aia else [])
        reduced = accelerator.reduce(torch.stack([self.sums[k].float() for k in keys]), reduction="sum")
        total = dict(zip(keys, reduced.tolist(), strict=True))
        row: dict = {"step": step, "lr": lr, "time/step_s": step_time, "grad_norm": float(self.grad_norm)}
        ntp = loss = 0.0
        for t in tasks:
            share = self.norm.share[t]
            row[f"loss/ntp/{t}"] = total[f"loss/ntp/{t}"] / max(self.norm.tokens[t], 1)
            row[f"ntp_tokens/{t}"] = self.norm.tokens[t]
            ntp += share * row[f"loss/ntp/{t}"]
            aia = {}
            if self.aia:
                aia[t] = row[f"loss/aia/{t}"] = total[f"loss/aia/{t}"] / max(self.norm.denominators[t], 1)
                row[f"aia_samples/{t}"] = self.norm.samples[t]
            loss += share * total_loss(row[f"loss/ntp/{t}"], aia, self.weights)
        row["loss/ntp"], row["loss"] = ntp, loss
        for t in tasks if self.aia and intensity else ():
            # an intensity sum [L] per task, summed over ranks
            curve = accelerator.reduce(self.curves[t].clone(), "sum")
            if self.norm.samples[t] > 0:
                row[f"intensity/{t}"] = [round(float(x), 6) for x in curve / self.norm.samples[t]]
        return row


def optimizer_step(run, step: int) -> StepSums:
    """Run optimizer step ``step`` (0-based) of ``run`` (an :class:`aia.training.setup.Run`, which
    holds this module's :class:`UnifiedStep`, so it is not imported here): forward and backward
    every micro-batch of its schedule, clip and step the optimizer at the last one (accelerate's
    ``accumulate``).

    The step's micro-batches are built first, so that their global token and sample counts
    (:class:`StepNorm`) weight each one's loss. With ``train.skip_nonfinite`` a non-finite
    gradient norm drops the update (``StepSums.skipped``). The LR scheduler is not stepped here.
    """
    accelerator, cfg = run.accelerator, run.cfg
    schedule = step_schedule(step, cfg.train.grad_accum, run.ratio, cfg.data.mixing, cfg.train.seed)
    batches = [
        (task, run.streams[task].batch(counter, cfg.data.batch_size, run.rank, run.world)) for task, counter in schedule
    ]
    norm = StepNorm(batches, accelerator, cfg.aia.denominator)
    sums = StepSums(accelerator.device, aia=cfg.aia.enabled, norm=norm, weights=run.core.weights)
    for i, (task, batch) in enumerate(batches):
        ntp_weight, aia_weight = norm.weights(i)
        expected = norm.local[i][1]
        batch = batch.to(accelerator.device)
        with accelerator.accumulate(run.step_module), run.core.capturing():
            res = run.step_module(task, ntp_weight=ntp_weight, aia_weight=aia_weight, **batch_tensors(batch))
            if res["ntp_tokens"] != expected:
                raise RuntimeError(
                    f"the {run.core.adapter.family} adapter's NTP loss averaged {res['ntp_tokens']} tokens, "
                    f"but its labels hold {expected} targets: the global-batch normalisation needs them equal"
                )
            accelerator.backward(res["loss"])
            if accelerator.sync_gradients:
                grad_norm = accelerator.clip_grad_norm_(run.params, cfg.optim.max_grad_norm or float("inf"))
                if grad_norm is not None:  # DeepSpeed: its engine's global norm, a float
                    sums.grad_norm = torch.as_tensor(grad_norm, device=accelerator.device).detach().float()
                # the norm is global (the same on every rank), so is the decision; a host sync, only with
                # skip_nonfinite > 0 (whether to call the optimizer is decided on the host)
                sums.skipped = cfg.train.skip_nonfinite > 0 and not bool(torch.isfinite(sums.grad_norm))
            if not sums.skipped:
                run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        sums.add(task, res)
    return sums
