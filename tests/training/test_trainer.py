"""`aia train` end to end on tiny random models of every family."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

import aia.training.checkpoint as checkpoint_mod
import aia.training.step as step_mod
import aia.training.streams as streams_mod
from aia.errors import InputError
from aia.testing.tiny import TINY_MODELS
from aia.training.config import load_config
from aia.training.trainer import train

ROOT = Path(__file__).resolve().parents[2]


def make_cfg(tiny_data, out, *extra):
    und, gen = tiny_data
    return load_config(
        None,
        [
            f"data.und={und}",
            f"data.gen={gen}",
            f"train.output_dir={out}",
            "data.batch_size=2",
            "train.max_steps=3",
            "train.intensity_every=1",
            "train.progress=false",
            "optim.lr=1e-3",
            "optim.warmup_ratio=0",
            "optim.scheduler=constant",
            *extra,
        ],
        check_paths=False,
    )


def rows(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_train_end_to_end(family, tiny_data, tmp_path, monkeypatch):
    import aia.core.intensity

    monkeypatch.setattr(aia.core.intensity, "_ROUTES", {})  # the routes of this run only
    model, processor = TINY_MODELS[family](seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = train(make_cfg(tiny_data, tmp_path / "run"), model, processor)

    logged = rows(tmp_path / "run")
    assert [r["step"] for r in logged] == [1, 2, 3]
    layers = model.config.get_text_config().num_hidden_layers
    for r in logged:
        for key in ("loss", "loss/ntp", "loss/ntp/und", "loss/ntp/gen", "loss/aia/und", "loss/aia/gen", "lr"):
            assert torch.isfinite(torch.tensor(r[key])), key
        assert len(r["intensity/und"]) == layers and len(r["intensity/gen"]) == layers
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    routes = json.loads((tmp_path / "run" / "attention_routes.json").read_text())
    ran = {r for case in routes["routes"].values() for r in case.split(", ")}
    assert routes["routes"] and ran <= {"fused flash", "sdpa"}  # what the step ran

    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    frozen = {n for n in before if "vqmodel" in n or "vision_model" in n}
    assert frozen and not (changed & frozen), "frozen parameters moved"
    lm_weights = [n for n in before if ("layers.0." in n and "proj" in n) and n not in frozen]
    assert lm_weights and all(n in changed for n in lm_weights), "language-model weights did not train"

    # the final model reloads with plain transformers
    cls = getattr(transformers, type(model).__name__)
    reloaded = cls.from_pretrained(result.final_dir)
    transformers.AutoProcessor.from_pretrained(result.final_dir)
    name = lm_weights[0]
    torch.testing.assert_close(dict(reloaded.named_parameters())[name], dict(model.named_parameters())[name])
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-3"


@pytest.mark.parametrize("family", ["janus"])
def test_baseline_differs_from_aia_only_by_the_aia_term(family, tiny_data, tmp_path):
    runs = {}
    for enabled in (True, False):
        model, processor = TINY_MODELS[family](seed=0)
        cfg = make_cfg(tiny_data, tmp_path / str(enabled), f"aia.enabled={str(enabled).lower()}", "optim.lr=0")
        train(cfg, model, processor)
        runs[enabled] = rows(tmp_path / str(enabled))
    for on, off in zip(runs[True], runs[False], strict=True):
        assert on["loss/ntp"] == pytest.approx(off["loss/ntp"], abs=1e-6)
        assert off["loss"] == pytest.approx(off["loss/ntp"], abs=1e-6)
        # one und and one gen micro-batch per step: loss = mean of (ntp + lambda * aia)
        extra = (cfg.aia.weight_und * on["loss/aia/und"] + cfg.aia.weight_gen * on["loss/aia/gen"]) / 2
        assert on["loss"] - off["loss"] == pytest.approx(extra, rel=1e-4, abs=1e-7)
        assert extra > 0
        assert "loss/aia/und" not in off


@pytest.mark.parametrize("family", ["emu3"])
def test_activation_checkpointing_gives_the_same_run(family, tiny_data, tmp_path):
    runs = []
    for ckpt in (False, True):
        model, processor = TINY_MODELS[family](seed=0)
        train(
            make_cfg(tiny_data, tmp_path / str(ckpt), f"model.gradient_checkpointing={str(ckpt).lower()}"),
            model,
            processor,
        )
        runs.append(rows(tmp_path / str(ckpt)))
    for a, b in zip(*runs, strict=True):
        for key in ("loss", "loss/aia/und", "loss/aia/gen", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_resume_continues_with_the_same_losses(tiny_data, tmp_path, monkeypatch):
    extra = ("train.max_steps=4", "train.save_every=2", "data.cfg_drop=0.5")
    model, processor = TINY_MODELS["janus"](seed=0)
    train(make_cfg(tiny_data, tmp_path / "straight", *extra), model, processor)
    straight = rows(tmp_path / "straight")

    real = step_mod.step_schedule

    def killed_at_step_3(step, *args):
        if step == 2:
            raise KeyboardInterrupt("simulated kill")
        return real(step, *args)

    model, processor = TINY_MODELS["janus"](seed=0)
    monkeypatch.setattr(step_mod, "step_schedule", killed_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tiny_data, tmp_path / "resumed", *extra), model, processor)
    assert (tmp_path / "resumed" / "latest").read_text().strip() == "checkpoint-2"
    monkeypatch.setattr(step_mod, "step_schedule", real)
    model, processor = TINY_MODELS["janus"](seed=1)  # different init: everything must come from the checkpoint
    train(make_cfg(tiny_data, tmp_path / "resumed", *extra), model, processor)
    resumed = rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed, strict=True):
        for key in ("loss", "loss/ntp/und", "loss/ntp/gen", "loss/aia/und", "loss/aia/gen", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_resume_false_starts_over(tiny_data, tmp_path):
    """No checkpoint of an earlier run may outlive (or be mistaken for) the new run's."""
    out = tmp_path / "run"
    model, processor = TINY_MODELS["janus"](seed=0)
    train(make_cfg(tiny_data, out, "train.max_steps=4", "train.save_every=1", "train.save_total_limit=3"), model, processor)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3", "checkpoint-4"]
    model, processor = TINY_MODELS["janus"](seed=0)
    train(make_cfg(tiny_data, out, "train.max_steps=2", "train.save_every=1", "train.resume=false"), model, processor)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert (out / "latest").read_text().strip() == "checkpoint-2"
    assert [r["step"] for r in rows(out)] == [1, 2]


def test_checkpoint_never_half_written(tiny_data, tmp_path, monkeypatch):
    """A crash while writing checkpoint-4 leaves `latest` on the complete checkpoint-2."""
    model, processor = TINY_MODELS["janus"](seed=0)
    real = checkpoint_mod.save_model
    calls = []

    def crash_second_time(*args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full")
        return real(*args)

    monkeypatch.setattr(checkpoint_mod, "save_model", crash_second_time)
    with pytest.raises(InputError, match=r"cannot write checkpoint-4 \(disk full\); .* last complete checkpoint is checkpoint-2"):
        train(make_cfg(tiny_data, tmp_path / "run", "train.max_steps=4", "train.save_every=2"), model, processor)
    assert (tmp_path / "run" / "latest").read_text().strip() == "checkpoint-2"
    assert (tmp_path / "run" / "checkpoint-2" / "trainer_state.json").is_file()
    assert not (tmp_path / "run" / "checkpoint-4").exists()


def test_lora_trains_only_adapters(tiny_data, tmp_path):
    model, processor = TINY_MODELS["emu3"](seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    train(make_cfg(tiny_data, tmp_path / "lora", "lora.enabled=true", "lora.r=4"), model, processor)
    after = {n: p.detach() for n, p in model.named_parameters()}
    lora_b = {n: p for n, p in after.items() if "lora_B" in n}
    assert lora_b and all(p.abs().sum() > 0 for p in lora_b.values())  # lora_B starts at zero: all trained
    # adapters on the language model's attention projections only (not the VQ's attention)
    lm = "model.text_model." if any(".text_model." in n for n in lora_b) else "model.model."
    assert all(lm in n for n in lora_b), [n for n in lora_b if lm not in n]
    # every base weight, wrapped (".base_layer.") or not, is unchanged
    base = {n.replace(".base_layer.", "."): p for n, p in after.items() if "lora_" not in n}
    assert set(before) == set(base)
    assert [n for n, p in before.items() if not torch.equal(base[n], p)] == []
    assert (tmp_path / "lora" / "final" / "adapter_config.json").is_file()
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "lora" / "final" / "adapter_model.safetensors")
    assert len(saved) == 2 * len(lora_b)  # lora_A and lora_B of every wrapped module, nothing else
    for name, weight in lora_b.items():
        assert torch.equal(saved["base_model.model." + name.replace(".default", "")], weight)


MIXINGS = ("both", "random")


@pytest.fixture(scope="module")
def two_process_runs(tiny_data, tmp_path_factory) -> Path:
    """``DIR``: one ``torch.distributed.run`` launch of 2 processes training a tiny Janus for 2 steps with each
    data mixing of :data:`MIXINGS` in turn (a launch costs seconds of start-up, a run less): the run in
    ``DIR/<mixing>/run``, each rank's history in ``DIR/<mixing>/rank<R>.json``."""
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "ddp_run.py"
    script.write_text(
        "import json, os, sys\n"
        "from aia.training.config import load_config\n"
        "from aia.testing.tiny import tiny_janus\n"
        "from aia.training.trainer import train\n"
        f"for mixing in {MIXINGS!r}:\n"
        "    out = f\"{sys.argv[1]}/{mixing}\"\n"
        "    args = [*sys.argv[2:], f\"train.output_dir={out}/run\", f\"data.mixing={mixing}\"]\n"
        "    model, processor = tiny_janus(seed=0)\n"
        "    res = train(load_config(None, args, check_paths=False), model, processor)\n"
        "    json.dump(res.history, open(f\"{out}/rank{os.environ['RANK']}.json\", 'w'))\n"
    )
    und, gen = tiny_data
    args = [f"data.und={und}", f"data.gen={gen}", "train.max_steps=2"]
    args += ["data.batch_size=2", "train.progress=false", "train.intensity_every=1"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517", str(script)]
    proc = subprocess.run([*cmd, str(tmp), *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp


@pytest.mark.integration
@pytest.mark.parametrize("mixing", MIXINGS)
def test_two_processes_see_the_same_losses(two_process_runs, mixing):
    """Both ranks' histories agree step by step, and metrics.jsonl logs the same losses."""
    out = two_process_runs / mixing
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert len(r0) == len(r1) == 2
    for a, b in zip(r0, r1, strict=True):
        a.pop("time/step_s"), b.pop("time/step_s")  # wall clock differs per rank
        assert a == b
    logged = rows(out / "run")
    assert [r["loss"] for r in logged] == [r["loss"] for r in r0]


def released_lr(it, init_lr, warmup_iter, max_iter, minimum_lr=1.0e-6):
    """The release's cosine ``calc_learning_rate`` (``trainer/utils/scheduler.py:15-26``), as written."""
    if it < warmup_iter:
        return (it + 1) / warmup_iter * (init_lr - minimum_lr) + minimum_lr
    return minimum_lr + 0.5 * (init_lr - minimum_lr) * (
        1 + math.cos(math.pi * (it - warmup_iter) / (max_iter - warmup_iter))
    )


def test_shipped_janus_config_logs_the_released_lr_curve(tiny_data, tmp_path):
    """configs/janus-pro-1b.yaml's schedule (epochs, warm-up epochs, floor, random 10:10 mixing) on tiny data."""
    und, gen = tiny_data
    out = tmp_path / "run"
    cfg = load_config(
        ROOT / "configs" / "janus-pro-1b.yaml",
        [
            f"data.und={und}",
            f"data.gen={gen}",
            f"train.output_dir={out}",
            "data.batch_size=1",
            "train.epochs=1",  # small: one epoch of 8 generation samples
            "train.mixed_precision=no",  # CPU
            "model.gradient_checkpointing=false",
            "train.save_every=0",
            "train.progress=false",
            "train.intensity_every=0",
        ],
        check_paths=False,
    )
    assert (cfg.optim.scheduler, cfg.optim.warmup_epochs, cfg.optim.min_lr, cfg.optim.lr) == ("cosine", 0.1, 1e-6, 2e-5)
    assert (cfg.data.mixing, cfg.data.ratio_und, cfg.data.ratio_gen, cfg.data.gen_image_transform) == (
        "random", 10, 10, "center_crop"
    )
    model, processor = TINY_MODELS["janus"](seed=0)
    train(cfg, model, processor)
    logged = rows(out)

    # released: dataloader_len = len(gen loader) // p_gen; max_iter = int(epochs * it); warm-up = 0.1 * it
    n_gen = len([line for line in Path(gen).read_text().splitlines() if line.strip()])
    dataloader_len = (math.ceil(n_gen / 1) // 1) // (10 / 20)
    max_iter, warmup_iter = int(1 * dataloader_len), 0.1 * dataloader_len
    assert (max_iter, warmup_iter) == (16, 1.6)
    assert [r["step"] for r in logged] == list(range(1, max_iter + 1))
    assert [r["lr"] for r in logged] == [released_lr(it, 2e-5, warmup_iter, max_iter) for it in range(max_iter)]
    lrs = [r["lr"] for r in logged]
    assert lrs[0] == 1 / 1.6 * (2e-5 - 1e-6) + 1e-6  # warm-up from the floor: steps 0 and 1 (it < 1.6)
    assert lrs[1] > lrs[2] and lrs[2] == pytest.approx(1e-6 + 0.5 * 1.9e-5 * (1 + math.cos(math.pi * 0.4 / 14.4)))
    assert min(lrs) == lrs[-1] > 1e-6 and lrs[-1] < 1e-6 + 0.02 * 2e-5  # cosine down to the 1e-6 floor

    # random mixing: one task per step, both tasks over the run
    tasks = []
    for r in logged:
        keys = {k.split("/")[-1] for k in r if k.startswith(("loss/ntp/", "loss/aia/", "aia_samples/"))}
        assert len(keys) == 1, r
        tasks.append(keys.pop())
    assert set(tasks) == {"und", "gen"}
    expected = [step_mod.step_schedule(s, 1, {"und": 10, "gen": 10}, "random", 1024)[0][0] for s in range(max_iter)]
    assert tasks == expected


def test_resume_is_bit_exact_with_random_mixing(tiny_data, tmp_path, monkeypatch):
    extra = ("data.mixing=random", "train.max_steps=6", "train.save_every=3", "data.cfg_drop=0.5",
             "optim.scheduler=cosine", "optim.warmup_steps=2")
    model, processor = TINY_MODELS["janus"](seed=0)
    train(make_cfg(tiny_data, tmp_path / "straight", *extra, "optim.warmup_ratio=null"), model, processor)
    straight = rows(tmp_path / "straight")
    assert {("loss/ntp/und" in r) for r in straight} == {True, False}  # both tasks, one per step

    real = step_mod.step_schedule

    def killed_at_step_5(step, *args):
        if step == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(step, *args)

    model, processor = TINY_MODELS["janus"](seed=0)
    monkeypatch.setattr(step_mod, "step_schedule", killed_at_step_5)
    with pytest.raises(KeyboardInterrupt):
        train(make_cfg(tiny_data, tmp_path / "resumed", *extra, "optim.warmup_ratio=null"), model, processor)
    assert (tmp_path / "resumed" / "latest").read_text().strip() == "checkpoint-3"
    monkeypatch.setattr(step_mod, "step_schedule", real)
    monkeypatch.setattr(streams_mod, "_DRAWS", {})  # a new process: nothing memoised
    model, processor = TINY_MODELS["janus"](seed=1)  # different init: everything must come from the checkpoint
    train(make_cfg(tiny_data, tmp_path / "resumed", *extra, "optim.warmup_ratio=null"), model, processor)
    resumed = rows(tmp_path / "resumed")
    assert [r["step"] for r in resumed] == list(range(1, 7))
    for a, b in zip(straight, resumed, strict=True):
        a.pop("time/step_s"), b.pop("time/step_s")
        assert a == b
