"""aia generate and aia eval (and answer's Ctrl-C): an output is continued only with what made it,
one writer at a time, every bad output path or option is one line before any work, Ctrl-C is one
line (exit 130) and the same command resumes, and eval reports do not depend on where they ran."""

from __future__ import annotations

import importlib
import json
import os
import pickle
import re
import shutil

import pytest
import yaml

from aia.adapters import JanusAdapter
from aia.errors import ConfigError, DataError, InputError
from aia.evaluate import generate_images, read_prompts
from aia.evaluate.manifest import manifest_path, output_lock
from aia.evaluate.suite import load_eval_config
from aia.testing import tiny_janus
from tests.evaluate.test_answer import bench_files  # noqa: F401  (fixture)
from tests.helpers import run_cli, save_model

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ['{"tag": "single_object", "prompt": "a red circle"}', '{"tag": "colors", "prompt": "a blue square"}']


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety_models")
    return [save_model(*tiny_janus(seed=s, num_layers=1), root / f"m{s}") for s in (0, 1)]


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "meta.jsonl"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def pngs(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def run_out(capsys, *argv) -> tuple[int, str]:
    """``aia *argv``: its exit code and what it printed on stdout."""
    from aia.cli import main

    code = main([str(a) for a in argv])
    return code, capsys.readouterr().out


def files_of(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def one_line(err: str) -> str:
    """The one line the command wrote (eval's progress lines, ``aia eval: <model>: <bench> ... -> ...``, aside)."""
    lines = [
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith(("Loading", "Writing")) and " -> " not in line
    ]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------- generate: resume only with what made it
def test_a_generate_rerun_with_another_seed_is_refused_and_overwrite_starts_over(
    models, prompts, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "g"
    argv = ["generate", models[0], "--prompts", prompts, "--format", "geneval", "--images-per-prompt", "1", "--quiet"]
    assert run_cli(capsys, *argv, "--out", out)[0] == 0
    seed0 = pngs(out)
    code, err = run_cli(capsys, *argv, "--out", out, "--seed", "7")
    assert code == 2
    assert one_line(err) == (
        f"aia generate: error: {out}: images were made with another seed (0, now 7): continuing would mix the two; "
        "give --overwrite to start it over, or another --out"
    )
    assert pngs(out) == seed0  # nothing touched
    assert run_cli(capsys, *argv, "--out", out, "--seed", "7", "--overwrite")[0] == 0
    assert run_cli(capsys, *argv, "--out", tmp_path / "fresh", "--seed", "7")[0] == 0
    assert pngs(out) == pngs(tmp_path / "fresh") != seed0  # all redone with seed 7
    assert json.loads(manifest_path(out).read_text())["images"]["seed"] == 7
    import aia.evaluate.generate as generate_module

    def no_loading(*args, **kwargs):
        raise AssertionError("a complete folder loads no model")

    monkeypatch.setattr(generate_module, "resolve_model", no_loading)
    code, said = run_out(capsys, *argv, "--out", out, "--seed", "7")  # the same: resumed
    assert code == 0 and "0 new images, 2 prompts already there" in said


def test_overwrite_removes_the_images_of_a_longer_prompt_file(models, prompts, tmp_path):
    out = tmp_path / "plain"
    generate_images(models[0], prompts, out, progress=False)
    shorter = tmp_path / "one.txt"
    shorter.write_text("a green circle\n")
    with pytest.raises(InputError, match=r"plain: images were made with another prompt_file"):
        generate_images(models[0], shorter, out, progress=False)
    generate_images(models[0], shorter, out, progress=False, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["00000_0.png", "index.jsonl"]
    (out / "notes.txt").write_text("mine")
    generate_images(models[0], shorter, out, fmt="geneval", images_per_prompt=1, progress=False, overwrite=True)
    assert files_of(out) == ["00000/metadata.jsonl", "00000/samples/00000.png", "notes.txt"]  # another layout's gone


def test_a_wise_rerun_with_another_prompt_file_reusing_ids_is_refused(models, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps([{"prompt_id": 1, "Prompt": "a red square"}, {"prompt_id": 2, "Prompt": "a cat"}]))
    second.write_text(json.dumps([{"prompt_id": 1, "Prompt": "a blue circle"}, {"prompt_id": 2, "Prompt": "a cat"}]))
    out = tmp_path / "wise"
    generate_images(models[0], first, out, fmt="wise", progress=False)
    with pytest.raises(InputError, match=r"wise: images were made with another prompt_file \("):
        generate_images(models[0], second, out, fmt="wise", progress=False)
    with pytest.raises(InputError, match=r"wise: images were made with another model.weights \("):
        generate_images(models[1], first, out, fmt="wise", progress=False)
    with pytest.raises(InputError, match=r"wise: images were made with another guidance \(5.0, now 2.0\)"):
        generate_images(models[0], first, out, fmt="wise", guidance=2, progress=False)
    again = generate_images(models[0], first, out, fmt="wise", guidance=5, progress=False)  # Janus' default, said
    assert again["images_generated"] == 0


def test_out_dot_keeps_its_record_beside_the_folder(models, prompts, tmp_path, monkeypatch):
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("not images")  # a folder of other files is no earlier output
    monkeypatch.chdir(here)
    generate_images(models[0], prompts, ".", progress=False)
    assert files_of(here) == ["00000_0.png", "00001_0.png", "index.jsonl", "notes.txt"]
    assert json.loads((tmp_path / "here.manifest.json").read_text())["images"]["seed"] == 0
    with pytest.raises(InputError, match=r"here: images were made with another seed \(0, now 1\)"):
        generate_images(models[0], prompts, ".", seed=1, progress=False)


def test_a_folder_with_images_but_no_record_is_not_continued(models, prompts, tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "00000_0.png").write_bytes(b"made by an older aia")
    with pytest.raises(InputError, match="old: holds images output but no record of what made it"):
        generate_images(models[0], prompts, out, progress=False)


def test_a_second_generate_into_one_folder_is_refused(models, prompts, tmp_path):
    out = tmp_path / "g"
    with output_lock(out, "aia generate"):
        with pytest.raises(InputError, match=r"g: another aia generate \(pid \d+\) is writing it"):
            generate_images(models[0], prompts, out, progress=False)
    assert not out.exists()


def test_a_model_folder_is_read_once_while_unchanged(models, tmp_path, monkeypatch):
    import aia.evaluate.manifest as manifest

    folder = shutil.copytree(models[0], tmp_path / "m")
    first = manifest.model_fingerprint(folder)
    reads = []
    monkeypatch.setattr(manifest, "_file_sha256", lambda path: reads.append(path) or "read")
    assert manifest.model_fingerprint(folder) == first and reads == []  # eval asks once per benchmark
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # another weight, the same size
    weights.write_bytes(bytes(data))
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 1))
    assert manifest.model_fingerprint(folder) != first and reads  # read again


# ----------------------------------------------------------------- generate: one line before any work
def test_out_naming_a_file_is_one_line(models, prompts, tmp_path, capsys):
    taken = tmp_path / "taken.png"
    taken.write_bytes(b"x")
    code, err = run_cli(capsys, "generate", models[0], "--prompts", prompts, "--out", taken)
    assert code == 2 and one_line(err) == f"aia generate: error: {taken}: is a file; give a folder (or a new name)"
    code, err = run_cli(capsys, "generate", models[0], "--prompts", prompts, "--out", taken / "sub" / "g")
    assert code == 2 and one_line(err) == (
        f"aia generate: error: {taken}/sub/g: cannot write here ({taken} is a file, not a folder); give a writable place"
    )


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(models, prompts, tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o500)
    try:
        code, err = run_cli(capsys, "generate", models[0], "--prompts", prompts, "--out", out / "g")
        assert code == 2
        assert (
            one_line(err)
            == f"aia generate: error: {out}/g: cannot write here (Permission denied); give a writable place"
        )
    finally:
        out.chmod(0o700)


def test_a_read_only_file_system_is_one_line_before_any_work(models, prompts, tmp_path, capsys, monkeypatch):
    """As root (who writes into read-only folders), a read-only mount: writes fail with EROFS."""
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    code, err = run_cli(capsys, "generate", models[0], "--prompts", prompts, "--out", tmp_path / "g")
    assert code == 2
    assert one_line(err) == (
        f"aia generate: error: {tmp_path}/g: cannot write here (Read-only file system); give a writable place"
    )
    assert not (tmp_path / "g").exists() and not manifest_path(tmp_path / "g").exists()


@pytest.mark.parametrize("value", ["inf", "nan", "-1"])
def test_guidance_must_be_finite(models, prompts, tmp_path, capsys, value):
    code, err = run_cli(
        capsys, "generate", models[0], "--prompts", prompts, "--out", tmp_path / "g", "--guidance", value
    )
    assert code == 2
    assert (
        one_line(err)
        == f"aia generate: error: 'guidance': must be a finite number >= 1 (1: no guidance), got {float(value)}"
    )
    assert not (tmp_path / "g").exists()


def test_a_wise_prompt_id_too_long_for_a_file_name_is_one_line(tmp_path):
    wise = tmp_path / "wise.json"
    wise.write_text(json.dumps([{"prompt_id": "x" * 300, "Prompt": "a cat"}]))
    with pytest.raises(
        DataError,
        match=r"wise.json: record 0: 'prompt_id': 'xxxxxxxxxxxxxxxxxxxx'... is too long for a "
        r"file name \(300 bytes; at most 251\)",
    ):
        read_prompts(wise)
    wise.write_text(json.dumps([{"prompt_id": "x" * 251, "Prompt": "a cat"}]))
    assert read_prompts(wise)[0].name == "x" * 251


def test_a_pickle_payload_as_pytorch_model_bin_is_one_line_and_never_runs(models, prompts, tmp_path, capsys):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    pickled = shutil.copytree(models[0], tmp_path / "pickled")
    (pickled / "model.safetensors").unlink()
    (pickled / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    code, err = run_cli(capsys, "generate", pickled, "--prompts", prompts, "--out", tmp_path / "g")
    assert code == 2
    assert one_line(err) == (
        f"aia generate: error: {pickled}: cannot load the weights: a .bin weights file holds other objects than tensors "
        "and numbers (refused, not run); save the model as safetensors"
    )
    assert not marker.exists()


# ----------------------------------------------------------------- Ctrl-C
def _interrupt_on_call(monkeypatch, owner, name: str, call: int) -> None:
    """``owner.name`` raises KeyboardInterrupt on its ``call``-th call (1-based), as Ctrl-C would."""
    original, calls = getattr(owner, name), []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)


def test_ctrl_c_in_generate_is_one_line_and_the_same_command_resumes(models, prompts, tmp_path, capsys, monkeypatch):
    argv = ["generate", models[0], "--prompts", prompts, "--images-per-prompt", "3", "--quiet"]
    assert run_cli(capsys, *argv, "--out", tmp_path / "whole")[0] == 0
    _interrupt_on_call(monkeypatch, JanusAdapter, "generate_images", 3)
    code, err = run_cli(capsys, *argv, "--out", tmp_path / "g")
    assert code == 130
    assert (
        one_line(err) == "aia generate: interrupted at image 3 of the 6 to generate; rerun the same command to resume"
    )
    assert len(pngs(tmp_path / "g")) == 2
    monkeypatch.undo()
    code, said = run_out(capsys, *argv, "--out", tmp_path / "g")
    assert code == 0 and "4 new images, 0 prompts already there" in said
    assert pngs(tmp_path / "g") == pngs(tmp_path / "whole")


def test_ctrl_c_in_answer_is_one_line_and_the_same_command_resumes(models, bench_files, tmp_path, capsys, monkeypatch):  # noqa: F811
    answer_module = importlib.import_module("aia.evaluate.answer")  # aia.evaluate.answer is also the function

    data, images = bench_files["pope"]
    argv = [
        "answer",
        models[0],
        "--bench",
        "pope",
        "--data",
        data,
        "--image-dir",
        images,
        "--max-new-tokens",
        "2",
        "--quiet",
    ]
    assert run_cli(capsys, *argv, "--out", tmp_path / "whole.jsonl")[0] == 0
    _interrupt_on_call(monkeypatch, answer_module, "_generate", 3)
    code, err = run_cli(capsys, *argv, "--out", tmp_path / "p.jsonl")
    assert code == 130
    assert one_line(err) == "aia answer: interrupted at question 3 of the 6 to answer; rerun the same command to resume"
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 2
    monkeypatch.undo()
    assert run_cli(capsys, *argv, "--out", tmp_path / "p.jsonl")[0] == 0
    assert (tmp_path / "p.jsonl").read_bytes() == (tmp_path / "whole.jsonl").read_bytes()


# ----------------------------------------------------------------- eval
def _eval_file(folder, models, data, images, prompts, **options) -> os.PathLike:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "out": "eval_out",
                "models": {"baseline": str(models[0]), "aia": str(models[1])},
                "understanding": {"pope": {"data": str(data), "image_dir": str(images)}},
                "generation": {"geneval": {"prompts": str(prompts)}},
                "options": {"max_new_tokens": 2, "limit": 2, "images_per_prompt": 1, **options},
            },
            sort_keys=False,
        )
    )
    return config


PLAIN = "a model name is a plain folder name under out (no path separator, not . or ..), got "


@pytest.mark.parametrize(
    ("names", "said"),
    [
        (["../../x"], f"'models.../../x': {PLAIN}'../../x'"),
        (["/tmp/abs"], f"'models./tmp/abs': {PLAIN}'/tmp/abs'"),
        (["."], f"'models..': {PLAIN}'.'"),
        ([".."], f"'models...': {PLAIN}'..'"),
        (["a", "a/"], f"'models.a/': {PLAIN}'a/'"),
        (["a\\b"], PLAIN + repr("a\\b")),
        (["Report.JSON"], "'models.Report.JSON': cannot name a folder under out (the name of a report)"),
    ],
)
def test_eval_model_names_are_plain_folder_names(models, tmp_path, capsys, names, said):
    config = tmp_path / "eval.yaml"
    config.write_text(
        yaml.safe_dump(
            {"out": "eval_out", "models": {n: str(models[0]) for n in names}, "understanding": {"pope": {"data": "d"}}},
            sort_keys=False,
        )
    )
    with pytest.raises(ConfigError, match=re.escape(said)):
        load_eval_config(config)
    code, err = run_cli(capsys, "eval", config)
    assert code == 2 and one_line(err).startswith(f"aia eval: error: {config}: ") and one_line(err).endswith(said)
    assert not (tmp_path / "eval_out").exists()


def test_eval_model_names_one_file_system_takes_for_one_folder(models, tmp_path):
    config = tmp_path / "eval.yaml"
    for names in (["aia", "AIA"], ["caf\u00e9", "cafe\u0301"], ["run", "run."]):
        config.write_text(
            yaml.safe_dump(
                {"models": {n: str(models[0]) for n in names}, "understanding": {"pope": {"data": "d"}}},
                sort_keys=False,
            )
        )
        with pytest.raises(ConfigError, match=f"'models.{names[1]}': the same folder under out as model '{names[0]}'"):
            load_eval_config(config)


def test_eval_reruns_only_with_the_same_settings(models, bench_files, prompts, tmp_path, capsys):  # noqa: F811
    data, images = bench_files["pope"]
    out = tmp_path / "eval_out"
    assert run_cli(capsys, "eval", _eval_file(tmp_path, models, data, images, prompts), "--quiet")[0] == 0
    # the baseline's answers lose their last row (there is answering to do), and the seed changes: every
    # output is checked before the first model runs, so the run stops before answering anything
    preds = out / "baseline" / "pope.jsonl"
    rows = preds.read_text().splitlines(keepends=True)
    preds.write_text("".join(rows[:-1]))
    code, err = run_cli(capsys, "eval", _eval_file(tmp_path, models, data, images, prompts, seed=3), "--quiet")
    assert code == 2
    assert one_line(err).startswith(
        f"aia eval: error: {out}/baseline/geneval: images were made with another seed (0, now 3): continuing would mix"
    )
    assert preds.read_text() == "".join(rows[:-1])  # nothing answered before the refusal
    code, err = run_cli(
        capsys, "eval", _eval_file(tmp_path, models, data, images, prompts, max_new_tokens=3), "--quiet"
    )
    assert code == 2
    assert one_line(err).startswith(
        f"aia eval: error: {out}/baseline/pope.jsonl: pope was made with another max_new_tokens (2, now 3)"
    )
    config = _eval_file(tmp_path, models, data, images, prompts, seed=3)
    assert run_cli(capsys, "eval", config, "--quiet", "--overwrite")[0] == 0
    assert json.loads(manifest_path(out / "aia" / "geneval").read_text())["images"]["seed"] == 3
    assert run_cli(capsys, "eval", config, "--quiet")[0] == 0  # the same settings: continued


def test_eval_refuses_an_out_that_is_a_file_or_being_written(models, bench_files, prompts, tmp_path, capsys):  # noqa: F811
    data, images = bench_files["pope"]
    config = _eval_file(tmp_path, models, data, images, prompts)
    (tmp_path / "eval_out").write_text("a file")
    code, err = run_cli(capsys, "eval", config)
    assert code == 2
    assert one_line(err) == f"aia eval: error: {tmp_path}/eval_out: 'out': is a file; give a folder (or a new name)"
    (tmp_path / "eval_out").unlink()
    with output_lock(tmp_path / "eval_out", "aia eval"):
        code, err = run_cli(capsys, "eval", config)
    assert code == 2
    assert one_line(err).startswith(f"aia eval: error: {tmp_path}/eval_out: another aia eval (pid ")


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (".inf", "options.guidance: must be a finite number, got inf"),
        (0.5, "'options.guidance': must be a finite number >= 1"),
    ],
)
def test_eval_guidance_must_be_finite(models, tmp_path, capsys, value, said):
    config = tmp_path / "eval.yaml"
    config.write_text(
        f"models: {{m: {models[0]}}}\ngeneration: {{geneval: {{prompts: p.jsonl}}}}\noptions: {{guidance: {value}}}\n"
    )
    code, err = run_cli(capsys, "eval", config)
    assert code == 2 and one_line(err).startswith(f"aia eval: error: {config}: {said}")


def test_ctrl_c_in_eval_names_the_model_and_benchmark(models, bench_files, prompts, tmp_path, capsys, monkeypatch):  # noqa: F811
    data, images = bench_files["pope"]
    config = _eval_file(tmp_path, models, data, images, prompts)
    _interrupt_on_call(monkeypatch, JanusAdapter, "generate_images", 2)
    code, err = run_cli(capsys, "eval", config, "--quiet")
    assert code == 130
    assert one_line(err) == (
        "aia eval: baseline, geneval: interrupted at image 2 of the 2 to generate; rerun the same command to resume"
    )
    monkeypatch.undo()
    assert run_cli(capsys, "eval", config, "--quiet")[0] == 0


def test_two_equal_eval_runs_in_different_folders_give_equal_reports(models, bench_files, prompts, tmp_path, capsys):  # noqa: F811
    data, images = bench_files["pope"]
    for run in ("a", "b"):
        assert run_cli(capsys, "eval", _eval_file(tmp_path / run, models, data, images, prompts), "--quiet")[0] == 0
    a, b = tmp_path / "a" / "eval_out", tmp_path / "b" / "eval_out"
    for name in ("report.json", "report.md"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    report = json.loads((a / "report.json").read_text())
    assert str(tmp_path) not in json.dumps(report)
    assert report["exported"]["geneval"]["aia"] == "aia/geneval"
    assert report["scores"]["pope"]["aia"]["path"] == "aia/pope.jsonl"
    assert (a / report["models"]["aia"] / "config.json").is_file()  # relative to the report's folder
