"""Derive stage-level AIA targets from measured intensity profiles.

The paper splits the layers into a few contiguous stages "by the magnitude" of a
reference model's curve and gives each stage one target and one Huber threshold.
:func:`derive_targets` does this for our own reference profiles:

Stages
    Exact optimal 1-D segmentation of the mean curve ``m_l`` into ``K`` contiguous
    stages minimising the within-stage sum of squared deviations
    ``sum_k sum_{l in k} (m_l - mean_k)^2`` (dynamic programming, O(K L^2)).
    Ties (equal cost up to 1e-12 relative) go to the most balanced split (smallest
    sum of squared stage lengths), so a flat curve gets near-equal stages.

Target
    ``T_k`` = mean of ``m_l`` over the stage's layers.

Huber threshold
    ``delta_k = max(min_delta, c * s_k)`` with ``s_k`` the population std of the
    per-sample values pooled over the stage's layers (all N x |stage| numbers, around
    their common mean). Defaults ``c = 1.0``, ``min_delta = 0.01``:

    * ``c = 1``: a deviation within one typical sample-to-target spread is penalised
      quadratically (the ordinary regime), larger ones only linearly, so single odd
      batches cannot dominate the gradient. With the spreads the paper reports
      (0.02 to 0.13) this gives deltas of the same order as its Tables S4/S5
      (0.05 to 0.20).
    * ``min_delta = 0.01``: the Huber gradient outside the quadratic zone is
      ``delta * sign(x)``; a delta near 0 (N = 1, or a layer that never varies) would
      make the loss vanish. 0.01 is a fifth of the smallest delta and of the smallest
      step between stage targets that the paper publishes (both 0.05), and about ten
      times the bf16 rounding of an intensity.

``per_layer=True`` is the paper's "w/o stage-level intensity" ablation: every layer
is its own stage with ``T_l = m_l`` and ``delta_l = max(min_delta, c * std_l)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from aia.core.spans import TASKS
from aia.measure.profile import IntensityProfile
from aia.targets.presets import Stage, TargetProfile

__all__ = ["DELTA_SCALE", "MIN_DELTA", "segment", "derive_stages", "derive_targets"]

DELTA_SCALE = 1.0  #: c in delta = max(min_delta, c * within-stage std)
MIN_DELTA = 0.01  #: floor of delta (see the module docstring)


def segment(curve: np.ndarray, stages: int) -> list[tuple[int, int]]:
    """Optimal split of ``curve`` [L] into ``stages`` contiguous half-open ranges.

    Minimises the within-stage sum of squared deviations exactly (dynamic programming
    over prefix sums, O(stages * L^2)); near-ties go to the most balanced split.

    Returns:
        ``[(start, end), ...]`` covering ``[0, L)`` in order.
    """
    x = np.asarray(curve, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"curve must be a non-empty 1-D array, got shape {x.shape}")
    L = x.size
    if isinstance(stages, bool) or not isinstance(stages, (int, np.integer)) or stages < 1:
        raise ValueError(f"stages must be a positive integer, got {stages!r}")
    if stages > L:
        raise ValueError(f"stages={stages} is more than the {L} layers of the curve")
    x = x - x.mean()  # centring reduces cancellation in the prefix-sum cost
    s1 = np.concatenate([[0.0], np.cumsum(x)])
    s2 = np.concatenate([[0.0], np.cumsum(x * x)])
    tol = 1e-12 * max(float(s2[-1]), 1e-300)

    def cost(i: np.ndarray, j: int) -> np.ndarray:  # SSE of x[i:j] for a vector of starts i
        n = j - i
        return np.maximum(s2[j] - s2[i] - (s1[j] - s1[i]) ** 2 / n, 0.0)

    # best[k][j]: min cost of x[:j] in k stages; bal[k][j]: its sum of squared lengths.
    best = np.full((stages + 1, L + 1), np.inf)
    bal = np.full((stages + 1, L + 1), np.inf)
    arg = np.zeros((stages + 1, L + 1), dtype=np.int64)
    best[0, 0] = bal[0, 0] = 0.0
    for k in range(1, stages + 1):
        for j in range(k, L - (stages - k) + 1):
            i = np.arange(k - 1, j)  # start of the last stage; x[:i] holds k-1 stages
            total = best[k - 1, i] + cost(i, j)
            balance = bal[k - 1, i] + (j - i) ** 2
            near = total <= total.min() + tol
            pick = int(np.flatnonzero(near)[np.argmin(balance[near])])
            best[k, j], bal[k, j], arg[k, j] = total[pick], balance[pick], i[pick]
    bounds, j = [], L
    for k in range(stages, 0, -1):
        i = int(arg[k, j])
        bounds.append((i, j))
        j = i
    return bounds[::-1]


def derive_stages(
    profile: IntensityProfile,
    stages: int = 4,
    per_layer: bool = False,
    c: float = DELTA_SCALE,
    min_delta: float = MIN_DELTA,
) -> tuple[Stage, ...]:
    """Stages of one task from its profile (rule in the module docstring)."""
    if not c > 0 or not min_delta > 0:
        raise ValueError(f"c and min_delta must be > 0, got c={c}, min_delta={min_delta}")
    L = profile.num_layers
    bounds = [(i, i + 1) for i in range(L)] if per_layer else segment(profile.mean, stages)
    out = []
    for start, end in bounds:
        target = float(np.clip(profile.mean[start:end].mean(), 0.0, 1.0))
        spread = float(profile.per_sample[:, start:end].std(ddof=0))  # pooled over samples and layers
        out.append(Stage(start, end, target=target, delta=max(min_delta, c * spread)))
    return tuple(out)


def derive_targets(
    gen_profile: IntensityProfile | None,
    und_profile: IntensityProfile | None,
    stages: int = 4,
    per_layer: bool = False,
    name: str = "derived",
    fallback: TargetProfile | str | Path | None = None,
    c: float = DELTA_SCALE,
    min_delta: float = MIN_DELTA,
    num_layers: int | None = None,
) -> TargetProfile:
    """Stage-level targets for both tasks from reference profiles.

    Each task's stages are derived on its own reference's depth; the references of the two tasks may
    differ in depth (the paper's Qwen3-VL and HunyuanImage do, as do Qwen-VL and GLM-Image): each task's
    targets are then mapped by relative depth (:meth:`TargetProfile.resize`) to ``num_layers``.

    Args:
        gen_profile: profile of the generation reference (``task == "gen"``), or None.
        und_profile: profile of the understanding reference (``task == "und"``), or None.
        stages: number of contiguous stages per task (1 <= stages <= num_layers).
        per_layer: one stage per layer (the paper's "w/o stage-level" ablation).
        name: name of the result.
        fallback: targets (a :class:`TargetProfile`, a preset name or a targets YAML path) for
            a task without a profile; resized by relative depth to the profiles' depth.
        c: delta = max(min_delta, c * within-stage std).
        min_delta: floor of delta.
        num_layers: depth of the result (None: the profiles' depth, the deeper one where they differ).

    Returns:
        A :class:`TargetProfile` of ``num_layers`` layers.
    """
    given = {"gen": gen_profile, "und": und_profile}
    for task, p in given.items():
        if p is not None and p.task != task:
            raise ValueError(f"the {task} profile ({p.model}) was measured on task {p.task!r}")
    depths = {p.num_layers for p in given.values() if p is not None}
    if not depths:
        raise ValueError("derive_targets needs at least one profile")
    if num_layers is not None and (isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1):
        raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
    L = num_layers or max(depths)
    fb = TargetProfile.load(fallback) if isinstance(fallback, (str, Path)) else fallback
    tasks: dict[str, tuple[Stage, ...]] = {}
    sources = []
    for task in TASKS:
        p = given[task]
        if p is not None:
            own = derive_stages(p, stages, per_layer, c, min_delta)
            tasks[task] = TargetProfile(name, p.num_layers, {t: own for t in TASKS}).resize(L).tasks[task]
            resized = "" if p.num_layers == L else f" resized {p.num_layers}->{L}"
            sources.append(f"{task}: {p.model} (n={p.n}){resized}")
        elif fb is not None:
            tasks[task] = fb.resize(L).tasks[task]
            sources.append(f"{task}: {fb.name}" + ("" if fb.num_layers == L else f" resized {fb.num_layers}->{L}"))
        else:
            raise ValueError(f"no {task} profile given and no fallback targets for {task}; pass fallback=<preset>")
    how = "per-layer" if per_layer else f"{stages} stages"
    source = f"derived ({how}, c={c}, min_delta={min_delta}) from " + "; ".join(sources)
    return TargetProfile(name, L, tasks, source=source)
