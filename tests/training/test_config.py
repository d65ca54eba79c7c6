"""Run configs: typed, validated, failing early with the key's name."""

from pathlib import Path

import pytest
import yaml

from aia.cli import main
from aia.core.spans import SpanConfig
from aia.training.config import ConfigError, RunConfig, config_help, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name", ["janus-pro-1b", "janus-pro-7b", "janus-pro-1b-paper", "emu3", "chameleon"])
def test_shipped_configs_load(name):
    cfg = load_config(CONFIGS / f"{name}.yaml", check_paths=False)
    assert isinstance(cfg, RunConfig) and cfg.aia.enabled
    assert cfg.model.path.startswith(str(CONFIGS))  # relative paths resolve against the file
    with pytest.raises(ConfigError, match="model.path"):
        load_config(CONFIGS / f"{name}.yaml")  # the checkpoint is the user's to provide


@pytest.mark.parametrize("name", ["janus-pro-1b", "janus-pro-7b", "janus-pro-1b-paper"])
def test_janus_config_reproduces_released_hyper_parameters(name):
    cfg = load_config(CONFIGS / f"{name}.yaml", check_paths=False)
    o = cfg.optim
    assert (o.lr, o.betas, o.eps, o.weight_decay, o.scheduler, o.min_lr, o.max_grad_norm) == (
        2e-5,
        [0.9, 0.95],
        1e-6,
        0.05,
        "cosine",
        1e-6,
        1.0,
    )
    assert (o.warmup_epochs, o.warmup_ratio, o.warmup_steps) == (0.1, None, None)
    assert (cfg.train.epochs, cfg.train.max_steps, cfg.train.grad_accum, cfg.train.seed) == (4.0, None, 1, 1024)
    assert (cfg.data.mixing, cfg.data.ratio_und, cfg.data.ratio_gen, cfg.data.batch_size) == ("random", 10, 10, 4)
    assert (cfg.data.gen_image_transform, cfg.data.image_area, cfg.data.padding_side) == ("center_crop", None, "left")
    assert (cfg.model.dtype, cfg.train.mixed_precision, cfg.model.gradient_checkpointing) == ("bfloat16", "bf16", True)
    assert cfg.data.cfg_drop == 0.1 and cfg.data.max_length == 3000 and cfg.model.frozen is None
    lam = (40.0, 40.0) if name.endswith("paper") else (10.0, 5.0)  # paper Sec. 3.2; released modeling_vlm.py
    assert (cfg.aia.weight_und, cfg.aia.weight_gen) == lam


def test_every_shipped_janus_value_names_its_source():
    for name in ("janus-pro-1b", "janus-pro-7b", "janus-pro-1b-paper"):
        for line in (CONFIGS / f"{name}.yaml").read_text().splitlines():
            if line.startswith("  ") and ":" in line and not line.lstrip().startswith("#"):
                key = line.split(":")[0].strip()
                if key not in ("path", "und", "gen", "output_dir", "enabled"):
                    assert "#" in line, f"{name}.yaml: {line.strip()!r} has no source comment"


def test_emu3_config_resizes_to_720x720():
    assert load_config(CONFIGS / "emu3.yaml", check_paths=False).data.image_area == 720 * 720


@pytest.mark.parametrize(
    "override, key",
    [
        ("aia.enabeld=false", "aia.enabeld"),
        ("optim.lr=fast", "optim.lr"),
        ("train.max_steps=0", "train.max_steps"),
        ("data.cfg_drop=1.5", "data.cfg_drop"),
        ("aia.mode=l1", "aia.mode"),
        ("model.frozen=[1]", "model.frozen[0]"),
        ("nosection.x=1", "nosection.x"),
        ("aia.enabled=maybe", "aia.enabled"),
        ("data.ratio_und=0", "data.ratio_und"),  # the only task with data would never run
        ("aia.predictive=true", "aia.predictive"),  # span choices live in their own section
        ("spans.predictve=true", "spans.predictve"),
        ("spans.question_in_query=1", "spans.question_in_query"),
        ("spans.gen_keys=all", "spans.gen_keys"),  # SpanConfig's own check, named
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, ["data.und=x.jsonl", override], check_paths=False)


def test_overrides_and_yaml(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"und": "u.jsonl"}, "aia": {"weight_gen": 2}}))
    cfg = load_config(path, ["aia.enabled=false", "optim.lr=1e-4", "optim.betas=[0.8, 0.9]"], check_paths=False)
    assert cfg.aia.enabled is False and cfg.optim.lr == 1e-4 and cfg.optim.betas == [0.8, 0.9]
    assert cfg.aia.weight_gen == 2.0 and cfg.data.und == str(tmp_path / "u.jsonl")
    with pytest.raises(ConfigError, match="model.path"):
        load_config(path, [f"model.path={tmp_path}"])  # no config.json there
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="data.und: no such file"):
        load_config(path, [f"model.path={tmp_path}"])


def test_spans_section_is_the_span_config(tmp_path):
    cfg = load_config(None, ["data.und=x.jsonl", "spans.question_in_query=true"], check_paths=False)
    assert cfg.spans == SpanConfig(question_in_query=True)
    assert cfg.to_dict()["spans"]["question_in_query"] is True
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"und": "u.jsonl"}, "spans": {"predictive": True}}))
    cfg = load_config(path, ["spans.image_markers_are_image=true"], check_paths=False)
    assert cfg.spans == SpanConfig(image_markers_are_image=True, predictive=True)
    assert load_config(None, ["data.und=x.jsonl"], check_paths=False).spans == SpanConfig()
    with pytest.raises(ConfigError, match=r"aia\.predictive: unknown key"):
        load_config(None, ["data.und=x.jsonl", "aia.predictive=true"], check_paths=False)


def test_train_cli_fails_before_loading(tmp_path, capsys):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model": {"path": "nowhere"}, "data": {"gen": "g.jsonl"}, "train": {"bogus": 1}}))
    assert main(["train", str(path)]) == 2
    assert "train.bogus: unknown key" in capsys.readouterr().err
    assert main(["train", "--help-config"]) == 0
    assert "aia.weight_und" in capsys.readouterr().out
    assert "aia.enabled (True): Add the AIA loss" in config_help()
    assert "spans.question_in_query (False): Understanding only: the question's tokens join" in config_help()


@pytest.mark.parametrize("name", ["janus-pro-1b", "janus-pro-7b", "janus-pro-1b-paper", "emu3", "chameleon"])
def test_a_run_length_override_replaces_the_files(name):
    """On every shipped config, ``train.max_steps=N`` alone sets the length (the file's ``epochs`` or
    ``max_steps`` gives way), and so does ``train.epochs=E``; given both, the later override wins."""
    path = CONFIGS / f"{name}.yaml"
    cfg = load_config(path, ["train.max_steps=7"], check_paths=False)
    assert (cfg.train.max_steps, cfg.train.epochs) == (7, None)
    cfg = load_config(path, ["train.epochs=0.5"], check_paths=False)
    assert (cfg.train.max_steps, cfg.train.epochs) == (None, 0.5)
    cfg = load_config(path, ["train.epochs=2", "train.max_steps=3"], check_paths=False)
    assert (cfg.train.max_steps, cfg.train.epochs) == (3, None)
    cfg = load_config(path, ["train.max_steps=3", "train.epochs=2"], check_paths=False)
    assert (cfg.train.max_steps, cfg.train.epochs) == (None, 2.0)


def test_a_file_with_both_run_lengths_is_refused(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"data": {"und": "u.jsonl"}, "train": {"max_steps": 5, "epochs": 1}}))
    with pytest.raises(ConfigError, match="train.max_steps / train.epochs: set one of them"):
        load_config(path, check_paths=False)
    assert load_config(path, ["train.epochs=null"], check_paths=False).train.max_steps == 5  # as before
    assert "An override of either on the command line replaces the other" in " ".join(config_help().split())
