"""POPE (object hallucination, yes/no questions): the official scoring rules.

Official source: the released AIA repository, ``evaluation/vlm/eval/pope/eval_pope.py``
(from InternVL / LLaVA), which scores the file ``evaluation/vlm/eval/pope/evaluate_pope.py``
writes. Reproduced here:

* **the prediction**: ``evaluate_pope.py`` strips the decoded text; ``eval_pope.py`` then
  keeps only the text before the first ``.`` (the first "sentence"; any dot counts),
  deletes every comma, splits on single spaces, and reads the answer as **no** when one of
  the words is exactly ``No``, ``not`` or ``no`` (case-sensitive: ``NO``, ``Not``, ``no!``
  are not), and as **yes** otherwise, so an empty prediction reads as yes;
* **the label**: the ground truth ``answer`` (``yes``/``no``; the official code reads
  anything but ``no`` as yes, this module asks for one of the two);
* **per category** (``adversarial``, ``popular``, ``random``): with yes as the positive
  class, accuracy ``(TP+TN)/n``, precision ``TP/(TP+FP)``, recall ``TP/(TP+FN)``,
  ``F1 = 2PR/(P+R)`` and the yes-ratio (share of predictions read as yes);
* **the mean over categories** of each of these (the official script prints only the
  mean F1, the number papers report as "POPE").

Where the official code divides by zero (no predicted yes, no true yes) this module gives 0,
as lmms-eval's ``lmms_eval/tasks/pope/utils.py`` does.
"""

from __future__ import annotations

import numpy as np

NAME = "pope"
HEADLINE = "mean/f1"
CATEGORIES = ("adversarial", "popular", "random")
FIELDS = ("category",)  # besides id, answer, prediction
PAIRED_FIELDS = ("answer", "category")  # must agree between a baseline and an AIA row of one id
_METRICS = ("acc", "precision", "recall", "f1", "yes_ratio")


def normalize_answer(text: str) -> str:
    """``"yes"`` or ``"no"``: the official reading of a POPE prediction (see the module doc)."""
    text = text.strip()
    if "." in text:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def check(row: dict, fail) -> None:
    """Validate the POPE fields of one row; ``fail(message, field)`` raises."""
    if not isinstance(row.get("category"), str) or not row["category"]:
        fail("a POPE row needs a 'category' string (adversarial, popular or random)", "category")
    if not isinstance(row["answer"], str) or row["answer"].strip().lower() not in ("yes", "no"):
        fail(f"a POPE answer must be 'yes' or 'no', got {row['answer']!r}", "answer")


def judge(row: dict, **_options) -> dict:
    """The parsed prediction of one row and whether it is right."""
    pred = normalize_answer(row["prediction"])
    label = row["answer"].strip().lower()
    return {"parsed": pred, "label": label, "correct": pred == label, "category": row["category"]}


def check_groups(judged: list[dict], fail) -> None:
    """Nothing to check across rows for POPE."""


def _categories(judged: list[dict]) -> list[str]:
    present = {j["category"] for j in judged}
    return [c for c in CATEGORIES if c in present] + sorted(present - set(CATEGORIES))


def _ratio(num, den):
    """``num/den`` with 0 where ``den`` is 0 (elementwise for arrays)."""
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    out = np.divide(num, den, out=np.zeros(np.broadcast(num, den).shape), where=den != 0)
    return out if out.ndim else float(out)


def _prf(pred_yes, label_yes):
    """Precision, recall, F1 along the last axis of 0/1 arrays (zero where undefined)."""
    pred_yes, label_yes = np.asarray(pred_yes, dtype=bool), np.asarray(label_yes, dtype=bool)
    tp = (pred_yes & label_yes).sum(-1)
    fp = (pred_yes & ~label_yes).sum(-1)
    fn = (~pred_yes & label_yes).sum(-1)
    precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    return precision, recall, _ratio(2 * np.asarray(precision) * recall, np.asarray(precision) + recall)


def aggregate(judged: list[dict]) -> tuple[dict, dict, list[str]]:
    """``(metrics, details, notes)``: per-category and mean metrics, confusion counts."""
    metrics, details = {}, {}
    cats = _categories(judged)
    for cat in cats:
        rows = [j for j in judged if j["category"] == cat]
        pred = [j["parsed"] == "yes" for j in rows]
        label = [j["label"] == "yes" for j in rows]
        tp = sum(p and t for p, t in zip(pred, label, strict=True))
        fp = sum(p and not t for p, t in zip(pred, label, strict=True))
        tn = sum(not p and not t for p, t in zip(pred, label, strict=True))
        fn = sum(not p and t for p, t in zip(pred, label, strict=True))
        precision, recall, f1 = _prf(pred, label)
        metrics[f"{cat}/acc"] = (tp + tn) / len(rows)
        metrics[f"{cat}/precision"] = float(precision)
        metrics[f"{cat}/recall"] = float(recall)
        metrics[f"{cat}/f1"] = float(f1)
        metrics[f"{cat}/yes_ratio"] = sum(pred) / len(rows)
        details[cat] = {"n": len(rows), "TP": tp, "FP": fp, "TN": tn, "FN": fn}
    for m in _METRICS:
        metrics[f"mean/{m}"] = sum(metrics[f"{c}/{m}"] for c in cats) / len(cats)
    notes = []
    if missing := [c for c in CATEGORIES if c not in cats]:
        notes.append(f"POPE: no {', '.join(missing)} questions; the means cover {', '.join(cats)} only")
    return metrics, details, notes


def linear(judged: list[dict]) -> dict[str, list[tuple[float, dict]]]:
    """The metrics that are (weighted sums of) means of per-question values, for the paired SE."""
    out = {}
    cats = _categories(judged)
    for cat in cats:
        rows = [j for j in judged if j["category"] == cat]
        out[f"{cat}/acc"] = [(1.0, {j["id"]: float(j["correct"]) for j in rows})]
        out[f"{cat}/yes_ratio"] = [(1.0, {j["id"]: float(j["parsed"] == "yes") for j in rows})]
    for m in ("acc", "yes_ratio"):
        out[f"mean/{m}"] = [(1.0 / len(cats), out[f"{c}/{m}"][0][1]) for c in cats]
    return out


def bootstrap(base: list[dict], aia: list[dict], n_boot: int, rng: np.random.Generator) -> dict[str, float]:
    """Paired-bootstrap SEs of the AIA-minus-baseline difference in precision, recall and F1.

    Within each category the questions are resampled with replacement (the same draw for
    both models), the metrics recomputed, and the SE is the standard deviation (ddof 1) of
    the ``n_boot`` differences; the means over categories combine the per-category draws
    replicate by replicate.
    """
    aia_by_id = {j["id"]: j for j in aia}
    cats = _categories(base)
    draws: dict[str, list[np.ndarray]] = {m: [] for m in ("precision", "recall", "f1")}
    out = {}
    for cat in cats:
        rows = [j for j in base if j["category"] == cat]
        label = np.array([j["label"] == "yes" for j in rows])
        pb = np.array([j["parsed"] == "yes" for j in rows])
        pa = np.array([aia_by_id[j["id"]]["parsed"] == "yes" for j in rows])
        diffs = {m: [] for m in draws}
        for start in range(0, n_boot, 256):  # bounded memory: 256 replicates at a time
            idx = rng.integers(0, len(rows), size=(min(256, n_boot - start), len(rows)))
            for m, b, a in zip(draws, _prf(pb[idx], label[idx]), _prf(pa[idx], label[idx]), strict=True):
                diffs[m].append(a - b)
        for m in draws:
            d = np.concatenate(diffs[m])
            draws[m].append(d)
            out[f"{cat}/{m}"] = float(d.std(ddof=1)) if n_boot > 1 else None
    for m, per_cat in draws.items():
        out[f"mean/{m}"] = float(np.mean(per_cat, axis=0).std(ddof=1)) if n_boot > 1 else None
    return out
