"""``aia eval``: the before/after question in one run. Did AIA help both tasks?

An eval config (YAML) lists the models (typically a baseline and an AIA checkpoint, both
written by ``aia train``) and the benchmarks with their local files::

    out: eval_out
    device: cuda
    dtype: bfloat16
    models:
      baseline: runs/baseline/final
      aia: runs/aia/final
    compare: [baseline, aia]     # AIA minus baseline (default: the first two models, in file order)
    understanding:               # answered and scored here
      pope: {data: bench/pope, image_dir: bench/coco/val2014}
      mme: {data: bench/MME_Benchmark_release_version}
      mmmu: {data: bench/MMMU/validation.parquet}
      mmvp: {data: bench/MMVP}
    generation:                  # images written in the layout each benchmark's own scorer reads
      geneval: {prompts: bench/geneval/evaluation_metadata.jsonl}
      dpg: {prompts: bench/dpg/prompts}
      wise: {prompts: bench/wise/cultural_common_sense.json}
    options: {batch_size: 8, max_new_tokens: 128, images_per_prompt: 4, seed: 0}

For every model: ``answer`` each understanding benchmark into
``OUT/<model>/<bench>.jsonl`` and score it; ``generate_images`` each generation benchmark
into ``OUT/<model>/<bench>/`` (GenEval's detector, DPG-Bench's mPLUG judge and WISE's LLM
judge are external: the images are exported for them, and the report says so). Then
``OUT/report.md`` and ``OUT/report.json``: every score per model, and for the first two
models the difference per metric with its paired standard error and verdict. Relative
paths in the config are resolved against the config file's folder. Everything is
resumable: answers and images already written are kept.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from aia.errors import ConfigError, InputError
from aia.evaluate.answer import BENCHES, answer
from aia.evaluate.generate import FORMATS, check_can_generate, generate_images, read_prompts
from aia.evaluate.scoring import BENCHMARKS, compare_files, format_table, score_file

__all__ = ["EvalConfig", "load_eval_config", "run_eval"]

_TOP = {"out", "device", "dtype", "models", "compare", "understanding", "generation", "options"}
_OPTIONS = {"batch_size", "max_new_tokens", "images_per_prompt", "seed", "guidance", "limit"}
_JUDGES = {
    "geneval": "GenEval's object detector (its evaluate_images.py reads this folder)",
    "dpg": "DPG-Bench's mPLUG judge (its compute_dpg_bench.py reads these grids)",
    "wise": "WISE's LLM judge (reads {prompt_id}.png)",
}


@dataclass
class EvalConfig:
    """A validated eval config (see the module docstring)."""

    out: Path
    models: dict[str, Path]
    understanding: dict[str, dict] = field(default_factory=dict)
    generation: dict[str, dict] = field(default_factory=dict)
    options: dict = field(default_factory=dict)
    compare: tuple[str, str] | None = None
    device: str = "cpu"
    dtype: str | None = None


def load_eval_config(path: str | Path) -> EvalConfig:
    """Read and check an eval config; every error names the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such eval config", path=path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of sections", path=path)
    unknown = sorted(set(data) - _TOP)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown}; allowed: {sorted(_TOP)}", path=path)
    base = path.parent

    def local(value, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ConfigError("must be a path", path=path, field=key)
        p = Path(value)
        return p if p.is_absolute() else base / p

    models = data.get("models")
    if not isinstance(models, dict) or not models:
        raise ConfigError("list the models to evaluate, name: directory", path=path, field="models")
    benches = {}
    for section, known, needed in (("understanding", BENCHES, "data"), ("generation", FORMATS, "prompts")):
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise ConfigError("expected a mapping bench: {...}", path=path, field=section)
        for bench, spec in entries.items():
            key = f"{section}.{bench}"
            if bench not in known or (section == "generation" and bench == "plain"):
                raise ConfigError(f"unknown benchmark; choose from {sorted(set(known) - {'plain'})}", path=path,
                                  field=key)
            if not isinstance(spec, dict) or needed not in spec:
                raise ConfigError(f"needs {needed}: PATH", path=path, field=key)
            benches[key] = {k: (local(v, f"{key}.{k}") if k in ("data", "prompts", "image_dir") else v)
                            for k, v in spec.items()}
    options = data.get("options") or {}
    if not isinstance(options, dict) or set(options) - _OPTIONS:
        raise ConfigError(f"allowed options: {sorted(_OPTIONS)}", path=path, field="options")
    pair = data.get("compare", list(models)[:2] if len(models) >= 2 else None)
    if pair is not None and (not isinstance(pair, list) or len(pair) != 2 or not set(pair) <= set(models)):
        raise ConfigError("two model names: [baseline, aia]", path=path, field="compare")
    if not any(k.startswith(("understanding.", "generation.")) for k in benches):
        raise ConfigError("name at least one benchmark under understanding: or generation:", path=path)
    return EvalConfig(
        out=local(data.get("out", "eval_out"), "out"),
        models={str(name): local(d, f"models.{name}") for name, d in models.items()},
        understanding={k.split(".", 1)[1]: v for k, v in benches.items() if k.startswith("understanding.")},
        generation={k.split(".", 1)[1]: v for k, v in benches.items() if k.startswith("generation.")},
        options=options,
        compare=tuple(str(n) for n in pair) if pair else None,
        device=str(data.get("device", "cpu")),
        dtype=data.get("dtype"),
    )


def run_eval(config: EvalConfig | str | Path, progress: bool = True) -> dict:
    """Answer, generate and score for every model of ``config``; write and return the report."""
    cfg = config if isinstance(config, EvalConfig) else load_eval_config(config)
    # what can be checked before any model runs: the saved models, that they generate, the prompt files
    for name, directory in cfg.models.items():
        if not (directory / "config.json").is_file():
            raise ConfigError(f"no saved model (config.json) in {directory}", field=f"models.{name}")
        if cfg.generation:
            try:
                check_can_generate(directory)
            except InputError as err:
                raise ConfigError(f"{err}; it cannot run {', '.join(cfg.generation)}", field=f"models.{name}") from None
    for bench, spec in cfg.generation.items():
        try:
            read_prompts(spec["prompts"])
        except InputError as err:
            raise ConfigError(str(err), field=f"generation.{bench}.prompts") from None
    cfg.out.mkdir(parents=True, exist_ok=True)
    opts = cfg.options
    common = dict(device=cfg.device, dtype=cfg.dtype, progress=progress)
    scores: dict[str, dict[str, dict]] = {}
    exported: dict[str, dict[str, str]] = {}
    for name, directory in cfg.models.items():
        for bench, spec in cfg.understanding.items():
            preds = cfg.out / name / f"{bench}.jsonl"
            _say(f"{name}: {bench} answers -> {preds}")
            extra = {k: opts[k] for k in ("batch_size", "max_new_tokens", "limit") if k in opts}
            answer(directory, bench, spec["data"], preds, image_dir=spec.get("image_dir"), **extra, **common)
            if bench in BENCHMARKS:
                scores.setdefault(bench, {})[name] = score_file(preds, bench)
        for bench, spec in cfg.generation.items():
            folder = cfg.out / name / bench
            _say(f"{name}: {bench} images -> {folder}")
            extra = {k: opts[k] for k in ("batch_size", "images_per_prompt", "seed", "guidance") if k in opts}
            generate_images(directory, spec["prompts"], folder, fmt=bench, **extra, **common)
            exported.setdefault(bench, {})[name] = str(folder)
    names = list(cfg.models)
    comparisons = {}
    if cfg.compare:
        base, new = cfg.compare
        for bench in scores:
            comparisons[bench] = compare_files(cfg.out / base / f"{bench}.jsonl", cfg.out / new / f"{bench}.jsonl", bench)
    report = {"models": {n: str(d) for n, d in cfg.models.items()}, "compare": cfg.compare, "scores": scores,
              "comparisons": comparisons,
              "exported": exported}
    (cfg.out / "report.json").write_text(json.dumps(report, indent=1))
    (cfg.out / "report.md").write_text(_markdown(report, names, cfg.compare))
    return report


def _say(text: str) -> None:
    print(f"aia eval: {text}", file=sys.stderr)


def _markdown(report: dict, names: list[str], pair: tuple[str, str] | None) -> str:
    lines = ["# Evaluation", "", "Models: " + ", ".join(f"`{n}` ({d})" for n, d in report["models"].items()), ""]
    if report["scores"]:
        lines += ["## Understanding: headline scores", "", "| benchmark | metric | " + " | ".join(names) + " |",
                  "| --- | --- |" + " --- |" * len(names)]
        for bench, per_model in report["scores"].items():
            headline = next(iter(per_model.values()))["headline"]
            values = [f"{per_model[n]['metrics'][headline]:.4f}" if n in per_model else "" for n in names]
            lines.append(f"| {bench} | {headline} | " + " | ".join(values) + " |")
        lines.append("")
    if report["comparisons"]:
        lines += [f"## `{pair[1]}` minus `{pair[0]}`, with paired standard errors", "",
                  "A difference counts as beyond noise when it exceeds two standard errors.", "", "```"]
        lines += [format_table(list(report["comparisons"].values())), "```", ""]
    if report["exported"]:
        lines += ["## Generation: images for the external judges", ""]
        for bench, per_model in report["exported"].items():
            for name, folder in per_model.items():
                lines.append(f"- {bench}, `{name}`: `{folder}`, for {_JUDGES[bench]}")
        lines.append("")
    return "\n".join(lines)
