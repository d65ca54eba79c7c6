"""The AIA loss (paper Eq. 2 and Eq. 3). Pure tensors in, tensors out.

Eq. 2, for one task and one sample::

    L_AIA = 1/L * sum_l huber_{delta_l}(I_l - T_l)

with ``huber_d(x) = 0.5 x^2`` if ``|x| <= d`` else ``d (|x| - 0.5 d)`` -- exactly
``torch.nn.HuberLoss(delta=d)``. Samples that carry no statistic (CFG-blanked prompts,
an empty query or key set) add 0; the batch value divides the sum by the batch's samples
(``denominator="all"``, the released code: ``modeling_vlm.py:306-310,358-361`` add
``attn_loss * 0`` for them and divide by layers x samples) or by the samples that carry it
(``denominator="enabled"``).

Eq. 3: ``L = L_NTP + lambda_und * L_AIA(und) + lambda_gen * L_AIA(gen)``.

Ablations of the paper: ``mode="mse"`` ("w/o Huber", plain ``0.5 x^2`` so that it equals
the Huber loss inside its threshold) and per-layer targets ("w/o stage-level"), which
is a property of the targets (:mod:`aia.targets.stages`), not of the loss.
"""

from __future__ import annotations

import torch

__all__ = ["DENOMINATORS", "LOSS_MODES", "aia_loss", "huber", "total_loss"]

LOSS_MODES = ("huber", "mse")
DENOMINATORS = ("all", "enabled")


def huber(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Elementwise Huber with a per-element threshold (``torch.nn.HuberLoss`` semantics)."""
    ax = x.abs()
    return torch.where(ax <= delta, 0.5 * x * x, delta * (ax - 0.5 * delta))


def aia_loss(
    intensity: torch.Tensor,
    target: torch.Tensor,
    delta: torch.Tensor,
    valid: torch.Tensor | None = None,
    mode: str = "huber",
    denominator: str = "all",
) -> torch.Tensor:
    """AIA loss of one task (Eq. 2), averaged over layers and samples.

    Args:
        intensity: ``[L, B]`` per-layer, per-sample intensity (``Capture.intensity``).
        target: ``[L]`` per-layer target T_l.
        delta: ``[L]`` per-layer Huber threshold delta_l (> 0).
        valid: bool ``[B]``, samples that carry the term (``Capture.valid``); all if ``None``.
        mode: ``"huber"`` (default) or ``"mse"`` (the paper's "w/o Huber" ablation).
        denominator: ``"all"`` divides the enabled samples' sum by all ``B`` samples
            (the released code, ``modeling_vlm.py:310,361``), ``"enabled"`` by the enabled ones.

    Returns:
        fp32 scalar; 0 (still attached to the graph) when no sample is enabled.
    """
    if mode not in LOSS_MODES:
        raise ValueError(f"mode must be one of {LOSS_MODES}, got {mode!r}")
    if denominator not in DENOMINATORS:
        raise ValueError(f"denominator must be one of {DENOMINATORS}, got {denominator!r}")
    if intensity.dim() != 2:
        raise ValueError(f"intensity must be [L, B], got {tuple(intensity.shape)}")
    num_layers, batch = intensity.shape
    if target.shape != (num_layers,) or delta.shape != (num_layers,):
        raise ValueError(
            f"targets for {num_layers} layers needed, got target {tuple(target.shape)} and delta {tuple(delta.shape)}"
        )
    x = intensity.float() - target.to(intensity.device, torch.float32)[:, None]  # [L, B]
    if mode == "huber":
        per = huber(x, delta.to(intensity.device, torch.float32)[:, None])
    else:
        per = 0.5 * x * x
    per_sample = per.mean(0)  # [B]
    if valid is None:
        valid = torch.ones(batch, dtype=torch.bool, device=intensity.device)
    weight = valid.to(per_sample.device, torch.float32)
    count = weight.sum().clamp(min=1.0) if denominator == "enabled" else float(batch)
    return (per_sample * weight).sum() / count


def total_loss(ntp: torch.Tensor, aia_terms: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Eq. 3: ``ntp + sum_task weights[task] * aia_terms[task]``.

    Tensors or plain floats (a metrics row). The training step passes its micro-batch's
    share of the global batch folded into ``ntp`` and ``weights`` (:mod:`aia.training.step`).
    """
    total = ntp
    for task, term in aia_terms.items():
        if task not in weights:
            raise KeyError(f"no AIA weight for task {task!r}; weights given for {sorted(weights)}")
        total = total + weights[task] * term
    return total
