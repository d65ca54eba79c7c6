"""The aia_tiny_vqa task's functions (lmms-eval loads them through the YAML's !function tags)."""

from pathlib import Path

from PIL import Image

HERE = Path(__file__).resolve().parent
SUFFIX = "\nAnswer the question using a single word or phrase."


def doc_to_visual(doc):
    with Image.open(HERE / doc["image"]) as image:
        return [image.convert("RGB")]


def doc_to_text(doc, lmms_eval_specific_kwargs=None):
    return doc["question"] + SUFFIX


def process_results(doc, results):
    return {"exact_match": float(results[0].strip().lower() == doc["answer"])}
