"""Text-to-image inference for GenEval / DPG-Bench / WISE on tiny random Janus and Emu3 models:
the benchmarks' output layouts, reproducible seeding across batch sizes and resumption,
and the errors (Chameleon, malformed prompt files)."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from aia.errors import DataError, InputError
from aia.evaluate import generate_images, read_prompts
from aia.testing import tiny_chameleon, tiny_emu3, tiny_janus
from tests.helpers import save_model

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = {"janus": tiny_janus, "emu3": tiny_emu3, "chameleon": tiny_chameleon}
GENEVAL_LINES = [
    '{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}',
    '{"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "red"}], "prompt": "a red square"}',
]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """family -> a saved one-layer tiny model (32x32 images: 16 codes)."""
    root = tmp_path_factory.mktemp("gen_models")
    return {name: save_model(*build(seed=0, num_layers=1), root / name) for name, build in BUILDERS.items()}


@pytest.fixture
def geneval_file(tmp_path):
    path = tmp_path / "evaluation_metadata.jsonl"
    path.write_text("\n".join(GENEVAL_LINES) + "\n")
    return path


def png(path):
    with Image.open(path) as image:
        return image.size, image.mode


def files_of(directory):
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# ----------------------------------------------------------------- layouts
def test_geneval_layout(model_dirs, geneval_file, tmp_path):
    out = tmp_path / "geneval"
    summary = generate_images(model_dirs["janus"], geneval_file, out, fmt="geneval", images_per_prompt=2,
                              batch_size=3, progress=False)
    assert summary["images_generated"] == 4 and summary["family"] == "janus" and summary["guidance"] == 5.0
    assert files_of(out) == [f"{i:05d}/{name}" for i in range(2)
                             for name in ("metadata.jsonl", "samples/00000.png", "samples/00001.png")]
    for i, line in enumerate(GENEVAL_LINES):
        assert (out / f"{i:05d}" / "metadata.jsonl").read_text() == line + "\n"  # the prompt file's line verbatim
        assert json.loads((out / f"{i:05d}" / "metadata.jsonl").read_text())["prompt"] == json.loads(line)["prompt"]
        assert png(out / f"{i:05d}" / "samples" / "00000.png") == ((32, 32), "RGB")
    other = tmp_path / "other.jsonl"
    other.write_text(GENEVAL_LINES[1] + "\n" + GENEVAL_LINES[0] + "\n")
    with pytest.raises(InputError, match=r"geneval: images were made with another prompt_file \("):
        generate_images(model_dirs["janus"], other, out, fmt="geneval", images_per_prompt=2, progress=False)


def test_dpg_layout_is_one_grid_per_prompt_file(model_dirs, tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "partiprompts12.txt").write_text("a red square on a blue background\n")
    (prompts / "coco_7.txt").write_text("a green circle")
    out = tmp_path / "dpg"
    summary = generate_images(model_dirs["emu3"], prompts, out, fmt="dpg", batch_size=3, progress=False)
    assert summary["images_per_prompt"] == 4 and summary["images_generated"] == 8 and summary["family"] == "emu3"
    assert files_of(out) == ["coco_7.png", "partiprompts12.png"]
    assert png(out / "coco_7.png") == ((64, 64), "RGB")  # 2x2 grid of 32x32 images


def test_wise_and_plain_layouts(model_dirs, tmp_path):
    wise = tmp_path / "cultural_common_sense.json"
    items = [{"prompt_id": 1, "Prompt": "a red square", "Category": "Cultural"},
             {"prompt_id": 17, "Prompt": "a blue circle", "Category": "Cultural"}]
    wise.write_text(json.dumps(items, indent=2))
    out = tmp_path / "wise"
    generate_images(model_dirs["janus"], wise, out, fmt="wise", progress=False)
    assert files_of(out) == ["1.png", "17.png"]
    with pytest.raises(InputError, match="one image per prompt"):
        generate_images(model_dirs["janus"], wise, out, fmt="wise", images_per_prompt=2, progress=False)

    txt = tmp_path / "prompts.txt"
    txt.write_text("a red square\n\n  a blue circle  \n")
    plain = tmp_path / "plain"
    generate_images(model_dirs["janus"], txt, plain, images_per_prompt=2, progress=False)
    assert files_of(plain) == ["00000_0.png", "00000_1.png", "00001_0.png", "00001_1.png", "index.jsonl"]
    index = [json.loads(line) for line in (plain / "index.jsonl").read_text().splitlines()]
    assert index == [{"index": 0, "name": "00000", "prompt": "a red square", "files": ["00000_0.png", "00000_1.png"]},
                     {"index": 1, "name": "00001", "prompt": "a blue circle", "files": ["00001_0.png", "00001_1.png"]}]


# ----------------------------------------------------------------- seeding and resuming
@pytest.mark.parametrize("family", ["janus", "emu3"])
def test_same_seed_same_pngs_whatever_the_batching_and_resuming(model_dirs, geneval_file, tmp_path, family):
    kw = dict(fmt="geneval", images_per_prompt=3, progress=False)
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    generate_images(model_dirs[family], geneval_file, a, batch_size=4, seed=7, **kw)
    generate_images(model_dirs[family], geneval_file, b, batch_size=1, seed=7, **kw)
    pngs = [p.relative_to(a) for p in sorted(a.rglob("*.png"))]
    assert len(pngs) == 6
    assert all((a / p).read_bytes() == (b / p).read_bytes() for p in pngs)
    generate_images(model_dirs[family], geneval_file, c, batch_size=4, seed=8, **kw)
    assert any((a / p).read_bytes() != (c / p).read_bytes() for p in pngs)
    assert len({(a / p).read_bytes() for p in pngs}) == 6  # every image has its own seed

    # resume: complete prompts are skipped, files untouched; a missing image is redone identically
    stamps = {p: (a / p).stat().st_mtime_ns for p in pngs}
    again = generate_images(model_dirs[family], geneval_file, a, batch_size=2, seed=7, **kw)
    assert again["images_generated"] == 0 and again["prompts_done_before"] == 2
    assert {p: (a / p).stat().st_mtime_ns for p in pngs} == stamps
    lost = a / "00001" / "samples" / "00002.png"
    lost.unlink()
    redo = generate_images(model_dirs[family], geneval_file, a, batch_size=2, seed=7, **kw)
    assert redo["images_generated"] == 1 and redo["prompts_done_before"] == 1
    assert lost.read_bytes() == (b / "00001" / "samples" / "00002.png").read_bytes()
    assert not list(a.rglob(".*.tmp"))


@pytest.mark.parametrize("family", ["janus", "emu3"])
def test_top_p_reaches_the_sampler(model_dirs, geneval_file, tmp_path, family):
    """A nucleus of one token (top-p 1e-6) is the greedy choice: the images of temperature 0."""
    nucleus = generate_images(model_dirs[family], geneval_file, tmp_path / "p", top_p=1e-6, progress=False)
    assert nucleus["top_p"] == 1e-6 and nucleus["temperature"] == 1.0
    generate_images(model_dirs[family], geneval_file, tmp_path / "g", temperature=0, progress=False)
    for name in ("00000_0.png", "00001_0.png"):
        assert (tmp_path / "p" / name).read_bytes() == (tmp_path / "g" / name).read_bytes()


def test_loaded_model_and_greedy(geneval_file, tmp_path):
    model, processor = tiny_janus(seed=0, num_layers=1)
    out = tmp_path / "out"
    summary = generate_images(model, geneval_file, out, processor=processor, images_per_prompt=2, temperature=0,
                              guidance=1, progress=False)
    assert summary["images_generated"] == 4 and summary["guidance"] == 1.0
    # greedy: the two images of a prompt are the same
    assert (out / "00000_0.png").read_bytes() == (out / "00000_1.png").read_bytes()
    with pytest.raises(InputError, match="processor"):
        generate_images(model, geneval_file, tmp_path / "new", progress=False)
    with pytest.raises(InputError, match=r"out: images were made with another images_per_prompt \(2, now 3\)"):
        generate_images(model, geneval_file, out, processor=processor, images_per_prompt=3, progress=False)


# ----------------------------------------------------------------- errors
def test_chameleon_is_one_clear_error(model_dirs, geneval_file, tmp_path):
    with pytest.raises(InputError) as err:
        generate_images(model_dirs["chameleon"], geneval_file, tmp_path / "out", progress=False)
    message = str(err.value)
    assert "Chameleon" in message and "no image decoder" in message and "\n" not in message
    model, processor = tiny_chameleon(seed=0, num_layers=1)
    with pytest.raises(InputError, match="no image decoder"):
        generate_images(model, geneval_file, tmp_path / "out", processor=processor, progress=False)
    from aia.adapters import get_adapter
    from aia.adapters.imagegen import ImageOptions

    with pytest.raises(InputError, match="ChameleonForConditionalGeneration cannot generate images"):
        get_adapter(model, processor).generate_images(model, ["a cat"], [0], ImageOptions(1.0, 1.0, None))
    assert not (tmp_path / "out").exists()


def test_options_are_checked(model_dirs, geneval_file, tmp_path):
    with pytest.raises(InputError, match="'fmt'"):
        generate_images(model_dirs["janus"], geneval_file, tmp_path, fmt="coco", progress=False)
    with pytest.raises(InputError, match="'guidance'"):
        generate_images(model_dirs["janus"], geneval_file, tmp_path, guidance=0.5, progress=False)
    with pytest.raises(InputError, match="'ratio'"):
        generate_images(model_dirs["emu3"], geneval_file, tmp_path, ratio="16/9", progress=False)
    with pytest.raises(InputError, match="'negative_prompt': an option of the emu3 family only, not of janus"):
        generate_images(model_dirs["janus"], geneval_file, tmp_path / "o", negative_prompt="ugly", progress=False)
    # (with GLM-Image registered: "the emu3 and glm-image families")
    with pytest.raises(InputError, match=r"'ratio': an option of the emu3 (and glm-image families|family) only, not of janus"):
        generate_images(model_dirs["janus"], geneval_file, tmp_path / "o", ratio="16:9", progress=False)
    for area in (0, -5, True, 2.5):
        with pytest.raises(InputError, match="'image_area': must be a positive number of pixels"):
            generate_images(model_dirs["emu3"], geneval_file, tmp_path, image_area=area, progress=False)
    with pytest.raises(InputError, match=r"'image_area': 3 pixels at ratio 1:1 give a 0 x 0 grid"):
        generate_images(model_dirs["emu3"], geneval_file, tmp_path / "small", image_area=3, progress=False)


def test_prompt_files(tmp_path):
    assert [p.text for p in read_prompts(_write(tmp_path / "p.txt", "a\n\n b \n"))] == ["a", "b"]
    bad = _write(tmp_path / "meta.jsonl", GENEVAL_LINES[0] + "\n{not json\n")
    with pytest.raises(DataError, match=r"meta\.jsonl: line 2: invalid JSON"):
        read_prompts(bad)
    no_prompt = _write(tmp_path / "meta2.jsonl", '{"tag": "colors"}\n')
    with pytest.raises(DataError, match=r"meta2\.jsonl: line 1: 'prompt'"):
        read_prompts(no_prompt)
    wise = _write(tmp_path / "wise.json", json.dumps([{"prompt_id": 1, "Prompt": "a"}, {"prompt_id": 2}]))
    with pytest.raises(DataError, match=r"wise\.json: record 1: 'Prompt'"):
        read_prompts(wise)
    with pytest.raises(DataError, match=r"prompts\.csv: unknown prompts file type"):
        read_prompts(_write(tmp_path / "prompts.csv", "a,b\n"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt prompt files"):
        read_prompts(tmp_path / "empty")
    with pytest.raises(DataError, match="no such prompts file"):
        read_prompts(tmp_path / "missing.jsonl")


def _write(path, text):
    path.write_text(text)
    return path


def test_understanding_only_model_is_refused_before_loading(geneval_file, tmp_path):
    from aia.testing.tiny_understanding import tiny_qwen2_vl

    directory = tmp_path / "qwen"
    model = tiny_qwen2_vl(seed=0, num_layers=1)[0]
    model.config.architectures = [type(model).__name__]
    model.config.save_pretrained(directory)  # no weights: refused from config.json alone
    with pytest.raises(InputError, match=r"Qwen2VLForConditionalGeneration generates no images; text-to-image needs"):
        generate_images(directory, geneval_file, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_class_without_adapter_is_loadings_to_report(geneval_file, tmp_path):
    """No adapter at all is not "generates no images": loading names the class and the supported ones."""
    from aia.evaluate.generate import check_can_generate

    directory = tmp_path / "foo"
    directory.mkdir()
    (directory / "config.json").write_text('{"architectures": ["FooBarModel"], "model_type": "llama"}')
    check_can_generate(directory)  # nothing to say from config.json alone
    with pytest.raises(InputError) as err:
        generate_images(directory, geneval_file, tmp_path / "out", progress=False)
    assert "generates no images" not in str(err.value)
