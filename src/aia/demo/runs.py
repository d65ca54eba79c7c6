"""What the demo's pipeline (:mod:`aia.demo.pipeline`) and its report (:mod:`aia.demo.report`) both name:
the training runs and the pipeline's steps."""

from __future__ import annotations

__all__ = ["RUNS", "STEPS"]

#: run name -> (row label of the report, tasks it trains on)
RUNS = {
    "und_only": ("und-only (reference)", ("und",)),
    "gen_only": ("gen-only (reference)", ("gen",)),
    "baseline": ("unified baseline", ("und", "gen")),
    "aia": ("unified + AIA", ("und", "gen")),
    "aia_mse": ("unified + AIA w/o Huber", ("und", "gen")),
    "aia_per_layer": ("unified + AIA w/o stage-level", ("und", "gen")),
}

#: the pipeline's steps, in order (keys of ``results["timing"]["stages_s"]``)
STEPS = ("data", "references", "targets", "unified", "evaluation", "report")
