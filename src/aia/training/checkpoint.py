"""What a run writes to disk besides its metrics: checkpoints, the final model, ``latest``.

* ``checkpoint-<step>/``: ``model/`` (``save_pretrained`` + processor, loadable by plain
  transformers), accelerate's state (model, optimizer, scheduler, RNG) and
  ``trainer_state.json`` (the step and the run config);
* ``latest``: the name of the newest complete checkpoint;
* ``final/``: the trained model and processor.

Every folder is written under a temporary name and renamed when complete
(:func:`written_atomically`), so a crash never leaves a half-written one under its real name.
Every function here is collective: call it on every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from aia.adapters.base import unwrap
from aia.errors import InputError
from aia.training.config import RunConfig

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
            them; ``train.resume=false`` starts over on purpose).
    """
    pointer = out / "latest"
    named = out / pointer.read_text().strip() if pointer.is_file() else None
    if named is not None and _complete(named):
        return named
    found = sorted((c for c in out.glob("checkpoint-*") if c.is_dir()), key=_step_of)
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
    """sha256 of every pickled file accelerate's ``save_state`` wrote (optimizer, scheduler, RNG,
    sampler state): resuming unpickles them, which can run code, so a resume first checks that
    they are the files this run wrote. safetensors files hold tensors only and are not hashed."""
    digests = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and rel.parts[0] != "model" and rel.suffix != ".safetensors" and rel.name != "trainer_state.json":
            digests[str(rel)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return digests


def _check_digest(ckpt: Path, state: dict) -> None:
    """Refuse to unpickle a checkpoint whose state files are not the ones this run wrote."""
    want = state.get("state_sha256")
    if want is None:
        raise InputError("trainer_state.json records no digest of the saved state; refusing to load pickled state "
                         "that this version of aia did not write (start over with train.resume=false)", path=ckpt)
    if state_digest(ckpt) != want:
        raise InputError("the saved state files do not match the digest recorded when they were written "
                         "(changed or replaced); refusing to load them", path=ckpt)


def start_or_resume(accelerator, out: Path, resume: bool, cfg: RunConfig | None = None) -> tuple[int, Path | None]:
    """Load the newest complete checkpoint (``resume``) or remove earlier ones (not ``resume``).

    Before anything is unpickled, the checkpoint's state files are checked against the digest
    recorded when they were written, and ``cfg`` (when given) against the config saved with
    the checkpoint (:func:`config_changes`).

    Returns:
        ``(start, checkpoint)``: the number of steps already done and the checkpoint they
        come from (``0, None`` for a fresh start).
    """
    resume_from = latest_checkpoint(out) if resume else None
    stale = sorted(out.glob("checkpoint-*")) if not resume else []
    if stale and accelerator.is_main_process:  # starting over: an old checkpoint must not outlive the new ones
        print(f"aia train: starting over in {out}: removing {len(stale)} earlier checkpoint(s)", file=sys.stderr)
        for old in stale:
            shutil.rmtree(old)
        (out / "latest").unlink(missing_ok=True)
    accelerator.wait_for_everyone()
    if resume_from is None:
        return 0, None
    state = json.loads((resume_from / "trainer_state.json").read_text())
    _check_digest(resume_from, state)
    if cfg is not None:
        for change in config_changes(state.get("config", {}), cfg.to_dict(), state["step"]):
            if accelerator.is_main_process:
                print(f"aia train: resuming with {change}", file=sys.stderr)
    accelerator.load_state(str(resume_from))
    return state["step"], resume_from


@contextlib.contextmanager
def written_atomically(accelerator, path: Path) -> Iterator[Path]:
    """Fill a temporary sibling folder of ``path`` (yielded, on every rank), then rename it to ``path``.

    A leftover temporary folder of an earlier crash is removed first and the folder created
    before any rank writes into it. The rename (which replaces an existing ``path``) is the main
    process's, after every rank has left the block, and happens only if the block completes:
    an exception leaves ``path`` as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    yield tmp
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``<out>/.lock`` for the run, so that a second ``aia train`` on the same folder refuses to
    start instead of interleaving its logs and checkpoints with this one's. Only the global rank 0
    process locks (it is the one that writes); the lock goes with the process, even on kill -9."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    path = out / ".lock"
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"another aia train ({holder}) is running in this folder; wait for it or use "
                             "another train.output_dir", path=out) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
    core.model.save_pretrained(path, state_dict=state, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(path)


def save_checkpoint(
    accelerator, step_module, processor, out: Path, step: int, cfg: RunConfig, skipped_in_a_row: int = 0
) -> Path:
    """Write ``checkpoint-<step>``, point ``latest`` at it, keep ``train.save_total_limit`` checkpoints.
    ``skipped_in_a_row``: the non-finite steps skipped up to it (``train.skip_nonfinite``), for a resume."""
    final = out / f"checkpoint-{step}"
    with written_atomically(accelerator, final) as tmp:
        accelerator.save_state(str(tmp))
        save_model(accelerator, step_module, processor, tmp / "model")
        accelerator.wait_for_everyone()  # every rank's state files are written before they are digested
        if accelerator.is_main_process:
            state = {"step": step, "config": cfg.to_dict(), "state_sha256": state_digest(tmp),
                     "skipped_in_a_row": skipped_in_a_row}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    if accelerator.is_main_process:
        _write_text_atomic(out / "latest", final.name)
        kept = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in kept[: -cfg.train.save_total_limit]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def save_final(accelerator, step_module, processor, out: Path) -> Path:
    """Write the trained model and processor to ``<out>/final``; returns that folder."""
    final = out / "final"
    with written_atomically(accelerator, final) as tmp:
        save_model(accelerator, step_module, processor, tmp)
    accelerator.wait_for_everyone()
    return final
