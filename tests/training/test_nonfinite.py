"""A run whose loss or gradients go non-finite stops at that step, saves nothing from it, exits 2; with
``train.skip_nonfinite`` up to that many such steps in a row are skipped instead."""

import json

import pytest
import torch

from aia.testing.tiny import tiny_janus
from aia.training.trainer import DivergedError, train
from tests.training.test_trainer import make_cfg


def test_an_infinite_aia_weight_stops_the_run_before_anything_is_saved(tiny_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"step 1: loss/aia/(gen|und) is not finite|step 1: grad_norm"):
        train(make_cfg(tiny_data, out, "aia.weight_gen=1e39", "aia.weight_und=1e39", "train.save_every=1"),
              *tiny_janus(seed=0))
    assert not list(out.glob("checkpoint-*")) and not (out / "final").exists()
    assert not (out / "metrics.jsonl").exists() or all(
        json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())


def test_a_huge_learning_rate_is_caught_with_its_step(tiny_data, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(DivergedError, match=r"step \d+: .* is not finite"):
        train(make_cfg(tiny_data, out, "optim.lr=1e30", "train.max_steps=6", "train.save_every=1"),
              *tiny_janus(seed=0))
    for line in (out / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # strict JSON: no NaN / Infinity tokens


def _nan_at(monkeypatch, calls: set[int]):
    """Make the loss of these micro-batches (1-based, counted over the run) NaN."""
    from aia.training.step import UnifiedStep

    forward, seen = UnifiedStep.forward, []

    def poisoned(self, task, **kwargs):
        res = forward(self, task, **kwargs)
        seen.append(task)
        return {**res, "loss": res["loss"] * float("nan")} if len(seen) in calls else res

    monkeypatch.setattr(UnifiedStep, "forward", poisoned)


def test_a_non_finite_step_is_skipped_within_the_allowance(tiny_data, tmp_path, monkeypatch, capsys):
    from safetensors.torch import load_file

    out = tmp_path / "run"
    _nan_at(monkeypatch, {5})  # the first micro-batch of step 3 (2 per step)
    result = train(make_cfg(tiny_data, out, "train.max_steps=4", "train.save_every=1", "train.save_total_limit=10",
                            "train.skip_nonfinite=1"), *tiny_janus(seed=0))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and [r.get("skipped") for r in rows] == [None, None, "grad_norm", None]
    assert "loss" not in rows[2] and all("loss" in r for r in rows[:2] + rows[3:])
    assert "step 3: grad_norm is not finite; its update was skipped (1 of train.skip_nonfinite=1" in capsys.readouterr().err
    weights = {s: load_file(out / f"checkpoint-{s}" / "model" / "model.safetensors") for s in (2, 3, 4)}
    assert all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])  # step 3 changed nothing
    assert any(not torch.equal(weights[3][k], weights[4][k]) for k in weights[3])  # step 4 trained again
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["skipped_in_a_row"] == 1
    assert json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["skipped_in_a_row"] == 0
    assert result.final_dir.is_dir()


def test_one_more_non_finite_step_than_allowed_stops_the_run(tiny_data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _nan_at(monkeypatch, {3, 5})  # steps 2 and 3
    with pytest.raises(DivergedError, match=r"step 3: grad_norm is not finite .*after 1 skipped step\(s\) in a row; "
                                             r"nothing was saved from this step, the last good checkpoint is checkpoint-2"):
        train(make_cfg(tiny_data, out, "train.max_steps=4", "train.save_every=1", "train.skip_nonfinite=1"),
              *tiny_janus(seed=0))


def test_skip_nonfinite_is_refused_with_fp16():
    from aia.errors import ConfigError
    from aia.training.config import load_config

    with pytest.raises(ConfigError, match="train.skip_nonfinite: must be 0 with train.mixed_precision=fp16"):
        load_config(None, ["data.und=und.jsonl", "train.skip_nonfinite=1", "train.mixed_precision=fp16"],
                    check_paths=False)
