"""One writer per output: an advisory file lock held while a command writes.

``aia train`` holds one on its run folder, ``aia answer`` / ``generate`` / ``eval`` on their
outputs, so that a second run into the same place refuses to start instead of interleaving
its rows or checkpoints with the first one's. The lock goes with the process, even on kill -9.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from aia.errors import InputError

__all__ = ["hold_lock"]


@contextlib.contextmanager
def hold_lock(lock: Path, out: Path, *, busy: str, unwritable: str) -> Iterator[None]:
    """Hold the lock file ``lock`` (its folder created) while the block runs.

    Args:
        lock: the lock file; it holds the holder's pid, shown to a second process.
        out: the output the lock guards, named in the errors.
        busy: the error when another process holds it; ``{holder}`` is filled in.
        unwritable: the error when the lock cannot be created; ``{reason}`` is filled in.

    Raises:
        InputError: another process holds the lock, or its folder cannot be written.
    """
    import fcntl

    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock, "a+")  # noqa: SIM115  (held while the block runs)
    except OSError as err:  # read-only, not a folder, no permission: before any work
        raise InputError(unwritable.format(reason=err.strerror or err), path=out) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(busy.format(holder=holder), path=out) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
