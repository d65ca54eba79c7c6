"""Figures and ``report.md`` of ``aia demo`` (:mod:`aia.demo`), from its results and run directories.

Every number in the report is read from the results dict that ``results.json`` holds;
the verdict sentences are built from those numbers with the rule documented in
:mod:`aia.demo` (a difference counts when it exceeds two standard errors).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from aia.demo.runs import RUNS
from aia.plots import plot_losses, plot_profiles

__all__ = ["write_figures", "write_report"]


def write_figures(out: Path, profiles: list, targets, finals: dict, samples: dict) -> None:
    """``intensity``, ``losses``, ``losses_aia`` and ``samples`` figures (``.png`` + ``.svg``) in ``out``."""
    labels = [RUNS[p.model][0] for p in profiles]
    plot_profiles(profiles, labels, targets, out / "intensity")
    plot_losses({RUNS[name][0]: final.parent for name, final in finals.items()}, out / "losses", key="ntp")
    aia_runs = {RUNS[name][0]: final.parent for name, final in finals.items() if name.startswith("aia")}
    plot_losses(aia_runs, out / "losses_aia", key="aia")
    _samples_figure(samples, out / "samples")


def _samples_figure(samples: dict[str, np.ndarray], out: Path) -> None:
    """Rows: runs; columns: digits 0..9; the first sampled image of each digit."""
    fig = Figure(figsize=(10 * 0.8, len(samples) * 0.9 + 0.3), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(samples), 10, squeeze=False)
    for r, (name, images) in enumerate(samples.items()):
        for d in range(10):
            ax = axes[r][d]
            ax.imshow(images[d], cmap="gray_r", vmin=0, vmax=16)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(d), fontsize=9)
        axes[r][0].set_ylabel(RUNS[name][0], rotation=0, ha="right", va="center", fontsize=8)
    for fmt in ("png", "svg"):
        fig.savefig(out.with_suffix(f".{fmt}"), format=fmt, dpi=150)


def _cell(row: dict, key: str, digits: int = 3) -> str:
    return f"{row[key]:.{digits}f}" if key in row else "—"


def _pair(row: dict, a: str, b: str) -> str:
    return f"{_cell(row, a)} / {_cell(row, b)}"


def _verdict_text(results: dict) -> str:
    cmp = results["aia_vs_baseline"]
    runs = results["runs"]
    lines = []
    for key, what in (("und_acc", "understanding accuracy"), ("gen_acc", "generation accuracy")):
        c = cmp[key]
        lines.append(
            f"- {what}: {runs['aia'][key]:.3f} with AIA vs {runs['baseline'][key]:.3f} without "
            f"(difference {c['diff']:+.3f}, standard error {c['se']:.3f}): **{c['verdict']}**."
        )
    for task, what in (("und", "understanding"), ("gen", "generation")):
        a, b = runs["aia"][f"gap_{task}"], runs["baseline"][f"gap_{task}"]
        moved = "closer to" if a < b else "not closer to"
        lines.append(
            f"- {what} intensity curve: mean |I - T| {a:.3f} with AIA vs {b:.3f} without: "
            f"the AIA loss moved the curve {moved} the targets."
        )
    if cmp["helped"]:
        head = "**Yes**: at this scale AIA improved at least one task beyond noise and made none worse."
    elif "worse" in (cmp["und_acc"]["verdict"], cmp["gen_acc"]["verdict"]):
        head = "**No**: at this scale AIA made at least one task worse beyond noise."
    else:
        head = "**No measurable effect**: at this scale neither task changed beyond noise (two standard errors)."
    for name, cmps in results.get("ablations_vs_baseline", {}).items():
        parts = [f"{what} {cmps[key]['diff']:+.3f} ({cmps[key]['verdict']})" for key, what in
                 (("und_acc", "und acc"), ("gen_acc", "gen acc"))]  # fmt: skip
        lines.append(f"- {RUNS[name][0]} against the baseline: " + ", ".join(parts) + ".")
    return head + "\n\n" + "\n".join(lines)


def write_report(out: Path, results: dict) -> Path:
    """Write ``out/report.md`` (table, verdict, figures) from ``results``; returns its path."""
    s = results["settings"]
    d = results["data"]
    rows = [
        "| run | und acc | gen acc | final NTP und / gen | held-out NTP und / gen | mean abs(I-T) und | mean abs(I-T) gen |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, row in results["runs"].items():
        rows.append(
            f"| {RUNS[name][0]} | {_cell(row, 'und_acc')} | {_cell(row, 'gen_acc')} | "
            f"{_pair(row, 'ntp_und', 'ntp_gen')} | {_pair(row, 'heldout_ntp_und', 'heldout_ntp_gen')} | "
            f"{_cell(row, 'gap_und')} | {_cell(row, 'gap_gen')} |"
        )
    fmt = lambda xs: ", ".join(f"{x:.3f}" for x in xs)  # noqa: E731
    text = f"""# AIA micro demo: scikit-learn handwritten digits

Seed {results["seed"]}, device {results["device"]}{", quick settings" if results["quick"] else ""};
{results["timing"]["wall_s"]:.0f} s wall time.

A {s["num_layers"]}-layer `LlamaForCausalLM` (hidden size {s["hidden_size"]}) reads and writes 8x8 digits as 16
VQ codes of its own vocabulary ({d["num_codes"]} codes, k-means over 2x2 patches; round-trip RMS error
{d["vq_rmse_test"]:.2f} on a 0..16 scale). {d["train"]} training and {d["test"]} held-out images. Every run
starts from the same random weights and trains {s["steps"]} steps (batch {s["batch_size"]} per task, peak
lr {s["lr"]}) with `aia train`; the targets come from the two single-task references exactly as
`aia profile` + `aia targets` derive them ({s["stages"]} stages per task), lambda und/gen =
{s["weight_und"]}/{s["weight_gen"]}. The models learn from scratch; the paper adds AIA when fine-tuning
large pretrained models, so this demo shows the mechanics, not the paper's numbers.

{chr(10).join(rows)}

- und acc: greedy answer among the ten digit tokens, {d["test"]} held-out images (chance {results["chance"]}).
- gen acc: {s["gen_samples_per_digit"]} images sampled per digit (temperature 1) from "draw digit d",
  named by an SVM judge trained on the real training pixels. The judge scores
  {results["judge"]["acc_real_test"]:.3f} on the real held-out images and {results["judge"]["acc_vq_test"]:.3f}
  on their VQ round trips (the ceiling here).
- final NTP: mean training loss of the last 10% of steps; held-out NTP: on the test split.
- mean abs(I-T): mean over layers of |I_l - T_l|, the run's intensity curve
  ({s["profile_samples"]} training samples, teacher forcing) against the stage-level targets.

## Did AIA help at this scale?

{_verdict_text(results)}

Targets (per layer) und: {fmt(results["targets"]["und"])}; gen: {fmt(results["targets"]["gen"])}.

## Figures

![intensity curves and targets](intensity.png)

![NTP losses](losses.png)

![AIA losses](losses_aia.png)

![generated digits](samples.png)

## Files

`results.json` (every number above), `targets.yaml` / `targets_per_layer.yaml`, `profiles/*.json`
(`aia profile` format), `configs/*.yaml` (`aia train` configs), `runs/*/` (metrics.jsonl,
TensorBoard, `final/` model + processor: `aia profile runs/aia/final --data data/und_train.jsonl
--task und --out x.json` works on it), `data/` (PNGs + JSONL in the `aia` data format).
"""
    path = out / "report.md"
    path.write_text(text)
    return path
