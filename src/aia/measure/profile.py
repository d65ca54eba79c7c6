"""The intensity-profile file written by ``aia profile``: schema, load/validate, save, summary.

A profile is the layer-wise interaction intensity I_l (paper Eq. 1) of one model on
one task, measured on N samples. JSON layout::

    {
      "model": "deepseek-community/Janus-Pro-7B",
      "task": "und",                  # "und" | "gen"
      "num_layers": 30,               # L
      "n": 100,                       # samples used (rows of per_sample)
      "mean": [L floats],             # mean over samples, per layer
      "std": [L floats],              # population std (ddof=0) over samples, per layer
      "per_sample": [[L floats], ...],  # N rows
      "skipped": 0,                   # optional: samples dropped (e.g. empty span); default 0
      "mode": "teacher",              # optional: "teacher" (teacher forcing) | "decode"; default "teacher"
      "settings": {...}               # optional: span choices and decoding protocol it was measured with
    }

``std`` is the population standard deviation (ddof=0) across the N samples: it
describes the spread of these samples, and it stays defined for N = 1. Averaged over
layers it is this project's reading of the consistency measure of paper Table 1, whose
text does not define it further (see docs/FIDELITY.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aia.core.spans import TASKS

__all__ = ["PROFILE_MODES", "IntensityProfile", "save_profile", "load_profile", "summary_text"]

PROFILE_MODES = ("teacher", "decode")
_KEYS = {"model", "task", "num_layers", "n", "mean", "std", "per_sample", "skipped", "mode", "settings"}
_REQUIRED = ("model", "task", "num_layers", "n", "mean", "std", "per_sample")
_ATOL = 1e-4  # mean/std in the file vs recomputed from per_sample (float32 writers round)


@dataclass(eq=False)
class IntensityProfile:
    """Measured intensities of one model on one task.

    Attributes:
        model: model name or path.
        task: ``"und"`` or ``"gen"``.
        num_layers: L.
        n: number of samples used (rows of ``per_sample``).
        mean: ``[L]`` mean over samples.
        std: ``[L]`` population std (ddof=0) over samples.
        per_sample: ``[N, L]`` intensity of each sample and layer.
        skipped: records passed over: unreadable or missing images, malformed records, and
            samples with an empty query or key set.
        mode: ``"teacher"`` (teacher-forced sequence) or ``"decode"`` (own samples).
        settings: how it was measured: the span choices and, in decode mode, the decoding
            protocol (CFG weight, temperature, seed, token limit); a JSON object.
    """

    model: str
    task: str
    num_layers: int
    n: int
    mean: np.ndarray
    std: np.ndarray
    per_sample: np.ndarray
    skipped: int = 0
    mode: str = "teacher"
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64)
        self.std = np.asarray(self.std, dtype=np.float64)
        self.per_sample = np.asarray(self.per_sample, dtype=np.float64)
        _validate(self)

    @classmethod
    def from_per_sample(
        cls, model: str, task: str, per_sample: Any, skipped: int = 0, mode: str = "teacher",
        settings: dict | None = None,
    ) -> IntensityProfile:
        """Build from a ``[N, L]`` array; mean and population std (ddof=0) over the N samples."""
        x = np.asarray(per_sample, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(f"per_sample must be a non-empty [N, L] array, got shape {x.shape}")
        return cls(model, task, x.shape[1], x.shape[0], x.mean(0), x.std(0, ddof=0), x, skipped=skipped, mode=mode,
                   settings=dict(settings or {}))

    @property
    def std_over_layers(self) -> float:
        """Std across samples averaged over layers (the statistic of paper Table 1)."""
        return float(self.std.mean())

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "task": self.task,
            "num_layers": self.num_layers,
            "n": self.n,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "per_sample": self.per_sample.tolist(),
            "skipped": self.skipped,
            "mode": self.mode,
            "settings": self.settings,
        }

    @classmethod
    def from_dict(cls, data: Any, origin: str = "profile") -> IntensityProfile:
        """Validate a dict in the JSON layout; errors are prefixed with ``origin``."""
        try:
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            unknown = sorted(set(data) - _KEYS)
            if unknown:
                raise ValueError(f"unknown key(s) {unknown}; allowed: {sorted(_KEYS)}")
            missing = [k for k in _REQUIRED if k not in data]
            if missing:
                raise ValueError(f"missing required key(s) {missing}")
            arrays = {k: _float_array(data[k], k) for k in ("mean", "std", "per_sample")}
            return cls(
                model=data["model"],
                task=data["task"],
                num_layers=data["num_layers"],
                n=data["n"],
                skipped=data.get("skipped", 0),
                mode=data.get("mode", "teacher"),
                settings=data.get("settings", {}),
                **arrays,
            )
        except ValueError as e:
            raise ValueError(f"{origin}: {e}") from None


def _float_array(value: Any, key: str) -> np.ndarray:
    try:
        return np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{key} must be numbers (a list, or a list of equal-length lists)") from None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(p: IntensityProfile) -> None:
    if not isinstance(p.model, str):
        raise ValueError(f"model must be a string, got {p.model!r}")
    if p.task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {p.task!r}")
    if not isinstance(p.settings, dict):
        raise ValueError(f"settings must be a JSON object, got {type(p.settings).__name__}")
    if p.mode not in PROFILE_MODES:
        raise ValueError(f"mode must be one of {list(PROFILE_MODES)}, got {p.mode!r}")
    if not _is_int(p.num_layers) or p.num_layers < 1:
        raise ValueError(f"num_layers must be a positive integer, got {p.num_layers!r}")
    if not _is_int(p.n) or p.n < 1:
        raise ValueError(f"n must be a positive integer, got {p.n!r}")
    if not _is_int(p.skipped) or p.skipped < 0:
        raise ValueError(f"skipped must be a non-negative integer, got {p.skipped!r}")
    L = p.num_layers
    for key in ("mean", "std"):
        arr = getattr(p, key)
        if arr.shape != (L,):
            raise ValueError(f"{key} must have num_layers={L} values, got shape {list(arr.shape)}")
    if p.per_sample.shape != (p.n, L):
        raise ValueError(f"per_sample must be [n={p.n}, num_layers={L}], got shape {list(p.per_sample.shape)}")
    for key in ("per_sample", "mean", "std"):
        if not np.all(np.isfinite(getattr(p, key))):
            raise ValueError(f"{key} contains non-finite values")
    low, high = float(p.per_sample.min()), float(p.per_sample.max())
    if low < -_ATOL or high > 1 + _ATOL:
        raise ValueError(f"per_sample must lie in [0, 1] (an intensity is a share of attention), got {low:.4g}..{high:.4g}")
    # Catch hand-edited or stale files: the summary rows must follow from per_sample.
    for key, ref in (("mean", p.per_sample.mean(0)), ("std", p.per_sample.std(0, ddof=0))):
        diff = float(np.abs(getattr(p, key) - ref).max())
        if diff > _ATOL:
            raise ValueError(f"{key} does not match per_sample (max abs difference {diff:.3g}; std is ddof=0)")


def save_profile(profile: IntensityProfile, path: str | Path) -> Path:
    """Write ``profile`` as JSON; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile.to_dict(), indent=1) + "\n")
    return path


def load_profile(path: str | Path) -> IntensityProfile:
    """Read and validate a profile JSON; a bad file raises ValueError naming the file and field."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    return IntensityProfile.from_dict(data, origin=str(path))


def summary_text(profile: IntensityProfile, per_line: int = 10) -> str:
    """A few lines: the mean curve, the std across samples averaged over layers (paper Table 1), n."""
    p = profile
    head = f"{p.model}  task={p.task}  mode={p.mode}  layers={p.num_layers}  n={p.n}"
    if p.skipped:
        head += f" (skipped {p.skipped})"
    lines = [head, "mean intensity per layer:"]
    for lo in range(0, p.num_layers, per_line):
        hi = min(lo + per_line, p.num_layers)
        values = " ".join(f"{v:.3f}" for v in p.mean[lo:hi])
        lines.append(f"  {lo:>3}-{hi - 1:<3} {values}")
    lines.append(
        f"curve: min {p.mean.min():.3f} (layer {int(p.mean.argmin())}), max {p.mean.max():.3f} "
        f"(layer {int(p.mean.argmax())}), average {p.mean.mean():.3f}"
    )
    lines.append(f"std across samples, averaged over layers (paper Table 1): {p.std_over_layers:.4f}")
    return "\n".join(lines)
