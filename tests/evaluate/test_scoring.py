"""Official benchmark scoring and the baseline-vs-AIA comparison, on hand-made predictions
whose scores are worked out by hand below."""

from __future__ import annotations

import json
import math
import random

import pytest

from aia.errors import DataError
from aia.evaluate import (
    BENCHMARKS,
    compare,
    compare_files,
    format_table,
    mme,
    mmmu,
    mmvp,
    pope,
    read_predictions,
    score,
    score_file,
)
from aia.jsonl import json_line


def approx(x):
    return pytest.approx(x, abs=1e-12)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------- POPE
def pope_row(i, category, answer, prediction):
    return {"id": f"{category}-{i}", "bench": "pope", "question": "Is there a dog in the image?",
            "answer": answer, "prediction": prediction, "category": category}


POPE_ROWS = [
    # random: "Yes, there is a dog." -> first sentence "Yes, there is a dog" -> yes; label yes -> TP
    pope_row(1, "random", "yes", "Yes, there is a dog."),
    # "No, there is not." -> "No there is not" -> holds "No" -> no; label no -> TN
    pope_row(2, "random", "no", "No, there is not."),
    # no dot; commas removed: "Yes there is a dog not a cat" -> holds "not" -> no; label yes -> FN
    pope_row(3, "random", "yes", "Yes, there is a dog, not a cat"),
    # empty -> no word "no" -> yes; label no -> FP
    pope_row(4, "random", "no", ""),
    # "Not at all" -> "Not" is not one of No/not/no (case-sensitive) -> yes; label no -> FP
    pope_row(5, "random", "no", "Not at all."),
    # first sentence only: "There is a cat" -> yes; label yes -> TP
    pope_row(6, "random", "yes", "There is a cat. No doubt"),
    # popular: TP, TN, TN, FN ("There is no dog" holds "no")
    pope_row(1, "popular", "yes", "yes"),
    pope_row(2, "popular", "no", "no"),
    pope_row(3, "popular", "no", "No"),
    pope_row(4, "popular", "yes", "There is no dog."),
    # adversarial: two FP, no true yes at all
    pope_row(1, "adversarial", "no", "yes"),
    pope_row(2, "adversarial", "no", "Yes"),
]


def test_pope_answer_normalisation():
    assert pope.normalize_answer("No, there is not.") == "no"
    assert pope.normalize_answer("Yes, there is a dog, not a cat") == "no"
    assert pope.normalize_answer("Yes, there is a dog. It is not a cat.") == "yes"  # only the first sentence
    assert pope.normalize_answer("") == "yes"
    assert pope.normalize_answer("  No\n") == "no"  # the decoded text is stripped first
    assert pope.normalize_answer("NO") == "yes"  # case-sensitive words, as the official rule
    assert pope.normalize_answer("nothing") == "yes"  # whole words only


def test_pope_scores_by_hand():
    r = score("pope", POPE_ROWS)
    m = r["metrics"]
    assert r["bench"] == "pope" and r["n"] == 12 and r["headline"] == "mean/f1"
    # random: TP=2 TN=1 FP=2 FN=1, n=6
    assert r["details"]["random"] == {"n": 6, "TP": 2, "FP": 2, "TN": 1, "FN": 1}
    assert m["random/acc"] == approx(3 / 6)  # (TP+TN)/n
    assert m["random/precision"] == approx(2 / 4)  # TP/(TP+FP)
    assert m["random/recall"] == approx(2 / 3)  # TP/(TP+FN)
    assert m["random/f1"] == approx(4 / 7)  # 2*(1/2)*(2/3) / (1/2+2/3) = (2/3)/(7/6)
    assert m["random/yes_ratio"] == approx(4 / 6)  # (TP+FP)/n
    # popular: TP=1 TN=2 FP=0 FN=1
    assert m["popular/acc"] == approx(3 / 4)
    assert m["popular/precision"] == approx(1.0)
    assert m["popular/recall"] == approx(1 / 2)
    assert m["popular/f1"] == approx(2 / 3)  # 2*1*(1/2) / (3/2)
    assert m["popular/yes_ratio"] == approx(1 / 4)
    # adversarial: TP=0 FP=2 -> precision 0/2 = 0; TP+FN = 0 -> recall 0 (no division), F1 0
    assert (m["adversarial/acc"], m["adversarial/precision"], m["adversarial/recall"], m["adversarial/f1"]) == (0, 0, 0, 0)
    assert m["adversarial/yes_ratio"] == approx(1.0)
    # means over the 3 categories
    assert m["mean/acc"] == approx((1 / 2 + 3 / 4 + 0) / 3)  # 5/12
    assert m["mean/precision"] == approx((1 / 2 + 1 + 0) / 3)  # 1/2
    assert m["mean/recall"] == approx((2 / 3 + 1 / 2 + 0) / 3)  # 7/18
    assert m["mean/f1"] == approx((4 / 7 + 2 / 3 + 0) / 3)  # 26/63
    assert m["mean/yes_ratio"] == approx((2 / 3 + 1 / 4 + 1) / 3)  # 23/36
    assert r["notes"] == []


def test_pope_rejects_bad_answer_and_notes_missing_category():
    with pytest.raises(DataError, match=r"record 0: 'answer': a POPE answer must be 'yes' or 'no'"):
        score("pope", [pope_row(1, "random", "maybe", "yes")])
    r = score("pope", [pope_row(1, "random", "yes", "yes"), pope_row(2, "random", "no", "no")])
    assert "no adversarial, popular questions" in r["notes"][0]


# ----------------------------------------------------------------- MME
def mme_row(category, image, q, answer, prediction):
    return {"id": f"{category}/{image}/{q}", "bench": "mme", "question": "?", "answer": answer,
            "prediction": prediction, "category": category, "image": image}


MME_ROWS = [
    # existence, image 1: "Yes." -> not exactly yes/no; its first 4 characters "yes." hold "yes" -> yes (right);
    # "no" -> no (right): both right
    mme_row("existence", "1.jpg", 1, "Yes", "Yes."),
    mme_row("existence", "1.jpg", 2, "No", "no"),
    # image 2: "I think so" -> first 4 characters "i th": neither -> other (wrong); "No, it is not." -> no (right)
    mme_row("existence", "2.jpg", 1, "Yes", "I think so"),
    mme_row("existence", "2.jpg", 2, "No", "No, it is not."),
    # OCR (written "ocr"): "Not really" -> "not " holds "no" -> no (wrong); "nope" -> no (right)
    mme_row("ocr", "a.jpg", 1, "Yes", "Not really"),
    mme_row("ocr", "a.jpg", 2, "No", "nope"),
    # commonsense_reasoning: both right
    mme_row("commonsense_reasoning", "c.jpg", 1, "Yes", "yes"),
    mme_row("commonsense_reasoning", "c.jpg", 2, "No", "No"),
]


def test_mme_prediction_parsing():
    assert mme.parse_pred_ans("Yes.") == "yes"
    assert mme.parse_pred_ans("NO") == "no"
    assert mme.parse_pred_ans("Not sure") == "no"  # "not " holds "no"
    assert mme.parse_pred_ans("I think yes") == "other"  # only the first 4 characters count
    assert mme.parse_pred_ans("") == "other"
    assert mme.parse_pred_ans("yes, no") == "yes"  # yes is looked for first


def test_mme_scores_by_hand():
    r = score("mme", MME_ROWS)
    m = r["metrics"]
    # existence: 3 of 4 questions right; image 1 both right, image 2 one right -> acc+ 1/2
    assert m["existence/acc"] == approx(3 / 4)
    assert m["existence/acc_plus"] == approx(1 / 2)
    assert m["existence/score"] == approx(75 + 50)  # 100*acc + 100*acc+
    assert r["details"]["existence"] == {"n": 4, "images": 2, "other_num": 1, "TP": 1, "FN": 0, "TN": 2, "FP": 0,
                                         "precision": 1.0, "recall": 1.0}  # over the 3 non-other answers
    # OCR: 1 of 2 right, the image not both right -> 50 + 0
    assert (m["OCR/acc"], m["OCR/acc_plus"], m["OCR/score"]) == (0.5, 0.0, approx(50))
    assert m["commonsense_reasoning/score"] == approx(200)
    assert m["perception/score"] == approx(125 + 50)  # existence + OCR
    assert m["cognition/score"] == approx(200)
    assert m["total/score"] == approx(375)
    assert any("perception total covers 2 of 10 subtasks" in n for n in r["notes"])


def test_mme_needs_two_questions_per_image_and_yes_no_answers():
    with pytest.raises(DataError, match=r"record 0: 'image': MME image 'existence/1.jpg' has 1 question"):
        score("mme", MME_ROWS[:1])
    with pytest.raises(DataError, match=r"record 1: 'answer': an MME answer must be 'yes' or 'no'"):
        score("mme", [MME_ROWS[0], {**MME_ROWS[1], "answer": "maybe"}])


# ----------------------------------------------------------------- MMMU
OPTIONS = ["cat", "dog", "bird", "fish"]


def mmmu_row(id_, answer, prediction, question_type="multiple-choice", **extra):
    row = {"id": id_, "bench": "mmmu", "question": "?", "answer": answer, "prediction": prediction,
           "question_type": question_type, **extra}
    if question_type == "multiple-choice":
        row.setdefault("options", OPTIONS)
    return row


MMMU_ROWS = [
    # "(B)" -> bracketed letter B: right
    mmmu_row("validation_Art_1", "B", "(B)"),
    # 8 words (> 5), no letter alone or in brackets -> option text: "bird" -> C: right
    mmmu_row("validation_Art_2", "C", "I think the answer is the bird here"),
    # open: "3.0" -> 3.0, the answer "3" -> 3.0: right
    mmmu_row("validation_Art_Theory_1", "3", "3.0", "open"),
    # open: tail after "is " -> "3.50" -> 3.5: right
    mmmu_row("validation_Math_1", "3.5", "The result is 3.50", "open"),
    # open: "a cat" does not contain "dog": wrong
    mmmu_row("validation_Math_2", "dog", "a cat", "open"),
    # " B " alone -> B, the answer A: wrong
    mmmu_row("validation_Math_3", "A", "B"),
]


def test_mmmu_parsing():
    letters, index2ans = ["A", "B", "C", "D"], dict(zip("ABCD", OPTIONS, strict=True))
    rng = random.Random(0)
    assert mmmu.parse_multi_choice_response("(B)", letters, index2ans, rng) == ("B", False)
    assert mmmu.parse_multi_choice_response("B.", letters, index2ans, rng) == ("B", False)
    # two letters: the one written last wins
    assert mmmu.parse_multi_choice_response("A or rather D", letters, index2ans, rng) == ("D", False)
    # option text counts only in a response of more than 5 words
    assert mmmu.parse_multi_choice_response("It is a dog in the picture", letters, index2ans, rng) == ("B", False)
    assert mmmu.parse_multi_choice_response("dog", letters, index2ans, rng)[1] is True  # guessed
    assert mmmu.parse_open_response("3.0") == [3.0]
    assert mmmu.eval_open("3", [3.0]) and mmmu.eval_open(["24/7", "3.429"], mmmu.parse_open_response("3.429"))
    assert mmmu.eval_open("1,000", mmmu.parse_open_response("about 1000")) is True
    assert mmmu.eval_open("dog", mmmu.parse_open_response("a cat")) is False
    # the released AIA pipeline's reading: "(B)" has no letter first and no option text -> the first letter
    assert mmmu.aia_post_process("(B)", index2ans) == "A"
    assert mmmu.aia_post_process("", index2ans) == "B"
    assert mmmu.aia_post_process("B. dog", index2ans) == "B"


def test_mmmu_scores_by_hand():
    r = score("mmmu", MMMU_ROWS)
    m = r["metrics"]
    assert m["Art/acc"] == approx(2 / 2)
    assert m["Art_Theory/acc"] == approx(1 / 1)
    assert m["Math/acc"] == approx(1 / 3)
    assert m["Art and Design/acc"] == approx(3 / 3)  # Art + Art_Theory, instance level
    assert m["Science/acc"] == approx(1 / 3)  # Math
    assert m["overall/acc"] == approx(4 / 6)
    assert r["details"]["overall"] == {"n": 6, "correct": 4, "random_fallbacks": 0}
    assert r["options"] == {"mmmu_parser": "mmmu", "seed": 42}
    # with the AIA pipeline's reading "(B)" reads as A (wrong), the rest is unchanged: 3/6
    assert score("mmmu", MMMU_ROWS, mmmu_parser="aia")["metrics"]["overall/acc"] == approx(3 / 6)


def test_mmmu_random_fallback_is_seeded_per_question():
    row = mmmu_row("validation_Art_3", "A", "dog")  # one word: nothing parses
    expected = random.Random("42:validation_Art_3").choice(["A", "B", "C", "D"])
    alone = score("mmmu", [row])
    assert alone["details"]["Art"]["random_fallbacks"] == 1
    assert alone["metrics"]["Art/acc"] == float(expected == "A")
    # the same pick whatever else is scored and in whatever order
    assert score("mmmu", [*MMMU_ROWS, row])["metrics"]["Art/acc"] == approx((2 + (expected == "A")) / 3)
    assert score("mmmu", [row, *MMMU_ROWS])["metrics"]["Art/acc"] == approx((2 + (expected == "A")) / 3)


def test_mmmu_subject_from_field_or_id():
    rows = [mmmu_row("q1", "A", "A", subject="art theory"), mmmu_row("validation_Basic_Medical_Science_9", "A", "A")]
    m = score("mmmu", rows)["metrics"]
    assert m["Art_Theory/acc"] == 1.0 and m["Basic_Medical_Science/acc"] == 1.0 and m["overall/acc"] == 1.0
    with pytest.raises(DataError, match=r"record 0: 'subject': no subject"):
        score("mmmu", [mmmu_row("q1", "A", "A")])
    with pytest.raises(DataError, match=r"'options': a multiple-choice MMMU row needs 'options'"):
        score("mmmu", [mmmu_row("validation_Art_1", "A", "A", options=[])])


# ----------------------------------------------------------------- MMVP
def mmvp_row(pair, q, answer, prediction, options=("Open", "Closed")):
    return {"id": f"{pair}-{q}", "bench": "mmvp", "question": "Is the door open or closed?", "answer": answer,
            "prediction": prediction, "pair": pair, "options": list(options)}


MMVP_ROWS = [
    # pair 1: "A" (one character) -> A = "(a)": right; "The door is Closed." -> option text "Closed" -> B: right
    mmvp_row(1, 1, "(a)", "A"),
    mmvp_row(1, 2, "(b)", "The door is Closed."),
    # pair 2: "(b)" -> no letter first, no option text -> stays "(b)": wrong; "A. Open" -> A: right -> one right
    mmvp_row(2, 1, "B", "(b)"),
    mmvp_row(2, 2, "A", "A. Open"),
    # pair 3: "a" is taken as is and is not "A": wrong; empty: wrong
    mmvp_row(3, 1, "(a)", "a"),
    mmvp_row(3, 2, "(b)", ""),
]


def test_mmvp_scores_by_hand():
    r = score("mmvp", MMVP_ROWS)
    assert r["metrics"]["pair/acc"] == approx(1 / 3)  # only pair 1 has both right
    assert r["metrics"]["question/acc"] == approx(3 / 6)
    assert r["details"] == {"pair": {"n": 3, "correct": 1}, "question": {"n": 6, "correct": 3}}
    assert mmvp.post_process("Both", {"A": "x", "B": "y"}) == "B"  # first character an option letter
    assert mmvp.options_of({"options": "(a) Open (b) Closed"}) == {"A": "Open", "B": "Closed"}
    with pytest.raises(DataError, match=r"'pair': MMVP pair '2' has 1 question"):
        score("mmvp", MMVP_ROWS[:3])


# ----------------------------------------------------------------- files and errors
def test_score_file_reads_and_names_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "preds.jsonl", POPE_ROWS)
    r = score_file(path)
    assert r["metrics"] == score("pope", POPE_ROWS)["metrics"] and r["path"] == str(path)
    assert read_predictions(path) == POPE_ROWS

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(POPE_ROWS[0]) + "\n\n" + '{"id": "x", "answer": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 3: invalid JSON"):
        score_file(bad)
    missing = {k: v for k, v in POPE_ROWS[1].items() if k != "prediction"}
    write_jsonl(bad, [POPE_ROWS[0], missing])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: 'prediction': missing field"):
        score_file(bad)
    write_jsonl(bad, [POPE_ROWS[0], POPE_ROWS[0]])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: 'id': duplicate id 'random-1' \(first at line 1\)"):
        score_file(bad)
    write_jsonl(bad, [POPE_ROWS[0], {**POPE_ROWS[1], "prediction": None}])
    with pytest.raises(DataError, match=r"line 2: 'prediction': 'prediction' must be a string"):
        score_file(bad)
    with pytest.raises(DataError, match=r"nope\.jsonl: no such predictions file"):
        score_file(tmp_path / "nope.jsonl")


def test_answers_holding_line_separators_score(tmp_path):
    """A model answer with U+2028 / U+2029 / U+0085 (which str.splitlines() breaks at) keeps its
    row whole: written by `aia answer`'s writer (escaped) or by another tool (raw)."""
    rows = [{**r, "prediction": r["prediction"] + "\u2028\u2029\u0085"[i % 3]} for i, r in enumerate(POPE_ROWS)]
    rows[0]["question"] = "Is there\u2028a dog?"
    want = score("pope", rows)
    assert want["metrics"] == score("pope", POPE_ROWS)["metrics"]  # the characters are not words
    ours = tmp_path / "ours.jsonl"
    with ours.open("a", encoding="utf-8") as out:  # as aia.evaluate.answer appends its rows
        for row in rows:
            out.write(json_line(row))
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    for path in (ours, raw):
        assert read_predictions(path) == rows
        assert score_file(path)["metrics"] == want["metrics"]
        assert compare_files(path, path)["n"] == len(rows)


def test_score_file_with_several_benchmarks(tmp_path):
    path = write_jsonl(tmp_path / "all.jsonl", POPE_ROWS + MMVP_ROWS)
    with pytest.raises(DataError, match=r"all\.jsonl: holds several benchmarks \(mmvp, pope\)"):
        score_file(path)
    assert score_file(path, "mmvp")["metrics"]["pair/acc"] == approx(1 / 3)
    assert score_file(path, "POPE")["n"] == 12
    with pytest.raises(DataError, match="unknown benchmark 'vqa'"):
        score_file(path, "vqa")
    with pytest.raises(DataError, match=r"record 12: 'bench': a 'mmvp' row among pope predictions"):
        score("pope", POPE_ROWS + MMVP_ROWS)


def test_format_table():
    text = format_table(score("mme", MME_ROWS))
    assert text.splitlines()[0] == "MME: 8 questions; headline perception/score = 175.00"
    assert "existence/acc_plus" in text and "0.5000" in text and "note: MME: perception total" in text
    both = format_table([score("pope", POPE_ROWS), score("mmvp", MMVP_ROWS)])
    assert "POPE: 12 questions; headline mean/f1 = 0.4127" in both  # 26/63
    assert "MMVP: 6 questions; headline pair/acc = 0.3333" in both


# ----------------------------------------------------------------- compare
def test_compare_paired_se_by_hand():
    # 4 Art questions; baseline right on 1 and 3, AIA on all four
    base = [mmmu_row(f"validation_Art_{i}", "A", "A" if i % 2 else "B") for i in range(1, 5)]
    aia = [mmmu_row(f"validation_Art_{i}", "A", "A") for i in range(1, 5)]
    c = compare(base, aia, "mmmu")
    m = c["metrics"]["overall/acc"]
    # d = aia - base = [0, 1, 0, 1]; mean 1/2; sample variance ((1/2)^2 * 4) / 3 = 1/3; SE = sqrt((1/3) / 4)
    assert (m["base"], m["aia"], m["diff"]) == (0.5, 1.0, 0.5)
    assert m["se"] == approx(math.sqrt(1 / 12))  # 0.2887
    assert m["method"] == "paired" and m["verdict"] == "within noise"  # 0.5 < 2 * 0.2887
    assert c["metrics"]["Art/acc"] == m and c["n"] == 4


def test_compare_mmvp_pairs_by_hand():
    base = [mmvp_row(p, q, "A", "A" if q == 1 and p != 2 else "B") for p in (1, 2, 3) for q in (1, 2)]
    aia = [mmvp_row(p, q, "A", "A") for p in (1, 2, 3) for q in (1, 2)]
    c = compare(base, aia, "mmvp")["metrics"]
    # pair accuracy: base [0, 0, 0], AIA [1, 1, 1]: d = [1, 1, 1], SE 0 -> beyond noise
    assert (c["pair/acc"]["diff"], c["pair/acc"]["se"], c["pair/acc"]["verdict"]) == (1.0, 0.0, "beyond noise")
    # question accuracy, clustered by pair: base per pair [1/2, 0, 1/2], AIA [1, 1, 1]: d = [1/2, 1, 1/2]
    # mean 2/3; sample variance ((1/6)^2 + (1/3)^2 + (1/6)^2) / 2 = 1/12; SE = sqrt((1/12) / 3) = 1/6
    q = c["question/acc"]
    assert q["diff"] == approx(2 / 3) and q["se"] == approx(1 / 6) and q["verdict"] == "beyond noise"


def test_compare_mme_totals_by_hand():
    def rows(existence, color):  # per image, per question: right or not
        out = []
        for cat, pattern in (("existence", existence), ("color", color)):
            for img, rights in enumerate(pattern):
                for q, right in enumerate(rights):
                    out.append(mme_row(cat, str(img), q, "Yes", "yes" if right else "no"))
        return out

    base = rows(existence=[(1, 1), (1, 0)], color=[(1, 1), (1, 1)])
    aia = rows(existence=[(1, 1), (1, 1)], color=[(1, 0), (1, 1)])
    c = compare(base, aia, "mme")["metrics"]
    # per image 100*mean + 100*both: existence base [200, 50], AIA [200, 200]: d = [0, 150],
    # diff 75 (score 125 -> 200), sample variance (75^2 + 75^2) / 1, SE = sqrt(11250 / 2) = 75
    e = c["existence/score"]
    assert (e["base"], e["aia"]) == (approx(125), approx(200))
    assert e["diff"] == approx(75) and e["se"] == approx(75) and e["verdict"] == "within noise"
    # color: d = [-150, 0]: diff -75, SE 75. Perception = existence + color: diff 0, SE = sqrt(75^2 + 75^2)
    assert c["color/score"]["diff"] == approx(-75) and c["color/score"]["se"] == approx(75)
    assert c["perception/score"]["diff"] == approx(0) and c["perception/score"]["se"] == approx(75 * math.sqrt(2))
    # acc per image mean: existence d = [0, 1/2]: mean 1/4, variance (1/4)^2 * 2 = 1/8, SE = sqrt(1/16) = 1/4
    assert c["existence/acc"]["diff"] == approx(1 / 4) and c["existence/acc"]["se"] == approx(1 / 4)


def test_compare_pope_bootstrap():
    base = [pope_row(i, "random", "yes" if i % 2 else "no", "yes" if i % 3 else "no") for i in range(60)]
    aia = [pope_row(i, "random", "yes" if i % 2 else "no", "yes" if i % 2 else ("no" if i % 5 else "yes"))
           for i in range(60)]
    c = compare(base, aia, "pope", n_boot=2000, seed=0)
    assert c["bootstrap"] == {"n_boot": 2000, "seed": 0}
    for name, m in c["metrics"].items():
        method = "bootstrap" if name.split("/")[1] in ("precision", "recall", "f1") else "paired"
        assert m["method"] == method and m["se"] > 0
    assert c["metrics"]["random/f1"]["diff"] == approx(score("pope", aia)["metrics"]["random/f1"]
                                                       - score("pope", base)["metrics"]["random/f1"])
    # the same seed gives the same SE
    assert compare(base, aia, "pope", n_boot=2000, seed=0)["metrics"]["random/f1"]["se"] == c["metrics"]["random/f1"]["se"]
    # where every label is yes, recall is accuracy, so its bootstrap SE must be close to the analytic paired SE
    base_yes = [{**r, "answer": "yes"} for r in base]
    aia_yes = [{**r, "answer": "yes"} for r in aia]
    cy = compare(base_yes, aia_yes, "pope", n_boot=4000, seed=1)["metrics"]
    assert cy["random/recall"]["diff"] == approx(cy["random/acc"]["diff"])
    assert cy["random/recall"]["se"] == pytest.approx(cy["random/acc"]["se"], rel=0.1)


def test_compare_every_metric_matches_score():
    for bench, rows in (("pope", POPE_ROWS), ("mme", MME_ROWS), ("mmmu", MMMU_ROWS), ("mmvp", MMVP_ROWS)):
        c = compare(rows, rows, bench, n_boot=50)
        assert {k: m["base"] for k, m in c["metrics"].items()} == score(bench, rows)["metrics"]
        assert all(m["diff"] == 0 and m["verdict"] == "within noise" for m in c["metrics"].values())
    assert sorted(BENCHMARKS) == ["mme", "mmmu", "mmvp", "pope"]


def test_compare_needs_the_same_questions(tmp_path):
    with pytest.raises(DataError, match=r"1 baseline question\(s\) have no AIA prediction \(first: 'adversarial-2'\)"):
        compare(POPE_ROWS, POPE_ROWS[:-1], "pope")
    changed = [*POPE_ROWS[:-1], {**POPE_ROWS[-1], "answer": "yes"}]
    with pytest.raises(DataError, match=r"record 11: 'answer': question 'adversarial-2': 'yes' here, 'no' in the baseline"):
        compare(POPE_ROWS, changed, "pope")
    with pytest.raises(DataError, match=r"^baseline predictions: record 0: 'category': missing field"):
        compare([{k: v for k, v in POPE_ROWS[0].items() if k != "category"}], POPE_ROWS[:1], "pope")
    base = write_jsonl(tmp_path / "base.jsonl", POPE_ROWS)
    aia = write_jsonl(tmp_path / "aia.jsonl", [*POPE_ROWS, pope_row(9, "random", "yes", "yes")])
    with pytest.raises(DataError, match=r"aia\.jsonl: line 13: 'id': question 'random-9' has no baseline prediction"):
        compare_files(base, aia)


def test_compare_files_and_table(tmp_path):
    aia_rows = [{**r, "prediction": r["answer"]} for r in POPE_ROWS]  # all right
    c = compare_files(write_jsonl(tmp_path / "b.jsonl", POPE_ROWS), write_jsonl(tmp_path / "a.jsonl", aia_rows))
    assert c["metrics"]["mean/acc"]["aia"] == 1.0 and c["paths"]["aia"].endswith("a.jsonl")
    # adversarial has no true yes, so its F1 is 0 even when all right: mean F1 (1 + 1 + 0) / 3
    assert c["metrics"]["mean/f1"]["aia"] == approx(2 / 3)
    text = format_table(c)
    assert text.splitlines()[0] == "POPE: AIA minus baseline on 12 paired questions; headline mean/f1"
    assert "bootstrap: 1000 paired resamples within each category, seed 0" in text
    for line in text.splitlines():
        if line.startswith("mean/acc "):
            # base 5/12 = 0.4167 -> AIA 1: +0.5833
            assert "0.4167" in line and "+0.5833" in line and "paired" in line
