"""Known, harmless library messages that every ``aia`` command would otherwise print, silenced
unless ``aia --debug``.

Each is dropped by a :class:`logging.Filter` on the library's own logger (which exists before
the library is imported: a logger is looked up by name), matched by how the message begins,
so every other message of those loggers still shows:

* DeepSpeed, at import on a machine without a GPU: "Setting accelerator to CPU. If you have
  GPU or other accelerator, we were unable to detect it." (on stdout), and its
  "Setting ds_accelerator to ..." lines;
* accelerate, at every checkpoint of a model with tied weights (the input embedding and the
  output head): "Removed shared tensor {...} while saving. This should be OK, ...": the tied
  copy is restored from the config on loading.
"""

from __future__ import annotations

import logging

__all__ = ["NOISE", "silence"]

#: logger name -> the beginnings of its messages that are dropped
NOISE = {
    "DeepSpeed": ("Setting accelerator to CPU", "Setting ds_accelerator to"),
    "accelerate.utils.other": ("Removed shared tensor",),
}


class _Drop(logging.Filter):
    """Drops the records whose message begins with one of ``prefixes``."""

    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.getMessage()).startswith(self.prefixes)


def silence() -> None:
    """Drop the messages of :data:`NOISE` for the rest of the process (calling it again adds nothing)."""
    for name, prefixes in NOISE.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(prefixes))
