"""`aia targets`: stages derived from measured profiles, presets, fallbacks, and bad input
(one clear line on stderr, a non-zero exit, nothing written)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from aia.cli import main
from aia.measure.profile import save_profile
from aia.measure.teacher import profile_model
from aia.targets.presets import TargetProfile
from tests.helpers import BROKEN_PROFILES, run_cli, write_broken_profile, write_profile, write_targets_with_delta


@pytest.mark.parametrize("family", ["janus"])
def test_targets_from_measured_profiles(tiny_model, tiny_data, tmp_path, capsys):
    model, processor = tiny_model
    gen = profile_model(model, processor, tiny_data[1], "gen", samples=4, batch_size=2, progress=False)
    und = profile_model(model, processor, tiny_data[0], "und", samples=4, batch_size=2, progress=False)
    paths = save_profile(gen, tmp_path / "gen.json"), save_profile(und, tmp_path / "und.json")
    yaml_path = tmp_path / "targets.yaml"
    assert run_cli(capsys, "targets", *paths, "--stages", "2", "--out", yaml_path)[0] == 0
    targets = TargetProfile.from_yaml(yaml_path)
    assert targets.num_layers == gen.num_layers
    for task, profile in (("gen", gen), ("und", und)):  # the documented rule, by brute force over the split
        m, per = np.asarray(profile.mean), np.asarray(profile.per_sample)
        sse = [((m[:k] - m[:k].mean()) ** 2).sum() + ((m[k:] - m[k:].mean()) ** 2).sum() for k in range(1, len(m))]
        k = 1 + int(np.argmin(sse))
        assert [(s.start, s.end) for s in targets.stages(task)] == [(0, k), (k, len(m))]
        for s, (a, b) in zip(targets.stages(task), [(0, k), (k, len(m))], strict=True):
            assert s.target == pytest.approx(m[a:b].mean(), abs=1e-9)
            assert s.delta == pytest.approx(max(0.01, per[:, a:b].std()), abs=1e-9)


def test_targets_from_profiles_and_a_fallback(tmp_path, capsys):
    """The baseline the error cases below depart from."""
    gen, und = write_profile(tmp_path / "gen.json"), write_profile(tmp_path / "und.json", task="und")
    assert run_cli(capsys, "targets", gen, und, "--stages", "2", "--out", tmp_path / "t.yaml")[0] == 0
    # a targets YAML as the fallback of a task without a profile
    assert run_cli(capsys, "targets", gen, "--fallback", tmp_path / "t.yaml", "--out", tmp_path / "g.yaml")[0] == 0
    both, fallback = (TargetProfile.from_yaml(tmp_path / name) for name in ("t.yaml", "g.yaml"))
    assert fallback.stages("und") == both.stages("und")


def test_targets_preset_render_and_bad_inputs(tmp_path, capsys):
    assert main(["targets", "--preset", "janus-pro", "--layers", "24"]) == 0
    assert "num_layers: 24" in capsys.readouterr().out
    out = tmp_path / "absolute.yaml"
    args = ["targets", "--preset", "janus-pro-released", "--layers", "24", "--layer-map", "absolute", "--out", out]
    assert main([str(a) for a in args]) == 0
    assert TargetProfile.from_yaml(out) == TargetProfile.preset("janus-pro-released").by_index(24)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "task": "gen"}))
    code, err = run_cli(capsys, "targets", bad)
    assert code != 0 and "bad.json" in err


@pytest.mark.parametrize("edit,message", BROKEN_PROFILES)
def test_profile_of_wrong_schema(tmp_path, capsys, edit, message):
    path = write_broken_profile(tmp_path / "bad.json", edit)
    code, err = run_cli(capsys, "targets", path, "--out", tmp_path / "t.yaml")
    assert code == 2
    assert err.startswith(f"aia targets: error: {path}: ") and len(err.strip().splitlines()) == 1
    assert re.search(message, err)
    assert not (tmp_path / "t.yaml").exists()


def test_references_of_different_depths(tmp_path, capsys):
    """A gen and an und reference of different depths: targets at the deeper one's depth, or at --layers."""
    gen = write_profile(tmp_path / "gen.json", layers=4)
    und = write_profile(tmp_path / "und.json", task="und", layers=6)
    code, _ = run_cli(capsys, "targets", gen, und, "--stages", "2", "--out", tmp_path / "t.yaml")
    assert code == 0
    targets = TargetProfile.from_yaml(tmp_path / "t.yaml")
    assert targets.num_layers == 6 and "resized 4->6" in targets.source
    code, _ = run_cli(capsys, "targets", gen, und, "--stages", "2", "--layers", "24", "--out", tmp_path / "t24.yaml")
    assert code == 0 and TargetProfile.from_yaml(tmp_path / "t24.yaml").num_layers == 24


@pytest.mark.parametrize("delta", [0.0, -0.1])
def test_fallback_with_non_positive_delta(tmp_path, capsys, delta):
    bad = write_targets_with_delta(tmp_path / "bad.yaml", delta)
    gen = write_profile(tmp_path / "gen.json")
    code, err = run_cli(capsys, "targets", gen, "--fallback", bad, "--out", tmp_path / "t.yaml")
    assert code == 2 and f"{bad}: und[0].delta must be > 0, got {delta}" in err
    assert not (tmp_path / "t.yaml").exists()
