"""The ``aia`` command line: a thin layer over library functions.

    aia profile MODEL_DIR --data FILE --task {und,gen} --out OUT.json [--samples N] [--mode {teacher,decode}] [...]
    aia profile --config RUN.yaml --out OUT.json [--task {und,gen}] [MODEL_DIR] [...]   (what the run trains on)
    aia targets PROFILE.json [PROFILE.json] --stages K --out targets.yaml [--per-layer]
    aia targets --preset janus-pro --layers 24 [--out targets.yaml]
    aia plot profiles P.json [P.json ...] [--labels a,b] [--targets T.yaml|PRESET] --out FIG
    aia plot losses RUN_DIR [RUN_DIR ...] [--labels a,b] [--key ntp] --out FIG
    aia train CONFIG.yaml [section.field=value ...]        (aia train --help-config: every field)
    aia demo --out DIR [--quick] [--seed N] [--device cpu] [--ablations | --no-ablations]
    aia generate MODEL_DIR --prompts FILE --out DIR [--format {plain,geneval,dpg,wise}] [...]
    aia answer MODEL_DIR --bench {pope,mme,mmmu,mmvp,custom} --data PATH --out PREDS.jsonl [...]
    aia score PREDS.jsonl [--bench NAME] [--compare AIA_PREDS.jsonl] [--out OUT.json]
    aia eval EVAL.yaml                                      (aia eval --help-config: every field)

The options of profile, generate, answer and score are the dataclasses of
:mod:`aia.options`, and their flags are made from them (:func:`aia.fields.add_flags`): one
name per knob in every command, each flag's help its field's documentation and default.
Building the parser imports neither torch nor transformers, so ``aia --help`` and ``aia
CMD --help`` are quick; a command imports what it needs when it runs.

Every error that comes from the user's input is printed as one line on stderr with a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import errno
import os
import sys
from pathlib import Path

__all__ = ["build_parser", "main"]


# ----------------------------------------------------------------- checks before the work
def _dtype_name(value: str) -> str | None:
    """``--dtype``'s dtype name (None: as saved), checked before any model is loaded."""
    from aia.options import dtype_name

    try:
        return dtype_name(value)
    except ValueError as err:
        raise ValueError(f"--dtype: {err}") from None


def _device(name: str) -> str:
    """``name`` if torch can use it here; checked before any model is loaded."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device: unknown device {name!r} (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: no CUDA device is available here")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) here")
    return name


def _writable_file(path: str, flag: str = "--out") -> Path:
    """``path`` as a file that can be written: not a directory, its folder creatable and writable.
    Checked before the work, so that nothing computed is lost at the end."""
    out = Path(path)
    if out.is_dir():
        raise ValueError(f"{flag} {path}: is a directory; give a file name")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot create its folder: {err.strerror}") from None
    if not os.access(out.parent, os.W_OK):
        raise ValueError(f"{flag} {path}: the folder {out.parent} is not writable")
    return out


def _positive(value: int, flag: str) -> None:
    if value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def _options_parser(sub, name: str, options: type, func, help: str) -> argparse.ArgumentParser:
    """The sub-parser of a command whose options are the dataclass ``options``."""
    from aia.fields import add_flags, plain

    parser = sub.add_parser(name, help=help, description=plain(options.__doc__.strip()))
    add_flags(parser, options)
    parser.set_defaults(func=func, options=options)
    return parser


# ----------------------------------------------------------------- profile
def _profile_parser(sub) -> None:
    from aia.options import ProfileOptions

    _options_parser(sub, "profile", ProfileOptions, _cmd_profile,
                    "measure per-layer interaction intensity (teacher forcing or decoding)")


#: the decode-only options, as ProfileOptions field -> DecodeSettings field
_DECODE_OPTIONS = {"max_new_tokens": "max_new_tokens", "guidance": "cfg_weight", "temperature": "temperature",
                   "seed": "seed", "top_k": "top_k", "top_p": "top_p"}


def _cmd_profile(opts) -> int:
    if opts.config is None:
        for name, flag in (("model_dir", "MODEL_DIR"), ("data", "--data"), ("task", "--task")):
            if getattr(opts, name) is None:
                raise ValueError(f"give {flag} (or --config RUN.yaml, a run config that names it)")
    if opts.mode == "teacher":
        for name in _DECODE_OPTIONS:
            if getattr(opts, name) is not None:
                raise ValueError(f"--{name.replace('_', '-')} applies to --mode decode only")
    if opts.guidance is not None and not 0 <= opts.guidance < float("inf"):
        raise ValueError(f"--guidance must be a finite number >= 0, got {opts.guidance}")
    _positive(opts.samples, "--samples")
    _positive(opts.batch_size, "--batch-size")
    if opts.max_length is not None:
        _positive(opts.max_length, "--max-length")
    _device(opts.runtime.device)
    dtype = _dtype_name(opts.runtime.dtype)
    run = None
    if opts.config is not None:
        run, task, data = _run_config_inputs(opts, dtype)
    else:
        data, task = opts.data, opts.task
    if not Path(data).is_file():
        raise FileNotFoundError(f"--data: no such file: {data}")
    _writable_file(opts.out)
    from aia.data import task_records

    task_records(data, task)  # a bad data file fails here, before the model loads
    from aia.measure.decode import DecodeSettings
    from aia.measure.profile import save_profile, summary_text

    given = {setting: getattr(opts, name) for name, setting in _DECODE_OPTIONS.items()}
    settings = DecodeSettings(**{k: v for k, v in given.items() if v is not None})
    common = dict(method=opts.method, progress=not opts.runtime.quiet, max_length=opts.max_length,
                  batch_size=opts.batch_size)
    if opts.config is not None:
        from aia.measure.run import profile_run

        profile = profile_run(run, task, model=opts.model_dir, mode=opts.mode, samples=opts.samples,
                              settings=settings, data=data, device=opts.runtime.device,
                              model_name=str(opts.model_dir or run.model.path), **common)
    else:
        profile = _profile_flags(opts, data, task, dtype, settings, common)
    save_profile(profile, opts.out)
    print(summary_text(profile))
    print(f"wrote {opts.out}")
    return 0


def _run_config_inputs(opts, dtype: str | None) -> tuple:
    """``aia profile --config``: ``(run config, task, data file)`` (the run's model, prompts, spans, image
    preprocessing and length policy are profiled, so flags that would say otherwise are refused)."""
    from aia.adapters.prompts import PromptConfig
    from aia.core.spans import SpanConfig
    from aia.measure.run import run_inputs
    from aia.training.config import load_config

    if opts.spans != SpanConfig() or opts.prompts != PromptConfig():
        raise ValueError("--config: the run config's spans and prompts are profiled; set them in the run config")
    if dtype is not None:
        raise ValueError("--dtype: with --config the model loads in the run's model.dtype")
    config = load_config(opts.config, check_paths=False)
    inputs = run_inputs(config, opts.task)
    return config, inputs.task, opts.data or str(inputs.data)


def _profile_flags(opts, data: str, task: str, dtype: str | None, settings, common: dict):
    """``aia profile MODEL_DIR --data FILE --task T``: the model, spans and prompts the flags say."""
    from aia.adapters import load_model
    from aia.adapters.loading import check_task
    from aia.measure.decode import decode_profile
    from aia.measure.teacher import profile_model
    from aia.options import torch_dtype

    check_task(opts.model_dir, task)  # a family that does not take the task, before the model loads
    model, processor = load_model(opts.model_dir, dtype=torch_dtype(dtype), device=opts.runtime.device)
    common = dict(common, span_config=opts.spans, prompt_config=opts.prompts, model_name=str(opts.model_dir))
    if opts.mode == "decode":
        return decode_profile(model, processor, data, task, opts.samples, settings, **common)
    return profile_model(model, processor, data, task, samples=opts.samples, **common)


# ----------------------------------------------------------------- targets
def _targets_parser(sub) -> None:
    t = sub.add_parser("targets", help="stage-level AIA targets from profiles, or a preset")
    t.add_argument("profiles", nargs="*", help="profile JSON files (at most one gen and one und)")
    t.add_argument("--stages", type=int, default=4, help="number of contiguous stages (default: 4)")
    t.add_argument("--per-layer", action="store_true",
                   help="one stage per layer (the paper's w/o-stage ablation) (default: off)")
    t.add_argument("--fallback", default=None, help="preset or YAML for a task without a profile (default: none)")
    t.add_argument("--name", default="derived", help="name recorded in the targets file (default: derived)")
    t.add_argument("--preset", default=None,
                   help="render a preset (janus-pro-released, janus-pro, emu3) instead (default: none)")
    t.add_argument("--layers", type=int, default=None,
                   help="with --preset: map to this depth by --layer-map (default: the preset's); with profiles: "
                        "the targets' depth, each task's mapped by relative depth (default: the profiles', the "
                        "deeper one where a gen and an und reference differ)")
    t.add_argument("--layer-map", choices=("relative", "absolute"), default="relative",
                   help="with --layers: by relative depth, or by absolute layer index as the released code "
                        "writes its bands (aia.layer_map; default: relative)")
    t.add_argument("--out", default=None, help="output YAML (default: print)")
    t.set_defaults(func=_cmd_targets)


def _cmd_targets(args) -> int:
    from aia.measure.profile import load_profile
    from aia.targets.presets import TargetProfile
    from aia.targets.stages import derive_targets

    if args.preset:
        if args.profiles:
            raise ValueError("give either profiles or --preset, not both")
        targets = TargetProfile.preset(args.preset)
        if args.layers is not None:
            targets = targets.resize(args.layers) if args.layer_map == "relative" else targets.by_index(args.layers)
    else:
        if not args.profiles:
            raise ValueError("give one or two profile files (a gen and/or an und profile), or --preset")
        by_task = {}
        for path in args.profiles:
            p = load_profile(path)
            if p.task in by_task:
                raise ValueError(f"{path}: a second {p.task!r} profile; give at most one per task")
            by_task[p.task] = p
        targets = derive_targets(
            by_task.get("gen"),
            by_task.get("und"),
            stages=args.stages,
            per_layer=args.per_layer,
            name=args.name,
            fallback=args.fallback,
            num_layers=args.layers,
        )
    if args.out:
        targets.to_yaml(args.out)
        print(f"wrote {args.out}")
    else:
        import yaml

        print(yaml.safe_dump(targets.to_dict(), sort_keys=False), end="")
    return 0

# ----------------------------------------------------------------- plot
def _plot_parser(sub) -> None:
    g = sub.add_parser("plot", help="figures: intensity curves with targets, or loss curves")
    g.add_argument("what", choices=["profiles", "losses"])
    g.add_argument("inputs", nargs="+", help="profile JSON files, or run directories / metrics.jsonl files")
    g.add_argument("--labels", default=None, help="comma-separated legend labels (default: the file names)")
    g.add_argument("--targets", default=None, help="profiles: a targets YAML or preset name to draw (default: none)")
    g.add_argument("--key", default="ntp", help="losses: which loss group, ntp or aia (default: ntp)")
    g.add_argument("--out", required=True, help="output path without extension (.png and .svg are written)")
    g.set_defaults(func=_cmd_plot)


def _labels(raw: str | None, n: int) -> list[str] | None:
    if raw is None:
        return None
    labels = [s.strip() for s in raw.split(",")]
    if len(labels) != n:
        raise ValueError(f"--labels: {len(labels)} labels for {n} inputs")
    return labels


def _cmd_plot(args) -> int:
    from aia.measure.profile import load_profile
    from aia.plots import plot_losses, plot_profiles
    from aia.targets.presets import PRESETS, TargetProfile

    if args.what == "profiles":
        profiles = [load_profile(p) for p in args.inputs]
        targets = None
        if args.targets:
            # a preset is mapped to the profiles' depth; a YAML (derived for one model) must match it
            preset = args.targets.lower() in PRESETS
            targets = TargetProfile.load(args.targets, num_layers=profiles[0].num_layers if preset else None)
        result = plot_profiles(profiles, _labels(args.labels, len(profiles)), targets, args.out)
    else:
        labels = _labels(args.labels, len(args.inputs)) or [Path(p).name for p in args.inputs]
        result = plot_losses(dict(zip(labels, args.inputs, strict=True)), args.out, key=args.key)
    for path in result.paths:
        print(f"wrote {path}")
    return 0

# ----------------------------------------------------------------- generate, answer, score, eval
def _generate_parser(sub) -> None:
    from aia.options import GenerateOptions

    _options_parser(sub, "generate", GenerateOptions, _cmd_generate,
                    "text -> image with a saved Janus / Emu3 (or demo) model, in a benchmark's layout "
                    "(GLM-Image: its image tokens)")


def _cmd_generate(opts) -> int:
    from aia.evaluate import generate_images

    _device(opts.runtime.device)
    summary = generate_images(
        opts.model_dir,
        opts.prompts,
        opts.out,
        fmt=opts.format,
        images_per_prompt=opts.images_per_prompt,
        guidance=opts.guidance,
        temperature=opts.temperature,
        top_k=opts.top_k,
        top_p=opts.top_p,
        positive_prompt=opts.positive_prompt,
        negative_prompt=opts.negative_prompt,
        image_area=opts.image_area,
        ratio=opts.ratio,
        seed=opts.seed,
        batch_size=opts.batch_size,
        device=opts.runtime.device,
        dtype=_dtype_name(opts.runtime.dtype),
        progress=not opts.runtime.quiet,
        overwrite=opts.overwrite,
    )
    done = summary["prompts_done_before"]
    made = "token files" if summary["image_output"] == "tokens" else "images"
    print(f"wrote {opts.out} ({summary['images_generated']} new {made}, {done} prompts already there)")
    return 0


def _answer_parser(sub) -> None:
    from aia.options import AnswerOptions

    _options_parser(sub, "answer", AnswerOptions, _cmd_answer,
                    "image -> text on a benchmark's official local files (greedy)")


def _cmd_answer(opts) -> int:
    from aia.evaluate import answer

    _device(opts.runtime.device)
    dtype = _dtype_name(opts.runtime.dtype)
    _writable_file(opts.out)
    answer(
        opts.model_dir,
        opts.bench,
        opts.data,
        opts.out,
        image_dir=opts.image_dir,
        max_new_tokens=opts.max_new_tokens,
        limit=opts.limit,
        batch_size=opts.batch_size,
        device=opts.runtime.device,
        dtype=dtype,
        progress=not opts.runtime.quiet,
        overwrite=opts.overwrite,
    )
    print(f"wrote {opts.out}")
    return 0


def _score_parser(sub) -> None:
    from aia.options import ScoreOptions

    _options_parser(sub, "score", ScoreOptions, _cmd_score,
                    "score predictions the official way; --compare gives AIA - baseline with SEs")


def _cmd_score(opts) -> int:
    import json

    from aia.evaluate import compare_files, format_table, score_file

    if opts.out:
        _writable_file(opts.out)
    if opts.compare:
        result = compare_files(opts.predictions, opts.compare, opts.bench, mmmu_parser=opts.mmmu_parser)
    else:
        result = score_file(opts.predictions, opts.bench, mmmu_parser=opts.mmmu_parser)
    print(format_table(result))
    if opts.out:
        Path(opts.out).write_text(json.dumps(result, indent=1))
        print(f"wrote {opts.out}")
    return 0


def _eval_parser(sub) -> None:
    ev = sub.add_parser("eval", help="answer, generate and score several models; a before/after report")
    ev.add_argument("config", nargs="?", default=None, help="eval YAML (aia eval --help-config lists its fields)")
    ev.add_argument("--help-config", action="store_true", help="list every field of the eval file with its documentation")
    ev.add_argument("--quiet", action="store_true", help="no progress bars (default: off)")
    ev.add_argument("--overwrite", action="store_true",
                    help="start over the outputs made with another model, data or setting (default: off)")
    ev.set_defaults(func=_cmd_eval)


def _cmd_eval(args) -> int:
    from aia.evaluate.suite import eval_config_help, load_eval_config

    if args.help_config:
        print(eval_config_help())
        return 0
    if args.config is None:
        raise ValueError("give an eval file, or --help-config")
    cfg = load_eval_config(args.config)
    _device(cfg.device)
    from aia.evaluate.suite import run_eval

    run_eval(cfg, progress=not args.quiet, overwrite=args.overwrite)
    out = Path(cfg.out)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


# ----------------------------------------------------------------- train, demo
def _train_parser(sub) -> None:
    r = sub.add_parser("train", help="fine-tune with NTP + lambda * AIA (see configs/)")
    r.add_argument("config", nargs="?", default=None, help="YAML run config")
    r.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. aia.enabled=false")
    r.add_argument("--help-config", action="store_true", help="list every config field with its documentation")
    r.set_defaults(func=_cmd_train)


def _demo_parser(sub) -> None:
    d = sub.add_parser("demo", help="the paper's pipeline at micro scale on scikit-learn's digits (minutes, CPU)")
    d.add_argument("--out", required=True, help="output directory (report.md, results.json, figures, runs)")
    d.add_argument("--quick", action="store_true",
                   help="fewer steps and samples, no ablation runs (about a minute) (default: off)")
    d.add_argument(
        "--seed", type=int, default=0,
        help="seeds the split, VQ, initial weights and the runs from scratch; the first post-training seed "
             "(default: 0)",
    )
    d.add_argument(
        "--seeds", type=int, default=None,
        help="post-training seeds: the comparison is repeated with seeds SEED, SEED+1, ... (default 5; 2 with --quick)",
    )
    d.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    d.add_argument(
        "--ablations",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="train the w/o-Huber and w/o-stage-level runs too (default: yes, except with --quick)",
    )
    d.set_defaults(func=_cmd_demo)


def _cmd_train(args) -> int:
    import yaml

    from aia.training.config import config_help, load_config

    if args.help_config:
        print(config_help())
        return 0
    if args.config is None:
        raise ValueError("give a config file (see configs/), or --help-config")
    if "=" in args.config and not Path(args.config).exists():
        raise ValueError(f"the config file comes first: aia train CONFIG.yaml {args.config} ... (see configs/)")
    try:
        cfg = load_config(args.config, args.overrides)
    except yaml.YAMLError as err:
        try:  # the file itself, or one of the override values?
            yaml.safe_load(Path(args.config).read_text())
        except yaml.YAMLError:
            raise ValueError(f"{args.config}: {_one_line(err)}") from None
        raise ValueError(f"an override value: {_one_line(err)} (overrides are section.field=YAML)") from None
    from aia.training.trainer import train

    result = train(cfg)
    if result.is_main_process:
        print(f"wrote {result.final_dir}")
    return 0


def _cmd_demo(args) -> int:
    from aia.demo.pipeline import run_demo

    results = run_demo(
        args.out, quick=args.quick, seed=args.seed, device=args.device, ablations=args.ablations, seeds=args.seeds,
        debug=args.debug or os.environ.get("AIA_DEBUG") == "1",
    )  # fmt: skip
    print(f"wrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'results.json'}")
    verdict = results["aia_vs_baseline"]
    print(
        f"AIA vs baseline: und acc {verdict['und_acc']['verdict']} ({verdict['und_acc']['diff']:+.3f}), "
        f"gen acc {verdict['gen_acc']['verdict']} ({verdict['gen_acc']['diff']:+.3f})"
    )
    return 0

# ----------------------------------------------------------------- the entry point
#: the sub-parsers, in the order ``aia --help`` lists them
_COMMANDS = (_profile_parser, _targets_parser, _plot_parser, _train_parser, _demo_parser, _generate_parser,
             _answer_parser, _score_parser, _eval_parser)
#: the commands that load saved models, the demo's VQ-LM included
_LOADING = {"profile", "train", "demo", "generate", "answer", "eval"}


def build_parser() -> argparse.ArgumentParser:
    """The ``aia`` parser: one sub-parser per command (imports neither torch nor transformers)."""
    parser = argparse.ArgumentParser(prog="aia", description="Attention Interaction Alignment toolkit")
    parser.add_argument(
        "--debug", action="store_true",
        help="show tracebacks instead of one-line errors, the library messages aia otherwise silences (aia.noise) "
             "and each demo run's own output",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _COMMANDS:
        add(sub)
    return parser


def _run(args: argparse.Namespace) -> int:
    """The command's function on its options (a dataclass where the command has one)."""
    if args.command in _LOADING:
        import aia.demo  # noqa: F401  (registers the demo's VQ-LM family, so its saved models load)
    options = getattr(args, "options", None)
    if options is None:
        return args.func(args)
    from aia.fields import from_flags

    return args.func(from_flags(options, args))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aia`` console script.

    An expected failure (bad input, missing file, full disk) is one line on stderr and exit
    status 2; ``--debug`` (or ``AIA_DEBUG=1``) shows the traceback instead, and the library
    messages :mod:`aia.noise` otherwise silences.
    """
    args = build_parser().parse_args(argv)
    if args.debug or os.environ.get("AIA_DEBUG") == "1":
        return _run(args)
    from aia.noise import silence

    silence()  # known harmless library messages (aia.noise); --debug shows them
    import yaml

    try:
        return _run(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError, yaml.YAMLError) as err:
        print(f"aia {args.command}: error: {_one_line(err)}", file=sys.stderr)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"aia {args.command}: error: no space left on the device{where}", file=sys.stderr)
    except KeyboardInterrupt as err:  # Ctrl-C: one line (the command's own, e.g. "interrupted at step N; ..."), status 130
        print(f"aia {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 130
    return 2


def _one_line(err: BaseException) -> str:
    """The error's message on one line; YAML errors name the file and line (their own messages
    span several lines)."""
    import yaml

    if isinstance(err, yaml.YAMLError):
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        return f"invalid YAML: {where}{getattr(err, 'problem', None) or err}"
    if isinstance(err, KeyError) and err.args:
        return str(err.args[0])
    return " ".join(str(err).split())


if __name__ == "__main__":
    sys.exit(main())
