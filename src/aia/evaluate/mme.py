"""MME (14 yes/no subtasks, two questions per image): the official scoring rules.

Official source: the released AIA repository, ``evaluation/vlm/eval/mme/calculation.py``
(from InternVL and the MME authors' ``calculation.py``), which scores the files
``evaluation/vlm/eval/mme/eval.py`` writes (the raw decoded response, not stripped; its
``post_processing`` helper is defined but never called). Reproduced here:

* **the prediction** (``parse_pred_ans``), lower-cased: exactly ``yes`` or ``no`` is taken
  as given; otherwise only its first **4 characters** are looked at: ``yes`` among them
  gives yes, else ``no`` among them gives no, else it is **other** (always wrong). So
  ``"Yes."`` -> yes, ``"No, ..."`` -> no, ``"Not sure"`` -> no (``"not "`` holds ``no``),
  ``"None"`` -> no, ``"I think yes"`` -> other, ``"  yes"`` (two leading spaces) -> other.
  (The official file line also carries a trailing newline, which changes none of this.)
* **per subtask**: ``acc`` = right answers / questions (other counts as wrong);
  ``acc+`` = images whose two questions are both right / images;
  ``score = 100*acc + 100*acc+`` (at most 200);
* **totals**: ``perception`` = the sum of the scores of the 10 perception subtasks
  (existence, count, position, color, posters, celebrity, scene, landmark, artwork, OCR,
  at most 2000), ``cognition`` = that of the 4 cognition subtasks (commonsense_reasoning,
  numerical_calculation, text_translation, code_reasoning, at most 800); ``total`` is their
  sum (not printed by the official script, often reported as "MME").

The official script pairs consecutive lines of a subtask file as one image (and asserts
there are two); here the two questions of an image are the rows sharing ``category`` and
``image``, and an image with another number of questions is an error. Subtask names are
matched without regard to case (``ocr`` is ``OCR``); an unknown subtask is scored but left
out of the totals. Per subtask the official ``compute_metric`` counts (TP, FN, TN, FP,
precision and recall over the answers that are not other, and the number of other
answers) are reported as details; they do not enter the score.
"""

from __future__ import annotations

from collections import defaultdict

NAME = "mme"
HEADLINE = "perception/score"
PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark", "artwork",
              "OCR")
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
_CANONICAL = {s.lower(): s for s in SUBTASKS}
FIELDS = ("category", "image")
PAIRED_FIELDS = ("answer", "category", "image")


def parse_pred_ans(pred_ans: str) -> str:
    """``"yes"``, ``"no"`` or ``"other"``: the official reading of an MME prediction."""
    pred_ans = pred_ans.lower()
    if pred_ans in ("yes", "no"):
        return pred_ans
    prefix = pred_ans[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def subtask(name: str) -> str:
    """The canonical spelling of a subtask name (case-insensitive); unknown names unchanged."""
    return _CANONICAL.get(name.lower(), name)


def check(row: dict, fail) -> None:
    """Validate the MME fields of one row; ``fail(message, field)`` raises."""
    if not isinstance(row.get("category"), str) or not row["category"]:
        fail("an MME row needs a 'category' string (the subtask, e.g. existence or OCR)", "category")
    row["category"] = subtask(row["category"])
    if not isinstance(row.get("image"), str | int) or row["image"] == "":
        fail("an MME row needs an 'image' id (its two questions share it)", "image")
    if not isinstance(row["answer"], str) or row["answer"].lower() not in ("yes", "no"):
        fail(f"an MME answer must be 'yes' or 'no', got {row['answer']!r}", "answer")


def judge(row: dict, **_options) -> dict:
    """The parsed prediction of one row and whether it is right."""
    pred = parse_pred_ans(row["prediction"])
    label = row["answer"].lower()
    cat = subtask(row["category"])
    return {"parsed": pred, "label": label, "correct": pred == label, "category": cat,
            "unit": f"{cat}/{row['image']}"}


def _images(judged: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """subtask -> image unit -> its rows, subtasks in the official order then unknown ones."""
    by = defaultdict(lambda: defaultdict(list))
    for j in judged:
        by[j["category"]][j["unit"]].append(j)
    order = [s for s in SUBTASKS if s in by] + sorted(set(by) - set(SUBTASKS))
    return {s: dict(by[s]) for s in order}


def check_groups(judged: list[dict], fail) -> None:
    """Every image must have exactly two questions, as the official script asserts."""
    for images in _images(judged).values():
        for rows in images.values():
            if len(rows) != 2:
                fail(rows[0]["index"], f"MME image {rows[0]['unit']!r} has {len(rows)} question(s); "
                                       "the official acc+ needs exactly 2 per image", "image")


def _image_values(rows: list[dict]) -> tuple[float, float]:
    """(mean correctness, both right) of one image's two questions."""
    right = [float(j["correct"]) for j in rows]
    return sum(right) / len(right), float(all(right))


def aggregate(judged: list[dict]) -> tuple[dict, dict, list[str]]:
    """``(metrics, details, notes)``: per-subtask acc, acc+, score; perception/cognition totals."""
    metrics, details, notes = {}, {}, []
    by = _images(judged)
    for s, images in by.items():
        rows = [j for r in images.values() for j in r]
        acc = sum(j["correct"] for j in rows) / len(rows)
        acc_plus = sum(all(j["correct"] for j in r) for r in images.values()) / len(images)
        metrics[f"{s}/acc"], metrics[f"{s}/acc_plus"] = acc, acc_plus
        metrics[f"{s}/score"] = 100 * acc + 100 * acc_plus
        clean = [j for j in rows if j["parsed"] != "other"]
        tp = sum(j["parsed"] == "yes" and j["label"] == "yes" for j in clean)
        fn = sum(j["parsed"] == "no" and j["label"] == "yes" for j in clean)
        fp = sum(j["parsed"] == "yes" and j["label"] == "no" for j in clean)
        tn = sum(j["parsed"] == "no" and j["label"] == "no" for j in clean)
        details[s] = {"n": len(rows), "images": len(images), "other_num": len(rows) - len(clean),
                      "TP": tp, "FN": fn, "TN": tn, "FP": fp,
                      "precision": tp / (tp + fp) if tp + fp else 0.0, "recall": tp / (tp + fn) if tp + fn else 0.0}
    for total, names in (("perception", PERCEPTION), ("cognition", COGNITION)):
        present = [s for s in names if s in by]
        metrics[f"{total}/score"] = sum(metrics[f"{s}/score"] for s in present)
        if missing := [s for s in names if s not in by]:
            notes.append(f"MME: {total} total covers {len(present)} of {len(names)} subtasks "
                         f"(missing: {', '.join(missing)})")
    metrics["total/score"] = metrics["perception/score"] + metrics["cognition/score"]
    if unknown := [s for s in by if s not in SUBTASKS]:
        notes.append(f"MME: unknown subtask(s) {', '.join(unknown)} scored but left out of the totals")
    return metrics, details, notes


def linear(judged: list[dict]) -> dict[str, list[tuple[float, dict]]]:
    """Every MME metric is a mean over images (or a sum of such means), for the paired SE.

    With two questions per image, a subtask's acc is the mean over its images of the
    image's mean correctness and acc+ the mean of "both right", so the score is the mean
    of ``100*mean + 100*both`` over images; the SE is clustered by image.
    """
    out, score_units = {}, {}
    for s, images in _images(judged).items():
        values = {u: _image_values(rows) for u, rows in images.items()}
        out[f"{s}/acc"] = [(1.0, {u: v[0] for u, v in values.items()})]
        out[f"{s}/acc_plus"] = [(1.0, {u: v[1] for u, v in values.items()})]
        score_units[s] = {u: 100 * v[0] + 100 * v[1] for u, v in values.items()}
        out[f"{s}/score"] = [(1.0, score_units[s])]
    out["perception/score"] = [(1.0, score_units[s]) for s in PERCEPTION if s in score_units]
    out["cognition/score"] = [(1.0, score_units[s]) for s in COGNITION if s in score_units]
    out["total/score"] = out["perception/score"] + out["cognition/score"]
    return out


def bootstrap(base, aia, n_boot, rng) -> dict[str, float]:
    """No MME metric needs the bootstrap."""
    return {}
