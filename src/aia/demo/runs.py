"""What the demo's pipeline (:mod:`aia.demo.pipeline`) and its report (:mod:`aia.demo.report`) both name:
the training runs, the compared metrics and the pipeline's steps."""

from __future__ import annotations

__all__ = ["ABLATIONS", "METRICS", "POST_RUNS", "RUNS", "STEPS"]

#: run name -> (row label of the report, tasks it trains on)
RUNS = {
    "und_only": ("und-only (reference)", ("und",)),
    "gen_only": ("gen-only (reference)", ("gen",)),
    "pretrained": ("unified pretrained (NTP only)", ("und", "gen")),
    "baseline": ("post-trained baseline (NTP)", ("und", "gen")),
    "aia": ("post-trained + AIA", ("und", "gen")),
    "aia_mse": ("post-trained + AIA w/o Huber", ("und", "gen")),
    "aia_per_layer": ("post-trained + AIA w/o stage-level", ("und", "gen")),
}

#: runs trained once per seed, from the pretrained checkpoint
POST_RUNS = ("baseline", "aia", "aia_mse", "aia_per_layer")
#: the post-training runs that are ablations of ``aia``
ABLATIONS = ("aia_mse", "aia_per_layer")

#: compared metric -> (report label, +1 if higher is better / -1 if lower is better / 0 for the
#: intensity gap, where lower means closer to the targets, not better)
METRICS = {
    "und_acc": ("und acc", 1),
    "gen_acc": ("gen acc", 1),
    "heldout_ntp_und": ("held-out NTP und", -1),
    "heldout_ntp_gen": ("held-out NTP gen", -1),
    "gap_und": ("mean abs(I-T) und", 0),
    "gap_gen": ("mean abs(I-T) gen", 0),
}

#: the pipeline's steps, in order (keys of ``results["timing"]["stages_s"]``)
STEPS = ("data", "references", "targets", "pretraining", "post-training", "evaluation", "report")
