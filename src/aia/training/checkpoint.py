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
import json
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

from aia.training.config import RunConfig

__all__ = [
    "latest_checkpoint",
    "save_checkpoint",
    "save_final",
    "save_model",
    "start_or_resume",
    "written_atomically",
]


def latest_checkpoint(out: Path) -> Path | None:
    """The checkpoint ``<out>/latest`` names, if it is complete; else ``None``."""
    pointer = out / "latest"
    if pointer.is_file():
        ckpt = out / pointer.read_text().strip()
        if (ckpt / "trainer_state.json").is_file():
            return ckpt
    return None


def start_or_resume(accelerator, out: Path, resume: bool) -> tuple[int, Path | None]:
    """Load the latest checkpoint (``resume``) or remove earlier ones (not ``resume``).

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
    accelerator.load_state(str(resume_from))
    return json.loads((resume_from / "trainer_state.json").read_text())["step"], resume_from


@contextlib.contextmanager
def written_atomically(accelerator, path: Path) -> Iterator[Path]:
    """Fill a temporary sibling folder of ``path`` (yielded, on every rank), then rename it to ``path``.

    A leftover temporary folder of an earlier crash is removed first. The rename (which
    replaces an existing ``path``) is the main process's and happens only if the block
    completes: an exception leaves ``path`` as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    yield tmp
    if accelerator.is_main_process:
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)


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
    accelerator.unwrap_model(step_module).model.save_pretrained(path, state_dict=state, safe_serialization=True)
    if processor is not None:
        processor.save_pretrained(path)


def save_checkpoint(accelerator, step_module, processor, out: Path, step: int, cfg: RunConfig) -> Path:
    """Write ``checkpoint-<step>``, point ``latest`` at it, keep ``train.save_total_limit`` checkpoints."""
    final = out / f"checkpoint-{step}"
    with written_atomically(accelerator, final) as tmp:
        accelerator.save_state(str(tmp))
        save_model(accelerator, step_module, processor, tmp / "model")
        if accelerator.is_main_process:
            (tmp / "trainer_state.json").write_text(json.dumps({"step": step, "config": cfg.to_dict()}, indent=1))
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
