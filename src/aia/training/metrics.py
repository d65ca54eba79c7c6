"""The training log: ``metrics.jsonl`` rows (one per logged step) and their TensorBoard twin.

:class:`MetricsWriter` is the one place a run's metrics are written; :func:`read_metrics`
is the one place they are read back (``aia plot losses``, the demo).
"""

from __future__ import annotations

import json
from pathlib import Path

from aia.errors import InputError

__all__ = ["read_metrics"]


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
    records = []
    for no, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON: {e.msg}", path=path, record=f"line {no}") from None
        if not isinstance(rec, dict):
            raise InputError("expected a JSON object per line", path=path, record=f"line {no}")
        if "step" in rec:
            records.append(rec)
    if not records:
        raise InputError("no logged steps (no line with a 'step')", path=path)
    return records


