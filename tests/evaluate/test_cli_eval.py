"""aia generate / answer / score / eval from the command line, on tiny models: the before/after loop."""

from __future__ import annotations

import json

import pytest
import yaml

from aia.cli import main
from aia.testing import tiny_emu3, tiny_janus
from tests.evaluate.test_answer import bench_files  # noqa: F401  (fixture)
from tests.helpers import save_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval_models")
    return [save_model(*tiny_janus(seed=s, num_layers=1), root / f"m{s}") for s in (0, 1)]


def test_answer_score_and_compare_on_the_command_line(two_models, bench_files, tmp_path, capsys):  # noqa: F811
    data, images = bench_files["pope"]
    preds = []
    for i, model in enumerate(two_models):
        out = tmp_path / f"p{i}.jsonl"
        argv = ["answer", str(model), "--bench", "pope", "--data", str(data), "--image-dir", str(images)]
        assert main([*argv, "--out", str(out), "--max-new-tokens", "3", "--quiet"]) == 0
        preds.append(out)
    capsys.readouterr()
    assert main(["score", str(preds[0]), "--out", str(tmp_path / "s.json")]) == 0
    assert "mean/f1" in capsys.readouterr().out
    assert json.loads((tmp_path / "s.json").read_text())["bench"] == "pope"
    assert main(["score", str(preds[0]), "--compare", str(preds[1])]) == 0
    table = capsys.readouterr().out
    assert "noise" in table  # every metric has a verdict


def test_eval_report_compares_baseline_and_aia(two_models, bench_files, tmp_path, capsys):  # noqa: F811
    data, images = bench_files["pope"]
    prompts = tmp_path / "geneval.jsonl"
    prompts.write_text('{"tag": "single_object", "prompt": "a photo of a red circle"}\n')
    config = tmp_path / "eval.yaml"
    config.write_text(yaml.safe_dump({
        "out": "eval_out",
        "models": {"baseline": str(two_models[0]), "aia": str(two_models[1])},
        "understanding": {"pope": {"data": str(data), "image_dir": str(images)}},
        "generation": {"geneval": {"prompts": str(prompts)}},
        "options": {"max_new_tokens": 3, "images_per_prompt": 1},
        "compare": ["baseline", "aia"],
    }))
    assert main(["eval", str(config), "--quiet"]) == 0
    out = tmp_path / "eval_out"
    report = json.loads((out / "report.json").read_text())
    assert set(report["scores"]["pope"]) == {"baseline", "aia"}
    assert "mean/f1" in report["comparisons"]["pope"]["metrics"]
    assert (out / "aia" / "geneval" / "00000" / "metadata.jsonl").is_file()
    text = (out / "report.md").read_text()
    assert "`aia` minus `baseline`" in text and "GenEval's object detector" in text

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"models": {"a": "x"}, "understanding": {"popee": {"data": "d"}}}))
    assert main(["eval", str(bad)]) == 2
    assert "understanding.popee" in capsys.readouterr().err


def test_generate_on_the_command_line(two_models, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"tag": "single_object", "prompt": "a red circle"}\n')
    argv = ["generate", str(two_models[0]), "--prompts", str(prompts), "--format", "geneval", "--out", str(tmp_path / "g")]
    assert main([*argv, "--images-per-prompt", "2", "--quiet"]) == 0
    assert "2 new images" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "g" / "00000" / "samples").iterdir()) == ["00000.png", "00001.png"]
    assert main([*argv, "--images-per-prompt", "2", "--quiet"]) == 0  # resumed: nothing to do
    assert "0 new images, 1 prompts already there" in capsys.readouterr().out
    # the Emu3 options: taken by an Emu3 model, refused by a Janus one with the option named
    emu3 = save_model(*tiny_emu3(seed=0, num_layers=1), tmp_path / "emu3")
    emu3_options = ["--positive-prompt", "", "--negative-prompt", "blurry", "--image-area", "1024", "--ratio", "1:1"]
    assert main(["generate", str(emu3), "--prompts", str(prompts), "--out", str(tmp_path / "e"), "--quiet",
                 *emu3_options]) == 0
    assert [p.name for p in (tmp_path / "e").glob("*.png")] == ["00000_0.png"]
    assert main([*argv[:-1], str(tmp_path / "j"), "--negative-prompt", "blurry"]) == 2
    assert "'negative_prompt': an option of the emu3 family only" in capsys.readouterr().err


def test_eval_refuses_what_it_can_check_before_any_model_runs(two_models, bench_files, tmp_path, capsys):  # noqa: F811
    """A model that generates no images, or a bad prompt file, fails the run before the first answer."""
    from aia.testing import tiny_chameleon

    data, images = bench_files["pope"]
    chameleon = save_model(*tiny_chameleon(seed=0, num_layers=1), tmp_path / "chameleon")
    prompts = tmp_path / "geneval.jsonl"
    prompts.write_text('{"tag": "single_object", "prompt": "a photo of a red circle"}\n')

    def run(models: dict, prompt_file, understanding: bool = True) -> str:
        config = tmp_path / "eval.yaml"
        config.write_text(yaml.safe_dump({
            "out": "eval_out", "models": models,
            "understanding": {"pope": {"data": str(data), "image_dir": str(images)}} if understanding else {},
            "generation": {"geneval": {"prompts": str(prompt_file)}},
        }))
        assert main(["eval", str(config), "--quiet"]) == 2
        assert not (tmp_path / "eval_out").exists()  # nothing answered
        return capsys.readouterr().err

    err = run({"janus": str(two_models[0]), "cham": str(chameleon)}, prompts)
    assert "'models.cham'" in err and "no image decoder" in err and "cannot run geneval" in err
    # GLM-Image writes image tokens: no PNGs for GenEval's scorer
    from aia.testing.tiny_glm_image import tiny_glm_image

    glm = save_model(*tiny_glm_image(seed=0, num_layers=1), tmp_path / "glm")
    err = run({"janus": str(two_models[0]), "glm": str(glm)}, prompts)
    assert "'models.glm'" in err and "is a generation-only model (glm-image)" in err and "cannot run pope" in err
    err = run({"glm": str(glm)}, prompts, understanding=False)
    assert "'models.glm'" in err and "generates image tokens" in err and "cannot run geneval" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    err = run({"janus": str(two_models[0])}, bad)
    assert "bad.jsonl: line 1" in err and "'generation.geneval.prompts'" in err
