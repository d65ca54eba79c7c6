"""The shipped paper-reproduction eval suite scores MMMU with the released pipeline's reading (issue 22)."""

from pathlib import Path

from aia.evaluate import mmmu
from aia.evaluate.suite import load_eval_config

SUITE = Path(__file__).resolve().parents[2] / "configs" / "eval" / "janus-pro-paper.yaml"


def released_post_process(pred: str, option: dict) -> str:
    """Our port of the released ``post_process`` (evaluation/vlm/eval/mmmu/evaluate_mmmu.py:156-173 at
    88aef6b): stripped; no options or one character: as is; empty: the second letter; a first character
    that is a letter: it; else the first option whose text it contains; else the first letter."""
    pred = pred.strip()
    letters = list(option.keys())
    if len(letters) == 0 or len(pred) == 1:
        return pred
    if len(pred) == 0:
        return letters[1]
    if pred[0] in letters:
        return pred[0]
    for key, text in option.items():
        if text in pred:
            return key
    return letters[0]


def test_paper_suite_loads_and_reads_mmmu_as_the_release_did():
    cfg = load_eval_config(SUITE)
    assert cfg.options.mmmu_parser == "aia" and cfg.options.max_new_tokens == 512
    assert cfg.compare == ["baseline", "aia"] and set(cfg.understanding) == {"pope", "mme", "mmmu", "mmvp"}
    options = ["red", "blue", "a green square", "yellow"]
    for prediction in ["(B) blue", "B", "", "blue", "It is a green square.", "none of them", " C. ", "(C)"]:
        row = {"id": "validation_Art_1", "subject": "Art", "question_type": "multiple-choice", "answer": "B",
               "options": options, "prediction": prediction}
        parsed = mmmu.judge(row, mmmu_parser=cfg.options.mmmu_parser)["parsed"]
        assert parsed == released_post_process(prediction, dict(zip("ABCD", options, strict=True))), prediction
    # "(B) blue": the release reads the first option text it finds, not the letter in parentheses
    row = {"id": "validation_Art_1", "subject": "Art", "question_type": "multiple-choice", "answer": "A",
           "options": options, "prediction": "(B) red"}
    assert mmmu.judge(row, mmmu_parser="aia")["parsed"] == "A"
    assert mmmu.judge(row, mmmu_parser="mmmu")["parsed"] == "B"
