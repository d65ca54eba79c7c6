"""A checkpoint that aia train writes generates and answers: aia generate / aia answer on its final/."""

import json

import pytest

from aia.cli import main
from aia.testing.tiny import tiny_emu3, tiny_janus
from aia.training.trainer import train
from tests.evaluate.test_answer import bench_files  # noqa: F401  (fixture)
from tests.training.test_trainer import make_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("build", [tiny_janus, tiny_emu3], ids=["janus", "emu3"])
def test_trained_final_generates_and_answers(build, tiny_data, bench_files, tmp_path):  # noqa: F811
    result = train(make_cfg(tiny_data, tmp_path / "run", "train.max_steps=2"), *build(seed=0, num_layers=1))
    final = result.final_dir
    generation = json.loads((final / "generation_config.json").read_text())
    if build is tiny_janus:  # plain transformers' generate(generation_mode="image") reads these
        assert generation["generation_kwargs"]["boi_token_id"] is not None and generation["pad_token_id"] is not None
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["generate", str(final), "--prompts", str(prompts), "--out", str(tmp_path / "img"), "--quiet"]) == 0
    assert (tmp_path / "img" / "00000_0.png").is_file()
    data, images = bench_files["pope"]
    out = tmp_path / "pope.jsonl"
    argv = ["answer", str(final), "--bench", "pope", "--data", str(data), "--image-dir", str(images)]
    assert main([*argv, "--out", str(out), "--max-new-tokens", "2", "--limit", "2", "--quiet"]) == 0
    assert len([json.loads(line) for line in out.read_text().splitlines()]) == 2
