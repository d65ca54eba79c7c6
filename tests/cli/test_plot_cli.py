"""`aia plot`: profile and loss figures, and bad input (one clear line on stderr, a non-zero
exit, nothing written)."""

from __future__ import annotations

import re

import pytest

from aia.measure.profile import load_profile
from aia.targets.presets import TargetProfile
from aia.targets.stages import derive_targets
from tests.helpers import BROKEN_PROFILES, run_cli, write_broken_profile, write_profile, write_targets_with_delta


def test_plot_profiles_with_targets(tmp_path, capsys):
    gen, und = write_profile(tmp_path / "gen.json"), write_profile(tmp_path / "und.json", task="und")
    derive_targets(load_profile(gen), load_profile(und), stages=2).to_yaml(tmp_path / "t.yaml")
    argv = ("plot", "profiles", gen, und, "--targets", tmp_path / "t.yaml", "--out", tmp_path / "a")
    assert run_cli(capsys, *argv)[0] == 0
    # a preset is mapped to the profiles' depth by relative depth
    assert run_cli(capsys, "plot", "profiles", gen, "--targets", "janus-pro", "--out", tmp_path / "b")[0] == 0
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.svg").is_file()


@pytest.mark.parametrize("edit,message", BROKEN_PROFILES)
def test_profile_of_wrong_schema(tmp_path, capsys, edit, message):
    path = write_broken_profile(tmp_path / "bad.json", edit)
    code, err = run_cli(capsys, "plot", "profiles", path, "--out", tmp_path / "fig")
    assert code == 2
    assert err.startswith(f"aia plot: error: {path}: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not list(tmp_path.glob("fig*"))


def test_profile_not_json(tmp_path, capsys):
    path = tmp_path / "p.json"
    path.write_text("{")
    code, err = run_cli(capsys, "plot", "profiles", path, "--out", tmp_path / "fig")
    assert code == 2 and f"{path}: not valid JSON" in err


def test_targets_of_another_depth(tmp_path, capsys):
    """A targets YAML derived for another depth: an error, not a silent resize."""
    gen = write_profile(tmp_path / "gen.json", layers=4)
    TargetProfile.preset("emu3").to_yaml(tmp_path / "emu3.yaml")
    code, err = run_cli(capsys, "plot", "profiles", gen, "--targets", tmp_path / "emu3.yaml", "--out", tmp_path / "fig")
    assert code == 2 and "have 32 layers but profile" in err and "has 4" in err
    assert not list(tmp_path.glob("fig*"))


@pytest.mark.parametrize("delta", [0.0, -0.1])
def test_targets_with_non_positive_delta(tmp_path, capsys, delta):
    bad = write_targets_with_delta(tmp_path / "bad.yaml", delta)
    gen = write_profile(tmp_path / "gen.json")
    code, err = run_cli(capsys, "plot", "profiles", gen, "--targets", bad, "--out", tmp_path / "fig")
    assert code == 2 and f"{bad}: und[0].delta must be > 0, got {delta}" in err
    assert not list(tmp_path.glob("fig*"))


@pytest.mark.parametrize("content", ["", "\n\n", '{"event": "start"}\n'])
def test_empty_training_log(tmp_path, capsys, content):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text(content)
    code, err = run_cli(capsys, "plot", "losses", run_dir, "--out", tmp_path / "fig")
    assert code == 2 and "metrics.jsonl: no logged steps" in err
    code, err = run_cli(capsys, "plot", "losses", tmp_path / "missing", "--out", tmp_path / "fig")
    assert code == 2 and "no such metrics file" in err
    assert not list(tmp_path.glob("fig*"))


def test_plot_losses_of_a_folder_without_metrics(tmp_path, capsys):
    assert run_cli(capsys, "plot", "losses", tmp_path, "--out", tmp_path / "l")[0] != 0
    assert not list(tmp_path.glob("l.*"))
