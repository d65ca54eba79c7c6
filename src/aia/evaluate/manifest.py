"""What a resumable output was made with, so that a rerun continues it only with the same inputs.

A resumable output (``aia answer``'s predictions file; later ``aia generate``'s and ``aia eval``'s
folders) keeps a manifest beside it, ``<out>.manifest.json``: one section per part of the
output (a benchmark), each holding the model's fingerprint (:func:`model_fingerprint`), every
setting that changes the output, and the digest of the questions or prompts. A rerun
continues the output only when its section is equal; otherwise it stops with one line naming
the first field that differs (:func:`check_manifest`), and ``overwrite`` starts that part
over. :func:`output_lock` keeps a second run from writing into the same output at once,
:func:`writable_output` checks before any work that the output can be written where it is, and
:class:`Interrupted` is how a command stopped by Ctrl-C says where it stopped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from aia.errors import InputError
from aia.locks import hold_lock

__all__ = [
    "Interrupted",
    "check_manifest",
    "digest",
    "manifest_path",
    "model_fingerprint",
    "output_lock",
    "writable_output",
]

#: the files of a model directory whose bytes make its fingerprint (weights, adapters, their indexes)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")
_CHUNK = 1 << 24


def digest(value) -> str:
    """sha256 of a JSON-serialisable value (keys sorted), e.g. the questions' rows."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, ensure_ascii=True, default=str).encode()).hexdigest()


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


def _stamp(path: Path) -> tuple[int, int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns, stat.st_ino


#: model folder fingerprints already computed, by folder and its files' size, time and inode
_FOLDER_FINGERPRINTS: dict[tuple, dict[str, str]] = {}


def model_fingerprint(model) -> dict[str, str]:
    """``{"config", "weights"}``: sha256 of a model's config and of its weights.

    ``model`` is a model directory (its ``config.json`` and the bytes of every weights file,
    read once per process while their size, time and inode stay the same: about as long as
    loading them) or a loaded model (its config and every tensor of its ``state_dict``). Two checkpoints of one architecture share their safetensors headers
    and config, so the weights themselves are hashed: a fine-tuned model is another model.
    """
    if isinstance(model, str | os.PathLike):
        folder = Path(model)
        config = folder / "config.json"
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))
        # one read per model and process (aia eval asks once per benchmark), again when a file changes
        key = (str(folder.resolve()), *((p.name, *_stamp(p)) for p in [config, *files] if p.is_file()))
        if key not in _FOLDER_FINGERPRINTS:
            weights = hashlib.sha256()
            for path in files:
                weights.update(f"{path.name}\0{_file_sha256(path)}\0".encode())
            _FOLDER_FINGERPRINTS[key] = {
                "config": _file_sha256(config) if config.is_file() else "none",
                "weights": weights.hexdigest(),
            }
        return dict(_FOLDER_FINGERPRINTS[key])
    import torch

    weights = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        data = tensor.detach().cpu().contiguous()
        weights.update(f"{name}\0{data.dtype}\0{tuple(data.shape)}\0".encode())
        weights.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return {
        "config": digest(model.config.to_dict()) if hasattr(model, "config") else "none",
        "weights": weights.hexdigest(),
    }


def manifest_path(out: Path) -> Path:
    """Where the manifest of output ``out`` (a file or folder) lives: ``<out>.manifest.json`` beside it."""
    return out.with_name(out.name + ".manifest.json")


def _read(path: Path) -> dict:
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(
            f"cannot read it ({' '.join(str(err).split())[:200]}); remove it and give --overwrite to "
            "start the output over",
            path=path,
        ) from None
    if not isinstance(recorded, dict):
        raise InputError("not a manifest (a JSON object); remove it and give --overwrite", path=path)
    return recorded


def _write(path: Path, recorded: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _shown(value) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _first_difference(old: dict, new: dict, prefix: str = "") -> str | None:
    for key in [*new, *(k for k in old if k not in new)]:
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _first_difference(a, b, f"{prefix}{key}.")
            if inner:
                return inner
        elif a != b:
            return f"{prefix}{key} ({_shown(a)}, now {_shown(b)})"
    return None


def check_manifest(out: Path, section: str, fields: dict, *, overwrite: bool = False, has_output: bool = False,
                   record: bool = True) -> bool:
    """Record ``fields`` as what ``section`` of output ``out`` is made with, or check them against
    the record of an earlier run.

    Args:
        out: the output (file or folder); the manifest is :func:`manifest_path` of it.
        section: the part of the output (e.g. the benchmark).
        fields: JSON values, in the order they are compared (the model first).
        overwrite: the caller starts ``section`` over: the record is replaced whatever it was.
        has_output: ``out`` already holds rows or files of ``section`` (without any, a record
            of other fields, left by a run that stopped before its first row, is replaced).
        record: write the record; False checks only (``aia eval`` checks every output before its first
            model runs).

    Returns:
        ``True`` when the existing output of ``section`` may be continued, ``False`` when the
        caller must start it over (``overwrite``).

    Raises:
        InputError: the recorded fields differ (naming the first that does, and both values),
            or ``out`` holds output of ``section`` but no record of what made it.
    """
    path = manifest_path(out)
    recorded = _read(path) if path.is_file() else {}
    fields = json.loads(json.dumps(fields, default=str))  # as it will read back
    old = recorded.get(section)
    if not overwrite and old is None and has_output:
        raise InputError(
            f"holds {section} output but no record of what made it (an older aia, or written by hand): "
            "give --overwrite to start it over, or another --out",
            path=out,
        )
    if not overwrite and old is not None and old != fields and has_output:
        raise InputError(
            f"{section} {'were' if section.endswith('s') else 'was'} made with another "
            f"{_first_difference(old, fields)}: continuing would mix "
            "the two; give --overwrite to start it over, or another --out",
            path=out,
        )
    if record and old != fields:
        _write(path, {**recorded, section: fields})
    return not overwrite


@contextlib.contextmanager
def output_lock(out: Path, command: str) -> Iterator[None]:
    """Hold ``.<name>.lock`` beside output ``out`` while writing it, so that a second run into the
    same output refuses to start instead of writing every row twice (:func:`aia.locks.hold_lock`).

    Raises:
        InputError: another process holds it.
    """
    with hold_lock(
        out.with_name(f".{out.name}.lock"),
        out,
        busy=f"another {command} ({{holder}}) is writing it; wait for it or give another --out",
        unwritable="cannot write here ({reason}); give a writable place",
    ):
        yield


def writable_output(out: Path, *, folder: bool) -> Path:
    """Check, before any work, that output ``out`` can be written: a folder (``folder``) or a file
    where it is asked for, its parent (where its lock and manifest go) creatable and writable,
    and ``out`` itself writable when it exists. Writes are tried (and undone), so a read-only
    mount is seen as well as permissions.

    Returns:
        ``out``, absolute when it was ``.``, ``..`` or ended so (its lock and manifest go beside it).

    Raises:
        InputError: naming ``out`` and why (a file where a folder is asked for, or the other way
            round; a file in the way of its parent; no permission; a read-only file system).
    """
    out = Path(out)
    if out.name in ("", ".", ".."):  # its lock and manifest go beside it: name it by its absolute path
        out = Path(os.path.abspath(out))
        if not out.name:
            raise InputError("give a folder below the root", path=out)
    if folder and out.exists() and not out.is_dir():
        raise InputError("is a file; give a folder (or a new name)", path=out)
    if not folder and out.is_dir():
        raise InputError("is a folder; give a file name", path=out)
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise InputError(f"cannot write here ({blocker} is a file, not a folder); give a writable place", path=out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for place in (out.parent, out) if out.is_dir() else (out.parent,):
            with tempfile.TemporaryFile(dir=place):
                pass
    except OSError as err:
        raise InputError(f"cannot write here ({err.strerror or err}); give a writable place", path=out) from None
    return out


class Interrupted(KeyboardInterrupt):
    """Ctrl-C while a resumable output was written: the message says where it stopped
    (``interrupted at image K of N; rerun the same command to resume``); the CLI prints it as
    one line and exits with status 130."""
