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

The file's keys are the fields of :class:`EvalConfig` (``aia eval --help-config`` lists
them with their documentation and defaults); unknown keys and values of the wrong type
fail at load with a message that names the key, as for the run config of ``aia train``.

For every model: ``answer`` each understanding benchmark into
``OUT/<model>/<bench>.jsonl`` and score it; ``generate_images`` each generation benchmark
into ``OUT/<model>/<bench>/`` (GenEval's detector, DPG-Bench's mPLUG judge and WISE's LLM
judge are external: the images are exported for them, and the report says so). Then
``OUT/report.md`` and ``OUT/report.json``: every score per model, and for the first two
models the difference per metric with its paired standard error and verdict; the run's
options (``options``: :class:`EvalOptions`, ``device``, ``dtype``); for DPG-Bench the flags
its ``compute_dpg_bench.py`` needs to cut the grids (``judge_flags``: ``--resolution`` and
``--pic-num``, e.g. a 2x1 grid of 2 images, not its default 2x2 of 4). Relative
paths in the config are resolved against the config file's folder; the paths in the
reports are relative to ``OUT`` (so two equal runs give equal reports, wherever they ran).

Everything is resumable: answers and images already written are kept, but only when they
were made with the same model, data and settings (each output's manifest, see
:mod:`aia.evaluate.manifest`); otherwise the run stops naming the output and the first
setting that differs, and ``aia eval --overwrite`` starts such outputs over. Model names are
folder names under ``OUT``: a name with a path separator, ``.``, ``..``, or two names that one
file system could take for the same folder are refused when the file is read. One run
writes an ``OUT`` at a time.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import unicodedata
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from aia.errors import ConfigError, InputError
from aia.evaluate.answer import BENCHES, answer
from aia.evaluate.generate import (
    FORMATS,
    IMAGES_PER_PROMPT,
    NAME_MAX,
    check_can_generate,
    generate_images,
    read_prompts,
)
from aia.evaluate.manifest import Interrupted, output_lock, writable_output
from aia.evaluate.mmmu import PARSERS
from aia.evaluate.scoring import BENCHMARKS, _number, compare_files, format_table, score_file
from aia.fields import describe, from_mapping
from aia.options import dtype_name

__all__ = ["EvalConfig", "EvalOptions", "GenerationBench", "UnderstandingBench", "eval_config_help",
           "load_eval_config", "run_eval"]

_JUDGES = {
    "geneval": "GenEval's object detector (its evaluate_images.py reads this folder)",
    "dpg": "DPG-Bench's mPLUG judge (its compute_dpg_bench.py reads these grids; give it the grid's layout)",
    "wise": "WISE's LLM judge (reads {prompt_id}.png)",
}


@dataclass
class UnderstandingBench:
    """An understanding benchmark's local files (:func:`aia.evaluate.answer`)."""

    data: str
    """The benchmark's files (POPE's question files, the MME release folder, MMMU's parquet, the MMVP folder)."""
    image_dir: str | None = None
    """Images kept apart from the questions (POPE: COCO val2014)."""


@dataclass
class GenerationBench:
    """A generation benchmark's prompts (:func:`aia.evaluate.generate_images`)."""

    prompts: str
    """GenEval's evaluation_metadata.jsonl, DPG-Bench's prompts folder, or a WISE .json."""


@dataclass
class EvalOptions:
    """The options of every answer and generate call of the run."""

    batch_size: int = 1
    """Questions per generate call, images generated together."""
    max_new_tokens: int = 128
    """Understanding: the most tokens per answer."""
    limit: int | None = None
    """Understanding: answer only the first N questions of each benchmark (null: all)."""
    images_per_prompt: int | None = None
    """Generation: images per prompt (null: the layout's, 4 for geneval and dpg, 1 for wise)."""
    guidance: float | None = None
    """Generation: classifier-free guidance weight (null: the family's)."""
    seed: int = 0
    """Generation: images are seeded from (seed, prompt index, image index)."""
    mmmu_parser: str = "mmmu"
    """MMMU multiple-choice reading: mmmu = the benchmark's parse_multi_choice_response; aia = the released AIA
    pipeline's post_process (evaluation/vlm/eval/mmmu/evaluate_mmmu.py), which reproduces the paper's numbers."""

    def __post_init__(self):
        if self.mmmu_parser not in PARSERS:
            raise ConfigError(f"must be one of {', '.join(PARSERS)}, got {self.mmmu_parser!r}", field="mmmu_parser")
        if self.guidance is not None and not 1 <= self.guidance < math.inf:
            raise ConfigError(f"must be a finite number >= 1 (1: no guidance), got {self.guidance!r}",
                              field="guidance")


@dataclass
class EvalConfig:
    """An eval file (see the module docstring); paths in the file are resolved against its folder."""

    models: dict[str, str]
    """The models to evaluate, name: directory written by save_pretrained (typically a baseline and an AIA
    checkpoint, both from aia train). A name is a folder under out: no path separator, not . or .., no two
    names that differ only in case or accent composition."""
    out: str = "eval_out"
    """Output folder: OUT/<model>/<bench>.jsonl answers, OUT/<model>/<bench>/ images, OUT/report.md and
    OUT/report.json."""
    device: str = "cpu"
    """Where the models run: cpu, cuda, cuda:1, ..."""
    dtype: str | None = "auto"
    """Weights dtype: float32, bfloat16 or float16; auto (or null): as saved."""
    compare: list[str] | None = None
    """Two model names [baseline, aia]: the report gives aia minus baseline with paired standard errors
    (null: the first two models, in file order)."""
    understanding: dict[str, UnderstandingBench] = field(default_factory=dict)
    """Benchmarks answered and scored: pope, mme, mmmu, mmvp (custom: answered only)."""
    generation: dict[str, GenerationBench] = field(default_factory=dict)
    """Benchmarks whose images are written in the layout the benchmark's own scorer reads: geneval, dpg, wise."""
    options: EvalOptions = field(default_factory=EvalOptions)
    """Options of every answer and generate call."""

    def __post_init__(self):
        if not self.models:
            raise ConfigError("list the models to evaluate, name: directory", field="models")
        _check_model_names(list(self.models))
        for section, known in (("understanding", BENCHES), ("generation", tuple(f for f in FORMATS if f != "plain"))):
            for bench in getattr(self, section):
                if bench not in known:
                    raise ConfigError(f"unknown benchmark; choose from {sorted(known)}", field=f"{section}.{bench}")
        if not (self.understanding or self.generation):
            raise ConfigError("name at least one benchmark under understanding: or generation:")
        if self.compare is None and len(self.models) >= 2:
            self.compare = list(self.models)[:2]
        if self.compare is not None and (len(self.compare) != 2 or not set(self.compare) <= set(self.models)):
            raise ConfigError("two model names: [baseline, aia]", field="compare")
        try:
            dtype_name(self.dtype)
        except ValueError as err:
            raise ConfigError(str(err), field="dtype") from None


#: the files of OUT that a model's folder must not take
_REPORTS = ("report.json", "report.md")


def _check_model_names(names: list[str]) -> None:
    """Each model name is a plain folder name of OUT, and no two are the same folder on any file
    system (equal after Unicode normalisation and case folding, macOS and Windows, or but for
    trailing dots and spaces, which Windows drops)."""
    seen: dict[str, str] = {}
    for name in names:
        key = f"models.{name}"
        if not name.strip() or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
            raise ConfigError("a model name is a plain folder name under out (no path separator, not . or ..), "
                              f"got {name!r}", field=key)
        same = unicodedata.normalize("NFC", name).casefold().rstrip(" .")
        if same in _REPORTS:
            raise ConfigError("cannot name a folder under out (the name of a report)", field=key)
        if len(name.encode()) > NAME_MAX:
            raise ConfigError(f"cannot name a folder under out (too long: {len(name.encode())} bytes)", field=key)
        if same in seen:
            raise ConfigError(f"the same folder under out as model {seen[same]!r} on some file systems; rename one",
                              field=key)
        seen[same] = name


def load_eval_config(path: str | Path) -> EvalConfig:
    """Read and check an eval file; every error names the file and the key.

    Unknown keys and values of the wrong type fail here, before any model runs
    (:func:`aia.fields.from_mapping`); relative paths are resolved against the file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("no such eval config", path=path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of sections", path=path)
    try:
        cfg = from_mapping(EvalConfig, data)
    except ConfigError as err:
        raise ConfigError(err.reason, path=path, field=err.field) from None
    base = path.parent

    def local(value: str, key: str) -> str:
        if not value:
            raise ConfigError("must be a path", path=path, field=key)
        return value if Path(value).is_absolute() else str(base / value)

    cfg.out = local(cfg.out, "out")
    cfg.models = {name: local(d, f"models.{name}") for name, d in cfg.models.items()}
    for bench, spec in cfg.understanding.items():
        spec.data = local(spec.data, f"understanding.{bench}.data")
        if spec.image_dir is not None:
            spec.image_dir = local(spec.image_dir, f"understanding.{bench}.image_dir")
    for bench, spec in cfg.generation.items():
        spec.prompts = local(spec.prompts, f"generation.{bench}.prompts")
    return cfg


def eval_config_help() -> str:
    """Every field of an eval file with its documentation, as ``key (default): text``."""
    return "\n".join(describe(EvalConfig))


def run_eval(config: EvalConfig | str | Path, progress: bool = True, overwrite: bool = False) -> dict:
    """Answer, generate and score for every model of ``config``; write and return the report.

    ``overwrite`` starts over the outputs made with another model, data or setting (without it,
    such an output stops the run naming it and the first difference).

    Raises:
        InputError: what can be checked before any model runs (a model, prompt file, ``out``, every
            existing output against the record of what made it), then an output being written by
            another run.
        Interrupted: Ctrl-C, naming the model, the benchmark and where it stopped.
    """
    cfg = config if isinstance(config, EvalConfig) else load_eval_config(config)
    _check_model_names(list(cfg.models))
    # what can be checked before any model runs: the saved models, that they generate, the prompt files
    models = {name: Path(directory) for name, directory in cfg.models.items()}
    out = Path(cfg.out)
    for name, directory in models.items():
        if not (directory / "config.json").is_file():
            raise ConfigError(f"no saved model (config.json) in {directory}", field=f"models.{name}")
        if cfg.understanding:
            from aia.adapters.loading import check_task

            try:
                check_task(directory, "und")
            except InputError as err:
                raise ConfigError(f"{err}; it cannot run {', '.join(cfg.understanding)}",
                                  field=f"models.{name}") from None
        for bench in cfg.generation:  # each benchmark's layout: a family writing tokens has no PNGs to score
            try:
                check_can_generate(directory, fmt=bench)
            except InputError as err:
                raise ConfigError(f"{err}; it cannot run {', '.join(cfg.generation)}", field=f"models.{name}") from None
    for bench, spec in cfg.generation.items():
        try:
            read_prompts(spec.prompts)
        except InputError as err:
            raise ConfigError(str(err), field=f"generation.{bench}.prompts") from None
    try:
        out = writable_output(out, folder=True)
    except InputError as err:
        raise ConfigError(err.reason, path=out, field="out") from None
    with output_lock(out, "aia eval"):
        out.mkdir(parents=True, exist_ok=True)
        report = _run(cfg, models, out, progress=progress, overwrite=overwrite)
        (out / "report.json").write_text(json.dumps(report, indent=1))
        (out / "report.md").write_text(_markdown(report, list(cfg.models), cfg.compare))
    return report


def _run(cfg: EvalConfig, models: dict[str, Path], out: Path, *, progress: bool, overwrite: bool) -> dict:
    """Every answer, image and score of the run (``out`` held locked); the report, its paths relative to ``out``."""
    opts = cfg.options
    common = dict(device=cfg.device, dtype=dtype_name(cfg.dtype), batch_size=opts.batch_size, progress=progress,
                  overwrite=overwrite)
    scores: dict[str, dict[str, dict]] = {}
    exported: dict[str, dict[str, str]] = {}
    judge_flags: dict[str, dict[str, str | None]] = {}
    # every output that exists is checked against its record first: a changed setting stops the run here,
    # before the first model runs, not after the outputs before it were continued
    for name, directory in models.items():
        for bench, spec in cfg.understanding.items():
            with _where(name, bench):
                answer(directory, bench, spec.data, out / name / f"{bench}.jsonl", image_dir=spec.image_dir,
                       max_new_tokens=opts.max_new_tokens, limit=opts.limit, check_only=True, **common)
        for bench, spec in cfg.generation.items():
            with _where(name, bench):
                generate_images(directory, spec.prompts, out / name / bench, fmt=bench,
                                images_per_prompt=opts.images_per_prompt, guidance=opts.guidance, seed=opts.seed,
                                check_only=True, **common)
    for name, directory in models.items():
        for bench, spec in cfg.understanding.items():
            preds = out / name / f"{bench}.jsonl"
            _say(f"{name}: {bench} answers -> {preds}")
            with _where(name, bench):
                answer(directory, bench, spec.data, preds, image_dir=spec.image_dir,
                       max_new_tokens=opts.max_new_tokens, limit=opts.limit, **common)
            if bench in BENCHMARKS:
                score = score_file(preds, bench, mmmu_parser=opts.mmmu_parser)
                scores.setdefault(bench, {})[name] = {**score, "path": _relative(preds, out)}
        for bench, spec in cfg.generation.items():
            folder = out / name / bench
            _say(f"{name}: {bench} images -> {folder}")
            with _where(name, bench):
                generate_images(directory, spec.prompts, folder, fmt=bench, images_per_prompt=opts.images_per_prompt,
                                guidance=opts.guidance, seed=opts.seed, **common)
            exported.setdefault(bench, {})[name] = _relative(folder, out)
            if bench == "dpg":
                n = opts.images_per_prompt or IMAGES_PER_PROMPT["dpg"]
                judge_flags.setdefault(bench, {})[name] = _dpg_scorer_flags(folder, n)
    comparisons = {}
    if cfg.compare:
        base, new = cfg.compare
        for bench in scores:
            pair = out / base / f"{bench}.jsonl", out / new / f"{bench}.jsonl"
            comparison = compare_files(*pair, bench, mmmu_parser=opts.mmmu_parser)
            comparisons[bench] = {**comparison, "paths": {"base": _relative(pair[0], out), "aia": _relative(pair[1], out)}}
    return {"models": {n: _relative(d, out) for n, d in models.items()}, "compare": cfg.compare, "scores": scores,
            "comparisons": comparisons, "exported": exported, "judge_flags": judge_flags,
            "options": {**asdict(opts), "device": cfg.device, "dtype": dtype_name(cfg.dtype)}}


def _dpg_scorer_flags(folder: Path, n: int) -> str | None:
    """The flags DPG-Bench's ``compute_dpg_bench.py`` needs to cut this folder's grids back into
    images: ``--resolution`` (one image's side, in pixels) and ``--pic-num`` (images per grid;
    its defaults, 512 and 4, fit only 2x2 grids of 512-pixel images). None when no grid is written."""
    first = next(iter(sorted(folder.glob("*.png"))), None)
    if first is None:
        return None
    from PIL import Image

    with Image.open(first) as image:
        side = image.width // math.ceil(math.sqrt(n))  # the grid's columns (aia.evaluate.generate.grid)
    return f"--resolution {side} --pic-num {n}"


def _relative(path: Path, out: Path) -> str:
    """``path`` relative to the report's folder ``out`` (``/``-separated, as the report is read anywhere)."""
    return Path(os.path.relpath(Path(path).absolute(), out.absolute())).as_posix()


@contextlib.contextmanager
def _where(name: str, bench: str) -> Iterator[None]:
    """Ctrl-C inside: the interruption names the model and the benchmark too."""
    try:
        yield
    except KeyboardInterrupt as err:
        said = str(err) if isinstance(err, Interrupted) else "interrupted; rerun the same command to resume"
        raise Interrupted(f"{name}, {bench}: {said}") from None


def _say(text: str) -> None:
    print(f"aia eval: {text}", file=sys.stderr)


def _markdown(report: dict, names: list[str], pair: tuple[str, str] | None) -> str:
    lines = ["# Evaluation", "", "Models: " + ", ".join(f"`{n}` ({d})" for n, d in report["models"].items()), ""]
    if "options" in report:
        lines += ["Options: " + ", ".join(f"`{k}: {v}`" for k, v in report["options"].items()), ""]
    if report["scores"]:
        lines += ["## Understanding: headline scores", "", "| benchmark | metric | " + " | ".join(names) + " |",
                  "| --- | --- |" + " --- |" * len(names)]
        for bench, per_model in report["scores"].items():
            headline = next(iter(per_model.values()))["headline"]
            values = [_number(headline, per_model[n]["metrics"][headline]) if n in per_model else "" for n in names]
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
                flags = report.get("judge_flags", {}).get(bench, {}).get(name)
                run_with = f"; run it with `{flags}`" if flags else ""
                lines.append(f"- {bench}, `{name}`: `{folder}`, for {_JUDGES[bench]}{run_with}")
        lines.append("")
    return "\n".join(lines)
