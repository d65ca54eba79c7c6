"""Distributed runs equal one process on the same global batch (tiny Janus and Emu3, CPU, gloo).

Launched through the shipped accelerate configs (``configs/accelerate/cpu_2proc.yaml``: DDP,
``cpu_2proc_fsdp2.yaml``: FSDP2, ``cpu_2proc_zero3.yaml``: DeepSpeed ZeRO-3 when deepspeed is
installed), 2 processes x batch 2 against 1 process x batch 4, and
gradient accumulation 2 x batch 2 against 1 x batch 4. The loss is normalised over the global
batch (:mod:`aia.training.step`), so the runs differ only by the order of floating-point
reductions: step losses agree to 1e-5 relative and the weights after 4 AdamW steps (lr 1e-3) to
1e-5 absolute (measured: 1.2e-7). The FSDP2 and ZeRO-3 kill + resume runs are compared exactly.

The runs share launches (:data:`LAUNCHES`): one plain-python process trains every 1-process run, and one
launch per accelerate config trains all the runs of that config one after the other, the run to be killed
last (a launch's start-up costs more than a run; a run trained after another in the same processes gives
bit-identical losses and weights, measured). Each test then reads the output folders of the runs it compares.
"""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from aia.testing.tiny import tiny_emu3, tiny_janus
from tests.helpers import save_model

ROOT = Path(__file__).resolve().parents[2]
RUNNER = Path(__file__).with_name("dist_runner.py")
LOSS_KEYS = ("loss", "loss/ntp", "loss/ntp/und", "loss/ntp/gen", "loss/aia/und", "loss/aia/gen", "grad_norm")
COUNT_KEYS = ("ntp_tokens/und", "ntp_tokens/gen", "aia_samples/und", "aia_samples/gen")


def _launch(runs: list[list[str]], launch: str | None = None, python: str = sys.executable
            ) -> subprocess.CompletedProcess:
    """Run tests/training/dist_runner.py on ``runs`` (each ``[MODEL, UND, GEN, OUT, BATCH_SIZE, GRAD_ACCUM,
    *OVERRIDES]``, one after the other in the same processes): plain python (one process) or ``accelerate
    launch`` with a shipped config."""
    args = [str(RUNNER), *[arg for i, run in enumerate(runs) for arg in (["+"] if i else []) + run]]
    if launch is None:
        cmd = [python, *args]
    else:
        launcher = Path(python).with_name("accelerate")
        cmd = [str(launcher), "launch", "--config_file", str(ROOT / "configs/accelerate" / launch), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)


def _run(model: Path, data, out: Path, batch_size: int, grad_accum: int = 1, overrides: tuple[str, ...] = (),
         die_at: int | None = None) -> list[str]:
    """One run of :func:`_launch`; ``die_at``: every process SIGKILLs itself when that 0-based step starts."""
    die = [f"--die-at-step={die_at}"] if die_at is not None else []
    return [str(model), str(data[0]), str(data[1]), str(out), str(batch_size), str(grad_accum), *die, *overrides]


def _log(out: Path) -> str:
    """What the run into ``out`` wrote on the main process's stderr."""
    return Path(f"{out}.rank0.log").read_text()


def _ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _same_losses(got: list[dict], want: list[dict], rel: float = 1e-5) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        assert {k: g[k] for k in COUNT_KEYS} == {k: w[k] for k in COUNT_KEYS}, g["step"]
        for key in LOSS_KEYS:
            assert g[key] == pytest.approx(w[key], rel=rel, abs=1e-7), (g["step"], key)


def _same_weights(got: Path, want: Path) -> None:
    a, b = load_file(got / "model.safetensors"), load_file(want / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-5, msg=key)


#: Janus's task-specific modules frozen: every trainable parameter gets a gradient in every micro-batch,
#: which DeepSpeed ZeRO-3 needs (aia.training.setup.check_deepspeed)
SHARED_ONLY = ("model.frozen=[vqmodel,vision_model,aligner,generation_embeddings,generation_aligner,generation_head]",)
RANDOM_MIXING = ("data.mixing=random",)
#: the ZeRO-3 tests run (not skipped)
DEEPSPEED = importlib.util.find_spec("deepspeed") is not None and shutil.which("c++") is not None

#: what each launch trains: its accelerate config (None: plain python, one process) and its runs, one after the
#: other in the same processes (a launch's start-up, DeepSpeed's above all, costs more than a run of 4 steps):
#: run -> (family, batch size, gradient accumulation, overrides, 0-based step at which every process kills itself)
LAUNCHES = {
    "single": (None, {
        "single/janus": ("janus", 4, 1, (), None),
        "single/emu3": ("emu3", 4, 1, (), None),  # also the reference of Emu3's ZeRO-3 run (no overrides)
        "accum/janus": ("janus", 2, 2, (), None),
        "accum/emu3": ("emu3", 2, 2, (), None),
        "single_random/janus": ("janus", 4, 1, RANDOM_MIXING, None),
        **({"single_zero3_ref/janus": ("janus", 4, 1, SHARED_ONLY, None)} if DEEPSPEED else {}),
    }),
    "ddp": ("cpu_2proc.yaml", {
        "ddp/janus": ("janus", 2, 1, (), None),
        "ddp/emu3": ("emu3", 2, 1, (), None),
        "ddp_random/janus": ("janus", 2, 1, RANDOM_MIXING, None),
    }),
    "fsdp2": ("cpu_2proc_fsdp2.yaml", {
        "fsdp2/janus": ("janus", 2, 1, (), None),
        "fsdp2/emu3": ("emu3", 2, 1, (), None),
        "fsdp2_killed/janus": ("janus", 2, 1, (), 2),  # last: the launch ends there
    }),
    "zero3": ("cpu_2proc_zero3.yaml", {
        "zero3/janus": ("janus", 2, 1, SHARED_ONLY, None),  # also the uninterrupted run of the kill + resume test
        "zero3/emu3": ("emu3", 2, 1, (), None),  # Emu3: both tasks share every trained module
        "zero3_killed/janus": ("janus", 2, 1, SHARED_ONLY, 2),  # last: the launch ends there
    }),
}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """``{family: directory}``: tiny Janus and Emu3 (seed 0) saved once per module."""
    tmp = tmp_path_factory.mktemp("models")
    return {family: save_model(*build(seed=0), tmp / family) for family, build in
            {"janus": tiny_janus, "emu3": tiny_emu3}.items()}


@pytest.fixture(scope="module")
def launched(tiny_models, tiny_data, tmp_path_factory):
    """``launched(name)``: ``(process, {run: output folder})`` of launch ``name`` of :data:`LAUNCHES`, trained
    once per module; every run that was not to be killed returned, and without a killed run the launch
    exited with 0."""
    tmp = tmp_path_factory.mktemp("runs")
    done: dict[str, tuple[subprocess.CompletedProcess, dict[str, Path]]] = {}

    def get(name: str) -> tuple[subprocess.CompletedProcess, dict[str, Path]]:
        if name in done:
            return done[name]
        config, runs = LAUNCHES[name]
        outs = {run: tmp / run for run in runs}
        for out in outs.values():
            out.parent.mkdir(parents=True, exist_ok=True)
        proc = _launch([_run(tiny_models[family], tiny_data, outs[run], batch_size, grad_accum, overrides, die_at)
                        for run, (family, batch_size, grad_accum, overrides, die_at) in runs.items()], config)
        if all(die_at is None for *_, die_at in runs.values()):
            _ok(proc)
        for run, (*_, die_at) in runs.items():
            if die_at is None:
                log = Path(f"{outs[run]}.rank0.log")
                assert log.is_file() and _log(outs[run]).endswith("dist_runner: done\n"), (run, proc.stderr[-3000:])
        done[name] = proc, outs
        return done[name]

    return get


def runs_of(launched, *names: str) -> dict[str, Path]:
    """``{run: output folder}`` of the launches ``names``."""
    return {run: out for name in names for run, out in launched(name)[1].items()}


FAMILIES = pytest.mark.parametrize("family", ["janus", "emu3"])


@pytest.mark.integration
@FAMILIES
@pytest.mark.parametrize("variant", ["ddp", "fsdp2"])
def test_two_processes_equal_one_process_with_the_global_batch(launched, family, variant):
    runs = runs_of(launched, "single", variant)
    single, distributed = runs[f"single/{family}"], runs[f"{variant}/{family}"]
    assert "2 process(es)" in _log(distributed) and "1 process(es)" in _log(single)
    want = _rows(single)
    if family == "janus":  # a CFG-blanked generation sample (Janus drops 10%): fewer AIA samples
        assert any(r["aia_samples/gen"] < 4 for r in want)
    _same_losses(_rows(distributed), want)
    _same_weights(distributed / "final", single / "final")


@pytest.mark.integration
@FAMILIES
def test_fsdp2_final_model_equals_ddp_and_reloads_with_transformers(launched, family):
    runs = runs_of(launched, "ddp", "fsdp2")
    from transformers import AutoConfig, Emu3ForConditionalGeneration, JanusForConditionalGeneration

    final = runs[f"fsdp2/{family}"] / "final"
    _same_weights(final, runs[f"ddp/{family}"] / "final")
    config = AutoConfig.from_pretrained(final)
    cls = {"janus": JanusForConditionalGeneration, "emu3": Emu3ForConditionalGeneration}[config.model_type]
    model = cls.from_pretrained(final)
    saved = load_file(final / "model.safetensors")
    for name, param in model.named_parameters():
        if name in saved:
            torch.testing.assert_close(param.data, saved[name], rtol=0, atol=0, msg=name)
    if config.tie_word_embeddings:  # tiny Janus: the head is the embedding, not saved twice
        assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
        assert not any("lm_head" in k for k in saved)


@pytest.mark.integration
@FAMILIES
def test_gradient_accumulation_equals_the_larger_batch(launched, family):
    runs = runs_of(launched, "single")
    out = runs[f"accum/{family}"]
    _same_losses(_rows(out), _rows(runs[f"single/{family}"]))
    _same_weights(out / "final", runs[f"single/{family}"] / "final")


@pytest.mark.integration
def test_one_task_per_step_as_released_is_normalised_alike(launched):
    """``data.mixing=random`` (the released recipe: one task per step, share 1): DDP 2 x 2 == 1 x 4."""
    runs = runs_of(launched, "single", "ddp")
    single, ddp = runs["single_random/janus"], runs["ddp_random/janus"]
    got, want = _rows(ddp), _rows(single)
    assert {("loss/ntp/und" in r) for r in want} == {True, False}  # both tasks, one per step
    assert [r["step"] for r in got] == [r["step"] for r in want] == [1, 2, 3, 4]
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for key in set(LOSS_KEYS) & w.keys():
            assert g[key] == pytest.approx(w[key], rel=1e-5, abs=1e-7), (g["step"], key)
    _same_weights(ddp / "final", single / "final")


@pytest.mark.integration
def test_fsdp2_kill_and_resume_equals_the_uninterrupted_run(launched, tiny_models, tiny_data):
    killed, runs = launched("fsdp2")
    out, whole = runs["fsdp2_killed/janus"], runs["fsdp2/janus"]
    assert killed.returncode != 0 and (out / "checkpoint-2").is_dir() and not (out / "final").exists()
    assert [r["step"] for r in _rows(out)] == [1, 2]
    resumed = _launch([_run(tiny_models["janus"], tiny_data, out, batch_size=2)], "cpu_2proc_fsdp2.yaml")
    _ok(resumed)
    assert "resumed from checkpoint-2" in resumed.stderr
    assert _rows(out) == [{**r, "time/step_s": _rows(out)[i]["time/step_s"]} for i, r in enumerate(_rows(whole))]
    _same_weights(out / "final", whole / "final")


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
@pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed builds its CPU communication op with a C++ compiler")
@FAMILIES
def test_deepspeed_zero3_equals_one_process(launched, family):
    runs = runs_of(launched, "single", "zero3")
    # Janus: its task-specific modules frozen in both runs (SHARED_ONLY); Emu3: the plain 1 x 4 run
    single = runs["single_zero3_ref/janus" if family == "janus" else "single/emu3"]
    zero3 = runs[f"zero3/{family}"]
    assert "2 process(es)" in _log(zero3)
    _same_losses(_rows(zero3), _rows(single), rel=5e-5)  # measured: 1.1e-5 (ZeRO-3's own gradient norm)
    # ZeRO-3 may save another key layout of the same checkpoint: compare the reloaded models
    from transformers import Emu3ForConditionalGeneration, JanusForConditionalGeneration

    cls = {"janus": JanusForConditionalGeneration, "emu3": Emu3ForConditionalGeneration}[family]
    got = cls.from_pretrained(zero3 / "final").state_dict()
    want = cls.from_pretrained(single / "final").state_dict()
    assert got.keys() == want.keys()
    for key in want:  # measured: 1.8e-5 (Janus), 5.9e-7 (Emu3) after 4 AdamW steps
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=5e-5, msg=key)


@pytest.mark.integration
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="needs deepspeed")
@pytest.mark.skipif(shutil.which("c++") is None, reason="DeepSpeed builds its CPU communication op with a C++ compiler")
def test_deepspeed_zero3_kill_and_resume_equals_the_uninterrupted_run(launched, tiny_models, tiny_data):
    """DeepSpeed's own checkpoint files, read weights-only (aia.training.state), resume exactly. The
    uninterrupted run is the ZeRO-3 Janus run of the equality test above (the same launch, the same overrides)."""
    killed, runs = launched("zero3")
    out, whole = runs["zero3_killed/janus"], runs["zero3/janus"]
    assert killed.returncode != 0 and (out / "checkpoint-2" / "deepspeed").is_dir()
    assert not list((out / "checkpoint-2").glob("*.py"))  # DeepSpeed's recovery scripts are not kept
    resumed = _launch([_run(tiny_models["janus"], tiny_data, out, batch_size=2, overrides=SHARED_ONLY)],
                      "cpu_2proc_zero3.yaml")
    _ok(resumed)
    assert "resumed from checkpoint-2" in resumed.stderr
    assert [{**r, "time/step_s": 0} for r in _rows(out)] == [{**r, "time/step_s": 0} for r in _rows(whole)]
    a, b = load_file(out / "final" / "model.safetensors"), load_file(whole / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("path", sorted((ROOT / "configs/accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_accelerate_configs_parse(path):
    """Every shipped config loads with accelerate's own reader (the GPU ones cannot run here)."""
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(path))
    kind = config.distributed_type.value
    assert kind in {"MULTI_GPU", "FSDP", "DEEPSPEED"} and config.num_processes >= 2
    if kind == "FSDP":
        assert config.fsdp_config["fsdp_version"] == 2
    if kind == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == 3
    assert config.use_cpu == path.name.startswith("cpu_")
