"""MMMU (multi-discipline multiple-choice and open questions): the official scoring rules.

Official sources: ``mmmu/utils/eval_utils.py`` of the MMMU authors' repository
(MMMU-Benchmark/MMMU; the same functions are in the released AIA repository's
``evaluation/vlm/eval/mmmu/eval_utils.py`` and in lmms-eval's ``lmms_eval/tasks/mmmu/utils.py``),
and the AIA repository's ``evaluation/vlm/eval/mmmu/main_eval_only.py`` and
``data_utils.py`` for the grouping. Reproduced here:

* **multiple-choice, parser "mmmu"** (the default; ``parse_multi_choice_response``): strip
  ``, . ! ? ; : '`` from both ends (one character kind after the other, in that order) and
  pad with a space; candidates are the letters written ``(X)``; if none, the letters
  standing alone as `` X ``; if none and the response has more than 5 words, the options
  whose text appears in it (case-insensitive). Several candidates: the one that occurs
  **last** wins (first of equals). No candidate: the official code draws
  ``random.choice`` from the letters with a module-level ``random.seed(42)``, so its pick
  depends on the order questions are scored; here the draw is ``random.Random(f"{seed}:{id}")``
  (``seed`` 42 by default), deterministic per question and the same for two models, and
  counted in the details as ``random_fallbacks``. The parsed letter is right when it equals
  the answer (or one of a list of answers).
* **multiple-choice, parser "aia"**: what the released AIA pipeline actually ran
  (``evaluation/vlm/eval/mmmu/evaluate_mmmu.py``, ``post_process``, whose output
  ``main_eval_only.py`` compares as is, never calling ``parse_multi_choice_response``):
  the stripped response if it is one character; the second letter (``B``) if it is empty;
  its first character if that is an option letter; else the first option whose text
  (case-sensitive) it contains; else the first letter (``A``). ``"(B)"`` is thus read as A.
* **open questions** (any ``question_type`` other than ``multiple-choice``;
  ``parse_open_response`` and ``eval_open``): the lower-cased response is split into
  sentences; from each the shortest tail after one of ``could be``, ``so``, ``is``,
  ``thus``, ``therefore``, ``final``, ``answer``, ``result`` (and ``=`` in the last
  sentence) is kept, or the whole response if none; the numbers in them are extracted;
  numbers become floats rounded to 2 decimals, strings are lower-cased (a single character
  ``c`` becomes `` c`` and ``c ``). Right when a parsed number equals a normalised answer
  number (``"3.0"`` matches ``"3"``) or a normalised answer string is a substring of a
  parsed string. A ground truth may be a list of accepted answers (or a string holding a
  Python list, as the MMMU data stores them).
* **accuracy**: per subject (``subject``, or ``"_".join(id.split("_")[1:-1])`` from an id
  like ``validation_Art_Theory_12``), per discipline (instance-level over its subjects,
  the official ``Overall-<discipline>``) and overall (instance-level over the 30 official
  subjects; a subject the official list lacks is scored but left out, as the official
  script skips it).
"""

from __future__ import annotations

import ast
import random
import re
from collections import defaultdict

NAME = "mmmu"
HEADLINE = "overall/acc"
PARSERS = ("mmmu", "aia")
DEFAULT_SEED = 42
DOMAINS = {
    "Art and Design": ("Art", "Art_Theory", "Design", "Music"),
    "Business": ("Accounting", "Economics", "Finance", "Manage", "Marketing"),
    "Science": ("Biology", "Chemistry", "Geography", "Math", "Physics"),
    "Health and Medicine": ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine",
                            "Pharmacy", "Public_Health"),
    "Humanities and Social Science": ("History", "Literature", "Sociology", "Psychology"),
    "Tech and Engineering": ("Agriculture", "Architecture_and_Engineering", "Computer_Science", "Electronics",
                             "Energy_and_Power", "Materials", "Mechanical_Engineering"),
}
SUBJECTS = tuple(s for subjects in DOMAINS.values() for s in subjects)
SHORT_NAMES = {  # data_utils.py CAT_SHORT2LONG
    "acc": "Accounting", "agri": "Agriculture", "arch": "Architecture_and_Engineering", "art": "Art",
    "art_theory": "Art_Theory", "bas_med": "Basic_Medical_Science", "bio": "Biology", "chem": "Chemistry",
    "cli_med": "Clinical_Medicine", "cs": "Computer_Science", "design": "Design",
    "diag_med": "Diagnostics_and_Laboratory_Medicine", "econ": "Economics", "elec": "Electronics",
    "ep": "Energy_and_Power", "fin": "Finance", "geo": "Geography", "his": "History", "liter": "Literature",
    "manage": "Manage", "mark": "Marketing", "mate": "Materials", "math": "Math", "mech": "Mechanical_Engineering",
    "music": "Music", "phar": "Pharmacy", "phys": "Physics", "psy": "Psychology", "pub_health": "Public_Health",
    "socio": "Sociology",
}
_CANONICAL = {**{s.lower(): s for s in SUBJECTS}, **SHORT_NAMES}
FIELDS = ("question_type",)
PAIRED_FIELDS = ("answer", "question_type", "subject")
LETTERS = tuple(chr(ord("A") + i) for i in range(26))


# ----------------------------------------------------------------- multiple choice
def parse_multi_choice_response(response: str, all_choices: list[str], index2ans: dict[str, str],
                                rng: random.Random) -> tuple[str, bool]:
    """``(letter, guessed)``: the official MMMU reading of a multiple-choice response.

    ``guessed`` is true when nothing parsed and the letter was drawn from ``rng``.
    """
    for char in (",", ".", "!", "?", ";", ":", "'"):
        response = response.strip(char)
    response = f" {response} "
    candidates = [c for c in all_choices if f"({c})" in response]
    bracketed, by_text = bool(candidates), False
    if not candidates:
        candidates = [c for c in all_choices if f" {c} " in response]
    if not candidates and len(response.split()) > 5:
        candidates = [c for c, text in index2ans.items() if text.lower() in response.lower()]
        by_text = bool(candidates)
    if not candidates:
        return rng.choice(all_choices), True
    if len(candidates) == 1:
        return candidates[0], False
    if by_text:
        positions = [response.lower().rfind(index2ans[c].lower()) for c in candidates]
    elif bracketed:
        positions = [response.rfind(f"({c})") for c in candidates]
    else:
        positions = [response.rfind(f" {c} ") for c in candidates]
    return candidates[positions.index(max(positions))], False


def aia_post_process(pred: str, options: dict[str, str]) -> str:
    """The released AIA pipeline's reading of a multiple-choice response (``post_process``)."""
    pred = pred.strip()
    letters = list(options)
    if not letters or len(pred) == 1:
        return pred
    if not pred:
        return letters[1] if len(letters) > 1 else letters[0]
    if pred[0] in letters:
        return pred[0]
    for letter, text in options.items():
        if text in pred:
            return letter
    return letters[0]


# ----------------------------------------------------------------- open questions
_NUM_COMMAS = re.compile(r"-?\b\d{1,3}(?:,\d{3})+\b")
_NUM_SCIENTIFIC = re.compile(r"-?\d+(?:\.\d+)?[eE][+-]?\d+")
_NUM_SIMPLE = re.compile(r"-?(?:\d+\.\d+|\.\d+|\d+\b)(?![eE][+-]?\d+)(?![,\d])")
_KEY_INDICATORS = ("could be ", "so ", "is ", "thus ", "therefore ", "final ", "answer ", "result ")
_TRIVIAL = (":", ",", ".", "!", "?", ";", "'")


def _is_number(text: str) -> bool:
    try:
        float(text.replace(",", ""))
    except ValueError:
        return False
    return True


def normalize_str(text: str) -> list:
    """A number as ``[round(float, 2)]``; other text lower-cased, one character padded both ways."""
    text = text.strip()
    if _is_number(text):
        return [round(float(text.replace(",", "")), 2)]
    text = text.lower()
    return [" " + text, text + " "] if len(text) == 1 else [text]


def extract_numbers(text: str) -> list[str]:
    """Every number in ``text``: with thousands commas, in scientific notation, plain."""
    return _NUM_COMMAS.findall(text) + _NUM_SCIENTIFIC.findall(text) + _NUM_SIMPLE.findall(text)


def _key_subresponses(response: str) -> list[str]:
    response = response.strip().strip(".").lower()
    sentences = re.split(r"\.\s(?=[A-Z])|\n", response)
    keys = []
    for i, sentence in enumerate(sentences):
        indicators = _KEY_INDICATORS + (("=",) if i == len(sentences) - 1 else ())
        tails = [sentence.split(ind)[-1].strip() for ind in indicators if ind in sentence]
        shortest = None
        for tail in tails:  # the first of the shortest non-empty tails, as the official loop keeps it
            if not shortest or len(tail) < len(shortest):
                shortest = tail
        if shortest and shortest.strip() not in _TRIVIAL:
            keys.append(shortest)
    return keys or [response]


def parse_open_response(response: str) -> list:
    """The official parsed predictions of an open question: normalised strings and numbers."""
    keys = _key_subresponses(response)
    preds = keys + [n for k in keys for n in extract_numbers(k)]
    return list({v: None for p in preds for v in normalize_str(p)})


def eval_open(gold: str | list[str], preds: list) -> bool:
    """Right when a parsed number equals an answer number or an answer string is in a parsed string."""
    answers = [v for g in (gold if isinstance(gold, list) else [gold]) for v in normalize_str(g)]
    for pred in preds:
        if isinstance(pred, str):
            if any(isinstance(a, str) and a in pred for a in answers):
                return True
        elif pred in answers:
            return True
    return False


# ----------------------------------------------------------------- rows
def subject_of(row: dict) -> str | None:
    """The canonical subject of a row: its ``subject`` field or the middle of its id."""
    name = row.get("subject")
    if not isinstance(name, str) or not name:
        name = "_".join(str(row["id"]).split("_")[1:-1])
    if not name:
        return None
    name = name.replace(" ", "_")
    return _CANONICAL.get(name.lower(), name)


def _gold(answer):
    """The ground truth: a string, a list of strings, or a string holding a Python list of strings."""
    if isinstance(answer, str) and answer.startswith("["):
        try:
            value = ast.literal_eval(answer)
        except (ValueError, SyntaxError):
            return answer
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            return value
    return answer


def check(row: dict, fail) -> None:
    """Validate the MMMU fields of one row; ``fail(message, field)`` raises."""
    qtype = row.get("question_type")
    if not isinstance(qtype, str) or not qtype:
        fail("an MMMU row needs a 'question_type' ('multiple-choice' or 'open')", "question_type")
    answer = row["answer"]
    if not (isinstance(answer, str) or (isinstance(answer, list) and answer and all(isinstance(a, str) for a in answer))):
        fail("an MMMU answer must be a string or a list of strings", "answer")
    if qtype == "multiple-choice":
        options = row.get("options")
        if isinstance(options, str):  # the MMMU data stores options as a string holding a list
            try:
                options = ast.literal_eval(options)
            except (ValueError, SyntaxError):
                options = None
        if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options) \
                or len(options) > len(LETTERS):
            fail("a multiple-choice MMMU row needs 'options', a non-empty list of strings", "options")
        row["options"] = options
    if subject_of(row) is None:
        fail("no subject: give 'subject' or an id like 'validation_Art_1'", "subject")
    row["subject"] = subject_of(row)


def judge(row: dict, *, mmmu_parser: str = "mmmu", seed: int = DEFAULT_SEED, **_options) -> dict:
    """The parsed prediction of one row and whether it is right."""
    gold = _gold(row["answer"])
    out = {"subject": row["subject"], "guessed": False}
    if row["question_type"] == "multiple-choice":
        options = {LETTERS[i]: o.strip() if mmmu_parser == "aia" else o for i, o in enumerate(row["options"])}
        if mmmu_parser == "aia":
            parsed = aia_post_process(row["prediction"], options)
        else:
            rng = random.Random(f"{seed}:{row['id']}")
            parsed, out["guessed"] = parse_multi_choice_response(row["prediction"], list(options), options, rng)
        correct = parsed in gold if isinstance(gold, list) else parsed == gold
    else:
        text = row["prediction"].strip() if mmmu_parser == "aia" else row["prediction"]
        parsed = parse_open_response(text)
        correct = eval_open(gold, parsed)
    return {**out, "parsed": parsed, "correct": correct}


def check_groups(judged: list[dict], fail) -> None:
    """Nothing to check across rows for MMMU."""


def _subjects(judged: list[dict]) -> dict[str, list[dict]]:
    by = defaultdict(list)
    for j in judged:
        by[j["subject"]].append(j)
    return {s: by[s] for s in [s for s in SUBJECTS if s in by] + sorted(set(by) - set(SUBJECTS))}


def _groups(judged: list[dict]) -> dict[str, list[dict]]:
    """metric group -> rows: each subject, each discipline present, and overall (official subjects)."""
    by = _subjects(judged)
    groups = {s: rows for s, rows in by.items()}
    for domain, subjects in DOMAINS.items():
        rows = [j for s in subjects for j in by.get(s, [])]
        if rows:
            groups[domain] = rows
    groups["overall"] = [j for s in SUBJECTS for j in by.get(s, [])]
    return groups


def aggregate(judged: list[dict]) -> tuple[dict, dict, list[str]]:
    """``(metrics, details, notes)``: accuracy per subject, per discipline and overall."""
    metrics, details, notes = {}, {}, []
    for name, rows in _groups(judged).items():
        metrics[f"{name}/acc"] = sum(j["correct"] for j in rows) / len(rows) if rows else 0.0
        details[name] = {"n": len(rows), "correct": sum(j["correct"] for j in rows),
                         "random_fallbacks": sum(j["guessed"] for j in rows)}
    if unknown := [s for s in _subjects(judged) if s not in SUBJECTS]:
        notes.append(f"MMMU: subject(s) {', '.join(unknown)} not among the 30 official ones; "
                     "scored but left out of the overall and discipline accuracy")
    if guesses := details["overall"]["random_fallbacks"]:
        notes.append(f"MMMU: {guesses} multiple-choice answer(s) did not parse and were drawn at random "
                     "(seeded per question id)")
    return metrics, details, notes


def linear(judged: list[dict]) -> dict[str, list[tuple[float, dict]]]:
    """Every MMMU metric is a mean of per-question correctness, for the paired SE."""
    return {f"{name}/acc": [(1.0, {j["id"]: float(j["correct"]) for j in rows})]
            for name, rows in _groups(judged).items()}


def bootstrap(base, aia, n_boot, rng) -> dict[str, float]:
    """No MMMU metric needs the bootstrap."""
    return {}
