"""Image-to-text inference on the understanding benchmarks' official files (POPE, MME, MMMU,
MMVP, and a generic JSONL), written here in each benchmark's released layout, answered by
tiny random models and scored by :func:`aia.evaluate.score`: the structure, not the accuracy."""

from __future__ import annotations

import csv
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from aia.errors import DataError, InputError
from aia.evaluate import answer, read_predictions, read_questions, score
from aia.testing import tiny_chameleon, tiny_emu3, tiny_janus
from tests.helpers import save_model

pytestmark = pytest.mark.usefixtures("one_thread")

BUILDERS = {"janus": tiny_janus, "emu3": tiny_emu3, "chameleon": tiny_chameleon}
COLORS = ["red", "green", "blue", "white", "black", "yellow"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("und_models")
    return {name: save_model(*build(seed=0, num_layers=1), root / name) for name, build in BUILDERS.items()}


def image(path, color, size=(32, 32)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def write_lines(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.fixture(scope="module")
def bench_files(tmp_path_factory):
    """benchmark -> (data_path, image_dir), each in its official layout."""
    root = tmp_path_factory.mktemp("benches")
    files = {}

    # POPE: question files named by category, COCO images elsewhere; one image is not square
    coco = root / "val2014"
    for i, color in enumerate(COLORS[:3]):
        image(coco / f"COCO_val2014_{i:012d}.jpg", color, (40, 32) if i == 2 else (32, 32))
    for category in ("adversarial", "random"):
        rows = [{"question_id": q + 1, "image": f"COCO_val2014_{q % 3:012d}.jpg",
                 "text": f"Is there a {COLORS[q]} thing in the image?", "label": "yes" if q % 2 else "no"}
                for q in range(3)]
        write_lines(root / "pope" / f"coco_pope_{category}.json", [json.dumps(r) for r in rows])
    files["pope"] = (root / "pope", coco)

    # MME release: images beside their question files, and images/ + questions_answers_YN/
    mme = root / "MME_Benchmark_release_version"
    image(mme / "existence" / "000000006040.jpg", "red")
    write_lines(mme / "existence" / "000000006040.txt",
                ["Is there a train in this image? Please answer yes or no.\tYes",
                 "Is there a bed in this image? Please answer yes or no.\tNo"])
    image(mme / "artwork" / "images" / "10002.jpg", "blue", (40, 32))
    write_lines(mme / "artwork" / "questions_answers_YN" / "10002.txt",
                ["Is this artwork created by Jan Steen? Please answer yes or no.\tYes",
                 "Is this artwork created by Vermeer? Please answer yes or no.\tNo"])
    files["mme"] = (mme, None)

    # MMMU validation parquet: images as {bytes, path} structs, options as a string holding a list
    def encoded(color):
        buffer = io.BytesIO()
        Image.new("RGB", (32, 32), color).save(buffer, format="PNG")
        return {"bytes": buffer.getvalue(), "path": f"{color}.png"}

    rows = [
        {"id": "validation_Art_Theory_1", "question": "<image 1> Which color dominates?",
         "options": "['red', 'green', 'blue']", "answer": "A", "question_type": "multiple-choice",
         "subfield": "Color", "image_1": encoded("red"), "image_2": None},
        {"id": "validation_Math_2", "question": "How many squares are in <image 1>?", "options": "[]",
         "answer": "1", "question_type": "open", "subfield": "Counting", "image_1": encoded("white"),
         "image_2": None},
    ]
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("id", pa.string()), ("question", pa.string()), ("options", pa.string()),
                        ("answer", pa.string()), ("question_type", pa.string()), ("subfield", pa.string()),
                        ("image_1", struct), ("image_2", struct)])
    mmmu = root / "MMMU" / "Art_Theory"
    mmmu.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), mmmu / "validation-00000-of-00001.parquet")
    files["mmmu"] = (root / "MMMU", None)

    # MMVP: Questions.csv (with the released file's "lndex" header) and "MMVP Images/"
    mmvp = root / "MMVP"
    with open(write_lines(mmvp / "Questions.csv", []), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lndex", "Question", "Options", "Correct Answer"])
        for i in range(1, 5):
            writer.writerow([i, "Is the dog facing left or right?", "(a) Left (b) Right", "(a)" if i % 2 else "(b)"])
            image(mmvp / "MMVP Images" / f"{i}.jpg", COLORS[i])
    files["mmvp"] = (mmvp, None)

    # the generic JSONL
    image(root / "custom" / "img" / "a.png", "red")
    write_lines(root / "custom" / "questions.jsonl",
                [json.dumps({"image": "img/a.png", "question": "<image>\nWhat color is it?", "answer": "red"}),
                 json.dumps({"id": "q2", "image": "img/a.png", "question": "Is it round?", "answer": "no"})])
    files["custom"] = (root / "custom" / "questions.jsonl", None)
    return files


# ----------------------------------------------------------------- reading the official files
def questions_of(bench, bench_files):
    data, images = bench_files[bench]
    return read_questions(bench, data, image_dir=images)


def test_read_questions(bench_files):
    pope = questions_of("pope", bench_files)
    assert [q.id for q in pope] == [f"{c}_{i}" for c in ("adversarial", "random") for i in (1, 2, 3)]
    assert pope[0].prompt == "Is there a red thing in the image?\nAnswer the question using a single word or phrase."
    assert pope[0].row == {"id": "adversarial_1", "bench": "pope", "question": pope[0].prompt, "answer": "no",
                           "category": "adversarial", "image": "COCO_val2014_000000000000.jpg"}

    mme = questions_of("mme", bench_files)
    assert [(q.row["category"], q.row["image"], q.row["answer"]) for q in mme] == [
        ("artwork", "10002.jpg", "Yes"), ("artwork", "10002.jpg", "No"),
        ("existence", "000000006040.jpg", "Yes"), ("existence", "000000006040.jpg", "No")]
    assert mme[2].prompt == ("Is there a train in this image? Please answer yes or no. "
                             "Answer the question using a single word or phrase.")
    assert not mme[0].strip

    mmmu = questions_of("mmmu", bench_files)
    assert mmmu[0].prompt == ("<image 1> Which color dominates?\nA. red\nB. green\nC. blue\n"
                              "Answer with the option's letter from the given choices directly.")
    assert mmmu[0].row["options"] == ["red", "green", "blue"] and mmmu[0].row["subject"] == "Art_Theory"
    assert mmmu[1].prompt.endswith("<image 1>?\nAnswer the question using a single word or phrase.")
    assert mmmu[1].load_image().size == (32, 32)

    mmvp = questions_of("mmvp", bench_files)
    assert [(q.id, q.row["pair"], q.row["answer"]) for q in mmvp] == [
        ("1", "0", "(a)"), ("2", "0", "(b)"), ("3", "1", "(a)"), ("4", "1", "(b)")]
    assert mmvp[0].prompt == ("Is the dog facing left or right?\nA. Left\nB. Right\n"
                              "Answer with the option's letter from the given choices directly.")

    custom = questions_of("custom", bench_files)
    assert [(q.id, q.prompt) for q in custom] == [("0", "What color is it?"), ("q2", "Is it round?")]


def test_mme_your_results_layout(bench_files, tmp_path):
    release = bench_files["mme"][0]
    results = write_lines(tmp_path / "Your_Results" / "existence.txt",
                          ["000000006040.jpg\tIs there a train in this image? Please answer yes or no.\tYes",
                           "000000006040.jpg\tIs there a bed in this image? Please answer yes or no.\tNo"]).parent
    with pytest.raises(InputError, match="'image_dir'"):
        read_questions("mme", results)
    questions = read_questions("mme", results, image_dir=release)
    assert [q.id for q in questions] == ["existence/000000006040.jpg/0", "existence/000000006040.jpg/1"]
    assert questions[0].image == release / "existence" / "000000006040.jpg"


def test_bad_files_name_file_line_and_field(bench_files, tmp_path):
    pope = write_lines(tmp_path / "coco_pope_popular.json",
                       ['{"question_id": 1, "image": "missing.jpg", "text": "Is there a cat?", "label": "yes"}'])
    with pytest.raises(DataError, match=r"coco_pope_popular\.json: line 1: 'image': image not found"):
        read_questions("pope", pope, image_dir=tmp_path)
    bad_label = write_lines(tmp_path / "p2" / "coco_pope_random.json",
                            ['{"question_id": 1, "image": "x.jpg", "text": "Is there a cat?", "label": "maybe"}'])
    with pytest.raises(DataError, match=r"line 1: 'label'"):
        read_questions("pope", bad_label)
    mme = tmp_path / "mme"
    image(mme / "count" / "1.jpg", "red")
    write_lines(mme / "count" / "1.txt", ["How many? Please answer yes or no.\tYes", "no tab here"])
    with pytest.raises(DataError, match=r"1\.txt: line 2: expected"):
        read_questions("mme", mme)
    with pytest.raises(InputError, match="unknown benchmark"):
        read_questions("vqav2", tmp_path)
    with pytest.raises(DataError, match="no such file"):
        read_questions("mmvp", tmp_path / "nowhere")


# ----------------------------------------------------------------- answering and scoring
@pytest.mark.parametrize("bench", ["pope", "mme", "mmmu", "mmvp", "custom"])
def test_answer_then_score(model_dirs, bench_files, tmp_path, bench):
    data, images = bench_files[bench]
    out = tmp_path / "predictions.jsonl"
    summary = answer(model_dirs["janus"], bench, data, out, image_dir=images, batch_size=2, max_new_tokens=3,
                     progress=False)
    rows = read_predictions(out)
    assert summary["answered"] == len(rows) == len(read_questions(bench, data, image_dir=images))
    assert all(isinstance(r["prediction"], str) and r["bench"] == bench for r in rows)
    if bench == "custom":  # not a scored benchmark: the rows carry what a judge needs
        assert set(rows[0]) == {"id", "bench", "question", "answer", "image", "prediction"}
        return
    result = score(bench, rows)
    assert result["n"] == len(rows) and result["headline"] in result["metrics"]
    assert 0 <= result["metrics"][result["headline"]] <= (2000 if bench == "mme" else 1)


@pytest.mark.parametrize("family", ["janus", "emu3", "chameleon"])
def test_every_family_batched_like_unbatched(model_dirs, bench_files, tmp_path, family):
    data, images = bench_files["pope"]
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    answer(model_dirs[family], "pope", data, one, image_dir=images, batch_size=1, max_new_tokens=3, progress=False)
    answer(model_dirs[family], "pope", data, two, image_dir=images, batch_size=4, max_new_tokens=3, progress=False)
    assert read_predictions(one) == read_predictions(two)  # left padding; Emu3's mixed image sizes split
    assert score("pope", read_predictions(two))["n"] == 6


def test_resume_skips_answered_ids_and_mends_a_cut_line(model_dirs, bench_files, tmp_path):
    data, images = bench_files["pope"]
    out = tmp_path / "pope.jsonl"
    first = answer(model_dirs["janus"], "pope", data, out, image_dir=images, limit=2, max_new_tokens=2,
                   progress=False)
    assert (first["answered"], first["skipped"]) == (2, 0)
    rest = answer(model_dirs["janus"], "pope", data, out, image_dir=images, max_new_tokens=2, progress=False)
    assert (rest["answered"], rest["skipped"]) == (4, 2)
    ids = [r["id"] for r in read_predictions(out)]
    assert len(ids) == len(set(ids)) == 6

    # an interruption mid-line: the cut line is dropped and its question answered again
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:15])
    again = answer(model_dirs["janus"], "pope", data, out, image_dir=images, max_new_tokens=2, progress=False)
    assert (again["answered"], again["skipped"]) == (1, 5)
    assert read_predictions(out) == [json.loads(line) for line in lines]
    done = answer(model_dirs["janus"], "pope", data, out, image_dir=images, max_new_tokens=2, progress=False)
    assert done["answered"] == 0


def test_answer_options_are_checked(model_dirs, bench_files, tmp_path):
    data, images = bench_files["pope"]
    with pytest.raises(InputError, match="'batch_size'"):
        answer(model_dirs["janus"], "pope", data, tmp_path / "o.jsonl", image_dir=images, batch_size=0)
    with pytest.raises(InputError, match="'bench'"):
        answer(model_dirs["janus"], "gqa", data, tmp_path / "o.jsonl")


# Janus-Pro's chat template (the converted checkpoints' ``chat_template``)
JANUS_TEMPLATE = (
    "{%set seps=['\\n\\n','<｜end▁of▁sentence｜>']%}{%for message in messages%}{%if message['role']!='system'%}"
    "{%if message['role']=='user'%}<|User|>: {%else%}<|Assistant|>: {%endif%}{%endif%}"
    "{%for content in message['content']%}{%if content['type']=='image'%}{%if not loop.first%}{{'\\n'}}{%endif%}"
    "<image_placeholder>{%if not loop.last%}{{'\\n'}}{%endif%}{%elif content['type']=='text'%}"
    "{%set text=content['text']%}{%if loop.first%}{%set text=text.lstrip()%}{%endif%}"
    "{%if loop.last%}{%set text=text.rstrip()%}{%endif%}"
    "{%if not loop.first and message['content'][loop.index0-1]['type']=='text'%}{{' '+text}}{%else%}{{text}}{%endif%}"
    "{%endif%}{%endfor%}{%if not loop.last or add_generation_prompt%}{%if message['role']=='user'%}{{seps[0]}}"
    "{%else%}{{seps[1]}}{%endif%}{%endif%}{%endfor%}{%if add_generation_prompt%}<|Assistant|>:{%endif%}"
)


def test_generation_prompt_with_and_without_the_chat_template():
    """``aia generate``'s Janus prompt (the adapter's text-only prompt): Janus-Pro's own chat template
    and the hand-written format give the same text."""
    from aia.adapters import get_adapter

    model, processor = tiny_janus(seed=0, num_layers=1)
    adapter = get_adapter(model, processor)
    processor.chat_template = None
    plain_gen = adapter.text_prompt("a red square")[0]
    processor.chat_template = JANUS_TEMPLATE
    assert adapter.text_prompt("a red square")[0] == plain_gen == (
        f"{processor.tokenizer.bos_token}<|User|>: a red square\n\n<|Assistant|>:")
