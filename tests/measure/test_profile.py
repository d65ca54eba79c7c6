"""IntensityProfile JSON: construction, round trip, validation messages, summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aia.measure.profile import IntensityProfile, load_profile, save_profile, summary_text


def make(n=4, L=3, task="und", seed=0):
    per_sample = np.random.default_rng(seed).random((n, L))
    return IntensityProfile.from_per_sample("tiny-janus", task, per_sample, skipped=1, mode="decode"), per_sample


def test_from_per_sample_mean_and_population_std():
    p, x = make()
    assert (p.n, p.num_layers) == (4, 3)
    for layer in range(3):
        col = x[:, layer]
        assert p.mean[layer] == pytest.approx(sum(col) / 4)
        assert p.std[layer] == pytest.approx((sum((col - col.mean()) ** 2) / 4) ** 0.5)  # ddof=0
    assert p.std_over_layers == pytest.approx(p.std.mean())
    single = IntensityProfile.from_per_sample("m", "gen", [[0.1, 0.2]])
    assert single.std.tolist() == [0.0, 0.0]


def test_roundtrip(tmp_path):
    p, x = make()
    path = save_profile(p, tmp_path / "sub" / "p.json")
    raw = json.loads(path.read_text())
    assert raw["per_sample"] == x.tolist() and raw["mode"] == "decode" and raw["skipped"] == 1
    back = load_profile(path)
    assert (back.model, back.task, back.n, back.skipped, back.mode) == ("tiny-janus", "und", 4, 1, "decode")
    np.testing.assert_array_equal(back.per_sample, x)
    np.testing.assert_array_equal(back.mean, p.mean)


def test_optional_fields_default(tmp_path):
    p, _ = make()
    raw = p.to_dict()
    del raw["mode"], raw["skipped"]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(raw))
    back = load_profile(path)
    assert (back.mode, back.skipped) == ("teacher", 0)


def _with(**changes):
    raw = make()[0].to_dict()
    for k, v in changes.items():
        if v is KeyError:
            del raw[k]
        else:
            raw[k] = v
    return raw


@pytest.mark.parametrize(
    "raw,message",
    [
        (_with(task="both"), r"task must be one of \['und', 'gen'\], got 'both'"),
        (_with(mode="greedy"), "mode must be one of"),
        (_with(mean=KeyError), r"missing required key\(s\) \['mean'\]"),
        (_with(extra=1), r"unknown key\(s\) \['extra'\]"),
        (_with(n=5), r"per_sample must be \[n=5, num_layers=3\], got shape \[4, 3\]"),
        (_with(num_layers=4), "mean must have num_layers=4 values"),
        (_with(std=[0.1, 0.1]), r"std must have num_layers=3 values, got shape \[2\]"),
        (_with(per_sample=[[0.1, 0.2, 0.3], [0.1]]), "per_sample must be numbers"),
        (_with(mean=["a", "b", "c"]), "mean must be numbers"),
        (_with(mean=[0.9, 0.9, 0.9]), "mean does not match per_sample"),
        (_with(skipped=-1), "skipped must be a non-negative integer"),
        (_with(n=True), "n must be a positive integer"),
        (_with(model=3), "model must be a string"),
        ([1, 2], "expected a JSON object"),
    ],
)
def test_bad_files_name_file_and_field(tmp_path, raw, message):
    path = tmp_path / "prof.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match=message) as info:
        load_profile(path)
    assert str(info.value).startswith(f"{path}: ")


def test_non_finite_and_not_json(tmp_path):
    with pytest.raises(ValueError, match="per_sample contains non-finite"):
        IntensityProfile.from_per_sample("m", "und", [[0.1, float("nan")]])
    path = tmp_path / "p.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match=f"{path}: not valid JSON"):
        load_profile(path)


def test_summary_text():
    x = np.tile(np.linspace(0.0, 0.22, 12), (3, 1))
    x[0] += 0.03  # per-layer std = sqrt(2)/3 * 0.03 at every layer
    p = IntensityProfile.from_per_sample("m", "gen", x)
    text = summary_text(p)
    assert "task=gen" in text and "n=3" in text and "layers=12" in text
    assert "0-9" in text and "10-11" in text
    assert f"{p.mean[11]:.3f}" in text.splitlines()[3]
    assert f"(paper Table 1): {np.sqrt(2) / 3 * 0.03:.4f}" in text
    assert "max 0.230 (layer 11)" in text
