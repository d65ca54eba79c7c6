"""The ``aia`` command line: a thin layer over library functions.

    aia profile MODEL_DIR --data FILE --task {und,gen} --samples N --out OUT.json [--mode {teacher,decode}]
    aia targets PROFILE.json [PROFILE.json] --stages K --out targets.yaml [--per-layer]
    aia targets --preset janus-pro --layers 24 [--out targets.yaml]
    aia plot profiles P.json [P.json ...] [--labels a,b] [--targets T.yaml|PRESET] --out FIG
    aia plot losses RUN_DIR [RUN_DIR ...] [--labels a,b] [--key ntp] --out FIG
    aia train CONFIG.yaml [section.field=value ...]
    aia demo --out DIR [--quick] [--seed N] [--device cpu] [--ablations | --no-ablations]
    aia generate MODEL_DIR --prompts FILE --out DIR [--format {plain,geneval,dpg,wise}] [...]
    aia answer MODEL_DIR --bench {pope,mme,mmmu,mmvp,custom} --data PATH --out PREDS.jsonl [...]
    aia score PREDS.jsonl [--bench NAME] [--compare AIA_PREDS.jsonl] [--json OUT.json]
    aia eval EVAL.yaml

Every error that comes from the user's input is printed as one line on stderr with a
non-zero exit code.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _dtype(name: str | None):
    import torch

    if name in (None, "auto"):
        return None
    if not hasattr(torch, name):
        raise ValueError(f"--dtype: unknown dtype {name!r}")
    return getattr(torch, name)


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


def _cmd_profile(args) -> int:
    from aia.adapters import load_model
    from aia.core.spans import SpanConfig
    from aia.data import task_records
    from aia.measure.profile import save_profile, summary_text
    from aia.measure.teacher import profile_model

    if not Path(args.data).is_file():
        raise FileNotFoundError(f"--data: no such file: {args.data}")
    if args.mode == "teacher":
        for flag in ("max_new_tokens", "cfg_weight", "temperature", "seed"):
            if getattr(args, flag) is not None:
                raise ValueError(f"--{flag.replace('_', '-')} applies to --mode decode only")
    if args.mode == "decode" and args.batch_size != 1:
        raise ValueError("--batch-size: --mode decode runs one sample at a time")
    _positive(args.samples, "--samples")
    _positive(args.batch_size, "--batch-size")
    if args.max_length is not None:
        _positive(args.max_length, "--max-length")
    _device(args.device)
    _writable_file(args.out)
    task_records(args.data, args.task)  # a bad data file fails here, before the model loads
    prompts = _prompt_config(args)
    model, processor = load_model(args.model_dir, dtype=_dtype(args.dtype), device=args.device)
    spans = SpanConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SpanConfig)})
    common = dict(
        span_config=spans,
        prompt_config=prompts,
        method=args.method,
        model_name=str(args.model_dir),
        progress=not args.quiet,
        max_length=args.max_length,
    )
    if args.mode == "decode":
        from aia.measure.decode import DecodeSettings, decode_profile

        given = {k: getattr(args, k) for k in ("max_new_tokens", "cfg_weight", "temperature", "seed")}
        settings = DecodeSettings(**{k: v for k, v in given.items() if v is not None})
        profile = decode_profile(model, processor, args.data, args.task, args.samples, settings, **common)
    else:
        profile = profile_model(
            model, processor, args.data, args.task, samples=args.samples, batch_size=args.batch_size, **common
        )
    save_profile(profile, args.out)
    print(summary_text(profile))
    print(f"wrote {args.out}")
    return 0


def _cmd_targets(args) -> int:
    from aia.measure.profile import load_profile
    from aia.targets.presets import TargetProfile
    from aia.targets.stages import derive_targets

    if args.preset:
        if args.profiles:
            raise ValueError("give either profiles or --preset, not both")
        targets = TargetProfile.preset(args.preset)
        if args.layers is not None:
            targets = targets.resize(args.layers)
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
        )
    if args.out:
        targets.to_yaml(args.out)
        print(f"wrote {args.out}")
    else:
        import yaml

        print(yaml.safe_dump(targets.to_dict(), sort_keys=False), end="")
    return 0


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


#: shorter spellings of span flags documented before the flags were generated
_SPAN_FLAG_ALIASES = {"image_markers_are_image": ["--image-markers"]}


def _add_span_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~aia.core.spans.SpanConfig` field, its help the field's doc."""
    from aia.core.spans import GEN_KEYS, SpanConfig
    from aia.fields import field_docs

    docs = field_docs(SpanConfig)
    choices = {"gen_keys": GEN_KEYS}
    for f in dataclasses.fields(SpanConfig):
        flags = ["--" + f.name.replace("_", "-"), *_SPAN_FLAG_ALIASES.get(f.name, [])]
        if f.name in choices:
            parser.add_argument(*flags, dest=f.name, choices=choices[f.name], default=f.default, help=docs[f.name])
        else:
            parser.add_argument(*flags, dest=f.name, action="store_true", default=f.default, help=docs[f.name])


#: the :class:`~aia.adapters.prompts.PromptConfig` fields that shape a profiled sequence (the others,
#: generation labels and the CFG drop rate, are training choices)
_PROFILE_PROMPT_FIELDS = ("system_prompt", "image_placement", "turn_separator", "answer_space", "question_suffix")


def _add_prompt_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per sequence-shaping :class:`~aia.adapters.prompts.PromptConfig` field, its help the field's doc."""
    from aia.adapters.prompts import IMAGE_PLACEMENTS, TURN_SEPARATORS, PromptConfig
    from aia.fields import field_docs

    docs = field_docs(PromptConfig)
    defaults = {f.name: f.default for f in dataclasses.fields(PromptConfig)}
    choices = {"image_placement": IMAGE_PLACEMENTS, "turn_separator": TURN_SEPARATORS, "answer_space": ("true", "false")}
    for name in _PROFILE_PROMPT_FIELDS:
        parser.add_argument(
            "--" + name.replace("_", "-"), dest=name, choices=choices.get(name), default=defaults[name], help=docs[name]
        )


def _prompt_config(args):
    """The :class:`~aia.adapters.prompts.PromptConfig` of the prompt flags (unset ones: the family's default)."""
    from aia.adapters.prompts import PromptConfig

    given = {name: getattr(args, name) for name in _PROFILE_PROMPT_FIELDS}
    if isinstance(given["answer_space"], str):
        given["answer_space"] = given["answer_space"] == "true"
    return PromptConfig(**given)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="aia", description="Attention Interaction Alignment toolkit")
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("profile", help="measure per-layer interaction intensity (teacher forcing or decoding)")
    p.add_argument("model_dir", help="directory of a model saved with save_pretrained, with its processor")
    p.add_argument("--data", required=True, help="JSON/JSONL data file (image paths relative to it)")
    p.add_argument("--task", required=True, choices=["und", "gen"])
    p.add_argument("--samples", type=int, default=100, help="usable samples to measure (default 100, as the paper)")
    p.add_argument("--out", required=True, help="output JSON")
    p.add_argument(
        "--mode",
        default="teacher",
        choices=["teacher", "decode"],
        help="teacher: one forward over the data's own tokens; decode: while the model generates (KV cache), "
        "by default as the released plot scripts do (gen: CFG 5, sampling at temperature 1; und: greedy, 512 tokens)",
    )
    p.add_argument(
        "--max-new-tokens",
        type=int,
        default=None,
        help="decode: und answer length cap (default 512); gen: decode only this many image tokens (default all)",
    )
    p.add_argument("--cfg-weight", type=float, default=None, help="decode, gen: CFG weight (default 5; 1 = no CFG)")
    p.add_argument(
        "--temperature", type=float, default=None, help="decode, gen: sampling temperature (default 1; 0 = greedy)"
    )
    p.add_argument("--seed", type=int, default=None, help="decode, gen: sampling seed (default 0)")
    p.add_argument("--batch-size", type=int, default=1, help="teacher mode: samples per forward pass")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="longest sample in tokens; longer ones are skipped and counted (default: the model's positions)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto", help="float32, bfloat16, ... (default: as saved)")
    p.add_argument("--method", default="auto", choices=["auto", "sdpa", "flex"], help="intensity route")
    _add_span_flags(p)
    _add_prompt_flags(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_profile)

    t = sub.add_parser("targets", help="stage-level AIA targets from profiles, or a preset")
    t.add_argument("profiles", nargs="*", help="profile JSON files (at most one gen and one und)")
    t.add_argument("--stages", type=int, default=4, help="number of contiguous stages (default 4)")
    t.add_argument("--per-layer", action="store_true", help="one stage per layer (the paper's w/o-stage ablation)")
    t.add_argument("--fallback", default=None, help="preset or YAML for a task without a profile")
    t.add_argument("--name", default="derived", help="name recorded in the targets file")
    t.add_argument("--preset", default=None, help="render a preset (janus-pro, emu3) instead")
    t.add_argument("--layers", type=int, default=None, help="with --preset: map to this depth by relative depth")
    t.add_argument("--out", default=None, help="output YAML (default: print)")
    t.set_defaults(func=_cmd_targets)

    g = sub.add_parser("plot", help="figures: intensity curves with targets, or loss curves")
    g.add_argument("what", choices=["profiles", "losses"])
    g.add_argument("inputs", nargs="+", help="profile JSON files, or run directories / metrics.jsonl files")
    g.add_argument("--labels", default=None, help="comma-separated legend labels")
    g.add_argument("--targets", default=None, help="profiles: a targets YAML or preset name to draw")
    g.add_argument("--key", default="ntp", help="losses: which loss group (ntp, aia)")
    g.add_argument("--out", required=True, help="output path without extension (.png and .svg are written)")
    g.set_defaults(func=_cmd_plot)

    r = sub.add_parser("train", help="fine-tune with NTP + lambda * AIA (see configs/)")
    r.add_argument("config", nargs="?", default=None, help="YAML run config")
    r.add_argument("overrides", nargs="*", help="section.field=value overrides, e.g. aia.enabled=false")
    r.add_argument("--help-config", action="store_true", help="list every config field with its documentation")
    r.set_defaults(func=_cmd_train)

    d = sub.add_parser("demo", help="the paper's pipeline at micro scale on scikit-learn's digits (minutes, CPU)")
    d.add_argument("--out", required=True, help="output directory (report.md, results.json, figures, runs)")
    d.add_argument("--quick", action="store_true", help="fewer steps and samples, no ablation runs (about a minute)")
    d.add_argument(
        "--seed", type=int, default=0,
        help="seeds the split, VQ, initial weights and the runs from scratch; the first post-training seed",
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

    gen = sub.add_parser("generate", help="text -> image with a saved Janus / Emu3 (or demo) model, in a benchmark's layout")
    gen.add_argument("model_dir", help="directory of a saved model (e.g. aia train's final/)")
    gen.add_argument("--prompts", required=True, help="GenEval metadata .jsonl, WISE .json, a .txt, or DPG's folder")
    gen.add_argument("--out", required=True, help="output folder (resumable: prompts already written are skipped)")
    gen.add_argument("--format", default="plain", choices=["plain", "geneval", "dpg", "wise"])
    gen.add_argument("--images-per-prompt", type=int, default=None, help="default: 4 (geneval, dpg), 1 (plain, wise)")
    gen.add_argument("--guidance", type=float, default=None, help="CFG weight (default: the family's: Janus 5, Emu3 3, demo 1)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = greedy)")
    gen.add_argument("--top-k", type=int, default=None, help="default: the family's (Emu3 2048, Janus and demo all)")
    gen.add_argument("--seed", type=int, default=0, help="same seed, same images")
    emu3 = gen.add_argument_group("Emu3 only")
    emu3.add_argument("--positive-prompt", default=None,
                      help="appended to every prompt (default: Emu3-Gen's ' masterpiece, film grained, best quality.'; "
                           "'' for none)")
    emu3.add_argument("--negative-prompt", default=None, help="the guidance's negative prompt (default: Emu3-Gen's)")
    emu3.add_argument("--image-area", type=int, default=None,
                      help="pixels of a generated image (default: the processor's, at most its max_pixels)")
    emu3.add_argument("--ratio", default="1:1", help="aspect ratio width:height (default 1:1)")
    _add_inference_flags(gen)
    gen.set_defaults(func=_cmd_generate)

    ans = sub.add_parser("answer", help="image -> text on a benchmark's official local files (greedy)")
    ans.add_argument("model_dir", help="directory of a saved model (e.g. aia train's final/)")
    ans.add_argument("--bench", required=True, choices=["pope", "mme", "mmmu", "mmvp", "custom"])
    ans.add_argument("--data", required=True, help="the benchmark's files (see aia.evaluate.answer)")
    ans.add_argument("--image-dir", default=None, help="images kept apart from the questions (POPE: COCO val2014)")
    ans.add_argument("--out", required=True, help="predictions JSONL (resumable: answered ids are skipped)")
    ans.add_argument("--max-new-tokens", type=int, default=128)
    ans.add_argument("--limit", type=int, default=None, help="answer only the first N questions")
    _add_inference_flags(ans)
    ans.set_defaults(func=_cmd_answer)

    sc = sub.add_parser("score", help="score predictions the official way; --compare gives AIA - baseline with SEs")
    sc.add_argument("predictions", help="predictions JSONL written by aia answer (the baseline with --compare)")
    sc.add_argument("--bench", default=None, help="pope, mme, mmmu or mmvp (default: the one the file names)")
    sc.add_argument("--compare", default=None, help="a second predictions file (the AIA run): paired differences")
    sc.add_argument("--mmmu-parser", default="mmmu", choices=["mmmu", "aia"],
                    help="MMMU multiple choice: the benchmark's parser (default) or the released AIA pipeline's")
    sc.add_argument("--json", default=None, help="also write every number here")
    sc.set_defaults(func=_cmd_score)

    ev = sub.add_parser("eval", help="answer, generate and score several models; a before/after report")
    ev.add_argument("config", help="eval YAML (see aia.evaluate.suite)")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=_cmd_eval)
    return parser


def _inference_options(args) -> dict:
    """The options ``aia generate`` and ``aia answer`` share, as keyword arguments."""
    return dict(
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype if args.dtype != "auto" else None,
        progress=not args.quiet,
    )


def _add_inference_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="float32, bfloat16, ... (default: as saved)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def _cmd_generate(args) -> int:
    from aia.evaluate import generate_images

    _device(args.device)
    summary = generate_images(
        args.model_dir,
        args.prompts,
        args.out,
        fmt=args.format,
        images_per_prompt=args.images_per_prompt,
        guidance=args.guidance,
        temperature=args.temperature,
        top_k=args.top_k,
        positive_prompt=args.positive_prompt,
        negative_prompt=args.negative_prompt,
        image_area=args.image_area,
        ratio=args.ratio,
        seed=args.seed,
        **_inference_options(args),
    )
    done = summary["prompts_done_before"]
    print(f"wrote {args.out} ({summary['images_generated']} new images, {done} prompts already there)")
    return 0


def _cmd_answer(args) -> int:
    from aia.evaluate import answer

    _device(args.device)
    _writable_file(args.out)
    answer(
        args.model_dir,
        args.bench,
        args.data,
        args.out,
        image_dir=args.image_dir,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        **_inference_options(args),
    )
    print(f"wrote {args.out}")
    return 0


def _cmd_score(args) -> int:
    import json

    from aia.evaluate import compare_files, format_table, score_file

    if args.json:
        _writable_file(args.json, "--json")
    if args.compare:
        result = compare_files(args.predictions, args.compare, args.bench, mmmu_parser=args.mmmu_parser)
    else:
        result = score_file(args.predictions, args.bench, mmmu_parser=args.mmmu_parser)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.json}")
    return 0


def _cmd_eval(args) -> int:
    from aia.evaluate.suite import load_eval_config, run_eval

    cfg = load_eval_config(args.config)
    _device(cfg.device)
    run_eval(cfg, progress=not args.quiet)
    print(f"wrote {cfg.out / 'report.md'} and {cfg.out / 'report.json'}")
    return 0


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
        args.out, quick=args.quick, seed=args.seed, device=args.device, ablations=args.ablations, seeds=args.seeds
    )
    print(f"wrote {Path(args.out) / 'report.md'} and {Path(args.out) / 'results.json'}")
    verdict = results["aia_vs_baseline"]
    print(
        f"AIA vs baseline: und acc {verdict['und_acc']['verdict']} ({verdict['und_acc']['diff']:+.3f}), "
        f"gen acc {verdict['gen_acc']['verdict']} ({verdict['gen_acc']['diff']:+.3f})"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``aia`` console script.

    An expected failure (bad input, missing file, full disk) is one line on stderr and exit
    status 2; ``--debug`` (or ``AIA_DEBUG=1``) shows the traceback instead.
    """
    args = build_parser().parse_args(argv)
    import aia.demo  # noqa: F401  (registers the demo's VQ-LM family, so its saved models load)

    if args.debug or os.environ.get("AIA_DEBUG") == "1":
        return args.func(args)
    import yaml

    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, KeyError, PermissionError, yaml.YAMLError) as err:
        print(f"aia {args.command}: error: {_one_line(err)}", file=sys.stderr)
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        where = f": {err.filename}" if err.filename else ""
        print(f"aia {args.command}: error: no space left on the device{where}", file=sys.stderr)
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
