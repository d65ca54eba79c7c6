"""MMVP (150 pairs of two-option questions on CLIP-blind image pairs): the official scoring rules.

Official source: the released AIA repository, ``evaluation/vlm/eval/mmvp/evaluate_mmvp.py``
(from InternVL), ``post_process`` and the scoring loop at its end. Reproduced here:

* **the options**: the CSV's ``Options`` ``"(a) X (b) Y"`` become ``A: X``, ``B: Y``
  (stripped); a row may give ``options`` as that string or as the list ``["X", "Y"]``;
* **the ground truth**: ``(a)``/``(b)``/``(c)``/``(d)`` written as ``A``/``B``/``C``/``D``
  (an answer already written ``A`` stays ``A``);
* **the prediction** (``post_process``), stripped: one character is taken as is (``"a"``
  stays ``a`` and is wrong); a longer one whose first character is an option letter gives
  that letter (so ``"A dog"`` gives A and ``"Both"`` gives B); else the first option whose
  text (case-sensitive) it contains; else it stays as it is (and is wrong). The official
  code crashes on an empty prediction; here it is simply wrong. Without ``options`` the
  letters are ``A`` and ``B`` and the text matching is skipped;
* **right** when the parsed prediction equals the ground truth letter;
* **pair accuracy** (the official number): pairs whose two questions are both right /
  pairs. The official loop pairs consecutive outputs; here the two questions of a pair
  are the rows sharing ``pair``, and a pair with another number of questions is an
  error. The question-level accuracy is also reported (not an official number).
"""

from __future__ import annotations

from collections import defaultdict

NAME = "mmvp"
HEADLINE = "pair/acc"
FIELDS = ("pair",)
PAIRED_FIELDS = ("answer", "pair")
_LETTERS = ("A", "B", "C", "D")


def normalize_gt(answer: str) -> str:
    """The official ground-truth letter: ``(a)`` -> ``A`` ... ``(d)`` -> ``D``."""
    for raw, letter in (("(a)", "A"), ("(b)", "B"), ("(c)", "C"), ("(d)", "D")):
        answer = answer.replace(raw, letter)
    return answer.strip()


def options_of(row: dict) -> dict[str, str]:
    """``{"A": text, "B": text}`` from a row's ``options`` (list, or the CSV string)."""
    options = row.get("options")
    if isinstance(options, str):
        parts = options.split("(b)")
        parts[0] = parts[0].replace("(a)", "")
        options = parts
    if not options:
        return dict.fromkeys(("A", "B"))
    return {_LETTERS[i]: text.strip() for i, text in enumerate(options)}


def post_process(pred: str, options: dict[str, str | None]) -> str:
    """The official reading of an MMVP prediction (see the module doc)."""
    pred = pred.strip()
    if len(pred) <= 1:
        return pred
    if pred[0] in options:
        return pred[0]
    for letter, text in options.items():
        if text is not None and text in pred:
            return letter
    return pred


def check(row: dict, fail) -> None:
    """Validate the MMVP fields of one row; ``fail(message, field)`` raises."""
    if not isinstance(row.get("pair"), str | int) or row["pair"] == "":
        fail("an MMVP row needs a 'pair' index (the two questions of a pair share it)", "pair")
    if not isinstance(row["answer"], str) or normalize_gt(row["answer"]) not in _LETTERS:
        fail(f"an MMVP answer must be an option letter ('A', 'B' or '(a)', '(b)'), got {row['answer']!r}",
             "answer")
    options = row.get("options")
    if options is not None and not isinstance(options, str) and not (
            isinstance(options, list) and 1 < len(options) <= len(_LETTERS)
            and all(isinstance(o, str) for o in options)):
        fail("MMVP 'options' must be a list of 2 to 4 strings or the CSV string '(a) ... (b) ...'", "options")


def judge(row: dict, **_options) -> dict:
    """The parsed prediction of one row and whether it is right."""
    parsed = post_process(row["prediction"], options_of(row))
    return {"parsed": parsed, "correct": parsed == normalize_gt(row["answer"]), "unit": str(row["pair"])}


def _pairs(judged: list[dict]) -> dict[str, list[dict]]:
    by = defaultdict(list)
    for j in judged:
        by[j["unit"]].append(j)
    return dict(by)


def check_groups(judged: list[dict], fail) -> None:
    """Every pair must have exactly two questions."""
    for pair, rows in _pairs(judged).items():
        if len(rows) != 2:
            fail(rows[0]["index"], f"MMVP pair {pair!r} has {len(rows)} question(s); a pair needs exactly 2", "pair")


def aggregate(judged: list[dict]) -> tuple[dict, dict, list[str]]:
    """``(metrics, details, notes)``: pair accuracy (official) and question accuracy."""
    pairs = _pairs(judged)
    both = sum(all(j["correct"] for j in rows) for rows in pairs.values())
    right = sum(j["correct"] for j in judged)
    metrics = {"pair/acc": both / len(pairs), "question/acc": right / len(judged)}
    details = {"pair": {"n": len(pairs), "correct": both}, "question": {"n": len(judged), "correct": right}}
    return metrics, details, []


def linear(judged: list[dict]) -> dict[str, list[tuple[float, dict]]]:
    """Both metrics are means over pairs (question accuracy clustered by pair), for the paired SE."""
    pairs = _pairs(judged)
    return {
        "pair/acc": [(1.0, {p: float(all(j["correct"] for j in rows)) for p, rows in pairs.items()})],
        "question/acc": [(1.0, {p: sum(j["correct"] for j in rows) / len(rows) for p, rows in pairs.items()})],
    }


def bootstrap(base, aia, n_boot, rng) -> dict[str, float]:
    """No MMVP metric needs the bootstrap."""
    return {}
