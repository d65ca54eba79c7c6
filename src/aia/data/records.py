"""Reading the training/profiling data: records, their task, their conversation, their image.

One record is one sample, in the LLaVA-style format the released AIA code documents
(a JSON list or JSON Lines file; image paths are relative to the data file)::

    generation     {"conversations": [{"from": "human", "value": PROMPT},
                                      {"from": "gpt", "value": "<image>"}],
                    "image": PATH}
    understanding  {"image": PATH,
                    "conversations": [{"from": "human", "value": Q1}, {"from": "gpt", "value": A1}, ...]}

In understanding the human's first turn may hold a literal ``<image>`` saying where
the image goes; without it the image goes before the first question. Turning a record
into token ids is the job of the model adapters (:mod:`aia.adapters`); this module only
parses and validates.
"""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from aia.core.spans import check_task
from aia.errors import DataError, ImageError
from aia.jsonl import read_json_rows

__all__ = [
    "IMAGE_PLACEHOLDER",
    "dialogue",
    "generation_prompt",
    "image_path",
    "infer_task",
    "load_image",
    "read_records",
    "split_at_image",
    "task_records",
]

IMAGE_PLACEHOLDER = "<image>"


def read_records(path: str | Path) -> list[dict]:
    """The records of a data file: a JSON list, JSON Lines, or parquet (by the ``.parquet`` suffix).

    The one reader of the data format, used by ``aia profile``, ``aia train`` and the demo.
    A JSON file whose first non-blank character is ``[`` is one list, any other JSON file
    is JSON Lines (one object per non-blank line); a UTF-8 byte-order mark is accepted.
    Parquet is read with ``datasets`` (one row per record, columns as keys).

    Raises:
        DataError: the file is missing, empty, not UTF-8, not valid JSON, or holds a record
            that is not an object; the message names the file and the line or record.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such data file", path=path)
    rows = _read_parquet(path) if path.suffix == ".parquet" else read_json_rows(path)
    for where, record in rows:
        if not isinstance(record, dict):
            raise DataError(f"a record must be a JSON object, got {type(record).__name__}", path=path, record=where)
    if not rows:
        raise DataError("no records", path=path)
    return [record for _, record in rows]


def _read_parquet(path: Path) -> list[tuple[int, dict]]:
    import datasets

    try:
        rows = datasets.load_dataset("parquet", data_files=str(path), split="train").to_list()
    except Exception as err:  # datasets / pyarrow raise many types for malformed files
        raise DataError(f"cannot be read as parquet: {err}", path=path) from None
    return list(enumerate(rows))


def task_records(path: str | Path, task: str) -> list[dict]:
    """The records of ``task`` in the data file ``path`` (records of the other task are left out).

    Raises:
        DataError: as :func:`read_records`, or the file holds no record of ``task``.
    """
    check_task(task)
    records = [r for r in read_records(path) if infer_task(r) == task]
    if not records:
        raise DataError(f"no {task!r} records", path=path)
    return records


def _turns(record: dict) -> list[dict]:
    turns = record.get("conversations")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"record has no 'conversations' list: {_short(record)}")
    for turn in turns:
        if (
            not isinstance(turn, dict)
            or turn.get("from") not in ("human", "gpt")
            or not isinstance(turn.get("value"), str)
        ):
            raise DataError(
                f"each turn must be {{'from': 'human'|'gpt', 'value': str}}, got {turn!r} in {_short(record)}"
            )
    return turns


def _short(record: dict, limit: int = 120) -> str:
    text = json.dumps(record, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def infer_task(record: dict) -> str:
    """``"gen"`` if an assistant turn is exactly ``"<image>"`` (text -> image), else ``"und"``."""
    turns = _turns(record)
    return "gen" if any(t["from"] == "gpt" and t["value"] == IMAGE_PLACEHOLDER for t in turns) else "und"


def generation_prompt(record: dict) -> str:
    """The prompt of a generation record (stripped)."""
    turns = _turns(record)
    if len(turns) != 2 or turns[0]["from"] != "human" or turns[1] != {"from": "gpt", "value": IMAGE_PLACEHOLDER}:
        raise DataError(f"a generation record is one human prompt then a gpt '<image>' turn: {_short(record)}")
    prompt = turns[0]["value"]
    if IMAGE_PLACEHOLDER in prompt:
        raise DataError(f"a generation prompt cannot hold '<image>': {_short(record)}")
    return prompt.strip()


def dialogue(record: dict) -> list[tuple[str, str]]:
    """The (question, answer) turns of an understanding record, stripped.

    The first question keeps its ``<image>`` placeholder if it has one (see
    :func:`split_at_image`); no other turn may hold one.
    """
    turns = _turns(record)
    if len(turns) % 2 or any(t["from"] != ("human" if i % 2 == 0 else "gpt") for i, t in enumerate(turns)):
        raise DataError(f"an understanding record alternates human/gpt turns, starting with human: {_short(record)}")
    pairs = [(turns[i]["value"].strip(), turns[i + 1]["value"].strip()) for i in range(0, len(turns), 2)]
    rest = [q for q, _ in pairs[1:]] + [a for _, a in pairs]
    if pairs[0][0].count(IMAGE_PLACEHOLDER) > 1 or any(IMAGE_PLACEHOLDER in text for text in rest):
        raise DataError(f"only the first question may hold '<image>', once: {_short(record)}")
    return pairs


def split_at_image(question: str) -> tuple[str, str]:
    """Split a question at its ``<image>`` placeholder into (text before, text after).

    Whitespace next to the placeholder is dropped (each model family puts its own
    separator there). Without a placeholder the image goes first: ``("", question)``.
    """
    before, sep, after = question.partition(IMAGE_PLACEHOLDER)
    if not sep:
        return "", question.strip()
    return before.strip(), after.strip()


def image_path(record: dict, base_dir: str | Path) -> Path:
    """The record's image file, resolved against ``base_dir`` (the data file's folder)."""
    image = record.get("image")
    if not isinstance(image, str) or not image:
        raise DataError(f"record has no 'image' path: {_short(record)}")
    return Path(base_dir) / image


def load_image(path: str | Path) -> Image.Image:
    """Open an image file as RGB.

    Raises:
        ImageError: the file is missing or cannot be decoded; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image not found: {path}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"cannot read image {path}: {e}") from e
