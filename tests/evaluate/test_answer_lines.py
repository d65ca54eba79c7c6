"""`aia answer` rows whose text holds U+2028 / U+2029 / U+0085 (characters str.splitlines() breaks
at): written, resumed and scored whole. The model is replaced by canned answers."""

from __future__ import annotations

import importlib
import json

import pytest
from PIL import Image

from aia.evaluate import answer, read_predictions, score, score_file

answer_module = importlib.import_module("aia.evaluate.answer")  # the package's `answer` is the function

SEPARATORS = "\u2028\u2029\u0085"


class _Model:
    """What `answer` reads of a loaded model when `_generate` is canned."""

    dtype = None

    def eval(self):
        return self

    def state_dict(self):
        return {}


@pytest.fixture
def pope(tmp_path):
    """A POPE question file with separators inside its questions, and its images."""
    images = tmp_path / "val2014"
    images.mkdir()
    rows = []
    for q in range(6):
        name = f"COCO_val2014_{q:012d}.jpg"
        Image.new("RGB", (16, 16), (40 * q, 0, 0)).save(images / name)
        text = f"Is there{SEPARATORS[q % 3]}a thing number {q}?"
        rows.append({"question_id": q + 1, "image": name, "text": text, "label": "yes" if q % 2 else "no"})
    data = tmp_path / "pope" / "coco_pope_random.json"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return data.parent, images


def _canned(monkeypatch, calls):
    def generate(model, processor, batch, max_new_tokens):
        calls.extend(q.id for q in batch)
        return [("Yes" if i % 2 else "No") + SEPARATORS + " there is\u2028one." for i, _ in enumerate(batch)]

    monkeypatch.setattr(answer_module, "resolve_model", lambda model, processor, **kw: (model, processor))
    monkeypatch.setattr(answer_module, "_generate", generate)


def test_answers_with_line_separators_resume_and_score(pope, tmp_path, monkeypatch):
    data, images = pope
    calls = []
    _canned(monkeypatch, calls)
    out = tmp_path / "preds.jsonl"
    first = answer(_Model(), "pope", data, out, processor=object(), image_dir=images, limit=4, progress=False)
    assert (first["answered"], len(calls)) == (4, 4)
    text = out.read_text(encoding="utf-8")
    assert not set(SEPARATORS) & set(text) and len(text.splitlines()) == 4  # escaped on disk

    rows = read_predictions(out)
    assert len(rows) == 4 and all(SEPARATORS in r["prediction"] for r in rows)
    assert any("\u2028" in r["question"] for r in rows)

    # resume: the answered ids are read back (the rows are not split), a cut last line is mended
    out.write_text(text + text.splitlines()[0][:20], encoding="utf-8")
    rest = answer(_Model(), "pope", data, out, processor=object(), image_dir=images, progress=False)
    assert (rest["answered"], rest["skipped"]) == (2, 4) and len(calls) == 6
    rows = read_predictions(out)
    assert len({r["id"] for r in rows}) == len(rows) == 6

    result = score_file(out)
    assert result["n"] == 6 and result["metrics"] == score("pope", rows)["metrics"]
    raw = tmp_path / "raw.jsonl"  # the same rows as another tool writes them: separators raw
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert read_predictions(raw) == rows and score_file(raw)["metrics"] == result["metrics"]
