"""The demo's report.md from hand-made results: accuracies at chance are flagged and said to tell
nothing, only the runs that ran are described, and the reproducibility note is there."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest

from aia.demo.pipeline import QUICK, _versus_baseline
from aia.demo.report import AT_CHANCE, REPRODUCIBILITY, write_report
from aia.demo.runs import RUNS, chance_bound, uninformative

LAYERS = 4


def _row(tasks, und_acc=0.8, gen_acc=0.7, gap=0.05):
    row = {}
    for task in tasks:
        acc = und_acc if task == "und" else gen_acc
        row |= {f"{task}_acc": acc, f"ntp_{task}": 1.0, f"heldout_ntp_{task}": 1.2, f"gap_{task}": gap}
        row[f"curve_{task}"] = [0.1] * LAYERS
    return row


def results(gen_accs, ablations=False, quick=True, und_accs=(0.80, 0.83)):
    """Results of a two-seed run whose post-trained generation accuracies are ``gen_accs`` (baseline, aia)
    (+0.01 at seed 1), and its understanding accuracies ``und_accs`` at seed 0, swapped at seed 1."""
    names = ("baseline", "aia", "aia_mse", "aia_per_layer") if ablations else ("baseline", "aia")
    per_seed = []
    for seed, jitter in ((0, 0.0), (1, 0.01)):
        runs = {}
        for name in names:
            i = name == "aia"
            und = und_accs[i if seed == 0 else 1 - i]
            runs[name] = _row(("und", "gen"), und, gen_accs[i] + jitter, gap=0.05 - 0.02 * i)
        per_seed.append({"seed": seed, "runs": runs})
    res = {
        "seed": 0, "seeds": [0, 1], "quick": quick, "device": "cpu", "ablations": ablations,
        "settings": asdict(QUICK), "chance": 0.1, "judge": {"acc_real_test": 0.98, "acc_vq_test": 0.95},
        "data": {"train": 1437, "test": 360, "num_codes": 32, "vq_rmse_test": 1.5},
        "runs": {"und_only": _row(("und",)), "gen_only": _row(("gen",)), "pretrained": _row(("und", "gen"))},
        "per_seed": per_seed,
        "targets": {t: [0.1] * LAYERS for t in ("und", "gen")},
        "targets_delta": {t: [0.01] * LAYERS for t in ("und", "gen")},
        "targets_per_layer": {t: [0.1] * LAYERS for t in ("und", "gen")},
        "timing": {"wall_s": 60.0, "stages_s": {}},
    }  # fmt: skip
    res["aia_vs_baseline"] = _versus_baseline(per_seed, "aia")
    verdicts = [res["aia_vs_baseline"][k]["verdict"] for k in ("und_acc", "gen_acc") if k not in uninformative(res)]
    res["aia_vs_baseline"]["helped"] = "better" in verdicts and "worse" not in verdicts  # as the pipeline
    res["ablations_vs_baseline"] = {n: _versus_baseline(per_seed, n) for n in names[2:]}
    return res


def report(tmp_path, res) -> str:
    return write_report(tmp_path, res).read_text()


def test_chance_bound_is_two_binomial_standard_errors_above_chance():
    res = results((0.1, 0.1))
    n_gen = 10 * QUICK.gen_samples_per_digit
    assert chance_bound(res, "gen_acc") == pytest.approx(0.1 + 2 * np.sqrt(0.09 / n_gen))
    assert chance_bound(res, "und_acc") == pytest.approx(0.1 + 2 * np.sqrt(0.09 / 360))


def test_a_quick_run_at_chance_on_generation_says_it_cannot_show_anything_about_it(tmp_path):
    res = results((0.11, 0.12))  # --quick: 100 sampled images, chance 0.10, bound 0.16
    text = report(tmp_path, res)
    lines = text.splitlines()
    for seed in (0, 1):
        for name in ("baseline", "aia"):
            line = next(x for x in lines if x.startswith(f"| {seed} | {RUNS[name][0]} |"))
            row = res["per_seed"][seed]["runs"][name]
            assert f" {row['gen_acc']:.3f} {AT_CHANCE} |" in line, (seed, name)
            assert f" {row['und_acc']:.3f} |" in line, (seed, name)  # und is well above chance
    assert "Anything about generation accuracy: every baseline and AIA run scores 0.110-0.130" in text
    assert "`--quick` trains too few steps" in text
    assert "Every baseline and AIA run is at chance here: this says nothing about generation accuracy." in text
    # a "better" at chance is noise: not a "Yes"
    assert res["aia_vs_baseline"]["gen_acc"]["verdict"] == "better"
    assert "**No measurable effect on understanding accuracy**" in text
    assert "generation accuracy is at chance, not assessed" in text
    assert f"| gen acc {AT_CHANCE} | " in text and "| und acc | " in text
    assert "Anything about understanding accuracy" not in text
    # no ablation ran: nothing about them
    assert "ablation" not in text.lower() and "w/o" not in text
    assert REPRODUCIBILITY in text


def test_a_run_above_chance_with_ablations_flags_nothing_and_describes_the_ablations(tmp_path):
    text = report(tmp_path, results((0.70, 0.72), ablations=True, quick=False))
    assert AT_CHANCE + " |" not in text and "Anything about generation accuracy" not in text
    assert "Ranking the ablations as the paper does" in text and "w/o Huber" in text
    assert "**Yes, at this scale**" in text  # gen acc +0.02 on both seeds, above chance


def test_both_accuracies_at_chance_are_not_assessed(tmp_path):
    text = report(tmp_path, results((0.1, 0.1), und_accs=(0.1, 0.11)))
    assert "**Not assessed**: both accuracies are at chance" in text
    assert "Anything about understanding accuracy" in text and "Anything about generation accuracy" in text
    assert "the data do not show a difference" not in text
