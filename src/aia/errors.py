"""The errors a user's input can cause: one small hierarchy, one line each.

Every expected failure (a bad data file, record, image, config key or model
directory) raises an :class:`InputError` whose message names the file, the record or
line, and the field, in that order, so the CLI can print it as one line::

    data/und.jsonl: line 3: 'conversations': each turn must be {'from': ..., 'value': str}

The classes subclass :class:`ValueError` so code that catches ``ValueError`` keeps
working.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError", "DataError", "ImageError", "InputError"]


class InputError(ValueError):
    """A user input is unusable; the message names where (file, record/line, field).

    Args:
        message: what is wrong.
        path: the file (or directory) the input came from.
        record: where in it: ``"line 3"``, ``"record 7"`` or a number (read as a record index).
        field: the key or field at fault.
    """

    def __init__(self, message: str, *, path: str | Path | None = None, record: str | int | None = None,
                 field: str | None = None):
        self.path, self.record, self.field, self.reason = path, record, field, message
        where = []
        if path is not None:
            where.append(str(path))
        if record is not None:
            where.append(f"record {record}" if isinstance(record, int) else str(record))
        if field is not None:
            where.append(repr(field))
        super().__init__(": ".join([*where, message]))


class DataError(InputError):
    """A data file or record does not follow the data format, or holds no usable sample."""


class ImageError(DataError):
    """An image file is missing or cannot be decoded."""


class ConfigError(InputError):
    """A config key is unknown, mistyped or out of range."""
