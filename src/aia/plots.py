"""Figures: layer-wise intensity profiles with targets (paper Fig. 1/4/5) and loss curves (Fig. 3).

Every figure comes in two calls: ``build_*_figure`` returns the matplotlib
:class:`~matplotlib.figure.Figure` (tests read its line data back), and ``plot_*``
builds it and writes ``<out>.png`` and ``<out>.svg`` (the suffix of ``out``, if any,
is replaced). Figures are made without pyplot, on the Agg canvas: no global state,
no display needed.

Line labels are stable so that the data can be found again:
``"<label>"`` for a profile's mean curve, ``"target <task>"`` for a target step line;
in loss figures one line per run labelled with the run's name (one colour per run in every
panel; NaN gaps where the run did not train the panel's task).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from aia.measure.profile import IntensityProfile
from aia.targets.presets import TargetProfile
from aia.training.metrics import read_metrics

__all__ = [
    "PlotResult",
    "TASK_TITLES",
    "build_profiles_figure",
    "plot_profiles",
    "build_losses_figure",
    "plot_losses",
    "protocol_text",
]

TASK_TITLES = {"gen": "generation (text \u2192 image)", "und": "understanding (image \u2192 text)"}
FORMATS = ("png", "svg")


@dataclass
class PlotResult:
    """Written files and the figure they were drawn from."""

    paths: list[Path]
    figure: Figure


def _new_figure(n_axes: int, width: float = 6.0, height: float = 4.0) -> tuple[Figure, list]:
    fig = Figure(figsize=(width * n_axes, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, n_axes, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, out: str | Path) -> list[Path]:
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() in {f".{f}" for f in FORMATS} else out
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in FORMATS:
        path = stem.parent / f"{stem.name}.{fmt}"
        fig.savefig(path, format=fmt, dpi=150)
        paths.append(path)
    return paths


# -- intensity profiles ----------------------------------------------------------------------


def protocol_text(profile: IntensityProfile) -> str:
    """How a profile was measured, in one short line: mode, decoding protocol, query positions,
    generation keys (from its ``settings``; older files without them give the mode only)."""
    s = profile.settings
    parts = [profile.mode]
    if profile.mode == "decode" and s:
        if s.get("decoding") == "multinomial":
            parts.append(f"sampled T={s.get('temperature')} CFG {s.get('cfg_weight')} seed {s.get('seed')}")
        elif "decoding" in s:
            parts.append(f"greedy, <= {s['max_new_tokens']} tokens" if s.get("max_new_tokens") else "greedy")
    spans = s.get("spans") or {}
    if spans:
        parts.append("predictive queries" if spans.get("predictive") else "own-position queries")
        if profile.task == "gen" and spans.get("gen_keys"):
            parts.append(f"keys={spans['gen_keys']}")
    return ", ".join(parts)


def build_profiles_figure(
    profiles: Sequence[IntensityProfile], labels: Sequence[str] | None = None, targets: TargetProfile | None = None
) -> Figure:
    """One subplot per task; per profile the mean curve with a +-std band; targets as steps +-delta.

    Args:
        profiles: one or more profiles (any mix of tasks and models).
        labels: legend label per profile; default ``"<model> (n=<n>)"``.
        targets: drawn on every task subplot; its depth must equal each profile's.

    Raises:
        ValueError: no profiles, label count mismatch, or targets of another depth.
    """
    profiles = list(profiles)
    if not profiles:
        raise ValueError("a profiles figure needs at least one profile")
    if labels is None:
        labels = [f"{p.model} (n={p.n})" for p in profiles]
    labels = list(labels)
    if len(labels) != len(profiles):
        raise ValueError(f"got {len(labels)} labels for {len(profiles)} profiles")
    if targets is not None:
        for p, label in zip(profiles, labels, strict=True):
            if p.num_layers != targets.num_layers:
                raise ValueError(
                    f"targets {targets.name!r} have {targets.num_layers} layers but profile {label!r} has "
                    f"{p.num_layers}; resize them first: targets.resize({p.num_layers})"
                )
    tasks = [t for t in ("gen", "und") if any(p.task == t for p in profiles)]
    fig, axes = _new_figure(len(tasks))
    for ax, task in zip(axes, tasks, strict=True):
        mine = [(p, lab) for p, lab in zip(profiles, labels, strict=True) if p.task == task]
        for p, label in mine:
            x = np.arange(p.num_layers)
            (line,) = ax.plot(x, p.mean, marker="o", markersize=3, label=label)
            ax.fill_between(x, p.mean - p.std, p.mean + p.std, color=line.get_color(), alpha=0.2, linewidth=0)
        if targets is not None:
            t, d = (np.asarray(v) for v in targets.per_layer(task))
            x = np.arange(targets.num_layers)
            ax.step(x, t, where="mid", color="black", linestyle="--", label=f"target {task}")
            ax.fill_between(
                x, t - d, t + d, step="mid", color="gray", alpha=0.15, linewidth=0, label=r"target $\pm\delta$"
            )
        models = ", ".join(dict.fromkeys(p.model for p, _ in mine))
        samples = ", ".join(str(p.n) for p, _ in mine)
        protocols = "; ".join(dict.fromkeys(protocol_text(p) for p, _ in mine))
        ax.set_title(f"{TASK_TITLES[task]}\n{models}; n={samples} samples\n{protocols}", fontsize=8)
        ax.set_xlabel("layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("interaction intensity")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def plot_profiles(
    profiles: Sequence[IntensityProfile],
    labels: Sequence[str] | None,
    targets: TargetProfile | None,
    out: str | Path,
) -> PlotResult:
    """Draw :func:`build_profiles_figure` and write ``<out>.png`` and ``<out>.svg``."""
    fig = build_profiles_figure(profiles, labels, targets)
    return PlotResult(_save(fig, out), fig)


# -- loss curves ------------------------------------------------------------------------------


def _matches(name: str, key: str | None) -> bool:
    if not name.startswith("loss/"):
        return False
    return key is None or name == f"loss/{key}" or name.startswith(f"loss/{key}/")


def _task_keys(row: Mapping, group: str) -> set[str]:
    return {k for k in row if k.startswith(f"loss/{group}/") and row[k] is not None}


def _curve(recs: list[dict], k: str) -> tuple[list[float], list[float]]:
    """The (steps, values) of key ``k`` in one run's rows, a NaN gap wherever the run logged
    rows without it (steps where that task was not trained), so no line crosses them.

    A group total (``loss/ntp``) is drawn only at the rows that trained every task the run
    trains: under one task per step (``data.mixing=random`` or ``alternate``) it would be each
    step's task in turn, a zig-zag between two curves that their own panels already show.
    """
    group = k.split("/")[1]
    tasks = set().union(*(_task_keys(r, group) for r in recs))
    steps: list[float] = []
    values: list[float] = []
    gap = False
    for r in recs:
        mine = _task_keys(r, group)
        if r.get(k) is None or (k == f"loss/{group}" and mine and mine != tasks):
            gap = bool(steps)
            continue
        if gap:
            steps.append(np.nan)
            values.append(np.nan)
            gap = False
        steps.append(r["step"])
        values.append(r[k])
    return steps, values


def build_losses_figure(runs: Mapping[str, str | Path], key: str | None = "ntp") -> Figure:
    """One subplot per loss key, one line per run (x: step, y: the logged value).

    Each run keeps one colour in every panel. A task's curve is drawn only at the steps that
    trained it: the line breaks (a NaN in its data) where the run logged steps without the
    key, and a marker shows a step that stands alone. A group total (``loss/ntp``) is drawn
    at the steps that trained all of the run's tasks (none under one task per step; the
    panel is left out when no run has such a step).

    Args:
        runs: ``{run name: metrics.jsonl path or run directory}``.
        key: which loss keys: ``"ntp"`` takes ``loss/ntp`` and ``loss/ntp/*``, ``"aia"``
            takes ``loss/aia`` and ``loss/aia/*``; None takes every ``loss/*`` key.

    Raises:
        ValueError: no runs, an unreadable/empty log, or no run logged a matching key.
    """
    if not runs:
        raise ValueError("a losses figure needs at least one run")
    logs = {name: read_metrics(path) for name, path in runs.items()}
    colours = {name: f"C{i % 10}" for i, name in enumerate(logs)}
    keys = sorted({k for recs in logs.values() for r in recs for k in r if _matches(k, key)})
    if not keys:
        seen = sorted({k for recs in logs.values() for r in recs for k in r if k.startswith("loss/")})
        raise ValueError(f"no run logged a loss key matching {key!r}; loss keys present: {seen}")
    curves = {k: {name: _curve(recs, k) for name, recs in logs.items()} for k in keys}
    curves = {k: {name: c for name, c in by_run.items() if c[0]} for k, by_run in curves.items()}
    curves = {k: by_run for k, by_run in curves.items() if by_run}
    fig, axes = _new_figure(len(curves), width=5.0)
    for ax, (k, by_run) in zip(axes, curves.items(), strict=True):
        for name, (steps, values) in by_run.items():
            ax.plot(steps, values, label=name, color=colours[name], marker=".", markersize=3)
        ax.set_title(k)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return fig


def plot_losses(runs: Mapping[str, str | Path], out: str | Path, key: str | None = "ntp") -> PlotResult:
    """Draw :func:`build_losses_figure` and write ``<out>.png`` and ``<out>.svg``."""
    fig = build_losses_figure(runs, key)
    return PlotResult(_save(fig, out), fig)
