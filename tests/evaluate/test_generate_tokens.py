"""``aia generate`` for a family whose images are tokens (``image_output = "tokens"``: GLM-Image, whose
pixel decoder is outside transformers), and the nucleus (top-p) sampling it needs.

A test-only family ("tokgray", the one-file family of ``tests/adapters/test_new_family.py`` marked on
``Qwen2ForCausalLM``) returns :class:`~aia.adapters.base.ImageTokens`, and, as GLM-Image, takes its
sampling defaults from the checkpoint (its adapter instance's ``image_defaults``, not its class's):
the plain layout's ``.tokens.json`` files, resuming, the layouts that need PNGs refused before
loading, the manifest holding the defaults the model used."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from aia.adapters import FAMILY_MARKER, register_adapter
from aia.adapters.base import ImageDefaults, ImageTokens
from aia.adapters.imagegen import check_seeds, sample_tokens, seeded_sampler
from aia.errors import InputError
from aia.evaluate import generate_images
from aia.evaluate.generate import check_can_generate
from aia.evaluate.manifest import manifest_path
from tests.adapters.test_new_family import MODEL_CLASS, SIDE, GrayAdapter, tiny_gray

pytestmark = pytest.mark.usefixtures("one_thread")

#: the checkpoint's sampling settings (GLM-Image: its generation_config), other than the family class's
CHECKPOINT = {"temperature": 0.7, "top_p": 0.9}


class TokenGrayAdapter(GrayAdapter):
    """The gray family, writing its codes as tokens: a 1x1 preview grid, then the SIDE x SIDE grid."""

    family = "tokgray"
    image_output = "tokens"
    image_defaults = ImageDefaults(guidance=1.0, top_k=None)
    #: the options each generate_images call got (the test reads them)
    calls: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_defaults = replace(type(self).image_defaults, **CHECKPOINT)  # per instance, as GLM-Image's

    @torch.no_grad()
    def generate_images(self, model, prompts, seeds, options):
        check_seeds(prompts, seeds)
        type(self).calls.append(options)
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            seq = torch.tensor([[self.bos_id, *ids, self.boi_id]])
            sampler, codes = seeded_sampler([seed], options.temperature, options.top_k, options.top_p), []
            for _ in range(1 + SIDE * SIDE):
                scores = model(input_ids=seq, use_cache=False).logits[:, -1, self.code_ids].float()
                codes.append(int(sampler(None, scores).argmax(-1)))
                seq = torch.cat([seq, torch.tensor([[self.code_ids[codes[-1]]]])], dim=1)
            out.append(ImageTokens(grids=((1, 1), (SIDE, SIDE)), tokens=((codes[0],), tuple(codes[1:]))))
        return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved tiny gray model marked as the tokgray family, the family registered for the module."""
    from aia.adapters.loading import _MARKED

    register_adapter(MODEL_CLASS, TokenGrayAdapter, marked=True)
    model, processor = tiny_gray(seed=0)
    setattr(model.config, FAMILY_MARKER, TokenGrayAdapter.family)
    directory = tmp_path_factory.mktemp("tokgray") / "model"
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    yield directory
    del _MARKED[(MODEL_CLASS, TokenGrayAdapter.family)]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\na blue square\n")
    return path


def tokens_files(directory):
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


# ----------------------------------------------------------------- nucleus sampling
@pytest.mark.parametrize(("temperature", "top_k", "top_p"),
                         [(1.0, None, 0.75), (0.7, None, 0.3), (1.3, 20, 0.9), (1.0, None, 1.0), (1.0, None, 1e-6)])
def test_top_p_draws_as_transformers_nucleus_and_multinomial(temperature, top_k, top_p):
    """The draw is transformers' ``TemperatureLogitsWarper``, ``TopKLogitsWarper``, ``TopPLogitsWarper``
    then ``torch.multinomial`` with the same generator, token for token."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    for trial in range(20):
        logits = torch.randn(4, 64) * (1 + trial % 4)
        warped = TemperatureLogitsWarper(temperature)(None, logits.clone())
        if top_k is not None:
            warped = TopKLogitsWarper(top_k)(None, warped)
        warped = TopPLogitsWarper(top_p)(None, warped)
        probs = warped.softmax(-1)
        seeds = [100 * trial + i for i in range(4)]
        expected = torch.cat([torch.multinomial(probs[i], 1, generator=torch.Generator().manual_seed(s))
                              for i, s in enumerate(seeds)])
        drawn = sample_tokens(logits, [torch.Generator().manual_seed(s) for s in seeds], temperature, top_k, top_p)
        assert torch.equal(drawn, expected)
        # seeded_sampler passes top_p on: the one token it allows per row is that draw
        allowed = seeded_sampler(seeds, temperature, top_k, top_p)(None, logits.clone())
        assert torch.equal(allowed.argmax(-1), expected) and bool((allowed == 0).sum(-1).eq(1).all())
        assert bool((probs.gather(1, expected[:, None]) > 0).all())  # never outside the nucleus


def test_top_p_is_checked(prompts, tmp_path):
    for bad in (0, -0.1, 1.5, True, float("nan"), "0.9"):
        with pytest.raises(InputError, match=r"^'top_p': must be a number in \(0, 1\]") as err:
            generate_images(tmp_path / "none", prompts, tmp_path / "out", top_p=bad, progress=False)
        assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------- a family that writes tokens
def test_plain_layout_writes_token_files_with_the_checkpoints_defaults(model_dir, prompts, tmp_path):
    TokenGrayAdapter.calls.clear()
    out = tmp_path / "out"
    summary = generate_images(model_dir, prompts, out, images_per_prompt=2, batch_size=3, seed=4, progress=False)
    assert summary["family"] == "tokgray" and summary["image_output"] == "tokens"
    assert summary["images_generated"] == 4
    # the instance's defaults (the checkpoint's), not the class's, are used and recorded
    assert (summary["temperature"], summary["top_p"]) == (0.7, 0.9)
    assert {(o.temperature, o.top_p) for o in TokenGrayAdapter.calls} == {(0.7, 0.9)}
    record = json.loads(manifest_path(out).read_text())["images"]
    assert (record["temperature"], record["top_p"]) == (0.7, 0.9)

    names = ["00000_0.tokens.json", "00000_1.tokens.json", "00001_0.tokens.json", "00001_1.tokens.json"]
    assert tokens_files(out) == [*names, "index.jsonl"]
    index = [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]
    assert index == [{"index": 0, "name": "00000", "prompt": "a red circle", "files": names[:2]},
                     {"index": 1, "name": "00001", "prompt": "a blue square", "files": names[2:]}]
    for name in names:
        data = json.loads((out / name).read_text())
        assert set(data) == {"grids", "tokens"} and data["grids"] == [[1, 1], [SIDE, SIDE]]
        assert [len(t) for t in data["tokens"]] == [1, SIDE * SIDE]
        assert all(0 <= c < 4 for t in data["tokens"] for c in t)

    # the same seed gives the same tokens whatever the batch size
    again = tmp_path / "again"
    generate_images(model_dir, prompts, again, images_per_prompt=2, batch_size=1, seed=4, progress=False)
    assert all((out / n).read_bytes() == (again / n).read_bytes() for n in names)

    # resume: a complete folder is left as it is, a missing file is redone identically
    stamps = {n: (out / n).stat().st_mtime_ns for n in names}
    TokenGrayAdapter.calls.clear()
    done = generate_images(model_dir, prompts, out, images_per_prompt=2, seed=4, progress=False)
    assert done["images_generated"] == 0 and done["prompts_done_before"] == 2 and not TokenGrayAdapter.calls
    assert (done["temperature"], done["top_p"]) == (0.7, 0.9)
    assert {n: (out / n).stat().st_mtime_ns for n in names} == stamps
    (out / names[3]).unlink()
    redo = generate_images(model_dir, prompts, out, images_per_prompt=2, seed=4, temperature=0.7, progress=False)
    assert redo["images_generated"] == 1 and redo["prompts_done_before"] == 1  # an explicit default: the same run
    assert (out / names[3]).read_bytes() == (again / names[3]).read_bytes()
    assert not list(out.glob(".*.tmp"))

    # another setting than the recorded default is refused; overwrite starts over (the token files removed)
    with pytest.raises(InputError, match=r"out: images were made with another top_p \(0\.9, now 0\.5\)"):
        generate_images(model_dir, prompts, out, images_per_prompt=2, seed=4, top_p=0.5, progress=False)
    with pytest.raises(InputError, match=r"out: images were made with another images_per_prompt \(2, now 1\)"):
        generate_images(model_dir, prompts, out, seed=4, progress=False)
    redone = generate_images(model_dir, prompts, out, seed=4, top_p=1, temperature=0, overwrite=True, progress=False)
    assert redone["images_generated"] == 2 and redone["top_p"] is None and redone["temperature"] == 0.0
    assert tokens_files(out) == ["00000_0.tokens.json", "00001_0.tokens.json", "index.jsonl"]
    assert "top_p" not in json.loads(manifest_path(out).read_text())["images"]  # none used: not recorded


def test_a_record_made_otherwise_is_refused_once_the_model_tells_its_default(model_dir, prompts, tmp_path):
    """A folder made at an explicit temperature is not continued with the checkpoint's default, though the
    class's default is not the checkpoint's: the record is checked again once the model is loaded."""
    out = tmp_path / "out"
    generate_images(model_dir, prompts, out, temperature=0.5, progress=False)
    with pytest.raises(InputError, match=r"out: images were made with another temperature \(0\.5, now 0\.7\)"):
        generate_images(model_dir, prompts, out, progress=False)
    # made with the class's default (1.0) spelled out: the checkpoint's default (0.7) differs
    other = tmp_path / "other"
    generate_images(model_dir, prompts, other, temperature=1.0, progress=False)
    with pytest.raises(InputError, match=r"other: images were made with another temperature \(1\.0, now 0\.7\)"):
        generate_images(model_dir, prompts, other, progress=False)


@pytest.mark.parametrize("fmt", ["geneval", "dpg", "wise"])
def test_the_png_layouts_are_refused_before_loading(model_dir, prompts, tmp_path, fmt):
    with pytest.raises(InputError) as err:
        generate_images(model_dir, prompts, tmp_path / "out", fmt=fmt, progress=False)
    message = str(err.value)
    assert message.startswith(f"'fmt': the {fmt} layout holds PNGs for its scorer, but {MODEL_CLASS} generates "
                              "image tokens (its pixel decoder is not part of the transformers class)")
    assert "\n" not in message and not (tmp_path / "out").exists()
    with pytest.raises(InputError, match=f"the {fmt} layout holds PNGs"):
        check_can_generate(model_dir, fmt)  # from config.json alone
    check_can_generate(model_dir, "plain")
    check_can_generate(model_dir)
    # no weights: refused from config.json, nothing loaded
    config_only = tmp_path / "config_only"
    config_only.mkdir()
    (config_only / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(InputError, match=f"the {fmt} layout holds PNGs"):
        generate_images(config_only, prompts, tmp_path / "out", fmt=fmt, progress=False)


def test_cli_says_token_files(model_dir, prompts, tmp_path, capsys):
    from aia.cli import main

    out = tmp_path / "out"
    assert main(["generate", str(model_dir), "--prompts", str(prompts), "--out", str(out), "--top-p", "0.8",
                 "--quiet"]) == 0
    assert f"wrote {out} (2 new token files, 0 prompts already there)" in capsys.readouterr().out
    assert json.loads(manifest_path(out).read_text())["images"]["top_p"] == 0.8
    assert main(["generate", str(model_dir), "--prompts", str(prompts), "--out", str(tmp_path / "g"),
                 "--format", "geneval", "--quiet"]) != 0
    assert "'fmt': the geneval layout holds PNGs" in capsys.readouterr().err


# ----------------------------------------------------------------- GLM-Image, end to end
def test_glm_image_writes_its_token_grids(tmp_path, capsys):
    """``aia generate`` on a saved tiny GLM-Image: one prompt, a 128x128 target (the full grid 128 / 32 = 4x4
    after the processor's 16x16 preview), the checkpoint's sampling settings, codes from the codebook."""
    from aia.cli import main
    from aia.testing.tiny_glm_image import tiny_glm_image

    model, processor = tiny_glm_image(seed=0)
    model_dir = tmp_path / "glm"
    model.save_pretrained(model_dir)
    processor.save_pretrained(model_dir)
    codebook = model.config.vq_config.num_embeddings
    (tmp_path / "p.txt").write_text("a red square on a blue background\n")
    out = tmp_path / "out"
    argv = ["generate", str(model_dir), "--prompts", str(tmp_path / "p.txt"), "--out", str(out), "--image-area",
            str(128 * 128), "--seed", "1", "--quiet"]
    assert main(argv) == 0
    assert f"wrote {out} (1 new token files, 0 prompts already there)" in capsys.readouterr().out
    assert tokens_files(out) == ["00000_0.tokens.json", "index.jsonl"]
    data = json.loads((out / "00000_0.tokens.json").read_text())
    assert data["grids"] == [[16, 16], [4, 4]] and [len(t) for t in data["tokens"]] == [256, 16]
    assert all(isinstance(c, int) and 0 <= c < codebook for t in data["tokens"] for c in t)
    record = json.loads(manifest_path(out).read_text())["images"]
    assert (record["temperature"], record["top_p"], record["guidance"]) == (0.9, 0.75, 1.0)  # generation_config's
    assert main(argv) == 0 and "(0 new token files, 1 prompts already there)" in capsys.readouterr().out
    assert main([*argv, "--guidance", "3", "--overwrite"]) == 2  # refused before the model loads
    assert "'guidance': glm-image takes no classifier-free guidance (1: none), got 3.0" in capsys.readouterr().err
    assert main([*argv[:5], str(tmp_path / "g"), "--format", "geneval", "--quiet"]) == 2
    assert ("'fmt': the geneval layout holds PNGs for its scorer, but GlmImageForConditionalGeneration generates "
            "image tokens") in capsys.readouterr().err
