"""Scoring the paper's understanding benchmarks (POPE, MME, MMMU, MMVP) the official way,
and comparing a baseline with an AIA checkpoint metric by metric (:mod:`.scoring`; the
rules of each benchmark, with their official source, in :mod:`.pope`, :mod:`.mme`,
:mod:`.mmmu`, :mod:`.mmvp`)."""

from aia.evaluate.scoring import (
    BENCHMARKS,
    compare,
    compare_files,
    format_table,
    read_predictions,
    score,
    score_file,
)

__all__ = [
    "BENCHMARKS",
    "compare",
    "compare_files",
    "format_table",
    "read_predictions",
    "score",
    "score_file",
]
