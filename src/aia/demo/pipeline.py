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
  ran): the same comparison of each ablation against the baseline (the paper reports both
  ablations worse than no AIA); ``{}`` without ablations.
* ``timing.wall_s``: wall-clock seconds of the whole demo; ``timing.stages_s``: seconds per
  stage (``data``, ``references``, ``targets``, ``unified``, ``evaluation``, ``report``).
  The timings are the only numbers that vary between two runs with the same seed on the
  same machine.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml

__all__ = ["DEFAULT", "QUICK", "RUNS", "DemoSettings", "run_demo"]

#: run name -> (row label of the report, tasks it trains on)
RUNS = {
    "und_only": ("und-only (reference)", ("und",)),
    "gen_only": ("gen-only (reference)", ("gen",)),
    "baseline": ("unified baseline", ("und", "gen")),
    "aia": ("unified + AIA", ("und", "gen")),
    "aia_mse": ("unified + AIA w/o Huber", ("und", "gen")),
    "aia_per_layer": ("unified + AIA w/o stage-level", ("und", "gen")),
}


#: the demo's stages, in order (keys of ``results["timing"]["stages_s"]``)
STAGES = ("data", "references", "targets", "unified", "evaluation", "report")


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


def _stage(i: int, text: str) -> None:
    print(f"\n== aia demo [{i}/6] {text}", file=sys.stderr, flush=True)


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


def _run_config(out: Path, name: str, s: DemoSettings, seed: int, progress: bool, data: dict, aia: dict | None) -> Path:
    """Write ``out/configs/<name>.yaml``, the ``aia train`` config of one run; returns its path."""
    tasks = RUNS[name][1]
    cfg = {
        "model": {"path": str(out / "init")},
        "data": {
            "und": str(data["und_train"]) if "und" in tasks else None,
            "gen": str(data["gen_train"]) if "gen" in tasks else None,
            "batch_size": s.batch_size,
            "cache_examples": True,  # 1,437 tiny token-only samples: encode once, not every step
        },
        "aia": {"enabled": False} if aia is None else {"enabled": True, **aia},
        "optim": {"lr": s.lr, "warmup_ratio": 0.05},
        "train": {
            "output_dir": str(out / "runs" / name),
            "max_steps": s.steps,
            "seed": seed,
            "intensity_every": 10,
            "save_total_limit": 1,
            "resume": False,
            "progress": progress,
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
        progress: stage headers and progress bars on stderr.
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    with _deterministic(device):
        if ablations is None:
            ablations = not quick
        return _run(Path(out).resolve(), QUICK if quick else DEFAULT, quick, seed, device, ablations, progress)


def _run(out: Path, s: DemoSettings, quick: bool, seed: int, device: str, ablations: bool, progress: bool) -> dict:
    from aia.adapters import get_adapter, load_model
    from aia.demo.digits import DigitsProcessor, DigitsVQ, build_digits_model, load_split, write_digits_data
    from aia.demo.judge import fit_judge, heldout_ntp, sample_codes, understanding_accuracy
    from aia.measure.profile import save_profile
    from aia.measure.teacher import profile_model
    from aia.targets.stages import derive_targets
    from aia.training.config import load_config
    from aia.training.trainer import train

    start = time.perf_counter()
    stage_s: dict[str, float] = {}
    clock = {"name": None, "t": start}

    def lap() -> None:  # closes the running stage's clock
        now = time.perf_counter()
        if clock["name"] is not None:
            stage_s[clock["name"]] = now - clock["t"]
        clock["t"] = now

    def say(i: int, text: str) -> None:
        lap()
        clock["name"] = STAGES[i - 1]
        if progress:
            _stage(i, text)

    out.mkdir(parents=True, exist_ok=True)

    say(1, "data: digits split, VQ codebook, PNG + JSONL, initial model")
    split = load_split(seed, s.test_fraction)
    vq = DigitsVQ.fit(split.train_images, s.num_codes, seed)
    processor = DigitsProcessor.build(vq)
    data = write_digits_data(out / "data", split)
    init = build_digits_model(processor, s.num_layers, s.hidden_size, seed=seed)
    init.save_pretrained(out / "init")
    processor.save_pretrained(out / "init")

    def fit(name: str, aia: dict | None = None) -> Path:
        if progress:
            print(f"-- training {name}: {RUNS[name][0]}", file=sys.stderr, flush=True)
        cfg = load_config(_run_config(out, name, s, seed, progress, data, aia))
        return train(cfg, accelerator=_accelerator(device)).final_dir

    say(2, "reference models: understanding-only and generation-only (AIA off)")
    finals = {"und_only": fit("und_only"), "gen_only": fit("gen_only")}

    say(3, "reference profiles -> stage-level targets")
    models = {}
    profiles: dict[tuple[str, str], object] = {}

    def profile(name: str, task: str):
        if name not in models:
            models[name] = load_model(finals[name], device=device)
        model, proc = models[name]
        p = profile_model(
            model, proc, data[f"{task}_train"], task, s.profile_samples, batch_size=32, model_name=name,
            progress=progress,
        )  # fmt: skip
        save_profile(p, out / "profiles" / f"{name}_{task}.json")
        profiles[name, task] = p
        return p

    und_ref, gen_ref = profile("und_only", "und"), profile("gen_only", "gen")
    targets = derive_targets(gen_ref, und_ref, stages=s.stages, name="digits references")
    per_layer = derive_targets(gen_ref, und_ref, per_layer=True, name="digits references, per layer")
    targets_path, per_layer_path = targets.to_yaml(out / "targets.yaml"), per_layer.to_yaml(out / "targets_per_layer.yaml")

    say(4, "unified models: NTP baseline, NTP + AIA" + (", ablations" if ablations else ""))
    weights = {"weight_und": s.weight_und, "weight_gen": s.weight_gen}
    finals["baseline"] = fit("baseline")
    finals["aia"] = fit("aia", {"targets": str(targets_path), **weights})
    if ablations:
        finals["aia_mse"] = fit("aia_mse", {"targets": str(targets_path), "mode": "mse", **weights})
        finals["aia_per_layer"] = fit("aia_per_layer", {"targets": str(per_layer_path), **weights})

    say(5, "evaluation on the held-out split; intensity curves on the training data")
    judge = fit_judge(split)
    flat = len(split.test_images), -1
    recon = vq.decode(vq.encode(split.test_images))
    generator = torch.Generator(device=device).manual_seed(seed)
    digits = [d for d in range(10) for _ in range(s.gen_samples_per_digit)]
    runs, samples = {}, {}
    for name, final in finals.items():
        if name not in models:
            models[name] = load_model(final, device=device)
        model, proc = models[name]
        adapter = get_adapter(model, proc)
        row: dict = {}
        for task in RUNS[name][1]:
            if task == "und":
                row["und_acc"] = understanding_accuracy(model, adapter, data["und_test"])
            else:
                codes = sample_codes(model, adapter, digits, generator)
                images = vq.decode(codes)
                row["gen_acc"] = float((judge.predict(images.reshape(len(images), -1)) == np.array(digits)).mean())
                samples[name] = images[:: s.gen_samples_per_digit]  # the first sample of each digit
            row[f"ntp_{task}"] = _final_ntp(final.parent, task)
            row[f"heldout_ntp_{task}"] = heldout_ntp(model, adapter, data[f"{task}_test"], task)
            p = profiles.get((name, task)) or profile(name, task)
            t = np.asarray(targets.per_layer(task)[0])
            row[f"gap_{task}"] = float(np.abs(p.mean - t).mean())
            row[f"curve_{task}"] = p.mean.tolist()
        runs[name] = row

    say(6, "report")
    n_gen = 10 * s.gen_samples_per_digit
    n_und = len(split.test_labels)
    results = {
        "seed": seed,
        "quick": quick,
        "device": device,
        "ablations": ablations,
        "settings": asdict(s),
        "data": {
            "train": len(split.train_labels),
            "test": n_und,
            "num_codes": vq.num_codes,
            "vq_rmse_test": float(np.sqrt(((recon - split.test_images) ** 2).mean())),
        },
        "chance": 0.1,
        "judge": {
            "acc_real_test": float(judge.score(split.test_images.reshape(flat), split.test_labels)),
            "acc_vq_test": float(judge.score(recon.reshape(flat), split.test_labels)),
        },
        "runs": runs,
        "targets": {t: targets.per_layer(t)[0] for t in ("und", "gen")},
        "targets_per_layer": {t: per_layer.per_layer(t)[0] for t in ("und", "gen")},
    }

    def versus_baseline(name: str) -> dict:
        return {k: _compare(runs[name][k], runs["baseline"][k], n, n) for k, n in (("und_acc", n_und), ("gen_acc", n_gen))}

    results["aia_vs_baseline"] = versus_baseline("aia")
    verdicts = [results["aia_vs_baseline"][k]["verdict"] for k in ("und_acc", "gen_acc")]
    results["aia_vs_baseline"]["helped"] = "better" in verdicts and "worse" not in verdicts
    results["ablations_vs_baseline"] = {name: versus_baseline(name) for name in ("aia_mse", "aia_per_layer") if name in runs}
    from aia.demo.report import write_figures, write_report

    write_figures(out, [profiles[k] for k in sorted(profiles, key=_order)], targets, finals, samples)
    lap()
    results["timing"] = {"wall_s": time.perf_counter() - start, "stages_s": stage_s}
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    write_report(out, results)
    if progress:
        print(f"\naia demo: wrote {out / 'report.md'} ({results['timing']['wall_s']:.0f} s)", file=sys.stderr)
    return results


def _order(key: tuple[str, str]) -> tuple[int, int]:
    return list(RUNS).index(key[0]), ("und", "gen").index(key[1])
