"""Nothing in a run folder can make `aia train` run code, and every bad checkpoint, full disk,
unwritable folder or Ctrl-C is one line: a resume never continues silently from another state."""

import errno
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from aia.errors import InputError
from aia.testing.tiny import tiny_janus
from aia.training.trainer import train
from tests.helpers import run_cli, save_model
from tests.training.test_trainer import make_cfg, rows

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this runs a shell command (the attack of a tampered checkpoint)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def trained(tiny_data, tmp_path_factory):
    """A 2-step run with checkpoint-1 and checkpoint-2 (copy it before changing it)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train(make_cfg(tiny_data, out, "train.max_steps=2", "train.save_every=1"), *tiny_janus(seed=0))
    return out


@pytest.fixture
def run(trained, tmp_path):
    return Path(shutil.copytree(trained, tmp_path / "run"))


def _redigest(ckpt: Path) -> None:
    """What a writer who can change the folder also does: record the new files' digest."""
    from aia.training.checkpoint import state_digest

    path = ckpt / "trainer_state.json"
    state = json.loads(path.read_text())
    state["state_sha256"] = state_digest(ckpt)
    path.write_text(json.dumps(state))


def _resume(tiny_data, out: Path, *extra: str) -> None:
    train(make_cfg(tiny_data, out, "train.max_steps=3", *extra), *tiny_janus(seed=0))


def _refused(tiny_data, out: Path, match: str) -> str:
    with pytest.raises(InputError, match=match) as caught:
        _resume(tiny_data, out)
    message = str(caught.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def test_the_checkpoint_holds_only_safetensors_json_and_weights_only_files(run):
    names = sorted(p.name for p in (run / "checkpoint-2").iterdir())
    assert names == [
        "model",
        "model.safetensors",
        "optimizer.pt",
        "rng-rank0.json",
        "scheduler.json",
        "trainer_state.json",
    ]
    torch.load(run / "checkpoint-2" / "optimizer.pt", weights_only=True)  # nothing but tensors and numbers
    state = json.loads((run / "checkpoint-2" / "trainer_state.json").read_text())
    assert (state["layout"], state["processes"]) == ("full", 1)
    assert set(state["state_sha256"]) == {"optimizer.pt", "rng-rank0.json", "scheduler.json"}


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.pt"])
@pytest.mark.parametrize("write", ["torch.save", "pickle"])
def test_a_pickle_payload_with_its_digest_updated_never_runs(tiny_data, run, tmp_path, name, write):
    marker = tmp_path / "ran"
    path = run / "checkpoint-2" / name
    if write == "torch.save":
        torch.save({"state": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))
    _redigest(run / "checkpoint-2")
    known = name == "optimizer.pt"
    _refused(
        tiny_data,
        run,
        f"checkpoint-2/{name}: "
        + (
            "cannot load this saved state .it holds other objects than tensors and numbers"
            if known
            else "not a file aia writes in a checkpoint"
        ),
    )
    assert not marker.exists()
    assert [r["step"] for r in rows(run)] == [1, 2]  # nothing ran, nothing logged


def test_a_changed_state_file_is_refused_by_its_digest(tiny_data, run):
    (run / "checkpoint-2" / "scheduler.json").write_text('{"last_epoch": 0}')
    _refused(tiny_data, run, "checkpoint-2/scheduler.json: does not match the digest recorded when it was written")


@pytest.mark.parametrize("content", ['{"python": []}', "not json", '{"python": [3, [1, 2], null]}'])
def test_a_state_file_that_fails_to_load_stops_the_resume(tiny_data, run, content):
    (run / "checkpoint-2" / "rng-rank0.json").write_text(content)
    _redigest(run / "checkpoint-2")
    _refused(tiny_data, run, r"checkpoint-2/rng-rank0.json: cannot load this saved state .* nothing was resumed")
    assert [r["step"] for r in rows(run)] == [1, 2]


def test_a_truncated_model_safetensors_stops_the_resume(tiny_data, run):
    weights = run / "checkpoint-2" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    _refused(tiny_data, run, "checkpoint-2/model.safetensors: cannot load this saved state")


def test_a_link_in_a_checkpoint_is_refused(tiny_data, run, tmp_path):
    optimizer = run / "checkpoint-2" / "optimizer.pt"
    shutil.move(optimizer, tmp_path / "elsewhere.pt")
    optimizer.symlink_to(tmp_path / "elsewhere.pt")
    _refused(tiny_data, run, "checkpoint-2/optimizer.pt: not a file aia writes in a checkpoint .a link")


@pytest.mark.parametrize("where", ["absolute", "outside", "dotdot", "link"])
def test_latest_is_followed_only_to_a_checkpoint_of_the_run_folder(tiny_data, run, tmp_path, where):
    other = Path(shutil.copytree(run, tmp_path / "other"))
    name = {
        "absolute": str(other / "checkpoint-2"),
        "outside": "../other/checkpoint-2",
        "dotdot": "checkpoint-2/../../other/checkpoint-2",
        "link": "checkpoint-3",
    }[where]
    if where == "link":
        (run / "checkpoint-3").symlink_to(other / "checkpoint-2")
    (run / "latest").write_text(name)
    _refused(tiny_data, run, r"run/latest: names .*, not a checkpoint-<step> folder of this run; refusing to follow it")


def test_a_resume_with_another_number_of_processes_is_refused(tiny_data, run):
    path = run / "checkpoint-2" / "trainer_state.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "processes": 2}))
    _refused(tiny_data, run, "trainer_state.json: written by 2 process.es. with full state, this run has 1")


def _failing(calls: list, fail_at: int, error: Exception):
    import safetensors.torch

    real = safetensors.torch.save_file

    def save_file(*args, **kwargs):
        calls.append(1)
        if len(calls) == fail_at:
            raise error
        return real(*args, **kwargs)

    return save_file


@pytest.mark.parametrize("target", ["state", "model"])
def test_a_full_disk_inside_a_checkpoint_write_is_one_line_and_loses_nothing(tiny_data, tmp_path, monkeypatch, target):
    import safetensors.torch
    import transformers.modeling_utils
    from safetensors import SafetensorError

    out = tmp_path / "run"
    if target == "state":  # the resumable state's safetensors write of checkpoint-2
        error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(safetensors.torch, "save_file", _failing([], 2, error))
    else:  # transformers' save_pretrained of checkpoint-2/model: safetensors' own error
        error = SafetensorError(
            'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
        )
        monkeypatch.setattr(transformers.modeling_utils, "safe_save_file", _failing([], 2, error))
    with pytest.raises(InputError) as caught:
        train(make_cfg(tiny_data, out, "train.max_steps=3", "train.save_every=1"), *tiny_janus(seed=0))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{out}: cannot write checkpoint-2 (")
    assert message.endswith(
        "); the run stopped after step 2, its last complete checkpoint is checkpoint-1: make room "
        "(or fix the folder) and rerun the same command to resume"
    )
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".check", "check"))) == ["checkpoint-1"]
    monkeypatch.undo()
    train(make_cfg(tiny_data, out, "train.max_steps=3", "train.save_every=1"), *tiny_janus(seed=0))
    assert [r["step"] for r in rows(out)] == [1, 2, 3]


def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_work(tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(InputError, match=r"a-file/run: cannot write the run here \(Not a directory\); give a writable"):
        train(make_cfg(tiny_data, blocker / "run"), *tiny_janus(seed=0))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_one_line(tiny_data, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o500)
    try:
        with pytest.raises(InputError, match=r"run: cannot write the run here \(Permission denied\)"):
            train(make_cfg(tiny_data, out), *tiny_janus(seed=0))
    finally:
        out.chmod(0o700)


@pytest.fixture(scope="module")
def cli_run(tiny_data, tmp_path_factory):
    """``(config.yaml, model)``: a saved tiny Janus and a config training it for 3 steps."""
    tmp = tmp_path_factory.mktemp("cli")
    model = save_model(*tiny_janus(seed=0), tmp / "model")
    config = tmp / "run.yaml"
    config.write_text(
        textwrap.dedent(f"""\
        model: {{path: {model}}}
        data: {{und: {tiny_data[0]}, gen: {tiny_data[1]}, batch_size: 2}}
        optim: {{lr: 1.0e-3, scheduler: constant}}
        train: {{max_steps: 3, save_every: 1, progress: false}}
        """)
    )
    return config, model


def test_the_cli_says_one_line_for_an_unwritable_output_folder(cli_run, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code, err = run_cli(capsys, "train", cli_run[0], f"train.output_dir={blocker}/run")
    assert code == 2
    assert err.strip().splitlines() == [
        f"aia train: error: {blocker}/run: cannot write the run here (Not a directory); give a writable "
        "train.output_dir"
    ]


CTRL_C = textwrap.dedent(
    """
    import os, signal, sys
    import aia.training.step as st
    from aia.cli import main

    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C's Python default, even under nohup

    schedule = st.step_schedule
    def interrupted(step, *a, **k):  # Ctrl-C as the 0-based step 2 (the third) starts
        if step == 2 and os.environ.get("CTRL_C"):
            os.kill(os.getpid(), signal.SIGINT)
        return schedule(step, *a, **k)
    st.step_schedule = interrupted
    sys.exit(main(sys.argv[1:]))
    """
)


def test_ctrl_c_in_train_is_one_line_and_exit_130_then_the_same_command_resumes(cli_run, tmp_path, capsys):
    """A real SIGINT in a process of its own; the same command then resumes (run in this process: a new
    process would cost seconds of imports, and it finds the folder as the interrupted process left it)."""
    out = tmp_path / "run"
    argv = [sys.executable, "-c", CTRL_C, "train", str(cli_run[0]), f"train.output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "CTRL_C": "1"}
    stopped = subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)
    assert stopped.returncode == 128 + signal.SIGINT, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    assert stopped.stderr.strip().splitlines()[-1] == (
        "aia train: interrupted at step 3; rerun the same command to resume"
    )
    assert [r["step"] for r in rows(out)] == [1, 2]
    code, err = run_cli(capsys, *argv[3:])
    assert code == 0, err[-2000:]
    assert "resumed from checkpoint-2" in err
    assert [r["step"] for r in rows(out)] == [1, 2, 3]


def test_a_resumed_run_reads_no_file_with_weights_only_false(tiny_data, run, monkeypatch):
    """Whatever reads the checkpoint (aia, accelerate, torch) asks for weights-only loading."""
    real, calls = torch.load, []

    def load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", load)
    _resume(tiny_data, run)
    assert calls and all(w is True for w in calls), calls
