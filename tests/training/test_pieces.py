"""The trainer's pieces on their own: metrics log, atomic saves, a step's sums."""

import json
from types import SimpleNamespace

import pytest
import torch

from aia.errors import InputError
from aia.training.checkpoint import config_changes, latest_checkpoint, written_atomically
from aia.training.metrics import MetricsWriter, read_metrics
from aia.training.step import StepNorm, StepSums

SINGLE = SimpleNamespace(
    is_main_process=True,
    wait_for_everyone=lambda: None,
    reduce=lambda t, reduction="mean": t,  # one process: reductions are the identity
)


def test_metrics_writer_truncates_on_resume(tmp_path):
    writer = MetricsWriter(tmp_path, start=0)
    for step in (1, 2, 3):
        writer.write({"step": step, "loss": 1.0 / step, "intensity/und": [0.1, 0.2]})
    writer.close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))

    resumed = MetricsWriter(tmp_path, start=2)  # steps after the checkpoint are logged again
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
    resumed.write({"step": 3, "loss": 0.5})
    resumed.close()
    assert [r["loss"] for r in read_metrics(tmp_path)] == [1.0, 0.5, 0.5]


def test_metrics_writer_off_the_main_process_writes_nothing(tmp_path):
    writer = MetricsWriter(tmp_path / "run", start=0, enabled=False)
    writer.write({"step": 1, "loss": 1.0})
    writer.close()
    assert not (tmp_path / "run").exists()


def test_written_atomically_replaces_only_when_complete(tmp_path):
    target = tmp_path / "final"
    with written_atomically(SINGLE, target) as tmp:
        assert tmp.is_dir()  # created before any rank writes into it
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1" and not tmp.exists()

    with pytest.raises(OSError), written_atomically(SINGLE, target) as tmp:
        (tmp / "a").write_text("2")
        raise OSError("disk full")
    assert (target / "a").read_text() == "1"  # the complete one stays

    with written_atomically(SINGLE, target) as tmp:
        assert list(tmp.iterdir()) == []  # the crash's leftover is cleared first
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]


def _complete(folder):
    (folder / "model").mkdir(parents=True)
    (folder / "trainer_state.json").write_text("{}")
    return folder


def test_latest_checkpoint_needs_a_complete_one(tmp_path, capsys):
    assert latest_checkpoint(tmp_path) is None
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "latest").write_text("checkpoint-2\n")
    with pytest.raises(InputError, match="none complete .checkpoint-2.; nothing to resume from"):
        latest_checkpoint(tmp_path)  # no trainer_state.json: not complete, and nothing older: refuse
    _complete(tmp_path / "checkpoint-2")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-2"


def test_stale_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path, capsys):
    _complete(tmp_path / "checkpoint-10")
    _complete(tmp_path / "checkpoint-20")
    (tmp_path / "checkpoint-30").mkdir()  # interrupted or deleted by the user
    (tmp_path / "latest").write_text("checkpoint-30\n")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-20"
    assert "'latest' names checkpoint-30, which is missing or incomplete; resuming from checkpoint-20" in (
        capsys.readouterr().err)
    (tmp_path / "latest").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint-20"


def test_config_changes_on_resume():
    saved = {"optim": {"lr": 1e-3}, "train": {"max_steps": 30, "log_every": 1}}
    assert config_changes(saved, saved, 10) == []
    assert config_changes(saved, {**saved, "train": {"max_steps": 40, "log_every": 5}}, 10) == [
        "train.max_steps: 30 -> 40", "train.log_every: 1 -> 5"]
    assert config_changes(saved, {**saved, "optim": {"lr": 1e-2}}, 10) == ["optim.lr: 0.001 -> 0.01"]
    with pytest.raises(InputError, match=r"cannot resume with a changed optim.weight_decay: 0.0 -> 0.1"):
        config_changes({**saved, "optim": {"lr": 1e-3, "weight_decay": 0.0}},
                       {**saved, "optim": {"lr": 1e-3, "weight_decay": 0.1}}, 10)
    with pytest.raises(InputError, match="train.max_steps=10 but this run has already done 30 steps"):
        config_changes(saved, {**saved, "train": {"max_steps": 10, "log_every": 1}}, 30)


def test_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.9}\n{"step": 3, "lo')
    MetricsWriter(tmp_path, start=2).close()
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]
    assert "line 3 is incomplete" in capsys.readouterr().err
    path.write_text('{"step": 1, "loss": 1.0}\n{oops\n{"step": 2, "loss": 0.9}\n')
    with pytest.raises(InputError, match="metrics.jsonl: line 2: cannot resume"):
        MetricsWriter(tmp_path, start=2)


def _fake_batch(targets: list[int], enabled: list[bool]) -> SimpleNamespace:
    """A micro-batch with ``targets[i]`` supervised tokens in sample i (labels -100 elsewhere)."""
    width = max(targets) + 2
    labels = torch.full((len(targets), width), -100)
    for i, n in enumerate(targets):
        labels[i, 1 : 1 + n] = 7
    mask = torch.tensor(enabled)[:, None].expand(-1, width)
    return SimpleNamespace(labels=labels, query_mask=mask, key_mask=mask)


def test_step_norm_weights_place_each_micro_batch_in_the_global_batch():
    two = SimpleNamespace(num_processes=2, device=torch.device("cpu"), reduce=lambda t, reduction: t * 2)
    batches = [("und", _fake_batch([3, 1], [True, False])), ("gen", _fake_batch([4], [True])),
               ("gen", _fake_batch([2, 2], [False, False]))]
    norm = StepNorm(batches, two, denominator="enabled")  # the other rank holds the same counts
    assert norm.share == {"und": 1 / 3, "gen": 2 / 3} and norm.micro_batches == 3
    assert norm.tokens == {"und": 8, "gen": 16} and norm.samples == {"und": 2, "gen": 2}
    # share x world x micro-batches x this micro-batch's part of the global counts
    assert norm.local == [("und", 4, 1), ("gen", 4, 1), ("gen", 4, 0)]
    assert norm.weights(0) == pytest.approx((1 / 3 * 6 * 4 / 8, 1 / 3 * 6 * 1 / 2))
    assert norm.weights(2) == pytest.approx((2 / 3 * 6 * 4 / 16, 0.0))
    # the released denominator (default): every sample counts, those without the term add 0
    norm = StepNorm(batches, two)
    assert norm.samples == {"und": 2, "gen": 2} and norm.denominators == {"und": 4, "gen": 6}
    assert norm.weights(0) == pytest.approx((1 / 3 * 6 * 4 / 8, 1 / 3 * 6 * 2 / 4))
    assert norm.weights(2) == pytest.approx((2 / 3 * 6 * 4 / 16, 2 / 3 * 6 * 2 / 6))


def test_step_sums_row_is_the_global_batch_loss():
    batches = [("und", _fake_batch([2, 2], [True, True])), ("gen", _fake_batch([1], [True])),
               ("gen", _fake_batch([3], [True]))]
    norm = StepNorm(batches, SimpleNamespace(num_processes=1, device=torch.device("cpu"), reduce=SINGLE.reduce))
    sums = StepSums(torch.device("cpu"), aia=True, norm=norm, weights={"und": 10.0, "gen": 1.0})

    def res(ntp, tokens, aia, curve, n):
        return {"ntp": torch.tensor(ntp), "ntp_tokens": tokens, "aia": torch.tensor(aia),
                "intensity": torch.tensor(curve), "aia_samples": torch.tensor(float(n)),
                "enabled": torch.tensor(float(n))}

    sums.add("und", res(1.0, 4, 0.2, [1.0, 2.0], 2))
    sums.add("gen", res(2.0, 1, 0.6, [3.0, 0.0], 1))
    sums.add("gen", res(4.0, 3, 0.2, [0.0, 3.0], 1))
    sums.grad_norm = torch.tensor(0.5)
    row = sums.row(SINGLE, step=7, lr=1e-3, step_time=0.1, intensity=True)
    assert list(row)[:3] == ["step", "lr", "time/step_s"] and row["step"] == 7
    # gen: token losses 2*1 + 4*3 over 4 tokens (not the mean of the micro-batch means, 3.0)
    assert row["loss/ntp/und"] == pytest.approx(1.0) and row["loss/ntp/gen"] == pytest.approx(3.5)
    assert row["ntp_tokens/gen"] == 4 and row["aia_samples/gen"] == 2
    assert row["loss/aia/gen"] == pytest.approx(0.4) and row["grad_norm"] == pytest.approx(0.5)
    assert row["loss/ntp"] == pytest.approx(1 / 3 * 1.0 + 2 / 3 * 3.5)
    assert row["loss"] == pytest.approx(row["loss/ntp"] + 1 / 3 * 10 * 0.2 + 2 / 3 * 1 * 0.4)
    assert row["intensity/und"] == [1.0, 2.0] and row["intensity/gen"] == [1.5, 1.5]
    assert "intensity/und" not in sums.row(SINGLE, step=8, lr=1e-3, step_time=0.1, intensity=False)


def test_deepspeed_zero3_is_refused_for_task_specific_trainable_modules():
    from aia.errors import ConfigError
    from aia.training.setup import check_deepspeed

    model = torch.nn.Module()
    model.generation_head = torch.nn.Linear(2, 2)
    model.language_model = torch.nn.Linear(2, 2)
    janus_like = SimpleNamespace(task_specific_modules=("generation_head",))
    zero3 = SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=3)))
    with pytest.raises(ConfigError, match=r"ZeRO-3 would update generation_head.weight .* with an earlier step's"):
        check_deepspeed(zero3, model, janus_like)
    model.generation_head.requires_grad_(False)  # frozen: every trainable parameter is shared
    check_deepspeed(zero3, model, janus_like)
    model.generation_head.requires_grad_(True)
    check_deepspeed(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(zero_stage=2))),
                    model, janus_like)
    check_deepspeed(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)), model, janus_like)
