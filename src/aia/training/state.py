"""The resumable state of a run in a checkpoint folder, written in formats that cannot run code.

====================================  ==========================================================
file                                  holds
====================================  ==========================================================
``model.safetensors``                 every tensor of the step module (parameters, buffers)
``model-rank<r>.safetensors``         FSDP2: process ``r``'s shards of them
``optimizer.pt``                      the optimizer's state (tensors, numbers, strings)
``optimizer-rank<r>.pt``              FSDP2: process ``r``'s shards of it
``deepspeed/*.pt``                    DeepSpeed: its engine's own files (model, optimizer partitions)
``scheduler.json``                    the LR scheduler's ``state_dict``
``rng-rank<r>.json``                  process ``r``'s random states (Python, NumPy, torch, CUDA)
                                      and accelerate's micro-batch counter
====================================  ==========================================================

Nothing is unpickled with ``weights_only=False``: the ``.pt`` files go through torch's
weights-only unpickler, which builds tensors, numbers, strings and containers (and, for
DeepSpeed, its loss scaler and ZeRO stage, allowed by name) and refuses anything else. A
checkpoint that holds any other file is refused before anything is read (:func:`check_files`),
and a file that fails to load stops the resume with one line naming it: resuming from another
state would silently change the run. The digest of these files (``state_sha256`` in
``trainer_state.json``) stays the check that they are the ones this run wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import random
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from aia.errors import InputError

__all__ = ["check_files", "layout", "load_state", "save_state"]

#: the names a checkpoint folder may hold; ``model/`` (``save_pretrained``, for users) is never read on resume
ALLOWED = re.compile(
    r"trainer_state\.json|scheduler\.json|model|model\.safetensors|optimizer\.pt|deepspeed"
    r"|model-rank\d+\.safetensors|optimizer-rank\d+\.pt|rng-rank\d+\.json"
)
_DEEPSPEED_TAG = "deepspeed"


def layout(accelerator, module: torch.nn.Module) -> str:
    """How the model and optimizer state are written: ``"deepspeed"`` (the engine's own files),
    ``"sharded"`` (FSDP2: each process its shards) or ``"full"`` (the main process, everything)."""
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None:
        return "deepspeed"
    from torch.distributed.tensor import DTensor

    return "sharded" if any(isinstance(p, DTensor) for p in module.parameters()) else "full"


def check_files(ckpt: Path) -> None:
    """Refuse a checkpoint holding a file aia does not write there, or a link (which could point anywhere).

    Raises:
        InputError: naming the first such file.
    """
    for path in sorted(ckpt.iterdir()):
        inner = sorted(path.iterdir()) if path.name == _DEEPSPEED_TAG and path.is_dir() else []
        for entry in [path, *inner]:
            known = ALLOWED.fullmatch(entry.name) if entry is path else entry.suffix == ".pt"
            if entry.is_symlink() or not known or (entry is not path and not entry.is_file()):
                raise InputError(
                    "not a file aia writes in a checkpoint (a link, or another tool's or an older aia's file); "
                    "refusing to resume from this checkpoint: remove the file, or start over with train.resume=false",
                    path=entry,
                )


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def _tensors_to_save(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """This process's part of ``state`` on the CPU; a tensor sharing storage with an earlier one
    (tied weights) is copied, since safetensors stores each storage once."""
    seen, tensors = set(), {}
    for key, value in state.items():
        tensor = _local(value).detach().cpu()
        storage = tensor.untyped_storage().data_ptr()
        tensors[key] = tensor.clone() if storage in seen and tensor.numel() else tensor.contiguous()
        seen.add(storage)
    return tensors


def _optimizer_to_save(optimizer) -> dict:
    """The optimizer's ``state_dict`` with FSDP2's sharded tensors as this process's shards; which
    ones were sharded is listed under ``"sharded"`` (``[param index, key]``) to rebuild them."""
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()
    sharded = [[i, k] for i, values in state["state"].items() for k, v in values.items() if isinstance(v, DTensor)]
    state["state"] = {i: {k: _local(v) for k, v in values.items()} for i, values in state["state"].items()}
    return {"optimizer": state, "sharded": sharded}


def _rng_state(accelerator) -> dict:
    version, mt, gauss = random.getstate()
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(mt), gauss],
        "numpy": [name, key.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
        "accelerator_step": accelerator.step,  # accelerate's micro-batch count: when gradients sync
    }
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def save_state(accelerator, module, optimizer, scheduler, folder: Path) -> str:
    """Write the model, optimizer, scheduler and random states into ``folder`` (collective: call it
    on every rank). ``module`` is the step module as ``accelerator.prepare`` returned it.

    Returns:
        The :func:`layout` written (recorded in ``trainer_state.json``).
    """
    from safetensors.torch import save_file

    rank, kind = accelerator.process_index, layout(accelerator, module)
    if kind == "deepspeed":
        module.save_checkpoint(str(folder), tag=_DEEPSPEED_TAG, save_latest=False)
    elif kind == "sharded" or accelerator.is_main_process:
        suffix = f"-rank{rank}" if kind == "sharded" else ""
        core = accelerator.unwrap_model(module)
        save_file(_tensors_to_save(core.state_dict()), folder / f"model{suffix}.safetensors")
        torch.save(_optimizer_to_save(optimizer), folder / f"optimizer{suffix}.pt")
    (folder / f"rng-rank{rank}.json").write_text(json.dumps(_rng_state(accelerator)))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / "scheduler.json").write_text(json.dumps(scheduler.state_dict()))
        for script in folder.glob("zero_to_*.py"):  # DeepSpeed's recovery scripts: not state, never run by aia
            script.unlink()
    return kind


@contextlib.contextmanager
def _loading(path: Path) -> Iterator[None]:
    """Turn any failure to read or apply ``path`` into one line naming it."""
    try:
        yield
    except InputError:
        raise
    except Exception as err:  # a truncated, tampered or foreign file: stop, never resume from another state
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        if isinstance(err, pickle.UnpicklingError):  # torch's weights-only refusal: its text spans a page
            reason = "it holds other objects than tensors and numbers, which aia never writes; not loaded"
        raise InputError(
            f"cannot load this saved state ({reason}); nothing was resumed: restore the file, "
            "resume from an earlier checkpoint (remove this one) or start over with train.resume=false",
            path=path,
        ) from None


@contextlib.contextmanager
def _weights_only(*allowed) -> Iterator[None]:
    """Every ``torch.load`` inside is weights-only, even one that asks otherwise (DeepSpeed's), with
    ``allowed`` classes as the only ones it may build."""
    saved = {k: os.environ.pop(k, None) for k in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(list(allowed)):
            yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def _load_deepspeed(engine, folder: Path) -> None:
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum

    with _loading(folder / _DEEPSPEED_TAG), _weights_only(LossScaler, DynamicLossScaler, ZeroStageEnum):
        loaded, _ = engine.load_checkpoint(str(folder), tag=_DEEPSPEED_TAG, load_lr_scheduler_states=False)
        if loaded is None:  # DeepSpeed only logs a warning when the files are missing
            raise FileNotFoundError("DeepSpeed found no checkpoint files in it")


def _load_model(core, path: Path) -> None:
    from safetensors.torch import load_file

    with _loading(path):
        saved = load_file(path)
        target = core.state_dict()
        if saved.keys() != target.keys():
            other = sorted(saved.keys() ^ target.keys())
            raise ValueError(f"it holds other tensors than this model has ({len(other)} differ, e.g. {other[0]})")
        with torch.no_grad():
            for key, value in target.items():
                local = _local(value)
                if local.shape != saved[key].shape:
                    raise ValueError(f"{key}: shape {tuple(saved[key].shape)}, the model's is {tuple(local.shape)}")
                local.copy_(saved[key])


def _load_optimizer(optimizer, path: Path) -> None:
    from torch.distributed.tensor import DTensor

    with _loading(path):
        saved = torch.load(path, map_location="cpu", weights_only=True)
        state = saved["optimizer"]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for index, key in saved["sharded"]:  # FSDP2: this process's shards back into the parameters' layout
            p, local = params[index], state["state"][index][key]
            state["state"][index][key] = DTensor.from_local(
                local.to(p.device), p.device_mesh, p.placements, run_check=False, shape=p.shape, stride=p.stride()
            )
        optimizer.load_state_dict(state)


def _set_rng_state(accelerator, path: Path) -> None:
    with _loading(path):
        state = json.loads(path.read_text())
        version, mt, gauss = state["python"]
        name, key, pos, has_gauss, cached = state["numpy"]
        random.setstate((version, tuple(mt), gauss))
        np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
        if torch.cuda.is_available() and "cuda" in state:
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
        accelerator.step = int(state["accelerator_step"])


def load_state(accelerator, module, optimizer, scheduler, folder: Path, saved: dict) -> None:
    """Load what :func:`save_state` wrote into ``folder`` (collective). ``saved`` is the
    checkpoint's ``trainer_state.json``: its ``layout`` and ``processes`` must be this run's.

    Raises:
        InputError: the checkpoint was written with another layout or number of processes, or a
            file is missing or cannot be loaded (the message names it).
    """
    kind, processes = layout(accelerator, module), accelerator.num_processes
    if (saved.get("layout"), saved.get("processes")) != (kind, processes):
        raise InputError(
            f"written by {saved.get('processes')} process(es) with {saved.get('layout')} state, this run has "
            f"{processes} with {kind} state; resume it as it was launched (same accelerate config), or start over "
            "with train.resume=false",
            path=folder / "trainer_state.json",
        )
    rank = accelerator.process_index
    if kind == "deepspeed":
        _load_deepspeed(module, folder)
    else:
        suffix = f"-rank{rank}" if kind == "sharded" else ""
        _load_model(accelerator.unwrap_model(module), folder / f"model{suffix}.safetensors")
        _load_optimizer(optimizer, folder / f"optimizer{suffix}.pt")
    with _loading(folder / "scheduler.json"):
        scheduler.load_state_dict(json.loads((folder / "scheduler.json").read_text()))
    _set_rng_state(accelerator, folder / f"rng-rank{rank}.json")
