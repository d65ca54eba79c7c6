"""What a run writes to disk besides its metrics: checkpoints, the final model, ``latest``.

* ``checkpoint-<step>/``: ``model/`` (``save_pretrained`` + processor, loadable by plain
  transformers), the resumable state (model, optimizer, scheduler, RNG; safetensors, JSON and
  weights-only ``.pt`` files, :mod:`aia.training.state`) and ``trainer_state.json`` (the step,
  the run config, the state's layout and digest);
* ``latest``: the name of the newest complete checkpoint;
* ``final/``: the trained model and processor.

Every folder is written under a temporary name and renamed when complete
(:func:`written_atomically`), so a crash never leaves a half-written one under its real name.
A resume reads only a complete checkpoint inside the run folder, holding only the files aia
writes there, whose digest matches (:func:`start_or_resume`); nothing in it can run code.
Every function here is collective: call it on every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from aia.adapters.base import unwrap
from aia.errors import InputError
from aia.locks import hold_lock
from aia.training.state import check_files, load_state, save_state

if TYPE_CHECKING:
    from aia.training.setup import Run

__all__ = [
    "RESUMABLE_CHANGES",
    "config_changes",
    "latest_checkpoint",
    "run_lock",
    "save_checkpoint",
    "save_final",
    "save_model",
    "start_or_resume",
    "state_digest",
    "written_atomically",
]


def _complete(ckpt: Path) -> bool:
    return (ckpt / "trainer_state.json").is_file() and (ckpt / "model").is_dir()


def _inside(out: Path, ckpt: Path) -> bool:
    """Whether ``ckpt`` is a folder of ``out`` itself, not a link to somewhere else."""
    return not ckpt.is_symlink() and ckpt.resolve().parent == out.resolve()


def _named_by_latest(out: Path) -> Path | None:
    """The checkpoint ``<out>/latest`` names (``None`` without one).

    Raises:
        InputError: it names anything but a ``checkpoint-<step>`` folder of ``out`` (an absolute
            path, a path with a separator or ``..``, a link): a resume reads only this run's folder.
    """
    pointer = out / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text(errors="replace").strip()
    if not re.fullmatch(r"checkpoint-\d+", name) or not _inside(out, out / name):
        raise InputError(f"names {name[:200]!r}, not a checkpoint-<step> folder of this run; refusing to follow it: "
                         "write the name of a checkpoint here (or remove the file)", path=pointer)
    return out / name


def _step_of(ckpt: Path) -> int:
    try:
        return int(ckpt.name.split("-", 1)[1])
    except (IndexError, ValueError):
        return -1


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint to resume from: the one ``<out>/latest`` names if it is complete, else the
    newest complete ``checkpoint-<step>`` (said on stderr, with the reason); ``None`` when the
    folder holds no checkpoint at all.

    Raises:
        InputError: the folder holds checkpoints but none is complete (resuming would lose
            them; ``train.resume=false`` starts over on purpose), or ``latest`` names something
            else than a checkpoint of this folder.
    """
    named = _named_by_latest(out)
    if named is not None and _complete(named):
        return named
    found = sorted((c for c in out.glob("checkpoint-*") if c.is_dir() and _inside(out, c)), key=_step_of)
    complete = [c for c in found if _complete(c)]
    if complete:
        why = f"'latest' names {named.name}, which is missing or incomplete" if named else "'latest' is missing"
        print(f"aia train: {why}; resuming from {complete[-1].name}, the newest complete checkpoint", file=sys.stderr)
        return complete[-1]
    if found:
        raise InputError(
            f"holds {len(found)} checkpoint(s), none complete ({', '.join(c.name for c in found)}); "
            "nothing to resume from: give train.resume=false to start over (it removes them)",
            path=out,
        )
    return None


#: run-config fields a resumed run may change (applied from the resume on, and logged); any
#: other change is refused, since the checkpoint's state was built with the old value
RESUMABLE_CHANGES = ("optim.lr", "optim.min_lr", "train.max_steps", "train.log_every", "train.save_every", "train.save_total_limit",
                     "train.intensity_every", "train.progress", "train.resume", "train.output_dir", "train.skip_nonfinite")


def config_changes(saved: dict, new: dict, done: int) -> list[str]:
    """Check a resumed run's config against the one saved with its checkpoint.

    Returns:
        ``["section.field: old -> new", ...]`` for the allowed changes (to log).

    Raises:
        InputError: a field that cannot change mid-run changed, or ``train.max_steps`` is
            below the steps already done; the message names the field and both values.
    """
    allowed, refused = [], []
    for section, fields in new.items():
        for key, value in (fields or {}).items():
            name, old = f"{section}.{key}", (saved.get(section) or {}).get(key, value)
            if old == value:
                continue
            (allowed if name in RESUMABLE_CHANGES else refused).append(f"{name}: {old!r} -> {value!r}")
    if refused:
        raise InputError(
            "cannot resume with a changed " + "; ".join(refused) + " (the checkpoint was trained with the old "
            "value): set it back, or start a new run (another train.output_dir, or train.resume=false)"
        )
    steps = (new.get("train") or {}).get("max_steps")
    if isinstance(steps, int) and steps < done:
        raise InputError(f"train.max_steps={steps} but this run has already done {done} steps; "
                         f"set it >= {done} to continue, or start a new run")
    return allowed


def state_digest(folder: Path) -> dict[str, str]:
    """sha256 of every state file of a checkpoint but the safetensors ones (optimizer, scheduler,
    RNG, DeepSpeed's files): a resume first checks that they are the files this run wrote. They
    are read as JSON or weights-only, so a changed file cannot run code; the digest stops a
    resume from another state than this run's. safetensors files hold tensors only and are not hashed."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] != "model" and rel.suffix != ".safetensors" and rel.name != "trainer_state.json":
            digests[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _check_digest(ckpt: Path, state: dict) -> None:
    """Refuse a checkpoint whose state files are not the ones this run wrote, naming the first."""
    want = state.get("state_sha256")
    if want is None:
        raise InputError("records no digest of the saved state; refusing to load state that this version of aia "
                         "did not write (start over with train.resume=false)", path=ckpt / "trainer_state.json")
    got = state_digest(ckpt)
    for name in sorted(want.keys() | got.keys()):
        if want.get(name) != got.get(name):
            what = "is missing" if name not in got else "was not written by this run" if name not in want else (
                "does not match the digest recorded when it was written (changed or replaced)")
            raise InputError(f"{what}; refusing to resume from this checkpoint", path=ckpt / name)


def _trainer_state(ckpt: Path) -> dict:
    path = ckpt / "trainer_state.json"
    try:
        state = json.loads(path.read_text())
        if not isinstance(state, dict) or not isinstance(state.get("step"), int):
            raise ValueError("no step count")
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read it ({' '.join(str(err).split())[:200]}); restore it, or remove this "
                         "checkpoint to resume from an earlier one", path=path) from None
    return state


def start_or_resume(run: Run, out: Path, resume: bool) -> tuple[int, Path | None]:
    """Load the newest complete checkpoint (``resume``) or remove earlier ones (not ``resume``).

    ``run`` is the prepared :class:`aia.training.setup.Run`. Before any state is read, the
    checkpoint's files are checked: only the ones aia writes there
    (:func:`aia.training.state.check_files`), matching the digest recorded when they were
    written, and the run's config against the one saved with them (:func:`config_changes`).

    Returns:
        ``(start, checkpoint)``: the number of steps already done and the checkpoint they
        come from (``0, None`` for a fresh start).

    Raises:
        InputError: any of those checks fails, or a state file cannot be loaded (one line
            naming it; the run never continues from another state than the checkpoint's).
    """
    accelerator = run.accelerator
    resume_from = latest_checkpoint(out) if resume else None
    stale = sorted(out.glob("checkpoint-*")) if not resume else []
    if stale and accelerator.is_main_process:  # starting over: an old checkpoint must not outlive the new ones
        print(f"aia train: starting over in {out}: removing {len(stale)} earlier checkpoint(s)", file=sys.stderr)
        for old in stale:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:  # a link is removed, never what it points at
                old.unlink()
        (out / "latest").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if resume_from is None:
        return 0, None
    state = _trainer_state(resume_from)
    check_files(resume_from)
    _check_digest(resume_from, state)
    for change in config_changes(state.get("config", {}), run.cfg.to_dict(), state["step"]):
        if accelerator.is_main_process:
            print(f"aia train: resuming with {change}", file=sys.stderr)
    load_state(accelerator, run.step_module, run.optimizer, run.scheduler, resume_from, state)
    return state["step"], resume_from


@contextlib.contextmanager
def written_atomically(accelerator, path: Path) -> Iterator[Path]:
    """Fill a temporary sibling folder of ``path`` (yielded, on every rank), then rename it to ``path``.

    A leftover temporary folder of an earlier crash is removed first and the folder created
    before any rank writes into it. The rename (which replaces an existing ``path``) is the main
    process's, after every rank has left the block, and happens only if the block completes:
    an exception leaves ``path`` as it was (and the temporary folder is removed, which frees
    the space of a write that failed on a full disk).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        yield tmp
    except BaseException:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the run, so that a second ``aia train`` on the same folder refuses to
    start instead of interleaving its logs and checkpoints with this one's. Only the global rank 0
    process locks (it is the one that writes); the lock goes with the process, even on kill -9.

    Raises:
        InputError: another run holds the lock, or the folder cannot be written (read-only, a file).
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    with hold_lock(
        out / ".lock",
        out,
        busy="another aia train ({holder}) is running in this folder; wait for it or use another train.output_dir",
        unwritable="cannot write the run here ({reason}); give a writable train.output_dir",
    ):
        yield


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_model(accelerator, step_module, processor, path: Path) -> None:
    """``save_pretrained`` the model (and processor) into ``path``.

    The weights come from ``accelerator.get_state_dict``, which gathers FSDP / ZeRO-3
    shards on every rank; the main process writes them. PEFT models save their LoRA
    adapter (load with ``peft.AutoPeftModel``), others the full model.
    """
    state = accelerator.get_state_dict(step_module)  # collective under FSDP / ZeRO-3
    if not accelerator.is_main_process:
        return
    state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    core = accelerator.unwrap_model(step_module)
    unknown = sorted(set(state) - set(core.model.state_dict()))
    if unknown:  # a gather that named the weights otherwise would write a model that loads without them
        raise RuntimeError(
            f"the gathered weights name {len(unknown)} tensors the model does not have (e.g. {unknown[0]}); "
            "nothing was written"
        )
    settings = core.adapter.generation_settings()  # e.g. Janus's boi_token_id
    generation = getattr(unwrap(core.model), "generation_config", None)
    for key, value in settings.items() if generation is not None else ():
        current = getattr(generation, key, None)
        setattr(generation, key, {**current, **value} if isinstance(current, dict) and isinstance(value, dict) else value)
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar through the training bar at every save
    try:
        core.model.save_pretrained(path, state_dict=state, safe_serialization=True)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    if processor is not None:
        processor.save_pretrained(path)


@contextlib.contextmanager
def _writing(out: Path, what: str, step: int) -> Iterator[None]:
    """Turn a failed write (full disk, read-only folder) into one line; what was complete stays."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, SafetensorError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else " ".join(str(err).split())[:200]
        latest = (out / "latest").read_text().strip() if (out / "latest").is_file() else None
        raise InputError(
            f"cannot write {what} ({reason}); the run stopped after step {step}, "
            + (f"its last complete checkpoint is {latest}" if latest else "with no complete checkpoint")
            + ": make room (or fix the folder) and rerun the same command to resume",
            path=out,
        ) from None


def save_checkpoint(run: Run, out: Path, step: int, skipped_in_a_row: int = 0) -> Path:
    """Write ``checkpoint-<step>``, point ``latest`` at it, keep ``train.save_total_limit`` checkpoints.
    ``skipped_in_a_row``: the non-finite steps skipped up to it (``train.skip_nonfinite``), for a resume.

    Raises:
        InputError: the folder cannot be written (full disk, read-only); nothing complete is lost.
    """
    accelerator, cfg, final = run.accelerator, run.cfg, out / f"checkpoint-{step}"
    with _writing(out, final.name, step):
        with written_atomically(accelerator, final) as tmp:
            kind = save_state(accelerator, run.step_module, run.optimizer, run.scheduler, tmp)
            save_model(accelerator, run.step_module, run.processor, tmp / "model")
            accelerator.wait_for_everyone()  # every rank's state files are written before they are digested
            if accelerator.is_main_process:
                state = {"step": step, "config": cfg.to_dict(), "layout": kind, "processes": accelerator.num_processes,
                         "state_sha256": state_digest(tmp), "skipped_in_a_row": skipped_in_a_row}
                (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
        if accelerator.is_main_process:
            _write_text_atomic(out / "latest", final.name)
    if accelerator.is_main_process:
        kept = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -cfg.train.save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def save_final(run: Run, out: Path, step: int) -> Path:
    """Write the trained model and processor to ``<out>/final`` (after ``step``); returns that folder."""
    final = out / "final"
    with _writing(out, final.name, step), written_atomically(run.accelerator, final) as tmp:
        save_model(run.accelerator, run.step_module, run.processor, tmp)
    run.accelerator.wait_for_everyone()
    return final
