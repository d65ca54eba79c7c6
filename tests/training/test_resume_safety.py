"""Resume never loses work and never unpickles files it did not write; config changes are explicit."""

import json

import pytest

from aia.errors import InputError
from aia.testing.tiny import tiny_janus
from aia.training.trainer import train
from tests.training.test_trainer import make_cfg, rows


def test_resume_refuses_changed_state_and_config_and_falls_back_from_a_stale_latest(tiny_data, tmp_path, capsys):
    out = tmp_path / "run"
    train(make_cfg(tiny_data, out, "train.save_every=1", "train.save_total_limit=5"), *tiny_janus(seed=0))
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]

    # a changed field that the checkpoint's state depends on: one clear error, nothing touched
    with pytest.raises(InputError, match=r"cannot resume with a changed optim.weight_decay: 0.05 -> 0.5"):
        train(make_cfg(tiny_data, out, "train.max_steps=4", "optim.weight_decay=0.5"), *tiny_janus(seed=0))
    with pytest.raises(InputError, match="train.max_steps=2 but this run has already done 3 steps"):
        train(make_cfg(tiny_data, out, "train.max_steps=2"), *tiny_janus(seed=0))

    # the user deletes the last checkpoint: resume from the newest complete one, say so, keep the log
    (out / "checkpoint-3" / "trainer_state.json").unlink()
    train(make_cfg(tiny_data, out, "train.max_steps=4", "train.save_every=1", "train.save_total_limit=5"),
          *tiny_janus(seed=0))
    err = capsys.readouterr().err
    assert "resuming from checkpoint-2, the newest complete checkpoint" in err
    assert "resuming with train.max_steps: 3 -> 4" in err  # an allowed change, logged
    assert [r["step"] for r in rows(out)] == [1, 2, 3, 4]

    # a new learning rate applies from the resumed step on, and config.json says so
    train(make_cfg(tiny_data, out, "train.max_steps=5", "optim.lr=1e-2", "train.save_every=1",
                   "train.save_total_limit=5"), *tiny_janus(seed=0))
    assert "resuming with optim.lr: 0.001 -> 0.01" in capsys.readouterr().err
    assert [r["lr"] for r in rows(out)] == [1e-3, 1e-3, 1e-3, 1e-3, 1e-2]
    assert json.loads((out / "config.json").read_text())["optim"]["lr"] == 1e-2

    # a state file that is not the one this run wrote is never loaded
    (out / "checkpoint-5" / "rng-rank0.json").write_text('{"python": []}')
    with pytest.raises(InputError, match=r"checkpoint-5/rng-rank0.json: does not match the digest"):
        train(make_cfg(tiny_data, out, "train.max_steps=6", "optim.lr=1e-2"), *tiny_janus(seed=0))


def test_a_second_trainer_on_the_same_folder_refuses_to_start(tiny_data, tmp_path):
    from aia.training.checkpoint import run_lock

    out = tmp_path / "run"
    with run_lock(out):
        with pytest.raises(InputError, match=r"another aia train \(pid \d+\) is running in this folder"):
            train(make_cfg(tiny_data, out), *tiny_janus(seed=0))
    train(make_cfg(tiny_data, out), *tiny_janus(seed=0))  # released: runs


def test_infinite_config_values_are_refused_at_load(tiny_data, tmp_path):
    from aia.errors import ConfigError

    with pytest.raises(ConfigError, match="aia.weight_gen: must be a finite number, got inf"):
        make_cfg(tiny_data, tmp_path, "aia.weight_gen=.inf")
