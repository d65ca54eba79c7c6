"""``aia eval``'s report: MME's headline with MME's 2 decimals, a total with no subtasks gets SE n/a
(not 0.00), the run's options recorded, and the DPG export says which flags DPG-Bench's scorer needs."""

from __future__ import annotations

from PIL import Image

from aia.evaluate.generate import grid
from aia.evaluate.scoring import compare, format_table
from aia.evaluate.suite import _dpg_scorer_flags, _markdown

OPTIONS = {"batch_size": 8, "max_new_tokens": 128, "limit": None, "images_per_prompt": 2, "guidance": None, "seed": 0,
           "mmmu_parser": "aia", "device": "cpu", "dtype": "auto"}  # fmt: skip


def report(**extra) -> dict:
    per_model = {n: {"headline": "total/score", "metrics": {"total/score": v}, "path": f"{n}/mme.jsonl"}
                 for n, v in (("base", 1234.56789), ("aia", 1300.0))}  # fmt: skip
    return {"models": {"base": "base", "aia": "aia"}, "compare": ["base", "aia"], "scores": {"mme": per_model},
            "comparisons": {}, "exported": {}, "options": OPTIONS, **extra}  # fmt: skip


def test_the_mme_headline_has_mme_decimals_and_the_options_are_in_the_report():
    text = _markdown(report(), ["base", "aia"], ("base", "aia"))
    assert "| mme | total/score | 1234.57 | 1300.00 |" in text
    assert "1234.5679" not in text
    options = next(line for line in text.splitlines() if line.startswith("Options:"))
    assert "`mmmu_parser: aia`" in options and "`images_per_prompt: 2`" in options and "`device: cpu`" in options


def test_the_dpg_export_names_the_official_scorers_flags(tmp_path):
    folder = tmp_path / "dpg"
    folder.mkdir()
    grid([Image.new("RGB", (24, 24), c) for c in ("red", "blue")]).save(folder / "p1.png")  # 2 images: 2x1
    assert _dpg_scorer_flags(folder, 2) == "--resolution 24 --pic-num 2"
    text = _markdown(report(exported={"dpg": {"aia": "aia/dpg"}}, judge_flags={"dpg": {"aia": "--resolution 24 "
                                                                                       "--pic-num 2"}}),
                     ["base", "aia"], ("base", "aia"))  # fmt: skip
    line = next(x for x in text.splitlines() if x.startswith("- dpg, `aia`"))
    assert "compute_dpg_bench.py" in line and "--resolution 24 --pic-num 2" in line
    assert _dpg_scorer_flags(tmp_path / "empty", 4) is None  # nothing written yet


def mme(category, image, q, answer, prediction):
    return {"id": f"{category}/{image}/{q}", "bench": "mme", "question": "?", "answer": answer,
            "prediction": prediction, "category": category, "image": image}  # fmt: skip


def test_a_total_without_subtasks_has_no_standard_error():
    # perception subtasks only: the cognition total covers nothing
    base = [mme("existence", f"{i}.jpg", q, a, p) for i in range(3) for q, a, p in ((1, "Yes", "yes"), (2, "No", "no"))]
    aia = [dict(r, prediction="yes") for r in base]
    result = compare(base, aia, "mme")
    assert result["metrics"]["cognition/score"]["se"] is None
    assert result["metrics"]["perception/score"]["se"] is not None
    row = next(x for x in format_table(result).splitlines() if x.startswith("cognition/score"))
    assert "n/a" in row and "0.00  paired" not in row
