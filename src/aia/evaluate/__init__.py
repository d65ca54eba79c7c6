"""Scoring the paper's understanding benchmarks (POPE, MME, MMMU, MMVP) the official way,
and comparing a baseline with an AIA checkpoint metric by metric (:mod:`.scoring`; the
rules of each benchmark, with their official source, in :mod:`.pope`, :mod:`.mme`,
:mod:`.mmmu`, :mod:`.mmvp`); and the inference that produces what they score: answers to
the understanding benchmarks' questions (:mod:`.answer`) and images for the generation
benchmarks GenEval, DPG-Bench and WISE (:mod:`.generate`)."""

from aia.evaluate.answer import BENCHES, answer, read_questions
from aia.evaluate.generate import FORMATS, generate_images, read_prompts
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
    "BENCHES",
    "BENCHMARKS",
    "FORMATS",
    "answer",
    "compare",
    "compare_files",
    "format_table",
    "generate_images",
    "read_predictions",
    "read_prompts",
    "read_questions",
    "score",
    "score_file",
]
