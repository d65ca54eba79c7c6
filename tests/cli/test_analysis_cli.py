"""`aia targets` / `aia plot` on bad input: one clear line on stderr and a non-zero exit, nothing written."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import yaml

from aia.cli import main
from aia.measure.profile import IntensityProfile, save_profile
from aia.targets.presets import TargetProfile


def write_profile(path, task="gen", layers=4, n=3, seed=0):
    per_sample = np.random.default_rng(seed).uniform(0.1, 0.6, (n, layers))
    return save_profile(IntensityProfile.from_per_sample("tiny", task, per_sample), path)


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_good_inputs_work(tmp_path, capsys):
    """The baseline the error cases below depart from."""
    gen, und = write_profile(tmp_path / "gen.json"), write_profile(tmp_path / "und.json", task="und")
    assert run(capsys, "targets", gen, und, "--stages", "2", "--out", tmp_path / "t.yaml")[0] == 0
    assert run(capsys, "plot", "profiles", gen, und, "--targets", tmp_path / "t.yaml", "--out", tmp_path / "a")[0] == 0
    # a preset is mapped to the profiles' depth by relative depth
    assert run(capsys, "plot", "profiles", gen, "--targets", "janus-pro", "--out", tmp_path / "b")[0] == 0
    assert (tmp_path / "a.png").is_file() and (tmp_path / "b.svg").is_file()
    # a targets YAML as the fallback of a task without a profile
    assert run(capsys, "targets", gen, "--fallback", tmp_path / "t.yaml", "--out", tmp_path / "g.yaml")[0] == 0
    assert TargetProfile.from_yaml(tmp_path / "g.yaml").stages("und") == TargetProfile.from_yaml(
        tmp_path / "t.yaml"
    ).stages("und")


@pytest.mark.parametrize(
    "change,message",
    [
        ({"per_sample": [[0.1, 0.2]]}, r"per_sample must be \[n=3, num_layers=4\]"),
        ({"mean": [0.9] * 4}, "mean does not match per_sample"),
        ({"task": "both"}, "task must be one of"),
        ({"layers": 4}, r"unknown key\(s\) \['layers'\]"),
    ],
)
@pytest.mark.parametrize("command", ["targets", "plot"])
def test_profile_of_wrong_schema(tmp_path, capsys, change, message, command):
    path = write_profile(tmp_path / "bad.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), **change}))
    argv = ["targets", path, "--out", tmp_path / "t.yaml"] if command == "targets" else ["plot", "profiles", path]
    if command == "plot":
        argv += ["--out", tmp_path / "fig"]
    code, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith(f"aia {command}: error: {path}: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not list(tmp_path.glob("t.yaml")) and not list(tmp_path.glob("fig*"))


def test_profile_not_json(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text("{")
    code, err = run(capsys, "plot", "profiles", path, "--out", tmp_path / "fig")
    assert code == 2 and f"{path}: not valid JSON" in err


def test_layer_counts_that_do_not_match(tmp_path, capsys):
    gen = write_profile(tmp_path / "gen.json", layers=4)
    und = write_profile(tmp_path / "und.json", task="und", layers=6)
    code, err = run(capsys, "targets", gen, und, "--out", tmp_path / "t.yaml")
    assert code == 2 and "gen and und profiles have different layer counts [4, 6]" in err
    # targets YAML derived for another depth: an error, not a silent resize
    TargetProfile.preset("emu3").to_yaml(tmp_path / "emu3.yaml")
    code, err = run(capsys, "plot", "profiles", gen, "--targets", tmp_path / "emu3.yaml", "--out", tmp_path / "fig")
    assert code == 2 and "have 32 layers but profile" in err and "has 4" in err
    assert not list(tmp_path.glob("fig*")) and not (tmp_path / "t.yaml").exists()


@pytest.mark.parametrize("delta", [0.0, -0.1])
def test_targets_with_non_positive_delta(tmp_path, capsys, delta):
    data = TargetProfile.preset("janus-pro").resize(4).to_dict()
    data["und"][0]["delta"] = delta
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    gen = write_profile(tmp_path / "gen.json")
    code, err = run(capsys, "plot", "profiles", gen, "--targets", bad, "--out", tmp_path / "fig")
    assert code == 2 and f"{bad}: und[0].delta must be > 0, got {delta}" in err
    # the same file as the fallback of `aia targets`
    code, err = run(capsys, "targets", gen, "--fallback", bad, "--out", tmp_path / "t.yaml")
    assert code == 2 and "delta must be > 0" in err
    assert not list(tmp_path.glob("fig*")) and not (tmp_path / "t.yaml").exists()


@pytest.mark.parametrize("content", ["", "\n\n", '{"event": "start"}\n'])
def test_empty_training_log(tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(content)
    code, err = run(capsys, "plot", "losses", run_dir, "--out", tmp_path / "fig")
    assert code == 2 and "metrics.jsonl: no logged steps" in err
    code, err = run(capsys, "plot", "losses", tmp_path / "missing", "--out", tmp_path / "fig")
    assert code == 2 and "no such metrics file" in err
    assert not list(tmp_path.glob("fig*"))
