"""The commands' options: one typed dataclass each, flags and help made from it, one name per knob."""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

from aia.cli import build_parser, main
from aia.fields import from_flags
from aia.options import AnswerOptions, GenerateOptions, ProfileOptions, ScoreOptions, dtype_name

OPTIONS = {"profile": ProfileOptions, "generate": GenerateOptions, "answer": AnswerOptions, "score": ScoreOptions}


def _subparsers():
    parser = build_parser()
    return parser._subparsers._group_actions[0].choices


def test_every_flag_of_every_command_shows_its_default():
    """Every flag that takes a value says its default in ``--help`` (a switch is off unless given)."""
    import argparse

    for name, sub in _subparsers().items():
        for action in sub._actions:
            if action.option_strings and not action.required and action.nargs != 0:
                assert "default" in action.help.lower(), f"aia {name} {action.option_strings}"
            assert not isinstance(action, argparse._StoreTrueAction) or action.default is False


def test_one_name_per_knob():
    flags = {name: {s for a in sub._actions for s in a.option_strings} for name, sub in _subparsers().items()}
    assert "--guidance" in flags["profile"] and "--guidance" in flags["generate"]
    assert not any("--cfg-weight" in f or "--json" in f for f in flags.values())
    assert all("--out" in flags[name] for name in ("profile", "targets", "plot", "demo", "generate", "answer", "score"))
    assert all("--dtype" in flags[name] for name in ("profile", "generate", "answer"))


def test_flags_give_the_dataclass():
    parser = build_parser()
    args = parser.parse_args(["profile", "m", "--data", "d.jsonl", "--task", "gen", "--out", "o.json", "--mode",
                              "decode", "--guidance", "3", "--predictive", "--answer-space", "false", "--dtype", "bf16"])
    opts = from_flags(ProfileOptions, args)
    assert (opts.model_dir, opts.task, opts.guidance, opts.samples) == ("m", "gen", 3.0, 100)
    assert opts.spans.predictive is True and opts.prompts.answer_space is False
    assert opts.runtime.dtype == "bf16" and dtype_name(opts.runtime.dtype) == "bfloat16"
    defaults = from_flags(ProfileOptions, parser.parse_args(["profile", "m", "--data", "d", "--task", "und", "--out", "o"]))
    assert defaults.spans == type(defaults.spans)() and defaults.prompts == type(defaults.prompts)()


def test_help_text_is_the_field_documentation(capsys):
    with pytest.raises(SystemExit):
        main(["answer", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--max-new-tokens MAX_NEW_TOKENS The most tokens per answer" in text and "(default: 128)" in text


def _library_defaults(func) -> dict:
    return {k: p.default for k, p in inspect.signature(func).parameters.items() if p.default is not p.empty}


def test_option_defaults_are_the_librarys():
    """The dataclasses spell the library's defaults and choices (so that parsing imports no torch); kept equal here."""
    from aia import options
    from aia.evaluate import answer, generate_images, score_file
    from aia.evaluate.answer import BENCHES
    from aia.evaluate.generate import FORMATS
    from aia.evaluate.suite import EvalOptions
    from aia.measure.teacher import profile_model

    assert options.FORMATS == FORMATS and options.BENCHES == BENCHES
    for cls, func, renamed in ((GenerateOptions, generate_images, {"format": "fmt"}), (AnswerOptions, answer, {}),
                               (ProfileOptions, profile_model, {}), (ScoreOptions, score_file, {}),
                               (EvalOptions, answer, {}), (EvalOptions, generate_images, {})):
        library = _library_defaults(func)
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING and renamed.get(f.name, f.name) in library:
                assert f.default == library[renamed.get(f.name, f.name)], f"{cls.__name__}.{f.name}"


def test_dtype_is_parsed_once():
    assert [dtype_name(v) for v in ("auto", None, "bf16", "float16", "FP32", "torch.bfloat16")] == [
        None, None, "bfloat16", "float16", "float32", "bfloat16"]
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        dtype_name("int8")


def test_eval_help_config_lists_the_fields(capsys):
    assert main(["eval", "--help-config"]) == 0
    out = capsys.readouterr().out
    for key in ("models (required):", "out ('eval_out'):", "understanding.<name>.data (required):",
                "understanding.<name>.image_dir (None):", "generation.<name>.prompts (required):",
                "options.max_new_tokens (128):", "options.guidance (None):", "options.mmmu_parser ('mmmu'):",
                "compare (None):"):
        assert key in out, key


@pytest.mark.parametrize(
    "config, key",
    [
        ({"models": {"a": "x"}, "understanding": {"pope": {"data": "d"}}, "option": {}}, "option: unknown key"),
        ({"models": {"a": "x"}, "understanding": {"pope": {"data": "d", "images": "i"}}},
         "understanding.pope.images: unknown key"),
        ({"models": {"a": "x"}, "understanding": {"pope": {"data": "d"}}, "options": {"batch_size": "8"}},
         "options.batch_size: expected an integer"),
        ({"models": {"a": "x"}, "generation": {"geneval": {}}}, "generation.geneval.prompts: required"),
        ({"models": {"a": "x"}, "understanding": {"popee": {"data": "d"}}}, "'understanding.popee': unknown benchmark"),
        ({"models": {"a": "x"}, "understanding": {"pope": {"data": "d"}}, "dtype": "int8"}, "'dtype': unknown dtype"),
        ({"understanding": {"pope": {"data": "d"}}}, "models: required"),
        ({"models": {"a": "x"}, "understanding": {"mmmu": {"data": "d"}}, "options": {"mmmu_parser": "gpt"}},
         "'options.mmmu_parser': must be one of mmmu, aia"),
        ({"models": {"a": "x", "b": "y"}, "understanding": {"pope": {"data": "d"}}, "compare": ["a", "c"]},
         "'compare': two model names"),
    ],
)
def test_eval_file_fails_at_load_naming_the_key(config, key, tmp_path, capsys):
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["eval", str(path)]) == 2
    err = capsys.readouterr().err
    assert key in err and str(path) in err and len(err.strip().splitlines()) == 1


def test_eval_file_paths_resolve_against_its_folder(tmp_path):
    from aia.evaluate.suite import load_eval_config

    path = tmp_path / "sub" / "eval.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"models": {"a": "m", "b": "/abs/m"}, "understanding": {"pope": {"data": "d"}},
                                    "generation": {"wise": {"prompts": "w.json"}}, "options": {"seed": 3}}))
    cfg = load_eval_config(path)
    assert cfg.models == {"a": str(path.parent / "m"), "b": "/abs/m"} and cfg.compare == ["a", "b"]
    assert cfg.understanding["pope"].data == str(path.parent / "d") and cfg.understanding["pope"].image_dir is None
    assert cfg.generation["wise"].prompts == str(path.parent / "w.json")
    assert cfg.out == str(path.parent / "eval_out") and cfg.options.seed == 3 and cfg.options.batch_size == 1


EVAL_CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs" / "eval").glob("*.yaml"))


@pytest.mark.parametrize("path", EVAL_CONFIGS, ids=lambda p: p.name)
def test_shipped_eval_files_load(path):
    from aia.evaluate.suite import EvalConfig, load_eval_config

    assert isinstance(load_eval_config(path), EvalConfig)
