"""``aia demo``: the paper's pipeline at micro scale, on scikit-learn's handwritten digits.

Every step goes through the code a user runs on Janus-Pro or Emu3; only the model is
tiny (a 4-layer ``LlamaForCausalLM`` whose vocabulary holds the words of the prompts
and 32 VQ-code tokens: a purely unified model of Emu3's kind, :mod:`aia.demo.digits`):

1. data: a stratified train/test split of the 1,797 bundled 8x8 digits, a k-means VQ
   fitted on the training split, PNGs + JSONL records (``DIR/data``); a random initial
   model saved with its processor (``DIR/init``);
2. references: an understanding-only and a generation-only model trained with
   :func:`aia.training.trainer.train` (AIA off), from the same initial weights;
3. targets: :func:`aia.measure.teacher.profile_model` of each reference on its own task
   (teacher forcing, training data), then :func:`aia.targets.stages.derive_targets`
   (``DIR/targets.yaml``; per-layer variant ``DIR/targets_per_layer.yaml``);
4. unified models, same initial weights, data, seed and steps: the NTP baseline, NTP +
   AIA with the derived targets, and (``ablations=True``) the paper's two ablations, w/o
   Huber (``aia.mode=mse``) and w/o stage-level targets (per-layer targets); each run's
   config is written to ``DIR/configs/<run>.yaml`` (``aia train`` reads it as it is);
5. evaluation (:mod:`aia.demo.judge`) of every run reloaded from its saved ``final/``
   directory with :func:`aia.adapters.load_model`, on the held-out split, and its
   intensity curves profiled on the training data;
6. ``DIR/report.md``, ``DIR/results.json``, ``DIR/intensity.png`` (curves and targets,
   paper Fig. 1/5 style), ``DIR/losses.png`` (NTP curves, Fig. 3 style),
   ``DIR/losses_aia.png``, ``DIR/samples.png`` (generated digits); ``.svg`` next to each.

``results.json`` keys:

* ``seed``, ``quick``, ``device``, ``ablations``: the call's arguments.
* ``settings``: every hyper-parameter used (:class:`DemoSettings`).
* ``data.train`` / ``data.test``: images per split; ``data.num_codes``: VQ codebook size;
  ``data.vq_rmse_test``: RMS pixel error (0..16 scale) of VQ round trips of the test images.
* ``chance``: 0.1, the accuracy of a uniform guess among ten digits.
* ``judge.acc_real_test``: the judge's accuracy on the real test images (the ceiling of
  generation accuracy); ``judge.acc_vq_test``: on their VQ round trips (the ceiling for a
  model that writes exactly the VQ codes of real digits).
* ``runs.<run>`` for ``und_only``, ``gen_only``, ``baseline``, ``aia`` and, with
  ablations (default except with ``--quick``), ``aia_mse``, ``aia_per_layer``; metrics of the tasks the run trained on:

  - ``und_acc``: understanding accuracy on the test split (greedy among the ten digits);
  - ``gen_acc``: the judge's accuracy on ``settings.gen_samples_per_digit`` images
    sampled per digit (temperature 1);
  - ``ntp_und`` / ``ntp_gen``: final training NTP loss, the mean of the logged
    ``loss/ntp/<task>`` over the last 10% of steps;
  - ``heldout_ntp_und`` / ``heldout_ntp_gen``: NTP loss on the test split;
  - ``gap_und`` / ``gap_gen``: mean over layers of ``|I_l - T_l|``, the run's mean
    intensity curve (``settings.profile_samples`` training samples, teacher forcing)
    against the stage-level targets of ``targets.yaml``;
  - ``curve_und`` / ``curve_gen``: that curve (one value per layer).

* ``targets.<task>``: the stage-level per-layer targets; ``targets_per_layer.<task>``:
  the per-layer ones (the references' curves).
* ``aia_vs_baseline.<metric>`` for ``und_acc`` and ``gen_acc``: ``diff`` (AIA minus
  baseline), ``se`` (standard error of that difference, two independent binomials),
  ``verdict`` (``"better"`` / ``"worse"`` beyond 2 se, else ``"no measurable difference"``);
  ``aia_vs_baseline.helped``: true if a task got better and none worse.
* ``ablations_vs_baseline.<run>.<metric>`` for ``aia_mse`` and ``aia_per_layer`` (when they
  ran): the same comparison of each ablation against the baseline; ``{}`` without ablations.
  (Which way an ablation goes is not fixed: the paper's Table 3 has w/o Huber at or above the
  NTP baseline on 7 of its 8 metrics.)
* ``timing.wall_s``: wall-clock seconds of the whole demo; ``timing.stages_s``: seconds per
  pipeline step (:data:`aia.demo.runs.STEPS`: ``data``, ``references``, ``targets``, ``unified``,
  ``evaluation``, ``report``).
  The timings are the only numbers that vary between two runs with the same seed on the
  same machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from aia.demo.runs import RUNS, STEPS

if TYPE_CHECKING:
    from aia.demo.digits import DigitsSplit, DigitsVQ
    from aia.measure.profile import IntensityProfile
    from aia.targets.presets import TargetProfile

__all__ = ["DEFAULT", "QUICK", "DemoSettings", "run_demo"]

TASKS = ("und", "gen")


@dataclass(frozen=True)
class DemoSettings:
    """Hyper-parameters of the demo (all recorded in ``results.json``)."""

    num_codes: int = 32
    """VQ codebook size (k-means over 2x2 patches)."""
    num_layers: int = 4
    """Decoder layers of the LlamaForCausalLM."""
    hidden_size: int = 64
    """Hidden size (4 heads of 16, MLP 2x)."""
    steps: int = 600
    """Optimizer steps of every training run (one und and one gen micro-batch per step in unified runs)."""
    batch_size: int = 32
    """Samples per micro-batch."""
    lr: float = 2e-3
    """Peak learning rate (AdamW, cosine schedule, 5% warm-up)."""
    weight_und: float = 40.0
    """AIA lambda of understanding batches: the paper text's default lambda = 40. (With the released
    code's 10/5, the generation curve of this 4-layer model stays where NTP puts it: its deviations
    lie near the Huber delta, where the loss's gradient is at most lambda * delta / L.)"""
    weight_gen: float = 40.0
    """AIA lambda of generation batches (as ``weight_und``)."""
    stages: int = 2
    """Stages per task when deriving targets (4 layers: 2 stages of about 2 layers)."""
    profile_samples: int = 100
    """Samples per intensity profile (the paper averages 100)."""
    gen_samples_per_digit: int = 50
    """Images sampled per digit for the generation accuracy."""
    test_fraction: float = 0.2
    """Share of the digits held out."""


DEFAULT = DemoSettings()
QUICK = replace(DEFAULT, steps=150, profile_samples=32, gen_samples_per_digit=10)


def run_demo(
    out: str | Path,
    quick: bool = False,
    seed: int = 0,
    device: str = "cpu",
    ablations: bool | None = None,
    progress: bool = True,
) -> dict:
    """Run the whole micro pipeline into ``out`` and return ``results.json`` as a dict.

    Args:
        out: output directory (created; files of an earlier demo there are overwritten).
        quick: :data:`QUICK` settings (fewer steps and samples: same outputs, lower quality).
        seed: seeds the split, the VQ, the initial weights, data order and sampling.
        device: ``"cpu"`` or ``"cuda"``.
        ablations: also train the w/o-Huber and w/o-stage-level AIA runs (default: yes, except
            with ``quick``, which keeps to the four runs that answer the main question).
        progress: step headers and progress bars on stderr.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if ablations is None:
        ablations = not quick
    demo = _Demo(Path(out).resolve(), QUICK if quick else DEFAULT, quick, seed, device, ablations, progress)
    with _deterministic(device):
        return _run(demo)


# -- the pipeline, one function per step ---------------------------------------------------------


@dataclass(frozen=True)
class _Demo:
    """The call's arguments, which every step reads."""

    out: Path
    s: DemoSettings
    quick: bool
    seed: int
    device: str
    ablations: bool
    progress: bool


@dataclass
class _Data:
    """Step 1's output: the split, its VQ, the data files (``und_train`` ...) and the initial model's directory."""

    split: DigitsSplit
    vq: DigitsVQ
    files: dict[str, Path]
    init: Path

    def test_round_trip(self) -> np.ndarray:
        """The test images after a VQ encode/decode round trip."""
        return self.vq.decode(self.vq.encode(self.split.test_images))


@dataclass
class _Targets:
    """Step 3's output: stage-level and per-layer targets and the YAML files they were written to."""

    stage: TargetProfile
    per_layer: TargetProfile
    stage_path: Path
    per_layer_path: Path


@dataclass
class _Models:
    """Evaluated models loaded once from their ``final/`` directories, and their intensity profiles."""

    device: str
    loaded: dict[str, tuple] = field(default_factory=dict)
    profiles: dict[tuple[str, str], IntensityProfile] = field(default_factory=dict)

    def get(self, name: str, final: Path) -> tuple:
        from aia.adapters import load_model

        if name not in self.loaded:
            self.loaded[name] = load_model(final, device=self.device)
        return self.loaded[name]


def _run(demo: _Demo) -> dict:
    start = time.perf_counter()
    clock = _StepClock(demo.progress)
    demo.out.mkdir(parents=True, exist_ok=True)

    clock.start("data", "data: digits split, VQ codebook, PNG + JSONL, initial model")
    data = _prepare_data(demo)

    clock.start("references", "reference models: understanding-only and generation-only (AIA off)")
    finals = _train_references(demo, data)

    clock.start("targets", "reference profiles -> stage-level targets")
    models = _Models(demo.device)
    targets = _targets_from_references(demo, data, finals, models)

    clock.start("unified", "unified models: NTP baseline, NTP + AIA" + (", ablations" if demo.ablations else ""))
    finals |= _train_unified(demo, data, targets)

    clock.start("evaluation", "evaluation on the held-out split; intensity curves on the training data")
    runs, samples, judge = _evaluate(demo, data, finals, targets, models)

    clock.start("report", "report")
    results = _collect_results(demo, data, runs, judge, targets)
    _write_figures(demo, finals, targets, models, samples)
    results["timing"] = {"wall_s": time.perf_counter() - start, "stages_s": clock.stop()}
    _write_results(demo, results)
    return results


def _prepare_data(demo: _Demo) -> _Data:
    """Step 1: split, VQ, PNG + JSONL data in ``out/data``, the random initial model in ``out/init``."""
    from aia.demo.digits import DigitsProcessor, DigitsVQ, build_digits_model, load_split, write_digits_data

    s, out = demo.s, demo.out
    split = load_split(demo.seed, s.test_fraction)
    vq = DigitsVQ.fit(split.train_images, s.num_codes, demo.seed)
    processor = DigitsProcessor.build(vq)
    files = write_digits_data(out / "data", split)
    init = build_digits_model(processor, s.num_layers, s.hidden_size, seed=demo.seed)
    init.save_pretrained(out / "init")
    processor.save_pretrained(out / "init")
    return _Data(split, vq, files, out / "init")


def _train_references(demo: _Demo, data: _Data) -> dict[str, Path]:
    """Step 2: the understanding-only and generation-only references (AIA off); their ``final/`` dirs."""
    return {name: _train_run(demo, data, name) for name in ("und_only", "gen_only")}


def _train_run(demo: _Demo, data: _Data, name: str, aia: dict | None = None) -> Path:
    """Train run ``name`` of :data:`RUNS` from the initial model (AIA settings ``aia``, or off); its ``final/`` dir."""
    from aia.training.config import load_config
    from aia.training.trainer import train

    if demo.progress:
        print(f"-- training {name}: {RUNS[name][0]}", file=sys.stderr, flush=True)
    cfg = load_config(_run_config(demo, data, name, aia))
    return train(cfg, accelerator=_accelerator(demo.device)).final_dir


def _targets_from_references(demo: _Demo, data: _Data, finals: dict[str, Path], models: _Models) -> _Targets:
    """Step 3: profile each reference on its own task; stage-level and per-layer targets to ``out/*.yaml``."""
    from aia.targets.stages import derive_targets

    und_ref = _profile(demo, data, models, "und_only", finals["und_only"], "und")
    gen_ref = _profile(demo, data, models, "gen_only", finals["gen_only"], "gen")
    stage = derive_targets(gen_ref, und_ref, stages=demo.s.stages, name="digits references")
    per_layer = derive_targets(gen_ref, und_ref, per_layer=True, name="digits references, per layer")
    paths = stage.to_yaml(demo.out / "targets.yaml"), per_layer.to_yaml(demo.out / "targets_per_layer.yaml")
    return _Targets(stage, per_layer, *paths)


def _train_unified(demo: _Demo, data: _Data, targets: _Targets) -> dict[str, Path]:
    """Step 4: the NTP baseline, NTP + AIA and (``demo.ablations``) the two ablations; their ``final/`` dirs."""
    weights = {"weight_und": demo.s.weight_und, "weight_gen": demo.s.weight_gen}
    aia = {"targets": str(targets.stage_path), **weights}
    runs = {"baseline": None, "aia": aia}
    if demo.ablations:
        runs["aia_mse"] = {"targets": str(targets.stage_path), "mode": "mse", **weights}
        runs["aia_per_layer"] = {"targets": str(targets.per_layer_path), **weights}
    return {name: _train_run(demo, data, name, settings) for name, settings in runs.items()}


def _evaluate(
    demo: _Demo, data: _Data, finals: dict[str, Path], targets: _Targets, models: _Models
) -> tuple[dict[str, dict], dict[str, np.ndarray], dict[str, float]]:
    """Step 5: every run's metrics on the held-out split and its intensity curves on the training data.

    Returns ``(runs, samples, judge)``: ``results["runs"]``, the first sampled image of each digit per
    generating run, and the judge's accuracies on the real and VQ round-tripped test images.
    """
    from aia.demo.judge import fit_judge

    split = data.split
    judge = fit_judge(split)
    flat = len(split.test_images), -1
    scores = {
        "acc_real_test": float(judge.score(split.test_images.reshape(flat), split.test_labels)),
        "acc_vq_test": float(judge.score(data.test_round_trip().reshape(flat), split.test_labels)),
    }
    generator = torch.Generator(device=demo.device).manual_seed(demo.seed)
    runs, samples = {}, {}
    for name, final in finals.items():
        runs[name], images = _evaluate_run(demo, data, name, final, targets, models, judge, generator)
        if images is not None:
            samples[name] = images
    return runs, samples, scores


def _collect_results(demo: _Demo, data: _Data, runs: dict, judge: dict, targets: _Targets) -> dict:
    """Step 6: ``results.json`` (without ``timing``) from the evaluation."""
    s, split = demo.s, data.split
    n_und, n_gen = len(split.test_labels), 10 * s.gen_samples_per_digit
    recon = data.test_round_trip()
    results = {
        "seed": demo.seed,
        "quick": demo.quick,
        "device": demo.device,
        "ablations": demo.ablations,
        "settings": asdict(s),
        "data": {
            "train": len(split.train_labels),
            "test": n_und,
            "num_codes": data.vq.num_codes,
            "vq_rmse_test": float(np.sqrt(((recon - split.test_images) ** 2).mean())),
        },
        "chance": 0.1,
        "judge": judge,
        "runs": runs,
        "targets": {t: targets.stage.per_layer(t)[0] for t in TASKS},
        "targets_per_layer": {t: targets.per_layer.per_layer(t)[0] for t in TASKS},
    }

    def versus_baseline(name: str) -> dict:
        return {
            k: _compare(runs[name][k], runs["baseline"][k], n, n) for k, n in (("und_acc", n_und), ("gen_acc", n_gen))
        }

    results["aia_vs_baseline"] = versus_baseline("aia")
    verdicts = [results["aia_vs_baseline"][k]["verdict"] for k in ("und_acc", "gen_acc")]
    results["aia_vs_baseline"]["helped"] = "better" in verdicts and "worse" not in verdicts
    results["ablations_vs_baseline"] = {
        name: versus_baseline(name) for name in ("aia_mse", "aia_per_layer") if name in runs
    }
    return results


def _write_figures(
    demo: _Demo, finals: dict[str, Path], targets: _Targets, models: _Models, samples: dict[str, np.ndarray]
) -> None:
    """Step 6: intensity curves (every profile, in run order), losses and sampled digits."""
    from aia.demo.report import write_figures

    profiles = [models.profiles[k] for k in sorted(models.profiles, key=_order)]
    write_figures(demo.out, profiles, targets.stage, finals, samples)


def _write_results(demo: _Demo, results: dict) -> None:
    """Step 6: ``results.json`` and ``report.md``."""
    from aia.demo.report import write_report

    out = demo.out
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(out, results)
    if demo.progress:
        print(f"\naia demo: wrote {out / 'report.md'} ({results['timing']['wall_s']:.0f} s)", file=sys.stderr)


# -- pieces of the steps -------------------------------------------------------------------------


def _profile(demo: _Demo, data: _Data, models: _Models, name: str, final: Path, task: str) -> IntensityProfile:
    """Run ``name``'s intensity profile on ``task`` training data, saved to ``out/profiles`` (once per pair)."""
    from aia.measure.profile import save_profile
    from aia.measure.teacher import profile_model

    if (name, task) not in models.profiles:
        model, proc = models.get(name, final)
        p = profile_model(
            model, proc, data.files[f"{task}_train"], task, demo.s.profile_samples, batch_size=32, model_name=name,
            progress=demo.progress,
        )  # fmt: skip
        save_profile(p, demo.out / "profiles" / f"{name}_{task}.json")
        models.profiles[name, task] = p
    return models.profiles[name, task]


def _evaluate_run(
    demo: _Demo, data: _Data, name: str, final: Path, targets: _Targets, models: _Models, judge, generator
) -> tuple[dict, np.ndarray | None]:
    """One row of ``results["runs"]`` and, for a generating run, the first sampled image of each digit."""
    from aia.adapters import get_adapter
    from aia.demo.judge import heldout_ntp, sample_codes, understanding_accuracy

    per_digit = demo.s.gen_samples_per_digit
    model, proc = models.get(name, final)
    adapter = get_adapter(model, proc)
    row: dict = {}
    first_images = None
    for task in RUNS[name][1]:
        if task == "und":
            row["und_acc"] = understanding_accuracy(model, adapter, data.files["und_test"])
        else:
            digits = [d for d in range(10) for _ in range(per_digit)]
            images = data.vq.decode(sample_codes(model, adapter, digits, generator))
            row["gen_acc"] = float((judge.predict(images.reshape(len(images), -1)) == np.array(digits)).mean())
            first_images = images[::per_digit]
        row[f"ntp_{task}"] = _final_ntp(final.parent, task)
        row[f"heldout_ntp_{task}"] = heldout_ntp(model, adapter, data.files[f"{task}_test"], task)
        p = _profile(demo, data, models, name, final, task)
        row[f"gap_{task}"] = float(np.abs(p.mean - np.asarray(targets.stage.per_layer(task)[0])).mean())
        row[f"curve_{task}"] = p.mean.tolist()
    return row, first_images


def _run_config(demo: _Demo, data: _Data, name: str, aia: dict | None) -> Path:
    """Write ``out/configs/<name>.yaml``, the ``aia train`` config of one run; returns its path."""
    s, out = demo.s, demo.out
    tasks = RUNS[name][1]
    cfg = {
        "model": {"path": str(data.init)},
        "data": {
            "und": str(data.files["und_train"]) if "und" in tasks else None,
            "gen": str(data.files["gen_train"]) if "gen" in tasks else None,
            "batch_size": s.batch_size,
            "cache_examples": True,  # 1,437 tiny token-only samples: encode once, not every step
        },
        "aia": {"enabled": False} if aia is None else {"enabled": True, **aia},
        "optim": {"lr": s.lr, "warmup_ratio": 0.05},
        "train": {
            "output_dir": str(out / "runs" / name),
            "max_steps": s.steps,
            "seed": demo.seed,
            "intensity_every": 10,
            "save_total_limit": 1,
            "resume": False,
            "progress": demo.progress,
        },
    }
    path = out / "configs" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _final_ntp(run_dir: Path, task: str) -> float:
    from aia.training.metrics import read_metrics

    values = [r[f"loss/ntp/{task}"] for r in read_metrics(run_dir) if f"loss/ntp/{task}" in r]
    tail = values[-max(1, len(values) // 10) :]
    return float(np.mean(tail))


def _compare(a: float, b: float, n_a: int, n_b: int) -> dict:
    se = math.sqrt(a * (1 - a) / n_a + b * (1 - b) / n_b)
    diff = a - b
    if abs(diff) > 2 * se and diff != 0:
        verdict = "better" if diff > 0 else "worse"
    else:
        verdict = "no measurable difference"
    return {"diff": diff, "se": se, "verdict": verdict}


def _order(key: tuple[str, str]) -> tuple[int, int]:
    return list(RUNS).index(key[0]), TASKS.index(key[1])


# -- process setup -------------------------------------------------------------------------------


class _StepClock:
    """Seconds per pipeline step (:data:`STEPS`), with a header on stderr as each step starts."""

    def __init__(self, progress: bool):
        self.progress = progress
        self.seconds: dict[str, float] = {}
        self._step: str | None = None
        self._t = time.perf_counter()

    def start(self, step: str, header: str) -> None:
        self.stop()
        self._step = step
        if self.progress:
            print(f"\n== aia demo [{STEPS.index(step) + 1}/{len(STEPS)}] {header}", file=sys.stderr, flush=True)

    def stop(self) -> dict[str, float]:
        """Close the running step's clock; returns the seconds of every step so far."""
        now = time.perf_counter()
        if self._step is not None:
            self.seconds[self._step] = now - self._t
        self._step, self._t = None, now
        return self.seconds


@contextlib.contextmanager
def _deterministic(device: str):
    """Deterministic kernels for the demo's duration (restored after)."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    if device.startswith("cuda"):
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def _accelerator(device: str):
    """A fresh single-process ``Accelerator`` on ``device``, whatever an earlier one in this process used."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedDataParallelKwargs

    if PartialState._shared_state and PartialState().device.type != torch.device(device).type:
        # accelerate keeps one process-wide device; the demo runs alone in its process, so it may reset it.
        AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(
        cpu=device == "cpu", kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)]
    )
