"""A resumable output continues only with what made it (aia.evaluate.manifest), one writer at a time;
`aia answer` as its first user."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from aia.errors import InputError
from aia.evaluate import answer, read_predictions
from aia.evaluate.manifest import check_manifest, manifest_path, model_fingerprint, output_lock
from tests.evaluate.test_answer import bench_files, model_dirs  # noqa: F401  (fixtures)
from tests.helpers import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_check_manifest_records_then_names_the_first_difference(tmp_path):
    out = tmp_path / "preds.jsonl"
    fields = {"model": {"config": "a", "weights": "b"}, "questions": "q", "max_new_tokens": 8}
    assert check_manifest(out, "pope", fields) is True  # recorded
    assert json.loads(manifest_path(out).read_text()) == {"pope": fields}
    assert check_manifest(out, "pope", fields, has_output=True) is True  # equal: continue
    assert check_manifest(out, "mme", {**fields, "max_new_tokens": 3}) is True  # another section, its own record
    changed = {**fields, "model": {"config": "a", "weights": "c"}, "max_new_tokens": 9}
    with pytest.raises(
        InputError,
        match=r'preds.jsonl: pope was made with another model.weights \("b", now "c"\): '
        "continuing would mix the two; give --overwrite to start it over",
    ):
        check_manifest(out, "pope", changed, has_output=True)
    assert check_manifest(out, "pope", changed, overwrite=True) is False  # start over: recorded anew
    assert json.loads(manifest_path(out).read_text())["pope"] == changed


def test_output_without_a_record_is_not_continued(tmp_path):
    out = tmp_path / "preds.jsonl"
    with pytest.raises(InputError, match="holds pope output but no record of what made it"):
        check_manifest(out, "pope", {"x": 1}, has_output=True)
    manifest_path(out).write_text("{not json")
    with pytest.raises(InputError, match=r"preds.jsonl.manifest.json: cannot read it"):
        check_manifest(out, "pope", {"x": 1})


def test_the_fingerprint_tells_a_fine_tuned_model_from_its_base(model_dirs, tmp_path):  # noqa: F811
    base = model_dirs["janus"]
    tuned = shutil.copytree(base, tmp_path / "tuned")
    weights = load_file(tuned / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 1e-3  # same names, shapes, config: the headers are equal
    save_file(weights, tuned / "model.safetensors", metadata={"format": "pt"})
    a, b = model_fingerprint(base), model_fingerprint(tuned)
    assert a["config"] == b["config"] and a["weights"] != b["weights"]
    assert model_fingerprint(base) == a  # stable


def test_a_second_writer_is_refused(tmp_path):
    out = tmp_path / "preds.jsonl"
    with output_lock(out, "aia answer"):
        with pytest.raises(InputError, match=r"preds.jsonl: another aia answer \(pid \d+\) is writing it"):
            with output_lock(out, "aia answer"):
                pass
    with output_lock(out, "aia answer"):  # released
        pass


def _answer(model, data, images, out, **kwargs):
    return answer(model, "pope", data, out, image_dir=images, progress=False, **{"max_new_tokens": 2, **kwargs})


def test_answer_resumes_only_with_the_same_model_questions_and_settings(model_dirs, bench_files, tmp_path):  # noqa: F811
    data, images = bench_files["pope"]
    out = tmp_path / "preds.jsonl"
    assert _answer(model_dirs["janus"], data, images, out, limit=2)["answered"] == 2
    first = read_predictions(out)

    with pytest.raises(InputError, match=r"pope was made with another model.config"):
        _answer(model_dirs["emu3"], data, images, out)
    with pytest.raises(InputError, match=r"pope was made with another max_new_tokens \(2, now 3\)"):
        _answer(model_dirs["janus"], data, images, out, max_new_tokens=3)
    with pytest.raises(InputError, match=r"pope was made with another batch_size \(1, now 2\)"):
        _answer(model_dirs["janus"], data, images, out, batch_size=2)
    other = shutil.copytree(data, tmp_path / "other_pope")  # the same ids, another question text
    file = other / "coco_pope_adversarial.json"
    file.write_text(file.read_text().replace("Is there", "Do you see"))
    with pytest.raises(InputError, match=r"pope was made with another questions"):
        _answer(model_dirs["janus"], other, images, out)
    assert read_predictions(out) == first  # nothing written by a refused run

    rest = _answer(model_dirs["janus"], data, images, out)  # the same: continues (limit may grow)
    assert (rest["skipped"], rest["answered"]) == (2, 4)

    mme, _ = bench_files["mme"]
    answer(model_dirs["janus"], "mme", mme, out, max_new_tokens=2, progress=False)  # another benchmark, same file
    redone = _answer(model_dirs["emu3"], data, images, out, overwrite=True)
    assert (redone["skipped"], redone["answered"]) == (0, 6)
    rows = read_predictions(out)
    assert sorted(r["bench"] for r in rows) == ["mme"] * 4 + ["pope"] * 6  # mme's rows kept
    assert json.loads(manifest_path(out).read_text())["pope"]["model"] == model_fingerprint(model_dirs["emu3"])


def test_cli_answer_names_the_change_and_overwrite_starts_over(model_dirs, bench_files, tmp_path, capsys):  # noqa: F811
    data, images = bench_files["pope"]
    out = tmp_path / "preds.jsonl"
    argv = [
        "answer",
        model_dirs["janus"],
        "--bench",
        "pope",
        "--data",
        data,
        "--image-dir",
        images,
        "--out",
        out,
        "--max-new-tokens",
        "2",
        "--limit",
        "1",
        "--quiet",
    ]
    assert run_cli(capsys, *argv)[0] == 0
    code, err = run_cli(capsys, *[model_dirs["emu3"] if a == model_dirs["janus"] else a for a in argv])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"aia answer: error: {out}: pope was made with another model.config")
    assert (
        run_cli(capsys, *[model_dirs["emu3"] if a == model_dirs["janus"] else a for a in argv], "--overwrite")[0] == 0
    )
    assert len(read_predictions(out)) == 1
