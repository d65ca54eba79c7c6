"""``aia demo``: the paper's protocol at micro scale, on scikit-learn's handwritten digits.

Every step goes through the code a user runs on Janus-Pro or Emu3; only the model is
tiny (a 4-layer ``LlamaForCausalLM`` whose vocabulary holds the words of the prompts
and 32 VQ-code tokens: a purely unified model of Emu3's kind, :mod:`aia.demo.digits`).
The paper adds AIA when post-training an already pretrained unified model (Janus-Pro) or
in the SFT of one (Emu3); the demo does the same:

1. data: a stratified train/test split of the 1,797 bundled 8x8 digits, a k-means VQ
   fitted on the training split, PNGs + JSONL records (``DIR/data``); a random initial
   model saved with its processor (``DIR/init``);
2. references: an understanding-only and a generation-only model trained with
   :func:`aia.training.trainer.train` (AIA off) from the initial weights;
3. targets: :func:`aia.measure.teacher.profile_model` of each reference on its own task
   (teacher forcing, training data), then :func:`aia.targets.stages.derive_targets`
   (``DIR/targets.yaml``; per-layer variant ``DIR/targets_per_layer.yaml``);
4. pretraining: one unified model trained on both tasks with NTP only from the initial
   weights (``DIR/runs/pretrained``): the "released checkpoint" of the protocol. Its
   intensity curves (evaluation step) are the analogue of the paper's Fig. 1;
5. post-training, once per seed of ``seeds``: the NTP baseline, NTP + AIA with the derived
   targets and (``ablations``) the paper's two ablations, w/o Huber (``aia.mode=mse``) and
   w/o stage-level targets (per-layer targets), all continuing from the pretrained
   checkpoint's ``final/`` directory with the same data, steps, learning rate and seed: they
   differ only in the AIA term. The seed sets the data order and CFG prompt blanking
   (``train.seed``) and the sampling of the generation evaluation; the checkpoint is shared by every seed. Runs go to
   ``DIR/runs/seed<k>/<run>``, their configs to ``DIR/configs/seed<k>/<run>.yaml`` (``aia
   train`` reads them as they are);
6. evaluation (:mod:`aia.demo.judge`) of every model reloaded from its saved ``final/``
   directory with :func:`aia.adapters.load_model`, on the held-out split, and its
   intensity curves profiled on the training data (``DIR/profiles``);
7. ``DIR/report.md``, ``DIR/results.json``, ``DIR/intensity.png`` (the pretrained model's
   curves, the references, the targets and the post-trained curves of every seed),
   ``DIR/losses_pretraining.png`` (NTP curves of the runs from scratch),
   ``DIR/losses.png`` / ``DIR/losses_aia.png`` (NTP / AIA curves of the first seed's
   post-training runs), ``DIR/samples.png`` (generated digits); ``.svg`` next to each.

``results.json`` keys:

* ``seed``, ``seeds``, ``quick``, ``device``, ``ablations``: the call's arguments (``seed``
  seeds the split, the VQ, the initial weights and the runs from scratch; ``seeds`` lists
  the post-training seeds ``seed, seed + 1, ...``).
* ``settings``: every hyper-parameter used (:class:`DemoSettings`).
* ``data.train`` / ``data.test``: images per split; ``data.num_codes``: VQ codebook size;
  ``data.vq_rmse_test``: RMS pixel error (0..16 scale) of VQ round trips of the test images.
* ``chance``: 0.1, the accuracy of a uniform guess among ten digits.
* ``judge.acc_real_test``: the judge's accuracy on the real test images (the ceiling of
  generation accuracy); ``judge.acc_vq_test``: on their VQ round trips (the ceiling for a
  model that writes exactly the VQ codes of real digits).
* ``runs.<run>`` for ``und_only``, ``gen_only`` and ``pretrained`` (the shared models);
  ``per_seed``: one ``{"seed": k, "runs": {<run>: row}}`` per post-training seed, with the
  runs ``baseline``, ``aia`` and, with ablations (default except with ``--quick``),
  ``aia_mse``, ``aia_per_layer``. A row holds the metrics of the tasks the run trained on:

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

* ``targets.<task>`` / ``targets_delta.<task>``: the stage-level per-layer targets and their
  Huber deltas; ``targets_per_layer.<task>``: the per-layer ones (the references' curves).
* ``aia_vs_baseline.<metric>`` for each metric of :data:`aia.demo.runs.METRICS` (``und_acc``,
  ``gen_acc``, ``heldout_ntp_und``, ``heldout_ntp_gen``, ``gap_und``, ``gap_gen``):
  ``per_seed`` (AIA minus baseline at each seed), ``diff`` (their mean), ``se`` (their standard
  error across seeds, ``std(ddof=1) / sqrt(N)``; null with one seed), ``verdict`` (beyond 2 se:
  ``"better"`` / ``"worse"`` for accuracies and held-out NTP, ``"closer"`` / ``"farther"`` for the
  intensity gap; else ``"no measurable difference"``; with one seed ``"one seed: not assessed"``);
  ``aia_vs_baseline.helped``: true if an accuracy got better and none worse, among the accuracies
  not at chance in every baseline and AIA run (:func:`aia.demo.runs.uninformative`: within two
  binomial standard errors of ``chance``, :func:`aia.demo.runs.chance_bound`; the report flags them).
* ``ablations_vs_baseline.<run>.<metric>`` for ``aia_mse`` and ``aia_per_layer`` (when they
  ran): the same comparison of each ablation against the baseline; ``{}`` without ablations.
  (Which way an ablation goes is not fixed: the paper's Table 3 has w/o Huber at or above the
  NTP baseline on 7 of its 8 metrics.)
* ``timing.wall_s``: wall-clock seconds of the whole demo; ``timing.stages_s``: seconds per
  pipeline step (:data:`aia.demo.runs.STEPS`).
  The timings are the only numbers that vary between two runs with the same seeds on the
  same machine; on another CPU the other numbers differ in their 3rd-4th decimal
  (:data:`aia.demo.report.REPRODUCIBILITY`).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import yaml

from aia.demo.runs import ABLATIONS, ACCURACIES, METRICS, POST_RUNS, RUNS, STEPS, uninformative

if TYPE_CHECKING:
    from aia.demo.digits import DigitsSplit, DigitsVQ
    from aia.measure.profile import IntensityProfile
    from aia.targets.presets import TargetProfile

__all__ = ["DEFAULT", "DEFAULT_SEEDS", "QUICK", "QUICK_SEEDS", "DemoSettings", "run_demo"]

TASKS = ("und", "gen")
DEFAULT_SEEDS = 5
"""Post-training seeds of a default run."""
QUICK_SEEDS = 2
"""Post-training seeds of a ``--quick`` run."""


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
    """Optimizer steps of the runs from scratch: the references and the unified pretraining (one und
    and one gen micro-batch per step in unified runs)."""
    lr: float = 2e-3
    """Peak learning rate of the runs from scratch (AdamW, cosine schedule, 5% warm-up)."""
    post_steps: int = 150
    """Optimizer steps of every post-training run (baseline, AIA, ablations), from the pretrained checkpoint."""
    post_lr: float = 5e-4
    """Peak learning rate of the post-training runs (fresh AdamW, cosine schedule, 5% warm-up)."""
    batch_size: int = 32
    """Samples per micro-batch."""
    weight_und: float = 40.0
    """AIA lambda of understanding batches: the paper text's default lambda = 40."""
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
QUICK = replace(DEFAULT, steps=150, post_steps=60, profile_samples=32, gen_samples_per_digit=10)


def run_demo(
    out: str | Path,
    quick: bool = False,
    seed: int = 0,
    device: str = "cpu",
    ablations: bool | None = None,
    progress: bool = True,
    seeds: int | None = None,
    settings: DemoSettings | None = None,
    debug: bool = False,
) -> dict:
    """Run the whole micro pipeline into ``out`` and return ``results.json`` as a dict.

    Args:
        out: output directory (created; files of an earlier demo there are overwritten).
        quick: :data:`QUICK` settings (fewer steps and samples: same outputs, lower quality).
        seed: seeds the split, the VQ, the initial weights and the runs from scratch (references,
            pretraining); the first post-training seed.
        device: ``"cpu"`` or ``"cuda"``.
        ablations: also train the w/o-Huber and w/o-stage-level AIA runs (default: yes, except
            with ``quick``, which keeps to the runs that answer the main question).
        progress: step headers and one overall progress bar (elapsed time, ETA) on stderr.
        seeds: how many times the post-training comparison is repeated, with seeds ``seed``,
            ``seed + 1``, ... (data order and sampling; the pretrained checkpoint is shared).
            Default :data:`DEFAULT_SEEDS`, with ``quick`` :data:`QUICK_SEEDS`.
        settings: hyper-parameters instead of :data:`DEFAULT` / :data:`QUICK`.
        debug: show what each run prints (its data check and training bars, its log line, weight
            loading, the profiles' bars) instead of the overall bar (``aia --debug demo``). Without
            it each run's own messages go to ``DIR/runs/<run>/log.txt``.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    if seeds is None:
        seeds = QUICK_SEEDS if quick else DEFAULT_SEEDS
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds!r}")
    if ablations is None:
        ablations = not quick
    if settings is None:
        settings = QUICK if quick else DEFAULT
    post_seeds = tuple(range(seed, seed + seeds))
    demo = _Demo(Path(out).resolve(), settings, quick, seed, post_seeds, device, ablations, progress, debug)
    if not debug:
        from aia.noise import silence

        silence()
    try:
        with _deterministic(device), _library_bars(debug):
            return _run(demo)
    finally:
        demo.meter.close(done=False)  # after an error too: the bar's redraw thread stops


# -- the pipeline, one function per step ---------------------------------------------------------


@dataclass(frozen=True)
class _Demo:
    """The call's arguments, which every step reads."""

    out: Path
    s: DemoSettings
    quick: bool
    seed: int
    seeds: tuple[int, ...]
    device: str
    ablations: bool
    progress: bool
    debug: bool
    meter: _Progress = field(init=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "meter", _Progress(self))

    @property
    def inner_bars(self) -> bool:
        """Whether the runs and profiles show their own bars (``debug``; else the overall bar counts them)."""
        return self.progress and self.debug


@dataclass(frozen=True)
class _Run:
    """One training run: its name in :data:`RUNS` and, for post-training runs, its seed."""

    name: str
    seed: int | None = None

    @property
    def key(self) -> str:
        """Its path under ``runs/``, ``configs/`` and ``profiles/``: ``name`` or ``seed<k>/name``."""
        return self.name if self.seed is None else f"seed{self.seed}/{self.name}"


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
    loaded: dict[_Run, tuple] = field(default_factory=dict)
    profiles: dict[tuple[_Run, str], IntensityProfile] = field(default_factory=dict)

    def get(self, run: _Run, final: Path) -> tuple:
        from aia.adapters import load_model

        if run not in self.loaded:
            self.loaded[run] = load_model(final, device=self.device)
        return self.loaded[run]


def _run(demo: _Demo) -> dict:
    start = time.perf_counter()
    clock = demo.meter
    demo.out.mkdir(parents=True, exist_ok=True)

    clock.start("data", "data: digits split, VQ codebook, PNG + JSONL, initial model")
    data = _prepare_data(demo)
    clock.advance(_DATA_UNITS)

    clock.start("references", "reference models: understanding-only and generation-only (AIA off)")
    finals = _train_references(demo, data)

    clock.start("targets", "reference profiles -> stage-level targets")
    models = _Models(demo.device)
    targets = _targets_from_references(demo, data, finals, models)

    clock.start("pretraining", "the unified model pretrained on both tasks with NTP only (the released checkpoint)")
    finals[_Run("pretrained")] = _train_run(demo, data, _Run("pretrained"), data.init, demo.s.steps, demo.s.lr)

    what = "NTP baseline, NTP + AIA" + (", ablations" if demo.ablations else "")
    clock.start("post-training", f"post-training from the checkpoint, {len(demo.seeds)} seed(s): {what}")
    finals |= _post_train(demo, data, targets, finals[_Run("pretrained")])

    clock.start("evaluation", "evaluation on the held-out split; intensity curves on the training data")
    rows, samples, judge = _evaluate(demo, data, finals, targets, models)

    clock.start("report", "report")
    results = _collect_results(demo, data, rows, judge, targets)
    _write_figures(demo, finals, results, targets, samples)
    results["timing"] = {"wall_s": time.perf_counter() - start, "stages_s": clock.stop()}
    clock.advance(_REPORT_UNITS)
    clock.close()
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


def _train_references(demo: _Demo, data: _Data) -> dict[_Run, Path]:
    """Step 2: the understanding-only and generation-only references (AIA off); their ``final/`` dirs."""
    return {
        _Run(name): _train_run(demo, data, _Run(name), data.init, demo.s.steps, demo.s.lr)
        for name in ("und_only", "gen_only")
    }


def _train_run(
    demo: _Demo, data: _Data, run: _Run, start: Path, steps: int, lr: float, aia: dict | None = None
) -> Path:
    """Train ``run`` from the model in ``start`` (AIA settings ``aia``, or off); its ``final/`` dir."""
    from aia.training.config import load_config
    from aia.training.trainer import train

    line = f"-- training {run.key}: {RUNS[run.name][0]}" if demo.debug else None  # else the bar names it
    demo.meter.say(line, postfix=f"training {run.key}")
    cfg = load_config(_run_config(demo, data, run, start, steps, lr, aia))
    with _run_output(demo, run):
        final = train(cfg, accelerator=_accelerator(demo.device)).final_dir
    demo.meter.advance(steps * len(RUNS[run.name][1]))
    return final


def _targets_from_references(demo: _Demo, data: _Data, finals: dict[_Run, Path], models: _Models) -> _Targets:
    """Step 3: profile each reference on its own task; stage-level and per-layer targets to ``out/*.yaml``."""
    from aia.targets.stages import derive_targets

    und_ref = _profile(demo, data, models, _Run("und_only"), finals[_Run("und_only")], "und")
    gen_ref = _profile(demo, data, models, _Run("gen_only"), finals[_Run("gen_only")], "gen")
    stage = derive_targets(gen_ref, und_ref, stages=demo.s.stages, name="digits references")
    per_layer = derive_targets(gen_ref, und_ref, per_layer=True, name="digits references, per layer")
    paths = stage.to_yaml(demo.out / "targets.yaml"), per_layer.to_yaml(demo.out / "targets_per_layer.yaml")
    return _Targets(stage, per_layer, *paths)


def _post_runs(demo: _Demo) -> tuple[str, ...]:
    return tuple(name for name in POST_RUNS if demo.ablations or name not in ABLATIONS)


def _post_train(demo: _Demo, data: _Data, targets: _Targets, pretrained: Path) -> dict[_Run, Path]:
    """Step 5: per seed, the NTP baseline, NTP + AIA and (``demo.ablations``) the two ablations, all from
    the pretrained checkpoint; their ``final/`` dirs."""
    s = demo.s
    weights = {"weight_und": s.weight_und, "weight_gen": s.weight_gen}
    aia = {
        "baseline": None,
        "aia": {"targets": str(targets.stage_path), **weights},
        "aia_mse": {"targets": str(targets.stage_path), "mode": "mse", **weights},
        "aia_per_layer": {"targets": str(targets.per_layer_path), **weights},
    }
    finals = {}
    for seed in demo.seeds:
        for name in _post_runs(demo):
            run = _Run(name, seed)
            finals[run] = _train_run(demo, data, run, pretrained, s.post_steps, s.post_lr, aia[name])
    return finals


def _evaluate(
    demo: _Demo, data: _Data, finals: dict[_Run, Path], targets: _Targets, models: _Models
) -> tuple[dict[_Run, dict], dict[_Run, np.ndarray], dict[str, float]]:
    """Step 6: every run's metrics on the held-out split and its intensity curves on the training data.

    Returns ``(rows, samples, judge)``: a results row per run, the first sampled image of each digit
    per generating run, and the judge's accuracies on the real and VQ round-tripped test images.
    """
    from aia.demo.judge import fit_judge

    split = data.split
    judge = fit_judge(split)
    flat = len(split.test_images), -1
    scores = {
        "acc_real_test": float(judge.score(split.test_images.reshape(flat), split.test_labels)),
        "acc_vq_test": float(judge.score(data.test_round_trip().reshape(flat), split.test_labels)),
    }
    rows, samples = {}, {}
    for run, final in finals.items():
        rows[run], images = _evaluate_run(demo, data, run, final, targets, models, judge)
        if images is not None:
            samples[run] = images
    return rows, samples, scores


def _collect_results(demo: _Demo, data: _Data, rows: dict[_Run, dict], judge: dict, targets: _Targets) -> dict:
    """Step 7: ``results.json`` (without ``timing``) from the evaluation."""
    s, split = demo.s, data.split
    recon = data.test_round_trip()
    per_seed = [
        {"seed": seed, "runs": {name: rows[_Run(name, seed)] for name in _post_runs(demo)}} for seed in demo.seeds
    ]
    results = {
        "seed": demo.seed,
        "seeds": list(demo.seeds),
        "quick": demo.quick,
        "device": demo.device,
        "ablations": demo.ablations,
        "settings": asdict(s),
        "data": {
            "train": len(split.train_labels),
            "test": len(split.test_labels),
            "num_codes": data.vq.num_codes,
            "vq_rmse_test": float(np.sqrt(((recon - split.test_images) ** 2).mean())),
        },
        "chance": 0.1,
        "judge": judge,
        "runs": {run.name: row for run, row in rows.items() if run.seed is None},
        "per_seed": per_seed,
        "targets": {t: targets.stage.per_layer(t)[0] for t in TASKS},
        "targets_delta": {t: targets.stage.per_layer(t)[1] for t in TASKS},
        "targets_per_layer": {t: targets.per_layer.per_layer(t)[0] for t in TASKS},
    }
    results["aia_vs_baseline"] = _versus_baseline(per_seed, "aia")
    verdicts = [results["aia_vs_baseline"][k]["verdict"] for k in ACCURACIES if k not in uninformative(results)]
    results["aia_vs_baseline"]["helped"] = "better" in verdicts and "worse" not in verdicts
    results["ablations_vs_baseline"] = {
        name: _versus_baseline(per_seed, name) for name in ABLATIONS if name in per_seed[0]["runs"]
    }
    return results


def _write_figures(
    demo: _Demo, finals: dict[_Run, Path], results: dict, targets: _Targets, samples: dict[_Run, np.ndarray]
) -> None:
    """Step 7: intensity curves (pretrained, references, targets, post-trained), losses and sampled digits."""
    from aia.demo.report import write_figures

    first = demo.seeds[0]
    label = lambda run: RUNS[run.name][0] + ("" if run.seed is None else f" (seed {run.seed})")  # noqa: E731
    scratch = {label(r): f.parent for r, f in finals.items() if r.seed is None}
    post = {label(r): f.parent for r, f in finals.items() if r.seed == first}
    shown = {label(r): images for r, images in samples.items() if r.seed in (None, first)}
    write_figures(demo.out, results, targets.stage, scratch, post, shown)


def _write_results(demo: _Demo, results: dict) -> None:
    """Step 7: ``results.json`` and ``report.md``."""
    from aia.demo.report import write_report

    out = demo.out
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(out, results)
    if demo.progress:
        print(f"\naia demo: wrote {out / 'report.md'} ({results['timing']['wall_s']:.0f} s)", file=sys.stderr)


# -- pieces of the steps -------------------------------------------------------------------------


def _profile(demo: _Demo, data: _Data, models: _Models, run: _Run, final: Path, task: str) -> IntensityProfile:
    """``run``'s intensity profile on ``task`` training data, saved to ``out/profiles`` (once per pair)."""
    from aia.measure.profile import save_profile
    from aia.measure.teacher import profile_model

    if (run, task) not in models.profiles:
        model, proc = models.get(run, final)
        p = profile_model(
            model, proc, data.files[f"{task}_train"], task, demo.s.profile_samples, batch_size=32,
            model_name=run.key, progress=demo.inner_bars,
        )  # fmt: skip
        path = demo.out / "profiles" / f"{run.key}_{task}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_profile(p, path)
        models.profiles[run, task] = p
    return models.profiles[run, task]


def _evaluate_run(
    demo: _Demo, data: _Data, run: _Run, final: Path, targets: _Targets, models: _Models, judge
) -> tuple[dict, np.ndarray | None]:
    """One results row and, for a generating run, the first sampled image of each digit.

    The sampling generator is seeded with the run's seed (``demo.seed`` for the shared runs), so
    the runs of one seed are sampled with the same random numbers.
    """
    from aia.adapters import get_adapter
    from aia.demo.judge import heldout_ntp, sample_codes, understanding_accuracy

    per_digit = demo.s.gen_samples_per_digit
    demo.meter.say(None, postfix=f"evaluating {run.key}")
    model, proc = models.get(run, final)
    adapter = get_adapter(model, proc)
    row: dict = {}
    first_images = None
    for task in RUNS[run.name][1]:
        if task == "und":
            row["und_acc"] = understanding_accuracy(model, adapter, data.files["und_test"])
        else:
            generator = torch.Generator(device=demo.device).manual_seed(demo.seed if run.seed is None else run.seed)
            digits = [d for d in range(10) for _ in range(per_digit)]
            images = data.vq.decode(sample_codes(model, adapter, digits, generator))
            row["gen_acc"] = float((judge.predict(images.reshape(len(images), -1)) == np.array(digits)).mean())
            first_images = images[::per_digit]
        row[f"ntp_{task}"] = _final_ntp(final.parent, task)
        row[f"heldout_ntp_{task}"] = heldout_ntp(model, adapter, data.files[f"{task}_test"], task)
        p = _profile(demo, data, models, run, final, task)
        row[f"gap_{task}"] = float(np.abs(p.mean - np.asarray(targets.stage.per_layer(task)[0])).mean())
        row[f"curve_{task}"] = p.mean.tolist()
        demo.meter.advance(_eval_units(demo.s, task))
    return row, first_images


def _run_config(demo: _Demo, data: _Data, run: _Run, start: Path, steps: int, lr: float, aia: dict | None) -> Path:
    """Write ``out/configs/<run key>.yaml``, the ``aia train`` config of one run; returns its path."""
    s, out = demo.s, demo.out
    tasks = RUNS[run.name][1]
    cfg = {
        "model": {"path": str(start)},
        "data": {
            "und": str(data.files["und_train"]) if "und" in tasks else None,
            "gen": str(data.files["gen_train"]) if "gen" in tasks else None,
            "batch_size": s.batch_size,
            "cache_examples": True,  # 1,437 tiny token-only samples: encode once, not every step
        },
        "aia": {"enabled": False} if aia is None else {"enabled": True, **aia},
        "optim": {"lr": lr, "warmup_ratio": 0.05},
        "train": {
            "output_dir": str(out / "runs" / run.key),
            "max_steps": steps,
            "seed": demo.seed if run.seed is None else run.seed,
            "intensity_every": 10,
            "save_total_limit": 1,
            "resume": False,
            "progress": demo.inner_bars,
        },
    }
    path = out / "configs" / f"{run.key}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _final_ntp(run_dir: Path, task: str) -> float:
    from aia.training.metrics import read_metrics

    values = [r[f"loss/ntp/{task}"] for r in read_metrics(run_dir) if f"loss/ntp/{task}" in r]
    tail = values[-max(1, len(values) // 10) :]
    return float(np.mean(tail))


def _versus_baseline(per_seed: list[dict], name: str) -> dict:
    """Run ``name`` against the baseline of the same seed, for every metric of :data:`METRICS`."""
    return {
        key: _compare([entry["runs"][name][key] - entry["runs"]["baseline"][key] for entry in per_seed], sign)
        for key, (_, sign) in METRICS.items()
    }


def _compare(diffs: list[float], sign: int) -> dict:
    """Mean of paired per-seed differences, its standard error across seeds and the 2-se verdict.

    ``sign``: +1 when higher is better, -1 when lower is better, 0 for the intensity gap (lower
    is closer to the targets).
    """
    n = len(diffs)
    diff = float(np.mean(diffs))
    if n < 2:
        return {"per_seed": diffs, "diff": diff, "se": None, "verdict": "one seed: not assessed"}
    se = float(np.std(diffs, ddof=1) / math.sqrt(n))
    if abs(diff) > 2 * se and diff != 0:
        if sign == 0:
            verdict = "closer" if diff < 0 else "farther"
        else:
            verdict = "better" if diff * sign > 0 else "worse"
    else:
        verdict = "no measurable difference"
    return {"per_seed": diffs, "diff": diff, "se": se, "verdict": verdict}


# -- process setup -------------------------------------------------------------------------------


#: the overall bar's work units: one per task per optimizer step of a training run; the other work in
#: units of about the same wall time on a CPU (measured on the default run: a training step of one
#: task ~ 24 evaluated samples; the data step ~ 100 units, the figures and report ~ 150)
_DATA_UNITS, _REPORT_UNITS, _EVAL_SAMPLES_PER_UNIT = 100, 150, 24
_DIGITS = 1797  # images in scikit-learn's digits


def _eval_units(s: DemoSettings, task: str) -> int:
    """Work units of evaluating one run on ``task``: its profile, then the held-out images (und) or
    the sampled images (gen)."""
    scored = round(_DIGITS * s.test_fraction) if task == "und" else 10 * s.gen_samples_per_digit
    return max(1, (s.profile_samples + scored) // _EVAL_SAMPLES_PER_UNIT)


def _planned_units(demo: _Demo) -> int:
    """The overall bar's total: every training run's task-steps and every evaluated (run, task)."""
    s = demo.s
    shared = [RUNS[name][1] for name in ("und_only", "gen_only", "pretrained")]
    post = [RUNS[name][1] for name in _post_runs(demo)] * len(demo.seeds)
    train = s.steps * sum(map(len, shared)) + s.post_steps * sum(map(len, post))
    evaluate = sum(_eval_units(s, task) for tasks in shared + post for task in tasks)
    return _DATA_UNITS + train + evaluate + _REPORT_UNITS


class _Progress:
    """The demo's one overall bar (tqdm: percentage, elapsed time, ETA) and the seconds per pipeline
    step (:data:`STEPS`), with a header line as each step starts.

    The bar counts work units (:func:`_planned_units`), advanced as each run finishes training and
    each model is evaluated, and is redrawn every second in between (elapsed time and ETA move
    during a long run); it shows unless ``debug`` (then each run shows its own bars) and only
    with ``progress``.
    """

    def __init__(self, demo: _Demo):
        from tqdm.auto import tqdm

        self.progress = demo.progress
        self.seconds: dict[str, float] = {}
        self._step: str | None = None
        self._t = time.perf_counter()
        self.bar = tqdm(
            total=_planned_units(demo), desc="aia demo", disable=not (demo.progress and not demo.debug),
            file=sys.stderr, bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed, ETA {remaining}{postfix}",
        )  # fmt: skip
        self._closed = threading.Event()
        if not self.bar.disable:
            threading.Thread(target=self._tick, daemon=True).start()

    def _tick(self) -> None:
        while not self._closed.wait(1.0):
            self.bar.refresh()

    def say(self, line: str | None, postfix: str | None = None) -> None:
        """A line above the bar (with ``progress``), and what is running now after the bar."""
        if line is not None and self.progress:
            self.bar.write(line, file=sys.stderr)
        if postfix is not None:
            self.bar.set_postfix_str(postfix)

    def advance(self, units: int) -> None:
        self.bar.update(units)

    def start(self, step: str, header: str) -> None:
        self.stop()
        self._step = step
        self.say(f"\n== aia demo [{STEPS.index(step) + 1}/{len(STEPS)}] {header}", postfix=step)

    def stop(self) -> dict[str, float]:
        """Close the running step's clock; returns the seconds of every step so far."""
        now = time.perf_counter()
        if self._step is not None:
            self.seconds[self._step] = now - self._t
        self._step, self._t = None, now
        return self.seconds

    def close(self, done: bool = True) -> None:
        """Stop the bar (``done``: the pipeline finished); closing twice does nothing."""
        if self._closed.is_set():
            return
        self._closed.set()
        if done:
            self.bar.set_postfix_str("done")
        self.bar.close()


@contextlib.contextmanager
def _run_output(demo: _Demo, run: _Run):
    """What a training run prints on stderr (its log line, warnings) goes to ``out/logs/<run>.txt``,
    unless ``demo.debug``: the overall bar stays the one thing on the terminal."""
    if demo.debug:
        yield
        return
    path = demo.out / "logs" / f"{run.key}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as log, contextlib.redirect_stderr(log):
        yield


@contextlib.contextmanager
def _library_bars(debug: bool):
    """transformers' own bars (weight loading) off for the demo's duration, unless ``debug``."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    if not debug:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def _deterministic(device: str):
    """Deterministic kernels and one intra-op CPU thread for the demo's duration (both restored after).

    One thread: the demo's matrices are tiny (hidden size 64), so a second thread buys little on an idle
    machine and costs several times the wall time on a busy one (threads of several processes spin-waiting
    for cores); and the numbers then do not depend on the machine's core count.
    """
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    if device.startswith("cuda"):
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for reproducible GEMMs
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.set_num_threads(threads)


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
