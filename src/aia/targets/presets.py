"""Stage-level AIA targets: one (target T, Huber threshold delta) per layer and task.

The AIA loss (paper Eq. 2/3) pulls the measured interaction intensity I_l of
every layer l toward a target T_l with a Huber loss of threshold delta_l. The
paper groups layers into a few contiguous *stages* that share one (T, delta);
:class:`TargetProfile` stores exactly that, for the two tasks ``"gen"``
(text -> image) and ``"und"`` (image -> text).

Presets
    ``TargetProfile.preset("janus-pro")`` (30 layers, paper Table S5) and
    ``TargetProfile.preset("emu3")`` (32 layers, paper Table S4) reproduce the
    published tables row by row (the tables list ``(delta, T)``, delta first).
    Janus-Pro's row ``l > 29`` is empty at 30 layers and is therefore omitted.
    ``TargetProfile.preset("janus-pro-released")`` is the bands the released training code
    hard-codes (``models/modeling_vlm.py:295-303,346-353`` at 88aef6b): Table S5 except
    understanding layer 20, whose target is 0.15 there (``layer_idx>=10 and layer_idx<=20``,
    ``:348``) and 0.30 in the table.

Other depths (relative-depth rule)
    ``profile.resize(L_new)`` maps a profile of depth ``L`` to depth ``L_new``:
    layer ``l`` of the new model takes the (T, delta) of source layer
    ``floor((l + 0.5) * L / L_new)``, i.e. of the source layer containing the
    centre of layer ``l`` on a relative-depth axis. Stages are then recomputed as
    maximal runs of equal (T, delta), so neighbouring table rows with equal values
    merge (a preset itself keeps the table's printed rows). Janus-Pro-1B (24 layers),
    for instance, gets ``TargetProfile.preset("janus-pro").resize(24)``: stages
    [0, 8), [8, 20), [20, 24) for generation and [0, 8), [8, 16), [16, 24) for
    understanding. The paper publishes no targets for that depth; this mapping is our
    choice. ``profile.by_index(L_new)`` is the other one (:data:`LAYER_MAPS`): layer ``l``
    keeps the values of source layer ``min(l, L - 1)``, as the released code's bands are
    written by absolute layer index (``modeling_vlm.py:295-303,346-353``).

YAML format (``to_yaml`` / ``from_yaml``)::

    name: janus-pro
    num_layers: 30
    source: "paper Table S5"      # optional free text
    gen:                          # required; stages in order, covering 0..num_layers-1
      - {layers: [0, 10], target: 0.40, delta: 0.20}    # half-open [start, end)
      - {layers: [10, 20], target: 0.40, delta: 0.10}
      - {layers: [20, 25], target: 0.40, delta: 0.10}
      - {layers: [25, 30], target: 0.20, delta: 0.05}
    und:                          # required
      - {layers: [0, 10], target: 0.10, delta: 0.05}
      - ...

Rules: ``target`` in [0, 1] (an intensity is a probability mass), ``delta > 0``,
stages contiguous without gaps or overlaps, starting at layer 0 and ending at
``num_layers``. Unknown keys are errors. A bad file raises :class:`ValueError`
whose message names the file and the field, e.g.
``targets.yaml: gen[2].delta must be > 0, got -0.1``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from aia.core.spans import TASKS

__all__ = ["LAYER_MAPS", "PRESETS", "Stage", "TargetProfile", "preset_names"]

#: how a profile meets a model of another depth: by relative depth or by absolute layer index
LAYER_MAPS = ("relative", "absolute")

_TOP_KEYS = {"name", "num_layers", "source", *TASKS}
_STAGE_KEYS = {"layers", "target", "delta"}


@dataclass(frozen=True)
class Stage:
    """Layers ``start <= l < end`` share one target and one Huber threshold."""

    start: int
    end: int  #: exclusive
    target: float
    delta: float

    @property
    def num_layers(self) -> int:
        return self.end - self.start


def _rows(rows: Sequence[tuple[int, int, float, float]]) -> tuple[Stage, ...]:
    """Table rows ``(start, end_exclusive, delta, T)`` -- the paper's order -- to stages."""
    return tuple(Stage(start, end, target=t, delta=d) for start, end, d, t in rows)


# Paper supplementary Tables S4 (Emu3) and S5 (Janus-Pro 7B), rows as printed.
# Row "25 <= l <= 30" is [25, 31); row "l > 30" at 32 layers is layer 31 alone.
# Janus-Pro's row "l > 29" is empty at 30 layers and therefore absent.
_PRESET_TABLES: dict[str, dict[str, Any]] = {
    "emu3": {
        "num_layers": 32,
        "source": "paper Table S4 (Emu3, 32 layers)",
        "gen": _rows(
            [
                (0, 10, 0.20, 0.40),
                (10, 20, 0.10, 0.40),
                (20, 25, 0.10, 0.40),
                (25, 31, 0.05, 0.20),
                (31, 32, 0.05, 0.20),
            ]
        ),
        "und": _rows(
            [
                (0, 10, 0.05, 0.10),
                (10, 20, 0.05, 0.15),
                (20, 25, 0.05, 0.30),
                (25, 31, 0.05, 0.30),
                (31, 32, 0.05, 0.20),
            ]
        ),
    },
    "janus-pro": {
        "num_layers": 30,
        "source": "paper Table S5 (Janus-Pro 7B, 30 layers)",
        "gen": _rows([(0, 10, 0.20, 0.40), (10, 20, 0.10, 0.40), (20, 25, 0.10, 0.40), (25, 30, 0.05, 0.20)]),
        "und": _rows([(0, 10, 0.05, 0.10), (10, 20, 0.05, 0.15), (20, 25, 0.05, 0.30), (25, 30, 0.05, 0.30)]),
    },
    # models/modeling_vlm.py at 88aef6b, 0-based layer_idx: generation `<10` (0.2, 0.4), `>=10 and <25`
    # (0.1, 0.4), else (0.05, 0.2) (:295-303); understanding delta 0.05 (:330), T `<10` 0.1,
    # `>=10 and <=20` 0.15, `>20 and <=29` 0.3 (:346-351); its `else` 0.2 (:352-353) is no layer of 30.
    "janus-pro-released": {
        "num_layers": 30,
        "source": "released training code, models/modeling_vlm.py:295-303,346-353 (zhengdian1/AIA 88aef6b)",
        "gen": _rows([(0, 10, 0.20, 0.40), (10, 25, 0.10, 0.40), (25, 30, 0.05, 0.20)]),
        "und": _rows([(0, 10, 0.05, 0.10), (10, 21, 0.05, 0.15), (21, 30, 0.05, 0.30)]),
    },
}
PRESETS: tuple[str, ...] = tuple(sorted(_PRESET_TABLES))


def preset_names() -> list[str]:
    """Names accepted by :meth:`TargetProfile.preset`."""
    return list(PRESETS)


def _check_stages(stages: Sequence[Stage], num_layers: int, where: str) -> None:
    """Raise ValueError unless ``stages`` tile ``[0, num_layers)`` with valid values."""
    if not stages:
        raise ValueError(f"{where} has no stages")
    expected = 0
    for i, s in enumerate(stages):
        at = f"{where}[{i}]"
        if not (0 <= s.start < s.end <= num_layers):
            raise ValueError(
                f"{at}.layers must satisfy 0 <= start < end <= num_layers={num_layers}, got [{s.start}, {s.end}]"
            )
        if s.start > expected:
            raise ValueError(f"{at}.layers starts at {s.start}: gap, layers {expected}..{s.start - 1} have no stage")
        if s.start < expected:
            raise ValueError(f"{at}.layers starts at {s.start}: overlaps the previous stage, which ends at {expected}")
        if not (math.isfinite(s.target) and 0.0 <= s.target <= 1.0):
            raise ValueError(f"{at}.target must be in [0, 1], got {s.target}")
        if not (math.isfinite(s.delta) and s.delta > 0.0):
            raise ValueError(f"{at}.delta must be > 0, got {s.delta}")
        expected = s.end
    if expected != num_layers:
        raise ValueError(
            f"{where}: stages end at layer {expected}, but num_layers={num_layers} (layers {expected}..{num_layers - 1} have no stage)"
        )


@dataclass(frozen=True)
class TargetProfile:
    """Stage-level (target, delta) for each task over ``num_layers`` layers.

    Attributes:
        name: a label (the preset or model name).
        num_layers: depth of the language model the targets are for.
        tasks: ``{"gen": stages, "und": stages}``; each tuple of :class:`Stage`
            tiles ``[0, num_layers)`` in order without gaps or overlaps.
        source: free text saying where the numbers come from.
    """

    name: str
    num_layers: int
    tasks: dict[str, tuple[Stage, ...]]
    source: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.num_layers, bool) or not isinstance(self.num_layers, int) or self.num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {self.num_layers!r}")
        if set(self.tasks) != set(TASKS):
            raise ValueError(f"tasks must be exactly {list(TASKS)}, got {sorted(self.tasks)}")
        object.__setattr__(self, "tasks", {t: tuple(self.tasks[t]) for t in TASKS})
        for task in TASKS:
            _check_stages(self.tasks[task], self.num_layers, task)

    # -- construction -------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str) -> TargetProfile:
        """A preset: the paper's ``"janus-pro"`` (Table S5, 30 layers) or ``"emu3"`` (Table S4, 32
        layers), or ``"janus-pro-released"`` (the released code's bands, 30 layers).

        For another depth, chain :meth:`resize`: ``TargetProfile.preset("janus-pro").resize(24)``.
        """
        key = name.lower()
        if key not in _PRESET_TABLES:
            raise ValueError(f"unknown target preset {name!r}; choose from {list(PRESETS)}")
        table = _PRESET_TABLES[key]
        return cls(key, table["num_layers"], {t: table[t] for t in TASKS}, source=table["source"])

    @classmethod
    def load(cls, spec: str | Path, num_layers: int | None = None, layer_map: str = "relative") -> TargetProfile:
        """A preset name or a YAML path, mapped to ``num_layers`` when that differs.

        Args:
            spec: a preset name (:data:`PRESETS`) or the path of a targets YAML file.
            num_layers: depth of the model being trained; ``None`` keeps the file's depth.
            layer_map: ``"relative"`` (:meth:`resize`) or ``"absolute"`` (:meth:`by_index`).
        """
        if layer_map not in LAYER_MAPS:
            raise ValueError(f"layer_map must be one of {', '.join(LAYER_MAPS)}; got {layer_map!r}")
        if isinstance(spec, str) and spec.lower() in _PRESET_TABLES:
            profile = cls.preset(spec)
        elif Path(spec).is_file():
            profile = cls.from_yaml(spec)
        else:
            raise ValueError(f"targets {str(spec)!r} is neither a preset ({list(PRESETS)}) nor an existing YAML file")
        if num_layers is None:
            return profile
        return profile.resize(num_layers) if layer_map == "relative" else profile.by_index(num_layers)

    @classmethod
    def from_per_layer(
        cls, name: str, values: Mapping[str, tuple[Sequence[float], Sequence[float]]], source: str = ""
    ) -> TargetProfile:
        """Build from per-layer ``{task: (targets [L], deltas [L])}``; stages = maximal equal runs."""
        lengths = {len(values[t][0]) for t in TASKS} | {len(values[t][1]) for t in TASKS}
        if len(lengths) != 1:
            raise ValueError(f"per-layer targets and deltas must all have one length, got lengths {sorted(lengths)}")
        tasks = {t: _runs(values[t][0], values[t][1]) for t in TASKS}
        return cls(name, lengths.pop(), tasks, source=source)

    # -- views ----------------------------------------------------------------------------

    def stages(self, task: str) -> tuple[Stage, ...]:
        """The stages of ``task`` (``"gen"`` or ``"und"``)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}")
        return self.tasks[task]

    def per_layer(self, task: str) -> tuple[list[float], list[float]]:
        """``(targets, deltas)``, each a list of ``num_layers`` floats."""
        targets: list[float] = []
        deltas: list[float] = []
        for s in self.stages(task):
            targets += [s.target] * s.num_layers
            deltas += [s.delta] * s.num_layers
        return targets, deltas

    def tensors(
        self, task: str, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target [L], delta [L])`` tensors for the loss."""
        targets, deltas = self.per_layer(task)
        return torch.tensor(targets, device=device, dtype=dtype), torch.tensor(deltas, device=device, dtype=dtype)

    def resize(self, num_layers: int) -> TargetProfile:
        """Map to another depth by relative depth (see the module docstring).

        New layer ``l`` takes the values of source layer ``floor((l + 0.5) * L / num_layers)``;
        stages are recomputed as maximal runs of equal (target, delta). Returns ``self``
        when the depth is unchanged.
        """
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if num_layers == self.num_layers:
            return self
        # Integer form of floor((l + 0.5) * L / L'): exact, no float rounding at stage edges.
        src = [((2 * i + 1) * self.num_layers) // (2 * num_layers) for i in range(num_layers)]
        values = {}
        for task in TASKS:
            targets, deltas = self.per_layer(task)
            values[task] = ([targets[i] for i in src], [deltas[i] for i in src])
        source = f"{self.source or self.name} mapped by relative depth from {self.num_layers} to {num_layers} layers"
        return TargetProfile.from_per_layer(f"{self.name}@{num_layers}", values, source=source)

    def by_index(self, num_layers: int) -> TargetProfile:
        """Map to another depth by absolute layer index: new layer ``l`` takes the values of source
        layer ``min(l, L - 1)`` (a shallower model keeps the first layers' bands, a deeper one
        repeats the last layer's). Returns ``self`` when the depth is unchanged."""
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive integer, got {num_layers!r}")
        if num_layers == self.num_layers:
            return self
        src = [min(i, self.num_layers - 1) for i in range(num_layers)]
        values = {}
        for task in TASKS:
            targets, deltas = self.per_layer(task)
            values[task] = ([targets[i] for i in src], [deltas[i] for i in src])
        source = f"{self.source or self.name} mapped by layer index from {self.num_layers} to {num_layers} layers"
        return TargetProfile.from_per_layer(f"{self.name}@{num_layers}", values, source=source)

    # -- (de)serialisation ----------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain dict in the YAML layout of the module docstring."""
        out: dict[str, Any] = {"name": self.name, "num_layers": self.num_layers}
        if self.source:
            out["source"] = self.source
        for task in TASKS:
            out[task] = [{"layers": [s.start, s.end], "target": s.target, "delta": s.delta} for s in self.tasks[task]]
        return out

    @classmethod
    def from_dict(cls, data: Any, origin: str = "targets") -> TargetProfile:
        """Parse and validate a dict in the YAML layout; errors are prefixed with ``origin``."""
        try:
            return _parse(data)
        except ValueError as e:
            raise ValueError(f"{origin}: {e}") from None

    def to_yaml(self, path: str | Path) -> Path:
        """Write the YAML file; returns its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        path.write_text(text)
        return path

    @classmethod
    def from_yaml(cls, path: str | Path) -> TargetProfile:
        """Read and validate a YAML file (format in the module docstring)."""
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML: {e}") from None
        return cls.from_dict(data, origin=str(path))


def _runs(targets: Sequence[float], deltas: Sequence[float]) -> tuple[Stage, ...]:
    """Maximal runs of equal (target, delta) as stages."""
    stages: list[Stage] = []
    start = 0
    for i in range(1, len(targets) + 1):
        if i == len(targets) or (targets[i], deltas[i]) != (targets[start], deltas[start]):
            stages.append(Stage(start, i, float(targets[start]), float(deltas[start])))
            start = i
    return tuple(stages)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{where} must be a number, got {value!r}")
    return float(value)


def _integer(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    return value


def _parse(data: Any) -> TargetProfile:
    """Validate the YAML layout field by field; messages name the field, not the file."""
    if not isinstance(data, Mapping):
        raise ValueError(f"expected a mapping with keys {sorted(_TOP_KEYS)}, got {type(data).__name__}")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("name", "num_layers", *TASKS):
        if key not in data:
            raise ValueError(f"missing required key {key!r}")
    name = data["name"]
    if not isinstance(name, str) or not name:
        raise ValueError(f"name must be a non-empty string, got {name!r}")
    source = data.get("source", "")
    if not isinstance(source, str):
        raise ValueError(f"source must be a string, got {source!r}")
    num_layers = _integer(data["num_layers"], "num_layers")
    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    tasks: dict[str, tuple[Stage, ...]] = {}
    for task in TASKS:
        entries = data[task]
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{task} must be a non-empty list of stages, got {entries!r}")
        stages = []
        for i, entry in enumerate(entries):
            at = f"{task}[{i}]"
            if not isinstance(entry, Mapping):
                raise ValueError(f"{at} must be a mapping with keys {sorted(_STAGE_KEYS)}, got {entry!r}")
            bad = sorted(set(entry) - _STAGE_KEYS)
            if bad:
                raise ValueError(f"{at} has unknown key(s) {bad}; allowed: {sorted(_STAGE_KEYS)}")
            missing = sorted(_STAGE_KEYS - set(entry))
            if missing:
                raise ValueError(f"{at} is missing key(s) {missing}")
            layers = entry["layers"]
            if not isinstance(layers, list) or len(layers) != 2:
                raise ValueError(f"{at}.layers must be [start, end] (half-open), got {layers!r}")
            start = _integer(layers[0], f"{at}.layers[0]")
            end = _integer(layers[1], f"{at}.layers[1]")
            stages.append(
                Stage(start, end, _number(entry["target"], f"{at}.target"), _number(entry["delta"], f"{at}.delta"))
            )
        _check_stages(stages, num_layers, task)
        tasks[task] = tuple(stages)
    return TargetProfile(name, num_layers, tasks, source=source)
