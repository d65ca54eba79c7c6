"""The training log: ``metrics.jsonl`` rows (one per logged step) and their TensorBoard twin.

:class:`MetricsWriter` is the one place a run's metrics are written; :func:`read_metrics`
reads them back (``aia plot losses``, the demo), through the same reader as a resumed run,
which keeps the rows up to its checkpoint. Lines are :mod:`aia.jsonl`'s.
"""

from __future__ import annotations

import sys
from pathlib import Path

from aia.errors import InputError
from aia.jsonl import json_line, mend_torn_end, read_jsonl, write_jsonl

__all__ = ["METRIC_KEYS", "MetricsWriter", "read_metrics"]

#: keys of a metrics.jsonl row (task-specific keys only for tasks in the step)
METRIC_KEYS = {
    "step": "optimizer step (1-based)",
    "lr": "learning rate used by this step",
    "grad_norm": "gradient norm before clipping",
    "loss": "the step's loss over its global batch: sum over tasks of share_task * (NTP + lambda_task * AIA)",
    "loss/ntp": "sum over tasks of share_task * NTP (share_task: the task's share of the step's micro-batches)",
    "loss/ntp/und": "NTP loss of the understanding samples: token losses summed over the global batch / its tokens",
    "loss/ntp/gen": "NTP loss of the generation samples (same)",
    "ntp_tokens/und": "supervised understanding tokens of the step's global batch (all ranks, all micro-batches)",
    "ntp_tokens/gen": "supervised generation tokens of the step's global batch",
    "loss/aia/und": "AIA loss (Eq. 2, before lambda) of understanding: over the global batch's samples (aia.denominator)",
    "loss/aia/gen": "AIA loss of generation: over the global batch's samples (aia.denominator)",
    "intensity/und": "per-layer intensity, mean over enabled samples (every train.intensity_every steps)",
    "intensity/gen": "per-layer intensity of generation samples (same)",
    "aia_samples/und": "understanding samples of the step that carried the AIA term, summed over ranks",
    "aia_samples/gen": "generation samples that carried the AIA term (CFG-blanked ones do not), summed over ranks",
    "time/step_s": "wall-clock seconds of the step on the main process (data, forward, backward, optimizer)",
    "skipped": "only on a step whose update was dropped (train.skip_nonfinite): the term that was not finite",
}


class MetricsWriter:
    """Appends rows to ``<out>/metrics.jsonl`` and their scalars to ``<out>/tensorboard/``.

    A run that resumes after step ``start`` first drops the rows the interrupted run logged
    past ``start`` (they are logged again), and TensorBoard purges its events past it too.
    With ``enabled=False`` (every process but the main one) nothing is written.
    """

    def __init__(self, out: str | Path, start: int = 0, enabled: bool = True):
        self.path = Path(out) / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # keep what the resumed-from run logged up to its checkpoint
            torn = mend_torn_end(self.path)
            if torn is not None:
                print(f"aia train: {self.path}: line {torn} is incomplete (an interrupted write); dropped",
                      file=sys.stderr)
            try:
                rows = _steps(self.path)
            except InputError as err:
                raise InputError(f"cannot resume: {err.reason}", path=err.path, record=err.record) from None
            write_jsonl(self.path, [r for r in rows if r["step"] <= start])
        elif start:
            self.path.touch()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(out) / "tensorboard"), purge_step=start + 1 if start else None)

    def write(self, row: dict) -> None:
        """Log one row (keys in :data:`METRIC_KEYS`): a JSON line, and a scalar per float
        (a list, the per-layer intensity, as one ``<key>/layer_<l>`` scalar per layer)."""
        if self.writer is None:
            return
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json_line(row))  # strict JSON: a non-finite run stops first
        step = row["step"]
        for k, v in row.items():
            if isinstance(v, float) and k != "step":
                self.writer.add_scalar(k, v, step)
            elif isinstance(v, list):
                for layer, x in enumerate(v):
                    self.writer.add_scalar(f"{k}/layer_{layer:02d}", x, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _steps(path: Path) -> list[dict]:
    """The rows with a ``"step"`` of a ``metrics.jsonl`` (others, e.g. run summaries, are skipped).

    Raises:
        InputError: a line is not JSON or not a JSON object (naming the line).
    """
    rows = []
    for line in read_jsonl(path):
        if not isinstance(line.value, dict):
            raise InputError("expected a JSON object per line", path=path, record=f"line {line.number}")
        if "step" in line.value:
            rows.append(line.value)
    return rows


def read_metrics(path: str | Path) -> list[dict]:
    """Records of a ``metrics.jsonl`` training log (or of the one in directory ``path``).

    Lines without a ``"step"`` (e.g. run summaries) are ignored; blank lines too.

    Raises:
        InputError: the file is missing, a line is not a JSON object, or no line has a step.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise InputError("no such metrics file", path=path)
    rows = _steps(path)
    if not rows:
        raise InputError("no logged steps (no line with a 'step')", path=path)
    return rows
