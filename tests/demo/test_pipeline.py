"""`aia demo --quick` end to end: every file and key, learning, determinism, and the CLI redoing its steps."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from aia.cli import main
from aia.demo import run_demo
from aia.demo.digits import VQ_FILE
from aia.demo.runs import RUNS, STEPS
from aia.measure.profile import load_profile

RUN_KEYS = {
    "und": ("und_acc", "ntp_und", "heldout_ntp_und", "gap_und"),
    "gen": ("gen_acc", "ntp_gen", "heldout_ntp_gen", "gap_gen"),
}
RUN_TASKS = {
    "und_only": ("und",),
    "gen_only": ("gen",),
    "baseline": ("und", "gen"),
    "aia": ("und", "gen"),
    "aia_mse": ("und", "gen"),
    "aia_per_layer": ("und", "gen"),
}


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    code = main(["demo", "--out", str(out), "--quick", "--ablations", "--seed", "0"])
    assert code == 0
    return out, json.loads((out / "results.json").read_text())


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@pytest.mark.integration
def test_quick_demo_writes_every_file_and_key(quick_demo):
    out, results = quick_demo
    for name in ("report.md", "results.json", "targets.yaml", "targets_per_layer.yaml"):
        assert (out / name).is_file(), name
    for fig in ("intensity", "losses", "losses_aia", "samples"):
        assert (out / f"{fig}.png").stat().st_size > 1000 and (out / f"{fig}.svg").is_file(), fig
    for name, tasks in RUN_TASKS.items():
        assert (out / "runs" / name / "final" / VQ_FILE).is_file()
        assert (out / "configs" / f"{name}.yaml").is_file()
        row = results["runs"][name]
        for task in tasks:
            for key in RUN_KEYS[task]:
                assert _finite(row[key]), (name, key)
            assert len(row[f"curve_{task}"]) == results["settings"]["num_layers"]
            assert load_profile(out / "profiles" / f"{name}_{task}.json").n == results["settings"]["profile_samples"]
        for other in {"und", "gen"} - set(tasks):
            assert not any(k in row for k in RUN_KEYS[other]), (name, other)
    for key in ("train", "test", "num_codes", "vq_rmse_test"):
        assert _finite(results["data"][key]), key
    for key in ("acc_real_test", "acc_vq_test"):
        assert 0.9 < results["judge"][key] <= 1.0, key
    for key in ("und_acc", "gen_acc"):
        cmp = results["aia_vs_baseline"][key]
        assert _finite(cmp["diff"]) and _finite(cmp["se"]) and cmp["verdict"] in ("better", "worse", "no measurable difference")
    assert isinstance(results["aia_vs_baseline"]["helped"], bool)
    assert sorted(results["ablations_vs_baseline"]) == ["aia_mse", "aia_per_layer"]
    for cmps in results["ablations_vs_baseline"].values():
        assert all(_finite(cmps[k]["diff"]) and _finite(cmps[k]["se"]) for k in ("und_acc", "gen_acc"))
    assert _finite(results["timing"]["wall_s"])
    assert list(results["timing"]["stages_s"]) == list(STEPS)
    assert all(_finite(x) and x >= 0 for x in results["timing"]["stages_s"].values())
    report = (out / "report.md").read_text()
    assert "Did AIA help at this scale?" in report
    rows = [line for line in report.splitlines() if line.startswith("| ") and not line.startswith(("| run ", "| ---"))]
    assert [r.split(" | ")[0][2:] for r in rows] == [RUNS[name][0] for name in RUN_TASKS]
    for row, name in zip(rows, RUN_TASKS, strict=True):  # the table shows the numbers of results.json
        for key in ("und_acc", "gen_acc", "gap_und", "gap_gen"):
            if key in results["runs"][name]:
                assert f" {results['runs'][name][key]:.3f} " in row, (name, key)


@pytest.mark.integration
def test_quick_demo_learns_and_the_aia_loss_pulls_the_curves_to_the_targets(quick_demo):
    _, results = quick_demo
    runs = results["runs"]
    n = results["data"]["test"]
    beyond_chance = results["chance"] + 3 * math.sqrt(0.1 * 0.9 / n)
    for name in ("baseline", "aia"):
        assert runs[name]["und_acc"] > beyond_chance, name
    for task in ("und", "gen"):
        assert runs["aia"][f"gap_{task}"] < runs["baseline"][f"gap_{task}"], task


@pytest.mark.integration
def test_quick_demo_is_deterministic(quick_demo, tmp_path):
    _, first = quick_demo
    second = run_demo(tmp_path / "again", quick=True, seed=0, progress=False)  # quick: no ablations by default
    for key in ("data", "judge", "targets", "targets_per_layer", "settings"):
        assert second[key] == first[key], key
    for name in ("und_only", "gen_only", "baseline", "aia"):
        assert second["runs"][name] == first["runs"][name], name
    assert set(second["runs"]) == {"und_only", "gen_only", "baseline", "aia"}
    assert second["aia_vs_baseline"] == first["aia_vs_baseline"] and second["ablations_vs_baseline"] == {}


@pytest.mark.integration
def test_the_demo_outputs_are_what_the_cli_makes_of_them(quick_demo, tmp_path):
    """The demo's runs, profiles and targets go through the user's commands: redo them with the CLI."""
    out, results = quick_demo
    n = results["settings"]["profile_samples"]
    for task in ("und", "gen"):
        data = out / "data" / f"{task}_train.jsonl"
        cli = tmp_path / f"aia_{task}.json"
        args = ["profile", str(out / "runs" / "aia" / "final"), "--data", str(data), "--task", task]
        assert main([*args, "--samples", str(n), "--batch-size", "32", "--out", str(cli), "--quiet"]) == 0
        np.testing.assert_allclose(load_profile(cli).mean, results["runs"]["aia"][f"curve_{task}"], rtol=0, atol=1e-6)
    refs = [str(out / "profiles" / "gen_only_gen.json"), str(out / "profiles" / "und_only_und.json")]
    stages = str(results["settings"]["stages"])
    assert main(["targets", *refs, "--stages", stages, "--out", str(tmp_path / "t.yaml")]) == 0
    from aia.targets.presets import TargetProfile

    redone = TargetProfile.from_yaml(tmp_path / "t.yaml")
    for task in ("und", "gen"):
        np.testing.assert_allclose(redone.per_layer(task)[0], results["targets"][task], rtol=0, atol=1e-12)
    assert main(["plot", "losses", str(out / "runs" / "baseline"), str(out / "runs" / "aia"), "--out", str(tmp_path / "l")]) == 0
    assert (tmp_path / "l.png").stat().st_size > 1000
