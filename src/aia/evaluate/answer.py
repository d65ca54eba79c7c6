"""Image-to-text inference on the understanding benchmarks' official files: POPE, MME, MMMU, MMVP.

:func:`answer` reads a benchmark's questions (:func:`read_questions`), asks the model each
one with greedy decoding (``model.generate(do_sample=False, max_new_tokens=...)``, batched
with left padding) and appends one JSON line per question to a predictions file in the
format :func:`aia.evaluate.score` reads (:mod:`aia.evaluate.scoring`). A question whose id
is already in the file is skipped, so an interrupted run resumes; it resumes only with the
same model, questions and settings, recorded in ``<out>.manifest.json``
(:mod:`aia.evaluate.manifest`), and ``overwrite`` starts the benchmark's rows over. One run at
a time writes into a file (a lock beside it).

The files read (``data_path``; ``image_dir`` where images live elsewhere):

=======  ==============================================================================
pope     a POPE question file (``coco_pope_adversarial.json``: JSON Lines of
         ``{"question_id", "image", "text", "label"}``) or a folder of them; the category is
         the file name's last ``_`` part (or a row's ``category``); images in ``image_dir``
         (COCO ``val2014``), default the question file's folder
mme      the ``MME_Benchmark_release_version`` folder: one folder per subtask holding either
         ``images/`` + ``questions_answers_YN/`` (one ``question<TAB>answer`` file per image)
         or the images beside their ``question<TAB>answer`` files, or a questions file of
         ``image<TAB>question<TAB>answer`` lines (the ``Your_Results`` format); or a folder of
         ``Your_Results`` files ``{subtask}.txt`` with the images in
         ``image_dir/{subtask}/[images/]``, as the released AIA ``eval.py`` reads them
mmmu     MMMU's ``validation`` parquet file, or a folder searched for
         ``validation-*.parquet`` (the Hugging Face layout ``{Subject}/validation-....parquet``)
mmvp     the MMVP folder: ``Questions.csv`` (``Index``/``lndex``, ``Question``, ``Options``,
         ``Correct Answer``) and ``MMVP Images/{index}.jpg``; or the CSV file itself
custom   a JSON Lines (or JSON list) file of ``{"image", "question", "answer"}`` (optional
         ``"id"``), images relative to the file (or ``image_dir``)
=======  ==============================================================================

The prompts are those of the released AIA evaluation scripts (from InternVL / LLaVA):
POPE ``"{text}\\nAnswer the question using a single word or phrase."``; MME
``"{question} Answer the question using a single word or phrase."``; MMMU and MMVP the
question, the options as ``"A. ..."`` lines and ``"Answer with the option's letter from the
given choices directly."`` (MMMU open questions: the short-answer sentence), MMMU with its
first image only, its ``<image k>`` tags left in the text as AIA does. The text goes after
the image, encoded by the family's adapter exactly as for training and profiling (which
equals the checkpoint's own chat template and processor, token for token:
``tests/adapters/test_templates.py``), cut where the answer starts.

Predictions are the decoded new tokens (special tokens skipped), stripped, except MME's,
kept as decoded (the AIA ``eval.py`` writes the raw response and MME's parser reads its first
four characters).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from aia.adapters import get_adapter
from aia.adapters.imagegen import generation_config
from aia.data.encoder import RecordEncoder, prompt_part, question_record
from aia.data.records import load_image
from aia.errors import DataError, ImageError, InputError
from aia.evaluate.generate import quiet_transformers, resolve_model
from aia.evaluate.manifest import Interrupted, check_manifest, digest, model_fingerprint, output_lock
from aia.jsonl import json_line, mend_torn_end, read_json_rows, read_jsonl

__all__ = ["BENCHES", "OPTION_PROMPT", "SHORT_ANSWER_PROMPT", "Question", "answer", "read_questions"]

BENCHES = ("pope", "mme", "mmmu", "mmvp", "custom")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
OPTION_PROMPT = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
#: new tokens per answer when not given (the answers asked for are a word or a letter)
MAX_NEW_TOKENS = 128


@dataclass
class Question:
    """One benchmark question.

    Attributes:
        id: unique within the benchmark (the predictions file's ``id``).
        prompt: the text the model gets after the image (question, options, instruction).
        image: the image file, or the encoded image bytes (MMMU).
        row: the predictions row without ``prediction`` (``id``, ``bench``, ``question``,
            ``answer`` and the benchmark's fields).
        strip: strip the decoded answer (all but MME).
    """

    id: str
    prompt: str
    image: Path | bytes
    row: dict
    strip: bool = True

    def load_image(self) -> Image.Image:
        if isinstance(self.image, bytes):
            try:
                with Image.open(io.BytesIO(self.image)) as image:
                    return image.convert("RGB")
            except (OSError, ValueError) as e:
                raise ImageError(f"question {self.id!r}: cannot decode its image: {e}") from None
        return load_image(self.image)


# ----------------------------------------------------------------- small readers
def _json_records(path: Path) -> list[tuple[dict, str | int]]:
    """``(record, where)`` pairs of a JSON list or JSON Lines file; ``where`` is ``"line N"`` or an index."""
    pairs = [(record, where) for where, record in read_json_rows(path)]
    for record, where in pairs:
        if not isinstance(record, dict):
            raise DataError(f"a question is a JSON object, got {type(record).__name__}", path=path, record=where)
    return pairs


def _text(record: dict, key: str, path: Path, where) -> str:
    value = record.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise DataError("missing or empty", path=path, record=where, field=key)
    return value


def _existing(image: Path, path: Path, where, field: str = "image") -> Path:
    if not image.is_file():
        raise DataError(f"image not found: {image}", path=path, record=where, field=field)
    return image


def _with_prompt(question: str, instruction: str, sep: str) -> str:
    return question if instruction in question else f"{question}{sep}{instruction}"


def _choices(options: list[str]) -> str:
    return "\n".join(f"{LETTERS[i]}. {o.strip()}" for i, o in enumerate(options))


# ----------------------------------------------------------------- POPE
def _read_pope(data_path: Path, image_dir: Path | None) -> list[Question]:
    if data_path.is_dir():
        files = sorted(p for p in data_path.iterdir() if p.is_file() and p.suffix.lower() in (".json", ".jsonl"))
        if not files:
            raise DataError("no POPE question files (*.json, *.jsonl) in the folder", path=data_path)
    else:
        files = [data_path]
    questions = []
    for file in files:
        default_category = file.stem.split("_")[-1]
        for record, where in _json_records(file):
            text = _text(record, "text", file, where)
            label_key = "label" if "label" in record else "answer"
            label = _text(record, label_key, file, where).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(f"a POPE label is 'yes' or 'no', got {record[label_key]!r}", path=file, record=where,
                                field=label_key)
            category = record.get("category") or default_category
            name = _text(record, "image", file, where)
            image = _existing((image_dir or file.parent) / name, file, where)
            qid = f"{category}_{_text(record, 'question_id', file, where)}"
            prompt = _with_prompt(text.strip(), SHORT_ANSWER_PROMPT, "\n")
            row = {"id": qid, "bench": "pope", "question": prompt, "answer": label, "category": category,
                   "image": name}
            questions.append(Question(qid, prompt, image, row))
    return questions


# ----------------------------------------------------------------- MME
def _tab_lines(file: Path, fields: int | None = None) -> list[tuple[list[str], str]]:
    try:
        text = file.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start})", path=file) from None
    out = []
    for lineno, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 etc. stay inside a line
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split("\t")]
        if len(parts) not in ((fields,) if fields else (2, 3)):
            want = {2: "question<TAB>answer", 3: "image<TAB>question<TAB>answer"}
            expected = want[fields] if fields else f"{want[2]} or {want[3]}"
            raise DataError(f"expected {expected}, got {len(parts)} tab-separated field(s)", path=file,
                            record=f"line {lineno}")
        out.append((parts, f"line {lineno}"))
    return out


def _images_by_stem(*folders: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in folders:
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                    found.setdefault(p.stem, p)
    return found


def _mme_question(subtask: str, image: Path, k: int, question: str, answer: str, file: Path, where) -> Question:
    if answer.lower() not in ("yes", "no"):
        raise DataError(f"an MME answer is 'Yes' or 'No', got {answer!r}", path=file, record=where, field="answer")
    prompt = f"{question} {SHORT_ANSWER_PROMPT}"
    qid = f"{subtask}/{image.name}/{k}"
    row = {"id": qid, "bench": "mme", "question": prompt, "answer": answer, "category": subtask, "image": image.name}
    return Question(qid, prompt, image, row, strip=False)


def _mme_results_file(file: Path, subtask: str, image_root: Path) -> list[Question]:
    """A ``Your_Results`` file: ``image<TAB>question<TAB>answer`` lines, images in ``image_root[/images]``."""
    questions, count = [], {}
    for (name, question, answer), where in _tab_lines(file, 3):
        image = image_root / name
        if not image.is_file():
            image = image_root / "images" / name
        _existing(image, file, where)
        count[name] = count.get(name, 0) + 1
        questions.append(_mme_question(subtask, image, count[name] - 1, question, answer, file, where))
    return questions


def _mme_subtask(folder: Path) -> list[Question]:
    subtask, questions = folder.name, []
    qa = folder / "questions_answers_YN"
    if qa.is_dir():
        files, images = sorted(qa.glob("*.txt")), _images_by_stem(folder / "images", folder)
    else:
        files, images = sorted(folder.glob("*.txt")), _images_by_stem(folder, folder / "images")
    for file in files:
        lines = _tab_lines(file)
        if lines and len(lines[0][0]) == 3:  # a Your_Results-style questions file inside the subtask folder
            questions += _mme_results_file(file, subtask, folder)
            continue
        if file.stem not in images:
            raise DataError(f"no image named {file.stem}.* beside its questions", path=file)
        for k, (parts, where) in enumerate(lines):
            if len(parts) != 2:
                raise DataError("expected question<TAB>answer", path=file, record=where)
            questions.append(_mme_question(subtask, images[file.stem], k, parts[0], parts[1], file, where))
    return questions


def _read_mme(data_path: Path, image_dir: Path | None) -> list[Question]:
    if not data_path.is_dir():
        raise DataError("MME data is a folder: MME_Benchmark_release_version (one folder per subtask) or a "
                        "Your_Results folder of {subtask}.txt files", path=data_path)
    questions = []
    for folder in sorted(p for p in data_path.iterdir() if p.is_dir() and not p.name.startswith(".")):
        questions += _mme_subtask(folder)
    if not questions:
        results = sorted(data_path.glob("*.txt"))
        if results and image_dir is None:
            raise InputError("a Your_Results folder needs image_dir: the MME_Benchmark_release_version folder",
                             path=data_path, field="image_dir")
        for file in results:
            questions += _mme_results_file(file, file.stem, image_dir / file.stem)
    if not questions:
        raise DataError("no MME questions: expected subtask folders (images/ + questions_answers_YN/, or images "
                        "beside question files) or Your_Results {subtask}.txt files", path=data_path)
    return questions


# ----------------------------------------------------------------- MMMU
def _read_mmmu(data_path: Path, image_dir: Path | None) -> list[Question]:
    import pyarrow.parquet as pq

    if data_path.is_dir():
        files = sorted(data_path.rglob("validation-*.parquet")) or sorted(data_path.rglob("*.parquet"))
        if not files:
            raise DataError("no parquet files in the folder (MMMU: {Subject}/validation-*.parquet)", path=data_path)
    else:
        files = [data_path]
    questions = []
    for file in files:
        try:
            rows = pq.read_table(file).to_pylist()
        except Exception as err:  # pyarrow raises many types for a malformed file
            raise DataError(f"cannot be read as parquet: {err}", path=file) from None
        for i, record in enumerate(rows):
            qid = _text(record, "id", file, i)
            question = _text(record, "question", file, i).strip()
            qtype = _text(record, "question_type", file, i)
            options = record.get("options")
            if isinstance(options, str):
                try:
                    options = ast.literal_eval(options) if options.strip() else []
                except (ValueError, SyntaxError):
                    raise DataError(f"'options' is not a list: {options[:80]!r}", path=file, record=i,
                                    field="options") from None
            options = list(options or [])
            if not all(isinstance(o, str) for o in options) or len(options) > len(LETTERS):
                raise DataError("'options' must be a list of strings", path=file, record=i, field="options")
            answer = record.get("answer")
            if not isinstance(answer, str | list):
                raise DataError("missing 'answer'", path=file, record=i, field="answer")
            image = next((record[f"image_{k}"] for k in range(1, 8) if record.get(f"image_{k}")), None)
            if isinstance(image, dict):
                image = image.get("bytes")
            if not isinstance(image, bytes):
                raise DataError("no image (image_1 ... image_7 are empty)", path=file, record=i, field="image_1")
            prompt = question + (f"\n{_choices(options)}" if options else "")
            prompt = f"{prompt}\n{OPTION_PROMPT if qtype == 'multiple-choice' else SHORT_ANSWER_PROMPT}".strip()
            row = {"id": qid, "bench": "mmmu", "question": prompt, "answer": answer, "question_type": qtype,
                   "options": options, "subject": "_".join(qid.split("_")[1:-1])}
            questions.append(Question(qid, prompt, image, row))
    return questions


# ----------------------------------------------------------------- MMVP
def _read_mmvp(data_path: Path, image_dir: Path | None) -> list[Question]:
    csv_path = data_path / "Questions.csv" if data_path.is_dir() else data_path
    if not csv_path.is_file():
        raise DataError("no Questions.csv (MMVP: Questions.csv and 'MMVP Images/')", path=csv_path)
    images = image_dir or csv_path.parent / "MMVP Images"
    try:
        with open(csv_path, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot be read as CSV: {e}", path=csv_path) from None
    questions = []
    for lineno, record in enumerate(rows, 2):
        where = f"line {lineno}"
        key = "lndex" if "lndex" in record else "Index"
        index = _text(record, key, csv_path, where).strip()
        if not index.isdigit():
            raise DataError(f"the index must be a number, got {index!r}", path=csv_path, record=where, field=key)
        question = _text(record, "Question", csv_path, where).strip()
        raw = _text(record, "Options", csv_path, where)
        options = raw.split("(b)")
        options[0] = options[0].replace("(a)", "")
        options = [o.strip() for o in options]
        answer = _text(record, "Correct Answer", csv_path, where).strip()
        image = _existing(images / f"{index}.jpg", csv_path, where, "Index")
        prompt = f"{question}\n{_choices(options)}\n{OPTION_PROMPT}"
        row = {"id": index, "bench": "mmvp", "question": prompt, "answer": answer, "options": options,
               "pair": str((int(index) - 1) // 2)}
        questions.append(Question(index, prompt, image, row))
    return questions


# ----------------------------------------------------------------- custom
def _read_custom(data_path: Path, image_dir: Path | None) -> list[Question]:
    if not data_path.is_file():
        raise DataError("no such questions file", path=data_path)
    questions = []
    for n, (record, where) in enumerate(_json_records(data_path)):
        name = _text(record, "image", data_path, where)
        image = _existing((image_dir or data_path.parent) / name, data_path, where)
        question = _text(record, "question", data_path, where).replace("<image>", "").strip()
        answer = record.get("answer", "")
        qid = str(record["id"]) if record.get("id") not in (None, "") else str(n)
        row = {"id": qid, "bench": "custom", "question": question, "answer": answer, "image": name}
        questions.append(Question(qid, question, image, row))
    return questions


_READERS = {"pope": _read_pope, "mme": _read_mme, "mmmu": _read_mmmu, "mmvp": _read_mmvp, "custom": _read_custom}


def _check_bench(bench: str) -> str:
    if not isinstance(bench, str) or bench.lower() not in BENCHES:
        raise InputError(f"unknown benchmark {bench!r}; known: {', '.join(BENCHES)}", field="bench")
    return bench.lower()


def read_questions(bench: str, data_path: str | Path, *, image_dir: str | Path | None = None) -> list[Question]:
    """The questions of a benchmark's official files (see the module doc for each layout).

    Raises:
        DataError: a file is missing or malformed, an image is missing, an id repeats; the
            message names the file, the line or record, and the field.
    """
    bench = _check_bench(bench)
    data_path = Path(data_path)
    if not data_path.exists():
        raise DataError("no such file or folder", path=data_path)
    questions = _READERS[bench](data_path, Path(image_dir) if image_dir is not None else None)
    if not questions:
        raise DataError(f"no {bench} questions", path=data_path)
    seen = set()
    for q in questions:
        if q.id in seen:
            raise DataError(f"duplicate question id {q.id!r}", path=data_path, field="id")
        seen.add(q.id)
    return questions


# ----------------------------------------------------------------- prompts for the model
def _prompts(model, adapter, questions: list[Question]):
    """The questions encoded by the record encoder of training and profiling
    (:class:`aia.data.encoder.RecordEncoder`: the checkpoint's own chat template, token for token,
    tests/adapters/test_templates.py), cut where the answer starts (:func:`aia.data.encoder.prompt_part`,
    as decode-time profiling cuts), collated with left padding. Returns the batch and the model's
    generation inputs."""
    encode = RecordEncoder(adapter, "und", None)
    examples = [prompt_part(encode(question_record(q.prompt), image=q.load_image())) for q in questions]
    batch = adapter.collate(examples)
    keys = adapter.decode_runner(model, "und").prefill_keys  # what the family's forward takes (None: all)
    return batch, {k: v for k, v in batch.inputs.items() if (k in keys if keys else k != "position_ids")}


def _generate(model, processor, questions: list[Question], max_new_tokens: int) -> list[str]:
    """Greedy answers to ``questions``, batched with left padding (Emu3: one image size per batch)."""
    adapter = get_adapter(model, processor, padding_side="left")
    batch, inputs = _prompts(model, adapter, questions)
    sizes = inputs.get("image_sizes")
    if sizes is not None and len(questions) > 1 and len({tuple(s) for s in sizes.tolist()}) > 1:
        # transformers' Emu3 encodes a batch's images zero-padded to the largest, so an image's codes near its
        # border would depend on the other images of the batch: one image size per call
        groups: dict[tuple, list[int]] = {}
        for i, s in enumerate(sizes.tolist()):
            groups.setdefault(tuple(s), []).append(i)
        answers: list[str | None] = [None] * len(questions)
        for idx in groups.values():
            for i, text in zip(idx, _generate(model, processor, [questions[i] for i in idx], max_new_tokens),
                               strict=True):
                answers[i] = text
        return answers
    inputs = {k: v.to(model.device) for k, v in inputs.items()}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(model.dtype)
    config = generation_config(model, max_new_tokens=max_new_tokens)
    tok = processor.tokenizer
    if config.pad_token_id is None:
        config.pad_token_id = adapter.pad_id
    out = model.generate(**inputs, attention_mask=batch.attention_mask.to(model.device), generation_config=config)
    new = out[:, inputs["input_ids"].shape[1]:]
    return tok.batch_decode(new, skip_special_tokens=True)


# ----------------------------------------------------------------- the predictions file
def _done_ids(out_path: Path, bench: str) -> set[str]:
    """Ids of ``bench`` already in the predictions file. A last line cut off by an interruption
    (no newline, not JSON) is removed; a complete last line without its newline gets one."""
    if not out_path.is_file():
        return set()
    mend_torn_end(out_path)
    rows = [line.value for line in read_jsonl(out_path)]
    mine = [r for r in rows if isinstance(r, dict) and "id" in r and str(r.get("bench", "")).lower() == bench]
    return {str(r["id"]) for r in mine}


def _drop_rows(out_path: Path, bench: str) -> None:
    """Remove ``bench``'s rows from the predictions file (starting them over), keeping the others."""
    if not out_path.is_file():
        return
    mend_torn_end(out_path)
    kept = [line.value for line in read_jsonl(out_path)
            if not (isinstance(line.value, dict) and str(line.value.get("bench", "")).lower() == bench)]
    tmp = out_path.with_name(out_path.name + ".tmp")
    tmp.write_text("".join(json_line(row) for row in kept), encoding="utf-8")
    os.replace(tmp, out_path)


def _manifest(model, questions: list[Question], max_new_tokens: int, batch_size: int, device, dtype) -> dict:
    """What the answers depend on (:mod:`aia.evaluate.manifest`): the model, the questions as read
    (rows, prompts, and each image's name and size, or its bytes' digest), and the settings."""
    images = [[q.image.name, q.image.stat().st_size] if isinstance(q.image, Path) else hashlib.sha256(q.image).hexdigest()
              for q in questions]
    if not isinstance(model, str | os.PathLike):
        dtype = model.dtype
    return {"model": model_fingerprint(model), "questions": digest([[q.row, q.prompt] for q in questions] + images),
            "max_new_tokens": max_new_tokens, "batch_size": batch_size,
            "dtype": None if dtype is None else str(dtype).removeprefix("torch."), "device": torch.device(device).type}


def answer(
    model,
    bench: str,
    data_path: str | Path,
    out_path: str | Path,
    *,
    processor=None,
    image_dir: str | Path | None = None,
    batch_size: int = 1,
    max_new_tokens: int = MAX_NEW_TOKENS,
    limit: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    progress: bool = True,
    overwrite: bool = False,
    check_only: bool = False,
) -> dict:
    """Answer a benchmark's questions and append the predictions to ``out_path`` (JSON Lines).

    Args:
        model: a model directory (loaded on ``device`` in ``dtype``) or a loaded model (then
            give ``processor``). Janus, Emu3 and Chameleon use their chat format; another model
            needs a processor with a chat template.
        bench: ``"pope"``, ``"mme"``, ``"mmmu"``, ``"mmvp"`` or ``"custom"``.
        data_path: the benchmark's files (module doc).
        out_path: the predictions file; questions whose id (with this ``bench``) it already
            holds are skipped, new rows are appended and flushed one by one. Its rows of
            ``bench`` are continued only when the model, the questions and the settings that
            change an answer (``max_new_tokens``, ``batch_size``, ``dtype``, the device's type)
            are those recorded in ``<out_path>.manifest.json``; ``limit`` may change.
        image_dir: where the images are when not where the questions are (POPE: COCO
            ``val2014``; MME ``Your_Results``: the release folder; MMVP: ``MMVP Images``).
        batch_size: questions per ``generate`` call (left padding).
        max_new_tokens: the most tokens per answer (greedy decoding stops at end-of-sequence).
        limit: answer only the first ``limit`` questions (a quick look; MME and MMVP score
            whole images and pairs, so keep it even).
        device, dtype: where and in which dtype to load a model directory.
        progress: show a progress bar.
        overwrite: start ``bench``'s rows of ``out_path`` over (other benchmarks' rows stay).
        check_only: only check that ``out_path``'s rows may be continued with these settings (the record in
            its manifest), loading and writing nothing; returns ``{"bench", "out_path", "questions", "checked"}``.

    Returns:
        ``{"bench", "out_path", "questions", "skipped" (already answered), "answered"}``.

    Raises:
        InputError: an unknown benchmark or bad option; the file's rows were made with
            another model, questions or setting (naming the first that differs); another run
            is writing the file; :class:`~aia.errors.DataError` for malformed benchmark files
            (naming file, line and field).
    """
    bench = _check_bench(bench)
    for name, value in (("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"must be a positive integer, got {value!r}", field=name)
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise InputError(f"must be a positive integer or None, got {limit!r}", field="limit")
    if isinstance(model, str | os.PathLike):  # a generation-only family (GLM-Image), before anything loads
        from aia.adapters.loading import check_task

        check_task(model, "und")
    questions = read_questions(bench, data_path, image_dir=image_dir)
    out_path = Path(out_path)
    if check_only:  # the record of an existing output against these settings; nothing loads or is written
        fields = _manifest(model, questions, max_new_tokens, batch_size, device, dtype)
        check_manifest(out_path, bench, fields, overwrite=overwrite, has_output=bool(_done_ids(out_path, bench)),
                       record=False)
        return {"bench": bench, "out_path": str(out_path), "questions": len(questions), "checked": True}
    with output_lock(out_path, "aia answer"):
        fields = _manifest(model, questions, max_new_tokens, batch_size, device, dtype)
        if not check_manifest(out_path, bench, fields, overwrite=overwrite, has_output=bool(_done_ids(out_path, bench))):
            _drop_rows(out_path, bench)
        questions = questions[:limit] if limit is not None else questions
        return _answer(model, processor, bench, questions, out_path, batch_size=batch_size,
                       max_new_tokens=max_new_tokens, device=device, dtype=dtype, progress=progress)


def _answer(model, processor, bench: str, questions: list[Question], out_path: Path, *, batch_size: int,
            max_new_tokens: int, device, dtype, progress: bool) -> dict:
    """Answer the ``questions`` not yet in ``out_path`` (which the caller holds locked)."""
    done = _done_ids(out_path, bench)
    todo = [q for q in questions if q.id not in done]
    summary = {"bench": bench, "out_path": str(out_path), "questions": len(questions),
               "skipped": len(questions) - len(todo), "answered": 0}
    if not todo:
        return summary
    model, processor = resolve_model(model, processor, device=device, dtype=dtype)
    model.eval()
    from tqdm.auto import tqdm

    out_path.parent.mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=len(todo), unit="q", desc=f"answering ({bench})", disable=not progress)
    try:
        with open(out_path, "a", encoding="utf-8") as out, torch.inference_mode(), quiet_transformers():
            for start in range(0, len(todo), batch_size):
                batch = todo[start:start + batch_size]
                for q, text in zip(batch, _generate(model, processor, batch, max_new_tokens), strict=True):
                    row = {**q.row, "prediction": text.strip() if q.strip else text}
                    out.write(json_line(row))
                    out.flush()
                    summary["answered"] += 1
                os.fsync(out.fileno())
                bar.update(len(batch))
    except KeyboardInterrupt:  # the rows written are kept: the same call resumes
        raise Interrupted(f"interrupted at question {summary['answered'] + 1} of the {len(todo)} to answer; rerun "
                          "the same command to resume") from None
    finally:
        bar.close()
    return summary
