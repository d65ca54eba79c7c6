"""`aia demo --quick` end to end: the pretrain -> post-train protocol, every file and key, the
across-seed statistics, learning, determinism, and the CLI redoing its steps. The demo runs are
tests/demo/conftest.py's (once per session: tests/demo/test_progress.py reads them too)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml

from aia.cli import main
from aia.demo import run_demo
from aia.demo.digits import VQ_FILE
from aia.demo.pipeline import QUICK_SEEDS, _compare
from aia.demo.runs import METRICS, RUNS, STEPS
from aia.measure.profile import load_profile

RUN_KEYS = {
    "und": ("und_acc", "ntp_und", "heldout_ntp_und", "gap_und"),
    "gen": ("gen_acc", "ntp_gen", "heldout_ntp_gen", "gap_gen"),
}
SHARED = {"und_only": ("und",), "gen_only": ("gen",), "pretrained": ("und", "gen")}
POST = ("baseline", "aia", "aia_mse", "aia_per_layer")
VERDICTS = {"better", "worse", "closer", "farther", "no measurable difference"}


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _check_row(row: dict, tasks: tuple[str, ...], num_layers: int, where) -> None:
    for task in tasks:
        for key in RUN_KEYS[task]:
            assert _finite(row[key]), (where, key)
        assert len(row[f"curve_{task}"]) == num_layers and all(map(_finite, row[f"curve_{task}"])), where
    for other in {"und", "gen"} - set(tasks):
        assert not any(k in row for k in RUN_KEYS[other]), (where, other)


def test_compare_is_the_mean_paired_difference_with_its_standard_error_across_seeds():
    c = _compare([0.02, 0.03, 0.04], 1)
    assert c["diff"] == pytest.approx(0.03) and c["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert c["verdict"] == "better" and c["per_seed"] == [0.02, 0.03, 0.04]
    assert _compare([0.02, 0.03, 0.04], -1)["verdict"] == "worse"  # e.g. held-out NTP went up
    assert _compare([-0.02, -0.03, -0.04], 0)["verdict"] == "closer"  # the intensity gap shrank
    assert _compare([0.05, -0.04, 0.02], 1)["verdict"] == "no measurable difference"
    assert _compare([0.0, 0.0], 1)["verdict"] == "no measurable difference"
    one = _compare([0.1], 1)
    assert one["se"] is None and one["verdict"] == "one seed: not assessed"


def test_run_demo_rejects_a_bad_seed_count(tmp_path):
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="seeds"):
            run_demo(tmp_path, quick=True, seeds=bad, progress=False)


@pytest.mark.integration
def test_quick_demo_writes_every_file_and_key(quick_demo):
    out, results = quick_demo
    layers = results["settings"]["num_layers"]
    n_profile = results["settings"]["profile_samples"]
    assert results["seeds"] == list(range(QUICK_SEEDS)) and len(results["per_seed"]) == QUICK_SEEDS
    for name in ("report.md", "results.json", "targets.yaml", "targets_per_layer.yaml"):
        assert (out / name).is_file(), name
    for fig in ("intensity", "losses", "losses_aia", "losses_pretraining", "samples"):
        assert (out / f"{fig}.png").stat().st_size > 1000 and (out / f"{fig}.svg").is_file(), fig
    assert list(results["runs"]) == list(SHARED)
    for name, tasks in SHARED.items():
        assert (out / "runs" / name / "final" / VQ_FILE).is_file()
        assert (out / "configs" / f"{name}.yaml").is_file()
        _check_row(results["runs"][name], tasks, layers, name)
        for task in tasks:
            assert load_profile(out / "profiles" / f"{name}_{task}.json").n == n_profile
    for entry in results["per_seed"]:
        assert list(entry["runs"]) == list(POST)
        for name in POST:
            key = f"seed{entry['seed']}/{name}"
            assert (out / "runs" / key / "final" / VQ_FILE).is_file(), key
            _check_row(entry["runs"][name], ("und", "gen"), layers, key)
            for task in ("und", "gen"):
                assert load_profile(out / "profiles" / f"{key}_{task}.json").n == n_profile
    for key in ("train", "test", "num_codes", "vq_rmse_test"):
        assert _finite(results["data"][key]), key
    for key in ("acc_real_test", "acc_vq_test"):
        assert 0.9 < results["judge"][key] <= 1.0, key
    for task in ("und", "gen"):
        for key in ("targets", "targets_delta", "targets_per_layer"):
            assert len(results[key][task]) == layers and all(map(_finite, results[key][task])), (key, task)
    assert isinstance(results["aia_vs_baseline"]["helped"], bool)
    assert sorted(results["ablations_vs_baseline"]) == ["aia_mse", "aia_per_layer"]
    for name, cmps in [("aia", results["aia_vs_baseline"]), *results["ablations_vs_baseline"].items()]:
        for metric in METRICS:
            c = cmps[metric]
            diffs = [e["runs"][name][metric] - e["runs"]["baseline"][metric] for e in results["per_seed"]]
            assert c["per_seed"] == pytest.approx(diffs, abs=1e-12), (name, metric)
            assert _finite(c["diff"]) and c["diff"] == pytest.approx(np.mean(diffs), abs=1e-12), (name, metric)
            assert _finite(c["se"]) and c["se"] >= 0 and c["verdict"] in VERDICTS, (name, metric)
    assert _finite(results["timing"]["wall_s"])
    assert list(results["timing"]["stages_s"]) == list(STEPS)
    assert all(_finite(x) and x >= 0 for x in results["timing"]["stages_s"].values())


@pytest.mark.integration
def test_the_post_training_runs_continue_from_the_pretrained_checkpoint(quick_demo):
    out, results = quick_demo
    s = results["settings"]
    pretrained = str(out / "runs" / "pretrained" / "final")
    configs = {}
    for entry in results["per_seed"]:
        for name in POST:
            cfg = yaml.safe_load((out / "configs" / f"seed{entry['seed']}" / f"{name}.yaml").read_text())
            assert cfg["model"]["path"] == pretrained, name
            assert cfg["train"]["seed"] == entry["seed"] and cfg["train"]["max_steps"] == s["post_steps"]
            assert cfg["optim"]["lr"] == s["post_lr"]
            configs[entry["seed"], name] = cfg
        # within a seed the runs differ only in the AIA term (and their output directory)
        strip = lambda c: {k: v for k, v in c.items() if k != "aia"} | {"train": {**c["train"], "output_dir": ""}}  # noqa: E731
        base = strip(configs[entry["seed"], "baseline"])
        assert all(strip(configs[entry["seed"], n]) == base for n in POST), entry["seed"]
        assert configs[entry["seed"], "baseline"]["aia"] == {"enabled": False}
        assert configs[entry["seed"], "aia_mse"]["aia"]["mode"] == "mse"
        assert configs[entry["seed"], "aia_per_layer"]["aia"]["targets"].endswith("targets_per_layer.yaml")
    for name in SHARED:
        assert yaml.safe_load((out / "configs" / f"{name}.yaml").read_text())["model"]["path"] == str(out / "init")


@pytest.mark.integration
def test_quick_demo_learns_and_aia_pulls_the_curves_to_the_targets_on_every_seed(quick_demo):
    _, results = quick_demo
    n = results["data"]["test"]
    beyond_chance = results["chance"] + 3 * math.sqrt(0.1 * 0.9 / n)
    assert results["runs"]["pretrained"]["und_acc"] > beyond_chance
    for entry in results["per_seed"]:
        runs = entry["runs"]
        for name in ("baseline", "aia"):
            assert runs[name]["und_acc"] > beyond_chance, (entry["seed"], name)
        for task in ("und", "gen"):
            assert runs["aia"][f"gap_{task}"] < runs["baseline"][f"gap_{task}"], (entry["seed"], task)
    for task in ("und", "gen"):
        assert all(d < 0 for d in results["aia_vs_baseline"][f"gap_{task}"]["per_seed"]), task


@pytest.mark.integration
def test_quick_demo_report_shows_the_numbers_of_results_json(quick_demo):
    out, results = quick_demo
    report = (out / "report.md").read_text()
    for heading in ("## Protocol", "## Post-training, per seed", "## Across seeds", "Did AIA help at this scale?",
                    "## What this run supports and what it does not"):  # fmt: skip
        assert heading in report, heading
    lines = report.splitlines()
    for entry in results["per_seed"]:
        for name, row in entry["runs"].items():
            line = next(x for x in lines if x.startswith(f"| {entry['seed']} | {RUNS[name][0]} |"))
            for key in ("und_acc", "gen_acc", "gap_und", "gap_gen"):
                assert f" {row[key]:.3f} " in line, (entry["seed"], name, key)
    for metric, (label, _) in METRICS.items():
        line = next(x for x in lines if x.startswith(f"| {label} "))  # "| gen acc (≈ chance) |" at chance
        for cmps in [results["aia_vs_baseline"], *results["ablations_vs_baseline"].values()]:
            c = cmps[metric]
            assert f"{c['diff']:+.4f} ± {c['se']:.4f} ({c['verdict']})" in line, metric
    assert "direction the paper reports" not in report
    assert "7 of its 8 metrics" in report


@pytest.mark.integration
def test_quick_demo_is_deterministic(quick_demo, debug_demo_run):
    """The quick demo run again in a new process (tests/demo/conftest.py: with ``debug``, one seed, no
    ablations by default) gives the same numbers."""
    _, first = quick_demo
    second = debug_demo_run.results
    for key in ("data", "judge", "targets", "targets_delta", "targets_per_layer", "settings", "runs"):
        assert second[key] == first[key], key
    assert second["seeds"] == [0] and set(second["per_seed"][0]["runs"]) == {"baseline", "aia"}
    for name in ("baseline", "aia"):
        assert second["per_seed"][0]["runs"][name] == first["per_seed"][0]["runs"][name], name
    assert second["aia_vs_baseline"]["und_acc"]["se"] is None and second["ablations_vs_baseline"] == {}


@pytest.mark.integration
def test_the_demo_outputs_are_what_the_cli_makes_of_them(quick_demo, tmp_path):
    """The demo's runs, profiles and targets go through the user's commands: redo them with the CLI."""
    out, results = quick_demo
    n = results["settings"]["profile_samples"]
    aia = results["per_seed"][0]["runs"]["aia"]
    for task in ("und", "gen"):
        data = out / "data" / f"{task}_train.jsonl"
        cli = tmp_path / f"aia_{task}.json"
        args = ["profile", str(out / "runs" / "seed0" / "aia" / "final"), "--data", str(data), "--task", task]
        assert main([*args, "--samples", str(n), "--batch-size", "32", "--out", str(cli), "--quiet"]) == 0
        np.testing.assert_allclose(load_profile(cli).mean, aia[f"curve_{task}"], rtol=0, atol=1e-6)
    refs = [str(out / "profiles" / "gen_only_gen.json"), str(out / "profiles" / "und_only_und.json")]
    stages = str(results["settings"]["stages"])
    assert main(["targets", *refs, "--stages", stages, "--out", str(tmp_path / "t.yaml")]) == 0
    from aia.targets.presets import TargetProfile

    redone = TargetProfile.from_yaml(tmp_path / "t.yaml")
    for task in ("und", "gen"):
        np.testing.assert_allclose(redone.per_layer(task)[0], results["targets"][task], rtol=0, atol=1e-12)
    runs = [str(out / "runs" / "seed0" / "baseline"), str(out / "runs" / "seed0" / "aia")]
    assert main(["plot", "losses", *runs, "--out", str(tmp_path / "l")]) == 0
    assert (tmp_path / "l.png").stat().st_size > 1000
