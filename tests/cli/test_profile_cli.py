"""`aia profile` / `aia targets` / `aia plot` end to end on saved tiny models and images written here."""

import json

import numpy as np
import pytest
import torch

import aia
from aia.adapters import get_adapter
from aia.cli import main
from aia.data.records import read_records
from aia.measure.profile import load_profile
from aia.measure.teacher import profile_model
from aia.targets.presets import TargetProfile
from aia.testing.tiny import TINY_MODELS


@pytest.fixture
def saved_model(tmp_path, family):
    model, processor = TINY_MODELS[family](seed=0)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    return tmp_path / "model", model, processor


@pytest.mark.parametrize("task", ["und", "gen"])
def test_profile_cli_end_to_end(saved_model, tiny_data, task, tmp_path, capsys):
    model_dir, model, processor = saved_model
    data = tiny_data[0] if task == "und" else tiny_data[1]
    out = tmp_path / f"{task}.json"
    code = main(["profile", str(model_dir), "--data", str(data), "--task", task, "--samples", "3", "--out", str(out)])
    assert code == 0
    raw = json.loads(out.read_text())
    assert set(raw) >= {"model", "task", "num_layers", "n", "mean", "std", "per_sample"}
    layers = model.config.get_text_config().num_hidden_layers
    assert raw["task"] == task and raw["n"] == 3 and raw["num_layers"] == layers
    per = np.array(raw["per_sample"])
    assert per.shape == (3, layers) and np.all((per > 0) & (per < 1))
    np.testing.assert_allclose(raw["mean"], per.mean(0), atol=1e-6)
    np.testing.assert_allclose(raw["std"], per.std(0), atol=1e-6)

    # the same numbers straight from the library on the first 3 records, batched with padding
    adapter = get_adapter(model, processor)
    records = [r for r in read_records(data) if ("<image>" != r["conversations"][-1]["value"]) == (task == "und")]
    batch = adapter.collate([adapter.encode(r, task, data.parent) for r in records[:3]])
    with torch.no_grad(), aia.capture(model) as cap:
        adapter.forward(model, batch)
    np.testing.assert_allclose(per, cap.intensity.T.numpy(), atol=1e-5)


def test_profile_skips_missing_and_corrupt_images(saved_model, tiny_data, tmp_path, capsys):
    model_dir, model, processor = saved_model
    records = read_records(tiny_data[1])
    records[0]["image"] = "images/does_not_exist.png"
    (tiny_data[1].parent / "images" / "corrupt.png").write_bytes(b"not a png")
    records[1]["image"] = "images/corrupt.png"
    data = tiny_data[1].parent / "gen_bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "gen.json"
    assert (
        main(["profile", str(model_dir), "--data", str(data), "--task", "gen", "--samples", "4", "--out", str(out)])
        == 0
    )
    err = capsys.readouterr().err
    assert "does_not_exist.png" in err and "corrupt.png" in err
    profile = load_profile(out)
    assert profile.n == 4 and profile.skipped == 2


def test_profile_with_no_usable_sample_fails(saved_model, tiny_data, tmp_path, capsys):
    model_dir, _, _ = saved_model
    records = read_records(tiny_data[1])[:2]
    for r in records:
        r["image"] = "images/missing.png"
    data = tiny_data[1].parent / "all_bad.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    code = main(["profile", str(model_dir), "--data", str(data), "--task", "gen", "--out", str(tmp_path / "x.json")])
    assert code != 0
    assert "could be measured" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("family", ["janus"])
def test_targets_and_plot_from_profiles(saved_model, tiny_data, tmp_path, capsys):
    _, model, processor = saved_model
    gen = profile_model(model, processor, tiny_data[1], "gen", samples=4, batch_size=2, progress=False)
    und = profile_model(model, processor, tiny_data[0], "und", samples=4, batch_size=2, progress=False)
    from aia.measure.profile import save_profile

    save_profile(gen, tmp_path / "gen.json")
    save_profile(und, tmp_path / "und.json")
    yaml_path = tmp_path / "targets.yaml"
    assert (
        main(
            [
                "targets",
                str(tmp_path / "gen.json"),
                str(tmp_path / "und.json"),
                "--stages",
                "2",
                "--out",
                str(yaml_path),
            ]
        )
        == 0
    )
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
    fig = tmp_path / "fig"
    assert main(["plot", "profiles", str(tmp_path / "gen.json"), "--targets", str(yaml_path), "--out", str(fig)]) == 0
    assert (tmp_path / "fig.png").stat().st_size > 0


def test_targets_preset_render_and_bad_inputs(tmp_path, capsys):
    assert main(["targets", "--preset", "janus-pro", "--layers", "24"]) == 0
    text = capsys.readouterr().out
    assert "num_layers: 24" in text
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "m", "task": "gen"}))
    assert main(["targets", str(bad)]) != 0
    assert "bad.json" in capsys.readouterr().err
    assert main(["plot", "losses", str(tmp_path), "--out", str(tmp_path / "l")]) != 0
