"""`aia profile` end to end on saved tiny models and images written here."""

import json

import numpy as np
import pytest
import torch

import aia
from aia.adapters import get_adapter
from aia.cli import main
from aia.data.records import read_records
from aia.measure.profile import load_profile
from tests.helpers import write_jsonl


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
    data = write_jsonl(tiny_data[1].parent / "gen_bad.jsonl", records)
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
    data = write_jsonl(tiny_data[1].parent / "all_bad.jsonl", records)
    code = main(["profile", str(model_dir), "--data", str(data), "--task", "gen", "--out", str(tmp_path / "x.json")])
    assert code != 0
    assert "could be measured" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_profile_prompt_flags_reach_the_adapter(saved_model, tiny_data, tmp_path):
    """The released training code's prompt choices, given as flags, change the profiled sequences
    exactly as the library's PromptConfig does, and the profile records them."""
    from aia.adapters.prompts import PromptConfig
    from aia.measure.teacher import profile_model

    model_dir, model, processor = saved_model
    flags = ["--system-prompt", "none", "--turn-separator", "bos", "--answer-space", "false"]
    base = ["profile", str(model_dir), "--data", str(tiny_data[0]), "--task", "und", "--samples", "2", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "released.json"), *flags]) == 0
    assert main([*base, "--out", str(tmp_path / "default.json")]) == 0
    released, default = load_profile(tmp_path / "released.json"), load_profile(tmp_path / "default.json")
    want = profile_model(model, processor, tiny_data[0], "und", samples=2, progress=False,
                         prompt_config=PromptConfig(system_prompt="none", turn_separator="bos", answer_space=False))
    np.testing.assert_allclose(released.per_sample, want.per_sample, atol=1e-6)
    assert released.settings["prompts"] == want.settings["prompts"] != default.settings["prompts"]
    assert released.settings["prompts"]["answer_space"] is False


def test_profile_with_a_run_config_profiles_the_run(saved_model, tiny_data, tmp_path, capsys):
    """``--config RUN.yaml``: the run's model, data, spans, prompts and preprocessing, as
    :func:`aia.measure.run.profile_run` measures them; flags that would contradict the run are refused."""
    import yaml

    from aia.measure.run import profile_run

    model_dir, _, _ = saved_model
    run = tmp_path / "run.yaml"
    run.write_text(yaml.safe_dump({"model": {"path": str(model_dir)}, "data": {"und": str(tiny_data[0]),
                                   "image_area": 400}, "spans": {"question_in_query": True},
                                   "prompts": {"turn_separator": "bos"}}))
    out = tmp_path / "run.json"
    assert main(["profile", "--config", str(run), "--samples", "2", "--quiet", "--out", str(out)]) == 0
    got = load_profile(out)
    want = profile_run(run, "und", samples=2, progress=False)
    np.testing.assert_allclose(got.per_sample, want.per_sample, atol=1e-6)
    assert got.task == "und" and got.settings["spans"]["question_in_query"] is True
    assert got.settings["prompts"]["turn_separator"] == "bos"
    assert got.settings["preprocessing"]["image_area"] == 400  # the run's image preprocessing and length policy
    assert got.settings["preprocessing"]["length"] == {"max_length": 4096, "over_long": "truncate", "gen_prompt_length": None}

    base = ["profile", "--config", str(run), "--out", str(tmp_path / "x.json")]
    for extra, message in ((["--predictive"], "the run config's spans and prompts are profiled"),
                           (["--dtype", "bf16"], "--dtype: with --config"),
                           (["--task", "gen"], "data.gen: the run config has no 'gen' data")):
        assert main([*base, *extra]) == 2
        assert message in capsys.readouterr().err
    assert main(["profile", "--data", str(tiny_data[0]), "--task", "und", "--out", str(tmp_path / "y.json")]) == 2
    assert "give MODEL_DIR (or --config RUN.yaml" in capsys.readouterr().err
