"""JSON Lines, read and written one way for the whole package.

A line ends at ``"\\n"`` (``"\\r\\n"`` too) and nowhere else.
``str.splitlines()`` also breaks at U+2028, U+2029, U+0085 and a few control
characters, which a JSON string may hold raw: one model answer holding U+2028 would cut
its row in two. The writer escapes those three anyway (``\\u2028``, ...), so that other
tools' line splitters read our files too; the reader accepts them raw, as other writers
leave them.

Every reader error is one :class:`~aia.errors.DataError` line naming the file and the
line: ``preds.jsonl: line 3: invalid JSON: Expecting value (column 1)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

from aia.errors import DataError

__all__ = ["Line", "json_line", "mend_torn_end", "read_json_rows", "read_jsonl", "write_jsonl"]

# the characters outside JSON's own escapes that some line splitters break at
_SEPARATORS = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\u0085": "\\u0085"})


class Line(NamedTuple):
    """One non-blank line of a JSON Lines file."""

    number: int
    """1-based line number in the file."""
    value: Any
    """The parsed JSON value."""
    text: str
    """The line as written, without its line ending."""


def read_jsonl(path: str | Path) -> list[Line]:
    """The non-blank lines of a UTF-8 JSON Lines file (a leading byte order mark is skipped).

    Raises:
        DataError: the file is missing, or a line is not UTF-8 or not JSON (naming the line).
    """
    path = Path(path)
    return _parse_lines(path, _read_bytes(path))


def _read_bytes(path: Path) -> bytes:
    """The file's bytes, without a leading UTF-8 byte order mark."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError("no such file", path=path) from None
    return data.removeprefix(b"\xef\xbb\xbf")


def _parse_lines(path: Path, data: bytes) -> list[Line]:
    lines = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            text = raw.decode("utf-8").removesuffix("\r")
        except UnicodeDecodeError as e:
            raise DataError(
                f"not UTF-8 text (byte {e.start} of the line)", path=path, record=f"line {number}"
            ) from None
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path=path, record=f"line {number}") from None
        lines.append(Line(number, value, text))
    return lines


def read_json_rows(path: str | Path) -> list[tuple[str | int, Any]]:
    """The values of a JSON list file or of a JSON Lines file, with where each came from.

    A file whose first non-blank character is ``[`` is one JSON list; anything else is JSON
    Lines. ``where`` is the list index (``int``) or ``"line N"``, ready for
    :class:`~aia.errors.InputError`'s ``record``.

    Raises:
        DataError: as :func:`read_jsonl`; for a JSON list, the file is not UTF-8 or not JSON.
    """
    path = Path(path)
    data = _read_bytes(path)
    if not data.lstrip().startswith(b"["):
        return [(f"line {line.number}", line.value) for line in _parse_lines(path, data)]
    try:
        items = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise DataError(f"not UTF-8 text (byte {e.start})", path=path) from None
    except json.JSONDecodeError as e:
        raise DataError(f"invalid JSON: {e.msg} (column {e.colno})", path=path, record=f"line {e.lineno}") from None
    return list(enumerate(items))


def json_line(value: Any) -> str:
    """``value`` as one JSON Lines line, ``"\\n"`` included: strict JSON (no NaN or
    infinity), non-ASCII text kept readable, U+2028, U+2029 and U+0085 escaped."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False).translate(_SEPARATORS) + "\n"


def write_jsonl(path: str | Path, rows) -> None:
    """Write ``rows`` to ``path`` as UTF-8 JSON Lines (one :func:`json_line` each), replacing the file."""
    Path(path).write_text("".join(json_line(row) for row in rows), encoding="utf-8")


def mend_torn_end(path: str | Path) -> int | None:
    """Make a JSON Lines file that is about to be appended to end at a line boundary.

    A process killed while appending leaves a last line without its ``"\\n"``. If that line
    is not JSON (cut off), it is removed and its line number returned, so the caller can
    say so and write the row again; if it is complete JSON, its newline is added. A missing
    file, or one that ends with ``"\\n"``, is left as it is.

    Returns:
        The line number of the removed line, or ``None``.
    """
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    start = data.rfind(b"\n") + 1
    try:
        tail = data[start:].decode("utf-8-sig")
        if tail.strip():
            json.loads(tail)
    except (UnicodeDecodeError, json.JSONDecodeError):
        with open(path, "r+b") as f:
            f.truncate(start)
        return data.count(b"\n") + 1
    with open(path, "ab") as f:
        f.write(b"\n")
    return None
