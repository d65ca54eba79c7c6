"""What the demo's pipeline (:mod:`aia.demo.pipeline`) and its report (:mod:`aia.demo.report`) both name:
the training runs, the compared metrics and the pipeline's steps."""

from __future__ import annotations

import math

__all__ = ["ABLATIONS", "ACCURACIES", "METRICS", "POST_RUNS", "RUNS", "STEPS", "at_chance", "chance_bound",
           "uninformative"]  # fmt: skip

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

#: accuracy metric -> what it measures
ACCURACIES = {"und_acc": "understanding accuracy", "gen_acc": "generation accuracy"}


def chance_bound(results: dict, key: str) -> float:
    """The highest accuracy ``key`` (``und_acc`` / ``gen_acc``) still within two binomial standard errors
    of chance: ``chance + 2 sqrt(chance (1 - chance) / n)``, ``n`` the items scored (held-out images for
    understanding, ten digits times ``gen_samples_per_digit`` sampled images for generation)."""
    p = results["chance"]
    n = results["data"]["test"] if key == "und_acc" else 10 * results["settings"]["gen_samples_per_digit"]
    return p + 2 * math.sqrt(p * (1 - p) / n)


def at_chance(results: dict, row: dict, key: str) -> bool:
    """Whether a results row's accuracy ``key`` is within :func:`chance_bound` (False for other metrics)."""
    return key in ACCURACIES and key in row and row[key] <= chance_bound(results, key)


def uninformative(results: dict) -> list[str]:
    """The accuracies at chance in every post-trained baseline and AIA run: comparing them says nothing."""
    rows = [entry["runs"][n] for entry in results["per_seed"] for n in ("baseline", "aia")]
    return [k for k in ACCURACIES if all(at_chance(results, row, k) for row in rows)]
