"""A run whose loss or gradients go non-finite stops at that step, saves nothing from it, exits 2."""

import json

import pytest

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
